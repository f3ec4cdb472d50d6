"""compare: kind detection, finding rules, running/failed runs, every kind's section, the
HTML in a real headless Chromium (skipped where Chromium/chromedriver/selenium are missing)."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from shoestring.cli import main as cli_main
from shoestring.compare.run import compare
from shoestring.errors import UserError
from shoestring.report.kinds import detect_kind, load_runs
from shoestring.report.rules import speed_words_in
from shoestring.rundir.directory import RunDir, atomic_write_json

# ----------------------------------------------------------------------------- crafted runs


def make_train_run(
    root: Path,
    name: str,
    *,
    tokens_per_second: float = 10000.0,
    wall: float = 20.0,
    status: str = "finished",
    val: tuple[float, ...] = (5.0, 4.0, 3.5),
    data: str = "/data/wt2",
    vocab: int = 300,
    device: str = "auto",
    ran_on: str = "cpu",
    seed: int = 0,
    trainer: str = "plain",
    hybrid: dict[str, Any] | None = None,
    d_model: int = 64,
) -> Path:
    """A train run directory written through RunDir, as the trainer writes it."""
    path = root / name
    rd = RunDir(path, "train", echo=False)
    config = {
        "model": {"d_model": d_model, "n_layers": 2, "vocab_size": vocab},
        "data": {"path": data},
        "train": {
            "seq_len": 32,
            "batch_size": 8,
            "max_steps": 20,
            "lr": 1e-3,
            "seed": seed,
            "device": device,
            "dtype": "fp32",
            "trainer": trainer,
        },
        "preset": "",
        "variant": "",
    }
    rd.start(
        config,
        run_name=name,
        trainer=trainer,
        runtime={"device": ran_on, "dtype": "fp32", "threads": 1},
        data={"path": data, "vocab_size": vocab, "val_sequences": 8},
        n_params=12345,
    )
    steps = [0, 10, 20][: len(val)]
    phases = ["warmup", "predict", "correct", "full"]
    for i, (step, v) in enumerate(zip(steps, val, strict=True)):
        if step:
            for s in range(step - 9, step + 1):
                rec = {
                    "step": s,
                    "loss": v + 0.3 + 0.01 * (step - s),
                    "train_seconds": s * wall / 25,
                    "tokens_per_second": tokens_per_second,
                }
                if trainer == "hybrid":
                    rec["phase"] = phases[(s // 3) % 4]
                rd.metric(rec)
        rd.metric({"step": step, "val_loss": v, "train_seconds": step * wall / 25})
        del i
    if status != "running":
        rd.finish(
            status,
            steps=steps[len(val) - 1],
            max_steps=20,
            session_wall_seconds=wall,
            train_seconds=wall * 0.8,
            tokens_per_second=tokens_per_second,
            samples_per_second=tokens_per_second / 32,
            final_val_loss=val[-1],
            best_val_loss=min(val),
            best_step=steps[len(val) - 1],
            system={"cpu_percent_mean": 48.0, "cpu_percent_peak": 51.0, "peak_rss_mb": 400.0},
            error="NonFiniteLossError: loss is nan at step 11" if status == "failed" else None,
            **({"hybrid": hybrid} if hybrid else {}),
        )
    rd.close()
    return path


def make_bench(
    root: Path,
    name: str,
    models: dict[str, list[bool]],
    source: str = "gsm.jsonl",
    with_problems: bool = True,
    protocol: Any = "plain",
    protocol_key: str | None = None,
    status: str = "finished",
) -> Path:
    """A bench directory with per-problem results (``models``: label -> correct per problem);
    ``protocol``/``protocol_key`` are recorded per model (an older bench: a bare name)."""
    from shoestring.util.stats import format_accuracy, wilson_interval

    path = root / name
    rd = RunDir(path, "bench", echo=False)
    rd.start({"models": list(models), "device": "cpu"}, runtime={"device": "cpu"})
    entries = []
    for label, correct in models.items():
        k, n = sum(correct), len(correct)
        pf = Path("models") / label / "problems.jsonl"
        if with_problems:
            (path / pf).parent.mkdir(parents=True, exist_ok=True)
            (path / pf).write_text(
                "".join(
                    json.dumps(
                        {
                            "idx": i,
                            "correct": {"flexible": c},
                            "settings_hash": "h",
                            "question": f"What is {i} + 1?",
                            "gold": str(i + 1),
                            "response": f"The answer is {i + 1 if c else i}.",
                            "extracted": {"flexible": str(i + 1 if c else i)},
                            "tokens": 6,
                            "finish_reason": "eos",
                        }
                    )
                    + "\n"
                    for i, c in enumerate(correct)
                )
            )
        entries.append(
            {
                "label": label,
                "model": label,
                "protocol": protocol,
                **({"protocol_key": protocol_key} if protocol_key else {}),
                "primary_extractor": "flexible",
                "complete": True,
                "settings_hash": "h",
                "device": "cpu",
                "dtype": "fp32",
                "problems_file": str(pf) if with_problems else None,
                "metrics": {
                    "n": n,
                    "tokens_per_second": 100.0,
                    "accuracy": {
                        "flexible": {
                            "correct": k,
                            "n": n,
                            "accuracy": k / n,
                            "ci95": list(wilson_interval(k, n)),
                            "text": format_accuracy(k, n),
                        }
                    },
                },
            }
        )
    (rd.finish if status != "running" else rd.update_summary)(
        status=status,
        models=entries,
        comparisons=[],
        data={"source": source, "n_selected": len(next(iter(models.values())))},
        error="RuntimeError: out of memory" if status == "failed" else None,
    )
    rd.close()
    return path


def _findings(report_data: dict[str, Any], rule: str) -> list[dict[str, Any]]:
    return [f for f in report_data["findings"] if f["rule"] == rule]


# ----------------------------------------------------------------------------- naming rule


def test_speed_words() -> None:
    assert speed_words_in("wiki_cache_optimized") == ["optimized"]
    assert speed_words_in("autoregressive_fast") == ["fast"]
    assert speed_words_in("TurboNet-v2") == ["turbo"]
    assert speed_words_in("extreme fast") == ["fast"]
    assert speed_words_in("breakfast_baseline") == []
    assert speed_words_in("wiki_performance_tuned") == ["tuned", "performance"] or set(
        speed_words_in("wiki_performance_tuned")
    ) == {"tuned", "performance"}


def test_naming_rule_fires_when_the_fast_one_is_slowest(tmp_path: Path) -> None:
    a = make_train_run(tmp_path, "baseline", tokens_per_second=20000, wall=10)
    b = make_train_run(tmp_path, "extreme_fast", tokens_per_second=8000, wall=25)
    c = make_train_run(tmp_path, "medium", tokens_per_second=12000, wall=15)
    _, data = compare([a, b, c], None)
    naming = _findings(data, "naming")
    assert len(naming) == 1
    f = naming[0]
    assert f["severity"] == "warning" and f["runs"] == ["extreme_fast"]
    # cites the numbers behind it
    assert "8,000 tokens/s (rank 3 of 3)" in f["text"]
    assert "`baseline` measured 20,000" in f["text"] and "0.40x" in f["text"]
    assert "25.0 s vs 10.0 s" in f["text"]


def test_naming_rule_silent_when_names_match(tmp_path: Path) -> None:
    a = make_train_run(tmp_path, "baseline", tokens_per_second=9000, wall=30)
    b = make_train_run(tmp_path, "turbo", tokens_per_second=30000, wall=8)
    _, data = compare([a, b], None)
    assert _findings(data, "naming") == []


def test_naming_rule_notes_a_split_verdict(tmp_path: Path) -> None:
    # fastest by wall time only (it did less work per step): a note, not a warning
    a = make_train_run(tmp_path, "big", tokens_per_second=20000, wall=30)
    b = make_train_run(tmp_path, "quick", tokens_per_second=15000, wall=12)
    _, data = compare([a, b], None)
    [f] = _findings(data, "naming")
    assert f["severity"] == "info" and "by wall time only" in f["text"]


# ----------------------------------------------------------------------------- noise rule


def _fifty(correct: int, flip: int | None = None) -> list[bool]:
    out = [i < correct for i in range(50)]
    if flip is not None:
        out[flip] = not out[flip]
    return out


def test_noise_rule_one_problem_in_fifty_paired(tmp_path: Path) -> None:
    a = make_bench(tmp_path, "bench-a", {"model-a": _fifty(10)})
    b = make_bench(tmp_path, "bench-b", {"model-b": _fifty(10, flip=30)})  # 11/50
    report, data = compare([a, b], tmp_path / "rep")
    [f] = _findings(data, "noise")
    assert f["severity"] == "caution"
    assert "within noise" in f["text"] and "McNemar" in f["text"]
    assert "20.0% [11.2, 33.0] (10/50)" in f["text"] and "(11/50)" in f["text"]
    assert "p=1" in f["text"] and f["numbers"]["n"] == 50
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Benchmarks (GSM8K)" in md and "bench_accuracy.png" in md


def test_noise_rule_unpaired_and_significant(tmp_path: Path) -> None:
    a = make_bench(tmp_path, "a", {"m1": _fifty(10)}, with_problems=False)
    b = make_bench(tmp_path, "b", {"m2": _fifty(11)}, with_problems=False)
    [f] = _findings(compare([a, b], None)[1], "noise")
    assert f["severity"] == "caution" and "intervals overlap" in f["text"]
    c = make_bench(tmp_path, "c", {"weak": _fifty(5), "strong": _fifty(40)})
    [g] = _findings(compare([c], None)[1], "noise")
    assert g["severity"] == "info" and "significant" in g["text"]


# ----------------------------------------------------------------------------- protocol rule


def test_protocol_rule_flags_accuracies_under_different_protocols(tmp_path: Path) -> None:
    a = make_bench(
        tmp_path, "bench-qa", {"m-qa": _fifty(10)}, protocol={"name": "qa"}, protocol_key="qa@1"
    )
    b = make_bench(
        tmp_path,
        "bench-cot",
        {"m-cot": _fifty(10, flip=30)},
        protocol={"name": "chat-cot"},
        protocol_key="chat-cot@2",
    )
    rep = tmp_path / "rep"
    _, data = compare([a, b], rep)
    [f] = _findings(data, "protocol")
    assert f["severity"] == "warning" and "not comparable" in f["text"]
    assert "qa@1: `bench-qa:m-qa`" in f["text"] and "chat-cot@2: `bench-cot:m-cot`" in f["text"]
    assert _findings(data, "noise") == []  # the pair is not tested as if comparable
    md = (rep / "report.md").read_text()
    assert "| m-qa | qa (flexible) |" in md  # the protocol is shown in the accuracy table
    assert "scored under different protocols (qa@1 vs chat-cot@2): not comparable" in md
    # one recorded, one not (an older run dir): flagged as well
    old = make_bench(tmp_path, "bench-old", {"m-old": _fifty(10)}, protocol=None)
    [g] = _findings(compare([a, old], None)[1], "protocol")
    assert "not recorded: `bench-old:m-old`" in g["text"]


def test_protocol_rule_silent_under_one_protocol(tmp_path: Path) -> None:
    a = make_bench(tmp_path, "a", {"m1": _fifty(10)}, protocol={"name": "qa"}, protocol_key="qa@1")
    b = make_bench(tmp_path, "b", {"m2": _fifty(11)}, protocol={"name": "qa"}, protocol_key="qa@1")
    _, data = compare([a, b], None)
    assert _findings(data, "protocol") == []
    [f] = _findings(data, "noise")  # the same protocol: the pair is tested
    assert "McNemar" in f["text"]
    assert [m["protocol_key"] for r in data["runs"] for m in r["models"]] == ["qa@1", "qa@1"]


def test_protocol_rule_covers_grpo_and_progressive(tmp_path: Path) -> None:
    grpo, prog = _make_other_kinds(tmp_path)[1:3]
    assert _findings(compare([grpo, prog], None)[1], "protocol") == []  # neither recorded one
    summary = json.loads((grpo / "summary.json").read_text())
    summary.update(protocol={"name": "qa"}, protocol_key="qa@de7c6963")
    atomic_write_json(grpo / "summary.json", summary)
    rep = tmp_path / "rep"
    [f] = _findings(compare([grpo, prog], rep)[1], "protocol")
    assert "qa@de7c6963: `grpo1`" in f["text"] and "not recorded: `prog`" in f["text"]
    assert "| 0.500 | qa |" in (rep / "report.md").read_text()  # GRPO table's protocol column


def test_val_loss_noise_with_seeds(tmp_path: Path) -> None:
    runs = [
        make_train_run(tmp_path, f"a{s}", seed=s, val=(5.0, 4.0, 3.50 + 0.01 * s)) for s in range(3)
    ]
    runs += [
        make_train_run(tmp_path, f"b{s}", seed=s, d_model=96, val=(5.0, 4.0, 3.51 + 0.01 * s))
        for s in range(3)
    ]
    noise = _findings(compare(runs, None)[1], "noise")
    assert (
        len(noise) == 1 and "Welch" in noise[0]["text"] and "within seed noise" in noise[0]["text"]
    )
    single = [
        make_train_run(tmp_path, "x", val=(5, 4, 3.5)),
        make_train_run(tmp_path, "y", d_model=96, val=(5, 4, 3.4)),
    ]
    [f] = _findings(compare(single, None)[1], "noise")
    assert "one seed" in f["text"] and "0.1000" in f["text"]


# ----------------------------------------------------------------------------- status / kinds


def test_unknown_kind_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "notes.txt").write_text("hello")
    (odd / "weights.bin").write_bytes(b"\0")
    with pytest.raises(UserError) as exc:
        detect_kind(odd)
    msg = str(exc.value)
    assert "found notes.txt, weights.bin" in msg and "Known kinds" in msg and "bench" in msg
    weird = tmp_path / "weird"
    weird.mkdir()
    atomic_write_json(weird / "summary.json", {"kind": "telepathy", "status": "finished"})
    with pytest.raises(UserError, match="kind 'telepathy'.*Known kinds"):
        detect_kind(weird)
    assert cli_main(["compare", str(odd), "--out", str(tmp_path / "rep")]) == 2
    assert "is not a run directory compare knows" in capsys.readouterr().err
    with pytest.raises(UserError, match="does not exist"):
        detect_kind(tmp_path / "missing")


def test_running_and_failed_runs_are_shown_as_such(tmp_path: Path) -> None:
    ok = make_train_run(tmp_path, "done")
    running = make_train_run(tmp_path, "still-going", status="running", val=(5.0, 4.2))
    failed = make_train_run(tmp_path, "broke", status="failed", val=(5.0, 4.4))
    rep = tmp_path / "rep"
    _, data = compare([ok, running, failed], rep)
    md = (rep / "report.md").read_text()
    results = md.split("Measured results")[1].split("did **not** finish")[0]
    assert "| done |" in results
    assert "still-going" not in results and "broke" not in results
    not_done = md.split("did **not** finish")[1]
    assert "**running (step 10 of 20)**" in not_done
    assert "**failed (step 10 of 20)**" in not_done and "loss is nan" in not_done
    status = {f["runs"][0]: f for f in _findings(data, "status")}
    assert "partial" in status["still-going"]["text"]
    assert "failed" in status["broke"]["text"] and "not" in status["broke"]["text"]
    recs = {r["label"]: r for r in data["runs"]}
    assert recs["done"]["is_result"] and not recs["still-going"]["is_result"]
    assert not recs["broke"]["is_result"]
    # the time-axis and step plots still draw (partial curves dashed, labelled with status)
    assert (rep / "loss_vs_step.png").stat().st_size > 1000
    # a "running" run that has written nothing for an hour was probably killed
    for name in ("summary.json", "metrics.jsonl"):
        os.utime(running / name, (time.time() - 3600, time.time() - 3600))
    [stale] = [r for r in load_runs([running])]
    assert "nothing written for 60 min: probably killed" in stale.status_text()


def test_device_fallback_and_incomparable_data(tmp_path: Path) -> None:
    a = make_train_run(tmp_path, "gpu-asked", device="cuda", ran_on="cpu")
    b = make_train_run(tmp_path, "other-data", data="/data/other", vocab=512)
    _, data = compare([a, b], None)
    status = " ".join(f["text"] for f in _findings(data, "status"))
    assert "asked to run on cuda but ran on cpu" in status
    comp = " ".join(f["text"] for f in _findings(data, "comparable"))
    assert "different data" in comp and "different vocabularies" in comp
    assert _findings(data, "noise") == []  # losses on different data are not tested


def test_parent_dir_expands_and_report_dir_is_refused(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    make_train_run(runs, "r1")
    make_train_run(runs, "r2")
    assert [r.label for r in load_runs([runs])] == ["r1", "r2"]
    rep = tmp_path / "rep"
    compare([runs], rep)
    assert not (rep / "summary.json").exists()
    with pytest.raises(UserError, match="written by `shoestring compare`"):
        detect_kind(rep)
    with pytest.raises(UserError, match="is a run directory"):
        compare([runs], runs / "r1")


def test_format_json_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = make_train_run(tmp_path, "a")
    b = make_train_run(tmp_path, "fast", tokens_per_second=5000, wall=40)
    assert cli_main(["compare", str(a), str(b), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kind"] == "compare_report"
    assert [r["label"] for r in data["runs"]] == ["a", "fast"]
    assert data["runs"][1]["measured"]["tokens_per_second"] == 5000
    assert any(f["rule"] == "naming" for f in data["findings"])
    assert data["images"] == []  # no --out: nothing written


def test_text_cli_layers_config_and_prints_the_report_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    a = make_train_run(tmp_path, "a")
    rep = tmp_path / "rep"
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"dirs": [str(a)], "title": "from file"}))
    assert cli_main(["compare", "--config", str(cfg), "--out", str(rep)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == str(rep) and lines[-2].startswith(f"report: {rep / 'report.md'}")
    assert (rep / "report.md").read_text().startswith("# from file")
    assert cli_main(["compare", str(a), "--out", str(rep), "-q", "--set", "title=t"]) == 0
    assert capsys.readouterr().out.splitlines() == [str(rep)]  # quiet: the path alone
    assert cli_main(["compare", str(a), "--set", "titel=x", "--out", str(rep)]) == 2
    assert "title" in capsys.readouterr().err  # the nearest key is suggested


# ----------------------------------------------------------------------------- other kinds


def _make_other_kinds(root: Path) -> list[Path]:
    hyb = make_train_run(
        root,
        "hyb",
        trainer="hybrid",
        hybrid={
            "predictor": "linear",
            "phases": {
                "warmup": {"steps": 5, "seconds": 2.0},
                "full": {"steps": 5, "seconds": 2.5},
                "predict": {"steps": 6, "seconds": 1.0},
                "correct": {"steps": 4, "seconds": 2.2},
            },
            "backward_skipped": 6,
            "forward_skipped": 0,
            "rollbacks": 1,
            "divergences": [{"step": 12, "reason": "loss spike"}],
            "skip_rate": 0.3,
            "pred_cosine_mean": 0.8,
            "wall_seconds": 9.0,
        },
    )
    grpo = root / "grpo1"
    rd = RunDir(grpo, "grpo", echo=False)
    rd.start(
        {
            "model_name_or_path": "m",
            "dataset": "synthetic:1",
            "learning_rate": 1e-5,
            "num_generations": 4,
            "device": "cpu",
        },
        runtime={"device": "cpu"},
    )
    for s in range(1, 6):
        rd.metric({"step": s, "reward_mean": 0.1 * s, "reward_std": 0.05, "accuracy": 0.1 * s})
    ev = {"correct": 5, "n": 50, "accuracy": 0.1, "ci_low": 0.04, "ci_high": 0.21}
    rd.finish(
        "finished",
        steps=5,
        max_steps=5,
        train_seconds=10.0,
        seconds_per_step=2.0,
        time_split={"generation": 7.0, "scoring": 0.5, "backward": 2.5},
        final_reward_mean=0.5,
        eval_before=ev,
        eval_after={**ev, "correct": 6},
        system={"cpu_percent_mean": 50.0, "cpu_percent_peak": 90.0, "peak_rss_mb": 900.0},
    )
    rd.close()
    prog = root / "prog"
    rd = RunDir(prog, "progressive", echo=False)
    rd.start({"stages": ["a", "b"]})
    rd.finish(
        "finished",
        base_eval=ev,
        rollbacks=1,
        best_model_dir="x",
        stages=[
            {
                "name": "level1",
                "status": "accepted",
                "attempt": 1,
                "learning_rate": 1e-5,
                "eval": {**ev, "correct": 7},
                "best_so_far": 0.14,
                "seconds": 3.0,
                "run_dir": "r",
            },
            {
                "name": "level2",
                "status": "rolled_back",
                "attempt": 1,
                "learning_rate": 1e-5,
                "eval": {**ev, "correct": 3},
                "best_so_far": 0.14,
                "seconds": 3.0,
                "run_dir": "r2",
            },
        ],
    )
    rd.close()
    study = root / "study"
    rd = RunDir(study, "study", echo=False)
    rd.start({"sizes": ["tiny"]})
    rd.finish("finished")
    rd.close()
    atomic_write_json(
        study / "results.json",
        {
            "trials": [
                {
                    "trial": i,
                    "size": "tiny",
                    "variant": v,
                    "seed": i % 2,
                    "val_loss": 3.0 + 0.01 * i,
                    "status": "finished",
                }
                for i, v in enumerate(["baseline", "baseline", "rope", "rope"])
            ],
            "summary": [
                {
                    "size": "tiny",
                    "variant": "baseline",
                    "n": 2,
                    "val_loss_mean": 3.005,
                    "val_loss_std": 0.007,
                    "rank": 1,
                    "p_vs_baseline": None,
                },
                {
                    "size": "tiny",
                    "variant": "rope",
                    "n": 2,
                    "val_loss_mean": 3.025,
                    "val_loss_std": 0.007,
                    "rank": 2,
                    "p_vs_baseline": 0.2,
                },
            ],
        },
    )
    ana = root / "ana"
    ana.mkdir()
    atomic_write_json(
        ana / "analysis.json",
        {"host": {"cpu": "X", "cores": 2}, "configs": [{"name": "c1", "params": 10}]},
    )
    return [hyb, grpo, prog, study, ana]


def test_every_kind_renders(tmp_path: Path) -> None:
    dirs = _make_other_kinds(tmp_path)
    assert [detect_kind(d) for d in dirs] == ["hybrid", "grpo", "progressive", "study", "analysis"]
    rep = tmp_path / "rep"
    _, data = compare(dirs, rep)
    md = (rep / "report.md").read_text()
    for title in (
        "Hybrid training: phases",
        "GRPO runs",
        "Progressive training",
        "Studies",
        "Analyses",
    ):
        assert title in md
    assert "| predict | 6 | 30.0% |" in md
    assert set(data["images"]) >= {
        "hybrid_phases_hyb.png",
        "hybrid_phase_time.png",
        "grpo_rewards.png",
        "progressive_prog.png",
        "study_study.png",
    }
    noise = " ".join(f["text"] for f in _findings(data, "noise"))
    assert "GRPO `grpo1`" in noise and "level1" in noise and "rope (p=0.2)" in noise


# ----------------------------------------------------------------------------- real runs + Chromium


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two tiny real training runs of different sizes on synthetic text."""
    from shoestring.data import text
    from shoestring.run_config import build_run_config
    from shoestring.train.config import TrainJobConfig
    from shoestring.train.run import run as train

    root = tmp_path_factory.mktemp("cmp")
    text.run(None, root / "data", vocab_size=300, synthetic=300, quiet=True)
    out = []
    for name, d in (("small_fast", 32), ("wider", 48)):
        cfg = build_run_config(
            overrides=[
                f"data.path={root / 'data'}",
                f"model.d_model={d}",
                "model.n_layers=2",
                "model.n_heads=2",
                f"model.d_ff={2 * d}",
                "train.seq_len=32",
                "train.batch_size=4",
                "train.max_steps=8",
                "train.eval_every=4",
                "train.save_every=8",
                "train.log_every=1",
                "train.warmup_steps=1",
                "train.threads=1",
                "train.dtype=fp32",
            ]
        )
        out.append(train(TrainJobConfig.of(cfg, out=root / "runs", name=name, quiet=True)))
    return out


