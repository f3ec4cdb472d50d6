"""``shoestring bench`` end to end on tiny local models: outputs, statistics, resume, errors.

Two models are built locally (nothing is downloaded): a random ``LlamaForCausalLM`` with a
character-level tokenizer and a chat template (so ``auto`` picks chat-cot), and a shoestring run
directory trained for three steps (no template: plain). Their answers are nonsense; what is
tested is the machinery around them - every output file, the CIs and McNemar statement in the
report, resume without redoing a problem, clear errors for changed settings and bad data lines.
"""

from __future__ import annotations

import argparse
import json
import string
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from _helpers import save_tiny_llama
from shoestring.bench import cli
from shoestring.bench.config import BenchConfig
from shoestring.bench.metrics import compare_models
from shoestring.bench.records import read_problem_records
from shoestring.bench.runner import run
from shoestring.config import ConfigError
from shoestring.errors import UserError
from shoestring.report.build import write_run_report
from shoestring.scoring.protocols import get_protocol

CHAT_TEMPLATE = (
    "{% for m in messages %}User: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
N_PROBLEMS = 8


def _tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer (BPE without merges), as the engine's tests build it."""
    chars = list(string.ascii_letters + string.digits + " .,:;?!\n+-*/=()$#'<>%")
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", *chars])}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Llama saved as an HF directory with its tokenizer."""
    return save_tiny_llama(tmp_path_factory.mktemp("hf") / "tiny-llama", _tokenizer())


@pytest.fixture(scope="module")
def run_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shoestring run directory: a tiny GPT trained three steps on synthetic math."""
    from shoestring.data import text
    from shoestring.run_config import build_run_config
    from shoestring.train.config import TrainJobConfig
    from shoestring.train.run import run as train

    root = tmp_path_factory.mktemp("run")
    text.run(None, root / "data", vocab_size=300, synthetic=300, quiet=True)
    cfg = build_run_config(
        overrides=[
            f"data.path={root / 'data'}",
            "model.d_model=32",
            "model.n_layers=1",
            "model.n_heads=2",
            "model.d_ff=64",
            "model.position=rope",
            "train.seq_len=32",
            "train.batch_size=4",
            "train.max_steps=3",
            "train.eval_every=3",
            "train.save_every=3",
            "train.warmup_steps=1",
            "train.threads=1",
            "train.dtype=fp32",
        ]
    )
    return train(TrainJobConfig.of(cfg, out=root / "runs", name="tiny-gpt", quiet=True))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GSM8K-format JSONL of synthetic problems."""
    from shoestring.data.synthetic import generate_problems

    path = tmp_path_factory.mktemp("gsm") / "test.jsonl"
    rows = [
        {"question": p["question"], "answer": p["answer"]}
        for p in generate_problems(N_PROBLEMS, level=1, seed=3)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _cfg(out: Path, models_: list[Path | str], data: Path, **kw: Any) -> BenchConfig:
    base: dict[str, Any] = {
        "models": [str(m) for m in models_],
        "data": str(data),
        "limit": 6,
        "max_new_tokens": 12,
        "dtype": "fp32",
        "device": "cpu",
        "threads": 1,
        "out": str(out),
        "quiet": True,
    }
    base.update(kw)
    return BenchConfig(**base)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


class Counter:
    """on_problem hook: counts problems per model, optionally interrupts after ``stop_after``."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.seen: dict[str, list[int]] = {}
        self.stop_after = stop_after

    def __call__(self, label: str, rec: dict[str, Any]) -> None:
        self.seen.setdefault(label, []).append(rec["idx"])
        if self.stop_after is not None and sum(map(len, self.seen.values())) >= self.stop_after:
            raise KeyboardInterrupt


# ----------------------------------------------------------------------------- end to end


def test_two_models_write_every_output(
    hf_model: Path, run_model: Path, data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "b"
    count = Counter()
    assert run(_cfg(out, [hf_model, run_model], data), on_problem=count) == out
    for name in ("config.json", "summary.json", "metrics.jsonl", "log.txt", "report.md"):
        assert (out / name).is_file(), name
    s = json.loads((out / "summary.json").read_text())
    assert s["kind"] == "bench" and s["status"] == "finished"
    assert "torch" in s["versions"] and s["host"]["logical_cores"] >= 1
    assert s["runtime"]["device"] == "cpu" and s["runtime"]["dtype"] == "fp32"
    assert s["data"]["n_selected"] == 6 and s["data"]["idx"] == list(range(6))
    llama, gpt = s["models"]
    assert (llama["label"], llama["source"], llama["protocol"]) == ("tiny-llama", "hf", "chat-cot")
    assert (gpt["label"], gpt["source"], gpt["protocol"]) == ("tiny-gpt", "run", "plain")
    assert llama["primary_extractor"] == "strict" and gpt["primary_extractor"] == "flexible"
    for m in (llama, gpt):
        mm = m["metrics"]
        assert m["complete"] and mm["n"] == 6 and m["device"] == "cpu" and m["dtype"] == "fp32"
        assert set(mm["accuracy"]) == {"strict", "flexible", "answer-is", "boxed"}
        for acc in mm["accuracy"].values():
            lo, hi = acc["ci95"]
            assert acc["n"] == 6 and 0.0 <= lo <= hi <= 1.0 and "(n=6)" in acc["text"]
        assert mm["tokens_per_second"] > 0 and mm["generated_tokens"] > 0
        assert mm["load_seconds"] > 0 and mm["peak_rss_mb"] > 0 and m["n_params"] > 0
        assert mm["seconds_per_problem"] > 0 and mm["sessions"] == 1
        assert m["settings"]["max_new_tokens"] == 12 and m["settings"]["dtype"] == "fp32"
        recs = _lines(out / m["problems_file"])
        assert sorted(r["idx"] for r in recs) == list(range(6))
        for r in recs:
            assert {
                "question",
                "gold",
                "response",
                "extracted",
                "correct",
                "tokens",
                "seconds",
                "finish_reason",
            } <= set(r)
            assert set(r["extracted"]) == set(r["correct"]) == set(mm["accuracy"])
            assert 1 <= r["tokens"] <= 12
        assert mm["generated_tokens"] == sum(r["tokens"] for r in recs)
    assert sorted(count.seen["tiny-llama"]) == sorted(count.seen["tiny-gpt"]) == list(range(6))

    (comp,) = s["comparisons"]
    assert (comp["a"], comp["b"], comp["n"]) == ("tiny-llama", "tiny-gpt", 6)
    report = (out / "report.md").read_text()
    assert "| tiny-llama | chat-cot (strict) |" in report and "(n=6)" in report
    assert "95% Wilson interval" in report
    assert comp["statement"] in report
    if not comp["significant"]:
        assert "not significant at n=6" in report
    assert "## Examples: tiny-gpt" in report
    events = [json.loads(x)["event"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert events.count("model_result") == 2 and events.count("comparison") == 1
    assert "tiny-gpt:" in (out / "log.txt").read_text()

    # The same command again: nothing is generated, and the models are not even loaded.
    again = Counter()
    run(_cfg(out, [hf_model, run_model], data), on_problem=again)
    assert again.seen == {}
    s2 = json.loads((out / "summary.json").read_text())
    assert s2["status"] == "finished" and s2["models"][0]["metrics"] == llama["metrics"]
    assert "tiny-llama: all 6 problems already scored; not loading" in (out / "log.txt").read_text()
    assert len(_lines(out / "models" / "tiny-llama" / "problems.jsonl")) == 6
    report = (out / "report.md").read_text()

    # A changed setting is a clear error that points to a new --out; nothing is touched.
    with pytest.raises(UserError, match=r"max_new_tokens.*12 -> 20.*new --out"):
        run(_cfg(out, [hf_model], data, max_new_tokens=20))
    with pytest.raises(UserError, match=r"protocol.*new --out"):
        run(_cfg(out, [hf_model], data, protocol="plain"))
    changed = tmp_path / "changed.jsonl"
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    rows[2]["question"] += " Explain."
    changed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match=r"problems.jsonl:\d+: problem 2 differs.*data changed"):
        run(_cfg(out, [hf_model], changed))
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"
    assert (out / "report.md").read_text() == report
    assert len(_lines(out / "models" / "tiny-llama" / "problems.jsonl")) == 6


def test_resume_after_interrupt_redoes_nothing(
    hf_model: Path, run_model: Path, data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "b"
    cfg = _cfg(out, [hf_model, run_model], data, batch_size=2)
    first = Counter(stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, on_problem=first)
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "interrupted"
    assert s["models"][0]["metrics"]["n"] == 3 and not s["models"][0]["complete"]
    problems = out / "models" / "tiny-llama" / "problems.jsonl"
    kept = [r["idx"] for r in _lines(problems)]
    assert kept == first.seen["tiny-llama"] and len(kept) == 3
    assert "tiny-gpt" not in first.seen
    assert (out / "report.md").is_file()
    # What a process ended before its cleanup leaves (a job's rank killed from outside): its
    # lines, but no session in state.json - the next session still numbers its lines past them.
    state_file = out / "models" / "tiny-llama" / "state.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "sessions": []}))
    # What a kill during a write leaves behind: a last line without its newline.
    with problems.open("a") as f:
        f.write('{"idx": 5, "question": "cut sho')

    second = Counter()
    run(cfg, on_problem=second)
    assert sorted(second.seen["tiny-llama"]) == sorted(set(range(6)) - set(kept))
    assert sorted(second.seen["tiny-gpt"]) == list(range(6))
    recs = _lines(problems)
    assert sorted(r["idx"] for r in recs) == list(range(6))
    assert {r["session"] for r in recs} == {0, 1}
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "finished" and all(m["complete"] for m in s["models"])
    # the lost session's time was never recorded, so its tokens stay out of the speed figures
    # too (tokens / seconds over the sessions recorded); its lines still count for accuracy
    metrics = s["models"][0]["metrics"]
    assert metrics["sessions"] == 1 and metrics["n"] == 6
    assert metrics["generated_tokens"] == sum(r["tokens"] for r in recs if r["session"] == 1)
    assert "incomplete last line" in (out / "log.txt").read_text()

    # A larger --limit reuses the six and generates only the new problems.
    third = Counter()
    run(
        _cfg(out, [hf_model], data, limit=N_PROBLEMS, batch_size=2),
        on_problem=third,
    )
    assert sorted(third.seen["tiny-llama"]) == list(range(6, N_PROBLEMS))


# ----------------------------------------------------------------------------- inputs


def test_malformed_data_line_reported_with_file_and_line(
    hf_model: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jsonl"
    lines = data.read_text().splitlines()
    bad.write_text("\n".join([lines[0], lines[1], "{not json", lines[2]]) + "\n")
    parser = argparse.ArgumentParser()
    cli.add_cli(parser.add_subparsers())
    args = parser.parse_args(
        [
            "bench",
            str(hf_model),
            "--data",
            str(bad),
            "--out",
            str(tmp_path / "b"),
            "--max-new-tokens",
            "4",
            "--dtype",
            "fp32",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--no-progress",
        ]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "report:" in printed and printed.splitlines()[-1] == str(tmp_path / "b")
    s = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert s["data"]["n_selected"] == 3 and s["data"]["idx"] == [0, 1, 3]
    (msg,) = s["data"]["skipped_lines"]
    assert msg.startswith(f"{bad}:3: invalid JSON")
    assert f"{bad}:3:" in (tmp_path / "b" / "log.txt").read_text()
    assert "1 malformed line(s) skipped" in (tmp_path / "b" / "report.md").read_text()
    with pytest.raises(UserError, match=rf"{bad.name}:3"):
        run(_cfg(tmp_path / "c", [hf_model], bad, strict_data=True))


def test_bad_arguments_fail_before_any_model_runs(
    hf_model: Path, data: Path, tmp_path: Path
) -> None:
    with pytest.raises(UserError, match="does not exist"):
        run(_cfg(tmp_path / "a", [hf_model, tmp_path / "nope"], data))
    assert not (tmp_path / "a" / "models").exists()  # the first model never ran
    ckpt = tmp_path / "m.bin"
    ckpt.write_bytes(b"\0" * 64)
    (tmp_path / "tok.model").write_bytes(b"")
    with pytest.raises(UserError, match=r"TOKENIZER\.model.*tok\.model is next to it"):
        run(_cfg(tmp_path / "b", [ckpt], data))
    with pytest.raises(ConfigError, match="--limit"):
        run(_cfg(tmp_path / "c", [hf_model], data, limit=None, subset_seed=1))
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "summary.json").write_text('{"kind": "train"}')
    with pytest.raises(UserError, match="'train' run directory"):
        run(_cfg(tmp_path / "train", [hf_model], data))


def test_flags_are_overrides_over_a_config_file(tmp_path: Path) -> None:
    """defaults < --config FILE < shortcut flags < --set; a typo gets the nearest key."""
    file = tmp_path / "bench.yaml"
    file.write_text("models: [a, b]\ndata: gsm.jsonl\nlimit: 10\nmax_new_tokens: 64\nquiet: true\n")
    parser = argparse.ArgumentParser()
    cli.add_cli(parser.add_subparsers())

    def build(*argv: str) -> BenchConfig:
        return cli.bench_config_from_args(parser.parse_args(["bench", *argv]))

    cfg = build("--config", str(file), "--limit", "5", "--set", "limit=7", "--no-progress")
    assert (cfg.models, cfg.data, cfg.limit, cfg.max_new_tokens) == (["a", "b"], "gsm.jsonl", 7, 64)
    assert cfg.quiet and not cfg.progress and cfg.split == "test" and cfg.protocol == "auto"
    cfg = build("--config", str(file), "m", "--limit", "5", "--trust-remote-code")
    assert (cfg.models, cfg.limit, cfg.trust_remote_code, cfg.progress) == (["m"], 5, True, True)
    with pytest.raises(ConfigError, match="did you mean 'max_new_tokens'"):
        build("--config", str(file), "--set", "max_new_token=5")
    with pytest.raises(ConfigError, match="at least one MODEL"):
        build("--data", "gsm.jsonl")


def test_problem_records_reader_reports_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "problems.jsonl"
    path.write_text('{"idx": 0}\nnot json\n["list"]\n{"idx": 3}\n{"idx": 4, "q')
    recs, issues = read_problem_records(path)
    assert [r["idx"] for r in recs] == [0, 3]
    assert [i.split(": ")[0] for i in issues] == [f"{path}:5", f"{path}:2", f"{path}:3"]
    assert path.read_text().endswith('{"idx": 3}\n')  # the cut line is gone


# ----------------------------------------------------------------------------- statistics


def _fake(correct: list[bool]) -> dict[int, dict[str, Any]]:
    return {i: {"idx": i, "correct": {"strict": c, "flexible": c}} for i, c in enumerate(correct)}


def test_mcnemar_statement_and_report_on_fifty_problems(tmp_path: Path) -> None:
    a = [i % 5 == 0 for i in range(50)]  # 10/50
    b = [i % 5 in (0, 1) for i in range(50)]  # 20/50: 10 discordant pairs, all for b
    c = [i % 5 in (0, 2) for i in range(50)]  # vs B: 10 discordant pairs, split 10/10
    results = [{"label": n, "primary_extractor": "strict"} for n in ("A", "B", "C")]
    by_model = {"A": _fake(a), "B": _fake(b), "C": _fake(c)}
    comps = {(x["a"], x["b"]): x for x in compare_models(results, by_model)}
    ab, bc = comps[("A", "B")], comps[("B", "C")]
    assert ab["significant"] and ab["statement"].startswith("B better, significant at n=50")
    assert (ab["a_right_b_wrong"], ab["a_wrong_b_right"]) == (0, 10)
    assert not bc["significant"] and bc["statement"].startswith("not significant at n=50 (p=1)")

    summary = {
        "status": "finished",
        "data": {"n_selected": 50},
        "comparisons": list(comps.values()),
        "models": [{**r, "protocol": "chat-cot", "metrics": {"accuracy": {}}} for r in results],
    }
    (tmp_path / "summary.json").write_text(json.dumps({"kind": "bench", **summary}))
    report = write_run_report(tmp_path).read_text()
    assert "not significant at n=50" in report and "B better, significant at n=50" in report


def test_protocol_score_uses_every_extractor() -> None:
    scored = get_protocol("plain").score("So 3 + 4 = 7.\n#### 7", "7")
    extracted, correct = scored.extracted, scored.correct
    assert extracted == {"strict": "7", "flexible": "7", "answer-is": None, "boxed": None}
    assert correct == {"strict": True, "flexible": True, "answer-is": False, "boxed": False}


# ----------------------------------------------------------------------------- real model


@pytest.mark.shared
def test_llama2c_stories260k_end_to_end(shared_dir: Path, tmp_path: Path) -> None:
    m = shared_dir / "models" / "stories260K"
    spec = f"{m / 'stories260K.bin'}:{m / 'tok512.model'}"
    cfg = BenchConfig(
        models=[spec],
        data=str(shared_dir / "data" / "gsm8k" / "test.jsonl"),
        limit=5,
        protocol="plain",
        max_new_tokens=16,
        dtype="fp32",
        device="cpu",
        threads=1,
        out=str(tmp_path / "b"),
        quiet=True,
    )
    run(cfg)
    s = json.loads((tmp_path / "b" / "summary.json").read_text())
    (model,) = s["models"]
    assert model["source"] == "llama2c" and model["label"] == "stories260K"
    assert model["n_params"] == 260032 and model["metrics"]["n"] == 5
    assert model["converted_from"]["cached"] is False
    converted = Path(model["path"])
    assert converted.parent == tmp_path / "b" / "converted"
    assert (converted / "model.safetensors").is_file()
    assert len(_lines(tmp_path / "b" / "models" / "stories260K" / "problems.jsonl")) == 5
    # --tokenizer-model form, same content: the conversion is reused, the answers too.
    cfg.models, cfg.tokenizer_model = [str(m / "stories260K.bin")], str(m / "tok512.model")
    count = Counter()
    run(cfg, on_problem=count)
    s = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert s["models"][0]["converted_from"]["cached"] is True and count.seen == {}
