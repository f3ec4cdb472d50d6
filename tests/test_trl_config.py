"""TRL configs run unchanged: the checked-in TRL YAML (Qwen2.5-0.5B-Instruct on GSM8K) resolves
with only logged notices and trains a step on a tiny local model; every key of the installed
TRL's config dataclasses is classified; a TRL feature that would change training is refused; a
dtype or LoRA setting is honoured or named, never dropped."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from _helpers import char_tokenizer, save_tiny_llama
from shoestring.cli import main
from shoestring.config import ConfigError, read_config_file
from shoestring.errors import UserError
from shoestring.rl.config import GRPOConfig, grpo_config
from shoestring.rl.run_checks import check_target_modules, peft_target_modules, setting_notices
from shoestring.rl.trl_config import trl_key_table
from shoestring.rl.trl_keys import TRL_DEFAULTS, TRL_KEYS, TRL_LORA_DEFAULTS
from shoestring.rundir.trackers import tracker_names
from shoestring.runtime import Runtime

REPO = Path(__file__).resolve().parents[1]
TRL_YAML = REPO / "tests" / "data" / "trl_grpo_qwen2.5-0.5b_gsm8k.yaml"
#: a TRL YAML with its reward module beside it (run from that folder, as `trl grpo` is)
LOCAL_REWARDS = REPO / "tests" / "data" / "trl_local_rewards"
NATIVE = {f.name for f in dataclasses.fields(GRPOConfig)}


def _trl_dataclasses() -> list[type]:
    pytest.importorskip("trl")
    from trl import DatasetMixtureConfig, ModelConfig
    from trl import GRPOConfig as TrlGRPOConfig
    from trl.scripts.grpo import GRPOScriptArguments

    return [TrlGRPOConfig, ModelConfig, GRPOScriptArguments, DatasetMixtureConfig]


def _trl_yaml() -> dict:
    return read_config_file(TRL_YAML)


# ----------------------------------------------------------------------------- the key table


def test_every_key_of_installed_trl_is_classified() -> None:
    missing = [
        f"{cls.__name__}.{f.name}"
        for cls in _trl_dataclasses()
        for f in dataclasses.fields(cls)
        if f.name not in TRL_KEYS
    ]
    assert not missing, f"TRL keys without an entry in rl/trl_keys.py: {missing}"
    # a 'same' key really is a shoestring field; a mapped or ignored one is not
    for key, entry in TRL_KEYS.items():
        # ModelConfig's dtype and LoRA keys share shoestring's names but mean more (weight
        # dtype; effective only with use_peft), so they are mapped
        shared = key in ("dtype", "lora_alpha", "lora_dropout", "lora_target_modules")
        assert (entry.kind == "same") == (key in NATIVE) or shared, key


def test_trl_defaults_are_installed_trls() -> None:
    trl_grpo, model_config, *_ = _trl_dataclasses()
    defaults = {f.name: f.default for f in dataclasses.fields(trl_grpo)}
    defaults |= {f.name: f.default for f in dataclasses.fields(model_config)}
    for key, value in {**TRL_DEFAULTS, **TRL_LORA_DEFAULTS}.items():
        if key not in defaults:  # a key TRL dropped: TRL no longer does it (None = no limit)
            assert TRL_KEYS[key].source == "older TRL/transformers" and value is None, key
            continue
        assert defaults[key] == value, key
    # and each differs from shoestring's, or it would not need applying
    ours = GRPOConfig()
    for key in TRL_DEFAULTS.keys() & NATIVE:
        assert getattr(ours, key) != TRL_DEFAULTS[key], key


def test_the_logged_defaults_name_every_key_whose_trl_default_differs() -> None:
    """A TRL config that sets nothing: every shared key whose TRL 1.16 default differs from
    shoestring's is either applied or named as not applied, prompt length included."""
    trl_grpo, *_ = _trl_dataclasses()
    if "max_prompt_length" in {f.name for f in dataclasses.fields(trl_grpo)}:
        pytest.skip("this TRL still has max_prompt_length")
    cfg = grpo_config(base={"bf16": False})
    assert cfg.max_prompt_length is None  # TRL 1.x does not cut prompts
    text = "\n".join(cfg.notices)
    assert "max_prompt_length=None" in text
    ours = GRPOConfig()
    for f in dataclasses.fields(trl_grpo):
        if f.name not in NATIVE or f.name == "model_name_or_path":
            continue
        trl_default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if f.name == "report_to":  # TRL's "none" is shoestring's ["none"]: no tracker either way
            assert tracker_names(trl_default) == tracker_names(ours.report_to)
            continue
        if trl_default != getattr(ours, f.name):
            assert re.search(rf"\b{f.name}\b", text), f"{f.name} missing from the logged list"


