"""The ``noise`` rule for losses and speed-ups: training runs, studies, hybrid benchmarks.

Why: a validation-loss gap means nothing until it is set against the spread over seeds. With
repeated seeds the gap gets Welch's t-test; without, the seed spread a study measured on the
same data; without that, a note that the spread is unknown. A hybrid speed-up whose interval over
seeds includes 1.0 is not a speed-up.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from shoestring.report.blocks import Finding
from shoestring.report.findings.common import cap_findings
from shoestring.report.findings.comparability import data_key
from shoestring.report.kinds import TRAINING_KINDS, RunInfo, flatten
from shoestring.util.stats import format_p, welch_t_test

__all__ = ["hybrid_benchmark_findings", "study_noise_findings", "val_loss_noise_findings"]


_SEED_KEYS = {"train.seed", "seed"}


def _config_key(r: RunInfo) -> str:
    flat = {k: v for k, v in flatten(r.config).items() if k not in _SEED_KEYS}
    return json.dumps(flat, sort_keys=True, default=str)


def _study_seed_std(runs: list[RunInfo], data_path: Any) -> tuple[float, str] | None:
    """The median seed std of a study trained on the same data as the runs compared, if any:
    a seed spread measured on other data says nothing about these runs."""
    for r in runs:
        if r.kind != "study":
            continue
        spec = r.config.get("spec") if isinstance(r.config.get("spec"), dict) else r.config
        sdata = spec.get("data") if isinstance(spec, dict) else None
        if (
            not sdata
            or data_path is None
            or Path(str(sdata)).resolve() != Path(str(data_path)).resolve()
        ):
            continue
        stds = sorted(
            float(row["val_loss_std"])
            for row in (r.extra.get("results") or {}).get("summary", [])
            if row.get("val_loss_std") is not None
        )
        if stds:
            return stds[len(stds) // 2], f"the median seed std of study `{r.label}`, same data"
    return None


def val_loss_noise_findings(runs: list[RunInfo]) -> list[Finding]:
    """Validation-loss differences against the spread over seeds, where it was measured."""
    tr = [
        r
        for r in runs
        if r.kind in TRAINING_KINDS and r.finished and r.summary.get("final_val_loss") is not None
    ]
    if len(tr) < 2:
        return []
    groups: dict[str, list[RunInfo]] = {}
    for r in tr:
        groups.setdefault(_config_key(r), []).append(r)
    glist = list(groups.values())
    out: list[Finding] = []
    multi = [g for g in glist if len(g) >= 2]
    ref: tuple[float, str] | None = None
    if multi:
        sds = []
        for g in multi:
            vals = [float(x.summary["final_val_loss"]) for x in g]
            m = sum(vals) / len(vals)
            sds.append((sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5)
        ref = (max(sds), "the largest seed std among these runs' repeated configurations")
    else:
        ref = _study_seed_std(runs, data_key(tr[0])["data"])

    def name(g: list[RunInfo]) -> str:
        return ", ".join(f"`{x.label}`" for x in g)

    pairs = [
        (ga, gb)
        for ga, gb in itertools.combinations(glist, 2)
        # the comparable rule already says runs on other data or tokenizers do not compare
        if data_key(ga[0])["data"] == data_key(gb[0])["data"]
        and data_key(ga[0])["vocab"] == data_key(gb[0])["vocab"]
    ]
    for ga, gb in pairs:
        va = [float(x.summary["final_val_loss"]) for x in ga]
        vb = [float(x.summary["final_val_loss"]) for x in gb]
        ma, mb = sum(va) / len(va), sum(vb) / len(vb)
        gap = abs(ma - mb)
        wt = welch_t_test(va, vb)
        if wt is not None:
            sig = wt.p < 0.05
            out.append(
                Finding(
                    "noise",
                    "info" if sig else "caution",
                    f"final val loss {name(ga)} {ma:.4f} (n={len(va)}) vs {name(gb)} "
                    f"{mb:.4f} (n={len(vb)}): gap {gap:.4f}, Welch t-test "
                    f"p={format_p(wt.p)} - "
                    + ("a real difference over seeds." if sig else "within seed noise."),
                    [x.label for x in ga + gb],
                    {"gap": gap, "p_value": wt.p},
                )
            )
        elif ref is not None:
            std, where = ref
            within = gap < 2 * std
            out.append(
                Finding(
                    "noise",
                    "caution" if within else "info",
                    f"final val loss {name(ga)} {ma:.4f} vs {name(gb)} {mb:.4f}: gap "
                    f"{gap:.4f} is {'less' if within else 'more'} than twice the seed "
                    f"std {std:.4f} ({where})" + (" - within noise." if within else "."),
                    [x.label for x in ga + gb],
                    {"gap": gap, "seed_std": std},
                )
            )
    if ref is None and not multi and pairs:
        gaps = sorted(
            abs(float(a[0].summary["final_val_loss"]) - float(b[0].summary["final_val_loss"]))
            for a, b in pairs
        )
        out.append(
            Finding(
                "noise",
                "info",
                f"Each configuration ran with one seed, so the spread of the "
                f"validation loss over seeds is unknown: the gaps between runs "
                f"({gaps[0]:.4f} to {gaps[-1]:.4f}) cannot be told from seed noise. "
                "Repeat runs with other train.seed values to measure it.",
                [r.label for r in tr],
                {"gaps": gaps},
            )
        )
    return cap_findings(out, "validation-loss")


def hybrid_benchmark_findings(runs: list[RunInfo]) -> list[Finding]:
    """A speed-up whose 95% interval over seeds includes 1, or overlapping loss intervals."""
    out = []
    for r in runs:
        if r.kind != "hybrid_benchmark":
            continue
        table = (r.extra.get("benchmark") or {}).get("table") or []
        rows = {row.get("arm"): row for row in table if isinstance(row, dict)}
        for arm, row in rows.items():
            sp = row.get("speedup_vs_baseline")
            if arm == "baseline" or not isinstance(sp, dict) or sp.get("mean") is None:
                continue
            lo, hi = sp.get("ci_low"), sp.get("ci_high")
            if lo is None:
                out.append(
                    Finding(
                        "noise",
                        "info",
                        f"`{r.label}`: `{arm}` speed-up {sp['mean']:.3f}x over the "
                        f"baseline from {sp.get('n')} seed(s): no interval, so it "
                        "cannot be told from seed noise.",
                        [r.label],
                        sp,
                    )
                )
            elif lo <= 1.0 <= hi:
                out.append(
                    Finding(
                        "noise",
                        "caution",
                        f"`{r.label}`: `{arm}` speed-up {sp['mean']:.3f}x "
                        f"[{lo:.3f}, {hi:.3f}] (95% t-interval over {sp.get('n')} "
                        "seeds) includes 1.0: no speed-up beyond seed noise.",
                        [r.label],
                        sp,
                    )
                )
    return out


def study_noise_findings(runs: list[RunInfo]) -> list[Finding]:
    out = []
    for r in runs:
        if r.kind != "study":
            continue
        rows = (r.extra.get("results") or {}).get("summary", [])
        within, small = [], []
        for row in rows:
            name = f"{row.get('size')}/{row.get('variant')}"
            p = row.get("p_vs_baseline")
            if p is None and row.get("note") and "baseline" not in str(row["note"]):
                small.append(f"{name} ({row['note']})")
            elif p is not None and p >= 0.05:
                within.append(f"{name} (p={format_p(float(p))})")
        if within:
            out.append(
                Finding(
                    "noise",
                    "caution",
                    f"study `{r.label}`: {len(within)} configuration(s) do not differ "
                    "from the baseline beyond seed noise (Welch t-test over seeds): "
                    + ", ".join(within)
                    + ".",
                    [r.label],
                    {"configs": within},
                )
            )
        if small:
            out.append(
                Finding(
                    "noise",
                    "info",
                    f"study `{r.label}`: no test possible for "
                    + ", ".join(small)
                    + "; run more seeds to compare them.",
                    [r.label],
                    {},
                )
            )
    return out
