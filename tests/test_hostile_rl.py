"""Hostile input to ``grpo`` and ``progressive`` (issue 25's faults that reach them): a
``--resume`` of another command's run, and where a run's data came from.

Each case runs through the CLI (``shoestring.cli.main``) and checks the one-line error and its
exit code 2, or what the run directory records.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _helpers import char_tokenizer, save_tiny_llama
from shoestring.cli import main


def _fake_run(path: Path, kind: str, config: dict) -> Path:
    """A run directory of ``kind`` as its command leaves it when interrupted: config.json and
    a summary.json recording the kind (what every command's RunDir writes)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    summary = {"kind": kind, "status": "interrupted", "run_name": path.name}
    (path / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return path


TRAIN_CONFIG = {
    "model": {"d_model": 64, "n_layers": 2},
    "train": {"steps": 100, "batch_size": 8},
    "data": {"path": "data/prepared"},
}


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("command", ["grpo", "progressive"])
def test_resume_of_a_train_run_says_whose_run_it_is(tmp_path: Path, capsys, command: str):
    run = _fake_run(tmp_path / "pretrain", "train", TRAIN_CONFIG)
    before = sorted(p.name for p in run.iterdir())
    assert main([command, "--resume", str(run)]) == 2
    line = _one_error_line(capsys)
    assert f"is a train run, not a {command} run" in line and "`shoestring train`" in line
    assert "unknown config key" not in line
    assert sorted(p.name for p in run.iterdir()) == before  # nothing of the train run touched


def test_resume_of_a_grpo_run_as_progressive_and_back(tmp_path: Path, capsys) -> None:
    grpo_run = _fake_run(tmp_path / "g", "grpo", {"model_name_or_path": "m"})
    assert main(["progressive", "--resume", str(grpo_run)]) == 2
    assert "is a grpo run, not a progressive run" in _one_error_line(capsys)
    curriculum = _fake_run(tmp_path / "p", "progressive", {"model": "m", "stages": []})
    assert main(["grpo", "--resume", str(curriculum)]) == 2
    line = _one_error_line(capsys)
    assert "is a progressive run, not a grpo run" in line
    assert "`shoestring progressive`" in line


def test_resume_of_a_binary_config_names_the_file(tmp_path: Path, capsys) -> None:
    run = tmp_path / "g"
    run.mkdir()
    (run / "config.json").write_bytes(b"\x00\xff binary")
    assert main(["grpo", "--resume", str(run)]) == 2
    assert str(run / "config.json") in _one_error_line(capsys)


def test_grpo_records_the_absolute_data_file(tmp_path: Path, monkeypatch, capsys) -> None:
    """``dataset=gsm8k`` read from the data root ($SHOESTRING_DATA): summary.json names the
    absolute file the prompts came from, never ``data: null``."""
    root = tmp_path / "data-root"
    (root / "gsm8k").mkdir(parents=True)
    rows = [{"question": f"What is {a} + {a}?", "answer": f"#### {2 * a}"} for a in range(1, 9)]
    train_file = root / "gsm8k" / "train.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    monkeypatch.setenv("SHOESTRING_DATA", str(root))
    model = save_tiny_llama(tmp_path / "tiny", char_tokenizer())
    run = tmp_path / "runs" / "g"
    argv = ["grpo", "--model", str(model), "--dataset", "gsm8k", "--steps", "1", "-q"]
    argv += ["--out", str(run.parent), "--name", run.name]
    for override in ("num_generations=2", "per_device_train_batch_size=2", "threads=1"):
        argv += ["--set", override]
    assert main([*argv, "--set", "max_completion_length=4"]) == 0
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary["data"]["path"] == str(train_file.resolve())
    assert summary["data"]["dataset"] == "gsm8k" and summary["data"]["n_problems"] == 8


def _short_context_gpt2(out: Path, n_positions: int = 64) -> Path:
    """A random GPT-2 (learned positions: a position past the table cannot run at all)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = char_tokenizer()
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=n_positions,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    GPT2LMHeadModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_prompts_longer_than_the_context_are_cut_from_the_left(tmp_path: Path, capsys):
    """A question far longer than a learned-position model's context (64): the prompts keep
    their last tokens with room for max_completion_length, are counted in summary.json, and
    the run finishes; a completion length that fills the context is one line, exit 2."""
    model = _short_context_gpt2(tmp_path / "gpt2")
    data = tmp_path / "long.jsonl"
    rows = [{"question": "Why? " * 2000 + "What is 5 + 5?", "answer": "#### 10"}]
    rows += [{"question": f"What is {a} + 1?", "answer": f"#### {a + 1}"} for a in range(1, 4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    argv = ["grpo", "--model", str(model), "--dataset", f"gsm8k:{data}", "--steps", "2", "-q"]
    argv += ["--out", str(tmp_path), "--set", "num_generations=2", "--set", "threads=1"]
    argv += ["--set", "per_device_train_batch_size=4", "--set", "max_prompt_length=null"]
    assert main([*argv, "--name", "ok", "--set", "max_completion_length=8"]) == 0
    summary = json.loads((tmp_path / "ok" / "summary.json").read_text(encoding="utf-8"))
    assert summary["status"] == "finished"
    prompts = summary["prompts"]
    assert prompts["context_limit"] == 64 and prompts["prompt_budget"] == 64 - 8
    assert prompts["cut_by_context"] == 1 and prompts["n"] == 4
    assert any("model's context of 64 tokens" in w for w in summary["warnings"])
    capsys.readouterr()
    assert main([*argv, "--name", "full", "--set", "max_completion_length=64"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "max_completion_length=64 leaves no room" in line


@pytest.mark.parametrize("name", ["../escape", "/abs", "a/b", ""])
def test_grpo_name_is_one_directory_inside_out(tmp_path: Path, capsys, name: str) -> None:
    out = tmp_path / "runs"
    argv = ["grpo", "--model", str(tmp_path / "m"), "--out", str(out), "--name", name]
    assert main(argv) == 2
    assert "is not a directory name" in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []  # nothing written, inside --out or beside it
