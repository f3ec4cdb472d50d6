"""Hybrid trainer: predictors on a quadratic, the phase state machine, rollback, stats, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from _helpers import TINY_HYBRID, prepare_synthetic
from shoestring.run_config import HybridConfig, build_run_config
from shoestring.rundir.directory import read_metrics
from shoestring.train.hybrid_controller import PHASES, HybridController
from shoestring.train.predictors import (
    CoastingPredictor,
    LinearPredictor,
    LowRankPredictor,
    flatten,
)

# ----------------------------------------------------------------------------- toy problem


class Quadratic:
    """f(theta) = 1/2 sum_i a_i (theta_i - t_i)^2: the exact gradient is a * (theta - t)."""

    def __init__(self, n: int = 64, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        # two curvature groups, so the update trajectory lies in a 2-D subspace
        self.a = torch.where(torch.arange(n) % 2 == 0, 1.0, 0.3)
        self.target = torch.randn(n, generator=g)
        self.theta = torch.nn.Parameter(torch.zeros(n))

    def loss(self) -> torch.Tensor:
        return 0.5 * (self.a * (self.theta - self.target) ** 2).sum()

    def grad(self) -> torch.Tensor:
        return self.a * (self.theta.detach() - self.target)


def _real_step(q: Quadratic, opt: torch.optim.Optimizer, sched=None) -> tuple[float, float]:
    opt.zero_grad()
    loss = q.loss()
    loss.backward()
    gnorm = float(q.theta.grad.norm())
    opt.step()
    if sched is not None:
        sched.step()
    return float(loss.detach()), gnorm


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def test_coasting_predicts_adamw_next_update_on_quadratic() -> None:
    q = Quadratic()
    opt = torch.optim.AdamW([q.theta], lr=0.01, weight_decay=0.01)
    pred = CoastingPredictor([q.theta], opt)
    assert not pred.ready()
    for _ in range(30):
        _real_step(q, opt)
    assert pred.ready()
    predicted = pred.predict(1, 0.01)
    before = flatten([q.theta])
    _real_step(q, opt)
    true = flatten([q.theta]) - before
    assert _cos(predicted, true) > 0.99
    # with a zero gradient the prediction is exactly AdamW's step
    q2 = Quadratic()
    opt2 = torch.optim.AdamW([q2.theta], lr=0.01, weight_decay=0.01)
    for _ in range(5):
        _real_step(q2, opt2)
    p2 = CoastingPredictor([q2.theta], opt2).predict(1, 0.01)
    before = flatten([q2.theta])
    q2.theta.grad = torch.zeros_like(q2.theta)
    opt2.step()
    assert torch.allclose(p2, flatten([q2.theta]) - before, atol=1e-7)


@pytest.mark.parametrize("kind", ["linear", "lowrank"])
def test_trajectory_predictors_recover_the_true_update_on_quadratic(kind: str) -> None:
    q = Quadratic()
    lr = 0.05
    opt = torch.optim.SGD([q.theta], lr=lr)
    pred = (
        LinearPredictor([q.theta], beta=0.5)
        if kind == "linear"
        else LowRankPredictor([q.theta], history=8, rank=2)
    )
    for _ in range(20):
        before = flatten([q.theta])
        _real_step(q, opt)
        pred.observe(flatten([q.theta]) - before, lr)
    assert pred.ready()
    true_next = -lr * q.grad()  # the known true update direction of gradient descent
    cos = _cos(pred.predict(1, lr), true_next)
    assert cos > (0.999 if kind == "lowrank" else 0.98), cos
    # a prediction made for a different lr scales with it (updates are stored per unit lr)
    assert torch.allclose(pred.predict(1, 2 * lr), 2 * pred.predict(1, lr))
    if kind == "lowrank":
        assert pred.memory_bytes() >= 8 * q.theta.numel() * 4  # K copies, stated


# ----------------------------------------------------------------------------- state machine


def _controller(q: Quadratic, **kw) -> tuple[HybridController, list[dict]]:
    events: list[dict] = []
    hcfg = HybridConfig(**kw)
    opt = torch.optim.AdamW([q.theta], lr=0.02, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ctl = HybridController(hcfg, [q.theta], opt, sched, emit=events.append)
    ctl._toy = (opt, sched)  # type: ignore[attr-defined]
    return ctl, events


def _drive(ctl: HybridController, q: Quadratic, steps: int, monitor=None) -> list:
    opt, sched = ctl._toy  # type: ignore[attr-defined]
    outs = []
    for i in range(steps):
        out = ctl.step(
            i,
            lambda: _real_step(q, opt, sched),
            monitor or (lambda: float(q.loss())),
        )
        ctl.add_seconds(out.phase, 0.001)
        outs.append(out)
    return outs


def test_phases_follow_the_state_machine() -> None:
    q = Quadratic()
    kw = dict(
        warmup_steps=5, min_full_steps=4, max_predict_steps=3, correct_steps=2, monitor_every=1
    )
    ctl, events = _controller(q, **kw)
    outs = _drive(ctl, q, 80)
    phases = [o.phase for o in outs]
    assert phases[:5] == ["warmup"] * 5
    assert "predict" not in phases[: 5 + 4], "no predict before warmup + min_full_steps"
    assert phases.count("predict") > 10, phases
    for i in range(1, len(phases)):
        if phases[i] == "predict" and phases[i - 1] != "predict":
            # entered only from full/correct, and only with confidence over the threshold
            assert phases[i - 1] in ("full", "correct")
            assert outs[i - 1].fields["confidence"] >= 0.6
    # predict runs are at most max_predict_steps long and followed by correct (or a rollback)
    run = 0
    for i, p in enumerate(phases):
        run = run + 1 if p == "predict" else 0
        assert run <= 3
        if i and phases[i - 1] == "predict" and p != "predict":
            assert p in ("correct", "full")
    # every phase change is an event; correct steps carry the prediction's cosine
    assert [e["to"] for e in events if e["event"] == "phase"][:2] == ["full", "predict"]
    corrects = [o for o in outs if o.phase == "correct"]
    assert corrects and all("pred_cosine" in o.fields for o in corrects)
    assert all(o.fields["pred_cosine"] > 0.9 for o in corrects)
    # statistics add up
    summ = ctl.summary(1.0)
    assert sum(v["steps"] for v in summ["phases"].values()) == 80
    assert summ["backward_skipped"] == phases.count("predict")
    assert summ["forward_skipped"] == 0  # monitor_every=1 monitors every predicted step
    assert summ["skip_rate"] == pytest.approx(phases.count("predict") / 80)


def test_no_predict_below_the_threshold() -> None:
    q = Quadratic()
    ctl, _ = _controller(q, warmup_steps=2, min_full_steps=2, confidence_threshold=1.0)
    outs = _drive(ctl, q, 40)
    assert all(o.phase != "predict" for o in outs)
    assert ctl.s.n_scored > 0 and 0 < ctl.s.confidence < 1.0


@pytest.mark.parametrize("inject", ["nan_update", "loss_spike"])
def test_injected_divergence_restores_pre_predict_weights(inject: str) -> None:
    q = Quadratic()
    kw = dict(
        warmup_steps=3,
        min_full_steps=3,
        max_predict_steps=6,
        correct_steps=2,
        monitor_every=2,
        predictor="coast",
    )
    ctl, events = _controller(q, **kw)
    opt, _ = ctl._toy  # type: ignore[attr-defined]
    saved: dict[str, torch.Tensor] = {}
    n_predicted = {"n": 0}

    def emit(rec: dict) -> None:
        events.append(rec)
        if rec["event"] == "phase" and rec["to"] == "predict" and "w" not in saved:
            saved["w"] = q.theta.detach().clone()
            saved["m"] = opt.state[q.theta]["exp_avg"].clone()
        if rec["event"] == "rollback" and "after" not in saved:
            saved["after"] = q.theta.detach().clone()
            saved["m_after"] = opt.state[q.theta]["exp_avg"].clone()

    ctl.emit = emit
    if inject == "nan_update":
        real_predict = ctl.predictor.predict

        def bad_predict(ahead: int, lr: float) -> torch.Tensor:
            n_predicted["n"] += 1
            out = real_predict(ahead, lr)
            # shadow predictions on real steps are unaffected; the 3rd predicted step is NaN
            if ctl.s.phase == "predict" and ctl.s.phase_steps == 2:
                out = out * float("nan")
            return out

        ctl.predictor.predict = bad_predict  # type: ignore[method-assign]
        monitor = None
    else:

        def monitor() -> float:
            return float(q.loss()) + 1e6  # a monitored loss far above its EMA

    outs = _drive(ctl, q, 30, monitor=monitor)
    assert "w" in saved and "after" in saved, [o.phase for o in outs]
    # the moved weights (2 predicted steps applied) were put back exactly, moments included
    assert torch.equal(saved["after"], saved["w"])
    assert torch.equal(saved["m_after"], saved["m"])
    div = [e for e in events if e["event"] == "divergence"]
    rb = [e for e in events if e["event"] == "rollback"]
    assert div and rb and div[0]["step"] == rb[0]["step"]
    reason = div[0]["reason"]
    assert ("non-finite" in reason) if inject == "nan_update" else ("EMA" in reason)
    summ = ctl.summary(1.0)
    assert summ["rollbacks"] == len(rb) and summ["divergences"][0]["reason"] == reason
    # after the rollback: back to full for at least min_full_steps
    i = div[0]["step"]  # steps done when it diverged; outs[i] is the next step
    assert [o.phase for o in outs[i : i + 3]] == ["full"] * 3
    assert sum(v["steps"] for v in summ["phases"].values()) == 30


# ----------------------------------------------------------------------------- with the trainer

TINY = TINY_HYBRID


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_synthetic(tmp_path_factory.mktemp("data") / "synthetic")


def _cfg(data: Path, *extra: str):
    return build_run_config(overrides=[f"data.path={data}", *TINY, *extra])


@pytest.mark.parametrize("predictor", ["coast", "lowrank"])
def test_hybrid_run_directory_statistics_add_up(
    prepared: Path, tmp_path: Path, predictor: str
) -> None:
    from shoestring.train.config import TrainJobConfig
    from shoestring.train.run import run as train

    cfg = _cfg(
        prepared, "train.max_steps=40", "train.eval_every=20", f"hybrid.predictor={predictor}"
    )
    run = train(TrainJobConfig.of(cfg, out=tmp_path, name="h", quiet=True))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["trainer"] == "hybrid"
    h = summary["hybrid"]
    assert h["predictor"] == predictor
    assert set(h["phases"]) == set(PHASES)
    assert sum(p["steps"] for p in h["phases"].values()) == summary["steps"] == 40
    assert sum(p["seconds"] for p in h["phases"].values()) == pytest.approx(
        summary["train_seconds"], abs=0.01
    )
    recs = read_metrics(run)
    steps = [r for r in recs if "phase" in r and "event" not in r]
    assert [r["step"] for r in steps] == list(range(1, 41)), "every step is logged"
    predicted = [r for r in steps if r["phase"] == "predict"]
    assert len(predicted) == h["phases"]["predict"]["steps"] == h["backward_skipped"] > 0
    assert h["forward_skipped"] == sum(not r["monitored"] for r in predicted)
    assert all(r["loss"] is None for r in predicted if not r["monitored"])
    assert h["skip_rate"] == pytest.approx(len(predicted) / 40)
    real = 40 - len(predicted)
    assert summary["tokens"] == real * summary["tokens_per_step"]
    for r in steps:
        if r["phase"] == "correct":
            assert "pred_cosine" in r and "pred_rel_err" in r
    phase_events = [r for r in recs if r.get("event") == "phase"]
    assert phase_events and all(r["to"] in PHASES for r in phase_events)
    assert h["memory"]["predictor_bytes"] >= (
        8 * 4 * summary["n_params"] if predictor == "lowrank" else 0
    )
    assert h["wall_seconds"] >= summary["train_seconds"]


def test_hybrid_resume_is_exact(prepared: Path, tmp_path: Path) -> None:
    from shoestring.train.config import TrainJobConfig
    from shoestring.train.run import run as train

    extra = (
        "train.max_steps=24",
        "train.eval_every=12",
        "train.save_every=5",
        "train.keep_checkpoints=5",
    )
    a = train(TrainJobConfig.of(_cfg(prepared, *extra), out=tmp_path, name="a", quiet=True))
    b = tmp_path / "b"
    shutil.copytree(a, b)
    for name in ("step_15", "step_20", "step_24"):
        shutil.rmtree(b / "checkpoints" / name)
    # step 10 falls inside a predict phase: the checkpoint holds the phase, the position in it
    # and the weights to roll back to; resume from it
    state = torch.load(b / "checkpoints" / "step_10" / "state.pt", weights_only=True)
    hstate = state["hybrid"]
    assert hstate["state"]["phase"] == "predict" and hstate["state"]["phase_steps"] > 0
    assert hstate["anchor"] is not None and hstate["anchor"]["weights"].numel() > 0
    train(TrainJobConfig.of(_cfg(prepared, *extra), resume=b, quiet=True))

    def trace(run: Path) -> list:
        return [
            (r["step"], r.get("phase"), r.get("loss"), r.get("val_loss"), r.get("event"))
            for r in read_metrics(run)
        ]

    assert trace(a) == trace(b)
    ha = json.loads((a / "summary.json").read_text())["hybrid"]
    hb = json.loads((b / "summary.json").read_text())["hybrid"]
    for key in ("backward_skipped", "forward_skipped", "rollbacks", "divergences", "skip_rate"):
        assert ha[key] == hb[key], key
    assert {k: v["steps"] for k, v in ha["phases"].items()} == {
        k: v["steps"] for k, v in hb["phases"].items()
    }
    assert ha["phases"]["predict"]["steps"] > 0


def test_cli_trains_with_hybrid_trainer(prepared: Path, tmp_path: Path) -> None:
    from shoestring.cli import main

    args = ["train", "--data", str(prepared), "--out", str(tmp_path), "--name", "c"]
    args += ["--trainer", "hybrid", "--steps", "12"]
    for o in TINY:
        args += ["--set", o]
    assert main(args) == 0
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert summary["trainer"] == "hybrid" and summary["hybrid"]["phases"]["warmup"]["steps"] == 4