def test_real_runs_report_files(real_runs: list[Path], tmp_path: Path) -> None:
    rep = tmp_path / "rep"
    _, data = compare(real_runs, rep, title="tiny real runs")
    for name in ("report.md", "report.html", "report.json", "loss_vs_step.png", "loss_vs_time.png"):
        assert (rep / name).is_file(), name
    html = (rep / "report.html").read_text()
    srcs = re.findall(r'<img[^>]+src="([^"]+)"', html)
    assert len(srcs) == 2 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in html and "https://" not in html  # readable offline
    md = (rep / "report.md").read_text()
    assert "| **model.d_model** | 32 | 48 |" in md  # differing field, bold
    assert all(r["is_result"] for r in data["runs"])


def _chromium() -> Any:
    """(chromium, chromedriver, selenium.webdriver), or a skip; SHOESTRING_CHROMIUM and
    SHOESTRING_CHROMEDRIVER point at other binaries."""
    chromium = (
        os.environ.get("SHOESTRING_CHROMIUM") or shutil.which("chromium") or ("/usr/bin/chromium")
    )
    driver = (
        os.environ.get("SHOESTRING_CHROMEDRIVER")
        or shutil.which("chromedriver")
        or ("/usr/bin/chromedriver")
    )
    if not (Path(chromium).exists() and Path(driver).exists()):
        pytest.skip("chromium/chromedriver are not installed (CI installs them from the distro)")
    webdriver = pytest.importorskip("selenium.webdriver")
    return chromium, driver, webdriver


