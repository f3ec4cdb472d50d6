"""Config layering, validation messages and presets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shoestring.config import ConfigError, to_dict
from shoestring.run_config import RunConfig, build_run_config, list_presets, list_variants


def test_typo_in_override_suggests_nearest_key() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'model.d_modle'.*'model.d_model'"):
        build_run_config(overrides=["model.d_modle=384"])


def test_typo_in_config_file_suggests_nearest_key(tmp_path: Path) -> None:
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"train": {"learning_rate": 1e-3, "lr": 1e-3}}))
    with pytest.raises(ConfigError, match=r"train.learning_rate.*did you mean"):
        build_run_config(config_file=str(f))


def test_yaml_config_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  d_model: 96\n  n_heads: 3\ntrain:\n  lr: 0.002\n")
    cfg = build_run_config(config_file=str(f))
    assert cfg.model.d_model == 96 and cfg.train.lr == 0.002


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=-1", r"train.lr=-1.0 is out of range; allowed range is \[0.0, 10.0\]"),
        ("model.position=alibi", r"model.position='alibi' is not allowed; choose one of: learned"),
        ("train.batch_size=2.5", r"train.batch_size=2.5 must be an integer"),
        ("model.attention_bias=maybe", r"not a boolean"),
        ("model.n_heads=5", r"divisible by model.n_heads=5"),
        ("model", r"must look like section.field=value"),
        ("model=3", r"'model' is a section"),
    ],
)
def test_bad_values_name_field_and_range(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_run_config(overrides=[override])


def test_layers_compose_in_order() -> None:
    cfg = build_run_config("small", "lora_medium", overrides=["model.q_lora_rank=16"])
    assert (cfg.model.d_model, cfg.model.n_layers, cfg.model.n_heads) == (384, 6, 6)
    assert cfg.model.kv_lora_rank == 128 and cfg.model.q_lora_rank == 16
    assert cfg.preset == "small" and cfg.variant == "lora_medium"


def test_study_presets_match_the_issue() -> None:
    want = {
        "wiki_gpu_optimized": (512, 8, 6, 2048, 256, 64),
        "wiki_cache_optimized": (384, 8, 4, 1536, 128, 32),
        "wiki_performance_tuned": (320, 8, 5, 1280, 96, 40),
        "autoregressive_fast": (256, 4, 3, 1024, 128, 32),
    }
    for name, (d, h, nl, ff, seq, bs) in want.items():
        c = build_run_config(name)
        m, t = c.model, c.train
        assert (m.d_model, m.n_heads, m.n_layers, m.d_ff, t.seq_len, t.batch_size) == (
            d,
            h,
            nl,
            ff,
            seq,
            bs,
        )
        assert t.lr == 1e-4 and m.vocab_size == 16000


def test_all_presets_and_variants_resolve() -> None:
    assert {"tiny", "small", "medium", "large"} <= set(list_presets())
    assert len(list_variants()) == 9
    for size in ("tiny", "small", "medium", "large"):
        for variant in list_variants():
            build_run_config(size, variant)


def test_unknown_preset_suggests() -> None:
    with pytest.raises(ConfigError, match="did you mean 'small'"):
        build_run_config("smal")


def test_roundtrip_through_dict() -> None:
    cfg = build_run_config("tiny", "enhanced_small")
    again = RunConfig()
    from shoestring.config import apply_dict

    apply_dict(again, to_dict(cfg))
    assert to_dict(again) == to_dict(cfg)


def test_cli_reports_typo_without_traceback(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "shoestring", "train", "--set", "train.max_step=3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    assert "did you mean 'train.max_steps'" in res.stderr and "Traceback" not in res.stderr


def test_resume_comes_only_from_the_resume_flag(capsys):
    """``resume`` in a config file or ``--set`` would continue a run under a config other than
    its own config.json: every resumable command refuses it in one line."""
    from shoestring.cli import main

    for argv in (
        ["train", "--preset", "tiny", "--set", "resume=runs/x"],
        ["grpo", "--set", "resume=runs/x"],
    ):
        assert main(argv) == 2
        assert "use --resume runs/x" in capsys.readouterr().err
