"""The hybrid trainer's phase state machine: skip backward passes by predicting weight updates.

This module is one idea: :class:`HybridController`, the state machine behind
``train --trainer hybrid`` (its state, its scores and its rollback), kept free of data and
models so it can be tested on a toy; :mod:`shoestring.train.hybrid` wires it into the trainer.
Training cycles through four phases:

- **warmup**  plain steps; they establish the loss and weight-norm statistics.
- **full**    plain steps that also fit the update predictor and score it: before each step the
  predictor says what update it expects, after it the real update is known, and the two are
  compared (cosine, relative error, norm ratio; the observed loss against the loss trend).
- **predict** the predicted update is applied under ``torch.no_grad`` - no backward pass, and
  no forward pass except every ``monitor_every`` steps, when the loss of that step's batch is
  checked. The weights (and, for the coasting predictor, AdamW's moments) are saved when
  Predict begins; a divergence (loss more than ``divergence_sigma`` std above its EMA, NaN/inf,
  or a weight-norm jump) restores them and returns to full for ``min_full_steps``.
- **correct** plain steps after each predict phase that score the predictor again; above the
  threshold it predicts again, below it goes back to full.

The running confidence is an EMA of per-step scores ``max(0, cos) * min(r, 1/r) * loss_ok``
(r = |predicted| / |real|; ``loss_ok`` falls from 1 to 0 as the observed loss goes from 1 to
``divergence_sigma`` residual std above the loss trend). It is measured on full steps (where
the prediction is a shadow: computed, scored, not applied) and on correct steps; predict is
entered only above ``confidence_threshold`` and after ``warmup_steps + min_full_steps``.
Only the last ``score_full_steps`` steps of each minimum full span (and every full step past
it) are scored, because a scored step costs a predictor call and two copies of the weights.

Every step is logged with its phase; every phase change, divergence and rollback is an event in
metrics.jsonl; per-phase steps and seconds, skipped passes and the rest are in summary.json
(docs/hybrid.md). The whole controller state, predictor history and the saved pre-Predict
weights are in every checkpoint, so ``--resume`` continues exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from shoestring.run_config import HybridConfig
from shoestring.train.predictors import (
    UpdatePredictor,
    add_flat_,
    copy_flat_,
    flatten,
    make_predictor,
    weight_norm,
)

PHASES = ("warmup", "full", "predict", "correct")
LOSS_EMA = 0.1  # weight of the newest real-step loss in the divergence EMA
NORM_EMA = 0.1  # weight of the newest real step's weight-norm change


@dataclass
class HybridState:
    """Plain values of the state machine (checkpointed as a dict)."""

    phase: str = "warmup"
    phase_steps: int = 0
    full_required: int = 0
    confidence: float = 0.0
    n_scored: int = 0
    last_observed: int = -1  # step index of the last real update the predictor saw
    anchor_step: int = -1  # step at which the current predict phase began
    steps: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PHASES, 0))
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    backward_skipped: int = 0
    forward_skipped: int = 0
    rollbacks: int = 0
    divergences: list[dict[str, Any]] = field(default_factory=list)
    cos_sum: float = 0.0
    cos_n: int = 0
    correct_cos_sum: float = 0.0
    correct_cos_n: int = 0
    loss_ema: float | None = None
    loss_var: float = 0.0
    norm_change_ema: float | None = None
    loss_hist: list[list[float]] = field(default_factory=list)
    verify_accepted: int = 0
    verify_rejected: int = 0
    verify_gain_sum: float = 0.0  # held-out loss before - after, summed over checked phases


@dataclass
class StepOutcome:
    """What one controller step did: loss (None if no forward ran) and record fields."""

    phase: str
    loss: float | None
    grad_norm: float | None
    fields: dict[str, Any]


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    na, nb = float(a.norm()), float(b.norm())
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(torch.dot(a, b)) / (na * nb)


class HybridController:
    """The phase state machine, independent of data and models so it can be tested on a toy.

    ``step(i, real_step, monitor_loss)`` runs step ``i``: ``real_step()`` must do one ordinary
    optimizer step (forward, backward, ``optimizer.step()``, ``scheduler.step()``) and return
    ``(loss, grad_norm)``; ``monitor_loss()`` returns the loss of step ``i``'s batch at the
    current weights without a backward. ``emit(record)`` receives events.
    """

    def __init__(
        self,
        hcfg: HybridConfig,
        params: Sequence[torch.Tensor],
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        predictor: UpdatePredictor | None = None,
        emit: Callable[[dict[str, Any]], None] | None = None,
        log: Callable[[str], None] | None = None,
        batch_loss: Callable[[int], float] | None = None,
    ) -> None:
        self.h = hcfg
        self.batch_loss = batch_loss
        self.params = list(params)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.predictor = predictor or make_predictor(
            hcfg.predictor,
            self.params,
            optimizer,
            linear_beta=hcfg.linear_beta,
            history=hcfg.history,
            rank=hcfg.rank,
        )
        self.emit = emit or (lambda rec: None)
        self.log = log or (lambda msg: None)
        self.s = HybridState()
        if hcfg.warmup_steps == 0:
            self.s.phase, self.s.full_required = "full", hcfg.min_full_steps
        self.anchor: dict[str, Any] | None = None
        self.numel = sum(p.numel() for p in self.params)

    # ------------------------------------------------------------------ memory
    def memory_report(self) -> dict[str, int]:
        """Bytes held beyond model + optimizer, by purpose (the cost of predicting)."""
        n4 = self.numel * 4
        # fp32 weights, plus both AdamW moments when coasting changes them
        anchor = n4 * (3 if self.predictor.mutates_optimizer else 1)
        return {
            "parameters": self.numel,
            "predictor_bytes": self.predictor.memory_bytes(),
            "anchor_bytes": anchor,
            "scratch_bytes": 2 * n4,  # weights-before copy and predicted update on real steps
        }

    # ------------------------------------------------------------------ helpers
    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _event(self, step: int, event: str, **fields: Any) -> None:
        self.emit({"step": step + 1, "event": event, **fields})

    def _enter(self, step: int, phase: str, reason: str) -> None:
        s = self.s
        s.phase, s.phase_steps = phase, 0
        if phase == "full":
            s.full_required = self.h.min_full_steps
        self._event(step, "phase", to=phase, reason=reason)
        self.log(f"hybrid: step {step + 1} -> {phase} ({reason})")

    def _loss_stats(self, loss: float) -> None:
        s = self.s
        if not math.isfinite(loss):
            return
        if s.loss_ema is None:
            s.loss_ema, s.loss_var = loss, 0.0
        else:
            d = loss - s.loss_ema
            s.loss_ema += LOSS_EMA * d
            # exponentially weighted variance (West's update), from the pre-update residual
            s.loss_var = (1 - LOSS_EMA) * (s.loss_var + LOSS_EMA * d * d)

    def _loss_std(self) -> float:
        return math.sqrt(max(self.s.loss_var, 0.0))

    def _trend(self, step: int) -> tuple[float | None, float]:
        """Loss predicted at ``step`` by a line through recent real-step losses, and its noise."""
        hist = self.s.loss_hist
        if len(hist) < 4:
            return None, 0.0
        x = torch.tensor([h[0] for h in hist], dtype=torch.float64)
        y = torch.tensor([h[1] for h in hist], dtype=torch.float64)
        xm, ym = x.mean(), y.mean()
        var = ((x - xm) ** 2).sum()
        # least-squares slope; the line passes through the means
        slope = ((x - xm) * (y - ym)).sum() / var if var > 0 else torch.tensor(0.0)
        resid = y - (ym + slope * (x - xm))  # noise around the trend, not around a mean
        std = float(resid.std()) if len(hist) > 2 else 0.0
        return float(ym + slope * (step - xm)), std

    # ------------------------------------------------------------------ anchor (rollback point)
    def _save_anchor(self, step: int) -> None:
        anchor: dict[str, Any] = {"step": step, "weights": flatten(self.params)}
        if self.predictor.mutates_optimizer:
            # every tensor of the optimizer's per-parameter state (AdamW's moments and step,
            # Muon's momentum buffer), so a rollback restores exactly what coasting decayed
            anchor["moments"] = [
                {
                    k: v.clone()
                    for k, v in self.optimizer.state.get(p, {}).items()
                    if isinstance(v, torch.Tensor)
                }
                for p in self.params
            ]
        if self.h.verify and self.batch_loss is not None:
            # held-out check (Leap+Verify): the batch of the last step this predict phase will
            # predict is never trained on; its loss now is the bar the predicted weights must beat
            vstep = step + self.h.max_predict_steps - 1
            anchor["verify_step"] = vstep
            anchor["verify_loss"] = float(self.batch_loss(vstep))
        self.anchor = anchor
        self.s.anchor_step = step

    def _restore_anchor(self) -> None:
        assert self.anchor is not None
        copy_flat_(self.params, self.anchor["weights"])
        # strict=False: without saved moments (a predictor that leaves them alone) nothing runs
        for p, saved in zip(self.params, self.anchor.get("moments", []), strict=False):
            st = self.optimizer.state.get(p, {})
            for k, v in saved.items():
                st[k].copy_(v)

    # ------------------------------------------------------------------ steps
    def step(
        self,
        step: int,
        real_step: Callable[[], tuple[float, float]],
        monitor_loss: Callable[[], float],
    ) -> StepOutcome:
        if self.s.phase == "predict":
            out = self._predicted_step(step, monitor_loss)
        else:
            out = self._real_step(step, real_step)
        self.s.steps[out.phase] += 1
        return out

    def add_seconds(self, phase: str, seconds: float) -> None:
        self.s.seconds[phase] += seconds

    def _real_step(self, step: int, real_step: Callable[[], tuple[float, float]]) -> StepOutcome:
        s, h = self.s, self.h
        phase = s.phase
        fit = phase in ("full", "correct")  # steps the predictor learns from
        scored = (  # only the tail of a full span is scored: each score costs two weight copies
            fit
            and self.predictor.ready()
            and (phase == "correct" or s.phase_steps >= s.full_required - h.score_full_steps)
        )
        lr = self._lr()
        # the shadow prediction, made before the real step so it cannot peek at its result
        pred = self.predictor.predict(step - s.last_observed, lr) if scored else None
        loss_pred, loss_noise = self._trend(step)
        need_delta = scored or (fit and self.predictor.needs_updates)
        before = flatten(self.params) if need_delta else None
        norm_before = weight_norm(self.params)
        loss, gnorm = real_step()
        # the real update as one flat fp32 vector: weights after - before (in place, one copy)
        delta = flatten(self.params).sub_(before) if before is not None else None
        del before  # a full copy of the weights: free it before the predictor's work
        norm_after = weight_norm(self.params)
        change = abs(norm_after - norm_before)
        s.norm_change_ema = (
            change
            if s.norm_change_ema is None
            else s.norm_change_ema + NORM_EMA * (change - s.norm_change_ema)
        )
        fields: dict[str, Any] = {"confidence": s.confidence}
        if pred is not None and delta is not None:
            cos = _cosine(pred, delta)
            dn = float(delta.norm())
            rel = float((pred - delta).norm()) / dn if dn > 0 else float("inf")
            ratio = float(pred.norm()) / dn if dn > 0 else 0.0  # r = |predicted| / |real|
            z = None
            loss_ok = 1.0
            if loss_pred is not None:
                noise = max(loss_noise, self._loss_std(), 1e-6)  # the larger noise: cautious
                z = (loss - loss_pred) / noise  # how far above the trend, in noise units
                span = max(h.divergence_sigma - 1.0, 1e-6)
                # 1 up to z = 1, falling linearly to 0 at z = divergence_sigma
                loss_ok = min(1.0, max(0.0, (h.divergence_sigma - z) / span))
            norm_ok = min(ratio, 1.0 / ratio) if ratio > 0 else 0.0  # too long = too short
            score = max(0.0, cos) * norm_ok * loss_ok  # a wrong direction scores 0, not < 0
            a = h.confidence_ema
            s.confidence = (1 - a) * s.confidence + a * score
            s.n_scored += 1
            s.cos_sum += cos
            s.cos_n += 1
            if phase == "correct":
                s.correct_cos_sum += cos
                s.correct_cos_n += 1
            fields.update(
                pred_cosine=cos,
                pred_rel_err=rel,
                pred_norm_ratio=ratio,
                pred_loss=loss_pred,
                loss_z=z,
                score=score,
                confidence=s.confidence,
            )
        if fit:
            if delta is not None:
                self.predictor.observe(delta, lr)
            s.last_observed = step
        del delta, pred
        self._loss_stats(loss)
        if math.isfinite(loss):
            s.loss_hist.append([float(step), float(loss)])
            del s.loss_hist[: -h.loss_window]  # keep the newest loss_window points
        s.phase_steps += 1
        # transitions decided after the step: the phase of the next step
        if phase == "warmup" and s.phase_steps >= h.warmup_steps:
            self._enter(step, "full", f"warmup done ({h.warmup_steps} steps)")
        elif phase == "full" and s.phase_steps >= s.full_required:
            if self.predictor.ready() and s.confidence >= h.confidence_threshold:
                self._save_anchor(step + 1)  # the weights the first predicted step starts from
                self._enter(
                    step, "predict", f"confidence {s.confidence:.3f} >= {h.confidence_threshold}"
                )
        elif phase == "correct" and s.phase_steps >= h.correct_steps:
            if s.confidence >= h.confidence_threshold:
                self._save_anchor(step + 1)
                self._enter(
                    step, "predict", f"confidence {s.confidence:.3f} >= {h.confidence_threshold}"
                )
            else:
                self._enter(
                    step, "full", f"confidence {s.confidence:.3f} < {h.confidence_threshold}"
                )
        return StepOutcome(phase, loss, gnorm, fields)

    @torch.no_grad()
    def _predicted_step(self, step: int, monitor_loss: Callable[[], float]) -> StepOutcome:
        s, h = self.s, self.h
        lr = self._lr()
        # steps since the last real update: a predictor may extrapolate further each step
        delta = self.predictor.predict(step - s.last_observed, lr)
        dnorm = float(delta.norm())
        reason = None
        loss = None
        monitored = False
        if not math.isfinite(dnorm):
            reason = "non-finite predicted update"
        else:
            norm_before = weight_norm(self.params)
            add_flat_(self.params, delta)
            self.predictor.after_predicted_step()
            norm_after = weight_norm(self.params)
            change = abs(norm_after - norm_before)
            typical = s.norm_change_ema or 0.0  # a real step's weight-norm change, smoothed
            if not math.isfinite(norm_after):
                reason = "non-finite weights"
            elif typical > 0 and change > h.norm_jump * typical:
                reason = (
                    f"weight norm jump {change:.3g} > {h.norm_jump} x the mean real step's "
                    f"{typical:.3g}"
                )
        del delta
        self.scheduler.step()  # the schedule advances as if the step were real
        s.phase_steps += 1
        s.backward_skipped += 1
        if reason is None and h.monitor_every and s.phase_steps % h.monitor_every == 0:
            monitored = True
            loss = float(monitor_loss())
            ema, std = s.loss_ema, self._loss_std()
            if not math.isfinite(loss):
                reason = f"non-finite loss {loss}"
            elif ema is not None and loss > ema + h.divergence_sigma * std:
                reason = f"loss {loss:.4f} > EMA {ema:.4f} + {h.divergence_sigma} x std {std:.4f}"
        if not monitored:
            s.forward_skipped += 1
        fields: dict[str, Any] = {
            "monitored": monitored,
            "pred_update_norm": dnorm,
            "confidence": s.confidence,
        }
        if reason is None and s.phase_steps >= h.max_predict_steps:
            reason = self._verify(step, loss if monitored else None, fields)
        if reason is not None:
            self._rollback(step, reason)
            fields["diverged"] = reason
        elif s.phase_steps >= h.max_predict_steps:
            self._enter(step, "correct", f"{s.phase_steps} predicted steps")
        return StepOutcome("predict", loss, None, fields)

    def _verify(self, step: int, loss_now: float | None, fields: dict[str, Any]) -> str | None:
        """End of a predict phase: keep the predicted weights only if the held-out batch's loss
        is lower than it was at the weights predict began with; returns the rejection reason."""
        anchor = self.anchor
        if anchor is None or "verify_step" not in anchor or self.batch_loss is None:
            return None
        vstep = anchor["verify_step"]
        # reuse the monitor's forward when it just measured this very batch
        after = loss_now if (loss_now is not None and vstep == step) else None
        if after is None:
            after = float(self.batch_loss(vstep))
        before = anchor["verify_loss"]
        s = self.s
        s.verify_gain_sum += before - after
        fields.update(verify_loss_before=before, verify_loss_after=after)
        if math.isfinite(after) and after < before:
            s.verify_accepted += 1
            return None
        s.verify_rejected += 1
        return f"held-out check: loss {after:.4f} at the predicted weights >= {before:.4f} before"

    def _rollback(self, step: int, reason: str) -> None:
        s = self.s
        s.divergences.append({"step": step + 1, "reason": reason})
        self._event(step, "divergence", reason=reason)
        self._restore_anchor()
        s.rollbacks += 1
        self._event(
            step,
            "rollback",
            reason=f"restored the weights saved when predict began (step {s.anchor_step})",
        )
        self.log(f"hybrid: divergence at step {step + 1} ({reason}); weights restored")
        s.confidence = 0.0  # trust is earned again over a full span
        self.anchor = None
        self._enter(step, "full", "rollback")

    # ------------------------------------------------------------------ state and stats
    def state_dict(self) -> dict[str, Any]:
        return {
            "state": asdict(self.s),
            "predictor": self.predictor.state_dict(),
            "anchor": self.anchor,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.s = HybridState(**state["state"])
        self.predictor.load_state_dict(state["predictor"])
        self.anchor = state.get("anchor")

    def summary(self, wall_seconds: float) -> dict[str, Any]:
        s = self.s
        total = sum(s.steps.values())
        return {
            "predictor": self.predictor.name,
            "phases": {p: {"steps": s.steps[p], "seconds": round(s.seconds[p], 4)} for p in PHASES},
            "backward_skipped": s.backward_skipped,
            "forward_skipped": s.forward_skipped,
            "rollbacks": s.rollbacks,
            "divergences": list(s.divergences),
            "skip_rate": s.backward_skipped / total if total else 0.0,
            "pred_cosine_mean": s.cos_sum / s.cos_n if s.cos_n else None,
            "pred_cosine_mean_correct": (
                s.correct_cos_sum / s.correct_cos_n if s.correct_cos_n else None
            ),
            "final_confidence": s.confidence,
            "verify": {
                "accepted": s.verify_accepted,
                "rejected": s.verify_rejected,
                "mean_heldout_gain": (
                    s.verify_gain_sum / (s.verify_accepted + s.verify_rejected)
                    if s.verify_accepted + s.verify_rejected
                    else None
                ),
            },
            "wall_seconds": round(wall_seconds, 3),
            "memory": self.memory_report(),
            "config": asdict(self.h),
        }
