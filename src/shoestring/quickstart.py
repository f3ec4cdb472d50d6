"""``shoestring quickstart``: the whole pipeline on built-in data, in a few minutes on a CPU.

It generates the synthetic grade-school-math corpus, trains a tokenizer and token shards,
pretrains a tiny GPT, reports validation loss before and after, samples a few completions of
held-out problems and prints where everything was written. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from shoestring.cli_options import (
    OUTPUT_SHORTCUTS,
    OutputConfig,
    add_config_options,
    add_quiet_option,
    config_from_args,
    print_config_keys,
)
from shoestring.config import opt, validate
from shoestring.data.answers import parse_gold
from shoestring.prepare.config import PrepareConfig
from shoestring.run_config import build_run_config
from shoestring.rundir.directory import atomic_write_json
from shoestring.scoring.protocols import Protocol, get_protocol
from shoestring.util.stats import format_accuracy

if TYPE_CHECKING:  # the scoring module imports torch; only its type is needed here
    from shoestring.scoring.scoring import ProblemScore

#: The corpus teaches "Question: ...\nAnswer: ... #### N"; GRPO on this model resolves the same.
QUICKSTART_PROTOCOL = "qa"
QUICKSTART_MAX_NEW_TOKENS = 160

# A tiny model that learns the synthetic corpus visibly in a few minutes on 2 CPU cores.
QUICKSTART_MODEL = {
    "d_model": 192,
    "n_layers": 4,
    "n_heads": 4,
    "d_ff": 768,
    "position": "rope",
    "norm": "rmsnorm",
    "mlp": "gelu",
}
QUICKSTART_TRAIN = {
    "seq_len": 128,
    "batch_size": 16,
    "lr": 2e-3,
    "warmup_steps": 30,
    "weight_decay": 0.1,
    "eval_every": 100,
    "eval_batches": 8,
    "log_every": 10,
    "save_every": 100,
}


@dataclass
class QuickstartConfig:
    """What ``quickstart`` is asked. ``output.dir`` holds everything it writes (``corpus/``,
    ``data/``, ``runs/``); ``output.name`` names the training run inside ``runs/``."""

    steps: int = opt(1000, "training steps", min=1)
    problems: int = opt(12000, "synthetic training problems", min=2)
    eval_problems: int = opt(100, "held-out problems to answer", min=1)
    vocab_size: int = opt(1024, "tokenizer vocabulary size", min=257)
    split_digits: bool = opt(
        False,
        "one token per digit (as Llama and Qwen): slower to learn in 1000 steps, but arithmetic "
        "is then the same skill for every number, which GRPO can improve (docs/grpo.md)",
    )
    device: str = opt("auto", "cpu, cuda, cuda:N, mps or auto")
    seed: int = opt(0, "seed of the data, the split and training", min=0)
    output: OutputConfig = field(
        default_factory=lambda: OutputConfig(dir="quickstart", name="quickstart")
    )


# shortcut flag (argparse destination) -> the QuickstartConfig key it overrides
SHORTCUT_FLAGS = (
    ("steps", "steps"),
    ("problems", "problems"),
    ("eval_problems", "eval_problems"),
    ("vocab_size", "vocab_size"),
    ("split_digits", "split_digits"),
    ("device", "device"),
    ("seed", "seed"),
    *OUTPUT_SHORTCUTS,
)


def add_cli(sub: argparse._SubParsersAction) -> None:
    """Register ``quickstart``; every flag is a ``--set`` shortcut (defaults: the config's)."""
    p = sub.add_parser(
        "quickstart",
        help="end-to-end demo on built-in synthetic data (no download)",
        description=__doc__,
    )
    p.add_argument("--out", help="directory for the corpus, data and run (output.dir; quickstart)")
    p.add_argument("--name", help="training run name under OUT/runs (output.name; quickstart)")
    p.add_argument("--steps", type=int, help="training steps (default 1000)")
    p.add_argument("--eval-problems", type=int, help="held-out problems to answer (default 100)")
    p.add_argument("--problems", type=int, help="synthetic training problems (default 12000)")
    p.add_argument("--vocab-size", type=int, help="tokenizer vocabulary size (default 1024)")
    p.add_argument(
        "--split-digits",
        action="store_true",
        default=None,  # None = not given: the config's own value stands
        help="one token per digit (as Llama and Qwen): slower to learn in 1000 steps, but "
        "arithmetic is then the same skill for every number, which GRPO can improve (docs/grpo.md)",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:N, mps or auto (default)")
    p.add_argument("--seed", type=int, help="seed (default 0)")
    add_quiet_option(p)
    add_config_options(p, "steps=300")
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    """Build the config from the flags, run the pipeline, print the run directory."""
    if args.help_config:
        return print_config_keys(QuickstartConfig())
    cfg = config_from_args(QuickstartConfig(), args, SHORTCUT_FLAGS)
    try:
        path = run(cfg)
    except KeyboardInterrupt:
        return 130
    print(path)
    return 0


def read_jsonl_problems(path: Path) -> list[dict[str, str]]:
    """The synthetic corpus's held-out problems (one JSON object per line, written by us)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def score_held_out(
    model_dir: Path,
    problems: list[dict[str, str]],
    protocol: Protocol,
    device: str = "auto",
    progress: bool = True,
) -> list[ProblemScore]:
    """Quickstart's answers to held-out problems: greedy, fp32, through the one scoring path."""
    # deferred: torch is heavy; shoestring --help must not load it
    from shoestring.models.loading import load_model_and_tokenizer
    from shoestring.scoring.scoring import score_model

    model, tokenizer, _ = load_model_and_tokenizer(model_dir, device=device, dtype="fp32")
    return score_model(
        model,
        tokenizer,
        [p["question"] for p in problems],
        [parse_gold(p["answer"]) for p in problems],
        protocol,
        max_new_tokens=QUICKSTART_MAX_NEW_TOKENS,
        progress=progress,
        desc="answer",
    )


def run(cfg: QuickstartConfig) -> Path:
    """The whole pipeline under ``cfg.output.dir``; the training run's directory (which holds
    ``report.md``, ``quickstart_eval.json`` and ``model/``)."""
    # deferred: torch is heavy; shoestring --help must not load it
    from shoestring.data import synthetic
    from shoestring.prepare.run import run as run_prepare
    from shoestring.scoring.scoring import accuracy_summary
    from shoestring.train.config import TrainJobConfig
    from shoestring.train.run import run as run_training

    validate(cfg)
    out, echo = Path(cfg.output.dir), not cfg.output.quiet
    steps, n_eval, device, seed = cfg.steps, cfg.eval_problems, cfg.device, cfg.seed
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    say = print if echo else (lambda *a, **k: None)

    say(f"[1/4] generating {cfg.problems} synthetic math problems (+ held-out test set)")
    corpus = out / "corpus"
    synthetic.write_corpus(corpus, n_train=cfg.problems, n_test=max(n_eval, 1), seed=seed)

    say(f"[2/4] training a {cfg.vocab_size}-token BPE tokenizer and writing token shards")
    data_dir = out / "data"
    prepare = PrepareConfig(
        input=str(corpus / "train.jsonl"),
        out=str(data_dir),
        vocab_size=cfg.vocab_size,
        seed=seed,
        val_fraction=0.05,
        split_digits=cfg.split_digits,
        quiet=not echo,
    )
    run_prepare(prepare)

    say(f"[3/4] pretraining a tiny GPT for {steps} steps")
    train_cfg = build_run_config(
        base={"model": QUICKSTART_MODEL, "train": QUICKSTART_TRAIN},
        overrides=[
            f"data.path={data_dir}",
            f"train.max_steps={steps}",
            f"train.device={device}",
            f"train.seed={seed}",
        ],
    )
    job = TrainJobConfig.of(train_cfg, out=out / "runs", name=cfg.output.name, quiet=not echo)
    run_dir = run_training(job)
    summary = json.loads((run_dir / "summary.json").read_text())

    say(f"[4/4] answering {n_eval} held-out problems (greedy, batched KV-cache decoding)")
    tests = read_jsonl_problems(corpus / "test.jsonl")[:n_eval]
    protocol = get_protocol(QUICKSTART_PROTOCOL)
    scores = score_held_out(run_dir, tests, protocol, device=device, progress=echo)
    for item in scores[:3]:
        say("-" * 72)
        say(f"{protocol.prompt(item.question)}{item.result.text.rstrip()}")
        say(f"(reference: #### {item.gold})")
    say("-" * 72)
    verdicts = [s.ok for s in scores]
    accuracy = format_accuracy(sum(verdicts), len(verdicts))
    say(f"exact-answer accuracy on held-out problems ({protocol.name} protocol): {accuracy}")
    atomic_write_json(
        run_dir / "quickstart_eval.json",
        {
            **accuracy_summary(verdicts),
            "accuracy": accuracy,  # the text with its 95% interval, as printed
            "protocol": protocol.to_dict(),
            "protocol_key": protocol.key(),
            "problems": [s.record() for s in scores],
        },
    )

    v0, v1 = summary["initial_val_loss"], summary["final_val_loss"]
    ln_vocab = math.log(train_cfg.model.vocab_size)
    say(
        f"validation loss {v0:.3f} -> {v1:.3f} (ln vocab = {ln_vocab:.3f}); "
        f"{summary['tokens_per_second']:,.0f} training tokens/s on {summary['runtime']['device']} "
        f"({summary['runtime']['dtype']})"
    )
    say(f"done in {time.perf_counter() - t_start:.0f} s. Run directory: {run_dir}")
    say(f"next: shoestring generate {run_dir} --prompt 'Question: ...'")
    return run_dir