def test_report_html_in_headless_chromium(
    real_runs: list[Path], tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    chromium, driver_path, webdriver = _chromium()
    from selenium.webdriver.chrome.service import Service

    rep = tmp_path / "rep"
    compare(real_runs, rep)
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1200,900",
        f"--user-data-dir={tmp_path_factory.mktemp('chrome-profile')}",
    ):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        drv.get((rep / "report.html").resolve().as_uri())
        imgs = drv.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth]);"
        )
        assert len(imgs) == 2
        assert all(complete and width > 0 for complete, width in imgs), imgs
        assert drv.find_element("tag name", "h1").text.startswith("shoestring compare")
        assert drv.save_screenshot(str(tmp_path / "desktop.png"))
        # phone width: the page must not scroll sideways (wide tables scroll in their own box)
        drv.set_window_size(390, 844)
        width = drv.execute_script("return window.innerWidth;")
        scroll = drv.execute_script("return document.documentElement.scrollWidth;")
        assert scroll <= width + 1, (scroll, width)
        shown = drv.execute_script(
            "return Array.from(document.images).map(i => i.getBoundingClientRect().width);"
        )
        assert all(0 < w <= width for w in shown), shown
        assert drv.save_screenshot(str(tmp_path / "phone.png"))
    finally:
        drv.quit()
    assert (tmp_path / "desktop.png").stat().st_size > 10000
    assert (tmp_path / "phone.png").stat().st_size > 5000