def test_docs_carry_the_key_table() -> None:
    doc = (REPO / "docs" / "grpo.md").read_text(encoding="utf-8")
    assert trl_key_table() in doc, "regenerate docs/grpo.md's table with trl_key_table()"


# ----------------------------------------------------------------------------- the TRL YAML


def test_trl_yaml_resolves_with_only_notices() -> None:
    cfg = grpo_config(base=_trl_yaml())
    assert cfg.dtype == "bf16" and cfg.device == "auto"
    assert (cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout) == (16, 32.0, 0.05)
    assert cfg.lora_target_modules[-1] == "down_proj"
    assert cfg.dataset == "gsm8k" and cfg.rewards == ["trl:accuracy_reward"]
    assert cfg.output_dir == "runs/Qwen2.5-0.5B-Instruct-GRPO-gsm8k"
    assert (cfg.warmup_ratio, cfg.warmup_for(500)) == (0.1, 50)
    assert cfg.log_completions_steps == 5 and cfg.gradient_checkpointing
    # every key without a meaning here is named exactly once
    text = "\n".join(cfg.notices)
    assert cfg.report_to == ["tensorboard"]  # honoured, not ignored
    for key in (
        "push_to_hub",
        "hub_model_id",
        "use_vllm",
        "attn_implementation",
        "eval_strategy",
        "overwrite_output_dir",
        "gradient_checkpointing_kwargs",
    ):
        assert len(re.findall(rf"\b{key}\b", text)) == 1, key
    # the one TRL default the file leaves unset that differs from shoestring's
    assert "disable_dropout=False" in text and cfg.disable_dropout is False


def test_trl_yaml_trains_a_step_through_the_cli(tmp_path: Path, capsys) -> None:
    model = save_tiny_llama(tmp_path / "tiny", char_tokenizer())
    data = tmp_path / "gsm8k.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {"question": f"What is {a} + {a}?", "answer": f"{a}+{a}={2 * a}\n#### {2 * a}"}
            )
            + "\n"
            for a in range(1, 9)
        ),
        encoding="utf-8",
    )
    argv = ["grpo", "--config", str(TRL_YAML), "--out", str(tmp_path / "runs")]
    for override in (
        f"model_name_or_path={model}",
        f"dataset=gsm8k:{data}",
        "max_steps=1",
        "max_completion_length=8",
        "threads=1",
        # trl's accuracy_reward needs math_verify; the reward contract has its own tests
        'rewards=["correctness"]',
    ):
        argv += ["--set", override]
    assert main(argv) == 0
    run = tmp_path / "runs" / "Qwen2.5-0.5B-Instruct-GRPO-gsm8k"  # TRL's output_dir
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["runtime"]["dtype"] == "bf16"  # bf16: true honoured
    assert summary["n_trainable"] < sum(
        p.numel() for p in LlamaForCausalLM.from_pretrained(model).parameters()
    )
    log = (run / "log.txt").read_text()
    ignored_keys = [
        line.split("config: ")[-1].split(": ignored")[0]
        for line in log.splitlines()
        if ": ignored" in line
    ]
    assert "use_vllm: ignored" in log and not any("report_to" in k for k in ignored_keys)
    # report_to: [tensorboard] - the file's tracker got metrics.jsonl's numbers under TRL's names
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    tags = set(events.Tags()["scalars"])
    for tag, value in (
        ("train/reward", record["reward_mean"]),
        ("train/rewards/correctness/mean", record["rewards"]["correctness"]["mean"]),
        ("train/learning_rate", record["lr"]),
        ("train/loss", record["loss"]),
        ("train/completions/mean_length", record["completion_length_mean"]),
    ):
        assert tag in tags, sorted(tags)
        (scalar,) = events.Scalars(tag)
        assert scalar.step == 1 and scalar.value == pytest.approx(value)


# ----------------------------------------------------------------------------- mapping rules


