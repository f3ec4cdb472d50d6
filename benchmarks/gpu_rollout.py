"""Decode speed and a GRPO step on a GPU: the static decode path (fixed-shape KV cache, decode
step captured as a CUDA graph) against the dynamic engine and against Hugging Face ``generate``
with a static cache and ``torch.compile``, all in one run. This script is one idea: the one
prepared GPU measurement of issue 16, its sections sharing one model and one time budget.

What it prints (and writes with ``--json``), on a model of Qwen2.5-0.5B's shape with random
weights (hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate 4864, vocab 151936, tied
embeddings), bf16, prompts of ``--prompt-len`` tokens, sampling at temperature 1 with EOS
ignored (every row decodes ``--new-tokens`` tokens):

1. shoestring static path, batch 1, 16, 64: decode ms per step and tokens/s (prefill measured
   apart and taken out), graph capture time, peak GPU memory;
2. the same with peft LoRA r16 on every linear layer (as GRPO samples): merged weights for the
   call (the default) and peft's layers inside the graph, plus the cost of refreshing the
   merged copy;
3. a GRPO step of docs/grpo.md's settings (2 prompts x 8 completions of 256 tokens, LoRA r16,
   beta 0.04), through ``benchmarks/grpo_step_time.py``;
4. the dynamic engine at the same batch sizes (fewer tokens: it is the slow path);
5. HF ``generate(cache_implementation="static")``, which compiles the forward with
   ``mode="reduce-overhead"`` on CUDA (what the transformers docs recommend).

Sections 4 and 5 stop when ``--budget-s`` runs out (each says so); a section that fails prints
its error and the run goes on, so one run always returns every figure it could measure.
``--sections`` runs a subset (``static,lora,merge,peft,grpo,dynamic,hf``), e.g. ``hf`` alone
when the first run's budget ran out before it.

    python benchmarks/gpu_rollout.py --quick --json gpu_rollout.json     # ~8 min on an H200
    python benchmarks/gpu_rollout.py --device cpu --tiny                 # the CPU smoke run

Without CUDA it refuses, unless ``--device cpu --tiny`` asks for the smoke run at a tiny shape
(no graphs, HF ``generate`` without compile): that checks the script, not the speed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from grpo_step_time import QWEN25_05B  # noqa: E402 - a sibling script, found via sys.path
from grpo_vs_trl import add_shape_options  # noqa: E402

TINY = {"hidden": 64, "intermediate": 128, "layers": 2, "heads": 4, "kv_heads": 2, "vocab": 1000}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (--tiny only)")
    p.add_argument("--tiny", action="store_true", help="tiny shape: a smoke run of the script")
    p.add_argument("--quick", action="store_true", help="one timed call per figure (~8 min)")
    p.add_argument("--batches", default="1,16,64", help="batch sizes (rows)")
    p.add_argument("--prompt-len", type=int, default=160, help="prompt tokens (GSM8K chat ~160)")
    p.add_argument("--new-tokens", type=int, default=256, help="decoded tokens per row")
    p.add_argument("--dynamic-tokens", type=int, default=32, help="tokens for the dynamic engine")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--grpo-steps", type=int, default=3, help="0 = skip the GRPO step")
    p.add_argument("--dataset", default="gsm8k", help="GRPO prompts: gsm8k, gsm8k:PATH, synthetic")
    p.add_argument(
        "--sections",
        default="static,lora,merge,peft,grpo,dynamic,hf",
        help="which sections to run (e.g. hf alone for a second run)",
    )
    p.add_argument("--budget-s", type=float, default=0.0, help="0 = 420 with --quick, else none")
    p.add_argument("--json", help="write every figure to this file")
    add_shape_options(p, **{k: 0 for k in QWEN25_05B})  # 0 = Qwen2.5-0.5B's (or --tiny's)
    args = p.parse_args(argv)
    base = TINY if args.tiny else QWEN25_05B
    for k, v in base.items():
        if not getattr(args, k):
            setattr(args, k, v)
    if args.tiny:
        args.prompt_len = min(args.prompt_len, 24)
        args.new_tokens = min(args.new_tokens, 16)
        args.dynamic_tokens = min(args.dynamic_tokens, 8)
        args.batches = ",".join(b for b in args.batches.split(",") if int(b) <= 16)
    if not args.budget_s and args.quick:
        args.budget_s = 420.0
    return args


class Bench:
    """Timing on the benchmark's device (synchronised), the figures, the time budget."""

    def __init__(self, args: argparse.Namespace, torch: Any) -> None:
        self.args = args
        self.torch = torch
        self.cuda = args.device.startswith("cuda")
        self.t_start = time.perf_counter()
        self.figures: dict[str, Any] = {"args": vars(args), "sections": {}}

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def timed(self, fn: Callable[[], Any]) -> float:
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t0

    def repeat(self, fn: Callable[[], Any]) -> float:
        """Median seconds of 1 (--quick) or 3 calls."""
        return statistics.median(self.timed(fn) for _ in range(1 if self.args.quick else 3))

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        return self.torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None

    def left(self) -> float:
        if not self.args.budget_s:
            return float("inf")
        return self.args.budget_s - (time.perf_counter() - self.t_start)

    def section(self, name: str, fn: Callable[[], dict[str, Any]], need_s: float = 0.0) -> None:
        """Run one section; its failure or the budget never ends the run."""
        print(f"\n== {name}", flush=True)
        if self.left() < need_s:
            print(f"skipped: {self.left():.0f} s of the budget left, it needs ~{need_s:.0f} s")
            self.figures["sections"][name] = {"skipped": "budget"}
            return
        t0 = time.perf_counter()
        try:
            out = fn()
        except Exception as exc:  # noqa: BLE001 - report and go on to the next section
            traceback.print_exc()
            out = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"section failed: {out['error']}", flush=True)
        out["section_seconds"] = round(time.perf_counter() - t0, 1)
        self.figures["sections"][name] = out


