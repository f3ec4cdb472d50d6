"""Hybrid trainer against plain AdamW on prepared WikiText-2: does skipping backward passes pay?

Four arms per seed, run one after another in an interleaved order (the baseline's position in
each seed's block rotates) so machine noise hits every arm alike:

- ``baseline``        plain AdamW, ``--steps`` steps.
- ``hybrid``          the hybrid trainer, ``--hybrid-factor x --steps`` steps (same warmup, cosine
                      over its own length); predicted steps cost no backward pass.
- ``random_skip``     control: the plain trainer with the same number of steps as the hybrid run,
                      skipping the hybrid's measured fraction of steps at random (no update at
                      all on a skipped step) - are the predicted updates better than none?
- ``short_baseline``  control: plain AdamW with as many steps as the hybrid run made real
                      (backward) steps, its warmup/cosine schedule fitted to that length - the
                      same compute spent the ordinary way.

The controls use the skip rate the hybrid run of the same seed measured. Reported with means
and 95% t-intervals over seeds: (1) training wall time to reach a target validation loss
(default: each seed's baseline final validation loss), linearly interpolated between
evaluations; (2) validation loss at equal training wall time; (3) at equal training tokens.
"Training wall time" is the time in training steps only (``train_seconds`` in metrics.jsonl);
evaluation time is recorded separately (``eval_seconds``) and excluded. Every run is a normal
run directory under ``OUT/runs`` (``shoestring compare OUT`` reports them, phases and curves);
``OUT/hybrid_benchmark.json`` holds the table and ``OUT/hybrid_benchmark.md`` shows it, with a
note on every speed-up whose interval over seeds includes 1.0.

    python benchmarks/hybrid_vs_baseline.py --data data/wt2 --out runs/hybrid_benchmark
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from shoestring.cli_options import add_set_option
from shoestring.host import describe_host
from shoestring.report.blocks import Table, md_table
from shoestring.run_config import build_run_config
from shoestring.rundir.directory import (
    atomic_write_json,
    atomic_write_text,
    host_info,
    now_iso,
    read_metrics,
)
from shoestring.runtime import resolve_device
from shoestring.train.config import TrainJobConfig
from shoestring.train.run import run as train
from shoestring.train.trainer import Trainer

ARMS = ("baseline", "hybrid", "random_skip", "short_baseline")


class RandomSkipTrainer(Trainer):
    """Control arm: skip a fixed fraction of steps at random (no forward, backward or update).

    The decision for step s is a pure function of (seed, s), so the control is reproducible and
    resumable; the schedule still advances on skipped steps, as it does in the hybrid trainer.
    """

    def __init__(
        self, cfg: TrainJobConfig, run_path: Path, skip_rate: float, **kwargs: Any
    ) -> None:
        super().__init__(cfg, run_path, **kwargs)
        self.skip_rate = skip_rate
        self._skipped_now = False
        self.n_skipped = 0

    def _skip(self, step: int) -> bool:
        rng = np.random.default_rng([self.cfg.train.seed, 7919, step])
        return bool(rng.random() < self.skip_rate)

    def _train_step(self, step: int) -> tuple[float, float]:
        self._skipped_now = self._skip(step)
        if self._skipped_now:
            self.scheduler.step()
            self.n_skipped += 1
            last = self.state.last_train_loss
            return (last if last is not None else math.nan), math.nan
        return super()._train_step(step)

    def _step_tokens(self, tokens_per_step: int) -> int:
        return 0 if self._skipped_now else tokens_per_step

    def _after_step(self, step: int, seconds: float) -> dict[str, Any]:
        if self._skipped_now:
            return {"skipped": True, "loss": None, "grad_norm": None}
        return {}

    def _summary_extra(self) -> dict[str, Any]:
        return {
            "control": {"kind": "random_skip", "rate": self.skip_rate, "skipped": self.n_skipped}
        }


# ----------------------------------------------------------------------------- curves


def curve(run: Path) -> list[tuple[float, int, float]]:
    """(train_seconds, training tokens, val_loss) at every evaluation, step 0 included."""
    recs = read_metrics(run)
    tokens_at = {0: 0}
    seconds_at = {0: 0.0}
    for r in recs:
        if "loss" in r and "tokens" in r and "event" not in r:
            tokens_at[r["step"]] = r["tokens"]
            seconds_at[r["step"]] = r["train_seconds"]
    out = []
    for r in recs:
        if "val_loss" in r:
            s = r["step"]
            out.append(
                (r.get("train_seconds", seconds_at.get(s, 0.0)), tokens_at[s], r["val_loss"])
            )
    return out


def first_crossing(xs: list[float], ys: list[float], target: float) -> float | None:
    """Smallest x where the piecewise-linear y(x) reaches ``target`` (None if never)."""
    for i, y in enumerate(ys):
        if y <= target:
            if i == 0:
                return xs[0]
            x0, x1, y0 = xs[i - 1], xs[i], ys[i - 1]
            if y0 == y:
                return x1
            return x0 + (x1 - x0) * (y0 - target) / (y0 - y)
    return None


def value_at(xs: list[float], ys: list[float], x: float) -> float | None:
    """y at ``x`` by linear interpolation (first segment reaching x); None past the end."""
    if x > xs[-1] + 1e-3:  # summary times are rounded to 1 ms
        return None
    x = min(x, xs[-1])
    for i in range(1, len(xs)):
        if xs[i] >= x:
            x0, x1 = xs[i - 1], xs[i]
            if x1 == x0:
                return ys[i]
            return ys[i - 1] + (ys[i] - ys[i - 1]) * (x - x0) / (x1 - x0)
    return ys[0]


def mean_ci(values: list[float | None]) -> dict[str, Any]:
    """Mean with a 95% t-interval over seeds; counts values that are missing (None)."""
    xs = [v for v in values if v is not None and math.isfinite(v)]
    out: dict[str, Any] = {"n": len(xs), "missing": len(values) - len(xs), "values": values}
    if not xs:
        return {**out, "mean": None, "ci_low": None, "ci_high": None}
    m = float(np.mean(xs))
    if len(xs) < 2:
        return {**out, "mean": m, "ci_low": None, "ci_high": None}
    half = float(sps.t.ppf(0.975, len(xs) - 1) * np.std(xs, ddof=1) / math.sqrt(len(xs)))
    return {**out, "mean": m, "ci_low": m - half, "ci_high": m + half}


def fmt(ci: dict[str, Any], digits: int = 3) -> str:
    if ci["mean"] is None:
        return f"not reached ({ci['missing']}/{ci['missing'] + ci['n']})"
    s = f"{ci['mean']:.{digits}f}"
    if ci["ci_low"] is not None:
        s += f" [{ci['ci_low']:.{digits}f}, {ci['ci_high']:.{digits}f}]"
    if ci["missing"]:
        s += f" ({ci['missing']} not reached)"
    return s


# ----------------------------------------------------------------------------- runs


def base_overrides(args: argparse.Namespace, seed: int) -> list[str]:
    return [
        f"data.path={args.data}",
        f"train.seed={seed}",
        f"train.threads={args.threads}",
        "train.compile=off",
        f"train.eval_every={args.eval_every}",
        f"train.eval_batches={args.eval_batches}",
        "train.log_every=1",
        "train.save_every=1000000",
        *args.overrides,
    ]


def run_arm(args: argparse.Namespace, arm: str, seed: int, steps: int, skip: float | None) -> Path:
    runs = Path(args.out) / "runs"
    over = base_overrides(args, seed) + [f"train.max_steps={steps}"]
    if arm == "hybrid":
        over += ["train.trainer=hybrid", f"hybrid.predictor={args.predictor}", *args.hybrid]
    cfg = build_run_config(args.preset, None, None, over)
    name = f"{arm}-s{seed}"
    t0 = time.perf_counter()
    if arm == "random_skip":
        assert skip is not None
        path = runs / name
        job = TrainJobConfig.of(cfg, out=runs, name=name, quiet=True)
        RandomSkipTrainer(job, path, skip).run()
    else:
        path = train(TrainJobConfig.of(cfg, out=runs, name=name, quiet=True))
    s = json.loads((path / "summary.json").read_text())
    print(
        f"  {name:22s} {steps:5d} steps  final val {s['final_val_loss']:.4f}  "
        f"train {s['train_seconds']:7.1f} s  eval {s['eval_seconds']:5.1f} s  "
        f"(wall {time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    return path


def seed_block(args: argparse.Namespace, seed: int, idx: int) -> dict[str, Path]:
    """One seed's four runs; the baseline goes first in even blocks, second in odd ones."""
    paths: dict[str, Path] = {}
    h_steps = round(args.steps * args.hybrid_factor)
    first = ["baseline", "hybrid"] if idx % 2 == 0 else ["hybrid", "baseline"]
    for arm in first:
        paths[arm] = run_arm(args, arm, seed, args.steps if arm == "baseline" else h_steps, None)
    skip = json.loads((paths["hybrid"] / "summary.json").read_text())["hybrid"]["skip_rate"]
    real = max(1, round(h_steps * (1 - skip)))
    controls = (
        ["random_skip", "short_baseline"] if idx % 2 == 0 else ["short_baseline", "random_skip"]
    )
    for arm in controls:
        steps = h_steps if arm == "random_skip" else real
        paths[arm] = run_arm(args, arm, seed, steps, skip)
    return paths


