"""One decode step of the generation engine against what it replaces, in one process.

Three comparisons, each interleaved (A, B, A, B ...) and printed as a ratio:

1. **Sampling**: ``shoestring.engine.sampling.sample_categorical`` (with its rows' numbers from
   ``stream_uniforms``, as the engine draws them) vs ``torch.multinomial`` for 16 rows at
   vocabularies of 2,048, 32,000 and 151,936 (Qwen2's) tokens.
2. **Lean decode step**: ``LeanDecoder.step`` vs the model's own forward (with the engine's
   preallocated cache, as the engine calls it) per token, 16 rows after a 60-token prefill, on
   a random Qwen2 of the GRPO benchmark's shape and a random shoestring GPT of the quickstart's
   shape. The logits of both are compared too.
3. **Rollout precision**: the forward per token in fp32 vs under bf16 autocast for an fp32
   model (what GRPO's full fine-tune rolled out with before it sampled in the weights' dtype),
   where the host computes bf16 fast.

    python benchmarks/decode_step.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from shoestring.host import describe_host


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median seconds of each function, calls interleaved round by round. A function that
    returns a float has timed its own work (set-up excluded); otherwise the call is timed."""
    for f in fns.values():  # warm-up
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, f in fns.items():
            t0 = time.perf_counter()
            own = f()
            times[name].append(own if isinstance(own, float) else time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def sampling(rounds: int) -> None:
    from shoestring.engine.sampling import row_keys, sample_categorical, stream_uniforms

    gen = torch.Generator().manual_seed(0)
    keys = row_keys(range(16), 1)  # 16 rows, one stream each
    step = torch.zeros(16, dtype=torch.long)

    def shoestring(p: torch.Tensor) -> torch.Tensor:
        step.add_(1)  # the next token position: a new number per call, as in a decode loop
        return sample_categorical(p, stream_uniforms(0, keys, step))

    for vocab in (2048, 32000, 151936):
        probs = torch.randn(16, vocab, generator=gen).mul(3).softmax(-1)
        t = interleaved(
            {
                "multinomial": lambda p=probs: torch.multinomial(p, 1, generator=gen),
                "shoestring": lambda p=probs: shoestring(p),
            },
            rounds,
        )
        print(
            f"sampling 16 x {vocab:>6}: torch.multinomial {t['multinomial'] * 1e3:7.3f} ms, "
            f"shoestring {t['shoestring'] * 1e3:6.3f} ms, ratio "
            f"{t['multinomial'] / t['shoestring']:5.1f}x"
        )


def qwen2() -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=2048,
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    return Qwen2ForCausalLM(cfg).eval()


def quickstart_gpt() -> torch.nn.Module:
    from shoestring.models.gpt import ShoestringGPTConfig, ShoestringGPTForCausalLM
    from shoestring.quickstart import QUICKSTART_MODEL as shape

    torch.manual_seed(0)
    cfg = ShoestringGPTConfig(vocab_size=1024, max_seq_len=512, **shape)
    return ShoestringGPTForCausalLM(cfg).eval()


class Decoder:
    """Prefill 16 rows once, then time decode steps from copies of that state."""

    def __init__(self, model: torch.nn.Module, rows: int = 16, prompt: int = 60) -> None:
        from shoestring.engine import forward_params as _forward_params

        self.model, self.rows, self.prompt = model, rows, prompt
        self.params = _forward_params(model)
        gen = torch.Generator().manual_seed(1)
        self.ids = torch.randint(3, model.config.vocab_size, (rows, prompt), generator=gen)
        self.next = torch.randint(3, model.config.vocab_size, (rows,), generator=gen)

    def run(self, lean: bool, steps: int = 32) -> tuple[float, torch.Tensor]:
        """Seconds per token over ``steps`` decode steps, and the last logits."""
        from shoestring.engine import make_cache
        from shoestring.engine.lean_decode import LeanDecoder
        from shoestring.engine.model_io import forward_last_logits as _forward

        with torch.inference_mode():
            cache = make_cache(self.model, steps + 1)
            mask = torch.ones(self.rows, self.prompt, dtype=torch.long)
            self.model(input_ids=self.ids, past_key_values=cache, use_cache=True)
            decoder = LeanDecoder.build(self.model) if lean else None
            assert not lean or decoder is not None, "the lean step does not cover this model"
            pos = torch.full((self.rows,), self.prompt)
            t0 = time.perf_counter()
            for _ in range(steps):
                mask = torch.cat([mask, mask.new_ones((self.rows, 1))], dim=1)
                if decoder is not None:
                    logits = decoder.step(self.next, mask, pos, cache)
                else:
                    logits, cache = _forward(
                        self.model, self.params, self.next[:, None], mask, pos[:, None], cache
                    )
                pos = pos + 1
            return (time.perf_counter() - t0) / steps, logits


def lean_step(rounds: int) -> None:
    for label, model in (
        ("Qwen2 3.3M (GRPO benchmark shape)", qwen2()),
        ("shoestring GPT 2.0M (quickstart)", quickstart_gpt()),
    ):
        d = Decoder(model)
        logits: dict[bool, torch.Tensor] = {}

        def run(lean: bool, d: Decoder = d, out: dict = logits) -> float:
            seconds, out[lean] = d.run(lean)
            return seconds

        t = interleaved({"forward": lambda: run(False), "lean": lambda: run(True)}, rounds)
        diff = float((logits[True] - logits[False]).abs().max())
        print(
            f"decode step, {label}, 16 rows, fp32: model forward {t['forward'] * 1e3:.2f} "
            f"ms/token, lean {t['lean'] * 1e3:.2f} ms/token, ratio "
            f"{t['forward'] / t['lean']:.2f}x (max |logit diff| {diff:.1e})"
        )


def rollout_precision(rounds: int) -> None:
    from shoestring.runtime import host_supports_fast_bf16

    if not host_supports_fast_bf16("cpu"):
        print("rollout precision: this CPU has no fast bf16; nothing to compare")
        return
    for label, model in (("Qwen2 3.3M", qwen2()), ("shoestring GPT 2.0M", quickstart_gpt())):
        d = Decoder(model)

        def autocast(d: Decoder = d) -> float:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return d.run(lean=True)[0]

        t = interleaved({"fp32": lambda d=d: d.run(lean=True)[0], "autocast": autocast}, rounds)
        print(
            f"rollout dtype, {label}, fp32 weights: fp32 {t['fp32'] * 1e3:.2f} ms/token, "
            f"bf16 autocast {t['autocast'] * 1e3:.2f} ms/token, autocast/fp32 "
            f"{t['autocast'] / t['fp32']:.2f}x"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=20, help="interleaved rounds per comparison")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(describe_host(), flush=True)  # the host class every figure below belongs to
    print(f"torch {torch.__version__}, {args.threads} threads, {args.rounds} rounds (medians)")
    sampling(args.rounds)
    lean_step(args.rounds)
    rollout_precision(args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
