"""The model GRPO trains: loading, LoRA, the reference policy, the retention penalty, the output.

Why one object: the trainer, the rollout generator, the checkpoints and the held-out evaluation
all need "the model" but mean different views of it - the HF model the generation engine calls,
the peft wrapper that can disable its adapters (the reference policy at no extra memory), the
frozen copy a full fine-tune with ``beta > 0`` must keep, and the trained parameters. A
:class:`Policy` holds them together so each caller asks for the view it needs.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer

from shoestring.engine import pad_token_id, resolve_eos_ids
from shoestring.errors import UserError
from shoestring.models.loading import load_model_and_tokenizer, quiet_hf_progress
from shoestring.models.portable import make_portable
from shoestring.rl.config import GRPOConfig
from shoestring.rl.run_checks import check_target_modules, peft_target_modules
from shoestring.runtime import Runtime

__all__ = ["Policy"]


def _disable_dropout(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


@dataclass
class Policy:
    """A loaded policy model and everything derived from it (build with :meth:`load`)."""

    model: Any  # the HF model the engine calls (LoRA layers injected when peft_model is set)
    tokenizer: Any
    info: dict[str, Any]
    runtime: Runtime
    peft_model: Any = None
    frozen_ref: torch.nn.Module | None = None
    retention_pairs: list[tuple[Any, Any]] = field(default_factory=list)
    retention_penalty: float = 0.0
    reference_passes: int = 0  # counted so tests can prove beta == 0 runs none

    @classmethod
    def load(cls, cfg: GRPOConfig, runtime: Runtime, log: Callable[[str], None]) -> Policy:
        """Load ``cfg.model_name_or_path`` as ``cfg`` says (LoRA, dropout, checkpointing, the
        reference copy and the retention penalty's theta_ref)."""
        # Frozen base weights of a LoRA run are stored in bf16 where bf16 is fast (half the
        # memory, no per-step re-cast of every weight); trained weights stay fp32 (peft keeps
        # adapters in fp32), as do all weights of a full fine-tune.
        load_dtype = "bf16" if runtime.dtype == "bf16" and cfg.lora_rank > 0 else "fp32"
        model, tok, info = load_model_and_tokenizer(
            cfg.model_name_or_path,
            device=runtime.device,
            dtype=load_dtype,
            trust_remote_code=cfg.trust_remote_code,
        )
        if cfg.disable_dropout:
            _disable_dropout(model)
        if cfg.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable()
            if hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()
        policy = cls(model, tok, info, runtime, retention_penalty=cfg.retention_penalty)
        if cfg.lora_rank > 0:
            targets = peft_target_modules(cfg.lora_target_modules)
            check_target_modules(model, targets)  # an entry matching nothing is an error
            lcfg = LoraConfig(
                r=cfg.lora_rank,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=targets,
                bias="none",
                task_type="CAUSAL_LM",
            )
            policy.peft_model = get_peft_model(model, lcfg)
            # the injected LoRA layers live inside the HF model: calling it directly runs the
            # adapters and keeps the forward signature the generation engine inspects
            policy.model = policy.peft_model.get_base_model()
        if cfg.beta > 0 and policy.peft_model is None:
            policy.frozen_ref = copy.deepcopy(policy.model).eval()
            for p in policy.frozen_ref.parameters():
                p.requires_grad_(False)
            mb = sum(p.numel() * p.element_size() for p in policy.frozen_ref.parameters()) / 2**20
            log(
                f"beta={cfg.beta} with full fine-tuning keeps a frozen copy of the model as the "
                f"reference ({mb:,.1f} MB more memory); use lora_rank>0 to avoid the copy"
            )
        policy._setup_retention(cfg, log)
        return policy

    # -- facts
    @property
    def device(self) -> torch.device:
        return torch.device(self.runtime.device)

    @property
    def params(self) -> list[torch.nn.Parameter]:
        """The trained parameters (LoRA adapters, or every weight of a full fine-tune)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def gen_dtype(self) -> str:
        """Dtype of sampling. On a CPU it runs in the weights' dtype (bf16 for LoRA's frozen
        base, fp32 for a full fine-tune): bf16 autocast would re-cast every fp32 weight at every
        decode step, slower than plain fp32 decoding (docs/grpo.md has the measurement).
        Training still runs under autocast."""
        cpu = self.device.type == "cpu"
        return "bf16" if self.runtime.dtype == "bf16" and not cpu else "auto"

    def pad_id(self) -> int:
        """The id that pads prompt and completion rows (masked out, any valid id works)."""
        eos_ids = resolve_eos_ids(self.model, self.tokenizer)
        return pad_token_id(self.tokenizer, self.model, eos_ids)

    def autocast(self) -> Any:
        return self.runtime.autocast()

    # -- the reference policy
    @contextlib.contextmanager
    def reference(self) -> Iterator[torch.nn.Module]:
        """The reference policy: frozen copy (full fine-tune) or adapters disabled (LoRA)."""
        self.reference_passes += 1
        if self.frozen_ref is not None:
            yield self.frozen_ref
        elif self.peft_model is not None:
            with self.peft_model.disable_adapter():
                yield self.model
        else:  # no LoRA, no copy: the starting weights are not available
            raise RuntimeError("reference pass requested without a reference model")

    # -- the retention penalty
    def _setup_retention(self, cfg: GRPOConfig, log: Callable[[str], None]) -> None:
        """theta_ref for the retention penalty (only what the penalty compares is kept)."""
        if cfg.retention_penalty <= 0:
            return
        ref_state: dict[str, torch.Tensor] | None = None
        if cfg.retention_reference:
            ref_model, _, _ = load_model_and_tokenizer(cfg.retention_reference, "cpu", "fp32")
            ref_state = {k: v.detach().clone() for k, v in ref_model.state_dict().items()}
            del ref_model
        if self.peft_model is not None:
            for name, mod in self.model.named_modules():
                if isinstance(mod, LoraLayer) and "default" in getattr(mod, "lora_A", {}):
                    base_w = mod.get_base_layer().weight
                    ref = ref_state.get(name + ".weight") if ref_state else None
                    offset = None if ref is None else (base_w.detach() - ref.to(base_w.device))
                    self.retention_pairs.append((mod, offset))
            kind = "adapted weights (base + LoRA delta)"
        else:
            for name, p in self.model.named_parameters():
                if not p.requires_grad:
                    continue
                ref = ref_state.get(name) if ref_state else None
                if ref_state is not None and ref is None:
                    raise UserError(
                        f"retention_reference {cfg.retention_reference} has no tensor {name}; "
                        "it must be the same architecture as the model being trained"
                    )
                ref_t = (p.detach().clone() if ref is None else ref.to(p.device)).requires_grad_(
                    False
                )
                self.retention_pairs.append((p, ref_t))
            kind = "all trained parameters"
        src = cfg.retention_reference or "the starting weights"
        log(
            f"retention penalty {cfg.retention_penalty:g} * ||theta - theta_ref||^2 over "
            f"{kind}; ref = {src}"
        )

    def retention_term(self) -> torch.Tensor | None:
        """lambda * ||theta - theta_ref||^2 (a differentiable scalar), or None when off."""
        if not self.retention_pairs:
            return None
        total = torch.zeros((), device=self.device)
        if self.peft_model is not None:
            for mod, offset in self.retention_pairs:
                a = mod.lora_A["default"].weight
                b = mod.lora_B["default"].weight
                delta = (b @ a) * mod.scaling["default"]
                if getattr(mod, "fan_in_fan_out", False):
                    delta = delta.T
                if offset is not None:
                    delta = delta + offset
                total = total + (delta.float() ** 2).sum()
        else:
            for p, ref in self.retention_pairs:
                total = total + ((p.float() - ref.float()) ** 2).sum()
        return self.retention_penalty * total

    # -- the final model
    def write_model(self, out: Path, merge_lora: bool) -> Path:
        """A loadable HF directory with the tokenizer (LoRA merged unless ``merge_lora`` is
        off, then the adapter alone)."""
        out.mkdir(parents=True, exist_ok=True)
        with quiet_hf_progress():
            if self.peft_model is not None and merge_lora:
                merged = copy.deepcopy(self.peft_model).merge_and_unload()
                merged.save_pretrained(out)
                del merged
            elif self.peft_model is not None:
                self.peft_model.save_pretrained(out)
            else:
                self.model.save_pretrained(out)
            self.tokenizer.save_pretrained(out)
            make_portable(out)  # modeling code + auto_map, eos ids, model_max_length
        return out
