"""Counted, not computed: FLOPs from ``FlopCounterMode`` and bytes autograd really saves.

These are the ground truth the formulas in :mod:`shoestring.analyze.cost` are checked against.
``FlopCounterMode`` counts matrix products at the dispatcher, so it sees every matmul the model
runs - including the LM head and the chunked cross-entropy (which computes the head's gradients
inside its forward; the total over forward + backward is the same as a plain head). It has no
formula for the CPU flash-attention kernel, so the count forces the MATH attention backend,
which computes ``Q K^T`` and ``P V`` as ordinary batched matmuls over every (query, key) pair:
the counted attention term is the "full" one, whatever the causal mask hides.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from shoestring.models.gpt import ShoestringGPTConfig, ShoestringGPTForCausalLM
from shoestring.run_config import RunConfig

__all__ = ["build_model", "count_flops_per_token", "measure_saved_activations", "saved_bytes"]


def build_model(cfg: RunConfig, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The model ``shoestring train`` builds for this config (same class, same init seed)."""
    torch.manual_seed(cfg.train.seed)
    hf_cfg = ShoestringGPTConfig.from_model_config(cfg.model)
    return ShoestringGPTForCausalLM(hf_cfg).to(device)


def _random_batch(
    cfg: RunConfig, batch: int, device: torch.device | str, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, cfg.train.seq_len)
    x = torch.randint(0, cfg.model.vocab_size, shape, generator=gen)
    y = torch.randint(0, cfg.model.vocab_size, shape, generator=gen)
    return x.to(device), y.to(device)


def count_flops_per_token(
    cfg: RunConfig, model: torch.nn.Module | None = None, batch: int = 1
) -> dict[str, float]:
    """Counted forward and training (forward + backward) FLOPs per token at train.seq_len.

    FLOPs per token do not depend on the batch size, so one sequence is enough; the count runs
    in fp32 on the CPU (the dtype changes the time of a matmul, not its FLOPs). The forward
    count uses the plain head (logits); the training count runs the trainer's path
    (chunked head + loss, then ``backward``).
    """
    model = model if model is not None else build_model(cfg, "cpu")
    dev = next(model.parameters()).device
    x, y = _random_batch(cfg, batch, dev)
    tokens = x.numel()
    was_training = model.training
    model.train()
    try:
        with sdpa_kernel(SDPBackend.MATH):
            with torch.no_grad(), FlopCounterMode(display=False) as fwd:
                model(input_ids=x)
            model.zero_grad(set_to_none=True)
            with FlopCounterMode(display=False) as train:
                loss = model(input_ids=x, targets=y, return_logits=False).loss
                loss.backward()
        model.zero_grad(set_to_none=True)
    finally:
        model.train(was_training)
    return {
        "forward": fwd.get_total_flops() / tokens,
        "train": train.get_total_flops() / tokens,
        "tokens_counted": tokens,
        "attention_backend": "math",
    }


@contextlib.contextmanager
def saved_bytes(model: torch.nn.Module) -> Iterator[dict[str, Any]]:
    """Record the bytes of every tensor autograd saves for backward inside the block.

    Tensors are counted once per storage (views of one buffer are one buffer), and the model's
    own parameters are excluded: they are weights, not activations. What remains is what the
    backward keeps alive: activations, and under autocast the low-precision weight copies.
    """
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}
    out: dict[str, Any] = {"bytes": 0, "tensors": 0}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # e.g. a tensor subclass without storage
            return t
        ptr = storage.data_ptr()
        if ptr not in param_storages and ptr not in seen:
            seen[ptr] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield out
    out["bytes"] = sum(seen.values())
    out["tensors"] = len(seen)


def measure_saved_activations(
    cfg: RunConfig, autocast: Any, model: torch.nn.Module | None = None, batch: int | None = None
) -> int:
    """Saved-tensor bytes of one micro-batch's forward on the training path (no backward)."""
    model = model if model is not None else build_model(cfg, "cpu")
    dev = next(model.parameters()).device
    x, y = _random_batch(cfg, batch or cfg.train.batch_size, dev)
    model.train()
    with saved_bytes(model) as rec, autocast:
        loss = model(input_ids=x, targets=y, return_logits=False).loss
    del loss
    return int(rec["bytes"])
