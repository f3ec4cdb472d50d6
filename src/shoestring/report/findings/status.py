"""The ``status`` rule: runs that are not results, or did not run as asked.

Why: a run that is still running, failed, was interrupted or pruned has numbers that are not
results; a run that fell back to another device or dtype, backed off its batch after an OOM, or
shared a busy host measured something other than what its configuration says.
"""

from __future__ import annotations

from typing import Any

from shoestring.report.blocks import Finding
from shoestring.report.kinds import RunInfo

__all__ = ["status_findings"]


def _asked(run: RunInfo) -> tuple[Any, Any]:
    """(device, dtype) the run was asked for, from its config."""
    c = run.config
    train = c.get("train") if isinstance(c.get("train"), dict) else {}
    return (train.get("device", c.get("device")), train.get("dtype", c.get("dtype")))


def _norm_device(d: Any) -> str:
    s = str(d or "").lower()
    return "cuda" if s.startswith("cuda") else s


def status_findings(runs: list[RunInfo]) -> list[Finding]:
    out = []
    busy: list[tuple[str, float, float]] = []
    for r in runs:
        st = r.status
        if st == "running":
            out.append(
                Finding(
                    "status",
                    "warning",
                    f"`{r.label}` ({r.kind}) is {r.status_text()}: its numbers are "
                    "partial and are not shown as results.",
                    [r.label],
                    {"status": st, "idle_seconds": r.idle_seconds},
                )
            )
        elif st == "failed":
            err = str(r.summary.get("error") or "no error recorded")
            out.append(
                Finding(
                    "status",
                    "warning",
                    f"`{r.label}` ({r.kind}) failed: {err}. Its numbers are not results.",
                    [r.label],
                    {"status": st},
                )
            )
        elif st in ("interrupted", "pruned"):
            why = r.summary.get("error")
            out.append(
                Finding(
                    "status",
                    "warning" if st == "interrupted" else "info",
                    f"`{r.label}` ({r.kind}) was {r.status_text()}"
                    + (f": {why}" if why else "")
                    + "; it is listed apart from the finished runs.",
                    [r.label],
                    {"status": st},
                )
            )
        elif st != "finished":
            out.append(
                Finding(
                    "status",
                    "warning",
                    f"`{r.label}` ({r.kind}) has status '{st}'.",
                    [r.label],
                    {"status": st},
                )
            )
        # asked vs ran
        asked_dev, asked_dtype = _asked(r)
        rt = r.summary.get("runtime") or {}
        ran_dev, ran_dtype = rt.get("device"), rt.get("dtype")
        if (
            asked_dev
            and asked_dev != "auto"
            and ran_dev
            and (_norm_device(asked_dev) != _norm_device(ran_dev))
        ):
            out.append(
                Finding(
                    "status",
                    "warning",
                    f"`{r.label}` was asked to run on {asked_dev} but ran on "
                    f"{ran_dev}: it fell back to another device, so its speed is "
                    "not the speed of the device asked for.",
                    [r.label],
                    {"asked": asked_dev, "ran": ran_dev},
                )
            )
        if asked_dtype and asked_dtype != "auto" and ran_dtype and asked_dtype != ran_dtype:
            out.append(
                Finding(
                    "status",
                    "warning",
                    f"`{r.label}` asked for dtype {asked_dtype} but ran in {ran_dtype}.",
                    [r.label],
                    {"asked": asked_dtype, "ran": ran_dtype},
                )
            )
        for m in r.summary.get("models", []) if r.kind == "bench" else []:
            if m.get("complete") is False:
                out.append(
                    Finding(
                        "status",
                        "warning",
                        f"bench `{r.label}`: model `{m.get('label')}` scored only "
                        f"{m.get('metrics', {}).get('n')} of "
                        f"{r.summary.get('data', {}).get('n_selected')} problems.",
                        [r.label],
                        {},
                    )
                )
            if (
                m.get("device")
                and asked_dev not in (None, "auto")
                and _norm_device(m["device"]) != _norm_device(asked_dev)
            ):
                out.append(
                    Finding(
                        "status",
                        "warning",
                        f"bench `{r.label}`: `{m.get('label')}` ran on "
                        f"{m['device']}, asked {asked_dev}.",
                        [r.label],
                        {},
                    )
                )
        ooms = r.summary.get("oom_events") or []
        if ooms:
            first = ooms[0]
            out.append(
                Finding(
                    "status",
                    "info",
                    f"`{r.label}` ran out of memory {len(ooms)} time(s) and backed off "
                    f"its micro-batch (first at step {first.get('step')}: "
                    f"{first.get('from')} -> {first.get('to')}); its throughput is "
                    "that of the smaller micro-batch.",
                    [r.label],
                    {"oom_events": len(ooms)},
                )
            )
        system = r.summary.get("system") or {}
        host, own = system.get("host_cpu_percent_mean"), system.get("cpu_percent_mean")
        if host is not None and own is not None and host - own > 25:
            busy.append((r.label, float(host), float(own)))
    if busy:
        out.append(
            Finding(
                "status",
                "caution",
                "Other processes competed for the CPU while "
                + ", ".join(
                    f"`{b[0]}` ran (host {b[1]:.0f}% busy, the run {b[2]:.0f}%)" for b in busy
                )
                + ": their speeds are lower than this host can do and compare only with runs "
                "under the same load.",
                [b[0] for b in busy],
                {"busy": [{"run": b[0], "host_cpu": b[1], "run_cpu": b[2]} for b in busy]},
            )
        )
    return out