# ----------------------------------------------------------------------------- analysis


def analyse(args: argparse.Namespace, blocks: dict[int, dict[str, Path]]) -> dict[str, Any]:
    per_seed = []
    for seed, paths in blocks.items():
        curves = {a: curve(p) for a, p in paths.items()}
        summ = {a: json.loads((p / "summary.json").read_text()) for a, p in paths.items()}
        target = args.target if args.target is not None else summ["baseline"]["final_val_loss"]
        t_eq = min(summ[a]["train_seconds"] for a in paths)
        n_eq = min(summ[a]["tokens"] for a in paths)
        row: dict[str, Any] = {
            "seed": seed,
            "target": target,
            "equal_seconds": t_eq,
            "equal_tokens": n_eq,
        }
        for a, c in curves.items():
            secs, toks, vals = [x[0] for x in c], [float(x[1]) for x in c], [x[2] for x in c]
            row[a] = {
                "final_val_loss": summ[a]["final_val_loss"],
                "train_seconds": summ[a]["train_seconds"],
                "eval_seconds": summ[a]["eval_seconds"],
                "steps": summ[a]["steps"],
                "tokens": summ[a]["tokens"],
                "time_to_target": first_crossing(secs, vals, target),
                "val_at_equal_time": value_at(secs, vals, t_eq),
                "val_at_equal_tokens": value_at(toks, vals, float(n_eq)),
            }
        h = summ["hybrid"]["hybrid"]
        row["hybrid"]["skip_rate"] = h["skip_rate"]
        row["hybrid"]["phases"] = h["phases"]
        row["hybrid"]["rollbacks"] = h["rollbacks"]
        row["hybrid"]["pred_cosine_mean"] = h["pred_cosine_mean"]
        base_t = row["baseline"]["time_to_target"]
        for a in ARMS:
            t = row[a]["time_to_target"]
            row[a]["speedup_vs_baseline"] = base_t / t if (t and base_t) else None
        per_seed.append(row)

    table = []
    for a in ARMS:
        table.append(
            {
                "arm": a,
                "steps": mean_ci([r[a]["steps"] for r in per_seed]),
                "final_val_loss": mean_ci([r[a]["final_val_loss"] for r in per_seed]),
                "train_seconds": mean_ci([r[a]["train_seconds"] for r in per_seed]),
                "eval_seconds": mean_ci([r[a]["eval_seconds"] for r in per_seed]),
                "time_to_target": mean_ci([r[a]["time_to_target"] for r in per_seed]),
                "speedup_vs_baseline": mean_ci([r[a]["speedup_vs_baseline"] for r in per_seed]),
                "val_at_equal_time": mean_ci([r[a]["val_at_equal_time"] for r in per_seed]),
                "val_at_equal_tokens": mean_ci([r[a]["val_at_equal_tokens"] for r in per_seed]),
            }
        )
    # where the hybrid's time goes: seconds per step by phase, against the baseline's step
    phases = {}
    for p in ("warmup", "full", "predict", "correct"):
        n = sum(r["hybrid"]["phases"][p]["steps"] for r in per_seed)
        sec = sum(r["hybrid"]["phases"][p]["seconds"] for r in per_seed)
        phases[p] = {
            "steps": n,
            "seconds": sec,
            "seconds_per_step": sec / n if n else None,
            "share_of_time": sec / sum(r["hybrid"]["train_seconds"] for r in per_seed),
        }
    base_step = sum(r["baseline"]["train_seconds"] for r in per_seed) / sum(
        r["baseline"]["steps"] for r in per_seed
    )
    return {
        "per_seed": per_seed,
        "table": table,
        "skip_rate": mean_ci([r["hybrid"]["skip_rate"] for r in per_seed]),
        "hybrid_time_by_phase": phases,
        "baseline_seconds_per_step": base_step,
    }


