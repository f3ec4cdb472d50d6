"""``shoestring generate``: text from a run directory or any HF causal LM.

One prompt streams its tokens to the terminal as they are produced; several prompts run as
batches through the same engine the GSM8K benchmark and GRPO use, with a progress bar, and
print in the order given. ``--temperature 0`` (the default) is greedy decoding. Every call
writes a run directory (:mod:`shoestring.generate.record`); standard output carries the
generated text alone, and the run directory's path is the last line on stderr.

Prompts are fitted to the model's context before the run directory opens (the context policy,
:mod:`shoestring.models.context`): a prompt longer than the context minus ``max_new_tokens``
keeps its last tokens, with a warning and the count recorded, and ``max_new_tokens`` that fill
the whole context are refused in one line.

Under ``torchrun`` every rank loads the model and generates its share of the prompts (dealt
round-robin); rank 0 gathers the results in prompt order, prints them and writes the one run
directory, so ``generations.jsonl`` holds what one process writes - sampled text too: each
prompt samples on its own stream, its position in the list (``Engine.generate``'s
``streams``), whatever rank and batch it lands in.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

from shoestring.distributed import (
    DistInfo,
    broadcast_from_main,
    command_group,
    gather_ordered,
    rank_device,
    rank_threads,
    shard_positions,
)
from shoestring.engine import (
    Engine,
    EngineOptions,
    GenerationResult,
    Sampling,
    TextOptions,
    encode_prompts,
)
from shoestring.errors import UserError
from shoestring.generate.config import GenerateConfig
from shoestring.generate.record import GenerateRecord
from shoestring.models.context import (
    PromptFit,
    context_limit,
    fit_prompts,
    has_learned_positions,
    tokenizing_long_prompts,
)
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
    with command_group(cfg.device) as ranks:  # under torchrun: every rank runs this
        return _run(cfg, sampling, ranks)


def _run(cfg: GenerateConfig, sampling: Sampling, ranks: DistInfo) -> Path:
    """:func:`run` on one rank: every rank generates its share, rank 0 records the run."""
    if ranks.enabled:  # ranks on one host split its cores (one process keeps torch's default)
        torch.set_num_threads(rank_threads(0, ranks))
    with quiet_hf_progress(cfg.output.quiet or not ranks.is_main):  # the bar obeys --quiet
        model, tokenizer, info = load_model_and_tokenizer(
            cfg.model,
            device=rank_device(cfg.device, ranks),
            dtype=cfg.dtype,
            trust_remote_code=cfg.trust_remote_code,
        )
    fit = _fit(cfg, model, tokenizer)
    if not ranks.is_main:
        _generate(cfg, sampling, model, tokenizer, fit, None, ranks)
        return broadcast_from_main(Path(), ranks)  # the run directory rank 0 wrote
    with GenerateRecord(cfg, ranks.world_size) as record:
        record.loaded(info)
        record.fitted(fit, cfg.max_new_tokens)
        _generate(cfg, sampling, model, tokenizer, fit, record, ranks)
    return broadcast_from_main(record.path, ranks)


def _fit(cfg: GenerateConfig, model: torch.nn.Module, tokenizer: Any) -> PromptFit:
    """The prompts' token ids fitted to the model's context (left truncation; the engine
    tokenises text prompts the same way, with its default ``TextOptions``)."""
    with tokenizing_long_prompts():
        ids = encode_prompts(tokenizer, cfg.prompts, TextOptions().add_special_tokens)
    learned = has_learned_positions(model)  # RoPE can read past its context; a table cannot
    fit = fit_prompts(
        ids, context_limit(model, tokenizer), cfg.max_new_tokens, extrapolates=not learned
    )
    if fit.no_room is not None:
        raise UserError(f"{cfg.model}: {fit.no_room} (generate --max-new-tokens N)")
    return fit


def _generate(
    cfg: GenerateConfig,
    sampling: Sampling,
    model: torch.nn.Module,
    tokenizer: Any,
    fit: PromptFit,
    record: GenerateRecord | None,
    ranks: DistInfo,
) -> None:
    """Generate this rank's share of the fitted prompts; on rank 0 (``record`` set) print
    every prompt's text in the order given and record them (log lines go through the run
    directory). A truncated prompt is still printed as it was given."""
    engine = Engine(model, tokenizer, EngineOptions(batch_size=cfg.batch_size))
    ids = [x for x in fit.ids if x is not None]  # truncation refuses no prompt
    # round-robin: one process takes every prompt; a single prompt is rank 0's alone
    mine = shard_positions(len(ids), ranks, strided=True)
    t0 = time.perf_counter()
    local: list[GenerationResult] = []
    if len(cfg.prompts) == 1 and mine:
        # one prompt: stream its tokens to the terminal as they are produced
        out = sys.stdout
        out.write(cfg.prompts[0])
        out.flush()

        def stream(_i: int, text: str) -> None:
            out.write(text)
            out.flush()

        local = engine.generate(ids, sampling, on_text=stream, streams=mine)
        out.write("\n")
        out.flush()
    elif mine:
        show = not cfg.output.quiet and record is not None  # one progress bar: rank 0's
        # each prompt's stream is its place in the whole list: the samples one process draws
        local = engine.generate([ids[i] for i in mine], sampling, progress=show, streams=mine)
    for pos, res in zip(mine, local, strict=True):
        res.index = pos  # the prompt's position in the whole list, not in this rank's share
    results = gather_ordered(local, len(ids), ranks, strided=True)
    if record is None:
        return
    if len(cfg.prompts) > 1:  # several: printed in the order given once all are done
        for i, (prompt, res) in enumerate(zip(cfg.prompts, results, strict=True)):
            print(f"=== [{i}] finish={res.finish_reason} tokens={res.n_tokens}")
            print(prompt + res.text)
    record.generated(cfg.prompts, results, time.perf_counter() - t0, fit.cut)
