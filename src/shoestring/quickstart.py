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
from pathlib import Path
from typing import TYPE_CHECKING

from shoestring.cli_options import add_quiet_option
from shoestring.data.answers import parse_gold
from shoestring.errors import UserError
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


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart",
        help="end-to-end demo on built-in synthetic data (no download)",
        description=__doc__,
    )
    p.add_argument("--out", default="quickstart", help="directory for data and the run")
    p.add_argument("--steps", type=int, default=1000, help="training steps (default 1000)")
    p.add_argument("--eval-problems", type=int, default=100, help="held-out problems to answer")
    p.add_argument("--problems", type=int, default=12000, help="synthetic training problems")
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument(
        "--split-digits",
        action="store_true",
        help="one token per digit (as Llama and Qwen): slower to learn in 1000 steps, but "
        "arithmetic is then the same skill for every number, which GRPO can improve (docs/grpo.md)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    add_quiet_option(p)
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    run_dir = run(
        Path(args.out),
        steps=args.steps,
        n_problems=args.problems,
        vocab_size=args.vocab_size,
        split_digits=args.split_digits,
        device=args.device,
        seed=args.seed,
        n_eval=args.eval_problems,
        echo=not args.quiet,
    )
    if args.quiet:
        print(run_dir)
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


def run(
    out: Path,
    steps: int = 1000,
    n_problems: int = 12000,
    vocab_size: int = 1024,
    split_digits: bool = False,
    device: str = "auto",
    seed: int = 0,
    echo: bool = True,
    n_eval: int = 100,
) -> Path:
    # deferred: torch is heavy; shoestring --help must not load it
    from shoestring.data import synthetic, text
    from shoestring.scoring.scoring import accuracy_summary
    from shoestring.train.entry import train

    if steps < 1:
        raise UserError("--steps must be at least 1")
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    say = print if echo else (lambda *a, **k: None)

    say(f"[1/4] generating {n_problems} synthetic math problems (+ held-out test set)")
    corpus = out / "corpus"
    synthetic.write_corpus(corpus, n_train=n_problems, n_test=max(n_eval, 1), seed=seed)

    say(f"[2/4] training a {vocab_size}-token BPE tokenizer and writing token shards")
    data_dir = out / "data"
    text.run(
        str(corpus / "train.jsonl"),
        data_dir,
        vocab_size=vocab_size,
        seed=seed,
        val_fraction=0.05,
        split_digits=split_digits,
        quiet=not echo,
    )

    say(f"[3/4] pretraining a tiny GPT for {steps} steps")
    cfg = build_run_config(
        base={"model": QUICKSTART_MODEL, "train": QUICKSTART_TRAIN},
        overrides=[
            f"data.path={data_dir}",
            f"train.max_steps={steps}",
            f"train.device={device}",
            f"train.seed={seed}",
        ],
    )
    run_dir = train(cfg, out=out / "runs", name="quickstart", echo=echo, progress=echo)
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
    say(
        f"validation loss {v0:.3f} -> {v1:.3f} (ln vocab = {math.log(cfg.model.vocab_size):.3f}); "
        f"{summary['tokens_per_second']:,.0f} training tokens/s on {summary['runtime']['device']} "
        f"({summary['runtime']['dtype']})"
    )
    say(f"done in {time.perf_counter() - t_start:.0f} s. Run directory: {run_dir}")
    say(f"next: shoestring generate {run_dir} --prompt 'Question: ...'")
    return run_dir
