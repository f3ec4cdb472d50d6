"""The run directory's writer lock: a second writer refused, stale locks taken over, released
on every exit; and failed commands leave a complete directory that compare reads."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _helpers import prepare_synthetic
from shoestring.errors import RunDirLockedError
from shoestring.rundir.directory import RunDir, read_json
from shoestring.rundir.lifecycle import RunLifecycle
from shoestring.rundir.lock import LOCK_NAME

TINY = [
    "model.d_model=64",
    "model.n_layers=2",
    "model.n_heads=2",
    "model.d_ff=128",
    "train.seq_len=32",
    "train.batch_size=8",
    "train.threads=1",
    "train.dtype=fp32",
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_synthetic(tmp_path_factory.mktemp("data") / "synthetic")


def _train_cmd(data: Path, out: Path, name: str, *extra: str) -> list[str]:
    args = [sys.executable, "-m", "shoestring", "train", "--data", str(data)]
    args += ["--out", str(out), "--name", name]
    for o in (*TINY, *extra):
        args += ["--set", o]
    return args


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# A first writer that holds a run directory the way every command does (RunDir inside the
# lifecycle), without the seconds a real training start costs on a busy host.
HOLDER = """
import sys, time
from shoestring.rundir.lifecycle import RunLifecycle
from shoestring.rundir.directory import RunDir
rd = RunDir(sys.argv[1], "train", echo=False)
with RunLifecycle(rd, config={"train": {"max_steps": 10}}):
    print("holding", flush=True)
    time.sleep(900)  # until the test stops it with SIGTERM
