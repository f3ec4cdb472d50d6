"""Hybrid trainer on top of Muon, the held-out check of predicted weights, the leap predictor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from _helpers import TINY_HYBRID, prepare_synthetic
from shoestring.run_config import HybridConfig, build_run_config
from shoestring.rundir.directory import read_metrics
from shoestring.train.hybrid_controller import HybridController
from shoestring.train.muon import MuonWithAdamW
from shoestring.train.predictors import CoastingPredictor, LeapPredictor, flatten


class MatrixQuadratic:
    """f(W, b) = 1/2 |A (W - T)|^2 + 1/2 |b - c|^2: one matrix for Muon, one vector for AdamW."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.a = torch.linspace(0.3, 1.0, 12).unsqueeze(1)
        self.target = torch.randn(12, 20, generator=g)
        self.c = torch.randn(20, generator=g)
        self.w = torch.nn.Parameter(torch.zeros(12, 20))
        self.b = torch.nn.Parameter(torch.zeros(20))
        self.params = [self.w, self.b]

    def loss(self) -> torch.Tensor:
        return (
            0.5 * ((self.a * (self.w - self.target)) ** 2).sum()
            + 0.5 * ((self.b - self.c) ** 2).sum()
        )


def _muon(q: MatrixQuadratic, lr: float = 0.02) -> MuonWithAdamW:
    return MuonWithAdamW(
        [q.w], [{"params": [q.b], "weight_decay": 0.0}],
        muon_lr=lr, adamw_lr=lr, weight_decay=0.01, betas=(0.9, 0.95),
    )  # fmt: skip


def _real_step(q: MatrixQuadratic, opt: torch.optim.Optimizer, sched=None) -> tuple[float, float]:
    opt.zero_grad()
    loss = q.loss()
    loss.backward()
    opt.step()
    if sched is not None:
        sched.step()
    return float(loss.detach()), 1.0


def test_coasting_is_muons_zero_gradient_step() -> None:
    q = MatrixQuadratic()
    opt = _muon(q)
    pred = CoastingPredictor(q.params, opt)
    assert not pred.ready()
    for _ in range(5):
        _real_step(q, opt)
    assert pred.ready()
    predicted = pred.predict(1, 0.02)
    before = flatten(q.params)
    q.w.grad, q.b.grad = torch.zeros_like(q.w), torch.zeros_like(q.b)
    opt.step()
    assert torch.allclose(predicted, flatten(q.params) - before, atol=1e-6)


def test_leap_predictor_is_the_lr_normalised_finite_difference() -> None:
    params = [torch.nn.Parameter(torch.zeros(6))]
    pred = LeapPredictor(params, span=4)
    deltas = [torch.full((6,), float(i + 1)) for i in range(4)]
    lrs = [0.1, 0.2, 0.3, 0.4]
    for d, lr in zip(deltas[:3], lrs[:3], strict=True):
        pred.observe(d, lr)
        assert not pred.ready()  # no complete checkpoint difference yet
    pred.observe(deltas[3], lrs[3])
    assert pred.ready()
    slope = sum(deltas) / sum(lrs)  # (theta_t - theta_{t-4}) / lrs in between
    assert torch.allclose(pred.predict(1, 0.5), slope * 0.5)
    assert pred.memory_bytes() == 2 * 6 * 4
    state = pred.state_dict()
    other = LeapPredictor(params, span=4)
    other.load_state_dict(state)
    assert torch.equal(other.predict(3, 0.5), pred.predict(3, 0.5))


def _controller(q: MatrixQuadratic, batch_loss=None, **kw) -> tuple[HybridController, list]:
    events: list[dict] = []
    opt = _muon(q)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    hcfg = HybridConfig(**kw)
    ctl = HybridController(hcfg, q.params, opt, sched, emit=events.append, batch_loss=batch_loss)
    ctl._toy = (opt, sched)  # type: ignore[attr-defined]
    return ctl, events


def _drive(ctl: HybridController, q: MatrixQuadratic, steps: int, monitor=None) -> list:
    opt, sched = ctl._toy  # type: ignore[attr-defined]
    return [
        ctl.step(i, lambda: _real_step(q, opt, sched), monitor or (lambda: float(q.loss())))
        for i in range(steps)
    ]


PHASED = dict(warmup_steps=3, min_full_steps=3, max_predict_steps=4, correct_steps=2)