def decode_figures(
    b: Bench, run: Callable[[int, int], Any], rows: int, tokens: int, label: str
) -> dict[str, Any]:
    """Time ``run(rows, n_tokens)``: the first call warms up (captures/compiles), then prefill
    alone (1 token) and the full call; decode ms per step excludes the prefill."""
    b.reset_peak()
    first = b.timed(lambda: run(rows, tokens))
    prefill = b.repeat(lambda: run(rows, 1))
    full = b.repeat(lambda: run(rows, tokens))
    step_ms = 1000 * (full - prefill) / max(1, tokens - 1)
    tok_s = rows * (tokens - 1) / max(full - prefill, 1e-9)
    peak = b.peak_gib()
    print(
        f"{label} batch {rows:3d}: {step_ms:8.2f} ms/step, {tok_s:10,.0f} tok/s decode "
        f"(prefill {1000 * prefill:.0f} ms, first call {first:.2f} s"
        + (f", peak {peak:.2f} GiB" if peak is not None else "")
        + ")",
        flush=True,
    )
    return {
        "rows": rows,
        "tokens": tokens,
        "ms_per_step": round(step_ms, 3),
        "decode_tok_s": round(tok_s, 1),
        "prefill_s": round(prefill, 4),
        "full_call_s": round(full, 4),
        "first_call_s": round(first, 3),
        "peak_gpu_gib": None if peak is None else round(peak, 3),
    }


