"""Time to a validation loss: AdamW, Muon, and the hybrid trainer on top of each, per preset.

For every preset (default: tiny and small) on prepared data (WikiText-2 in docs/train.md):

1. **LR sweep** (one seed, ``--sweep-seed``): plain AdamW and plain Muon at three learning
   rates each, interleaved (AdamW lr 1, Muon lr 1, AdamW lr 2, ...). Each optimizer keeps the
   lr with the lowest final validation loss, so neither side runs on a bad lr.
2. **Arms**, 3 seeds: ``adamw``, ``muon``, ``hybrid_adamw``, ``hybrid_muon`` (the hybrid
   trainer, ``--hybrid-factor`` x the steps, predictor ``--predictor``), each at its optimizer's
   swept lr. Each seed's four runs form a block whose order rotates from seed to seed, so load
   from other jobs hits every arm alike. The plain arms of the sweep seed *are* the sweep's
   runs at the chosen lr (same config, same result; timed in the sweep block).

``--arms`` runs a subset (e.g. ``adamw muon``) and ``--lr adamw=X,muon=Y`` skips the sweep
and uses the given lrs (e.g. the ones a sweep on a smaller preset chose) - for a host where the
full design does not fit the time there is; the JSON records what ran.

Reported per preset, with means and 95% t-intervals over seeds: training wall time to reach
the target loss (default: each seed's AdamW final validation loss; linear interpolation between
evaluations) and the speed-up over AdamW; validation loss at equal training wall time (the
shortest arm's) and at equal training tokens (predicted steps train on none). "Training wall
time" is step time only (``train_seconds``; evaluation excluded, the hybrid's held-out checks
included). Every run is a normal run directory under ``OUT/<preset>/runs``; the whole result is
``OUT/time_to_loss.json``.

    python benchmarks/time_to_loss.py --data data/wt2 --out runs/ttl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hybrid_vs_baseline import curve, first_crossing, fmt, mean_ci, value_at  # noqa: E402
from shoestring.cli_options import add_set_option  # noqa: E402
from shoestring.host import describe_host  # noqa: E402
from shoestring.run_config import build_run_config  # noqa: E402
from shoestring.rundir.directory import atomic_write_json, host_info, now_iso  # noqa: E402
from shoestring.runtime import resolve_device  # noqa: E402
from shoestring.train.config import TrainJobConfig  # noqa: E402
from shoestring.train.run import run as train  # noqa: E402

ARMS = ("adamw", "muon", "hybrid_adamw", "hybrid_muon")
OPTIMIZERS = ("adamw", "muon")


def _summary(path: Path) -> dict[str, Any]:
    return json.loads((path / "summary.json").read_text())


def run_one(
    args: argparse.Namespace, preset: str, name: str, optimizer: str, lr: float, seed: int,
    hybrid: bool,
) -> Path:  # fmt: skip
    """One training run (a normal run directory); prints its one-line result."""
    steps = args.steps[preset]
    over = [
        f"data.path={args.data}",
        f"train.seed={seed}",
        f"train.threads={args.threads}",
        "train.compile=off",
        f"train.eval_every={args.eval_every}",
        f"train.eval_batches={args.eval_batches}",
        "train.log_every=1",
        "train.save_every=1000000",
        f"train.optimizer={optimizer}",
        f"train.lr={lr}",
        *args.overrides,
    ]
    if hybrid:
        steps = round(steps * args.hybrid_factor)
        over += ["train.trainer=hybrid", f"hybrid.predictor={args.predictor}", *args.hybrid]
    over.append(f"train.max_steps={steps}")
    cfg = build_run_config(preset, None, None, over)
    t0 = time.perf_counter()
    job = TrainJobConfig.of(cfg, out=Path(args.out) / preset / "runs", name=name, quiet=True)
    path = train(job)
    s = _summary(path)
    extra = ""
    if hybrid:
        h = s["hybrid"]
        v = h["verify"]
        extra = (
            f"  skip {h['skip_rate']:.2f}, rollbacks {h['rollbacks']}, "
            f"checks kept {v['accepted']}/{v['accepted'] + v['rejected']}"
        )
    print(
        f"  {preset:5s} {name:24s} {steps:4d} steps  final val {s['final_val_loss']:.4f}  "
        f"train {s['train_seconds']:6.1f} s (wall {time.perf_counter() - t0:.0f} s){extra}",
        flush=True,
    )
    return path


def sweep(args: argparse.Namespace, preset: str) -> dict[str, Any]:
    """Three lrs per optimizer at the sweep seed, interleaved; the best by final val loss."""
    runs: dict[str, dict[str, Path]] = {o: {} for o in OPTIMIZERS}
    lrs = {"adamw": args.adamw_lrs, "muon": args.muon_lrs}
    for i in range(3):
        order = OPTIMIZERS if i % 2 == 0 else OPTIMIZERS[::-1]
        for o in order:
            lr = lrs[o][i]
            runs[o][str(lr)] = run_one(
                args, preset, f"sweep-{o}-lr{lr:g}", o, lr, args.sweep_seed, False
            )
    out: dict[str, Any] = {}
    for o in OPTIMIZERS:
        finals = {lr: _summary(p)["final_val_loss"] for lr, p in runs[o].items()}
        best = min(finals, key=lambda k: finals[k])
        out[o] = {"final_val_loss": finals, "best_lr": float(best), "best_run": runs[o][best]}
    return out


def arms(args: argparse.Namespace, preset: str, swept: dict[str, Any]) -> dict[int, dict]:
    """Each seed's arms, order rotated by seed; the sweep seed reuses the sweep's runs."""
    blocks: dict[int, dict[str, Path]] = {}
    n = len(args.arms)
    for idx, seed in enumerate(args.seeds):
        order = args.arms[idx % n :] + args.arms[: idx % n]
        block: dict[str, Path] = {}
        for arm in order:
            opt = arm.removeprefix("hybrid_")
            lr = swept[opt]["best_lr"]
            if seed == args.sweep_seed and "best_run" in swept[opt] and arm == opt:
                block[arm] = swept[opt]["best_run"]
                continue
            block[arm] = run_one(args, preset, f"{arm}-s{seed}", opt, lr, seed, arm != opt)
        blocks[seed] = block
    return blocks


def _crossing(run: Path, target: float) -> float | None:
    c = curve(run)
    return first_crossing([x[0] for x in c], [x[2] for x in c], target)


def analyse(
    blocks: dict[int, dict[str, Path]], target: float | None, arm_names: list[str]
) -> dict[str, Any]:
    per_seed = []
    for seed, paths in blocks.items():
        summ = {a: _summary(p) for a, p in paths.items()}
        goal = target if target is not None else summ["adamw"]["final_val_loss"]
        t_eq = min(s["train_seconds"] for s in summ.values())
        n_eq = min(s["tokens"] for s in summ.values())
        row: dict[str, Any] = {"seed": seed, "target": goal, "equal_seconds": t_eq}
        row["equal_tokens"] = n_eq
        for a, p in paths.items():
            c = curve(p)
            secs, toks, vals = [x[0] for x in c], [float(x[1]) for x in c], [x[2] for x in c]
            row[a] = {
                "run": str(p),
                "final_val_loss": summ[a]["final_val_loss"],
                "train_seconds": summ[a]["train_seconds"],
                "steps": summ[a]["steps"],
                "seconds_per_step": summ[a]["train_seconds"] / max(summ[a]["steps"], 1),
                "time_to_target": first_crossing(secs, vals, goal),
                "val_at_equal_time": value_at(secs, vals, t_eq),
                "val_at_equal_tokens": value_at(toks, vals, float(n_eq)),
            }
            if "hybrid" in summ[a]:
                h = summ[a]["hybrid"]
                row[a].update(
                    skip_rate=h["skip_rate"],
                    rollbacks=h["rollbacks"],
                    pred_cosine_mean=h["pred_cosine_mean"],
                    verify=h["verify"],
                    phases=h["phases"],
                )
        base = row["adamw"]["time_to_target"]
        for a in paths:
            t = row[a]["time_to_target"]
            row[a]["speedup_vs_adamw"] = base / t if (t and base) else None
            # the hybrid against its own optimizer: time to the plain run's final loss
            plain = a.removeprefix("hybrid_")
            if plain != a and plain in paths:
                own = summ[plain]["final_val_loss"]
                t_h = _crossing(paths[a], own)
                t_p = _crossing(paths[plain], own)
                row[a]["speedup_vs_same_optimizer"] = t_p / t_h if (t_h and t_p) else None
        per_seed.append(row)
    keys = ("final_val_loss", "train_seconds", "seconds_per_step", "time_to_target")
    keys += ("speedup_vs_adamw", "speedup_vs_same_optimizer")
    keys += ("val_at_equal_time", "val_at_equal_tokens")
    table = [
        {
            "arm": a,
            **{
                k: mean_ci([r[a].get(k) for r in per_seed])
                for k in keys
                if k != "speedup_vs_same_optimizer" or a.startswith("hybrid_")
            },
        }
        for a in arm_names
    ]
    return {"per_seed": per_seed, "table": table}


def print_table(preset: str, swept: dict[str, Any], res: dict[str, Any]) -> None:
    print(f"\n{preset}: lr sweep (final val loss at the sweep seed)")
    for o in OPTIMIZERS:
        if "final_val_loss" not in swept[o]:
            print(f"  {o:6s} not swept -> lr {swept[o]['best_lr']:g}")
            continue
        finals = ", ".join(f"{lr}: {v:.4f}" for lr, v in swept[o]["final_val_loss"].items())
        print(f"  {o:6s} {finals}  -> lr {swept[o]['best_lr']:g}")
    print(f"{preset}: means over seeds, 95% t-intervals (target: each seed's AdamW final loss)")
    digits = {"train_seconds": 1, "time_to_target": 1, "speedup_vs_adamw": 2}
    digits["speedup_vs_same_optimizer"] = 2
    digits["seconds_per_step"] = 3
    for row in res["table"]:
        print(f"  {row['arm']}")
        for k, v in row.items():
            if k != "arm":
                print(f"    {k:20s} {fmt(v, digits.get(k, 4))}")
    for r in res["per_seed"]:
        for a in ("hybrid_adamw", "hybrid_muon"):
            if a not in r:
                continue
            x = r[a]
            print(
                f"  seed {r['seed']} {a}: skip {x['skip_rate']:.2f}, rollbacks {x['rollbacks']}, "
                f"checks {x['verify']}, mean cosine {x['pred_cosine_mean']}"
            )


def reanalyse(path: Path, target: float | None) -> int:
    """The tables again from the run directories an earlier run recorded (no training)."""
    doc = json.loads(path.read_text())
    for preset, res in doc["presets"].items():
        names = [r["arm"] for r in res["table"]]
        blocks = {r["seed"]: {a: Path(r[a]["run"]) for a in names} for r in res["per_seed"]}
        new = analyse(blocks, target, names)
        print_table(preset, {**res["sweep"]}, new)
        res.update(new)
    doc["reanalysed_at"] = now_iso()
    atomic_write_json(path, doc)
    return 0


def _lrs(text: str) -> dict[str, float]:
    out = {k.strip(): float(v) for k, v in (part.split("=") for part in text.split(","))}
    if set(out) != set(OPTIMIZERS):
        raise argparse.ArgumentTypeError("give both: adamw=X,muon=Y")
    return out


def _steps(text: str) -> dict[str, int]:
    out = {}
    for part in text.split(","):
        k, v = part.split("=")
        out[k.strip()] = int(v)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default="data/wt2", help="prepared data (shoestring prepare)")
    p.add_argument("--out", default="runs/time_to_loss")
    p.add_argument("--presets", nargs="+", default=["tiny", "small"])
    p.add_argument("--steps", type=_steps, default=_steps("tiny=150,small=100"),
                   help="plain steps per preset, e.g. tiny=150,small=100")  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sweep-seed", type=int, default=0)
    p.add_argument("--adamw-lrs", type=float, nargs=3, default=[1e-3, 2e-3, 4e-3])
    p.add_argument("--muon-lrs", type=float, nargs=3, default=[1e-3, 2e-3, 4e-3])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--lr", type=_lrs, help="skip the sweep: adamw=X,muon=Y")
    p.add_argument("--hybrid-factor", type=float, default=1.25)
    p.add_argument("--predictor", default="leap", choices=("coast", "linear", "lowrank", "leap"))
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--eval-batches", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--target", type=float, help="target val loss (default: AdamW's final)")
    add_set_option(p, "train.seq_len=64")
    p.add_argument("--hybrid", action="append", default=[], metavar="KEY=VALUE",
                   help="override for the hybrid arms only")  # fmt: skip
    p.add_argument("--reanalyse", action="store_true",
                   help="recompute OUT/time_to_loss.json from its run directories")  # fmt: skip
    args = p.parse_args(argv)
    if args.reanalyse:
        return reanalyse(Path(args.out) / "time_to_loss.json", args.target)
    if "adamw" not in args.arms:
        p.error("--arms needs adamw (its final loss is the target)")
    if args.sweep_seed not in args.seeds and not args.lr:
        p.error("--sweep-seed must be one of --seeds (its plain runs are reused)")
    t0 = time.perf_counter()
    doc: dict[str, Any] = {
        "schema_version": 1,
        "kind": "time_to_loss",
        "created_at": now_iso(),
        "host": host_info(),
        "command": " ".join([sys.executable, *sys.argv]),
        "args": {k: v for k, v in vars(args).items()},
        "presets": {},
    }
    print(describe_host(resolve_device("auto")), flush=True)  # the host class of every figure
    for preset in args.presets:
        if args.lr:
            swept: dict[str, Any] = {o: {"best_lr": args.lr[o]} for o in OPTIMIZERS}
        else:
            print(f"{preset}: lr sweep", flush=True)
            swept = sweep(args, preset)
        print(f"{preset}: arms at lr adamw {swept['adamw']['best_lr']:g}, "
              f"muon {swept['muon']['best_lr']:g}", flush=True)  # fmt: skip
        res = analyse(arms(args, preset, swept), args.target, args.arms)
        print_table(preset, swept, res)
        doc["presets"][preset] = {
            "sweep": {o: {k: v for k, v in swept[o].items() if k != "best_run"} for o in swept},
            **res,
        }
        doc["wall_seconds"] = time.perf_counter() - t0
        atomic_write_json(Path(args.out) / "time_to_loss.json", doc)
    print(f"\nwrote {Path(args.out) / 'time_to_loss.json'} ({doc['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