def test_bf16_false_is_honoured_and_fp16_refused() -> None:
    assert grpo_config(base={**_trl_yaml(), "bf16": False}).dtype == "fp32"
    assert grpo_config(base=_trl_yaml(), overrides=["bf16=false"]).dtype == "fp32"
    with pytest.raises(ConfigError, match="fp16"):
        grpo_config(base={**_trl_yaml(), "fp16": True, "bf16": False})
    with pytest.raises(ConfigError, match="float16"):
        grpo_config(base={**_trl_yaml(), "dtype": "float16"})
    with pytest.raises(ConfigError, match="contradicts"):
        grpo_config(base={"use_cpu": True, "bf16": False, "dtype": "bf16"})


def test_unsupported_features_are_refused_ignored_keys_logged() -> None:
    with pytest.raises(ConfigError, match="sync_ref_model"):
        grpo_config(base={**_trl_yaml(), "sync_ref_model": True})
    with pytest.raises(ConfigError, match="cosine_with_min_lr"):
        grpo_config(base={**_trl_yaml(), "lr_scheduler_type": "cosine_with_min_lr"})
    with pytest.raises(ConfigError, match="did you mean 'lora_alpha'"):
        grpo_config(base={**_trl_yaml(), "lora_alpah": 8})
    with pytest.raises(ConfigError, match="downloads nothing"):
        grpo_config(base={**_trl_yaml(), "dataset_name": "some/other-dataset"})
    # accepted at the value where TRL does what shoestring does; a loss type TRL does not
    # have is still GRPOConfig's error
    grpo_config(base={**_trl_yaml(), "sync_ref_model": False, "use_vllm": True})
    with pytest.raises(ConfigError, match="loss_type"):
        grpo_config(base={**_trl_yaml(), "loss_type": "ppo"})


def test_trl_defaults_sit_below_preset_and_file() -> None:
    trl_only = {"push_to_hub": False}
    assert grpo_config(base=trl_only).max_completion_length == 512  # TRL's default
    assert grpo_config("cpu", base=trl_only).max_completion_length == 256  # the preset's
    assert grpo_config(base={"max_steps": 3}).max_completion_length == 256  # shoestring config
    forced = grpo_config(base={"max_steps": 3}, trl=True)  # --trl-config
    assert forced.max_completion_length == 512 and forced.logging_steps == 10
    peft = grpo_config(base={"use_peft": True})
    assert peft.lora_rank == 16 and peft.lora_target_modules == ["peft-default"]
    # --set speaks TRL too on a TRL config
    cfg = grpo_config(base=_trl_yaml(), overrides=["lora_r=4", "use_cpu=true", "hub_token=x"])
    assert (cfg.lora_rank, cfg.device) == (4, "cpu") and cfg.notices[-1].startswith("hub_token")
    assert grpo_config(base=_trl_yaml(), overrides=["use_peft=false"]).lora_rank == 0


def test_scheduler_warmup_and_saving_spellings() -> None:
    cfg = grpo_config(base={"use_cpu": True, "warmup_steps": 0.25, "save_strategy": "no"})
    assert cfg.warmup_for(40) == 10 and cfg.save_steps > 10**9
    cfg = grpo_config(base={"use_cpu": True, "lr_scheduler_type": "constant", "warmup_ratio": 0.1})
    assert cfg.warmup_for(100) == 0 and any("no warmup" in n for n in cfg.notices)
    cfg = grpo_config(base={"use_cpu": True, "scale_rewards": False, "save_total_limit": None})
    assert cfg.scale_rewards == "none" and cfg.save_total_limit == 2


# ----------------------------------------------------------------------------- no silent drops


def test_lora_settings_without_lora_are_named() -> None:
    cfg = grpo_config(base={"use_cpu": True, "lora_r": 8, "lora_alpha": 16})
    assert cfg.lora_rank == 0
    assert any("without use_peft" in n and "lora_r" in n for n in cfg.notices)
    native = grpo_config(overrides=["lora_alpha=64", 'lora_target_modules=["q_proj"]'])
    runtime = Runtime("cpu", "fp32", 1, False, False)
    (note,) = setting_notices(native, runtime)
    assert "full fine-tune" in note and "lora_alpha=64.0" in note


def test_lora_target_that_matches_nothing_is_an_error() -> None:
    tok = char_tokenizer()
    torch.manual_seed(0)
    from transformers import LlamaConfig

    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )
    check_target_modules(model, ["q_proj", "model.layers.0.mlp.down_proj"])
    with pytest.raises(UserError, match=r"\['fc_in'\].*gate_proj"):
        check_target_modules(model, ["q_proj", "fc_in"])
    assert peft_target_modules(["all-linear"]) == "all-linear"
    assert peft_target_modules(["peft-default"]) is None
    with pytest.raises(UserError, match="stands alone"):
        peft_target_modules(["all-linear", "q_proj"])