def print_report(res: dict[str, Any]) -> None:
    print("\nper seed: target = that seed's baseline final val loss")
    for r in res["per_seed"]:
        print(
            f"  seed {r['seed']}: target {r['target']:.4f}, equal time {r['equal_seconds']:.1f} s, "
            f"equal tokens {r['equal_tokens']:,}; hybrid skip rate {r['hybrid']['skip_rate']:.3f}, "
            f"rollbacks {r['hybrid']['rollbacks']}"
        )
        for a in ARMS:
            x = r[a]
            ttt = f"{x['time_to_target']:.1f} s" if x["time_to_target"] else "not reached"
            print(
                f"    {a:15s} final {x['final_val_loss']:.4f}  to target {ttt:>12s}  "
                f"@time {x['val_at_equal_time'] or float('nan'):.4f}  "
                f"@tokens {x['val_at_equal_tokens'] or float('nan'):.4f}"
            )
    print("\nmeans over seeds with 95% t-intervals")
    cols = [
        ("steps", 0),
        ("train_seconds", 1),
        ("eval_seconds", 1),
        ("final_val_loss", 4),
        ("time_to_target", 1),
        ("speedup_vs_baseline", 3),
        ("val_at_equal_time", 4),
        ("val_at_equal_tokens", 4),
    ]
    for row in res["table"]:
        print(f"  {row['arm']}")
        for c, d in cols:
            print(f"    {c:20s} {fmt(row[c], d)}")
    print(f"\nhybrid skip rate {fmt(res['skip_rate'], 3)}")
    print(f"baseline: {res['baseline_seconds_per_step']:.4f} s per step")
    for p, v in res["hybrid_time_by_phase"].items():
        sps_ = v["seconds_per_step"]
        print(
            f"hybrid {p:8s} {v['steps']:5d} steps  {v['seconds']:7.1f} s  "
            f"{(sps_ or 0):.4f} s/step  {100 * v['share_of_time']:.1f}% of training time"
        )


