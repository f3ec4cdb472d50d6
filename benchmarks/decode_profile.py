"""Where a decode step goes at a real shape: the engine's lean step against its own matmuls.

At Qwen2.5-0.5B's shape (default; random weights in the host class's dtype - ``--dtype auto``:
bf16 where the CPU has bf16 dot products, else fp32 -, real 151,936-entry tied vocabulary),
``--rows`` rows with ``--cached`` tokens in the KV cache, one process, interleaved:

1. **step vs matmuls**: the engine's decode step (``LeanDecoder.step``: prepacked weights where
   the engine packs them, fp32 KV cache and attention on a CPU) and the transformers forward
   of one token (cache in the weights' dtype, SDPA) against the same step's matmuls alone -
   plain ``F.linear`` calls on the same shapes and dtypes (q/k/v, o, gate/up, down per layer,
   and the head), and where the engine packs, the
   same products prepacked and its step without packing. The ratio step/matmuls is what
   everything around the matmuls costs. Where the engine packs fp32 weights for shoestring's
   AVX2 kernel (the ``avx2`` host class), its step with oneDNN's packing is timed too; where
   its work between products runs in C (``engine/decode_glue.py``), its step with torch
   operations instead.
2. **single-query attention**: the engine's plain fp32 matmul-softmax-matmul against SDPA in
   fp32 and in bf16, for all layers of one step.
3. **profile**: ``torch.profiler`` over a few lean steps, operators by self CPU time, grouped
   into weight matmuls (``mm``/``addmm``, the AVX2 kernel), attention (``bmm``, softmax; or the
   glued call, which also rotates this token's keys and writes the cache) and the rest.

The cache is filled with random keys and values (no prefill: at this shape a 16 x 128 prefill
costs seconds and changes nothing here) and cropped back after every step, so every timed
step sees the same cache length.

    python benchmarks/decode_profile.py --rows 16 --cached 128 --rounds 10
    python benchmarks/decode_profile.py --dtype fp32 --rounds 5   # the AVX2 host's dtype
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate_vs_hf import (  # noqa: E402 - a sibling script
    DTYPE_HELP,
    QWEN25_05B,
    add_bf16_values_option,
    build_model,
    weights_note,
)
from grpo_vs_trl import add_shape_options  # noqa: E402
from shoestring.engine import make_cache  # noqa: E402
from shoestring.engine.cpu_attention import mask_bias, single_query_attention
from shoestring.engine.decode_glue import ATTEND_PROFILER_NAME  # noqa: E402
from shoestring.engine.lean_decode import LeanDecoder  # noqa: E402
from shoestring.engine.packed_linear import BF16_COPIES_MAX_ROWS, fp32_kernel  # noqa: E402
from shoestring.engine.sgemm_avx2 import PROFILER_NAME  # noqa: E402
from shoestring.host import describe_host  # noqa: E402
from shoestring.runtime import resolve_dtype  # noqa: E402


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved round by round."""
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def filled_cache(model: Any, rows: int, cached: int, dtype: torch.dtype, pre: bool) -> Any:
    """A cache of ``cached`` random positions per layer: the engine's preallocated one
    (``pre``) or transformers' ``DynamicCache``."""
    from transformers.cache_utils import DynamicCache

    cfg = model.config
    hkv, d = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    cache = make_cache(model, 8, dtype) if pre else DynamicCache(config=cfg)
    gen = torch.Generator().manual_seed(0)
    for i in range(cfg.num_hidden_layers):
        k = torch.randn(rows, hkv, cached, d, generator=gen).to(dtype)
        cache.update(k, torch.randn(rows, hkv, cached, d, generator=gen).to(dtype), i)
    return cache