def _benchmark_script(name: str) -> Any:
    """A script of benchmarks/ as a module (they are scripts, not a package)."""
    import importlib.util
    import sys

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(folder))


def test_hybrid_benchmark_output_is_read_without_src_knowing_it(tmp_path: Path) -> None:
    """benchmarks/hybrid_vs_baseline.py renders its own table; its arms are ordinary run
    directories under OUT/runs, which compare finds from OUT itself."""
    bench = _benchmark_script("hybrid_vs_baseline")
    out = tmp_path / "hb"
    base = make_train_run(out / "runs", "s0-baseline", tokens_per_second=10000, wall=10)
    hyb = make_train_run(out / "runs", "s0-hybrid", trainer="hybrid", wall=9)

    def ci(mean: float, lo: float | None, hi: float | None, n: int = 3) -> dict[str, Any]:
        return {"n": n, "missing": 0, "mean": mean, "ci_low": lo, "ci_high": hi}

    bench.write_results(
        out,
        {
            "kind": "hybrid_benchmark",
            "arms": {"baseline": {"0": str(base)}, "hybrid": {"0": str(hyb)}},
            "table": [
                {"arm": "baseline", "final_val_loss": ci(3.5, 3.4, 3.6)},
                {
                    "arm": "hybrid",
                    "final_val_loss": ci(3.52, 3.41, 3.63),
                    "speedup_vs_baseline": ci(1.08, 0.95, 1.21),
                },
                {"arm": "random_skip", "speedup_vs_baseline": ci(1.3, 1.2, 1.4)},
            ],
            "hybrid_time_by_phase": {
                "full": {"steps": 10, "seconds": 2.0, "seconds_per_step": 0.2, "share_of_time": 0.5}
            },
        },
    )
    md = (out / "hybrid_benchmark.md").read_text()
    assert "| hybrid | 3.5200 [3.4100, 3.6300] (n=3) | 1.080 [0.950, 1.210] (n=3) |" in md
    assert "| full | 10 | 2.0 | 0.2000 | 50.0% |" in md
    assert "`hybrid` speed-up 1.080x [0.950, 1.210]" in md
    assert "includes 1.0: no speed-up beyond seed noise" in md
    assert "`random_skip` speed-up" not in md  # [1.2, 1.4] excludes 1.0: a speed-up
    rep = tmp_path / "rep"
    _, data = compare([out], rep)
    assert {r["label"] for r in data["runs"]} == {"s0-baseline", "s0-hybrid"}
    assert "Hybrid training: phases" in (rep / "report.md").read_text()


