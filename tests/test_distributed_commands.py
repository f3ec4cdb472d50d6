"""``bench`` and ``generate`` under torchrun: two gloo ranks on CPU write the one run directory
one process writes - the same records in the same order - and a rank that dies ends the job
cleanly, leaving a benchmark that a rerun (under any number of ranks) completes.

Tiny random Llamas answer nonsense; what is compared is the machinery (sharding, gathering,
rank 0's writing, resume), with greedy decoding so that one process and two ranks must agree.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from _helpers import char_tokenizer, save_tiny_llama
from shoestring.bench.records import sort_problem_lines
from shoestring.data.gsm8k import Problem
from test_distributed_launch import (
    LAUNCH_TIMEOUT_S,
    free_port,
    kill_tree,
    run_launchers,
    start_launcher,
    torchrun_command,
)

CHAT_TEMPLATE = (
    "{% for m in messages %}User: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
#: problems in the benchmark: several rounds of two ranks x 2 batches x 2 rows
N_PROBLEMS = 24
#: what may differ between two runs of the same problems: when and how fast they ran
TIMING_FIELDS = ("seconds",)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tok = char_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    return save_tiny_llama(tmp_path_factory.mktemp("m") / "tiny-llama", tok)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from shoestring.data.synthetic import generate_problems

    path = tmp_path_factory.mktemp("gsm") / "test.jsonl"
    rows = [
        {"question": p["question"], "answer": p["answer"]}
        for p in generate_problems(N_PROBLEMS, level=1, seed=3)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _bench_args(model: Path, data: Path, out: Path) -> list[str]:
    return [
        "bench",
        str(model),
        "--data",
        str(data),
        "--out",
        str(out),
        "--max-new-tokens",
        "24",
        "--batch-size",
        "2",
        "--dtype",
        "fp32",
        "--device",
        "cpu",
        "--threads",
        "1",
        "-q",
    ]


def _one_process(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "shoestring", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S, env=env)


def _two_ranks(args: list[str], log: Path) -> int:
    cmd = torchrun_command("--nproc_per_node=2", f"--master_port={free_port()}", "-m", "shoestring")
    return run_launchers([[*cmd, *args]], [log])[0]


def _records(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING_FIELDS} for x in lines]


@pytest.fixture(scope="module")
def one_process_bench(model: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("b") / "one"
    done = _one_process(_bench_args(model, data, out))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _problems(out: Path) -> Path:
    return out / "models" / "tiny-llama" / "problems.jsonl"


def test_bench_on_two_ranks_writes_what_one_process_writes(
    model: Path, data: Path, one_process_bench: Path, tmp_path: Path
) -> None:
    out = tmp_path / "two"
    log = tmp_path / "log.txt"
    assert _two_ranks(_bench_args(model, data, out), log) == 0, log.read_text()[-3000:]
    assert _records(_problems(out)) == _records(_problems(one_process_bench))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["world_size"] == 2
    one = json.loads((one_process_bench / "summary.json").read_text())
    assert summary["models"][0]["metrics"]["accuracy"] == one["models"][0]["metrics"]["accuracy"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.txt", "two"]  # one directory


def test_a_finished_problems_file_is_sorted_into_problem_order(tmp_path: Path) -> None:
    """One process appends lines as problems finish, rank 0 round by round; a finished file
    is rewritten in the selection's order, every line kept byte for byte (lines of problems
    not selected now, and unreadable ones, after them in their order)."""
    selected = [
        Problem(idx=i, question=f"q{i}", answer=f"#### {i}", gold=str(i)) for i in (4, 1, 7)
    ]
    lines = [
        '{"idx": 7, "response": "b"}\n',
        '{"idx": 9, "response": "from an earlier, larger --limit"}\n',
        "not json\n",
        '{"idx": 1,   "response": "spacing kept"}\n',
        '{"idx": 4, "response": "a"}\n',
    ]
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(lines), encoding="utf-8")
    sort_problem_lines(path, selected)
    assert path.read_text(encoding="utf-8") == "".join(
        [lines[4], lines[3], lines[0], lines[1], lines[2]]
    )


def test_generate_on_two_ranks_writes_what_one_process_writes(model: Path, tmp_path: Path) -> None:
    prompts = ["Question: 1+2=", "Tom has 3 apples.", "abc", "What is 7*6?", "x"]
    args = ["generate", str(model), "--max-new-tokens", "16", "--out", str(tmp_path), "-q"]
    for p in prompts:
        args += ["--prompt", p]
    one = _one_process([*args, "--name", "one"])
    assert one.returncode == 0, one.stderr[-3000:]
    log = tmp_path / "log.txt"
    assert _two_ranks([*args, "--name", "two"], log) == 0, log.read_text()[-3000:]
    assert _records(tmp_path / "two" / "generations.jsonl") == _records(
        tmp_path / "one" / "generations.jsonl"
    )
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["world_size"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.txt", "one", "two"]


def _worker(launcher: subprocess.Popen, rank: int) -> psutil.Process:
    """The launcher's worker process of ``rank`` (found by the RANK torchrun gave it)."""
    for p in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if p.environ().get("RANK") == str(rank):
                return p
        except psutil.Error:
            continue
    raise AssertionError(f"no worker of rank {rank} under launcher {launcher.pid}")


def test_a_killed_rank_fails_the_bench_cleanly_and_a_rerun_completes_it(
    model: Path, data: Path, one_process_bench: Path, tmp_path: Path
) -> None:
    out = tmp_path / "b"
    args = _bench_args(model, data, out)
    cmd = torchrun_command("--nproc_per_node=2", f"--master_port={free_port()}", "-m", "shoestring")
    log = tmp_path / "killed.txt"
    launcher = start_launcher([*cmd, *args], log)
    try:
        # once rank 0 has written the first round, freeze rank 1 (the job cannot pass the next
        # gather without it, so the kill always lands mid-run), then kill it
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while not (_problems(out).is_file() and _problems(out).read_text().strip()):
            assert launcher.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no problem was written"
            time.sleep(0.02)
        victim = _worker(launcher, 1)
        victim.send_signal(signal.SIGSTOP)
        victim.kill()
        rc = launcher.wait(timeout=120)  # a clean failure, not a hang
    except BaseException:
        kill_tree(launcher)
        raise
    assert rc != 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] in ("failed", "interrupted"), summary["status"]
    kept = _records(_problems(out))
    assert 0 < len(kept) < N_PROBLEMS
    # the rerun (here in one process: any number of ranks) answers only what is missing
    again = _one_process(args)
    assert again.returncode == 0, again.stderr[-3000:]
    records = _records(_problems(out))
    assert {r["session"] for r in records} == {0, 1}
    assert [{**r, "session": 0} for r in records] == _records(_problems(one_process_bench))
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"
