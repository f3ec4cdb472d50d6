"""shoestring analyze: formulas against counted values, the cache reader, probe cache, schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from shoestring.analyze import cost, count, probe
from shoestring.analyze.cli import parse_count
from shoestring.analyze.config import CACHE_STUDY_PRESETS
from shoestring.analyze.row import speed_ratios
from shoestring.analyze.spec import expand_sweep, parse_sweep, resolve_targets
from shoestring.cli import main
from shoestring.config import ConfigError, to_dict
from shoestring.errors import UserError
from shoestring.models.param_count import num_parameters_breakdown
from shoestring.run_config import RunConfig, build_run_config

TINY = [
    "model.vocab_size=300",
    "model.d_model=64",
    "model.n_heads=4",
    "model.d_ff=256",
    "model.n_layers=2",
    "train.seq_len=64",
    "train.batch_size=2",
    "train.threads=1",
]
VARIANTS = [None, "lora_small", "rope_only", "bias_only", "enhanced_small"]
EXTRAS = {
    "tied": [],
    "untied": ["model.tie_word_embeddings=false"],
    "swiglu_rms": ["model.mlp=swiglu", "model.norm=rmsnorm"],
}


def _cfg(variant: str | None, extra: list[str]) -> RunConfig:
    return build_run_config("tiny", variant, overrides=TINY + extra)


@pytest.mark.parametrize("extra", list(EXTRAS), ids=list(EXTRAS))
@pytest.mark.parametrize("variant", VARIANTS, ids=[v or "baseline" for v in VARIANTS])
def test_param_and_flop_formulas_match_the_model(variant: str | None, extra: str) -> None:
    cfg = _cfg(variant, EXTRAS[extra])
    model = count.build_model(cfg)
    params = cost.param_counts(cfg.model)
    built = num_parameters_breakdown(model)
    for key in ("total", "embedding", "lm_head", "non_embedding", "attention", "mlp", "norm"):
        assert params[key] == built[key], key
    assert params["per_layer"]["attention"] == built["per_layer"][0]["attention"]
    assert params["per_layer"]["mlp"] == built["per_layer"][0]["mlp"]

    analytic = cost.flops_per_token(cfg.model, cfg.train.seq_len)
    counted = count.count_flops_per_token(cfg, model)
    assert analytic["forward"]["full"] == pytest.approx(counted["forward"], rel=0.02)
    assert analytic["train"]["full"] == pytest.approx(counted["train"], rel=0.02)
    # the causal term is about half the full one, and both sit above the matmul-only count
    f = analytic["forward"]
    assert f["matmul"] < f["causal"] < f["full"]
    assert f["attention_causal"] == pytest.approx(f["attention_full"] * 65 / 128)


def test_flop_count_includes_the_head_and_training_is_three_forwards() -> None:
    small = _cfg(None, [])
    big = _cfg(None, ["model.vocab_size=600"])
    a = count.count_flops_per_token(small)
    b = count.count_flops_per_token(big)
    # the head is d_model x vocab: 2 FLOPs per weight forward, 6 in training
    assert b["forward"] - a["forward"] == pytest.approx(2 * 64 * 300)
    assert b["train"] - a["train"] == pytest.approx(6 * 64 * 300)
    assert a["train"] == pytest.approx(3 * a["forward"])
    # Kaplan's 6N leaves out head and attention, so it undercounts this vocabulary-heavy shape
    assert cost.flops_per_token(small.model, 64)["six_n"] < 0.9 * a["train"]


@pytest.mark.parametrize("variant", VARIANTS, ids=[v or "baseline" for v in VARIANTS])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_activation_estimate_matches_saved_tensors(variant: str | None, dtype: str) -> None:
    cfg = _cfg(variant, [])
    model = count.build_model(cfg)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")
    measured = count.measure_saved_activations(cfg, autocast, model)
    est = cost.activation_bytes_estimate(cfg.model, 64, 2, dtype)["bytes"]
    # exact layout in fp32; under autocast a few latent casts are approximated
    assert est == pytest.approx(measured, rel=0.01 if dtype == "fp32" else 0.1)


def _fake_sysfs(root: Path, entries: list[tuple[int, str, str]]) -> Path:
    for i, (level, kind, size) in enumerate(entries):
        d = root / "cpu0" / "cache" / f"index{i}"
        d.mkdir(parents=True)
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
        (d / "shared_cpu_list").write_text("0\n")
    return root


def test_cache_reader_on_a_fake_sysfs_tree(tmp_path: Path) -> None:
    root = _fake_sysfs(
        tmp_path,
        [(1, "Data", "48K"), (1, "Instruction", "32K"), (2, "Unified", "2048K"),
         (3, "Unified", "96M")],
    )  # fmt: skip
    caches = probe.read_cache_sizes(root)
    assert caches["source"] == "sysfs"
    assert (caches["L1d"], caches["L1i"]) == (48 * 1024, 32 * 1024)
    assert caches["L2"] == 2 * 2**20 and caches["L3"] == 96 * 2**20
    empty = probe.read_cache_sizes(tmp_path / "missing", fallback=False)
    assert empty["source"] == "unavailable" and empty["L2"] is None
    assert probe.parse_size("1 MiB") == 2**20 and probe.parse_size("512") == 512
    with pytest.raises(ValueError):
        probe.parse_size("lots")
    # fit: the smallest level that holds a working set
    assert cost.fits_in(40 * 1024, caches) == "L1d"
    assert cost.fits_in(50 * 1024, caches) == "L2"
    assert cost.fits_in(3 * 2**20, caches) == "L3"
    assert cost.fits_in(200 * 2**20, caches) == "DRAM"
    fit = cost.cache_fit(_cfg(None, []), caches)
    assert fit["activation_block"]["bytes"] == 64 * 64 * 4
    assert fit["mlp_block"] == {
        "bytes": 256 * 64 * 4,
        "fits": "L2",
        "fraction_of_L1d": round(65536 / 49152, 3),
        "fraction_of_L2": round(65536 / 2**21, 3),
        "fraction_of_L3": round(65536 / (96 * 2**20), 3),
    }


def test_probe_is_cached_per_host_and_a_quick_probe_is_not_a_full_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOESTRING_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(probe, "host_busy_percent", lambda: 0.0)  # a quiet host
    assert probe.load_probe(measure_if_missing=False) is None
    first = probe.load_probe(quick=True)
    assert first is not None and first["quick"] is True
    assert first["matmul_gflops"]["fp32"] > 0 and first["memory_bandwidth_gbs"] > 0
    assert first["key"] == probe.probe_key()
    data = json.loads((tmp_path / "probe.json").read_text())
    assert list(data["hosts"]) == [first["key"]]

    def no_measuring(**_: object) -> dict[str, object]:
        raise AssertionError("the cached probe should have been used")

    monkeypatch.setattr(probe, "run_probe", no_measuring)
    assert probe.load_probe(quick=True) == first
    # a full request does not accept the quick probe
    assert probe.load_probe(measure_if_missing=False, quick=False) is None
    assert probe.matmul_peak_for(first, "cpu", "bf16") == first["matmul_gflops"]["bf16"]


def test_probe_under_simulated_load_is_not_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peak measured while other processes use the cores is low and would inflate every
    later MFU: it is used for this run (flagged) but never cached."""
    monkeypatch.setenv("SHOESTRING_CACHE_DIR", str(tmp_path))
    cache = tmp_path / "probe.json"
    busy = probe.load_probe(quick=True, read_load=lambda: 90.0)
    assert busy is not None and busy["under_load"] is True
    assert busy["host_cpu_percent_before"] == 90.0 and busy["quiet_wait_seconds"] >= 1.0
    assert not cache.exists() or busy["key"] not in json.loads(cache.read_text())["hosts"]
    assert probe.load_probe(measure_if_missing=False) is None
    # load during the measurement (the reading after it) counts too
    after = iter([0.0, 80.0])
    assert probe.load_probe(quick=True, read_load=lambda: next(after))["under_load"] is True
    assert probe.load_probe(measure_if_missing=False, quick=True) is None
    # the probe waits for a busy host to become quiet, then measures and caches
    readings = iter([90.0, 70.0, 5.0, 3.0])
    quiet = probe.load_probe(quick=True, read_load=lambda: next(readings))
    assert quiet is not None and quiet["under_load"] is False
    assert quiet["host_cpu_percent_before"] == 5.0
    assert probe.load_probe(measure_if_missing=False, quick=True) == quiet
    # an entry cached by an older version under load is not trusted
    data = json.loads(cache.read_text())
    data["hosts"][quiet["key"]] = {**quiet, "host_cpu_percent_before": 60.0, "under_load": None}
    cache.write_text(json.dumps(data))
    assert probe.load_probe(measure_if_missing=False, quick=True) is None


