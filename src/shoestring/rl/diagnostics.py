"""The startup warning "this configuration cannot learn well", measured on the first steps.

Why measured, not guessed from the config: whether a group carries a learning signal depends on
the model and the task as much as on the settings. The seed study's presets trip exactly these
warnings (one completion per group, completions cut before an answer, no stated answers, groups
whose samples all earn the same reward), so each message names the setting to change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shoestring.rl.config import GRPOConfig

__all__ = ["cannot_learn_reasons"]


def cannot_learn_reasons(cfg: GRPOConfig, fs: Sequence[dict[str, Any]]) -> list[str]:
    """Why ``cfg`` cannot learn well, judged by the metrics records ``fs`` of its first steps
    (each with ``frac_zero_std``, ``clipped_ratio`` and ``_answer_present``); [] when fine."""
    zero = sum(r["frac_zero_std"] for r in fs) / len(fs)
    clipped = sum(r["clipped_ratio"] for r in fs) / len(fs)
    answer = sum(r.get("_answer_present", 1.0) for r in fs) / len(fs)
    problems = []
    if cfg.num_generations < 2:
        problems.append(
            "num_generations < 2: every group has one completion, so every advantage is 0 "
            "and nothing is learned; use num_generations >= 4"
        )
    if clipped >= 0.5:
        problems.append(
            f"{100 * clipped:.0f}% of completions hit max_completion_length="
            f"{cfg.max_completion_length} in the first {len(fs)} steps; they are too short "
            "to hold a worked answer - raise max_completion_length"
        )
    if answer < 0.1:
        problems.append(
            f"only {100 * answer:.0f}% of completions state a final answer; the correctness "
            "reward can hardly be earned"
        )
    if zero >= 0.8 and cfg.num_generations >= 2:
        why = (
            f" (temperature={cfg.temperature} is so low that the samples of a prompt are "
            "nearly identical - raise it to ~0.7-1.0)"
            if cfg.temperature < 0.5
            else " (the task is too hard or too easy for the model at this point)"
        )
        problems.append(
            f"{100 * zero:.0f}% of groups had zero reward std in the first {len(fs)} steps, "
            f"so they carry no learning signal{why}"
        )
    return problems
