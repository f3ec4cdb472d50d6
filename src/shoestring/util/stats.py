"""Small, exact statistics for honest benchmark numbers.

Why: DESIGN.md requires every accuracy to carry a 95% Wilson interval and its n, every
comparison of two models on the same problems to use a paired test (McNemar exact), and
sweeps to report mean +- std over seeds. These helpers are pure Python (``math.comb`` for
exact binomial tails) with scipy only for the t distribution, so a report never depends on an
approximation that breaks down at the small n a laptop benchmark produces.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

__all__ = [
    "McNemarResult",
    "WelchResult",
    "format_accuracy",
    "format_p",
    "mcnemar_exact",
    "mean_std",
    "welch_t_test",
    "wilson_interval",
]


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (proportions in [0, 1]).

    Chosen over the normal ("Wald") interval because it stays inside [0, 1] and keeps its
    coverage at small n and at accuracies near 0 or 1, which is where small models live.
    With n = 0 nothing is known, so the interval is the whole range (0, 1).
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # exact ends at k = 0 and k = n (float rounding would put them a hair inside)
    lo = 0.0 if k == 0 else max(0.0, center - half)
    hi = 1.0 if k == n else min(1.0, center + half)
    return (lo, hi)


def format_accuracy(k: int, n: int, z: float = 1.96) -> str:
    """``"34.0% [30.0, 38.3] (n=500)"``: accuracy with its Wilson interval, in percent."""
    if n == 0:
        return "n/a (n=0)"
    lo, hi = wilson_interval(k, n, z)
    return f"{100 * k / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] (n={n})"


def format_p(p: float) -> str:
    """A p-value for prose: two digits when far from 0.05, three significant digits below 0.1.

    Three significant digits near the threshold keep "p=0.0499" from printing as "0.05"
    next to the word "significant".
    """
    if p < 1e-4:
        return "<0.0001"
    if p < 0.1:
        return f"{p:.3g}"
    return f"{p:.2g}"


class McNemarResult(NamedTuple):
    """Paired comparison of two models on the same problems.

    b01: problems A got wrong and B got right; b10: A right and B wrong. Only these discordant
    pairs carry information about which model is better.
    """

    b01: int
    b10: int
    p_value: float
    significant: bool
    statement: str


def _binom_two_sided_half(k: int, n: int) -> float:
    """Exact two-sided p-value of k successes in n fair-coin trials.

    For p = 0.5 the distribution is symmetric, so the two-sided p-value (sum of all outcomes
    no more likely than the one observed, as scipy.stats.binomtest defines it) is twice the
    smaller tail, capped at 1. Exact integer arithmetic: no float underflow at large n.
    """
    if n == 0:
        return 1.0
    small = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(small + 1))
    return min(1.0, 2 * tail / 2**n)


def mcnemar_exact(
    a_correct: Sequence[bool],
    b_correct: Sequence[bool],
    alpha: float = 0.05,
    a_name: str = "A",
    b_name: str = "B",
) -> McNemarResult:
    """McNemar's exact test (binomial on the discordant pairs) for two paired result lists.

    ``a_correct[i]`` and ``b_correct[i]`` must refer to the same problem. The statement is
    written for a report, e.g. "not significant at n=50 (p=0.62); A right/B wrong on 5,
    A wrong/B right on 3".
    """
    if len(a_correct) != len(b_correct):
        raise ValueError(
            f"paired test needs the same problems: {len(a_correct)} vs {len(b_correct)} results"
        )
    n = len(a_correct)
    b01 = sum(1 for a, b in zip(a_correct, b_correct, strict=True) if not a and b)
    b10 = sum(1 for a, b in zip(a_correct, b_correct, strict=True) if a and not b)
    p = _binom_two_sided_half(b01, b01 + b10)
    significant = p < alpha
    counts = f"{a_name} right/{b_name} wrong on {b10}, {a_name} wrong/{b_name} right on {b01}"
    if significant:
        better = b_name if b01 > b10 else a_name
        statement = f"{better} better, significant at n={n} (p={format_p(p)}); {counts}"
    else:
        statement = f"not significant at n={n} (p={format_p(p)}); {counts}"
    return McNemarResult(b01=b01, b10=b10, p_value=p, significant=significant, statement=statement)


class WelchResult(NamedTuple):
    """Welch's unequal-variance t-test; unpacks as ``t, p``."""

    t: float
    p: float


def mean_std(xs: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1); std is None for a single value.

    None rather than 0.0 because one seed says nothing about spread, and a report that
    printed "+- 0.0" would claim otherwise.
    """
    n = len(xs)
    if n == 0:
        raise ValueError("mean_std of an empty sequence")
    mean = math.fsum(xs) / n
    if n < 2:
        return mean, None
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1)
    return mean, math.sqrt(var)


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> WelchResult | None:
    """Two-sided Welch t-test for two independent samples (e.g. metrics over seeds).

    Returns None when either sample has fewer than 2 values: the variance, and so the test,
    is undefined ("n too small"); callers print that rather than a fake p-value. When both
    samples have zero variance the result is (0, 1) for equal means and (+-inf, 0) otherwise.
    """
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy.stats import t as t_dist  # deferred: scipy is slow to import; only Welch needs it

    ma, va = mean_std(a)
    mb, vb = mean_std(b)
    assert va is not None and vb is not None
    sa, sb = va * va / len(a), vb * vb / len(b)
    se2 = sa + sb
    if se2 == 0.0:
        if ma == mb:
            return WelchResult(0.0, 1.0)
        return WelchResult(math.copysign(math.inf, ma - mb), 0.0)
    t = (ma - mb) / math.sqrt(se2)
    # Welch-Satterthwaite degrees of freedom
    df = se2 * se2 / (sa * sa / (len(a) - 1) + sb * sb / (len(b) - 1))
    p = float(2.0 * t_dist.sf(abs(t), df))
    return WelchResult(float(t), min(1.0, p))