def test_mfu_above_100_percent_is_flagged_as_a_bad_peak() -> None:
    from shoestring.analyze.row import attach_host

    row: dict[str, object] = {
        "measured": {"runtime": {"device": "cpu", "dtype": "bf16"}},
        "achieved_gflops": 103.7,
    }
    attach_host(row, {"key": "k", "matmul_gflops": {"fp32": 36.0, "bf16": 90.0}})
    assert row["mfu"] == pytest.approx(103.7 / 90.0)
    assert "MFU 115.2% is above 100%" in str(row["mfu_flag"]) and "--probe" in str(row["mfu_flag"])
    from shoestring.report.kinds.analysis import summary_row

    assert "115.2% (bad peak)" in summary_row({**row, "label": "x"})
    ok: dict[str, object] = {**row}
    ok.pop("mfu_flag")
    attach_host(ok, {"key": "k", "matmul_gflops": {"bf16": 200.0}})
    assert "mfu_flag" not in ok


def test_inputs_sweep_counts_and_errors(tmp_path: Path) -> None:
    assert parse_sweep(["batch_size=8,16", "train.threads=1"]) == [
        ("train.batch_size", ["8", "16"]),
        ("train.threads", ["1"]),
    ]
    with pytest.raises(UserError, match="at most 2"):
        parse_sweep(["a=1", "b=2", "c=3"])
    with pytest.raises(UserError, match="look like"):
        parse_sweep(["batch_size"])
    assert parse_count("300M") == 3e8 and parse_count("1e9") == 1e9
    assert parse_count("2.5B") == 2.5e9
    with pytest.raises(UserError):
        parse_count("many")

    run_dir = tmp_path / "somerun"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(to_dict(_cfg(None, []))))
    targets = resolve_targets(["autoregressive_fast", "tiny+lora_small", str(run_dir)], [])
    assert [t[0] for t in targets] == ["autoregressive_fast", "tiny+lora_small", "somerun"]
    assert targets[2][2].model.d_model == 64 and targets[1][2].model.q_lora_rank == 32
    with pytest.raises(UserError, match="autoregressive_fast"):
        resolve_targets(["autoregresive_fast"], [])
    grid = expand_sweep(targets[:1], parse_sweep(["batch_size=8,16"]))
    assert [g[2].train.batch_size for g in grid] == [8, 16]
    with pytest.raises(UserError, match="batch_size"):
        expand_sweep(targets[:1], parse_sweep(["batch_size=0"]))


