"""Settings a GRPO run would otherwise drop without a word: each is an error or a logged notice.

Why: a setting that silently does nothing costs a whole run before anyone notices - LoRA
options on a full fine-tune, a ``lora_target_modules`` entry no module of this model has (peft
itself only complains when *no* entry matches: ``gate_proj`` on a GELU model is dropped), a
dtype the host cannot run as asked. :func:`peft_target_modules` and
:func:`check_target_modules` run where the adapters are made (:mod:`shoestring.rl.policy`);
:func:`setting_notices` runs when the trainer starts and its lines go to the run's log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from shoestring.errors import UserError
from shoestring.rl.config import GRPOConfig
from shoestring.runtime import Runtime, host_supports_fast_bf16

__all__ = ["announce_settings", "check_target_modules", "peft_target_modules", "setting_notices"]

#: ``lora_target_modules`` values that are not module names
ALL_LINEAR, PEFT_DEFAULT = "all-linear", "peft-default"
LORA_OPTIONS = ("lora_alpha", "lora_dropout", "lora_target_modules", "merge_lora")


def peft_target_modules(entries: list[str]) -> str | list[str] | None:
    """``lora_target_modules`` as peft's ``target_modules``: ``all-linear``, None (peft's
    default for the architecture, what TRL does when it is unset) or the module names."""
    special = [e for e in entries if e in (ALL_LINEAR, PEFT_DEFAULT)]
    if special and len(entries) > 1:
        raise UserError(
            f"lora_target_modules={entries}: {special[0]!r} stands alone; give it or module names"
        )
    if entries == [ALL_LINEAR]:
        return ALL_LINEAR
    if entries == [PEFT_DEFAULT]:
        return None
    if not entries:
        raise UserError("lora_target_modules is empty; use all-linear or module names")
    return list(entries)


def check_target_modules(model: torch.nn.Module, targets: str | list[str] | None) -> None:
    """Every named target must match a module by peft's rule (the full name, or its last dotted
    parts); an entry that matches nothing is an error naming the model's linear layers."""
    if not isinstance(targets, list):
        return
    names = [n for n, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if not missing:
        return
    linear = sorted(
        {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    )
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    raise UserError(
        f"lora_target_modules entries {missing} match no module of this {model_type} model, so "
        f"they would adapt nothing; its linear layers are {', '.join(linear)}. Remove them, or "
        "use lora_target_modules=all-linear"
    )


def setting_notices(cfg: GRPOConfig, runtime: Runtime) -> list[str]:
    """What the run's log must say about settings that do less than they seem to."""
    notes = []
    if cfg.lora_rank == 0:
        default = GRPOConfig()
        changed = [
            f"{k}={getattr(cfg, k)!r}"
            for k in LORA_OPTIONS
            if getattr(cfg, k) != getattr(default, k)
        ]
        if changed:
            notes.append(
                f"lora_rank=0 is a full fine-tune: {', '.join(changed)} have no effect; set "
                "lora_rank>0 (TRL: use_peft: true) for LoRA"
            )
    if cfg.dtype == "bf16" and runtime.dtype == "bf16":
        device: Any = runtime.device
        if not host_supports_fast_bf16(device):
            notes.append(
                f"dtype=bf16 on {device}: this host has no native bf16 arithmetic, so bf16 is "
                "emulated and slower than fp32 (dtype=auto would choose fp32 here)"
            )
        if torch.device(device).type == "cpu" and cfg.lora_rank == 0:
            notes.append(
                "dtype=bf16 on a CPU: training runs under bf16 autocast, sampling in the "
                "weights' fp32 (autocast re-casts every weight at every decode step; "
                "docs/grpo.md, Precision)"
            )
    return notes


def announce_settings(cfg: GRPOConfig, runtime: Runtime, log: Callable[[str], None]) -> list[str]:
    """Log what reading a TRL config did (``cfg.notices``, once per run) and the
    :func:`setting_notices`; the latter are returned for the run's ``warnings``."""
    for note in cfg.notices:
        log(f"config: {note}")
    notes = setting_notices(cfg, runtime)
    for note in notes:
        log(f"NOTICE: {note}")
    return notes
