"""Hostile inputs to ``bench`` and ``generate``, run through the command line (issue 25 faults 1,
2 and 8; issue 26's prompt hash): a prompt longer than the model's context is truncated from the
left and counted, or refused in one line before anything is generated - never a traceback, and
never at the cost of the other problems.

The models are tiny and local: a shoestring GPT with learned positions and a context of 64
tokens, and a random Llama (RoPE) with a context of 1024; the tokenizer is character-level, so a
prompt's length in tokens is its length in characters.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from _helpers import char_tokenizer, save_tiny_llama
from shoestring.bench.protocol import protocol_key
from shoestring.bench.records import prompt_hash
from shoestring.cli import main
from shoestring.data.synthetic import generate_problems
from shoestring.models.gpt import ShoestringGPTConfig, ShoestringGPTForCausalLM
from shoestring.scoring.protocols import get_protocol

LEARNED_CONTEXT = 64
RUN = ["--device", "cpu", "--dtype", "fp32", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def learned_gpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random shoestring GPT with a learned position table of 64 rows."""
    out = tmp_path_factory.mktemp("gpt") / "learned-64"
    tok = char_tokenizer()
    tok.model_max_length = LEARNED_CONTEXT  # as make_portable sets it for a run's model
    torch.manual_seed(0)
    cfg = ShoestringGPTConfig(
        vocab_size=len(tok),
        d_model=32,
        n_layers=1,
        n_heads=2,
        d_ff=64,
        max_seq_len=LEARNED_CONTEXT,
        position="learned",
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    ShoestringGPTForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def rope_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Llama (RoPE, max_position_embeddings 1024)."""
    return save_tiny_llama(tmp_path_factory.mktemp("llama") / "rope-1024", char_tokenizer())


def _problems(path: Path, huge: int | None = None, n: int = 7) -> list[dict[str, str]]:
    """``n`` GSM8K-format problems at ``path``; problem ``huge`` gets a 1 MB question."""
    rows = [
        {"question": p["question"], "answer": p["answer"]}
        for p in generate_problems(n, level=1, seed=5)
    ]
    if huge is not None:
        filler = "Tom has 3 apples and buys 4 more. " * (2**20 // 34 + 1)
        rows[huge]["question"] = filler[: 2**20 - 40] + "How many apples does Tom have?"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


def _bench(model: Path, data: Path, out: Path, *extra: str) -> int:
    return main(["bench", str(model), "--data", str(data), "--out", str(out), *RUN, *extra])


def _records(out: Path, label: str) -> list[dict[str, Any]]:
    lines = (out / "models" / label / "problems.jsonl").read_text(encoding="utf-8").splitlines()
    return sorted((json.loads(x) for x in lines), key=lambda r: r["idx"])


def _summary(run: Path) -> dict[str, Any]:
    return json.loads((run / "summary.json").read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- bench


def test_a_1mb_question_is_truncated_and_every_other_problem_is_scored(
    rope_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fault 1: the longest prompt runs first; it must not cost the other six problems."""
    rows = _problems(tmp_path / "test.jsonl", huge=2)
    out = tmp_path / "bench"
    assert _bench(rope_llama, tmp_path / "test.jsonl", out, "--max-new-tokens", "12") == 0
    assert "Traceback" not in capsys.readouterr().err
    records = _records(out, "rope-1024")
    assert [r["idx"] for r in records] == list(range(7))  # all seven scored
    big = records[2]
    assert big["prompt_tokens"] == 1024 - 12  # the last (context - max_new_tokens) tokens
    assert big["prompt_tokens_cut"] > 2**20 - 1024
    assert all(r["prompt_tokens_cut"] == 0 for i, r in enumerate(records) if i != 2)
    for r, row in zip(records, rows, strict=True):  # the others' records are whole
        assert r["question"] == row["question"] and r["response"] is not None
    summary = _summary(out)
    assert summary["status"] == "finished" and summary["prompts_truncated"] == 1
    (model,) = summary["models"]
    assert model["context"] == {
        "limit": 1024,
        "prompt_budget": 1012,
        "past_context": False,
        "prompts_truncated": 1,
    }
    assert model["metrics"]["accuracy"][model["primary_extractor"]]["n"] == 7
    assert "left-truncated" in (out / "log.txt").read_text(encoding="utf-8")


def test_learned_positions_shorter_than_the_prompts_are_truncated_like_lm_eval(
    learned_gpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fault 2: context 64, prompts of 100+ tokens: each keeps its last 64 - 8 tokens."""
    _problems(tmp_path / "test.jsonl")
    out = tmp_path / "bench"
    assert _bench(learned_gpt, tmp_path / "test.jsonl", out, "--max-new-tokens", "8") == 0
    assert "Traceback" not in capsys.readouterr().err
    records = _records(out, "learned-64")
    assert len(records) == 7
    assert all(r["prompt_tokens"] == LEARNED_CONTEXT - 8 for r in records)
    assert all(r["prompt_tokens_cut"] > 0 for r in records)
    assert _summary(out)["models"][0]["context"]["prompts_truncated"] == 7


def test_no_room_for_a_prompt_is_refused_in_one_line_before_any_model_loads(
    rope_llama: Path, learned_gpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fault 2 with 100 new tokens in a context of 64: exit 2, one line, from the preflight -
    the first model (whose context fits) never starts either, so nothing is half done. The
    learned-position model is a shoestring run directory (its weights in model/)."""
    _problems(tmp_path / "test.jsonl")
    run_dir = tmp_path / "learned-run"
    shutil.copytree(learned_gpt, run_dir / "model")
    out = tmp_path / "bench"
    argv = ["bench", str(rope_llama), str(run_dir), "--data", str(tmp_path / "test.jsonl")]
    assert main([*argv, "--out", str(out), *RUN, "--max-new-tokens", "100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert "learned-run: max_new_tokens=100" in err[0]
    assert "lower max_new_tokens below 64" in err[0]
    assert _summary(out)["status"] == "failed"
    assert not (out / "models").exists()  # no model loaded, nothing generated
    assert not (out / "config.json").exists()


def test_prompt_hash_is_lm_evals_and_the_prompt_is_kept_on_request(
    rope_llama: Path, tmp_path: Path
) -> None:
    """Issue 26 item 6: problems.jsonl's prompt_hash is lm-eval's hash of the prompt text."""
    rows = _problems(tmp_path / "test.jsonl", n=3)
    out = tmp_path / "bench"
    argv = ["--max-new-tokens", "4", "--protocol", "qa", "--set", "log_prompts=true"]
    assert _bench(rope_llama, tmp_path / "test.jsonl", out, *argv) == 0
    qa = get_protocol("qa")
    for rec, row in zip(_records(out, "rope-1024"), rows, strict=True):
        text = qa.prompt(row["question"])
        assert rec["prompt"] == text
        assert rec["prompt_hash"] == prompt_hash(text)
    # without log_prompts the hash stays, the text does not
    out2 = tmp_path / "bench2"
    assert _bench(rope_llama, tmp_path / "test.jsonl", out2, "--max-new-tokens", "4") == 0
    rec = _records(out2, "rope-1024")[0]
    assert "prompt" not in rec and len(rec["prompt_hash"]) == 64


def test_prompt_hash_equals_lm_eval_hash_string() -> None:
    utils = pytest.importorskip("lm_eval.utils")
    for text in ("Question: 2+2?\nAnswer:", "ünïcödé ✓\n\n#### 4", ""):
        assert prompt_hash(text) == utils.hash_string(text)


def test_protocol_key_includes_max_new_tokens() -> None:
    """Quickstart's 160 tokens and bench's 256 must not share one protocol key."""
    plain = get_protocol("plain")
    assert protocol_key(plain, 160) != protocol_key(plain, 256)
    assert protocol_key(plain, 256) == protocol_key(plain, 256)
    assert protocol_key(plain, 256).startswith("plain@")


# ----------------------------------------------------------------------------- generate


def _generate(model: Path, out: Path, prompt: str, *extra: str) -> int:
    argv = ["generate", str(model), "--prompt", prompt, "--out", str(out), "--name", "g"]
    return main([*argv, "--device", "cpu", "--dtype", "fp32", "--quiet", *extra])


@pytest.mark.parametrize("fixture, limit", [("learned_gpt", LEARNED_CONTEXT), ("rope_llama", 1024)])
def test_generate_truncates_a_100k_character_prompt_with_a_warning(
    fixture: str,
    limit: int,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Fault 8: no traceback on learned positions; RoPE warns and records the truncation."""
    model = request.getfixturevalue(fixture)
    prompt = "The quick brown fox jumps over the lazy dog. " * 2300  # ~100k characters
    assert _generate(model, tmp_path, prompt, "--max-new-tokens", "8") == 0
    assert "Traceback" not in capsys.readouterr().err
    run = tmp_path / "g"
    (record,) = [json.loads(x) for x in (run / "generations.jsonl").read_text().splitlines()]
    assert record["prompt"] == prompt and record["prompt_tokens"] == limit - 8
    n_tokens = len(char_tokenizer()(prompt)["input_ids"])
    assert record["prompt_tokens_cut"] == n_tokens - (limit - 8)
    summary = _summary(run)
    assert summary["status"] == "finished" and summary["prompts_truncated"] == 1
    assert summary["context"] == {
        "limit": limit,
        "prompt_budget": limit - 8,
        "past_context": False,
    }
    assert "WARNING prompt 0 is longer than the model's context" in (run / "log.txt").read_text()


def test_generate_refuses_max_new_tokens_past_the_context_in_one_line(
    learned_gpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """generate's default 100 new tokens cannot fit a context of 64: exit 2, no run dir."""
    assert _generate(learned_gpt, tmp_path, "Hello") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lower max_new_tokens below 64" in err[0]
    assert not (tmp_path / "g").exists()


def test_generate_on_rope_runs_past_a_context_that_max_new_tokens_fills(
    rope_llama: Path, tmp_path: Path
) -> None:
    """A RoPE model can read past its context (a learned table cannot): asked for more tokens
    than its context of 1024 holds, the prompt is kept whole and the run says, in its log and
    summary, that the answer runs past the trained positions."""
    assert _generate(rope_llama, tmp_path, "Hello", "--max-new-tokens", "1030") == 0
    run = tmp_path / "g"
    summary = _summary(run)
    assert summary["context"] == {"limit": 1024, "prompt_budget": 1024, "past_context": True}
    assert summary["prompts_truncated"] == 0
    assert "runs past the positions it was trained on" in (run / "log.txt").read_text()