# ----------------------------------------------------------------------------- hybrid_benchmark.md

#: The table's columns: (key, header, digits).
MD_COLUMNS = (
    ("steps", "steps", 0),
    ("train_seconds", "train s", 1),
    ("final_val_loss", "final val loss", 4),
    ("time_to_target", "s to target loss", 1),
    ("speedup_vs_baseline", "speed-up vs baseline", 3),
    ("val_at_equal_time", "val loss at equal time", 4),
    ("val_at_equal_tokens", "val loss at equal tokens", 4),
)


def ci_cell(v: Any, digits: int = 3) -> str:
    """A :func:`mean_ci` value as ``mean [lo, hi] (n=..)``, the way a reader weighs it."""
    if not isinstance(v, dict):
        return "-" if v is None else str(v)
    if v.get("mean") is None:
        miss = v.get("missing", 0)
        return f"not reached ({miss}/{miss + v.get('n', 0)})" if miss else "-"
    out = f"{v['mean']:.{digits}f}"
    if v.get("ci_low") is not None and v.get("ci_high") is not None:
        out += f" [{v['ci_low']:.{digits}f}, {v['ci_high']:.{digits}f}]"
    out += f" (n={v.get('n')})"
    return out + (f", {v['missing']} not reached" if v.get("missing") else "")


def speedup_notes(doc: dict[str, Any]) -> list[str]:
    """A speed-up whose 95% interval over seeds includes 1.0 is not a speed-up; one from a
    single seed has no interval at all."""
    out = []
    for row in doc.get("table") or []:
        sp, arm = row.get("speedup_vs_baseline"), row.get("arm")
        if arm == "baseline" or not isinstance(sp, dict) or sp.get("mean") is None:
            continue
        lo, hi = sp.get("ci_low"), sp.get("ci_high")
        if lo is None:
            out.append(
                f"**note**: `{arm}` speed-up {sp['mean']:.3f}x over the baseline from "
                f"{sp.get('n')} seed(s): no interval, so it cannot be told from seed noise."
            )
        elif lo <= 1.0 <= hi:
            out.append(
                f"**CAUTION**: `{arm}` speed-up {sp['mean']:.3f}x [{lo:.3f}, {hi:.3f}] (95% "
                f"t-interval over {sp.get('n')} seeds) includes 1.0: no speed-up beyond seed "
                "noise."
            )
    return out


