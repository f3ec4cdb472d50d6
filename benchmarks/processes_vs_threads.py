"""Processes against threads, measured: the same job as 1 process x 1 thread, 1 process x 2
threads and 2 processes x 1 thread (``torchrun --nproc_per_node=2``, ``OMP_NUM_THREADS=1``).

Why: on a many-core CPU a small batch does not keep many threads busy, while N processes each
keep their own share busy; which one wins, and by how much, is a measurement, not a guess.
Every layout runs the real command (``shoestring train``, ``grpo`` or ``bench``, under
``torchrun`` for the multi-process layouts) on the same work - train's global batch, GRPO's
prompts x completions per step, bench's problems - so only how it is spread over the cores
changes. The layouts run round-robin
(``--rounds``), so a noisy shared machine slows each alike; each figure is the median.

Reported per layout: seconds per train or GRPO step or per bench problem (from the run's own
records: training or generation time only, not start-up, model loading, evaluation or
saving), tokens per second, the speed-up over 1 process x 1 thread and the scaling efficiency
(speed-up / cores used; 100% = perfect).

Shapes: ``tiny`` (for tests), ``small`` (hidden 256, 4 layers, 4 heads, intermediate 704: a
quick run) or ``qwen0.5b`` (Qwen2.5-0.5B: hidden 896, 24 layers, 14 heads, 2 KV heads,
intermediate 4864, vocab 151936). ``bench`` and ``grpo`` run a random-weight Qwen2 of the
shape (GRPO: LoRA r16 as docs/grpo.md's recipe - ``--lora-rank 0`` for a full fine-tune,
whose Adam state at the 0.5B shape is 8 GB per process - fp32, sampled at temperature 1, TRL's
default ``dapo`` loss);
``train`` runs the shoestring GPT of its body (no KV-head grouping; its vocabulary comes from
the prepared data).

    python benchmarks/processes_vs_threads.py --shape small --steps 6 --rounds 2
    python benchmarks/processes_vs_threads.py --shape qwen0.5b --workloads grpo bench \
        --steps 3 --rounds 1
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: the model shapes a run can ask for (Qwen2 field names; train maps them to its GPT's)
SHAPES: dict[str, dict[str, int]] = {
    "tiny": {"hidden": 32, "intermediate": 64, "layers": 1, "heads": 2, "kv_heads": 1},
    "small": {"hidden": 256, "intermediate": 704, "layers": 4, "heads": 4, "kv_heads": 2},
    "qwen0.5b": {"hidden": 896, "intermediate": 4864, "layers": 24, "heads": 14, "kv_heads": 2},
}
#: the vocabulary of the bench workload's random Qwen2 per shape (the head's width is cost)
VOCAB = {"tiny": 600, "small": 2048, "qwen0.5b": 151936}


@dataclass(frozen=True)
class Layout:
    """How a job is spread over the cores: ``procs`` ranks of ``threads`` threads each."""

    procs: int
    threads: int

    @property
    def name(self) -> str:
        procs = f"{self.procs} process" + ("es" if self.procs > 1 else "")
        return f"{procs} x {self.threads} thread" + ("s" if self.threads > 1 else "")

    @property
    def cores(self) -> int:
        return self.procs * self.threads


#: the baseline first: every speed-up is against it
LAYOUTS = (Layout(1, 1), Layout(1, 2), Layout(2, 1))


@dataclass
class Measurement:
    """One run of a workload in one layout; an item is what the workload counts per ``per``
    (a training step, a benchmark problem)."""

    seconds_per_item: float
    units_per_second: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shoestring_command(layout: Layout, args: list[str]) -> list[str]:
    """``shoestring ARGS`` in one process, or under torchrun with ``layout.procs`` ranks."""
    if layout.procs == 1:
        return [sys.executable, "-m", "shoestring", *args]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={layout.procs}",
        f"--master_port={free_port()}",
        "-m",
        "shoestring",
        *args,
    ]


def run_command(cmd: list[str], layout: Layout, log: Path) -> None:
    """Run ``cmd`` with ``layout.threads`` threads per process; its output goes to ``log``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(layout.threads), "MKL_NUM_THREADS": "1"}
    with log.open("w") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"{shlex.join(cmd)} failed (exit {rc}); end of {log}:\n{tail}")