def targets(sections: dict[str, Any]) -> dict[str, Any]:
    """Issue 16's targets next to what this run measured (``None`` where not measured)."""

    def fig(section: str, rows: str, key: str) -> float | None:
        value = sections.get(section, {}).get(rows, {})
        return value.get(key) if isinstance(value, dict) else None

    out: dict[str, Any] = {
        "ms_per_step_16_rows_lora (target <= 5)": fig("static, LoRA merged", "16", "ms_per_step"),
        "tok_s_64_rows (target >= 10000)": fig("static, no LoRA", "64", "decode_tok_s"),
    }
    grpo = sections.get("GRPO step (docs/grpo.md settings, beta 0.04)", {}).get("steps") or []
    later = [st["seconds"] for st in grpo[1:]]  # the first step captures and warms up
    out["grpo_step_s_after_the_first (target <= 5)"] = min(later) if later else None
    hf = "HF generate, static cache + torch.compile"
    for rows in ("1", "16", "64"):
        ours, theirs = (fig("static, no LoRA", rows, "ms_per_step"), fig(hf, rows, "ms_per_step"))
        ratio = theirs / ours if ours and theirs else None
        out[f"HF ms per step / ours, batch {rows} (target >= 1)"] = ratio
    print("\ntargets (issue 16) against this run:")
    for k, v in out.items():
        shown = "not measured" if v is None else f"{v:,.2f}"
        print(f"  {k}: {shown}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "gpu_rollout.py measures the CUDA decode path and CUDA is not available here; "
            "run it on a GPU machine, or pass --device cpu --tiny for a smoke run of the script",
            file=sys.stderr,
        )
        return 2
    if args.device == "cpu" and not args.tiny:
        print(
            "on a CPU this shape takes hours and measures nothing this script is about; "
            "add --tiny for the smoke run",
            file=sys.stderr,
        )
        return 2
    work = Path(tempfile.mkdtemp(prefix="gpu_rollout_"))
    try:
        return _run(args, work, Bench(args, torch))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, work: Path, b: Bench) -> int:
    import torch
    from peft import LoraConfig, get_peft_model

    from grpo_vs_trl import build_model, build_tokenizer, load_questions
    from shoestring.engine import Engine, EngineOptions, Sampling
    from shoestring.engine.lora_view import merged_lora
    from shoestring.engine.static_runner import engine_state
    from shoestring.host import describe_host
    from shoestring.models.loading import load_model_and_tokenizer

    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if b.cuda else "CPU"
    print(f"device: {name}; torch {torch.__version__}", flush=True)
    print(describe_host(device), flush=True)  # the host class every figure belongs to
    b.figures["device"] = name
    tok = build_tokenizer(work / "model", min(args.vocab, 4000), load_questions("synthetic", 64))
    n_params = build_model(work / "model", tok, args, vocab_size=args.vocab)
    dtype = "bf16" if b.cuda else "fp32"
    model, tok, _ = load_model_and_tokenizer(str(work / "model"), device=args.device, dtype=dtype)
    model.eval()
    print(f"model: Qwen2 shape, random weights, {n_params / 1e6:.1f}M parameters, {dtype}")
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(5, min(args.vocab, len(tok)), (64, args.prompt_len), generator=gen)
    batches = [int(x) for x in args.batches.split(",")]

    def sampling(tokens: int) -> Sampling:
        return Sampling(max_new_tokens=tokens, temperature=1.0, ignore_eos=True)

    def ours(**kw: Any) -> Callable[[int, int], Any]:
        """The static backend, all ``rows`` prompts in one batch (``kw``: engine options)."""

        def run(rows: int, tokens: int) -> Any:
            options = EngineOptions(static_cache="on", batch_size=rows, **kw)
            return Engine(model, tok, options).generate(prompts[:rows].tolist(), sampling(tokens))

        return run

    def dynamic(rows: int, tokens: int) -> Any:
        options = EngineOptions(static_cache="off", batch_size=rows)
        return Engine(model, tok, options).generate(prompts[:rows].tolist(), sampling(tokens))

    def static_section(label: str, **kw: Any) -> Callable[[], dict[str, Any]]:
        def body() -> dict[str, Any]:
            out = {
                str(r): decode_figures(b, ours(**kw), r, args.new_tokens, label) for r in batches
            }
            state = engine_state(model)
            out["captures"] = state.captures
            out["static_buffers_mib"] = round(
                sum(x.nbytes for x in state.runners.values()) / 2**20, 1
            )
            return out

        return body

    want = set(args.sections.split(","))
    if "static" in want:
        b.section("static, no LoRA", static_section("static      "))

    pm = get_peft_model(
        model,
        LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank, target_modules="all-linear"),
    )
    with torch.no_grad():
        for pname, p in pm.named_parameters():
            if "lora_B" in pname:  # B starts at zero: make the adapters change the output
                p.normal_(0, 0.01)
    model = pm.get_base_model().eval()
    if "lora" in want:
        b.section("static, LoRA merged", static_section("static+lora "))

    def merge_cost() -> dict[str, Any]:
        def enter_exit() -> None:
            with merged_lora(model):
                pass

        enter_exit()  # allocates the merged copies once
        s = b.repeat(enter_exit)
        print(f"refreshing the merged LoRA weights: {1000 * s:.1f} ms per generation call")
        return {"refresh_ms": round(1000 * s, 2)}

    if "merge" in want:
        b.section("LoRA merge refresh", merge_cost)
    mid = [r for r in batches if r == 16] or batches[-1:]

    def unmerged() -> dict[str, Any]:
        run = ours(merge_lora=False)
        return {str(r): decode_figures(b, run, r, args.new_tokens, "static+peft ") for r in mid}

    if "peft" in want:
        b.section("static, peft LoRA layers in the graph", unmerged)

    def grpo() -> dict[str, Any]:
        import grpo_step_time

        argv = ["--device", args.device, "--steps", str(args.grpo_steps), "--set", "beta=0.04"]
        argv += ["--dataset", args.dataset, "--lora-rank", str(args.lora_rank)]
        for k in QWEN25_05B:
            argv += ["--" + k.replace("_", "-"), str(getattr(args, k))]
        if args.tiny:
            argv += ["--set", "max_completion_length=16", "--threads", "2"]
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = grpo_step_time.main(argv)
        text = buf.getvalue()
        print(text, end="")
        steps = [
            {"step": int(m[0]), "seconds": float(m[1]), "generation_s": float(m[2])}
            for m in re.findall(r"step (\d+): ([0-9.]+) s \(generation ([0-9.]+)", text)
        ]
        return {"rc": rc, "steps": steps}

    if args.grpo_steps and "grpo" in want:
        b.section("GRPO step (docs/grpo.md settings, beta 0.04)", grpo, need_s=60)

    def dynamic_section() -> dict[str, Any]:
        out = {}
        for r in batches:
            if b.left() < 30:
                print(f"batch {r}: skipped (budget)")
                continue
            out[str(r)] = decode_figures(b, dynamic, r, args.dynamic_tokens, "dynamic+lora")
        return out

    if "dynamic" in want:
        b.section("dynamic engine, peft LoRA layers", dynamic_section, need_s=30)

    def hf_section() -> dict[str, Any]:
        base = pm.unload()  # the plain model again (LoRA layers removed, weights untouched)
        base.eval()
        out: dict[str, Any] = {"compiled": b.cuda}

        def run(rows: int, tokens: int) -> Any:
            ids = prompts[:rows].to(device)
            with torch.inference_mode():
                return base.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=tokens,
                    min_new_tokens=tokens,
                    do_sample=True,
                    temperature=1.0,
                    top_k=0,
                    top_p=1.0,
                    cache_implementation="static",
                    disable_compile=not b.cuda,
                    pad_token_id=tok.pad_token_id,
                )

        for r in batches:
            if b.left() < 90:
                print(f"batch {r}: skipped (budget)")
                continue
            out[str(r)] = decode_figures(b, run, r, args.new_tokens, "HF static  ")
        return out

    if "hf" in want:
        b.section("HF generate, static cache + torch.compile", hf_section, need_s=90)

    b.figures["targets"] = targets(b.figures["sections"])
    b.figures["total_seconds"] = round(time.perf_counter() - b.t_start, 1)
    print(f"\ntotal {b.figures['total_seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(b.figures, indent=1), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