def test_speed_ratios_say_what_flops_do_not_explain() -> None:
    rows = [
        {"label": "a", "tokens_per_second": 1000.0, "flops": {"train_per_token": 1e8}},
        {"label": "b", "tokens_per_second": 600.0, "flops": {"train_per_token": 2e8}},
    ]
    r = speed_ratios(rows)
    assert r[1]["predicted_speed_ratio"] == pytest.approx(0.5)
    assert r[1]["beyond_flops"] == pytest.approx(1.2)


ROW_KEYS = {
    "label", "preset", "variant", "model", "train", "params", "flops", "memory", "cache_fit",
    "measured", "tokens_per_second", "achieved_gflops", "peak_gflops", "mfu",
    "projected_tokens_per_second", "measured_over_projected", "time_to_train", "sweep",
    "base_label", "source",
}  # fmt: skip


def test_analyze_quick_end_to_end_writes_the_analysis_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SHOESTRING_CACHE_DIR", str(tmp_path / "cache"))
    cfg_file = tmp_path / "mini.json"
    cfg_file.write_text(json.dumps({"model": {"attention_bias": True}}))
    args = ["analyze", str(cfg_file), "tiny+rope_only", "--quick", "--out", str(tmp_path)]
    args += [f"--set={o}" for o in TINY] + ["--sweep", "batch_size=2,4"]
    args += ["--projected", "mini=1000", "--tokens", "1M", "--name", "an"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| config |" in out and "best for mini:" in out
    d = tmp_path / "an"
    summary = json.loads((d / "summary.json").read_text())
    assert summary["kind"] == "analysis" and summary["status"] == "finished"
    assert summary["flops_within_tolerance"] and summary["params_match"]
    assert summary["runtime"]["threads"] == 1
    assert set(summary["best"]) == {"mini", "tiny+rope_only"}
    analysis = json.loads((d / "analysis.json").read_text())
    assert set(analysis) >= {"host", "configs", "speed_ratios"}
    assert {"key", "caches", "matmul_gflops", "cpu"} <= set(analysis["host"])
    rows = analysis["configs"]
    assert len(rows) == 4
    for row in rows:
        assert set(row) >= ROW_KEYS, ROW_KEYS - set(row)
        assert row["tokens_per_second"] > 0 and row["mfu"] > 0
        m = row["measured"]
        assert m["timed_steps"] == len(m["step_seconds"]) >= 2
        assert m["tokens_per_step"] == 64 * row["train"]["batch_size"]
        assert row["memory"]["activations_saved_bytes"] > 0
        assert abs(row["flops"]["train_rel_error"]) <= 0.02
        assert row["time_to_train"]["seconds"] == pytest.approx(1e6 / row["tokens_per_second"])
    mini = [r for r in rows if r["base_label"] == "mini"]
    assert [r["sweep"] for r in mini] == [{"train.batch_size": 2}, {"train.batch_size": 4}]
    assert mini[0]["projected_tokens_per_second"] == 1000.0
    assert mini[0]["measured_over_projected"] == pytest.approx(mini[0]["tokens_per_second"] / 1000)
    assert rows[0]["model"]["attention_bias"] is True  # the file's value is used
    md = (d / "report.md").read_text()
    for section in ("## Parameters", "## FLOPs per token", "## Memory", "## Cache fit",
                    "## Measured training throughput", "## Sweep: best setting"):  # fmt: skip
        assert section in md
    png = (d / "throughput_vs_flops.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    steps = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert {s.get("phase") for s in steps} >= {"warmup", "timed"}


def test_config_layers_and_training_keys_reach_every_target(tmp_path: Path) -> None:
    from shoestring.analyze.cli import analysis_cli_config
    from shoestring.cli import build_parser

    cfg_file = tmp_path / "analyze.yaml"
    cfg_file.write_text("targets: [tiny]\nsettings: {steps: 4}\noverrides: [train.threads=2]\n")
    argv = ["analyze", "--quick", "--config", str(cfg_file), "--steps", "3", "--device", "cpu"]
    argv += ["--set", "train.batch_size=4", "--set", "settings.steps=1", "--tokens", "2k", "-q"]
    cfg = analysis_cli_config(build_parser().parse_args(argv))
    assert cfg.targets == ["tiny"] and cfg.quick and cfg.output.quiet  # file, preset, -q
    assert cfg.settings.warmup == 1  # the quick preset, below the file
    assert cfg.settings.steps == 1 and cfg.settings.min_steps == 1  # --set wins over --steps
    # the file's own overrides first, then the flags' and --set's training keys in order
    assert cfg.overrides == ["train.threads=2", "train.device=cpu", "train.batch_size=4"]
    assert cfg.tokens == 2000.0 and "output" not in cfg.run_dict()
    bare = analysis_cli_config(build_parser().parse_args(["analyze"]))
    assert bare.targets == list(CACHE_STUDY_PRESETS) and bare.settings.steps == 5
    with pytest.raises(ConfigError, match="did you mean 'settings.steps'"):
        analysis_cli_config(build_parser().parse_args(["analyze", "--set", "settings.step=2"]))
    with pytest.raises(ConfigError, match="settings.steps=0 is out of range"):
        analysis_cli_config(build_parser().parse_args(["analyze", "--steps", "0"]))


def test_bad_target_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "no_such_preset", "--no-measure", "--out", str(tmp_path)]) == 2
    assert "unknown preset" in capsys.readouterr().err
