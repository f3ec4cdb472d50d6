"""More than one machine, simulated on one host: two ``torchrun`` launchers (``--nnodes=2``, one
process each) meet at a c10d rendezvous on localhost and train as one DDP job.

What it shows is the multi-machine recipe of docs/distributed.md working end to end: the
launchers find each other, the ranks share one run directory (rank 0 writes it; here both
"machines" see the same file system, as with shared storage), the run records its world size,
and the losses equal one process's at equal global batch - as tests/test_train.py asserts for
``--nproc_per_node=2``.

The launch helpers here (:func:`free_port`, :func:`run_launchers` ...) are what the other
``test_distributed_*`` modules use to start their torchrun jobs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from _helpers import TINY_TRAIN, prepare_synthetic
from shoestring.rundir.directory import read_metrics

pytestmark = pytest.mark.skipif(
    not dist.is_available() or importlib.util.find_spec("torch.distributed.run") is None,
    reason="torchrun (torch.distributed.run) is not available in this torch build",
)

#: A stuck launch is killed after this many seconds (the job itself takes well under a minute).
LAUNCH_TIMEOUT_S = 180


def free_port() -> int:
    """A TCP port nobody listens on now (for the rendezvous endpoint)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(*launcher_args: str) -> list[str]:
    """``torchrun LAUNCHER_ARGS`` as this interpreter runs it (the venv's torch)."""
    return [sys.executable, "-m", "torch.distributed.run", *launcher_args]


def kill_tree(proc: subprocess.Popen) -> None:
    """Kill a launcher and its workers (which torchrun puts in sessions of their own)."""
    import psutil

    with contextlib.suppress(psutil.Error):
        launcher = psutil.Process(proc.pid)
        for p in [*launcher.children(recursive=True), launcher]:
            with contextlib.suppress(psutil.Error):
                p.kill()
    proc.wait(timeout=30)


def start_launcher(command: list[str], log: Path) -> subprocess.Popen:
    """Start one launcher (one thread per rank), its output and its workers' into ``log``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    with log.open("w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)


def run_launchers(
    commands: list[list[str]], logs: list[Path], timeout: float = LAUNCH_TIMEOUT_S
) -> list[int]:
    """Start every launcher at once, wait for all; their exit codes.

    A launch still running after ``timeout`` seconds is a hang: every launcher is killed and
    the test fails with the end of each log (a stuck job must not stall the suite).
    """
    procs = [start_launcher(cmd, log) for cmd, log in zip(commands, logs, strict=True)]
    codes: list[int] = []
    try:
        for p in procs:
            codes.append(p.wait(timeout=timeout))
    except subprocess.TimeoutExpired:
        for p in procs:
            kill_tree(p)
        tails = "\n".join(f"--- {log}\n{log.read_text()[-3000:]}" for log in logs)
        pytest.fail(f"torchrun launch hung for {timeout} s; killed. Logs:\n{tails}")
    return codes


def _train_args(data: Path, out: Path, name: str, *extra: str) -> list[str]:
    args = ["train", "--data", str(data), "--out", str(out), "--name", name, "-q"]
    for o in (*TINY_TRAIN, *extra):
        args += ["--set", o]
    return args


#: a few steps, one evaluation at the end; the global batch is 8 sequences
_STEPS = (
    "train.max_steps=4",
    "train.eval_every=4",
    "train.eval_batches=2",
    "train.warmup_steps=2",
)


def test_two_nodes_on_one_host_train_like_one_process(tmp_path: Path) -> None:
    data = prepare_synthetic(tmp_path / "data", problems=300)
    out = tmp_path / "runs"
    single = subprocess.run(
        [sys.executable, "-m", "shoestring", *_train_args(data, out, "one", *_STEPS)],
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT_S,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert single.returncode == 0, single.stderr[-2000:]

    # two "machines": one launcher each, meeting at a c10d rendezvous (the first to arrive
    # hosts the store); 4 sequences per rank = the single run's global batch of 8
    endpoint = f"127.0.0.1:{free_port()}"
    job = _train_args(data, out, "two", *_STEPS, "train.batch_size=4")
    commands = [
        torchrun_command(
            "--nnodes=2",
            "--nproc_per_node=1",
            f"--node_rank={node}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={endpoint}",
            "--rdzv_id=two-node-test",
            "-m",
            "shoestring",
            *job,
        )
        for node in (0, 1)
    ]
    logs = [tmp_path / f"node{node}.log" for node in (0, 1)]
    codes = run_launchers(commands, logs)
    assert codes == [0, 0], "\n".join(log.read_text()[-3000:] for log in logs)

    # one run directory for the job, written once (no per-rank copies)
    assert sorted(p.name for p in out.iterdir()) == ["one", "two"]
    one = json.loads((out / "one" / "summary.json").read_text())
    two = json.loads((out / "two" / "summary.json").read_text())
    assert two["status"] == "finished" and two["world_size"] == 2
    assert two["tokens"] == one["tokens"]
    losses_one = [m["loss"] for m in read_metrics(out / "one") if "loss" in m]
    losses_two = [m["loss"] for m in read_metrics(out / "two") if "loss" in m]
    assert len(losses_two) == 4
    assert losses_two == pytest.approx(losses_one, rel=1e-4)
    assert two["final_val_loss"] == pytest.approx(one["final_val_loss"], rel=1e-4)


@pytest.mark.slow
def test_processes_vs_threads_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/processes_vs_threads.py end to end on a tiny shape (a user-facing script:
    this keeps it from rotting); its figures are printed, never asserted."""
    bench_dir = Path(__file__).resolve().parents[1] / "benchmarks"
    spec = importlib.util.spec_from_file_location("pvt", bench_dir / "processes_vs_threads.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    args = ["--workloads", "train", "grpo", "--shape", "tiny", "--steps", "2", "--rounds", "1"]
    args += ["--prompts-per-step", "2", "--num-generations", "2", "--max-new-tokens", "8"]
    args += ["--questions", "synthetic"]
    assert module.main([*args, "--seq-len", "16", "--global-batch", "4"]) == 0
    out = capsys.readouterr().out
    assert any(line.startswith("host class ") for line in out.splitlines()[:3])
    for layout in ("1 process x 1 thread", "1 process x 2 threads", "2 processes x 1 thread"):
        assert f"| {layout} |" in out
    assert "grpo: layout" in out and "train: layout" in out
