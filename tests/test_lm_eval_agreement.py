"""bench and lm-evaluation-harness judge the same problems the same way, right answers included.

For three protocols - ``lm-eval-5shot`` (lm-eval's ``gsm8k``), ``lm-eval-cot-0shot``
(``gsm8k_cot_zeroshot``) and ``lm-eval-5shot-chat`` (``gsm8k --apply_chat_template``, few-shot
as multi-turn) - both tools answer the same toy problems with the same model, and
``benchmarks/lm_eval_vs_bench.py:agreement`` joins lm-eval's logged samples to bench's
problems.jsonl by lm-eval's ``prompt_hash``: per problem the prompt token ids, the response,
the strict and flexible answers and the verdict must be identical.

The model (``benchmarks/gsm8k_toy_model.py``) is a 2-layer Llama trained here for a few hundred
steps on GSM8K-format toy problems laid out as the three protocols ask; it learns to answer
"how many legs" questions and mostly fails the rest, so both tools see right and wrong
answers. Every third gold answer is written ``N.00``: right for a numeric judge, wrong for
lm-eval's exact match, and bench must side with lm-eval. Its context (768 positions, 512 left
for the prompt after lm-eval's 256 generated tokens) makes some few-shot prompts too long, so
lm-eval's left truncation is exercised too. lm-eval reads local files only (its installed task
YAMLs ``include``d, pointed at this test's JSONL files).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from shoestring.scoring.protocols import get_protocol

pytest.importorskip("lm_eval")
pytestmark = pytest.mark.slow

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
PROTOCOLS = ("lm-eval-5shot", "lm-eval-cot-0shot", "lm-eval-5shot-chat")
N_TEST = 12
CONTEXT = 768
STEPS = 300


def _benchmark() -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))  # it imports gsm8k_toy_model beside it
    try:
        spec = importlib.util.spec_from_file_location(
            "lm_eval_vs_bench", BENCHMARKS / "lm_eval_vs_bench.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from lm_eval.models.huggingface import HFLM

    bench = _benchmark()
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from gsm8k_toy_model import toy_problems, train_toy_model, write_gsm8k_files
    finally:
        sys.path.remove(str(BENCHMARKS))
    root = tmp_path_factory.mktemp("lm_eval_agreement")
    data = root / "gsm8k"
    train = toy_problems(300, seed=0)
    kinds = write_gsm8k_files(data, train, toy_problems(N_TEST, seed=1), numeric_only_every=3)
    protocols = [get_protocol(name) for name in PROTOCOLS]
    model = train_toy_model(root / "model", train, protocols, steps=STEPS, context=CONTEXT)
    lm = HFLM(pretrained=str(model), device="cpu", dtype="float32", batch_size=8)
    out: dict[str, Any] = {"kinds": kinds}
    for name in PROTOCOLS:
        samples, _ = bench.run_lm_eval(lm, root, data, name, N_TEST)
        records, _, _ = bench.run_bench(model, data, name, N_TEST, 1, root / f"bench-{name}")
        counts = bench.agreement(lm, name, samples, records, data, N_TEST)
        out[name] = {"counts": counts, "records": records}
    out["fields"] = bench.FIELDS
    return out


@pytest.mark.parametrize("name", PROTOCOLS)
def test_every_problem_agrees_with_lm_eval(runs: dict[str, Any], name: str) -> None:
    counts = runs[name]["counts"]
    assert counts["hash_from"] == "problems.jsonl", "bench records lm-eval's prompt_hash"
    assert {k: counts[k] for k in runs["fields"]} == dict.fromkeys(runs["fields"], N_TEST)
    assert counts["lm_eval_right"] == counts["bench_right"]


@pytest.mark.parametrize("name", PROTOCOLS)
def test_right_and_wrong_answers_are_both_judged(runs: dict[str, Any], name: str) -> None:
    right = runs[name]["counts"]["bench_right"]
    assert 0 < right < N_TEST, f"{name}: the model must answer some problems right, not all"


def test_numeric_only_golds_are_wrong_for_both(runs: dict[str, Any]) -> None:
    """A right number against an ``N.00`` gold: lm-eval (and so bench) says wrong, the lenient
    numeric protocol says right; the fixture needs at least one such answer."""
    numeric = get_protocol("gsm8k-5shot-numeric")
    lenient = 0
    for name in PROTOCOLS:
        for i, kind in enumerate(runs["kinds"]):
            rec = runs[name]["records"][i]
            if kind == "numeric-only":
                assert rec["correct"]["strict"] is False
                if name != "lm-eval-cot-0shot":  # "#### N" answers, numeric's strict form
                    lenient += numeric.score(rec["response"], rec["gold"]).ok
    assert lenient, "no right answer met an N.00 gold"


def test_some_prompts_are_left_truncated(runs: dict[str, Any]) -> None:
    assert any(runs[name]["counts"]["truncated"] for name in PROTOCOLS)