"""


def test_second_writer_refused_while_the_first_runs(tmp_path: Path) -> None:
    run = tmp_path / "r"
    first = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "holding"
        log_before = (run / "log.txt").read_text()
        # -X importtime: the refusal comes from the command line, before torch is loaded
        second = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "shoestring", "train", "--resume", str(run)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        imported = [x for x in lines if x.startswith("import time:")]
        assert imported and not any(x.split("|")[-1].strip() == "torch" for x in imported)
        err = "\n".join(x for x in lines if not x.startswith("import time:"))
        assert "in use by another shoestring process" in err, err
        assert f"pid {first.pid} on host {socket.gethostname()}" in err
        assert "since 20" in err and "running `" in err
        assert "Traceback" not in err and len(err.splitlines()) == 1
        # grpo --resume is refused the same way
        grpo = subprocess.run(
            [sys.executable, "-m", "shoestring", "grpo", "--resume", str(run)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert grpo.returncode == 2 and "in use by another shoestring process" in grpo.stderr
        # the refused writers touched nothing: no new log line, the summary still the first's
        assert (run / "log.txt").read_text() == log_before
        assert read_json(run / "summary.json")["status"] == "running"
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
    assert read_json(run / "summary.json")["status"] == "interrupted"
    assert not (run / LOCK_NAME).exists()  # released on the way out


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    holder = {
        "pid": _dead_pid(),
        "host": socket.gethostname(),
        "process_started": 1.0,
        "locked_at": "2026-01-01T00:00:00+00:00",
        "command": "shoestring train --out runs",
    }
    (run / LOCK_NAME).write_text(json.dumps(holder))
    rd = RunDir(run, "train", echo=False)
    try:
        log = (run / "log.txt").read_text()
        assert "took over the stale lock" in log and f"pid {holder['pid']}" in log
        assert "no longer running" in log
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        rd.close()
    assert not (run / LOCK_NAME).exists()


def test_lock_released_on_failure_and_reopened(tmp_path: Path) -> None:
    run = tmp_path / "r"
    rd = RunDir(run, "bench", echo=False)
    with pytest.raises(RunDirLockedError, match="already open for writing in this process"):
        RunDir(run, "bench", echo=False)
    with pytest.raises(ValueError), RunLifecycle(rd, config={"a": 1}):
        raise ValueError("boom")
    s = read_json(run / "summary.json")
    assert s["status"] == "failed" and s["error"] == "ValueError: boom"
    RunDir(run, "bench", echo=False).close()  # the lock was released by the lifecycle


def test_failure_before_the_lifecycle_leaves_a_failed_summary(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from shoestring.cli import main
    from shoestring.compare.run import compare

    def train(data: Path, name: str, *extra: str) -> int:
        args = ["train", "--data", str(data), "--out", str(tmp_path), "--name", name]
        for o in (*TINY, *extra):
            args += ["--set", o]
        return main(args)

    # a train whose data is missing fails after its run directory was opened
    assert train(tmp_path / "no-such-data", "nodata") == 2
    err = capsys.readouterr().err
    assert "no-such-data" in err and "Traceback" not in err
    s = read_json(tmp_path / "nodata" / "summary.json")
    assert s["status"] == "failed" and "no-such-data" in s["error"]
    assert s["kind"] == "train" and "host" in s and "versions" in s
    assert (tmp_path / "nodata" / "config.json").is_file()
    assert not (tmp_path / "nodata" / LOCK_NAME).exists()
    # --device cuda on a CPU-only host: refused before a directory exists (or a failed one)
    if not torch.cuda.is_available():
        assert train(prepared, "cuda", "train.device=cuda") == 2
        assert "no CUDA device" in capsys.readouterr().err
        cuda_dir = tmp_path / "cuda"
        assert not cuda_dir.exists() or read_json(cuda_dir / "summary.json")["status"] == "failed"
    # compare reads the parent and shows the failed run as failed
    _, data = compare([tmp_path], None)
    assert {r["label"]: r["status"] for r in data["runs"]}["nodata"] == "failed"


def test_bench_early_failure_leaves_a_failed_summary(tmp_path: Path) -> None:
    from shoestring.cli import main

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = tmp_path / "bench"
    assert main(["bench", str(tmp_path), "--data", str(empty), "--out", str(out)]) == 2
    s = read_json(out / "summary.json")
    assert s["status"] == "failed" and "no valid GSM8K problems" in s["error"]
    assert not (out / LOCK_NAME).exists()


def test_compare_shows_bare_failed_runs_of_every_kind(tmp_path: Path) -> None:
    from shoestring.compare.run import compare

    for kind in ("train", "bench", "grpo", "progressive", "study", "analysis"):
        (tmp_path / kind).mkdir()
        failed = {"schema_version": 1, "kind": kind, "status": "failed", "error": "boom"}
        (tmp_path / kind / "summary.json").write_text(json.dumps(failed))
    report, data = compare([tmp_path], None)
    assert {r["status"] for r in data["runs"]} == {"failed"} and len(data["runs"]) == 6
    assert sum("failed: boom" in f.text for f in report.findings) == 6


def test_compare_names_a_killed_writer(tmp_path: Path) -> None:
    from shoestring.report.kinds import load_run

    run = tmp_path / "r"
    run.mkdir()
    running = {"schema_version": 1, "kind": "bench", "status": "running"}
    (run / "summary.json").write_text(json.dumps(running))
    pid = _dead_pid()
    holder = {"pid": pid, "host": socket.gethostname(), "process_started": 1.0}
    (run / LOCK_NAME).write_text(json.dumps(holder))  # what a SIGKILL leaves behind
    assert load_run(run).status_text() == f"running (its process {pid} is gone: killed)"
    holder = {"pid": os.getpid(), "host": socket.gethostname()}
    (run / LOCK_NAME).write_text(json.dumps(holder))  # a live writer
    assert load_run(run).status_text() == "running"


def test_a_signal_in_a_step_loop_stops_it_at_the_next_step_boundary() -> None:
    import os
    import signal

    from shoestring.rundir.lifecycle import StepBoundaryInterrupts

    before = signal.getsignal(signal.SIGINT)
    steps_finished = 0
    with pytest.raises(KeyboardInterrupt), StepBoundaryInterrupts() as interrupts:
        for _ in range(3):
            interrupts.check()
            os.kill(os.getpid(), signal.SIGINT)  # lands mid-step: the step still finishes
            steps_finished += 1
    assert steps_finished == 1 and interrupts.requested == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is before  # the handlers are put back
    # a second signal does not wait for the step to end
    with pytest.raises(KeyboardInterrupt), StepBoundaryInterrupts():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        raise AssertionError("not reached: the second signal raises at once")


def test_lifecycle_runs_finalizers_after_the_final_summary_and_survives_one_failing(
    tmp_path, capsys
):
    from shoestring.rundir.directory import RunDir, read_json
    from shoestring.rundir.lifecycle import RunLifecycle

    seen = []

    def broken(path):
        raise OSError("disk full")

    def record(path):
        seen.append(read_json(path / "summary.json")["status"])

    with RunLifecycle(
        RunDir(tmp_path / "r", "test"), config={}, finalizers=[broken, record]
    ) as life:
        pass
    assert seen == ["finished"]  # ran after the final summary, despite the one before failing
    assert life.finalizer_failures == ["broken"]
    assert "broken could not finish" in capsys.readouterr().err
    assert read_json(tmp_path / "r" / "summary.json")["status"] == "finished"
