"""Model directories carry a model card (README.md) built from the run's summary.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _helpers import char_tokenizer, save_tiny_llama
from shoestring.models.card import command_line
from shoestring.run_config import build_run_config
from shoestring.util.stats import format_accuracy

TINY = [
    "model.d_model=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "model.d_ff=64",
    "train.seq_len=32",
    "train.batch_size=4",
    "train.max_steps=3",
    "train.eval_every=3",
    "train.eval_batches=1",
    "train.threads=1",
    "train.dtype=fp32",
    "train.compile=off",
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from shoestring.data import text

    out = tmp_path_factory.mktemp("data") / "synthetic"
    text.run(None, out, vocab_size=280, synthetic=300, quiet=True)
    return out


def test_train_model_card_quotes_the_summary(prepared: Path, tmp_path: Path) -> None:
    from shoestring.train.config import TrainJobConfig
    from shoestring.train.run import run as train

    cfg = build_run_config(overrides=[f"data.path={prepared}", *TINY])
    run = train(TrainJobConfig.of(cfg, out=tmp_path, name="card", quiet=True))
    card = (run / "model" / "README.md").read_text()
    s = json.loads((run / "summary.json").read_text())
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert "- custom_code" in card and "trust_remote_code=True" in card
    # the data by its name, not the training machine's absolute path
    assert "`shoestring train`" in card and f"on `{prepared.name}`" in card
    assert str(prepared) not in card
    assert f"{s['final_val_loss']:.4g}" in card and f"{s['initial_val_loss']:.4g}" in card
    assert f"{s['n_params'] / 1e6:.2f}M-parameter" in card
    assert "the Python API" in card  # this process is pytest, not the CLI
    # learned positions + LayerNorm + GELU (the defaults): the card says why it cannot export
    assert "cannot write it as Llama or GGUF" in card and "learned position" in card
    cfg_json = json.loads((run / "model" / "config.json").read_text())
    assert f"(id {cfg_json['eos_token_id']}," in card


def test_command_line_is_recorded_only_for_the_cli() -> None:
    assert command_line(["/venv/bin/shoestring", "train", "--data", "d"]) == (
        "shoestring train --data d"
    )
    assert command_line(["/x/src/shoestring/__main__.py", "grpo"]) == "shoestring grpo"
    assert command_line(["/venv/bin/pytest", "-q"]) is None


def _shoestring_base(out: Path) -> Path:
    """A tiny shoestring GPT model directory, written the way train writes one."""
    from shoestring.models.gpt import ShoestringGPTConfig, ShoestringGPTForCausalLM
    from shoestring.train.checkpoint import write_model_dir

    tok = char_tokenizer()
    tok.save_pretrained(out.parent / "tok")
    cfg = ShoestringGPTConfig(
        vocab_size=len(tok),
        d_model=32,
        n_layers=1,
        n_heads=2,
        d_ff=64,
        position="rope",
        max_seq_len=512,
    )
    write_model_dir(ShoestringGPTForCausalLM(cfg), out, out.parent / "tok")
    return out


@pytest.mark.parametrize("base_kind", ["llama", "shoestring"])
def test_grpo_model_dir_is_portable_and_has_a_card(tmp_path: Path, base_kind: str) -> None:
    from shoestring.rl import grpo
    from shoestring.rl.config import grpo_config

    if base_kind == "llama":
        base = save_tiny_llama(tmp_path / "base", char_tokenizer())
    else:
        base = _shoestring_base(tmp_path / "base")
    cfg = grpo_config(
        overrides=[
            f"model_name_or_path={base}",
            "dataset=synthetic:1",
            "dataset_size=8",
            "num_generations=2",
            "per_device_train_batch_size=2",
            "gradient_accumulation_steps=1",
            "max_completion_length=4",
            "max_steps=1",
            "eval_problems=2",
            "threads=1",
            "dtype=fp32",
            "device=cpu",
            f"output_dir={tmp_path / 'g'}",
            "quiet=true",
        ]
    )
    run = grpo.run(cfg)
    card = (run / "model" / "README.md").read_text()
    s = json.loads((run / "summary.json").read_text())
    assert "`shoestring grpo`" in card and f"from `{base}`, fine-tuned with GRPO" in card
    after = s["eval_after"]
    assert format_accuracy(after["correct"], after["n"]) in card
    model_cfg = json.loads((run / "model" / "config.json").read_text())
    assert model_cfg["eos_token_id"] == 2  # char_tokenizer's </s>
    if base_kind == "llama":
        assert "- custom_code" not in card and "trust_remote_code" not in card
        assert "auto_map" not in model_cfg
    else:  # GRPO's output of a shoestring GPT ships the modeling code again
        assert "- custom_code" in card and "auto_map" in model_cfg
        assert (run / "model" / "modeling_shoestring_gpt.py").is_file()


def test_card_names_data_relative_to_the_data_root(tmp_path: Path, monkeypatch) -> None:
    """A GRPO run's data file appears relative to the data root (or by its name outside any
    root), never as the absolute path of the machine that trained it."""
    from shoestring.models.card import data_label, render_model_card

    root = tmp_path / "root"
    (root / "gsm8k").mkdir(parents=True)
    monkeypatch.setenv("SHOESTRING_DATA", str(root))
    inside, outside = root / "gsm8k" / "train.jsonl", tmp_path / "elsewhere" / "mine.jsonl"
    assert data_label(str(inside)) == "gsm8k/train.jsonl"
    assert data_label(str(outside)) == "mine.jsonl"
    assert data_label("data/prepared") == "data/prepared"  # relative: as given
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    for dataset, path, shown in (
        ("gsm8k", inside, "`gsm8k (gsm8k/train.jsonl)`"),
        (f"gsm8k:{outside}", outside, "`gsm8k:mine.jsonl`"),
    ):
        summary = {"kind": "grpo", "status": "finished", "data": {"path": str(path)}}
        (run / "summary.json").write_text(json.dumps(summary))
        (run / "config.json").write_text(json.dumps({"dataset": dataset}))
        card = render_model_card(run)
        assert f"fine-tuned with GRPO on {shown}" in card and str(tmp_path) not in card