def test_trl_yaml_runs_trls_accuracy_reward_on_a_chat_model(tmp_path: Path) -> None:
    """The file's own reward (trl.rewards.accuracy_reward) on a model with a chat template:
    prompts and completions reach it conversational, as in TRL."""
    pytest.importorskip("trl")
    pytest.importorskip("math_verify")
    tok = char_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}A:"
    model = save_tiny_llama(tmp_path / "chat", tok)
    data = tmp_path / "gsm8k.jsonl"
    rows = [{"question": f"{a}+{a}?", "answer": f"#### {2 * a}"} for a in range(1, 9)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    argv = ["grpo", "--config", str(TRL_YAML), "--out", str(tmp_path / "runs")]
    for override in (
        f"model_name_or_path={model}",
        f"dataset=gsm8k:{data}",
        "max_steps=1",
        "max_completion_length=8",
        "threads=1",
    ):
        argv += ["--set", override]
    assert main(argv) == 0
    run = tmp_path / "runs" / "Qwen2.5-0.5B-Instruct-GRPO-gsm8k"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["protocol"]["name"] == "chat-cot"
    step = next(
        json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "rewards" in x
    )
    assert set(step["rewards"]) == {"accuracy_reward"}


def test_trl_text_rewards_need_conversational_prompts(tmp_path: Path) -> None:
    pytest.importorskip("trl")
    model = save_tiny_llama(tmp_path / "plain", char_tokenizer())  # no chat template: qa
    cfg = grpo_config(
        base=_trl_yaml(),
        overrides=[f"model_name_or_path={model}", "dataset=synthetic:1", "dataset_size=8"],
    )
    from shoestring.rl.trainer import GRPOTrainer

    trainer = GRPOTrainer(cfg, tmp_path / "run", echo=False, progress=False)
    with pytest.raises(UserError, match="conversational"):
        trainer.setup()


# ----------------------------------------------------------------------------- reward modules


def _local_rewards_folder(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of tests/data/trl_local_rewards (config + reward module + data) and a tiny model."""
    work = tmp_path / "work"
    shutil.copytree(LOCAL_REWARDS, work)
    return work, save_tiny_llama(tmp_path / "tiny", char_tokenizer())


def test_reward_module_beside_the_config_imports_as_in_trl(tmp_path: Path) -> None:
    """`shoestring grpo --config grpo.yaml` from the folder holding my_trl_rewards.py, through
    the installed console script with no PYTHONPATH: the working directory is on sys.path
    first, as `trl grpo` puts it, so the dotted reward names resolve and score every step."""
    script = Path(sys.executable).with_name("shoestring")
    if not script.is_file():
        pytest.skip("the shoestring console script is not installed in this environment")
    work, model = _local_rewards_folder(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    argv = [str(script), "grpo", "--config", "grpo.yaml", "--model", str(model), "-q"]
    proc = subprocess.run(
        [*argv, "--set", "threads=1"], cwd=work, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    run = work / "grpo-local-rewards"  # TRL's output_dir, relative to the working directory
    assert proc.stdout.strip() == "grpo-local-rewards"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["data"]["path"] == str((work / "gsm8k_tiny.jsonl").resolve())
    step = next(
        json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "rewards" in x
    )
    assert set(step["rewards"]) == {"format_reward", "short_answer_reward"}


def test_a_bad_reward_name_fails_before_the_model_loads(tmp_path: Path, monkeypatch, capsys):
    """A reward function that does not exist is a one-line config error (exit 2) raised
    before any model is read: the model path here does not even exist."""
    work, _ = _local_rewards_folder(tmp_path)
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the import puts the cwd first
    monkeypatch.delitem(sys.modules, "my_trl_rewards", raising=False)
    argv = ["grpo", "--config", "grpo.yaml", "--model", str(tmp_path / "no-such-model")]
    capsys.readouterr()  # what saving the tiny model printed
    assert main([*argv, "--set", 'reward_funcs=["my_trl_rewards.missing"]']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "my_trl_rewards has no callable 'missing'" in err[0], err
    assert not (work / "grpo-local-rewards").exists()  # nothing was started
    # a module that is nowhere: the message says where it was looked for and what to do
    assert main([*argv, "--set", 'reward_funcs=["nowhere_rewards.fn"]']) == 2
    err = capsys.readouterr().err
    assert "working directory" in err and "PYTHONPATH" in err


# ----------------------------------------------------------------------------- output_dir


def test_output_dir_is_the_run_directory_or_refused(tmp_path: Path, capsys) -> None:
    """TRL's output_dir is the directory the run uses and config.json names; a rerun into a
    non-empty one is refused in one line saying how to resume it or pick another."""
    model = save_tiny_llama(tmp_path / "tiny", char_tokenizer())
    capsys.readouterr()  # what saving the tiny model printed
    out = tmp_path / "out"
    argv = ["grpo", "--config", str(TRL_YAML), "--out", str(out), "-q"]
    for override in (
        f"model_name_or_path={model}",
        "dataset=synthetic:1",
        "dataset_size=8",
        "max_steps=1",
        "max_completion_length=4",
        "per_device_train_batch_size=8",
        "gradient_accumulation_steps=1",
        "threads=1",
        'rewards=["correctness"]',
    ):
        argv += ["--set", override]
    assert main(argv) == 0
    run = out / "Qwen2.5-0.5B-Instruct-GRPO-gsm8k"
    assert capsys.readouterr().out.strip() == str(run)
    config = json.loads((run / "config.json").read_text())
    assert config["output_dir"] == str(run)
    assert (run / "log.txt").read_text().splitlines()[0].endswith(f"GRPO run directory: {run}")
    assert main(argv) == 2  # the same output_dir again: refused, never suffixed
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"shoestring grpo --resume {run}" in err[0], err
    assert sorted(p.name for p in out.iterdir()) == [run.name]


# ----------------------------------------------------------------------------- trackers


def test_tracker_names_follow_trl() -> None:
    from shoestring.rundir.trackers import tracker_names, tracker_scalars

    assert tracker_names("none") == [] and tracker_names(None) == []
    assert tracker_names("tensorboard, wandb") == ["tensorboard", "wandb"]
    assert "tensorboard" in tracker_names("all")
    record = {
        "step": 3,
        "reward_mean": 0.5,
        "rewards": {"format": {"mean": 1.0, "std": 0.0}},
        "kl": None,
        "accuracy": 0.25,
    }
    assert tracker_scalars(record) == {
        "train/reward": 0.5,
        "train/rewards/format/mean": 1.0,
        "train/rewards/format/std": 0.0,
        "train/accuracy": 0.25,  # a number TRL does not log keeps its own name
    }


def test_report_to_wandb_needs_wandb_or_runs_offline(tmp_path: Path, monkeypatch, capsys):
    """Without the wandb package: one line saying to install it, before any model loads (the
    model path does not exist). With it: an offline W&B run inside the run directory."""
    model = tmp_path / "no-such-model"
    argv = ["grpo", "--model", str(model), "--dataset", "synthetic:1", "--steps", "1", "-q"]
    argv += ["--out", str(tmp_path), "--name", "w", "--set", "report_to=wandb"]
    try:
        import wandb  # noqa: F401
    except ImportError:
        assert main(argv) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert "report_to=wandb" in line and "pip install wandb" in line
        return
    monkeypatch.setenv("WANDB_MODE", "offline")
    save_tiny_llama(model, char_tokenizer())
    for override in ("dataset_size=8", "num_generations=2", "per_device_train_batch_size=2"):
        argv += ["--set", override]
    assert main([*argv, "--set", "max_completion_length=4", "--set", "threads=1"]) == 0
    assert any((tmp_path / "w" / "wandb").glob("offline-run-*"))


def test_report_to_none_writes_no_tracker_files(tmp_path: Path) -> None:
    model = save_tiny_llama(tmp_path / "tiny", char_tokenizer())
    argv = ["grpo", "--model", str(model), "--dataset", "synthetic:1", "--steps", "1", "-q"]
    argv += ["--out", str(tmp_path), "--name", "n"]
    for override in ("dataset_size=8", "num_generations=2", "per_device_train_batch_size=2"):
        argv += ["--set", override]
    assert main([*argv, "--set", "max_completion_length=4", "--set", "threads=1"]) == 0
    assert json.loads((tmp_path / "n" / "config.json").read_text())["report_to"] == ["none"]
    assert not (tmp_path / "n" / "tensorboard").exists()
    assert not (tmp_path / "n" / "wandb").exists()