# ----------------------------------------------------------------------------- workloads


@dataclass
class TrainWorkload:
    """``shoestring train``: the GPT at the shape, on prepared synthetic math, fp32."""

    shape: dict[str, int]
    steps: int
    global_batch: int
    seq_len: int
    work: Path
    unit: str = "tokens/s"
    per: str = "step"

    def prepare(self) -> None:
        from shoestring.data import text

        text.run(None, self.work / "data", vocab_size=1000, synthetic=1000, quiet=True)

    def run(self, layout: Layout, name: str) -> Measurement:
        s = self.shape
        sets = {
            "model.d_model": s["hidden"],
            "model.n_layers": s["layers"],
            "model.n_heads": s["heads"],
            "model.d_ff": s["intermediate"],
            "train.seq_len": self.seq_len,
            # the global batch is fixed: each of N ranks takes its 1/N
            "train.batch_size": self.global_batch // layout.procs,
            "train.max_steps": self.steps,
            "train.eval_every": self.steps,
            "train.eval_batches": 1,
            "train.warmup_steps": 1,
            "train.log_every": 1,
            "train.threads": layout.threads,
            "train.dtype": "fp32",
            "train.compile": "off",
        }
        out = self.work / "runs"
        args = ["train", "--data", str(self.work / "data"), "--out", str(out), "--name", name]
        args += ["-q", *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]]
        run_command(shoestring_command(layout, args), layout, self.work / f"{name}.log")
        return _train_measurement(out / name)


