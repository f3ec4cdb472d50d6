"""``shoestring generate``: text from a run directory or any HF causal LM.

One prompt streams its tokens to the terminal as they are produced; several prompts run as
batches through the same engine the GSM8K benchmark and GRPO use, with a progress bar, and
print in the order given. ``--temperature 0`` (the default) is greedy decoding.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from shoestring.engine import (
    GenerationResult,
    SamplingConfig,
    generate_all,
    generate_batch_auto,
)
from shoestring.errors import UserError
from shoestring.models.loading import load_model_and_tokenizer, quiet_hf_progress

__all__ = ["GenerateConfig", "run"]


@dataclass
class GenerateConfig:
    """What ``generate`` was asked (the command-line wiring is in :mod:`shoestring.bench.cli`)."""

    model: str
    prompts: list[str] = field(default_factory=list)
    max_new_tokens: int = 100
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop: list[str] = field(default_factory=list)
    batch_size: int = 0
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    quiet: bool = False  # no load line, progress bar or summary on stderr


def _sampling(cfg: GenerateConfig) -> SamplingConfig:
    """The engine's settings; temperature 0 means greedy (the engine's temperature is unused)."""
    return SamplingConfig(
        max_new_tokens=cfg.max_new_tokens,
        do_sample=cfg.temperature > 0,
        temperature=cfg.temperature if cfg.temperature > 0 else 1.0,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        seed=cfg.seed,
        stop_strings=list(cfg.stop),
        batch_size=cfg.batch_size,
    ).check()


def _count(n: int) -> str:
    """1234567 -> '1.2M', 45000 -> '45.0k' (tiny test models must not print 0.0M)."""
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e3:.1f}k"


def _summary(results: list[GenerationResult], seconds: float) -> str:
    tokens = sum(r.n_tokens for r in results)
    reasons = ", ".join(sorted({r.finish_reason for r in results}))
    return (
        f"[{tokens} tokens in {seconds:.2f} s = {tokens / max(seconds, 1e-9):.1f} tokens/s; "
        f"finish: {reasons}]"
    )


def run(cfg: GenerateConfig) -> int:
    """Load the model, generate, print; returns the exit code."""
    if not cfg.prompts:
        raise UserError("give at least one --prompt TEXT")
    sampling = _sampling(cfg)
    with quiet_hf_progress(cfg.quiet):  # transformers' loading bar obeys --quiet too
        model, tokenizer, info = load_model_and_tokenizer(
            cfg.model, device=cfg.device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code
        )
    if not cfg.quiet:
        print(
            f"loaded {info['path']} ({info['model_type']}, {_count(info['n_params'])} params) "
            f"on {info['device']} as {info['dtype']} in {info['load_seconds']:.1f} s",
            file=sys.stderr,
        )

    t0 = time.perf_counter()
    if len(cfg.prompts) == 1:
        # one prompt: stream its tokens to the terminal as they are produced
        out = sys.stdout
        out.write(cfg.prompts[0])
        out.flush()

        def stream(_i: int, text: str) -> None:
            out.write(text)
            out.flush()

        results = generate_batch_auto(model, tokenizer, cfg.prompts, sampling, on_text=stream)
        out.write("\n")
        out.flush()
    else:
        # several: batched, printed in the order given once all are done
        results = generate_all(model, tokenizer, cfg.prompts, sampling, progress=not cfg.quiet)
        for i, (prompt, res) in enumerate(zip(cfg.prompts, results, strict=True)):
            print(f"=== [{i}] finish={res.finish_reason} tokens={res.n_tokens}")
            print(prompt + res.text)
    if not cfg.quiet:
        print(_summary(results, time.perf_counter() - t0), file=sys.stderr)
    return 0
