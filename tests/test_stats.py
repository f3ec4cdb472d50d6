"""Statistics helpers against scipy and hand-computed values."""

from __future__ import annotations

import math
import random

import pytest
from scipy import stats as sps

from shoestring.util.stats import (
    format_accuracy,
    format_p,
    mcnemar_exact,
    mean_std,
    welch_t_test,
    wilson_interval,
)


def test_wilson_known_values() -> None:
    # The Wilson bounds solve (p - x)^2 = z^2 x (1 - x) / n; roots computed independently:
    # k=170, n=500 -> 0.29983815, 0.38260173; k=8, n=10 -> 0.49015685, 0.94331905
    # (statsmodels proportion_confint(8, 10, method="wilson") prints (0.4902, 0.9433)).
    assert wilson_interval(170, 500) == pytest.approx((0.29983815, 0.38260173), abs=1e-8)
    assert wilson_interval(8, 10) == pytest.approx((0.49015685, 0.94331905), abs=1e-8)


def test_wilson_solves_the_score_equation() -> None:
    z = 1.96
    for k, n in [(1, 7), (33, 50), (499, 500)]:
        p = k / n
        for x in wilson_interval(k, n, z):
            assert (p - x) ** 2 == pytest.approx(z * z * x * (1 - x) / n, rel=1e-9)


def test_wilson_edges() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and 0.0 < hi < 0.2
    lo, hi = wilson_interval(20, 20)
    assert hi == 1.0 and 0.8 < lo < 1.0
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_format_accuracy() -> None:
    assert format_accuracy(170, 500) == "34.0% [30.0, 38.3] (n=500)"
    assert format_accuracy(0, 0) == "n/a (n=0)"


def test_mcnemar_matches_scipy_binomtest() -> None:
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(1, 80)
        a = [rng.random() < 0.5 for _ in range(n)]
        b = [rng.random() < 0.6 for _ in range(n)]
        res = mcnemar_exact(a, b)
        disc = res.b01 + res.b10
        expected = 1.0 if disc == 0 else sps.binomtest(res.b01, disc, 0.5).pvalue
        assert res.p_value == pytest.approx(expected, rel=1e-12)


def test_mcnemar_statement_not_significant() -> None:
    # 5 problems only B solves, 3 only A solves, 42 agree: p = 2*P(X<=3 | n=8) = 0.7266
    a = [False] * 5 + [True] * 3 + [True] * 20 + [False] * 22
    b = [True] * 5 + [False] * 3 + [True] * 20 + [False] * 22
    res = mcnemar_exact(a, b)
    assert (res.b01, res.b10) == (5, 3)
    assert res.p_value == pytest.approx(0.7265625)
    assert not res.significant
    assert res.statement.startswith("not significant at n=50 (p=0.73)")


def test_mcnemar_statement_significant() -> None:
    a = [False] * 12 + [True] * 38
    b = [True] * 12 + [True] * 38
    res = mcnemar_exact(a, b, a_name="base", b_name="grpo")
    assert res.p_value == pytest.approx(2 * 0.5**12)
    assert res.significant
    assert res.statement.startswith("grpo better, significant at n=50 (p=0.000488)")


def test_mcnemar_needs_pairs() -> None:
    with pytest.raises(ValueError):
        mcnemar_exact([True], [True, False])
    assert mcnemar_exact([], []).p_value == 1.0


def test_format_p_never_rounds_across_the_threshold() -> None:
    assert format_p(0.0499) == "0.0499"
    assert format_p(0.62) == "0.62"
    assert format_p(1e-7) == "<0.0001"


def test_welch_matches_scipy() -> None:
    a = [0.51, 0.49, 0.55, 0.50]
    b = [0.45, 0.47, 0.44]
    res = welch_t_test(a, b)
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert res is not None
    t, p = res
    assert t == pytest.approx(ref.statistic, rel=1e-10)
    assert p == pytest.approx(ref.pvalue, rel=1e-10)


def test_welch_small_or_degenerate() -> None:
    assert welch_t_test([1.0], [1.0, 2.0]) is None
    assert welch_t_test([1.0, 1.0], [1.0, 1.0]) == (0.0, 1.0)
    t, p = welch_t_test([2.0, 2.0], [1.0, 1.0])
    assert math.isinf(t) and t > 0 and p == 0.0


def test_mean_std() -> None:
    mean, std = mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert std == pytest.approx(1.2909944487)  # sample std, ddof=1
    assert mean_std([7.0]) == (7.0, None)
    with pytest.raises(ValueError):
        mean_std([])
