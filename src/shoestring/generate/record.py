"""The run directory of one ``shoestring generate`` call, as every command writes one.

Why a run directory for a command whose output is text on the terminal: the text scrolls away,
and a number such as tokens/s means nothing without the model, device, dtype and settings that
produced it. The directory (``output.dir/output.name``, ``generate`` by default, ``-2``, ``-3``
... appended when taken) holds ``config.json`` (the request), ``log.txt`` (the lines the
terminal saw on stderr), ``generations.jsonl`` (one record per prompt: prompt, text, tokens,
finish reason, tokens the context policy cut from the prompt's left), ``summary.json`` (status,
device, dtype, context, prompts truncated, tokens, tokens/s) and ``report.md``
(written by the lifecycle's finalizers, as for every command). Standard output stays the
generated text alone; the log lines go to stderr (none with ``quiet``).
"""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any

from shoestring.engine import GenerationResult
from shoestring.generate.config import GenerateConfig
from shoestring.models.context import PromptFit
from shoestring.report.finalize import command_finalizers
from shoestring.rundir.directory import RunDir, atomic_write_text, unique_run_dir
from shoestring.rundir.lifecycle import RunLifecycle

__all__ = ["GenerateRecord", "count_text"]


def count_text(n: int) -> str:
    """1234567 -> '1.2M', 45000 -> '45.0k' (tiny test models must not print 0.0M)."""
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e3:.1f}k"


class GenerateRecord:
    """Context manager around one generate call: opens the run directory, owns its lifecycle
    (status, monitor, summary, report) and records what was loaded and generated."""

    def __init__(self, cfg: GenerateConfig, world_size: int = 1) -> None:
        self.cfg = cfg
        self.path = unique_run_dir(cfg.output.dir, cfg.output.name or "generate")
        self.rundir = RunDir(self.path, "generate", echo=not cfg.output.quiet)
        # processes that generated (torchrun ranks; only this one, rank 0, writes)
        self.fields: dict[str, Any] = {"world_size": world_size}
        self.life = RunLifecycle(
            self.rundir,
            config=cfg.run_dict(),
            summary=lambda: self.fields,
            finalizers=command_finalizers(),
        )

    def __enter__(self) -> GenerateRecord:
        self.life.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.life.__exit__(exc_type, exc, tb)

    def loaded(self, info: dict[str, Any]) -> None:
        """The model that was loaded, where and in which dtype (log line and summary)."""
        self.rundir.log(
            f"loaded {info['path']} ({info['model_type']}, {count_text(info['n_params'])} params) "
            f"on {info['device']} as {info['dtype']} in {info['load_seconds']:.1f} s"
        )
        self.fields.update(
            runtime={"device": str(info["device"]), "dtype": info["dtype"]},
            model={k: info[k] for k in ("path", "source", "model_type", "n_params") if k in info},
            load_seconds=round(float(info["load_seconds"]), 3),
        )
        self.rundir.update_summary(**self.fields)

    def fitted(self, fit: PromptFit, max_new_tokens: int) -> None:
        """The context the prompts were fitted to: a warning per truncated prompt, and the
        limit and count in the summary."""
        for i, cut in enumerate(fit.cut):
            if cut:
                self.rundir.log(
                    f"WARNING prompt {i} is longer than the model's context of {fit.limit} "
                    f"tokens minus {max_new_tokens} new tokens: its first {cut} tokens were cut, "
                    f"the model reads its last {fit.budget}"
                )
        if fit.past_context:
            self.rundir.log(
                f"WARNING max_new_tokens={max_new_tokens} is more than the model's context of "
                f"{fit.limit} tokens: the answer runs past the positions it was trained on"
            )
        self.fields.update(
            context={
                "limit": fit.limit,
                "prompt_budget": fit.budget,
                "past_context": fit.past_context,
            },
            prompts_truncated=fit.truncated,
        )
        self.rundir.update_summary(**self.fields)

    def generated(
        self,
        prompts: list[str],
        results: list[GenerationResult],
        seconds: float,
        prompt_tokens_cut: list[int],
    ) -> None:
        """``generations.jsonl``, the throughput in the summary and the closing log line."""
        lines = [
            json.dumps(
                {
                    "index": i,
                    "prompt": prompt,
                    "text": res.text,
                    "tokens": res.n_tokens,
                    "prompt_tokens": res.prompt_tokens,
                    "prompt_tokens_cut": cut,
                    "finish_reason": res.finish_reason,
                    "stop_string": res.stop_string,
                }
            )
            + "\n"
            for i, (prompt, res, cut) in enumerate(
                zip(prompts, results, prompt_tokens_cut, strict=True)
            )
        ]
        atomic_write_text(self.path / "generations.jsonl", "".join(lines))
        tokens = sum(r.n_tokens for r in results)
        reasons: dict[str, int] = {}
        for r in results:
            reasons[r.finish_reason] = reasons.get(r.finish_reason, 0) + 1
        self.fields.update(
            prompts=len(prompts),
            tokens=tokens,
            generation_seconds=round(seconds, 4),
            # generated tokens over the generation wall time; loading is not counted
            tokens_per_second=tokens / max(seconds, 1e-9),
            finish_reasons=reasons,
        )
        self.rundir.log(
            f"[{tokens} tokens in {seconds:.2f} s = {tokens / max(seconds, 1e-9):.1f} tokens/s; "
            f"finish: {', '.join(sorted(reasons))}]"
        )