def render_markdown(doc: dict[str, Any]) -> str:
    """hybrid_benchmark.md: the arms' means with 95% t-intervals, where the hybrid arm's time
    went, and the speed-ups that are not beyond seed noise."""
    arms = doc.get("arms") or {}
    seeds = sorted({s for a in arms.values() for s in a})
    wall = doc.get("wall_seconds")
    lines = [
        "# Hybrid vs baseline benchmark",
        "",
        "Means over seeds with 95% t-intervals (a single seed has no interval). Arms "
        + ", ".join(f"`{a}`" for a in arms)
        + f"; seeds {', '.join(seeds) or '-'}"
        + (f"; wall {wall:,.0f} s" if wall is not None else "")
        + ". Every arm's run is a run directory under `runs/`: `shoestring compare` on this "
        "directory reports their loss curves and the hybrid runs' phases.",
        "",
    ]
    table = doc.get("table") or []
    cols = [c for c in MD_COLUMNS if any(c[0] in row for row in table)]
    rows = [
        [str(row.get("arm", "?"))] + [ci_cell(row.get(k), d) for k, _, d in cols] for row in table
    ]
    lines += md_table(Table(["arm"] + [c[1] for c in cols], rows, "l" + "r" * len(cols))) + [""]
    phases = doc.get("hybrid_time_by_phase") or {}
    if phases:
        base = doc.get("baseline_seconds_per_step")
        caption = (
            f"Where the hybrid arm's training time went (all seeds); baseline "
            f"{'-' if base is None else f'{base:.4f}'} s/step; skip rate "
            f"{ci_cell(doc.get('skip_rate'))}."
        )
        prow = []
        for name, v in phases.items():
            sps_, share = v.get("seconds_per_step"), v.get("share_of_time")
            prow.append(
                [name, f"{v.get('steps', 0):,}", f"{v.get('seconds', 0.0):,.1f}"]
                + ["-" if sps_ is None else f"{sps_:.4f}"]
                + ["-" if share is None else f"{100 * share:.1f}%"]
            )
        head = ["hybrid phase", "steps", "seconds", "s/step", "share of time"]
        lines += md_table(Table(head, prow, "lrrrr", caption)) + [""]
    notes = speedup_notes(doc)
    lines += ["## Speed-ups against seed noise", ""]
    lines += [f"- {n}" for n in notes] if notes else ["Every speed-up's interval excludes 1.0."]
    return "\n".join(lines).rstrip() + "\n"


def write_results(out: Path, doc: dict[str, Any]) -> None:
    """hybrid_benchmark.json (the numbers) and hybrid_benchmark.md (them, for a reader)."""
    atomic_write_json(out / "hybrid_benchmark.json", doc)
    atomic_write_text(out / "hybrid_benchmark.md", render_markdown(doc))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default="data/wt2", help="prepared data (shoestring prepare)")
    p.add_argument("--out", default="runs/hybrid_benchmark")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=200, help="baseline steps")
    p.add_argument("--hybrid-factor", type=float, default=1.5, help="hybrid steps / baseline steps")
    p.add_argument("--predictor", default="coast", choices=("coast", "linear", "lowrank", "leap"))
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--eval-batches", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--target", type=float, help="target val loss (default: baseline final)")
    add_set_option(p, "train.lr=1e-3")
    p.add_argument(
        "--hybrid",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override for the hybrid arm only, e.g. hybrid.max_predict_steps=8",
    )
    p.add_argument(
        "--reanalyse",
        action="store_true",
        help="recompute the table from the run directories of an earlier OUT/hybrid_benchmark.json",
    )
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.reanalyse:
        old = json.loads((out / "hybrid_benchmark.json").read_text())
        seeds = sorted({int(s) for arm in old["arms"].values() for s in arm})
        blocks = {s: {a: Path(old["arms"][a][str(s)]) for a in ARMS} for s in seeds}
        res = analyse(args, blocks)
        print_report(res)
        old.update(res, reanalysed_at=now_iso())
        write_results(out, old)
        return 0
    (out / "runs").mkdir(parents=True, exist_ok=True)
    print(describe_host(resolve_device("auto")), flush=True)  # the host class of every figure
    t0 = time.perf_counter()
    blocks: dict[int, dict[str, Path]] = {}
    for i, seed in enumerate(args.seeds):
        print(f"seed {seed}", flush=True)
        blocks[seed] = seed_block(args, seed, i)
    res = analyse(args, blocks)
    print_report(res)
    doc = {
        "schema_version": 1,
        "kind": "hybrid_benchmark",
        "created_at": now_iso(),
        "host": host_info(),
        "command": " ".join([sys.executable, *sys.argv]),
        "args": vars(args),
        "arms": {a: {str(s): str(blocks[s][a]) for s in blocks} for a in ARMS},
        "wall_seconds": time.perf_counter() - t0,
        **res,
    }
    write_results(out, doc)
    print(f"\nwrote {out / 'hybrid_benchmark.md'} and .json ({doc['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