def _train_measurement(run: Path) -> Measurement:
    """s/step over the steps after the first (warm-up), from metrics.jsonl's cumulative
    training time; tokens/s over the same steps (tokens are global, all ranks)."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    first, last = steps[0], steps[-1]
    seconds = last["train_seconds"] - first["train_seconds"]
    n = last["step"] - first["step"]
    tokens = last["tokens"] - first["tokens"]
    return Measurement(seconds / n, tokens / seconds)


def prepare_qwen2(work: Path, shape: dict[str, int], vocab: int, questions: str, n: int) -> Path:
    """``n`` questions as ``work/problems.jsonl`` (returned) and a random-weight Qwen2 of
    ``shape`` with a BPE tokenizer trained on them in ``work/model`` (grpo_vs_trl's builders)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from grpo_vs_trl import build_model, build_tokenizer, load_questions

    rows = load_questions(questions, n)
    data = work / "problems.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tok = build_tokenizer(work / "model", min(vocab, 2048), rows)
    build_model(work / "model", tok, argparse.Namespace(**shape, vocab=vocab))
    return data


@dataclass
class BenchWorkload:
    """``shoestring bench``: a random-weight Qwen2 of the shape (it never emits EOS, so every
    answer runs the full ``max_new_tokens``: the same work in every layout) on GSM8K chat-cot
    prompts; tokens/s over the generation time, all ranks together."""

    shape: dict[str, int]
    vocab: int
    problems: int
    max_new_tokens: int
    questions: str
    work: Path
    unit: str = "tokens/s"
    per: str = "problem"

    def prepare(self) -> None:
        self.data = prepare_qwen2(self.work, self.shape, self.vocab, self.questions, self.problems)

    def run(self, layout: Layout, name: str) -> Measurement:
        out = self.work / name
        args = ["bench", str(self.work / "model"), "--data", str(self.data), "--out", str(out)]
        args += ["--limit", str(self.problems), "--max-new-tokens", str(self.max_new_tokens)]
        args += ["--protocol", "chat-cot", "--dtype", "fp32", "--device", "cpu", "-q"]
        args += ["--threads", str(layout.threads)]
        run_command(shoestring_command(layout, args), layout, self.work / f"{name}.log")
        metrics = json.loads((out / "summary.json").read_text())["models"][0]["metrics"]
        seconds = metrics["generation_seconds"]
        return Measurement(seconds / self.problems, metrics["generated_tokens"] / seconds)


@dataclass
class GrpoWorkload:
    """``shoestring grpo``: a random-weight Qwen2 of the shape, ``prompts`` GSM8K prompts x
    ``generations`` completions of ``max_new_tokens`` per step (a random model rarely ends
    early), whole groups dealt over the ranks; s/step from the run's ``step_seconds``
    (generation, scoring and backward), tokens/s = completion tokens generated per second
    of step."""

    shape: dict[str, int]
    vocab: int
    prompts: int
    generations: int
    max_new_tokens: int
    steps: int
    lora_rank: int
    questions: str
    work: Path
    unit: str = "tokens/s"
    per: str = "step"

    def prepare(self) -> None:
        n = max(self.prompts * self.steps, 16)
        self.data = prepare_qwen2(self.work, self.shape, self.vocab, self.questions, n)

    def run(self, layout: Layout, name: str) -> Measurement:
        out = self.work / name
        sets = {
            "model_name_or_path": self.work / "model",
            "dataset": f"gsm8k:{self.data}",
            "protocol": "qa",
            "stop_strings": "[]",
            "rewards": '["correctness"]',
            "num_generations": self.generations,
            # the global batch: prompts x generations per step, whatever the ranks
            "per_device_train_batch_size": self.generations,
            "gradient_accumulation_steps": self.prompts,
            "max_completion_length": self.max_new_tokens,
            "max_steps": self.steps,
            "lora_rank": self.lora_rank,
            "learning_rate": 1e-6,
            "temperature": 1.0,
            "dtype": "fp32",
            "device": "cpu",
            "threads": layout.threads,
            "save_steps": 100000,
            "log_completions_steps": 0,
            "output_dir": out,
        }
        args = ["grpo", "-q", *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]]
        run_command(shoestring_command(layout, args), layout, self.work / f"{name}.log")
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in rows if "step_seconds" in r][1:]  # the first step warms up
        seconds = statistics.mean(r["step_seconds"] for r in steps)
        tokens = statistics.mean(
            r["completion_length_mean"] * self.prompts * self.generations for r in steps
        )
        return Measurement(seconds, tokens / seconds)


Workload = TrainWorkload | BenchWorkload | GrpoWorkload


def build_workloads(args: argparse.Namespace, work: Path) -> dict[str, Workload]:
    shape = SHAPES[args.shape]
    makers: dict[str, Callable[[], Workload]] = {
        "train": lambda: TrainWorkload(
            shape, args.steps, args.global_batch, args.seq_len, work / "train"
        ),
        "grpo": lambda: GrpoWorkload(
            shape,
            VOCAB[args.shape],
            args.prompts_per_step,
            args.num_generations,
            args.max_new_tokens,
            args.steps,
            args.lora_rank,
            args.questions,
            work / "grpo",
        ),
        "bench": lambda: BenchWorkload(
            shape,
            VOCAB[args.shape],
            args.problems,
            args.max_new_tokens,
            args.questions,
            work / "bench",
        ),
    }
    unknown = [w for w in args.workloads if w not in makers]
    if unknown:
        raise SystemExit(f"unknown workload(s) {unknown}; choose from {sorted(makers)}")
    return {name: makers[name]() for name in args.workloads}


# ----------------------------------------------------------------------------- the table


