"""When should continuous batching refill? The engine alone, two refill thresholds, interleaved.

The engine refills finished rows from the queue once ``REFILL_MIN_FRACTION`` of the batch is
free (``engine/decode.py``). Refilling at every free row keeps the batch fuller (fewer
decode steps: see ``generate_vs_hf.py``'s ``decode steps`` line) but runs more, smaller
prefills and more cache appends. This runs the variable-length workload of
``generate_vs_hf.py`` (same model, prompts and answer-length rule) through the engine with
each threshold, rounds interleaved (ABBA), and prints the medians and their ratio.

    python benchmarks/refill_threshold.py --prompts 128 --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from bench_throughput import build_tokenizer, load_questions  # noqa: E402 - sibling script
from generate_vs_hf import (  # noqa: E402
    DTYPE_HELP,
    QWEN25_05B,
    answer_lengths,
    build_model,
    decode_steps,
    run_shoestring,
)
from grpo_vs_trl import add_shape_options  # noqa: E402
from shoestring.engine import decode  # noqa: E402
from shoestring.host import describe_host  # noqa: E402
from shoestring.runtime import resolve_dtype  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--prompts", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--rows", default="4,1", help="two refill thresholds, in free rows")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"), help=DTYPE_HELP)
    p.add_argument("--seed", type=int, default=0, help="seed of the answer-length draw")
    p.add_argument("--min-answer", type=int, default=50)
    p.add_argument("--max-answer", type=int, default=300)
    add_shape_options(p, **QWEN25_05B)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.dtype = resolve_dtype(args.dtype, torch.device("cpu"))
    print(describe_host(), flush=True)  # the host class every figure below belongs to
    first, second = (int(x) for x in args.rows.split(","))

    questions, source = load_questions(args.prompts)
    tok = build_tokenizer(min(args.vocab, 8000))
    eos = int(tok.eos_token_id)
    prompts = [tok(f"Question: {q}\nAnswer:")["input_ids"] for q in questions]
    prompts.sort(key=len, reverse=True)  # longest first, as generate_vs_hf
    lengths = answer_lengths(args.prompts, args.seed, args.min_answer, args.max_answer)
    model = build_model(args, eos)
    print(
        f"engine only, {args.prompts} prompts ({source}), answers {min(lengths)}-"
        f"{max(lengths)} tokens, batch {args.batch}, {args.dtype}, hidden {args.hidden}, "
        f"{args.layers} layers, vocab {args.vocab}; decode steps: refill at {first} free rows "
        f"{decode_steps(lengths, args.batch, first)}, at {second} "
        f"{decode_steps(lengths, args.batch, second)}",
        flush=True,
    )
    run_shoestring(model, prompts[:2], [4, 3], 2, eos)  # warm-up
    saved = decode.REFILL_MIN_FRACTION
    times: dict[int, list[float]] = {first: [], second: []}
    try:
        for rnd in range(args.rounds):
            for rows in (first, second) if rnd % 2 == 0 else (second, first):
                decode.REFILL_MIN_FRACTION = rows / args.batch
                t0 = time.perf_counter()
                run_shoestring(model, prompts, lengths, args.batch, eos)
                times[rows].append(time.perf_counter() - t0)
                print(f"  round {rnd + 1} refill at {rows} free rows: {times[rows][-1]:.1f} s")
    finally:
        decode.REFILL_MIN_FRACTION = saved
    a, b = statistics.median(times[first]), statistics.median(times[second])
    print(
        f"median: refill at {first} free rows {a:.1f} s, at {second} {b:.1f} s -> "
        f"{b / a:.2f}x the time of the first",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
