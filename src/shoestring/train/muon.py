"""Muon for the hidden matrices and AdamW for the rest, as one ``torch.optim.Optimizer``.

Muon (Keller Jordan, 2024, https://kellerjordan.github.io/posts/muon/) replaces each 2-D weight
matrix's update by the orthogonalised Nesterov momentum: a quintic Newton-Schulz iteration maps
the momentum ``M = U S V^T`` to about ``U V^T``, so every direction of the matrix moves at the
same rate. It is meant for hidden layers only; embeddings, the output head, norms and biases
stay on AdamW. The math here is ``torch.optim.Muon``'s (torch 2.13: same coefficients, same
Nesterov ``lerp``, same decoupled decay), with two differences that are why this module exists:

- ``torch.optim.Muon`` always runs Newton-Schulz in bfloat16. That is right where bf16
  matmuls are fast (CUDA, CPUs with AVX512-BF16/AMX) and wrong where they are emulated, and an
  fp32 run (``train.dtype=fp32``) should not round its update to bf16, so ``ns_dtype`` is a
  choice; the trainer passes its compute dtype. With bf16 the update equals
  ``torch.optim.Muon``'s bit for bit (tests/test_optimizer.py checks it).
- The trainer, its LR schedule, checkpoints and the hybrid trainer all expect *one* optimizer.
  :class:`MuonWithAdamW` owns every parameter group; its AdamW groups are stepped by an inner
  ``torch.optim.AdamW`` (the fused kernel) that shares the outer optimizer's group dicts and
  state, so ``state_dict()`` / ``load_state_dict()`` round-trip both halves bit-exactly and one
  ``LambdaLR`` scales every group's lr.

The learning-rate scale is Moonshot's ("Muon is Scalable for LLM Training", Liu et al. 2025,
``adjust_lr_fn="match_rms_adamw"`` in torch): the orthogonalised update is scaled by
``0.2 * sqrt(max(rows, cols))`` so its RMS matches a typical AdamW update's, and the lr and
weight decay tuned for AdamW carry over unchanged - the reason ``train.muon_lr = 0`` (= use
``train.lr``) is a default that works on every preset without tuning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = ["NS_COEFFICIENTS", "MuonWithAdamW", "muon_lr_scale", "orthogonalise"]

# Keller Jordan's quintic coefficients (also torch.optim.Muon's defaults): they maximise the
# slope at zero, so 5 iterations bring every singular value into about [0.7, 1.2].
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7


def orthogonalise(m: torch.Tensor, dtype: torch.dtype, steps: int = NS_STEPS) -> torch.Tensor:
    """About ``U V^T`` of ``m = U S V^T`` by the quintic Newton-Schulz iteration (a new tensor).

    Same operations as ``torch.optim._muon._zeropower_via_newtonschulz``, in ``dtype``.
    """
    a, b, c = NS_COEFFICIENTS
    x = m.to(dtype, copy=True)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T  # work on the wide side: the Gram matrix x @ x.T is the smaller square
    x.div_(x.norm().clamp(min=NS_EPS))  # spectral norm <= Frobenius norm = 1
    for _ in range(steps):
        gram = x @ x.T  # A = X X^T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # B = b A + c A^2
        x = torch.addmm(x, poly, x, beta=a)  # X <- a X + B X: each singular value s -> p(s)
    return x.T if tall else x


def muon_lr_scale(shape: torch.Size) -> float:
    """Moonshot's RMS matching: the factor on lr for a matrix of this shape."""
    return 0.2 * math.sqrt(max(shape[0], shape[1]))


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer: Muon on the groups marked ``kind="muon"``, fused AdamW on the others.

    ``muon_params`` must all be 2-D. ``adamw_groups`` are ordinary AdamW param groups (with
    their own ``weight_decay``); every AdamW group gets ``adamw_lr`` and ``betas``.
    """

    def __init__(
        self,
        muon_params: Iterable[torch.Tensor],
        adamw_groups: list[dict[str, Any]],
        *,
        muon_lr: float,
        adamw_lr: float,
        weight_decay: float,
        betas: tuple[float, float],
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_dtype: torch.dtype = torch.float32,
        make_adamw: Callable[..., torch.optim.Optimizer] | None = None,
    ) -> None:
        muon_params = list(muon_params)
        for p in muon_params:
            if p.dim() != 2:
                raise ValueError(f"Muon takes 2-D matrices only, got shape {tuple(p.shape)}")
        muon_group = {
            "params": muon_params,
            "kind": "muon",
            "lr": muon_lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "nesterov": nesterov,
            "ns_dtype": str(ns_dtype).removeprefix("torch."),  # plain str: weights_only-safe
        }
        make = make_adamw or torch.optim.AdamW
        self._adamw = make(adamw_groups, lr=adamw_lr, betas=betas)
        for g in self._adamw.param_groups:
            g["kind"] = "adamw"
        # the inner AdamW's group dicts themselves (not copies): one LambdaLR edits both
        super().__init__([muon_group, *self._adamw.param_groups], defaults={})
        self._rebind()

    def _rebind(self) -> None:
        """Point the inner AdamW at this optimizer's AdamW group dicts and state."""
        self._adamw.param_groups = [g for g in self.param_groups if g["kind"] == "adamw"]
        self._adamw.state = self.state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)  # replaces self.state and the group dicts
        self._rebind()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["kind"] == "muon":
                self._muon_group_step(group)
        self._adamw.step()
        return loss

    def _muon_group_step(self, group: dict[str, Any]) -> None:
        lr, wd, mom = group["lr"], group["weight_decay"], group["momentum"]
        dtype = getattr(torch, group["ns_dtype"])
        for p in group["params"]:
            if p.grad is None:
                continue
            st = self.state[p]
            if "momentum_buffer" not in st:
                st["momentum_buffer"] = torch.zeros_like(p.grad)
            buf = st["momentum_buffer"]
            buf.lerp_(p.grad, 1 - mom)  # B <- mu B + (1 - mu) g
            # Nesterov: look ahead along the momentum, g + mu (B - g)
            update = p.grad.lerp(buf, mom) if group["nesterov"] else buf
            ortho = orthogonalise(update, dtype)  # ~U V^T: every direction the same size
            p.mul_(1 - lr * wd)  # decoupled decay, as AdamW
            p.add_(ortho, alpha=-lr * muon_lr_scale(p.shape))  # RMS matched to AdamW's

    @torch.no_grad()
    def coast_update(self, p: torch.Tensor, group: dict[str, Any]) -> torch.Tensor | None:
        """The update a Muon step with a zero gradient would make to ``p`` (None if no state).

        With ``grad = 0`` the momentum decays to ``mu * B`` and the Nesterov update is a
        multiple of it; orthogonalisation is scale-free, so the step is
        ``-lr * scale * NS(B) - lr * wd * p`` (the hybrid trainer's coasting predictor).
        """
        buf = self.state.get(p, {}).get("momentum_buffer")
        if buf is None:
            return None
        lr = group["lr"]
        ortho = orthogonalise(buf, getattr(torch, group["ns_dtype"])).to(p.dtype)
        return ortho.mul_(-lr * muon_lr_scale(p.shape)).add_(p, alpha=-lr * group["weight_decay"])
