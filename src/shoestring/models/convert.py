"""``import`` and ``export`` as one API, ``run(cfg) -> Path`` (the config's type says which),
writing the artifact and a ``report.md`` of what it read, wrote and measured.

Why the report is beside the artifact rather than a run directory around it: the artifact is a
Hugging Face model directory (whose ``config.json`` is the model's, so a run directory's
``config.json`` would clash) or a single ``.gguf`` file that llama.cpp and Ollama take as it is.
So the report goes inside the model directory, next to its ``README.md`` model card, and beside
a GGUF file as ``FILE.gguf.report.md``. It holds only what the command measured - the header
it read and the tokenizer check for an import, the logits check for an export - never a number
it did not compute. It is written atomically after the artifact is in place, so a report never
describes an artifact that is not there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shoestring.config import to_dict
from shoestring.models.convert_config import ExportConfig, ImportConfig
from shoestring.models.export_gguf import export_gguf
from shoestring.models.export_llama import ExportReport, export_llama
from shoestring.models.llama2c import ConversionReport, convert_llama2c
from shoestring.rundir.directory import atomic_write_text, now_iso

__all__ = ["report_path", "run"]


def report_path(artifact: Path) -> Path:
    """Where an artifact's report goes: inside a directory, beside a file."""
    return artifact / "report.md" if artifact.is_dir() else Path(f"{artifact}.report.md")


def _markdown(title: str, intro: str, rows: list[tuple[str, str]], config: dict[str, Any]) -> str:
    """A short report: what was done, a table of what was measured, the config that asked."""
    lines = [f"# {title}", "", intro, "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v.replace('|', chr(92) + '|')} |" for k, v in rows]
    lines += ["", "## Config", "", "```json", json.dumps(config, indent=2), "```", ""]
    return "\n".join(lines)


def import_report(cfg: ImportConfig, rep: ConversionReport) -> str:
    """``report.md`` of an import: the checkpoint's header, parameters, tokenizer check, files."""
    h = rep.header
    rows = [
        ("checkpoint", f"`{cfg.model}`: llama2.c v{h.version}"),
        ("tokenizer", f"`{cfg.tokenizer}`"),
        (
            "shape",
            f"dim={h.dim} hidden={h.hidden_dim} layers={h.n_layers} heads={h.n_heads} "
            f"kv_heads={h.n_kv_heads} vocab={h.vocab_size} seq_len={h.seq_len}",
        ),
        ("parameters", f"{rep.n_params:,} (fp32)"),
        ("tokenizer check", rep.tokenizer_check),
        *[(f"file `{name}`", f"{size:,} bytes") for name, size in rep.files],
    ]
    intro = (
        f"`shoestring import llama2c` wrote this LlamaForCausalLM directory at {now_iso()}. "
        f"It loads with `AutoModelForCausalLM.from_pretrained({str(rep.out_dir)!r})`."
    )
    return _markdown(f"shoestring import: {rep.out_dir.name}", intro, rows, to_dict(cfg))


def export_report(cfg: ExportConfig, rep: ExportReport) -> str:
    """``report.md`` of an export: source, target and the logits check it ran."""
    rows = [
        ("source", f"`{rep.source}`"),
        ("written", f"`{rep.out}`"),
        ("target", rep.target),
        (
            "check",
            f"max |logit difference| to the source on a fixed probe sequence = "
            f"{rep.max_abs_logit_diff:.3g}",
        ),
        *[("note", note) for note in rep.notes],
    ]
    intro = f"`shoestring export --to {cfg.to}` wrote `{rep.out.name}` at {now_iso()}."
    return _markdown(f"shoestring export: {rep.out.name}", intro, rows, to_dict(cfg))


def run(cfg: ImportConfig | ExportConfig) -> Path:
    """The API of ``import`` and ``export``: the config's type says which; the path written."""
    return _import(cfg) if isinstance(cfg, ImportConfig) else _export(cfg)


def _import(cfg: ImportConfig) -> Path:
    """Convert a llama2.c checkpoint into ``cfg.out`` (+ report.md); the model directory."""
    cfg.check()
    rep = convert_llama2c(cfg.model, cfg.tokenizer, cfg.out, overwrite=cfg.overwrite)
    atomic_write_text(report_path(rep.out_dir), import_report(cfg, rep))
    if not cfg.quiet:
        print("\n".join(rep.lines()))
    return rep.out_dir


def _export(cfg: ExportConfig) -> Path:
    """Export ``cfg.source`` to ``cfg.out`` and check it (+ its report); the artifact's path."""
    cfg.check()
    if cfg.to == "llama":
        rep = export_llama(cfg.source, cfg.out, overwrite=cfg.overwrite)
    else:
        rep = export_gguf(cfg.source, cfg.out, dtype=cfg.dtype, overwrite=cfg.overwrite)
    atomic_write_text(report_path(rep.out), export_report(cfg, rep))
    if not cfg.quiet:
        print("\n".join(rep.lines()))
    return rep.out
