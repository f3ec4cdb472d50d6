"""Generation runs (``shoestring generate``): which model wrote the texts, where, and how fast.

Why: a tokens/s figure means nothing without the model, device and dtype that produced it, and
the finish reasons say whether the texts ended by themselves or were cut at the token limit.
Every number comes from summary.json; the texts are in the run's generations.jsonl.
"""

from __future__ import annotations

from typing import Any

from shoestring.report.blocks import Para, Section, Table, fmt, fmt_int, fmt_millions
from shoestring.report.parts import Kind, SectionContext, unfinished_blocks
from shoestring.report.rules import SpeedItem
from shoestring.report.run import RunInfo

__all__ = ["KIND"]

HEADERS = ["run", "model", "params", "device / dtype", "max new tokens / temperature"]
HEADERS += ["prompts", "tokens", "generation s", "tokens/s", "finish reasons"]
#: The summary's numbers, for report.json.
RECORD_KEYS = ("model", "runtime", "load_seconds", "prompts", "tokens", "generation_seconds")
RECORD_KEYS += ("tokens_per_second", "finish_reasons")


def _row(r: RunInfo) -> list[str]:
    s, rt, model = r.summary, r.summary.get("runtime") or {}, r.summary.get("model") or {}
    reasons = ", ".join(f"{k} {n}" for k, n in sorted((s.get("finish_reasons") or {}).items()))
    sampling = f"{r.config.get('max_new_tokens', '-')} / {fmt(r.config.get('temperature'), 'g')}"
    return [r.label, f"`{model.get('path', '-')}` ({model.get('model_type', '?')})"] + [
        fmt_millions(model.get("n_params")),
        f"{rt.get('device', '-')} / {rt.get('dtype', '-')}",
        sampling,
        fmt_int(s.get("prompts")),
        fmt_int(s.get("tokens")),
        fmt(s.get("generation_seconds"), ".2f"),
        fmt(s.get("tokens_per_second"), ",.1f"),
        reasons or "-",
    ]


def generate_sections(gen: list[RunInfo], ctx: SectionContext) -> list[Section]:
    blocks: list[Any] = []
    if done := [r for r in gen if r.finished]:
        blocks += [
            Para(
                "Tokens/s = generated tokens / generation wall time (loading excluded). Finish "
                "reasons: eos = the model ended the text, stop = a stop string, length = cut at "
                "max new tokens. The texts are in each run's generations.jsonl."
            ),
            Table(HEADERS, [_row(r) for r in done], "llrllrrrrl"),
        ]
    blocks += unfinished_blocks(gen, "Generation runs that did **not** finish (not results):")
    return [Section("Generation runs", blocks, "generate")]


def _speed(runs: list[RunInfo]) -> list[tuple[list[SpeedItem], str]]:
    rate, done = "generated tokens/s", [r for r in runs if r.finished]
    items = [
        SpeedItem(r.label, r.name_text, r.summary.get("tokens_per_second"), rate, None)
        for r in done
    ]
    return [(items, "generation runs")]


KIND = Kind(
    name="generate",
    writer="`shoestring generate` (summary.json kind 'generate')",
    sections=generate_sections,
    summary_kind="generate",
    record=lambda r: {k: r.summary.get(k) for k in RECORD_KEYS},
    speed=_speed,
)
