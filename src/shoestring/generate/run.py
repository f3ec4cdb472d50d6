"""``shoestring generate``: text from a run directory or any HF causal LM.

One prompt streams its tokens to the terminal as they are produced; several prompts run as
batches through the same engine the GSM8K benchmark and GRPO use, with a progress bar, and
print in the order given. ``--temperature 0`` (the default) is greedy decoding. Every call
writes a run directory (:mod:`shoestring.generate.record`); standard output carries the
generated text alone, and the run directory's path is the last line on stderr.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

from shoestring.engine import Engine, EngineOptions, Sampling
from shoestring.generate.config import GenerateConfig
from shoestring.generate.record import GenerateRecord
from shoestring.models.loading import load_model_and_tokenizer, quiet_hf_progress

__all__ = ["run"]


def _sampling(cfg: GenerateConfig) -> Sampling:
    """The engine's request (its temperature 0 is greedy, as the command's)."""
    return Sampling(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        seed=cfg.seed,
        stop_strings=list(cfg.stop),
    ).check()


def run(cfg: GenerateConfig) -> Path:
    """Load the model, generate (the text on stdout), record the run; its run directory.

    The model loads before the run directory opens: a model that cannot load (a typo in its
    path, a refused pickle) is an error that leaves no directory behind."""
    cfg.check()
    sampling = _sampling(cfg)
    with quiet_hf_progress(cfg.output.quiet):  # transformers' loading bar obeys --quiet too
        model, tokenizer, info = load_model_and_tokenizer(
            cfg.model, device=cfg.device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code
        )
    with GenerateRecord(cfg) as record:
        record.loaded(info)
        _generate(cfg, sampling, model, tokenizer, record)
    return record.path


def _generate(
    cfg: GenerateConfig,
    sampling: Sampling,
    model: torch.nn.Module,
    tokenizer: Any,
    record: GenerateRecord,
) -> None:
    """Generate and print the text (log lines go through the run directory)."""
    engine = Engine(model, tokenizer, EngineOptions(batch_size=cfg.batch_size))
    t0 = time.perf_counter()
    if len(cfg.prompts) == 1:
        # one prompt: stream its tokens to the terminal as they are produced
        out = sys.stdout
        out.write(cfg.prompts[0])
        out.flush()

        def stream(_i: int, text: str) -> None:
            out.write(text)
            out.flush()

        results = engine.generate(cfg.prompts, sampling, on_text=stream)
        out.write("\n")
        out.flush()
    else:
        # several: batched, printed in the order given once all are done
        results = engine.generate(cfg.prompts, sampling, progress=not cfg.output.quiet)
        for i, (prompt, res) in enumerate(zip(cfg.prompts, results, strict=True)):
            print(f"=== [{i}] finish={res.finish_reason} tokens={res.n_tokens}")
            print(prompt + res.text)
    record.generated(cfg.prompts, results, time.perf_counter() - t0)
