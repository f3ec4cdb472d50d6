"""Which fp32 matmul kernel a CPU decode or prefill step should use: every kernel torch offers
for ``x @ W.T`` with a fixed weight, at the step's real shapes, timed interleaved.

Why: shoestring's fp32 decode step spends about 90% of its time in weight matmuls at a few
rows (docs/generate.md), so the kernel that multiplies them decides its speed. The candidates,
all exact fp32 (no bf16 or TF32 behind fp32's back):

- ``F.linear``: what a model's own forward runs (MKL's sgemm on x86);
- ``oneDNN packed``: the weight reordered once (``torch.ops.mkldnn._reorder_linear_weight``)
  and multiplied with ``torch.ops.mkldnn._linear_pointwise`` - what the engine's lean step
  uses for fp32 weights of 64 MiB or more on other host classes (``engine/packed_linear.py``);
- ``shoestring AVX2``: shoestring's own kernel for AVX2+FMA hosts (``engine/sgemm_avx2.py``),
  weights packed once into panels of six rows - what the engine uses on the ``avx2`` host class
  (listed where it builds: an x86-64 CPU with AVX2 and FMA, and a C compiler);
- ``shoestring AVX2, bf16 copy``: the same kernel reading a packed copy in bf16, for weights
  whose fp32 values are all bf16 values - a bf16 checkpoint loaded in fp32, as most are
  shipped (``--bf16-values`` rounds the random weights so; every kernel then gets those
  weights). Its products equal the fp32 copy's bit for bit, from half the bytes;
- ``MKL packed``: MKL's packed sgemm (``torch.ops.mkl._mkl_reorder_linear_weight`` and
  ``_mkl_linear``), what ``torch.compile`` with freezing runs for fp32 linear layers;
- ``inductor``: ``torch.compile(mode="max-autotune")`` with freezing, which also generates
  its own C++ GEMM micro-kernels and keeps the fastest of them and the ATen kernels
  (``--inductor``; compiles for minutes on a small CPU).

Shapes: Qwen2.5-0.5B's (hidden 896, intermediate 4864, 14/2 heads, vocab 151,936): the fused
q/k/v product (1152 x 896), the fused gate/up (9728 x 896), down (896 x 4864), o (896 x 896)
and the head (151,936 x 896), summed over one layer and the head, at each ``--rows`` (16 is a
batch-16 decode step, 512 a prefill). Each product is checked against float64 within fp32
rounding. The host line says the class (CPU flags) every figure belongs to.

    python benchmarks/linear_kernels.py --rows 1 16 64 512
    python benchmarks/linear_kernels.py --rows 16 --inductor
    python benchmarks/linear_kernels.py --rows 512 --shapes qkv_t o_t gate_up_t down_t
    python benchmarks/linear_kernels.py --rows 1 8 16 --bf16-values
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: (out, in) of each weight product of one Qwen2.5-0.5B layer (fused as the lean step fuses),
#: then the head
SHAPES = {
    "qkv": (1152, 896),
    "o": (896, 896),
    "gate_up": (9728, 896),
    "down": (896, 4864),
    "head": (151936, 896),
}
#: the same weights transposed: the products ``g W`` of a training pass's backward (the input's
#: gradient), as a LoRA run's frozen weights multiply them (``rl/packed_products.py``); their
#: "F.linear" row is ``g @ W`` with the layer's own weight, what autograd runs
TRANSPOSED = {f"{name}_t": (k, n) for name, (n, k) in SHAPES.items() if name != "head"}
DEFAULT_SHAPES = list(SHAPES)
SHAPES |= TRANSPOSED


def timed(fn: Callable[[], object], seconds: float) -> float:
    """Median seconds per call of ``fn`` over about ``seconds`` (after two warm-up calls)."""
    fn()
    fn()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def kernels(
    w: object, rows: int, inductor: bool, transposed: bool = False
) -> dict[str, Callable[[object], object]]:
    """Every candidate's ``x -> x @ w.T`` for weight ``w`` (prepared here, once)."""
    import torch
    import torch.nn.functional as F

    out: dict[str, Callable[[object], object]] = {"F.linear": lambda x: F.linear(x, w)}
    if transposed:  # a backward's g W: autograd multiplies by the layer's own [out, in] weight
        layer_weight = w.t().contiguous()
        out["F.linear"] = lambda x: x @ layer_weight
    packed = torch.ops.mkldnn._reorder_linear_weight(w, rows)
    out["oneDNN packed"] = lambda x: torch.ops.mkldnn._linear_pointwise(
        x, packed, None, "none", [None], ""
    )
    from shoestring.engine import sgemm_avx2
    from shoestring.engine.packed_linear import avx2_kernel_available, bf16_storage_available

    if avx2_kernel_available():  # shoestring's own, where it builds and meets the fp32 policy
        own = sgemm_avx2.pack(w)
        out["shoestring AVX2"] = lambda x: sgemm_avx2.linear(x, own, w.shape[0], None)
        if sgemm_avx2.is_bf16_valued(w) and bf16_storage_available():
            half = sgemm_avx2.pack(w, bf16=True)
            out["shoestring AVX2, bf16 copy"] = lambda x: sgemm_avx2.linear(
                x, half, w.shape[0], None
            )
    if hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight"):
        mkl = torch.ops.mkl._mkl_reorder_linear_weight(w, rows)
        out["MKL packed"] = lambda x: torch.ops.mkl._mkl_linear(x, mkl, w, None, rows)
    if inductor:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        layer = torch.nn.Linear(w.shape[1], w.shape[0], bias=False).eval()
        layer.weight.data = w
        out["inductor"] = torch.compile(layer, mode="max-autotune")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[1, 16, 64, 512])
    p.add_argument("--threads", type=int, default=0, help="0 = the host's physical cores")
    p.add_argument("--seconds", type=float, default=1.0, help="timing per kernel and shape")
    p.add_argument("--inductor", action="store_true", help="also torch.compile (max-autotune)")
    p.add_argument(
        "--bf16-values",
        action="store_true",
        help="weights rounded to bf16 values (a bf16 checkpoint in fp32), for every kernel; "
        "adds shoestring's bf16 copy",
    )
    p.add_argument(
        "--shapes",
        nargs="+",
        default=DEFAULT_SHAPES,
        choices=list(SHAPES),
        help="products to time (the *_t ones: a backward's g W)",
    )
    args = p.parse_args(argv)

    import torch

    from shoestring.engine.packed_linear import within_fp32_rounding
    from shoestring.host import describe_host
    from shoestring.runtime import physical_cores

    torch.set_num_threads(args.threads or physical_cores())
    print(f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"command: {shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])}")
    print(describe_host(torch.device("cpu")), flush=True)
    gen = torch.Generator().manual_seed(0)
    weights = {k: torch.randn(SHAPES[k], generator=gen) * 0.02 for k in args.shapes}
    if args.bf16_values:
        weights = {k: w.to(torch.bfloat16).float() for k, w in weights.items()}
    print(f"weights: fp32{', every value a bf16 value' if args.bf16_values else ''}")
    for rows in args.rows:
        totals: dict[str, float] = {}
        flops = 0.0
        for name, w in weights.items():
            x = torch.randn(rows, w.shape[1], generator=gen)
            flops += 2.0 * rows * w.shape[0] * w.shape[1]
            want = x.double() @ w.double().T
            with torch.no_grad():  # (inductor cannot freeze inference tensors)
                for kname, fn in kernels(w, rows, args.inductor, name in TRANSPOSED).items():
                    got = fn(x)
                    if not within_fp32_rounding(got, want, x, w):
                        raise SystemExit(
                            f"{kname} at {name}, {rows} rows: not within fp32 rounding"
                        )
                    seconds = timed(lambda fn=fn, x=x: fn(x), args.seconds)
                    totals[kname] = totals.get(kname, 0.0) + seconds
                    print(
                        f"  rows {rows:4d} {name:8s} {kname:26s} {seconds * 1e3:8.3f} ms "
                        f"{2 * rows * w.numel() / seconds / 1e9:7.1f} GFLOP/s",
                        flush=True,
                    )
        base = totals["F.linear"]
        print(f"rows {rows}: {' + '.join(weights)}, {flops / 1e9:.2f} GFLOP")
        for kname, seconds in totals.items():
            print(
                f"  {kname:26s} {seconds * 1e3:8.2f} ms  {flops / seconds / 1e9:7.1f} GFLOP/s  "
                f"{base / seconds:5.2f}x F.linear"
            )
        print(flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
