"""One scoring path: the same model, problems and protocol get the same verdicts from every command.

bench, GRPO's held-out evaluation, progressive's stage gate and quickstart's held-out scoring
each run here on one small model; each must judge every problem exactly as the shared scorer
does. The gold answers are chosen from a first pass so that some problems are right and some
wrong - a test where every verdict is "wrong" could not tell two scorers apart.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _helpers import char_tokenizer, save_tiny_llama
from shoestring.bench import runner as bench_runner
from shoestring.bench.config import BenchConfig
from shoestring.bench.records import read_problem_records
from shoestring.data.synthetic import generate_problems
from shoestring.models.loading import load_model_and_tokenizer
from shoestring.quickstart import QUICKSTART_MAX_NEW_TOKENS, score_held_out
from shoestring.rl.config import GRPOConfig
from shoestring.rl.curriculum_eval import ValidationEvaluator
from shoestring.rl.heldout import HeldOutEval
from shoestring.rl.progressive_config import ValidationConfig
from shoestring.scoring.protocols import get_protocol
from shoestring.scoring.scoring import score_model

N = 10
#: ``plain`` judges the last number, which a random character-level model writes often enough
#: to give a mix of right and wrong answers once the golds are set from a first pass.
PROTOCOL = "plain"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[bool]]:
    """A random tiny Llama directory, a GSM8K-format test.jsonl, and the expected verdicts."""
    root = tmp_path_factory.mktemp("scoring")
    model_dir = save_tiny_llama(root / "model", char_tokenizer(), seed=1)

    questions = [p["question"] for p in generate_problems(N, level=1, seed=5)]
    model, tokenizer, _ = load_model_and_tokenizer(model_dir, device="cpu", dtype="fp32")
    first = score_model(
        model,
        tokenizer,
        questions,
        ["0"] * N,
        get_protocol(PROTOCOL),
        max_new_tokens=QUICKSTART_MAX_NEW_TOKENS,
        progress=False,
    )
    # gold = the model's own answer on even problems (right), another number on odd ones (wrong)
    golds, expected = [], []
    for i, s in enumerate(first):
        pred = s.scored.pred
        right = i % 2 == 0 and pred is not None and "/" not in pred
        golds.append(pred if right else str(int(float(pred or 0)) + 7))
        expected.append(right)
    data_dir = root / "gsm8k"
    data_dir.mkdir()
    rows = [
        {"question": q, "answer": f"Work.\n#### {g}"} for q, g in zip(questions, golds, strict=True)
    ]
    (data_dir / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert any(expected) and not all(expected), "the fixture needs right and wrong answers"
    return model_dir, data_dir, expected


def test_bench_grpo_gate_and_quickstart_judge_identically(
    setup: tuple[Path, Path, list[bool]], tmp_path: Path
) -> None:
    model_dir, data_dir, expected = setup
    protocol = get_protocol(PROTOCOL)
    problems = [json.loads(x) for x in (data_dir / "test.jsonl").read_text().splitlines()]

    # bench
    bench_cfg = BenchConfig(
        models=[str(model_dir)],
        data=str(data_dir / "test.jsonl"),
        protocol=PROTOCOL,
        max_new_tokens=QUICKSTART_MAX_NEW_TOKENS,
        dtype="fp32",
        device="cpu",
        threads=1,
        out=str(tmp_path / "bench"),
        quiet=True,
    )
    bench_runner.run(bench_cfg)
    (records_path,) = (tmp_path / "bench" / "models").glob("*/problems.jsonl")
    records, issues = read_problem_records(records_path)
    assert not issues
    by_idx = {r["idx"]: r["correct"][protocol.primary] for r in records}
    bench = [by_idx[i] for i in range(N)]

    # GRPO's held-out evaluation
    grpo_cfg = GRPOConfig(
        model_name_or_path=str(model_dir),
        dataset=f"gsm8k:{data_dir}",
        protocol=PROTOCOL,
        eval_problems=N,
        max_completion_length=QUICKSTART_MAX_NEW_TOKENS,
    )
    heldout = HeldOutEval(grpo_cfg, protocol, set(), "fp32")
    model, tokenizer, _ = load_model_and_tokenizer(model_dir, device="cpu", dtype="fp32")
    heldout.run(model, tokenizer, "before", tmp_path, False, lambda msg: None)
    grpo = heldout.correct["before"]

    # progressive's stage gate
    gate_cfg = ValidationConfig(
        dataset=f"gsm8k:{data_dir}",
        split="test",
        n=N,
        max_new_tokens=QUICKSTART_MAX_NEW_TOKENS,
        protocol=PROTOCOL,
        device="cpu",
        dtype="fp32",
    )
    gate = ValidationEvaluator(gate_cfg, progress=False)(model_dir, "gate")

    # quickstart's held-out scoring
    quick = [s.ok for s in score_held_out(model_dir, problems, protocol, "cpu", progress=False)]

    assert bench == expected
    assert grpo == expected
    assert gate.per_problem == expected
    assert quick == expected
    assert gate.extra["protocol_key"] == protocol.key()
