"""GSM8K loading (bad lines reported with file:line, seeded subsets) and prompt protocols."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from shoestring.data.gsm8k import (
    LM_EVAL_FEWSHOT,
    lm_eval_fewshot_indices,
    load_gsm8k,
    read_gsm8k_jsonl,
    select_subset,
)
from shoestring.errors import UserError


def _line(q: str, a: str) -> str:
    return json.dumps({"question": q, "answer": a})


def _write(path: Path, lines: list[str | bytes]) -> Path:
    data = b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines)
    path.write_bytes(data)
    return path


def _problems(n: int) -> list[str]:
    return [_line(f"What is {i} + 1?", f"{i} + 1 = {i + 1}\n#### {i + 1}") for i in range(n)]


# --- loading ----------------------------------------------------------------------------------


def test_bad_lines_reported_with_file_and_line(tmp_path: Path, caplog) -> None:
    good = _problems(3)
    path = _write(
        tmp_path / "mixed.jsonl",
        [
            good[0],
            "{not json",
            json.dumps({"question": "no answer here"}),
            good[1],
            "",  # blank lines are not records
            json.dumps({"question": "Q", "answer": "no final line"}),
            b'{"question": "\xff", "answer": "#### 1"}',
            json.dumps(["a", "list"]),
            good[2],
        ],
    )
    warnings: list[str] = []
    with caplog.at_level(logging.WARNING, logger="shoestring.data.gsm8k"):
        problems = load_gsm8k(path, on_warning=warnings.append)
    assert [p.idx for p in problems] == [0, 3, 8]  # idx = 0-based line in the file
    assert [p.gold for p in problems] == ["1", "2", "3"]
    assert len(warnings) == 5
    assert warnings[0].startswith(f"{path}:2: invalid JSON")
    assert warnings[1] == f"{path}:3: missing field 'answer'"
    assert warnings[2].startswith(f"{path}:6: no '#### N' line")
    assert warnings[3].startswith(f"{path}:7: invalid UTF-8 (byte 0xff at byte column")
    assert warnings[4] == f"{path}:8: expected a JSON object, got list"
    assert f"{path}:2: invalid JSON" in caplog.text
    assert "skipped 5 bad line(s), kept 3" in caplog.text


def test_strict_mode_rejects_first_bad_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.jsonl", [*_problems(2), "{oops"])
    with pytest.raises(UserError, match=r"bad\.jsonl:3: invalid JSON") as one:
        load_gsm8k(path, strict=True)
    assert "more)" not in str(one.value)  # one bad line: no "(and 0 more)"
    path = _write(tmp_path / "two.jsonl", [*_problems(2), "{oops", "[]"])
    with pytest.raises(UserError, match=r"two\.jsonl:3: invalid JSON.* \(and 1 more\)"):
        load_gsm8k(path, strict=True)


def test_nothing_valid_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "junk.jsonl", ["{", "[]"])
    with pytest.raises(UserError, match="no valid GSM8K problems"):
        load_gsm8k(path)


def test_missing_inputs_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_gsm8k(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match=r"has no test\.jsonl"):
        load_gsm8k(tmp_path)


def test_directory_and_split(tmp_path: Path) -> None:
    _write(tmp_path / "train.jsonl", _problems(4))
    _write(tmp_path / "test.jsonl", _problems(2))
    assert len(load_gsm8k(tmp_path)) == 2
    assert len(load_gsm8k(tmp_path, split="train")) == 4


def test_subset_first_n_and_seeded(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.jsonl", _problems(100))
    first = load_gsm8k(path, limit=5)
    assert [p.idx for p in first] == [0, 1, 2, 3, 4]
    a = load_gsm8k(path, limit=10, subset_seed=7)
    b = load_gsm8k(path, limit=10, subset_seed=7)
    c = load_gsm8k(path, limit=10, subset_seed=8)
    assert [p.idx for p in a] == [p.idx for p in b]  # same seed, same problems
    assert [p.idx for p in a] != [p.idx for p in c]
    assert [p.idx for p in a] == sorted(p.idx for p in a)  # kept in file order
    bigger = load_gsm8k(path, limit=30, subset_seed=7)
    assert {p.idx for p in a} <= {p.idx for p in bigger}  # nested subsets
    assert len(load_gsm8k(path, limit=1000)) == 100
    with pytest.raises(UserError):
        select_subset(first, 0, None)


def test_hub_name_without_datasets_is_a_clear_error(monkeypatch, tmp_path: Path) -> None:
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("no datasets")
        return real_import(name, *args, **kwargs)

    monkeypatch.chdir(tmp_path)  # no local "openai/gsm8k" path
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(UserError, match="optional 'datasets' package"):
        load_gsm8k("openai/gsm8k")


def test_real_files(shared_dir: Path) -> None:
    problems, issues = read_gsm8k_jsonl(shared_dir / "data/gsm8k/test.jsonl")
    assert len(problems) == 1319 and issues == []
    assert problems[0].gold == "18"  # Janet's ducks
    train = load_gsm8k(shared_dir / "data/gsm8k", split="train")
    assert len(train) == 7473


# --- prompts ----------------------------------------------------------------------------------


def test_lm_eval_fewshot_is_lm_evals_first_draw() -> None:
    # lm-eval: random.Random(1234).sample(train, 5), one draw per evaluated document
    draws = lm_eval_fewshot_indices(n_train=7473, n_docs=2)
    assert draws[0] == [p.idx for p in LM_EVAL_FEWSHOT] == [6374, 3610, 957, 61, 742]
    assert draws[1] != draws[0]


def test_embedded_shots_match_train_file(shared_dir: Path) -> None:
    lines = (shared_dir / "data/gsm8k/train.jsonl").read_text(encoding="utf-8").splitlines()
    for shot in LM_EVAL_FEWSHOT:
        row = json.loads(lines[shot.idx])
        assert (row["question"], row["answer"]) == (shot.question, shot.answer)