# ----------------------------------------------------------------------------- a run's own report


def test_write_run_report_for_each_kind(tmp_path: Path) -> None:
    from shoestring.report.build import write_run_report

    bench = make_bench(tmp_path, "bench", {"weak": _fifty(5), "strong": _fifty(40)})
    dirs = [make_train_run(tmp_path, "tr"), bench, *_make_other_kinds(tmp_path)]
    for d in dirs:
        md = write_run_report(d).read_text()
        assert md.startswith("# shoestring ") and "## Findings" in md, d
    md = (bench / "report.md").read_text()
    # what bench's own report showed: comparison table, extractors, examples per model
    assert "| weak | plain (flexible) | 10.0% [4.3, 21.4] (n=50) | 100.0 |" in md
    assert "Accuracy by extractor" in md and "## Examples: strong" in md
    assert "**incorrect** - problem 40, gold 41, flexible extracted '40'" in md
    assert "```text\nThe answer is 40.\n```" in md
    prog = (tmp_path / "prog" / "report.md").read_text()
    assert "vs best (points)" in prog and "Rollbacks: 1." in prog
    # a run that is still running or failed still gets a report that says so
    running = make_bench(tmp_path, "b-run", {"m": _fifty(3)}, status="running")
    failed = make_bench(tmp_path, "b-fail", {"m": _fifty(3)}, status="failed")
    assert "Status **running" in write_run_report(running).read_text()
    text = write_run_report(failed).read_text()
    assert "Status **failed" in text and "**Error:** RuntimeError: out of memory" in text
    tr = make_train_run(tmp_path, "tr-run", status="running", val=(5.0, 4.2))
    assert "**running (step 10 of 20)**" in write_run_report(tr).read_text()
