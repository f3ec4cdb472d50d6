"""Seconds and memory per GRPO step on a model of a real model's shape, with random weights.

docs/grpo.md quotes what a Qwen2.5-0.5B-Instruct GRPO run on GSM8K costs per step on a CPU and
on a GPU. Nobody should need the weights to check that: time per step depends on the shape,
the settings and the completion lengths, not on what the weights learned. This script builds a
model of the given shape (Qwen2.5-0.5B by default: hidden 896, 24 layers, 14 heads, 2 KV heads,
intermediate 4864, vocab 151936, tied embeddings), a BPE tokenizer with a ChatML template
trained on the GSM8K questions, and runs ``shoestring grpo`` on GSM8K chat prompts with the
docs' settings (LoRA r16, 2 prompts x 8 completions, 256 tokens), printing every step's split
and the peak memory. Random weights never emit EOS, so every completion runs the full length:
an upper bound of a real run's step.

This measures shoestring alone; the same-run comparison with TRL is
``benchmarks/grpo_vs_trl.py`` (a small model: TRL on this shape takes many minutes a step).

    python benchmarks/grpo_step_time.py --steps 2
    python benchmarks/grpo_step_time.py --device cuda --set beta=0.04
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from grpo_vs_trl import add_shape_options  # noqa: E402 - a sibling script, found via sys.path

#: Qwen2.5-0.5B-Instruct's shape (494M parameters with tied embeddings)
QWEN25_05B = {
    "hidden": 896,
    "intermediate": 4864,
    "layers": 24,
    "heads": 14,
    "kv_heads": 2,
    "vocab": 151936,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=2, help="GRPO steps (the first is warm-up)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = all cores")
    p.add_argument("--lora-rank", type=int, default=16, help="0 = full fine-tune")
    p.add_argument("--dataset", default="gsm8k", help="gsm8k or gsm8k:PATH (questions)")
    add_shape_options(p, **QWEN25_05B)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="GRPO field")
    p.add_argument("--keep", action="store_true", help="keep the model and run directory")
    args = p.parse_args(argv)

    import torch

    from grpo_vs_trl import build_model, build_tokenizer, load_questions
    from shoestring.host import describe_host
    from shoestring.rl import grpo
    from shoestring.rl.config import grpo_config
    from shoestring.rundir.directory import read_metrics

    print(describe_host(torch.device(args.device)), flush=True)  # the host class of the figures
    work = Path(tempfile.mkdtemp(prefix="grpo_step_time_"))
    try:
        rows = load_questions(args.dataset, 256)
        t0 = time.perf_counter()
        tok = build_tokenizer(work / "model", args.vocab, rows)
        n_params = build_model(work / "model", tok, args, vocab_size=args.vocab)
        print(
            f"model: Qwen2 shape, random weights, {n_params / 1e6:.1f}M parameters (vocab "
            f"{args.vocab}; the tokenizer has {len(tok)} entries); built in "
            f"{time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        data = work / "prompts.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        overrides = [
            f"model_name_or_path={work / 'model'}",
            f"dataset=gsm8k:{data}",
            "protocol=chat-cot",
            f"lora_rank={args.lora_rank}",
            "lora_alpha=32",
            "learning_rate=1e-5",
            "per_device_train_batch_size=8",
            "gradient_accumulation_steps=2",
            "max_completion_length=256",
            f"max_steps={args.steps}",
            f"device={args.device}",
            f"dtype={args.dtype}",
            f"threads={args.threads}",
            "save_steps=100000",
            "log_completions_steps=0",
            *args.set,
        ]
        cuda = args.device.startswith("cuda")
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        placement = f"output_dir={work / 'runs' / 'step_time'}"
        run = grpo.run(grpo_config(preset="cpu", overrides=[*overrides, placement]))
        for r in read_metrics(run):
            if "step_seconds" in r:
                print(
                    f"step {r['step']}: {r['step_seconds']:.1f} s (generation "
                    f"{r['time_generation']:.1f}, scoring {r['time_scoring']:.1f}, backward "
                    f"{r['time_backward']:.1f}), completions {r['completion_length_mean']:.0f} "
                    "tokens on average"
                )
        summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
        system = summary.get("system") or {}
        print(f"runtime: {summary.get('runtime')}")
        print(f"peak resident memory: {system.get('peak_rss_mb', float('nan')):,.0f} MB")
        if cuda:
            peak = torch.cuda.max_memory_allocated() / 2**30
            print(f"peak GPU memory allocated: {peak:.2f} GiB")
        return 0
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
