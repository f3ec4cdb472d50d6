"""Predictors of the per-parameter weight update, for the hybrid trainer's Predict phase.

This module is one idea: the interchangeable update predictors (one interface, four
implementations and their shared flat-vector helpers), kept together so they can be compared.

Every predictor answers one question: given what the optimizer has done so far, what will the
next update ``delta = theta_next - theta`` be, for every parameter? The hybrid trainer applies
that prediction instead of running a backward pass, and scores it against the real update on
the steps where it does run one. All predictors work on one flat fp32 vector of the trainable
parameters (in ``params`` order), because cosines and norms are then single reductions.

Memory is the price of a predictor, so each one states it (``memory_bytes``), N = number of
trainable parameters:

- ``coast``   0 extra (it reads AdamW's moments in place); but a rollback needs a copy of the
  moments taken when Predict begins, so the trainer keeps 2 N floats more while predicting.
- ``linear``  N floats (one velocity vector).
- ``leap``    2 N floats (the running sum of the current block of updates, and the finite
  difference of the last complete block).
- ``lowrank`` ``history`` x N floats (the last K real updates) plus a K x K Gram matrix; with
  the default K = 8 this is 8 copies of the model, the largest of the three. It is bounded by
  ``hybrid.history`` (at most 64).

Updates are stored per unit learning rate (divided by the lr they were made with) and
re-scaled by the lr of the step being predicted, since AdamW's step (and its decoupled weight
decay) is proportional to the learning rate and the schedule moves during a run.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import torch

PREDICTORS = ("coast", "linear", "lowrank", "leap")


# ----------------------------------------------------------------------------- flat vectors


def flatten(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """A new fp32 vector holding every parameter, in order (one copy of the model)."""
    return torch.cat([p.detach().reshape(-1).float() for p in params])


def add_flat_(params: Sequence[torch.Tensor], vec: torch.Tensor, alpha: float = 1.0) -> None:
    """``params += alpha * vec`` in place, ``vec`` laid out as ``flatten`` lays it out."""
    off = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            # this parameter's slice of the flat vector, reshaped to it; cast to its dtype
            p.add_(vec[off : off + n].view_as(p).to(p.dtype), alpha=alpha)
            off += n


def copy_flat_(params: Sequence[torch.Tensor], vec: torch.Tensor) -> None:
    """``params = vec`` in place (used to restore saved weights after a divergence)."""
    off = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(vec[off : off + n].view_as(p))
            off += n


def weight_norm(params: Sequence[torch.Tensor]) -> float:
    """Global L2 norm of the parameters without building a flat copy."""
    with torch.no_grad():
        norms = torch._foreach_norm([p.detach().float() for p in params])  # one norm each
        return float(torch.linalg.vector_norm(torch.stack(norms)))  # sqrt(sum of squares)


def _safe_lr(lr: float) -> float:
    return lr if lr > 0 else 1.0


# ----------------------------------------------------------------------------- base


class UpdatePredictor(abc.ABC):
    """Interface: observe real updates, predict the next ones, save/restore state."""

    name = "base"
    #: True when a predicted step changes optimizer state (coasting decays AdamW's moments), so
    #: the trainer must snapshot that state to be able to roll a Predict phase back.
    mutates_optimizer = False
    #: False when ``observe`` ignores the real updates (coasting), so the trainer need not
    #: build them on steps it does not score.
    needs_updates = True

    def __init__(self, params: Sequence[torch.Tensor]) -> None:
        self.params = list(params)
        self.numel = sum(p.numel() for p in self.params)
        self.device = self.params[0].device if self.params else torch.device("cpu")

    @abc.abstractmethod
    def ready(self) -> bool:
        """Whether ``predict`` can say anything yet (enough real updates seen)."""

    @abc.abstractmethod
    def observe(self, delta: torch.Tensor, lr: float) -> None:
        """A real update ``delta`` (flat) was just made with learning rate ``lr``."""

    @abc.abstractmethod
    def predict(self, ahead: int, lr: float) -> torch.Tensor:
        """The update (flat) for the step ``ahead`` steps after the last observed real one."""

    def after_predicted_step(self) -> None:  # noqa: B027 - optional hook, default no-op
        """Called after a predicted update was applied (coasting advances its moments)."""

    def reset(self) -> None:  # noqa: B027 - optional hook, default no-op
        """Forget the history (kept for API symmetry; rollbacks keep real-update history)."""

    def memory_bytes(self) -> int:
        """Bytes this predictor holds beyond the model and optimizer."""
        return 0

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


# ----------------------------------------------------------------------------- (a) coasting


class CoastingPredictor(UpdatePredictor):
    """The optimizer with a zero gradient: the update its current moments make as they decay.

    For Muon's matrices (``train.optimizer=muon``) that is the orthogonalised decaying momentum
    (:meth:`~shoestring.train.muon.MuonWithAdamW.coast_update`); for AdamW's parameters:

    With no new gradient AdamW's first moment becomes ``beta1 * m`` and the second
    ``beta2 * v``; the step is ``lr * m_hat / (sqrt(v_hat) + eps)`` plus decoupled weight decay,
    exactly what ``optimizer.step()`` would do with ``grad = 0``. It needs no history, and
    predicting k steps ahead is just k such steps, so the trainer calls ``predict(1, ...)`` then
    ``after_predicted_step()`` each time (``ahead`` is ignored).
    """

    name = "coast"
    mutates_optimizer = True
    needs_updates = False

    def __init__(self, params: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
        super().__init__(params)
        self.optimizer = optimizer
        self._offsets: dict[int, int] = {}
        off = 0
        for p in self.params:  # where each parameter starts in the flat vector
            self._offsets[id(p)] = off
            off += p.numel()

    def _groups(self):  # noqa: ANN202 - yields (group, param, state)
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if id(p) in self._offsets:
                    yield group, p, self.optimizer.state.get(p, {})

    def ready(self) -> bool:
        return any("exp_avg" in st or "momentum_buffer" in st for _, _, st in self._groups())

    def observe(self, delta: torch.Tensor, lr: float) -> None:
        return None  # the optimizer's moments are the history

    @torch.no_grad()
    def predict(self, ahead: int, lr: float) -> torch.Tensor:
        out = torch.zeros(self.numel, dtype=torch.float32, device=self.device)
        # one fused (foreach) pass per group of parameters sharing lr, decay, betas and step
        buckets: dict[tuple[float, ...], list[tuple[torch.Tensor, dict[str, Any]]]] = {}
        for group, p, st in self._groups():
            if group.get("kind") == "muon":  # train.optimizer=muon: Muon's own zero-grad step
                upd = self.optimizer.coast_update(p, group)  # type: ignore[attr-defined]
                if upd is not None:
                    off = self._offsets[id(p)]
                    out[off : off + p.numel()] = upd.reshape(-1).float()
                continue
            if "exp_avg" not in st:
                continue
            beta1, beta2 = group["betas"]
            key = (
                float(group["lr"]),
                float(group["eps"]),
                float(group["weight_decay"]),
                float(beta1),
                float(beta2),
                float(st["step"]),
            )
            buckets.setdefault(key, []).append((p, st))
        for (glr, eps, wd, beta1, beta2, step), items in buckets.items():
            t = step + 1.0  # the step about to be taken, for the bias corrections
            ms = [st["exp_avg"] for _, st in items]
            vs = [st["exp_avg_sq"] for _, st in items]
            # grad = 0: v -> beta2 v, so sqrt(v_hat) + eps = sqrt(beta2 v / (1 - beta2^t)) + eps
            denom = torch._foreach_mul(vs, beta2 / (1.0 - beta2**t))
            torch._foreach_sqrt_(denom)
            torch._foreach_add_(denom, eps)
            upd = torch._foreach_div(ms, denom)
            del denom
            # m -> beta1 m, bias-corrected, times -lr: the AdamW step itself
            torch._foreach_mul_(upd, -glr * beta1 / (1.0 - beta1**t))
            if wd:  # decoupled decay: -lr * wd * theta
                torch._foreach_add_(upd, [p.detach() for p, _ in items], alpha=-glr * wd)
            for (p, _), u in zip(items, upd, strict=True):
                off = self._offsets[id(p)]
                out[off : off + p.numel()] = u.reshape(-1)
        return out

    @torch.no_grad()
    def after_predicted_step(self) -> None:  # noqa: B027 - optional hook, default no-op
        for group, _p, st in self._groups():
            if "momentum_buffer" in st:  # Muon's momentum with a zero gradient: mu B
                st["momentum_buffer"].mul_(group["momentum"])
            if "exp_avg" not in st:
                continue
            beta1, beta2 = group["betas"]
            st["exp_avg"].mul_(beta1)
            st["exp_avg_sq"].mul_(beta2)
            st["step"] += 1


# ----------------------------------------------------------------------------- (b) linear


class LinearPredictor(UpdatePredictor):
    """Per-parameter linear extrapolation: keep moving at the trajectory's recent velocity.

    The velocity is an exponentially weighted mean of the recent updates (per unit lr), i.e. the
    slope of an exponentially weighted linear fit of each parameter's trajectory; its effective
    window is about (1 + beta) / (1 - beta) steps (9 at beta = 0.8). Bias-corrected like Adam's
    moments so the first few updates are not shrunk toward zero. Memory: N floats.
    """

    name = "linear"

    def __init__(self, params: Sequence[torch.Tensor], beta: float = 0.8) -> None:
        super().__init__(params)
        self.beta = beta
        self.velocity = torch.zeros(self.numel, dtype=torch.float32, device=self.device)
        self.count = 0

    def ready(self) -> bool:
        return self.count >= 2

    @torch.no_grad()
    def observe(self, delta: torch.Tensor, lr: float) -> None:
        # EMA of the per-unit-lr updates: v <- beta v + (1 - beta) delta / lr
        self.velocity.mul_(self.beta).add_(delta, alpha=(1.0 - self.beta) / _safe_lr(lr))
        self.count += 1

    @torch.no_grad()
    def predict(self, ahead: int, lr: float) -> torch.Tensor:
        correction = 1.0 - self.beta**self.count if self.count else 1.0  # Adam-style bias fix
        return self.velocity * (lr / correction)  # back from per-unit-lr to this step's lr

    def reset(self) -> None:  # noqa: B027 - optional hook, default no-op
        self.velocity.zero_()
        self.count = 0

    def memory_bytes(self) -> int:
        return self.velocity.numel() * self.velocity.element_size()

    def state_dict(self) -> dict[str, Any]:
        return {"velocity": self.velocity.clone(), "count": self.count, "beta": self.beta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.velocity.copy_(state["velocity"])
        self.count = int(state["count"])


# ----------------------------------------------------------------------------- (c) low rank


class LowRankPredictor(UpdatePredictor):
    """Top-``rank`` directions of the last ``history`` updates, with linearly fitted coefficients.

    The last K updates (rows of H, per unit lr) are kept in a ring buffer together with their
    Gram matrix G = H H^T, updated with one K x N product per new update. The principal
    directions of H come from the K x K eigenproblem of G (never an N-sized SVD): direction j
    is ``H^T e_j / sqrt(lambda_j)`` and update i's coefficient along it is
    ``sqrt(lambda_j) e_ij``. Each coefficient series is fitted with a least-squares line over
    the K updates and extrapolated one step; further steps ahead hold that value (a line
    extrapolated 8 steps through noisy coefficients has ~3x the variance of its mean). The
    prediction is then a combination of the stored updates, ``H^T w``: one more K x N product.

    Memory: K x N floats (K = ``history``, 8 copies of the model by default) + K x K.
    """

    name = "lowrank"

    def __init__(self, params: Sequence[torch.Tensor], history: int = 8, rank: int = 2) -> None:
        super().__init__(params)
        if rank > history:
            raise ValueError(f"rank {rank} > history {history}")
        self.history = history
        self.rank = rank
        self.buffer = torch.zeros(history, self.numel, dtype=torch.float32, device=self.device)
        self.gram = torch.zeros(history, history, dtype=torch.float64)
        self.count = 0

    def ready(self) -> bool:
        return self.count >= max(3, self.rank + 1)

    @torch.no_grad()
    def observe(self, delta: torch.Tensor, lr: float) -> None:
        slot = self.count % self.history  # ring buffer: the oldest update is overwritten
        self.buffer[slot] = delta / _safe_lr(lr)
        # [K, N] @ [N] -> [K]: the new row's dot with every stored row (one product)
        dots = (self.buffer @ self.buffer[slot]).double().cpu()
        self.gram[slot, :] = dots  # G is symmetric: row and column
        self.gram[:, slot] = dots
        self.count += 1

    def _order(self) -> list[int]:
        n = min(self.count, self.history)
        return [(self.count - n + i) % self.history for i in range(n)]  # ring slots, oldest first

    @torch.no_grad()
    def weights(self, ahead: int) -> tuple[list[int], torch.Tensor]:
        """(row order, w) with the predicted per-unit-lr update = ``buffer[order]^T w``."""
        order = self._order()
        n = len(order)
        g = self.gram[order][:, order]  # [n, n] in time order, so the line fit sees time
        evals, evecs = torch.linalg.eigh(g)  # ascending
        top = evals[-1].clamp_min(0.0)
        w = torch.zeros(n, dtype=torch.float64)
        steps = torch.arange(n, dtype=torch.float64)
        target = n - 1 + min(max(ahead, 1), 1)  # one step of trend, then hold
        for j in range(1, min(self.rank, n) + 1):
            lam = evals[-j]
            if lam <= 1e-12 * top or lam <= 0:  # a numerically empty direction
                continue
            e = evecs[:, -j]
            coef = lam.sqrt() * e  # coefficient of each stored update along direction j
            xm, ym = steps.mean(), coef.mean()
            var = ((steps - xm) ** 2).sum()
            slope = ((steps - xm) * (coef - ym)).sum() / var if var > 0 else 0.0
            pred = ym + slope * (target - xm)  # the coefficient the line gives at the target
            # direction j = H^T e / sqrt(lam): weight on the stored rows is e * pred / sqrt(lam)
            w += (pred / lam.sqrt()) * e
        return order, w

    @torch.no_grad()
    def predict(self, ahead: int, lr: float) -> torch.Tensor:
        order, w = self.weights(ahead)
        full = torch.zeros(self.history, dtype=torch.float64)
        full[order] = w  # weights per ring slot: no K x N gather
        return (full.to(self.buffer.dtype).to(self.device) * lr) @ self.buffer  # [K] @ [K, N]

    def reset(self) -> None:  # noqa: B027 - optional hook, default no-op
        self.buffer.zero_()
        self.gram.zero_()
        self.count = 0

    def memory_bytes(self) -> int:
        return self.buffer.numel() * self.buffer.element_size() + self.gram.numel() * 8

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.clone(), "gram": self.gram.clone(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.copy_(state["buffer"])
        self.gram.copy_(state["gram"])
        self.count = int(state["count"])


# ----------------------------------------------------------------------------- (d) leap


class LeapPredictor(UpdatePredictor):
    """Leap+Verify's linear finite-difference predictor (McEntire 2026, arXiv:2602.19580).

    The weights at two checkpoints ``history`` real steps apart give the trajectory's slope,
    ``(theta_t - theta_{t-d}) / (sum of the lrs in between)``; the next steps continue along it.
    The paper found this finite difference accepted where extrapolating Adam's moments (what
    ``coast`` does) blew up, and accepts a leap only after a held-out loss check - the hybrid
    trainer's ``hybrid.verify``, which applies to every predictor. The slope is refreshed at
    the end of each block of ``history`` observed real steps (not a per-step EMA like
    ``linear``): one checkpoint difference, as in the paper. Memory: 2 N floats.
    """

    name = "leap"

    def __init__(self, params: Sequence[torch.Tensor], span: int = 8) -> None:
        super().__init__(params)
        self.span = span
        self.block = torch.zeros(self.numel, dtype=torch.float32, device=self.device)
        self.slope = torch.zeros(self.numel, dtype=torch.float32, device=self.device)
        self.block_lr = 0.0
        self.block_steps = 0
        self.blocks = 0

    def ready(self) -> bool:
        return self.blocks >= 1

    @torch.no_grad()
    def observe(self, delta: torch.Tensor, lr: float) -> None:
        self.block.add_(delta)  # theta_t - theta_{t-d}, accumulated update by update
        self.block_lr += lr
        self.block_steps += 1
        if self.block_steps >= self.span:
            self.slope.copy_(self.block).div_(_safe_lr(self.block_lr))
            self.block.zero_()
            self.block_lr, self.block_steps = 0.0, 0
            self.blocks += 1

    @torch.no_grad()
    def predict(self, ahead: int, lr: float) -> torch.Tensor:
        return self.slope * lr

    def reset(self) -> None:  # noqa: B027 - optional hook, default no-op
        self.block.zero_()
        self.slope.zero_()
        self.block_lr, self.block_steps, self.blocks = 0.0, 0, 0

    def memory_bytes(self) -> int:
        return 2 * self.numel * 4

    def state_dict(self) -> dict[str, Any]:
        return {
            "block": self.block.clone(),
            "slope": self.slope.clone(),
            "block_lr": self.block_lr,
            "block_steps": self.block_steps,
            "blocks": self.blocks,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.block.copy_(state["block"])
        self.slope.copy_(state["slope"])
        self.block_lr = float(state["block_lr"])
        self.block_steps = int(state["block_steps"])
        self.blocks = int(state["blocks"])


def make_predictor(
    name: str,
    params: Sequence[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    linear_beta: float = 0.8,
    history: int = 8,
    rank: int = 2,
) -> UpdatePredictor:
    """The predictor called ``name`` (one of ``PREDICTORS``)."""
    if name == "coast":
        return CoastingPredictor(params, optimizer)
    if name == "linear":
        return LinearPredictor(params, beta=linear_beta)
    if name == "lowrank":
        return LowRankPredictor(params, history=history, rank=rank)
    if name == "leap":
        return LeapPredictor(params, span=history)
    raise ValueError(f"unknown predictor {name!r}; choose one of {', '.join(PREDICTORS)}")
