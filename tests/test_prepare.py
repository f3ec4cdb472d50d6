"""``shoestring prepare``: documents, split, tokenizer, shards, meta and the errors users see.

Corpora here are tiny (tens of short documents, vocab 300) so the whole file runs in seconds on
two shared cores; the one real-data test uses WikiText-2's validation file only.
"""

from __future__ import annotations

import argparse
import json
import types
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from shoestring.config import ConfigError
from shoestring.data import synthetic
from shoestring.data.documents import iter_documents
from shoestring.data.input_report import InputReport
from shoestring.data.prepared import load_prepared
from shoestring.data.shards import EOS_TOKEN, dtype_for
from shoestring.data.text import run
from shoestring.errors import UserError
from shoestring.prepare import cli as prepare_cli

VOCAB = 300


def _docs(n: int, seed: int = 0) -> list[str]:
    """Distinct one-paragraph documents (synthetic problems, questions and answers joined)."""
    return [
        f"{p['question']} {p['answer'].replace(chr(10), ' ')}"
        for p in synthetic.generate_problems(n, seed=seed)
    ]


def _write_text(path: Path, docs: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def _shard_docs(arr: np.ndarray, eos_id: int, tok: Tokenizer) -> list[str]:
    """Decode a shard back into its documents (each one ends with EOS)."""
    assert arr[-1] == eos_id
    ends = np.flatnonzero(np.asarray(arr) == eos_id)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [
        tok.decode(arr[s:e].tolist(), skip_special_tokens=False)
        for s, e in zip(starts, ends, strict=True)
    ]


def _prep(src: Path | str, out: Path, **kw):
    kw.setdefault("vocab_size", VOCAB)
    return run(src, out, quiet=True, **kw)


def test_single_file_meta_shards_and_roundtrip(tmp_path: Path) -> None:
    docs = _docs(24)
    src = _write_text(tmp_path / "corpus.txt", docs)
    meta = _prep(src, tmp_path / "out")
    assert meta == json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["format"] == 1 and meta["split"] == "document" and meta["dtype"] == "uint16"
    assert meta["train_documents"] + meta["val_documents"] == 24
    assert meta["val_documents"] == 1  # round(24 * 0.05)
    assert meta["bytes"] == sum(len(d.encode()) for d in docs)
    assert meta["vocab_size"] <= VOCAB and meta["n_decode_errors"] == 0

    data = load_prepared(tmp_path / "out")
    assert data.train.dtype == np.uint16 and not data.train.flags.writeable
    assert (len(data.train), len(data.val)) == (meta["train_tokens"], meta["val_tokens"])
    assert int((data.train == meta["eos_id"]).sum()) == meta["train_documents"]
    tok = Tokenizer.from_file(str(data.tokenizer_path))
    assert tok.id_to_token(meta["eos_id"]) == EOS_TOKEN
    train_docs = _shard_docs(data.train, data.eos_id, tok)
    val_docs = _shard_docs(data.val, data.eos_id, tok)
    assert sorted(train_docs + val_docs) == sorted(docs)  # exact text back
    train_text = "\n".join(train_docs)
    assert all(v not in train_text for v in val_docs)  # the split is by document


def test_split_is_seeded_and_holds_out_whole_documents(tmp_path: Path) -> None:
    src = _write_text(tmp_path / "c.txt", _docs(40))
    a = _prep(src, tmp_path / "a", val_fraction=0.2, seed=1)
    _prep(src, tmp_path / "b", val_fraction=0.2, seed=1)
    _prep(src, tmp_path / "c", val_fraction=0.2, seed=2)
    assert a["val_documents"] == 8
    va, vb, vc = (np.fromfile(tmp_path / d / "val.bin", dtype=np.uint16) for d in "abc")
    assert np.array_equal(va, vb)
    assert not np.array_equal(va, vc)
    assert a["val_tokens"] == len(va)


def test_plain_text_documents_are_blank_line_separated(tmp_path: Path) -> None:
    p = tmp_path / "t.txt"
    p.write_bytes(b"\n\nfirst line\nsecond line  \n \n\n\r\nthird doc\r\nstill third\r\n\n")
    assert list(iter_documents(p)) == ["first line\nsecond line", "third doc\r\nstill third"]


def test_wikitext_articles_are_documents(tmp_path: Path) -> None:
    p = tmp_path / "wiki.txt"
    p.write_text(
        " \n = Alpha = \n \n Alpha text . \n \n = = History = = \n \n More alpha . \n"
        " Key : Pld \n = Played , W = \n Wins \n"  # a wrapped legend, not a heading
        " \n = Beta = \n \n Beta text . \n",
        encoding="utf-8",
    )
    docs = list(iter_documents(p))
    assert len(docs) == 2
    assert docs[0].startswith(" = Alpha = ") and "= = History = =" in docs[0]
    assert docs[0].endswith("More alpha . \n Key : Pld \n = Played , W = \n Wins")
    assert docs[1] == " = Beta = \n \n Beta text ."


def test_directory_is_read_lazily_and_recursively(tmp_path: Path) -> None:
    root = tmp_path / "in"
    _write_text(root / "a.txt", _docs(3, seed=1))
    _write_text(root / "sub" / "b.md", _docs(3, seed=2))
    _write_text(root / "sub" / "deeper" / "c.text", _docs(3, seed=3))
    (root / "image.bin").write_bytes(b"\x00\xff")  # ignored: known text files exist
    (root / ".hidden.txt").write_text("hidden\n")
    it = iter_documents(root)
    assert isinstance(it, types.GeneratorType)
    first = next(it)
    assert first == _docs(3, seed=1)[0]
    # files are opened only when reached: text added now to the last file is still read
    with (root / "sub" / "deeper" / "c.text").open("a") as f:
        f.write("\nlate document\n")
    rest = list(it)
    assert len(rest) == 9 and rest[-1] == "late document"
    meta = _prep(root, tmp_path / "out")
    assert meta["train_documents"] + meta["val_documents"] == 10


def test_output_inside_input_directory_is_not_read(tmp_path: Path) -> None:
    root = tmp_path / "in"
    for i in range(3):  # no known suffix: every file is read
        _write_text(root / f"part{i}.data", _docs(4, seed=i))
    first = _prep(root, root / "prepared")
    second = _prep(root, root / "prepared")
    assert first["train_documents"] == second["train_documents"] == 11


def test_jsonl_field_and_malformed_lines(tmp_path: Path, capsys) -> None:
    p = tmp_path / "d.jsonl"
    rows = [json.dumps({"body": d, "id": i}) for i, d in enumerate(_docs(12))]
    rows.insert(2, '{"body": "broken')  # line 3
    rows.insert(5, "[1, 2]")  # line 6
    rows.insert(7, json.dumps({"other": "x"}))  # line 8
    p.write_text("\n".join(rows) + "\n\n", encoding="utf-8")
    meta = _prep(p, tmp_path / "out", field="body")
    assert meta["train_documents"] + meta["val_documents"] == 12
    assert meta["n_bad_lines"] == 3
    assert meta["bad_lines"][0].startswith(f"{p}:3: invalid JSON")
    assert meta["bad_lines"][1].startswith(f"{p}:6: not a JSON object")
    assert meta["bad_lines"][2].startswith(f"{p}:8: no 'body' field")
    assert f"{p}:3: invalid JSON" in capsys.readouterr().err
    with pytest.raises(UserError, match=rf"{p}:3: invalid JSON"):
        _prep(p, tmp_path / "strict", field="body", on_decode_error="error")


def test_jsonl_gsm8k_rows_join_question_and_answer(tmp_path: Path) -> None:
    probs = synthetic.generate_problems(6, seed=4)
    p = synthetic.write_jsonl(probs, tmp_path / "gsm.jsonl")
    assert list(iter_documents(p)) == list(synthetic.problems_to_text(probs))


def test_decode_errors_reported_with_line_and_column(tmp_path: Path) -> None:
    docs = _docs(10)
    head = ("\n\n".join(docs[:3]) + "\n\nbad ").encode()
    p = tmp_path / "bad.txt"
    p.write_bytes(head + b"\xff\xfe byte\n\n" + "\n\n".join(docs[3:]).encode() + b"\n")
    line = head.count(b"\n") + 1
    where = [
        f"{p}:{line}: invalid UTF-8 (byte 0xff at byte column 5)",
        f"{p}:{line}: invalid UTF-8 (byte 0xfe at byte column 6)",
    ]
    report = InputReport(echo=False)
    assert len(list(iter_documents(p, report=report))) == 11  # 10 + the "bad" one
    assert report.decode_errors == where

    meta = _prep(p, tmp_path / "out", val_fraction=0.1)
    assert meta["n_decode_errors"] == 2 and meta["decode_errors"][0] == where[0]
    data = load_prepared(tmp_path / "out")
    tok = Tokenizer.from_file(str(data.tokenizer_path))
    decoded = _shard_docs(data.train, data.eos_id, tok) + _shard_docs(data.val, data.eos_id, tok)
    assert "bad \ufffd\ufffd byte" in decoded

    skipped = _prep(p, tmp_path / "skip", on_decode_error="skip")
    assert skipped["skipped_documents"] == 1
    assert skipped["train_documents"] + skipped["val_documents"] == 10
    with pytest.raises(UserError, match=rf"{p}:{line}: invalid UTF-8"):
        _prep(p, tmp_path / "err", on_decode_error="error")


def test_empty_or_single_document_input_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text(" \n\n\t\n")
    (tmp_path / "one.txt").write_text("just one document\nof two lines\n")
    (tmp_path / "nodir").mkdir()
    for name in ("empty.txt", "blank.txt", "nodir"):
        with pytest.raises(UserError, match="no documents"):
            _prep(tmp_path / name, tmp_path / "out")
    with pytest.raises(UserError, match="only one document"):
        _prep(tmp_path / "one.txt", tmp_path / "out")
    with pytest.raises(UserError, match="does not exist"):
        _prep(tmp_path / "missing.txt", tmp_path / "out")
    with pytest.raises(UserError, match="257"):
        _prep(tmp_path / "one.txt", tmp_path / "out", vocab_size=200)
    with pytest.raises(UserError, match="val-fraction"):
        _prep(tmp_path / "one.txt", tmp_path / "out", val_fraction=0.0)


def test_small_corpus_reports_smaller_vocab(tmp_path: Path, capsys) -> None:
    src = _write_text(tmp_path / "c.txt", _docs(6))
    meta = run(src, tmp_path / "out", vocab_size=5000, quiet=False)
    assert meta["vocab_size"] < 5000 and meta["vocab_size_requested"] == 5000
    out = capsys.readouterr().out
    assert "asked for 5,000" in out and "documents  train 5  val 1" in out


def test_tokenizer_reuse_and_hf_directory(tmp_path: Path) -> None:
    src = _write_text(tmp_path / "c.txt", _docs(20))
    first = _prep(src, tmp_path / "a")
    other = _write_text(tmp_path / "d.txt", _docs(10, seed=9))
    meta = _prep(other, tmp_path / "b", tokenizer=tmp_path / "a", vocab_size=16000)
    assert meta["vocab_size"] == first["vocab_size"] and meta["vocab_size_requested"] is None
    tok_a = Tokenizer.from_file(str(tmp_path / "a" / "tokenizer.json"))
    tok_b = Tokenizer.from_file(str(tmp_path / "b" / "tokenizer.json"))
    assert tok_a.get_vocab() == tok_b.get_vocab()
    meta_file = _prep(other, tmp_path / "c", tokenizer=tmp_path / "a" / "tokenizer.json")
    assert meta_file["train_tokens"] == meta["train_tokens"]

    hf = load_prepared(tmp_path / "b").load_tokenizer()
    assert hf.eos_token == hf.pad_token == hf.bos_token == EOS_TOKEN
    assert hf.eos_token_id == meta["eos_id"]
    text = "Tom buys 3 * 4 = <<3*4=12>>12 apples."
    assert hf(text)["input_ids"] == tok_b.encode(text, add_special_tokens=False).ids
    with pytest.raises(UserError, match="no tokenizer.json"):
        _prep(other, tmp_path / "x", tokenizer=tmp_path / "nowhere")


def test_split_digits_gives_one_token_per_digit(tmp_path: Path) -> None:
    """Plain BPE merges frequent digit runs; --split-digits never does, and the text (spaces
    included) still round-trips through the HF tokenizer."""
    out = str(tmp_path / "d")
    argv = ["prepare", "--synthetic", "60", "--vocab-size", "400", "--split-digits", "--quiet"]
    assert _cli([*argv, "--out", out]) == 0
    data = load_prepared(tmp_path / "d")
    assert data.meta["split_digits"] is True
    hf = data.load_tokenizer()
    text = "Tom buys 12 * 34 = <<12*34=408>>408 apples for $1,250."
    ids = hf(text)["input_ids"]
    pieces = [hf.decode([i]) for i in ids]
    digits = [p.strip() for p in pieces if any(c.isdigit() for c in p)]
    assert digits and all(len(d) == 1 for d in digits), pieces
    assert hf.decode(ids) == text

    merged = _prep(_write_text(tmp_path / "c.txt", _docs(60)), tmp_path / "m", vocab_size=400)
    assert merged["split_digits"] is False
    plain = load_prepared(tmp_path / "m").load_tokenizer()
    assert any(sum(c.isdigit() for c in plain.decode([i])) > 1 for i in plain(text)["input_ids"]), (
        "plain BPE was expected to merge digits on this corpus"
    )


def test_load_prepared_reports_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_prepared(tmp_path / "none")
    with pytest.raises(UserError, match="no meta.json"):
        load_prepared(tmp_path)
    src = _write_text(tmp_path / "c.txt", _docs(12))
    out = tmp_path / "out"
    _prep(src, out)
    with (out / "train.bin").open("r+b") as f:
        f.truncate(f.seek(0, 2) - 2)
    with pytest.raises(UserError, match="truncated"):
        load_prepared(out)
    (out / "val.bin").unlink()
    (out / "meta.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_prepared(out)


def test_dtype_follows_vocab_size() -> None:
    assert dtype_for(16000) == np.uint16 and dtype_for(65535) == np.uint16
    assert dtype_for(70000) == np.uint32


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="shoestring")
    prepare_cli.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_synthetic(tmp_path: Path) -> None:
    out = str(tmp_path / "s")
    argv = ["prepare", "--synthetic", "40", "--vocab-size", "300", "--val-fraction", "0.1"]
    assert _cli([*argv, "--quiet", "--out", out]) == 0
    data = load_prepared(tmp_path / "s")
    assert data.meta["source"] == "synthetic:40:seed=0"
    assert data.meta["train_documents"] == 36 and data.meta["val_documents"] == 4
    tok = Tokenizer.from_file(str(data.tokenizer_path))
    assert _shard_docs(data.val, data.eos_id, tok)[0].startswith("Question: ")
    # the data directory is a run directory of kind prepare, with its own report.md
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["kind"] == "prepare" and summary["status"] == "finished"
    assert summary["tokens"] == data.meta["train_tokens"] + data.meta["val_tokens"]
    assert json.loads((tmp_path / "s" / "config.json").read_text())["synthetic"] == 40
    report = (tmp_path / "s" / "report.md").read_text()
    assert "| documents train / val | 36 / 4 |" in report and "| input problems | 0" in report
    with pytest.raises(UserError, match="INPUT"):
        _cli(["prepare", "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()  # refused before the directory was made


def test_cli_config_layers(tmp_path: Path, capsys) -> None:
    """--config FILE < the flags < --set, validated, with the nearest key suggested."""
    cfg_file = tmp_path / "p.json"
    cfg_file.write_text(json.dumps({"synthetic": 30, "vocab_size": 280, "seed": 3}))
    out = str(tmp_path / "d")
    argv = ["prepare", "--config", str(cfg_file), "--vocab-size", "290", "--out", out, "-q"]
    assert _cli([*argv, "--set", "seed=4"]) == 0
    assert capsys.readouterr().out.strip() == out  # quiet: the directory's path alone
    meta = load_prepared(tmp_path / "d").meta
    assert (meta["vocab_size_requested"], meta["seed"]) == (290, 4)
    with pytest.raises(ConfigError, match="vocab_size"):
        _cli(["prepare", "--synthetic", "30", "--out", out, "--set", "vocab_sise=300"])
    with pytest.raises(ConfigError, match="257"):
        _cli(["prepare", "--synthetic", "30", "--out", out, "--vocab-size", "200"])
    assert _cli(["prepare", "--help-config"]) == 0
    assert "on_decode_error" in capsys.readouterr().out


@pytest.mark.shared
def test_wikitext2_validation_file(shared_dir: Path, tmp_path: Path) -> None:
    src = shared_dir / "data" / "wikitext-2" / "valid.txt"
    if not src.is_file():
        pytest.skip(f"{src} missing")
    meta = run(src, tmp_path / "wt2", vocab_size=1000, quiet=True)
    assert (meta["train_documents"], meta["val_documents"]) == (57, 3)  # the 60 articles of valid
    assert meta["vocab_size"] == 1000 and meta["n_decode_errors"] == 0
    data = load_prepared(tmp_path / "wt2")
    tok = Tokenizer.from_file(str(data.tokenizer_path))
    val_docs = _shard_docs(data.val, data.eos_id, tok)
    articles = list(iter_documents(src))
    assert all(d in articles for d in val_docs)
    assert all(d.startswith(" = ") for d in val_docs)
    assert meta["train_tokens"] + meta["val_tokens"] > 300_000