def _rate(x: float) -> str:
    """A throughput to three significant figures or more (5.4, not 5; 2,731)."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def table(name: str, unit: str, per: str, results: dict[Layout, list[Measurement]]) -> list[str]:
    """Markdown rows: median s/step and throughput, speed-up and efficiency against 1 x 1."""
    base = statistics.median(m.seconds_per_item for m in results[LAYOUTS[0]])
    lines = [
        f"| {name}: layout | cores | s/{per} (median) | {unit} | speed-up | efficiency | runs |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for layout in LAYOUTS:
        ms = results[layout]
        sps = statistics.median(m.seconds_per_item for m in ms)
        ups = statistics.median(m.units_per_second for m in ms)
        speedup = base / sps
        lines.append(
            f"| {layout.name} | {layout.cores} | {sps:.3f} | {_rate(ups)} | {speedup:.2f}x | "
            f"{100 * speedup / layout.cores:.0f}% | {len(ms)} |"
        )
    procs = statistics.median(m.seconds_per_item for m in results[Layout(2, 1)])
    threads = statistics.median(m.seconds_per_item for m in results[Layout(1, 2)])
    better = "2 processes x 1 thread" if procs < threads else "1 process x 2 threads"
    ratio = max(procs, threads) / min(procs, threads)
    lines += ["", f"{name}: {better} is faster on 2 cores, by {ratio:.2f}x"]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--workloads", nargs="+", default=["train", "grpo", "bench"], help="train, grpo, bench"
    )
    p.add_argument("--shape", choices=sorted(SHAPES), default="small")
    p.add_argument("--steps", type=int, default=6, help="steps per run (the first is warm-up)")
    p.add_argument("--rounds", type=int, default=2, help="round-robin repetitions per layout")
    p.add_argument("--global-batch", type=int, default=8, help="sequences per step, all ranks")
    p.add_argument("--seq-len", type=int, default=128, help="train: tokens per sequence")
    p.add_argument("--problems", type=int, default=16, help="bench: problems per run")
    p.add_argument("--max-new-tokens", type=int, default=64, help="bench, grpo: tokens per answer")
    p.add_argument("--prompts-per-step", type=int, default=8, help="grpo: prompts per step")
    p.add_argument("--num-generations", type=int, default=8, help="grpo: completions per prompt")
    p.add_argument("--lora-rank", type=int, default=16, help="grpo: LoRA rank (0 = full)")
    p.add_argument(
        "--questions", default="gsm8k", help="bench: gsm8k, gsm8k:PATH (train split) or synthetic"
    )
    p.add_argument("--json", type=Path, help="also write every measurement here")
    p.add_argument("--keep", action="store_true", help="keep the prepared data and runs")
    args = p.parse_args(argv)
    if args.steps < 2:
        raise SystemExit("--steps must be at least 2 (the first step is warm-up)")

    import torch

    from shoestring.host import describe_host

    print(f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC", flush=True)
    print(f"command: {shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])}", flush=True)
    print(describe_host(torch.device("cpu")), flush=True)
    work = Path(tempfile.mkdtemp(prefix="processes_vs_threads_"))
    try:
        report = _measure(args, work)
    finally:
        if args.keep:
            print(f"runs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def _measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every workload in every layout, round-robin; prints each run and each table."""
    report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    for wname, workload in build_workloads(args, work).items():
        t0 = time.perf_counter()
        workload.prepare()
        print(f"{wname}: prepared in {time.perf_counter() - t0:.0f} s", flush=True)
        results: dict[Layout, list[Measurement]] = {layout: [] for layout in LAYOUTS}
        for r in range(args.rounds):
            for layout in LAYOUTS:  # round-robin: noise hits every layout alike
                m = workload.run(layout, f"{wname}-{layout.procs}x{layout.threads}-r{r}")
                results[layout].append(m)
                print(
                    f"  round {r + 1} {layout.name}: {m.seconds_per_item:.3f} s/{workload.per}, "
                    f"{_rate(m.units_per_second)} {workload.unit}",
                    flush=True,
                )
        print("\n".join(["", *table(wname, workload.unit, workload.per, results), ""]), flush=True)
        report[wname] = {layout.name: [vars(m) for m in ms] for layout, ms in results.items()}
    return report


if __name__ == "__main__":
    raise SystemExit(main())
