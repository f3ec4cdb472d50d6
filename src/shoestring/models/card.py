"""The model card: ``model/README.md`` says what made a model, on what, with which command, and
what it measured, so a model directory that travels alone (the Hub, a colleague's disk) still
carries its provenance.

Why it is written from the run directory after the run ends: the figures (final validation
loss, held-out accuracy with its interval) are the ones ``summary.json`` records, which the
lifecycle completes only on exit; the card quotes them instead of recomputing anything. The
command line is the process's own when it is the ``shoestring`` CLI (the run directory keeps
the full resolved config either way).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from shoestring.data.root import data_root_candidates
from shoestring.errors import UserError
from shoestring.models.export_llama import llama_refusals
from shoestring.models.gpt import MODEL_TYPE, ShoestringGPTConfig
from shoestring.rundir.directory import atomic_write_text
from shoestring.util.stats import format_accuracy

__all__ = ["data_label", "render_model_card", "write_model_card"]


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def command_line(argv: list[str] | None = None) -> str | None:
    """``shoestring ...`` as typed, when this process is the shoestring CLI; else None."""
    argv = sys.argv if argv is None else argv
    prog = Path(argv[0]).name if argv else ""
    entry = argv[0].replace("\\", "/") if argv else ""
    if prog == "shoestring" or entry.endswith("shoestring/__main__.py"):
        return " ".join(["shoestring", *argv[1:]])
    return None


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return "-" if value is None else str(value)


def _count(value: Any) -> str:
    return f"{value:,.0f}" if isinstance(value, int | float) else "-"


def _architecture(model_cfg: dict[str, Any]) -> str:
    if not model_cfg:
        return "a PEFT LoRA adapter (`adapter_config.json`) to load on top of its base model"
    if model_cfg.get("model_type") != MODEL_TYPE:
        classes = ", ".join(model_cfg.get("architectures", []))
        return f"`{model_cfg.get('model_type', '?')}` ({classes})"
    c = model_cfg
    parts = [
        f"{c.get('n_layers')} layers, d_model {c.get('d_model')}, {c.get('n_heads')} heads, "
        f"d_ff {c.get('d_ff')}",
        f"{c.get('position')} positions",
        str(c.get("norm")),
        str(c.get("mlp")),
        f"context {c.get('max_seq_len')}",
    ]
    for key in ("q_lora_rank", "kv_lora_rank", "qk_rope_head_dim", "v_head_dim"):
        if c.get(key):
            parts.append(f"{key} {c[key]}")
    return "shoestring GPT (`shoestring_gpt`): " + ", ".join(parts)


def data_label(path: str | None) -> str:
    """How the card names a run's data: its path relative to the data root it lies under
    (``gsm8k/train.jsonl``), else its own file or folder name; a relative path as given. Never
    the training machine's absolute path, which means nothing on another machine and says
    more about that machine than a published card should."""
    if not path:
        return "?"
    p = Path(path)
    if not p.is_absolute():
        return path
    try:
        roots = [root for root, _ in data_root_candidates()]
    except UserError:  # $SHOESTRING_DATA names no directory: no root to be relative to
        roots = []
    for root in roots:
        try:
            return p.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            continue
    return p.name


def _dataset_label(spec: str, data: dict[str, Any]) -> str:
    """A GRPO ``dataset`` spec with its file as :func:`data_label` names it (``gsm8k:PATH``
    shortened; bare ``gsm8k`` followed by the file it was read from)."""
    kind, _, arg = spec.partition(":")
    if kind == "gsm8k" and arg:
        return f"gsm8k:{data_label(arg)}"
    if data.get("path"):
        return f"{spec} ({data_label(data['path'])})"
    return spec


def _train_facts(s: dict[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    data = s.get("data") or {}
    on = (
        f"on `{data_label(data.get('path'))}` ({_count(data.get('train_tokens'))} training tokens, "
        f"{_count(data.get('val_tokens'))} validation tokens, vocabulary {data.get('vocab_size')})"
    )
    rows = [
        ("optimizer steps", f"{s.get('steps')} of {s.get('max_steps')}"),
        ("tokens seen", _count(s.get("tokens"))),
        (
            "validation loss",
            f"{_fmt(s.get('initial_val_loss'))} at step 0 -> {_fmt(s.get('final_val_loss'))} "
            f"at the end (best {_fmt(s.get('best_val_loss'))} at step {s.get('best_step')})",
        ),
        ("final training loss", _fmt(s.get("final_train_loss"))),
        (
            "training throughput",
            f"{_count(s.get('tokens_per_second'))} tokens/s (training steps only)",
        ),
    ]
    return on, rows


def _grpo_facts(s: dict[str, Any], cfg: dict[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    base = (s.get("model") or {}).get("path") or cfg.get("model_name_or_path")
    dataset = _dataset_label(str(cfg.get("dataset", "?")), s.get("data") or {})
    on = f"from `{base}`, fine-tuned with GRPO on `{dataset}`"
    rows = [
        ("optimizer steps", f"{s.get('steps')} of {s.get('max_steps')}"),
        ("final mean reward", _fmt(s.get("final_reward_mean"))),
        ("LoRA rank", str(cfg.get("lora_rank") or "none (full fine-tune)")),
    ]
    protocol = (s.get("protocol") or {}).get("name")
    for tag in ("before", "after"):
        ev = s.get(f"eval_{tag}")
        if isinstance(ev, dict) and "correct" in ev and "n" in ev:
            acc = format_accuracy(int(ev["correct"]), int(ev["n"]))
            rows.append((f"held-out accuracy {tag} (protocol `{protocol}`)", acc))
    mcnemar = s.get("eval_mcnemar")
    if isinstance(mcnemar, dict) and mcnemar.get("statement"):
        rows.append(("before vs after (McNemar exact)", str(mcnemar["statement"])))
    return on, rows


def _how_to_load(model_cfg: dict[str, Any], refusals: list[str] | None) -> list[str]:
    custom = model_cfg.get("model_type") == MODEL_TYPE
    flag = ", trust_remote_code=True" if custom else ""
    lines = [
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'tok = AutoTokenizer.from_pretrained("path/to/model"{flag})',
        f'model = AutoModelForCausalLM.from_pretrained("path/to/model"{flag})',
        "```",
        "",
    ]
    if custom:
        lines += [
            "This directory ships its modeling code (`modeling_shoestring_gpt.py` and the "
            "modules it imports, `auto_map` in `config.json`), so it loads where shoestring is "
            "not installed; transformers runs that code only with `trust_remote_code=True`. "
            "With shoestring installed, no flag is needed.",
            "",
        ]
        if refusals == []:  # checked, nothing refused (None: not checked)
            lines.append(
                "This variant is exactly Llama: `shoestring export RUN --to llama --out DIR` "
                "writes a `LlamaForCausalLM` directory (no custom code) and `--to gguf` a file "
                "for llama.cpp and Ollama."
            )
        elif refusals:
            lines.append(
                "`shoestring export` cannot write it as Llama or GGUF: " + "; ".join(refusals) + "."
            )
    return lines


def render_model_card(run_dir: Path, refusals: list[str] | None = None) -> str:
    """The card's Markdown for the finished run in ``run_dir`` (its ``model/`` must exist)."""
    s = _read(run_dir / "summary.json")
    cfg = _read(run_dir / "config.json")
    model_cfg = _read(run_dir / "model" / "config.json")
    tok_cfg = _read(run_dir / "model" / "tokenizer_config.json")
    kind = s.get("kind", "?")
    versions = s.get("versions") or {}
    runtime = s.get("runtime") or {}
    host = s.get("host") or {}
    if kind == "grpo":
        on, rows = _grpo_facts(s, cfg)
    else:
        on, rows = _train_facts(s)
    n_params = s.get("n_params")
    size = f"{n_params / 1e6:.2f}M-parameter " if isinstance(n_params, int | float) else ""
    command = command_line()
    custom = model_cfg.get("model_type") == MODEL_TYPE
    out = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags:",
        "- shoestring",
        *(["- custom_code"] if custom else []),
        "---",
        "",
        f"# {s.get('run_name') or run_dir.name}",
        "",
        f"A {size}causal language model made by `shoestring {kind}` "
        f"(shoestring {versions.get('shoestring', '?')}) {on}.",
        "",
        "## How it was made",
        "",
        f"- command: `{command}`"
        if command
        else "- command: the Python API, not the CLI (the run's `config.json` has the config)",
        f"- architecture: {_architecture(model_cfg)}",
        f"- ran on: {runtime.get('device', '?')} ({runtime.get('dtype', '?')}), "
        f"{host.get('cpu', '?')}, threads: {runtime.get('threads', '?')}; "
        f"{_fmt(s.get('wall_seconds') or s.get('session_wall_seconds'), 3)} s wall",
        f"- libraries: torch {versions.get('torch', '?')}, "
        f"transformers {versions.get('transformers', '?')}",
        f"- run status: {s.get('status', '?')}, finished {s.get('finished_at', '?')}",
        "",
        "## What it measured (from the run's summary.json)",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows],
        "",
        "## Use it",
        "",
        f"Generation stops at `{tok_cfg.get('eos_token', '?')}` (id "
        f"{model_cfg.get('eos_token_id', '?')}, `eos_token_id` in `config.json` and "
        f"`generation_config.json`); the tokenizer's `model_max_length` is "
        f"{tok_cfg.get('model_max_length', '?')}"
        + (" tokens, the context it was trained on." if custom else " tokens."),
        "",
        *_how_to_load(model_cfg, refusals),
    ]
    return "\n".join(out).rstrip() + "\n"


def write_model_card(run_dir: str | Path) -> Path | None:
    """Write ``RUN/model/README.md`` for a finished run; None when there is no model to describe."""
    run_dir = Path(run_dir)
    model_dir = run_dir / "model"
    if (
        not (model_dir / "config.json").is_file()
        and not (model_dir / "adapter_config.json").is_file()
    ):
        return None
    if _read(run_dir / "summary.json").get("status") != "finished":
        return None
    refusals = None
    model_cfg = _read(model_dir / "config.json")
    if model_cfg.get("model_type") == MODEL_TYPE:
        refusals = llama_refusals(ShoestringGPTConfig.from_dict(model_cfg))
    target = model_dir / "README.md"
    atomic_write_text(target, render_model_card(run_dir, refusals))
    return target
