"""Training throughput: shoestring's GPT against Hugging Face's LlamaForCausalLM, same shape.

Both models get the same d_model, layers, heads, d_ff, vocab, sequence length and batch, and
train on the same random tokens in one process. Measurements are interleaved (round-robin, a
few steps of each setting per round) so that a noisy shared machine slows every setting alike;
each figure is the median step time over all rounds after warm-up. Two comparisons:

- equal settings: fp32, no torch.compile, the same AdamW (torch default), same loss code;
- defaults: what each one does out of the box - shoestring's trainer defaults on this host
  (dtype=auto, flush denormals, fused AdamW, its own loss path) against a plain HF model in
  fp32 with torch's default AdamW (what a user of the HF model gets without extra work).

MFU is achieved model FLOP/s over the matmul peak measured on this host for the dtype used.
FLOPs per token use the PaLM convention: 6 * N_non-embedding + 6 * d_vocab * d_model (the LM head)
+ 12 * layers * d_attn * seq (attention scores and values, non-causal count), for each model's
own parameter count (a GELU MLP has 2 matrices, Llama's SwiGLU 3 - the FLOPs column says so).

    python benchmarks/train_throughput.py [--preset wiki_cache_optimized] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from shoestring.analyze.probe import measure_matmul_peak
from shoestring.host import describe_host
from shoestring.models.gpt import ShoestringGPTConfig, ShoestringGPTForCausalLM
from shoestring.run_config import build_run_config
from shoestring.runtime import setup_runtime
from shoestring.train.optimizer import build_optimizer


@dataclass
class Setting:
    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step: Callable[[torch.Tensor, torch.Tensor], float]
    dtype: str
    flops_per_token: float
    times: list[float]


def flops_per_token(
    model: torch.nn.Module, n_layers: int, d_model: int, seq: int, vocab: int
) -> float:
    emb = sum(
        p.numel()
        for n, p in model.named_parameters()
        if "embed" in n or n.endswith("wte.weight") or n.endswith("wpe.weight")
    )
    n_total = sum(p.numel() for p in model.parameters())
    non_emb = n_total - emb
    head = vocab * d_model  # the output projection does real FLOPs even when tied
    if getattr(model.config, "tie_word_embeddings", False) is False:
        non_emb -= head  # untied head is a parameter of its own; count it once, as head
    return 6 * non_emb + 6 * head + 12 * n_layers * d_model * seq


def make_step(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    autocast: str | None,
    use_targets: bool,
    clip: float = 1.0,
    compiled: bool = False,
) -> Callable[[torch.Tensor, torch.Tensor], float]:
    params = list(model.parameters())
    if compiled:
        model = torch.compile(model)

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        ctx = (
            torch.autocast("cpu", dtype=torch.bfloat16)
            if autocast == "bf16"
            else torch.autocast("cpu", enabled=False)
        )
        with ctx:
            if use_targets:
                loss = model(input_ids=x, targets=y, return_logits=False).loss
            else:
                logits = model(input_ids=x).logits
                loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", default="wiki_cache_optimized")
    ap.add_argument("--batch", type=int, default=0, help="override the preset's batch size")
    ap.add_argument("--seq", type=int, default=0, help="override the preset's sequence length")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    ap.add_argument("--steps-per-round", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="0 = physical cores")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    ap.add_argument(
        "--no-llama-like",
        action="store_true",
        help="skip the shoestring row with Llama's architecture (SwiGLU, RoPE, RMSNorm)",
    )
    args = ap.parse_args()

    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = build_run_config(args.preset)
    m = cfg.model
    seq = args.seq or cfg.train.seq_len
    batch = args.batch or cfg.train.batch_size
    rt = setup_runtime("cpu", "auto", args.threads, "auto")
    print(describe_host(), flush=True)  # the host class every figure below belongs to
    print(
        f"host: {rt.threads} threads, shoestring default dtype on this host: {rt.dtype}, "
        f"flush denormals: {rt.flush_denormal}"
    )
    print(
        f"shape ({args.preset}): d_model {m.d_model}, layers {m.n_layers}, heads {m.n_heads}, "
        f"d_ff {m.d_ff}, vocab {m.vocab_size}, seq {seq}, batch {batch}"
    )

    def shoestring_model(**switches: object) -> torch.nn.Module:
        torch.manual_seed(0)
        hf = ShoestringGPTConfig.from_model_config(m, **switches)
        return ShoestringGPTForCausalLM(hf).train()

    def llama_model() -> torch.nn.Module:
        torch.manual_seed(0)
        lc = LlamaConfig(
            vocab_size=m.vocab_size,
            hidden_size=m.d_model,
            intermediate_size=m.d_ff,
            num_hidden_layers=m.n_layers,
            num_attention_heads=m.n_heads,
            num_key_value_heads=m.n_heads,
            max_position_embeddings=seq,
            tie_word_embeddings=m.tie_word_embeddings,
        )
        return LlamaForCausalLM(lc).train()

    settings: list[Setting] = []

    def add(
        name: str,
        model: torch.nn.Module,
        opt: torch.optim.Optimizer,
        dtype: str,
        use_targets: bool,
        compiled: bool = False,
    ) -> None:
        fpt = flops_per_token(model, m.n_layers, m.d_model, seq, m.vocab_size)
        step = make_step(model, opt, dtype, use_targets, compiled=compiled)
        settings.append(Setting(name, model, opt, step, dtype, fpt, []))

    hp = {"lr": 1e-4, "betas": (0.9, 0.95), "weight_decay": 0.1}
    sm = shoestring_model()
    add(
        "shoestring fp32 (equal settings)",
        sm,
        torch.optim.AdamW(sm.parameters(), **hp),
        "fp32",
        False,
    )
    lm = llama_model()
    add(
        "HF Llama fp32 (equal settings)",
        lm,
        torch.optim.AdamW(lm.parameters(), **hp),
        "fp32",
        False,
    )
    sd = shoestring_model()
    add(
        f"shoestring defaults ({rt.dtype})",
        sd,
        build_optimizer(sd, cfg, torch.device("cpu")),
        rt.dtype,
        True,
    )
    if not args.no_llama_like:
        # Same architecture as Llama (SwiGLU, RoPE, RMSNorm), so the FLOPs match the peer's and
        # the ratio shows what the engine buys without the smaller GELU MLP.
        ll = shoestring_model(mlp="swiglu", position="rope", norm="rmsnorm")
        add(
            f"shoestring Llama-like defaults ({rt.dtype})",
            ll,
            build_optimizer(ll, cfg, torch.device("cpu")),
            rt.dtype,
            True,
        )
    if not args.no_compile:
        # train.compile=auto turns torch.compile on when more than 10 minutes of eager training
        # are left (measured after 3 steps); this row is the default for such long runs.
        sc = shoestring_model()
        add(
            f"shoestring defaults, long run ({rt.dtype} + compile)",
            sc,
            build_optimizer(sc, cfg, torch.device("cpu")),
            rt.dtype,
            True,
            compiled=True,
        )
    # HF defaults: fp32 weights, SDPA attention (the library default), torch's default AdamW.
    # The equal-settings HF model already is exactly that, so it is reused as the peer.
    hf_default = settings[1]

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, m.vocab_size, (batch, seq), generator=g)
    y = torch.randint(0, m.vocab_size, (batch, seq), generator=g)
    warmup_seconds = {}
    for s in settings:
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            s.step(x, y)
        warmup_seconds[s.name] = time.perf_counter() - t0
    peak_samples: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(args.rounds):
        peak_samples["fp32"].append(measure_matmul_peak(torch.float32, repeats=2))
        peak_samples["bf16"].append(measure_matmul_peak(torch.bfloat16, repeats=2))
        for s in settings:
            for _ in range(args.steps_per_round):
                t0 = time.perf_counter()
                s.step(x, y)
                s.times.append(time.perf_counter() - t0)

    peaks = {k: max(v) for k, v in peak_samples.items()}
    tokens = batch * seq
    print(
        f"\nmeasured matmul peak on this host: fp32 {peaks['fp32']:.0f} GFLOP/s, "
        f"bf16 {peaks['bf16']:.0f} GFLOP/s (1024x1024 matmul, best sample between rounds)"
    )
    print(
        f"\n{'setting':48s} {'params':>8s} {'GFLOP/tok':>9s} {'step s':>8s} {'tokens/s':>10s} "
        f"{'GFLOP/s':>8s} {'MFU':>6s}"
    )
    rate = {}
    for s in settings:
        med = statistics.median(s.times)
        tps = tokens / med
        rate[s.name] = tps
        gflops = tps * s.flops_per_token / 1e9
        n = sum(p.numel() for p in s.model.parameters())
        print(
            f"{s.name:48s} {n / 1e6:7.2f}M {s.flops_per_token / 1e9:9.3f} {med:8.3f} "
            f"{tps:10.0f} {gflops:8.1f} {gflops / peaks[s.dtype]:6.1%}"
        )
    eq = rate[settings[0].name] / rate[settings[1].name]
    de = rate[settings[2].name] / rate[hf_default.name]
    print(f"\nratio at equal settings (fp32, no compile): shoestring / HF Llama = {eq:.2f}x")
    print(f"ratio at defaults: shoestring ({rt.dtype}) / HF Llama (fp32) = {de:.2f}x")
    for s in settings:
        if "compile" in s.name:
            print(
                f"ratio at long-run defaults (torch.compile, {warmup_seconds[s.name]:.0f} s of "
                f"compile and warm-up first): {rate[s.name] / rate[hf_default.name]:.2f}x"
            )
    if not args.no_llama_like:
        ll_ratio = rate[settings[3].name] / rate[hf_default.name]
        print(
            f"ratio at defaults, same architecture as Llama (SwiGLU/RoPE/RMSNorm): {ll_ratio:.2f}x"
        )
    print(
        f"({args.rounds} interleaved rounds x {args.steps_per_round} steps, median step time; "
        f"random tokens; {rt.threads} threads)"
    )


if __name__ == "__main__":
    main()
