"""Local worker processes: ``search --workers N`` starts N ``search --join`` children.

Each child is an ordinary joining worker (the same command a second machine runs), so the
storage is the only thing they share; the parent only watches the study's progress.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from shoestring.rundir.lifecycle import RunLifecycle
from shoestring.search.spec import StudySpec
from shoestring.search.worker import progress_of
from shoestring.util.progress import progress_bar

__all__ = ["spawn_workers", "wait_workers"]


def spawn_workers(
    n: int, study_dir: Path, url: str, name: str, args: dict[str, Any]
) -> list[subprocess.Popen]:
    """``n`` worker processes joining the study, each logging to ``worker-I.log``."""
    procs = []
    for i in range(n):
        cmd = [
            sys.executable,
            "-m",
            "shoestring",
            "search",
            "--join",
            name,
            "--storage",
            url,
            "--out",
            str(study_dir),
            "--worker-id",
            f"{args['worker_id']}-w{i}",  # the spawner's unique name: unique across spawners
            "--heartbeat",
            str(args["heartbeat"]),
            "--threads",
            str(args["threads"]),
            "--no-bar",
        ]
        if args.get("data"):
            cmd += ["--data", args["data"]]
        if not args.get("isolate", True):
            cmd.append("--no-isolate")
        log = open(study_dir / f"worker-{i}.log", "a", encoding="utf-8")  # noqa: SIM115
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        log.close()
    return procs


def wait_workers(
    procs: list[subprocess.Popen], study: Any, spec: StudySpec, progress: bool
) -> None:
    """Wait for the workers, with one progress bar over the study; on Ctrl-C give them a
    minute to put their trials back (they got the same signal), then terminate them."""
    state = progress_of(study, spec)
    bar = progress_bar(
        total=state.total,
        initial=state.done,
        unit="trial",
        desc="search",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.5 if sys.stderr.isatty() else 30.0,
    )
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(0.5)
            done = progress_of(study, spec).done
            if done != bar.n:
                bar.n = done
                bar.refresh()
    except KeyboardInterrupt:
        RunLifecycle.responded()  # heard: waiting for the workers to requeue is cleanup
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.terminate()
        raise
    finally:
        bar.close()
