"""One bad-input policy for every reader (issue 18, item 7).

``prepare`` (text and JSONL) and the GSM8K reader that ``bench`` and GRPO use must name the same
``file:line`` (and byte column) for the same bad byte, refuse a binary file as a whole, and
report a flood of bad lines as the first few plus an exact count.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from shoestring.bench.config import BenchConfig
from shoestring.bench.problems import load_problems
from shoestring.bench.protocol import ProtocolChoice
from shoestring.bench.runner import run
from shoestring.data import text
from shoestring.data.documents import iter_documents
from shoestring.data.gsm8k import load_gsm8k
from shoestring.data.input_report import MAX_REPORTS, InputReport, json_problem, refuse_binary
from shoestring.errors import UserError
from shoestring.rundir.directory import RunDir


def _gsm8k_lines(n: int) -> list[bytes]:
    rows = [{"question": f"What is {i} plus 1?", "answer": f"#### {i + 1}"} for i in range(n)]
    return [json.dumps(row).encode() for row in rows]


def _bad_byte_file(tmp_path: Path) -> Path:
    """30 GSM8K rows; row 25 has the byte 0xff inside its question, at byte column 20."""
    lines = _gsm8k_lines(30)
    lines[24] = lines[24].replace(b"What is", b"What \xffis", 1)
    p = tmp_path / "bad.jsonl"
    p.write_bytes(b"\n".join(lines) + b"\n")
    return p


def _binary_file(tmp_path: Path) -> Path:
    p = tmp_path / "random.jsonl"
    p.write_bytes(os.urandom(50_000))  # random bytes: NUL bytes and invalid UTF-8 throughout
    return p


def test_prepare_and_bench_name_the_same_line_and_column(tmp_path: Path) -> None:
    bad = _bad_byte_file(tmp_path)
    expected = f"{bad}:25: invalid UTF-8 (byte 0xff at byte column 20)"
    # prepare's reader
    report = InputReport(echo=False)
    assert len(list(iter_documents(bad, report=report))) == 30  # replaced, kept
    assert report.decode_errors == [expected]
    meta = text.run(bad, tmp_path / "prep", vocab_size=300, quiet=True)
    assert meta["decode_errors"] == [expected] and meta["n_decode_errors"] == 1
    # bench's reader (the same one GRPO uses)
    warnings: list[str] = []
    problems = load_gsm8k(bad, on_warning=warnings.append)
    assert warnings == [expected] and len(problems) == 29


def test_binary_input_refused_by_prepare_and_bench(tmp_path: Path) -> None:
    binary = _binary_file(tmp_path)
    with pytest.raises(UserError, match=r"random.jsonl looks like a binary file"):
        text.run(binary, tmp_path / "prep", vocab_size=300, quiet=True)
    assert not (tmp_path / "prep" / "meta.json").exists()
    cfg = BenchConfig(
        models=["unused"],
        data=str(binary),
        device="cpu",
        dtype="fp32",
        out=str(tmp_path / "b"),
        quiet=True,
    )
    with pytest.raises(UserError, match=r"random.jsonl looks like a binary file \(a NUL byte"):
        run(cfg)
    # UTF-16 text is refused too (NUL bytes), with the way out named
    utf16 = tmp_path / "notes.txt"
    utf16.write_text("a line of text\n" * 50, encoding="utf-16")
    with pytest.raises(UserError, match="iconv -f UTF-16"):
        refuse_binary(utf16)
    refuse_binary(_bad_byte_file(tmp_path))  # one bad byte in text is not binary


def test_many_bad_lines_give_a_summary_not_a_flood(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lines = _gsm8k_lines(5) + [b"{not json"] * 300
    p = tmp_path / "many.jsonl"
    p.write_bytes(b"\n".join(lines) + b"\n")
    cfg = BenchConfig(models=["unused"], data=str(p), device="cpu", out=str(tmp_path / "b"))
    rundir = RunDir(tmp_path / "b", "bench", echo=False)
    with caplog.at_level(logging.WARNING, logger="shoestring.data.gsm8k"):
        problems = load_problems(cfg, ProtocolChoice.resolve(cfg.protocol), rundir.log)
    rundir.close()
    assert len(caplog.records) == MAX_REPORTS + 2  # the first 20, "... and 280 more", a total
    log = (tmp_path / "b" / "log.txt").read_text()
    assert log.count("data: skipped") == MAX_REPORTS + 1 and "280 more" in log
    data = problems.summary(cfg)
    assert data["n_skipped_lines"] == 300 and len(data["skipped_lines"]) == MAX_REPORTS
    assert data["skipped_lines"][0].startswith(f"{p}:6: invalid JSON (Expecting property name")


def test_json_error_text_never_says_at_at() -> None:
    try:
        json.loads('{"a": "x\ty"}')  # a raw tab: "Invalid control character at"
    except json.JSONDecodeError as exc:
        msg = json_problem(exc)
    assert msg == "invalid JSON (Invalid control character at column 9)"
    assert "at at" not in msg


def test_prepare_leaves_out_a_directory_s_validation_and_test_files(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, word in (("train.txt", "alpha"), ("valid.txt", "VALIDWORD"), ("test.txt", "TESTW")):
        (corpus / name).write_text("\n\n".join(f"{word} document {i}." for i in range(6)) + "\n")
    meta = text.run(corpus, tmp_path / "out", vocab_size=300, quiet=True)
    assert meta["files"] == [str(corpus / "train.txt")]
    assert meta["held_out_files_skipped"] == [str(corpus / "test.txt"), str(corpus / "valid.txt")]
    assert meta["train_documents"] + meta["val_documents"] == 6
    assert "held out   test.txt, valid.txt left out" in text.format_summary(meta)
    every = text.run(corpus, tmp_path / "all", vocab_size=300, quiet=True, all_splits=True)
    assert every["train_documents"] + every["val_documents"] == 18
    # a held-out file given by name is read: the user asked for it
    assert text.run(corpus / "test.txt", tmp_path / "t", vocab_size=300, quiet=True)["files"]
    only = tmp_path / "only"
    only.mkdir()
    (only / "test.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    with pytest.raises(UserError, match="every file in .* is a validation or test split"):
        text.run(only, tmp_path / "o", vocab_size=300, quiet=True)


def test_readme_recipe_prepares_wikitext2_train_split_only(shared_dir: Path) -> None:
    from shoestring.data.documents import resolve_source

    # the README names the split file; the directory form also leaves valid/test out
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "shoestring prepare ../shared/data/wikitext-2/train.txt" in readme
    assert "shoestring prepare ../shared/data/wikitext-2 " not in readme
    src = resolve_source(shared_dir / "data" / "wikitext-2")
    assert "train.txt" in [p.name for p in src.files()]
    assert not {"test.txt", "valid.txt"} & {p.name for p in src.files()}
    assert sorted(p.name for p in src.held_out_files()) == ["test.txt", "valid.txt"]
    gsm = resolve_source(shared_dir / "data" / "gsm8k")
    assert not any(p.name.startswith("test") for p in gsm.files())


def test_grpo_records_skipped_dataset_lines_in_its_run_directory(tmp_path: Path) -> None:
    from _helpers import char_tokenizer, save_tiny_llama
    from shoestring.rl.config import grpo_config
    from shoestring.rl.trainer import GRPOTrainer

    model = save_tiny_llama(tmp_path / "tiny", char_tokenizer())
    data = tmp_path / "gsm.jsonl"
    data.write_bytes(b"\n".join([*_gsm8k_lines(8), b"{oops", b'{"question": "q"}']) + b"\n")
    cfg = grpo_config(
        overrides=[
            f"model_name_or_path={model}",
            f"dataset=gsm8k:{data}",
            "num_generations=2",
            "per_device_train_batch_size=2",
            "max_completion_length=4",
            "max_steps=1",
            "threads=1",
            "dtype=fp32",
            "device=cpu",
            "eval_problems=0",
        ]
    )
    GRPOTrainer(cfg, tmp_path / "run", echo=False, progress=False).run()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["data"]["n_skipped_lines"] == 2
    assert summary["data"]["skipped_lines"][0].startswith(f"{data}:9: invalid JSON")
    assert summary["data"]["skipped_lines"][1] == f"{data}:10: missing field 'answer'"
    assert any("2 malformed line(s)" in w for w in summary["warnings"])
    assert f"data: skipped {data}:9: invalid JSON" in (tmp_path / "run" / "log.txt").read_text()


def test_grpo_records_skipped_held_out_lines_in_its_run_directory(tmp_path: Path) -> None:
    from _helpers import char_tokenizer, save_tiny_llama
    from shoestring.rl.config import grpo_config
    from shoestring.rl.trainer import GRPOTrainer

    model = save_tiny_llama(tmp_path / "tiny", char_tokenizer())
    train = tmp_path / "train.jsonl"
    train.write_bytes(b"\n".join(_gsm8k_lines(8)) + b"\n")
    held_out = tmp_path / "test.jsonl"
    unseen = [line.replace(b"plus", b"times") for line in _gsm8k_lines(4)]  # not in train
    held_out.write_bytes(b"\n".join([*unseen, b"{oops"]) + b"\n")
    cfg = grpo_config(
        overrides=[
            f"model_name_or_path={model}",
            f"dataset=gsm8k:{train}",
            f"eval_dataset=gsm8k:{held_out}",
            "eval_problems=2",
            "num_generations=2",
            "per_device_train_batch_size=2",
            "max_completion_length=4",
            "max_steps=1",
            "threads=1",
            "dtype=fp32",
            "device=cpu",
        ]
    )
    GRPOTrainer(cfg, tmp_path / "run", echo=False, progress=False).run()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["eval_data"]["n_skipped_lines"] == 1
    assert summary["eval_data"]["skipped_lines"][0].startswith(f"{held_out}:5: invalid JSON")
    assert any("1 malformed line(s)" in w for w in summary["warnings"])
    log = (tmp_path / "run" / "log.txt").read_text()
    assert f"eval_data: skipped {held_out}:5: invalid JSON" in log