def test_muon_rollback_restores_weights_and_momentum() -> None:
    q = MatrixQuadratic()
    ctl, events = _controller(q, **PHASED, monitor_every=2, confidence_threshold=0.0)
    opt, _ = ctl._toy  # type: ignore[attr-defined]
    saved: dict[str, torch.Tensor] = {}

    def emit(rec: dict) -> None:
        events.append(rec)
        if rec["event"] == "phase" and rec["to"] == "predict" and "w" not in saved:
            saved["w"] = flatten(q.params)
            saved["buf"] = opt.state[q.w]["momentum_buffer"].clone()
        if rec["event"] == "rollback" and "after" not in saved:
            saved["after"] = flatten(q.params)
            saved["buf_after"] = opt.state[q.w]["momentum_buffer"].clone()

    ctl.emit = emit
    outs = _drive(ctl, q, 20, monitor=lambda: float(q.loss()) + 1e6)  # every check diverges
    assert any(o.phase == "predict" for o in outs)
    assert torch.equal(saved["after"], saved["w"])
    assert torch.equal(saved["buf_after"], saved["buf"])  # coasting decayed it; restored
    assert any(e["event"] == "rollback" for e in events)


@pytest.mark.parametrize("better", [True, False])
def test_predicted_weights_kept_only_if_heldout_loss_went_down(better: bool) -> None:
    q = MatrixQuadratic()
    asked: list[int] = []

    def batch_loss(step: int) -> float:
        asked.append(step)  # each call is the next check: falling or rising losses
        return 10.0 - len(asked) if better else 1.0 + len(asked)

    ctl, events = _controller(
        q, batch_loss, **PHASED, monitor_every=0, confidence_threshold=0.0, predictor="leap",
        history=3,
    )  # fmt: skip
    outs = _drive(ctl, q, 16)
    phases = [o.phase for o in outs]
    first = phases.index("predict")
    # the check uses the batch of the phase's last predicted step, before and after
    assert asked[:2] == [first + 3, first + 3]
    summ = ctl.summary(1.0)["verify"]
    if better:
        assert summ["accepted"] >= 1 and summ["rejected"] == 0
        assert phases[first + 4] == "correct" and ctl.s.rollbacks == 0
    else:
        assert summ["rejected"] >= 1 and summ["accepted"] == 0
        assert "held-out check" in ctl.s.divergences[0]["reason"]
        assert phases[first + 4] == "full"


# later overrides win: Muon, every phase predicted (no confidence gate), a short history
TINY = [
    *TINY_HYBRID,
    "train.optimizer=muon",
    "hybrid.confidence_threshold=0.0",
    "hybrid.history=3",
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_synthetic(tmp_path_factory.mktemp("data") / "synthetic")


@pytest.mark.parametrize("predictor", ["coast", "leap"])
def test_hybrid_on_muon_phases_and_resume_are_exact(
    prepared: Path, tmp_path: Path, predictor: str
) -> None:
    from shoestring.train.config import TrainJobConfig
    from shoestring.train.run import run as train

    over = [f"data.path={prepared}", *TINY, f"hybrid.predictor={predictor}"]
    over += ["train.max_steps=24", "train.eval_every=12", "train.save_every=5"]
    over += ["train.keep_checkpoints=5"]
    a = train(
        TrainJobConfig.of(build_run_config(overrides=over), out=tmp_path, name="a", quiet=True)
    )
    summary = json.loads((a / "summary.json").read_text())
    h = summary["hybrid"]
    assert summary["status"] == "finished"
    assert sum(p["steps"] for p in h["phases"].values()) == 24
    assert h["phases"]["predict"]["steps"] > 0
    assert h["verify"]["accepted"] + h["verify"]["rejected"] > 0  # every phase was checked
    b = tmp_path / "b"
    shutil.copytree(a, b)
    for name in ("step_15", "step_20", "step_24"):
        shutil.rmtree(b / "checkpoints" / name)
    train(TrainJobConfig.of(build_run_config(overrides=over), resume=b, quiet=True))

    def trace(run: Path) -> list:
        return [
            (r["step"], r.get("phase"), r.get("loss"), r.get("val_loss"), r.get("event"))
            for r in read_metrics(run)
        ]

    assert trace(a) == trace(b)
    hb = json.loads((b / "summary.json").read_text())["hybrid"]
    assert hb["verify"] == h["verify"] and hb["rollbacks"] == h["rollbacks"]