def crop_one(cache: Any) -> None:
    for layer in cache.layers:
        layer.crop(-1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--cached", type=int, default=128, help="tokens already in the KV cache")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--profile-steps", type=int, default=5)
    p.add_argument("--read-mib", type=int, default=1024, help="size of the memory-read probe")
    p.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"), help=DTYPE_HELP)
    add_shape_options(p, **QWEN25_05B)
    add_bf16_values_option(p)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.dtype = resolve_dtype(args.dtype, torch.device("cpu"))
    print(describe_host(), flush=True)  # the host class every figure below belongs to
    model = build_model(args, eos=0)
    wdtype = next(model.parameters()).dtype
    cfg = model.config
    b, t = args.rows, args.cached
    hq, hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    d = cfg.hidden_size // hq
    print(
        f"torch {torch.__version__}, {args.threads} threads; Qwen2 hidden {args.hidden}, "
        f"{args.layers} layers, heads {hq}/{hkv}, intermediate {args.intermediate}, vocab "
        f"{args.vocab}, {args.dtype} weights ({weights_note(args)}); {b} rows, {t} cached "
        f"tokens; medians of {args.rounds} interleaved rounds",
        flush=True,
    )

    gen = torch.Generator().manual_seed(1)
    next_ids = torch.randint(3, args.vocab, (b,), generator=gen)
    pos = torch.full((b,), t)
    mask = torch.ones(b, t + 1, dtype=torch.long)
    cache_store = torch.float32 if wdtype != torch.float32 else wdtype
    lean_cache = filled_cache(model, b, t, cache_store, pre=True)
    hf_cache = filled_cache(model, b, t, wdtype, pre=False)
    # the engine's choice: prepacked weights where it can, bf16 copies of bf16-valued weights
    # for a few rows
    lean = LeanDecoder.build(model, bf16_copies=b <= BF16_COPIES_MAX_ROWS)
    unpacked = LeanDecoder.build(model, pack=False)
    assert lean is not None and unpacked is not None
    kernel = "oneDNN" if wdtype != torch.float32 or fp32_kernel() == "onednn" else "AVX2 kernel"
    print(f"engine step: weights {f'prepacked ({kernel})' if lean.packed else 'F.linear'}")
    # where the engine takes shoestring's AVX2 kernel, oneDNN's packing is timed next to it
    other = None
    if lean.packed and kernel != "oneDNN":
        other = LeanDecoder.build(model, kernel="onednn")
        assert other is not None
    # bf16 copies taken: the same kernel with fp32 copies is timed too
    full_copies = None
    head_copy = lean.head.packed
    if kernel != "oneDNN" and head_copy is not None and head_copy.data.dtype == torch.bfloat16:
        full_copies = LeanDecoder.build(model, bf16_copies=False)
        assert full_copies is not None
        print("engine step: its copies of the bf16-valued weights in bf16 (half the bytes)")

    # the work between products in C (decode_glue): the same decoder with torch operations
    torch_ops = None
    if lean.glue:
        torch_ops = LeanDecoder.build(model, bf16_copies=b <= BF16_COPIES_MAX_ROWS, glue=False)
        assert torch_ops is not None
        print("engine step: its work between products in C (decode_glue)")

    def torch_ops_step() -> None:
        assert torch_ops is not None
        with torch.inference_mode():
            torch_ops.step(next_ids, mask, pos, lean_cache)
        crop_one(lean_cache)

    def lean_step() -> None:
        with torch.inference_mode():
            lean.step(next_ids, mask, pos, lean_cache)
        crop_one(lean_cache)

    def other_step() -> None:
        assert other is not None
        with torch.inference_mode():
            other.step(next_ids, mask, pos, lean_cache)
        crop_one(lean_cache)

    def full_copies_step() -> None:
        assert full_copies is not None
        with torch.inference_mode():
            full_copies.step(next_ids, mask, pos, lean_cache)
        crop_one(lean_cache)

    def unpacked_step() -> None:
        with torch.inference_mode():
            unpacked.step(next_ids, mask, pos, lean_cache)
        crop_one(lean_cache)

    def hf_step() -> None:
        with torch.inference_mode():
            model(
                input_ids=next_ids[:, None],
                attention_mask=mask,
                position_ids=pos[:, None],
                past_key_values=hf_cache,
                use_cache=True,
            )
        crop_one(hf_cache)

    # the step's weight matmuls, as plain F.linear on the same shapes and dtypes
    x = torch.randn(b, 1, cfg.hidden_size, generator=gen).to(wdtype)
    xi = torch.randn(b, 1, cfg.intermediate_size, generator=gen).to(wdtype)
    head = model.lm_head.weight
    layers = model.model.layers

    def matmuls() -> None:
        with torch.inference_mode():
            for layer in layers:
                a, m = layer.self_attn, layer.mlp
                for lin in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj):
                    F.linear(x, lin.weight, lin.bias)
                F.linear(xi, m.down_proj.weight)
            F.linear(x[:, -1], head)

    fns = {"lean": lean_step, "hf": hf_step, "matmuls": matmuls}
    if lean.packed:  # the same products with the engine's prepacked weights, and its step without
        fns["unpacked"] = unpacked_step

        def packed_matmuls() -> None:
            with torch.inference_mode():
                for layer in lean.layers:
                    for proj in (layer.qkv, layer.o, layer.up):
                        proj(x)
                    layer.down(xi)
                lean.head(x[:, -1])

        fns["packed matmuls"] = packed_matmuls
    if other is not None:
        fns["oneDNN"] = other_step
    if full_copies is not None:
        fns["fp32 copies"] = full_copies_step
    if torch_ops is not None:
        fns["torch ops"] = torch_ops_step
    t1 = interleaved(fns, args.rounds)
    flops = 2 * b * sum(p.numel() for n, p in model.named_parameters() if "norm" not in n)
    flops -= 2 * b * model.model.embed_tokens.weight.numel() * (0 if cfg.tie_word_embeddings else 1)
    weight_bytes = sum(
        p.numel() * p.element_size() for n, p in model.named_parameters() if "norm" not in n
    )
    print(
        f"\ndecode step, {b} rows: engine (lean) {t1['lean'] * 1e3:.1f} ms, transformers forward "
        f"{t1['hf'] * 1e3:.1f} ms, its matmuls alone (F.linear) {t1['matmuls'] * 1e3:.1f} ms "
        f"({flops / t1['matmuls'] / 1e9:.0f} GFLOP/s)"
    )
    print(
        f"  step / matmuls: engine {t1['lean'] / t1['matmuls']:.2f}x, transformers "
        f"{t1['hf'] / t1['matmuls']:.2f}x; engine vs transformers forward "
        f"{t1['hf'] / t1['lean']:.2f}x",
        flush=True,
    )
    if "unpacked" in t1:
        print(
            f"  prepacked weights: engine step {t1['lean'] * 1e3:.1f} ms against "
            f"{t1['unpacked'] * 1e3:.1f} ms with F.linear ({t1['unpacked'] / t1['lean']:.2f}x); "
            f"its matmuls prepacked {t1['packed matmuls'] * 1e3:.1f} ms "
            f"({flops / t1['packed matmuls'] / 1e9:.0f} GFLOP/s); step / prepacked matmuls "
            f"{t1['lean'] / t1['packed matmuls']:.2f}x",
            flush=True,
        )
    if "oneDNN" in t1:
        print(
            f"  {kernel}: engine step {t1['lean'] * 1e3:.1f} ms against {t1['oneDNN'] * 1e3:.1f} "
            f"ms with oneDNN's prepacked weights ({t1['oneDNN'] / t1['lean']:.2f}x)",
            flush=True,
        )
    if "fp32 copies" in t1:
        print(
            f"  bf16 copies of the bf16-valued weights: engine step {t1['lean'] * 1e3:.1f} ms "
            f"against {t1['fp32 copies'] * 1e3:.1f} ms with fp32 copies "
            f"({t1['fp32 copies'] / t1['lean']:.2f}x; the same products bit for bit)",
            flush=True,
        )
    if "torch ops" in t1:
        print(
            f"  work between products in C: engine step {t1['lean'] * 1e3:.1f} ms against "
            f"{t1['torch ops'] * 1e3:.1f} ms with torch operations "
            f"({t1['torch ops'] / t1['lean']:.2f}x)",
            flush=True,
        )
    # what bounds it: the host's read rate (the weights are read once per step) and matmul rate
    big = torch.ones(args.read_mib * 2**18, dtype=torch.float32)
    read = interleaved({"sum": big.sum}, args.rounds)["sum"]
    rate = big.numel() * 4 / read
    del big
    sq = torch.randn(2048, 2048, generator=gen).to(wdtype)
    peak = 2 * 2048**3 / interleaved({"mm": lambda: sq @ sq}, args.rounds)["mm"]
    print(
        f"  host: memory read {rate / 1e9:.0f} GB/s (sum of {args.read_mib} MiB) -> reading the "
        f"{weight_bytes / 1e9:.2f} GB of weights takes {weight_bytes / rate * 1e3:.0f} ms; "
        f"{args.dtype} matmul 2048^3 {peak / 1e9:.0f} GFLOP/s -> the step's {flops / 1e9:.1f} "
        f"GFLOP take {flops / peak * 1e3:.0f} ms at that rate",
        flush=True,
    )

    # single-query attention over the cache, all layers of one step
    q = torch.randn(b, hq, 1, d, generator=gen)
    k32 = torch.randn(b, hkv, t + 1, d, generator=gen)
    v32 = torch.randn(b, hkv, t + 1, d, generator=gen)
    kb, vb, qb = k32.to(wdtype), v32.to(wdtype), q.to(wdtype)
    amask = torch.ones(b, 1, 1, t + 1, dtype=torch.bool)
    bias = mask_bias(amask)
    n_layers = len(layers)

    def plain() -> None:
        for _ in range(n_layers):
            single_query_attention(q, k32, v32, bias, d**-0.5)

    def sdpa(qq: torch.Tensor, kk: torch.Tensor, vv: torch.Tensor) -> Callable[[], None]:
        def run() -> None:
            for _ in range(n_layers):
                F.scaled_dot_product_attention(
                    qq, kk, vv, attn_mask=amask, scale=d**-0.5, enable_gqa=hq != hkv
                )

        return run

    fns = {"plain fp32": plain, "SDPA fp32": sdpa(q, k32, v32)}
    if wdtype != torch.float32:
        fns["SDPA bf16"] = sdpa(qb, kb, vb)
    t2 = interleaved(fns, args.rounds)
    print(
        f"\nsingle-query attention, {n_layers} layers, {b} rows x {t + 1} positions: "
        + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in t2.items())
        + f" (SDPA fp32 / plain {t2['SDPA fp32'] / t2['plain fp32']:.2f}x"
        + (
            f", SDPA bf16 / plain {t2['SDPA bf16'] / t2['plain fp32']:.1f}x)"
            if len(t2) > 2
            else ")"
        )
    )

    # profile of the engine's step
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.profile_steps):
            lean_step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    groups = {"weight matmuls": 0.0, "attention": 0.0, "other": 0.0}
    for e in events:
        if e.key in ("aten::mm", "aten::addmm", "mkldnn::_linear_pointwise", PROFILER_NAME):
            groups["weight matmuls"] += e.self_cpu_time_total
        elif e.key in ("aten::bmm", "aten::_softmax", ATTEND_PROFILER_NAME):
            groups["attention"] += e.self_cpu_time_total
        else:
            groups["other"] += e.self_cpu_time_total
    print(f"\nprofile of {args.profile_steps} engine steps (self CPU time):")
    for name, us in groups.items():
        print(
            f"  {name:28s} {us / 1e3 / args.profile_steps:8.1f} ms/step  {100 * us / total:5.1f}%"
        )
    print(events.table(sort_by="self_cpu_time_total", row_limit=12))
    return 0


if __name__ == "__main__":
    sys.exit(main())
