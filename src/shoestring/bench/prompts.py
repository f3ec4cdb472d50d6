"""The prompts a model of a bench is asked: rendered by the protocol, fitted to the model's
context, and hashed as lm-eval hashes them.

Why before the first forward pass: a prompt longer than the model's context fails deep in the
forward pass of a model with learned positions (an ``IndexError``, and with the engine's
longest-first order the whole batch of problems is lost with it) and reads unseen positions in
a RoPE model. The context policy (:mod:`shoestring.models.context`) is applied to every prompt
here, once: a long prompt keeps its last ``context - max_new_tokens`` tokens, as lm-eval does,
and the tokens cut are recorded per problem; ``max_new_tokens`` that fill the whole context are
refused in one line before any model loads (:func:`check_context_early`, from the config alone)
or, where only the tokenizer names the context, before anything is generated. lm-eval's own
protocols keep lm-eval's context rule (``scoring/lm_eval_rules.py``), so their prompts stay
identical to lm-eval's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transformers import AutoConfig

from shoestring.bench.models import ModelSpec
from shoestring.data.gsm8k import Problem
from shoestring.engine import Sampling, auto_batch_size
from shoestring.errors import UserError
from shoestring.models.context import (
    PromptFit,
    context_limit,
    fit_prompts,
    has_learned_positions,
    no_room_reason,
    tokenizing_long_prompts,
)
from shoestring.models.loading import resolve_model_path
from shoestring.rundir.directory import RunDir
from shoestring.scoring.lm_eval_rules import context_length
from shoestring.scoring.protocols import Protocol
from shoestring.scoring.scoring import render_prompts, sampling_for

__all__ = ["BenchPrompts", "bench_prompts", "check_context_early"]

_FIX = "(bench --max-new-tokens N)"


@dataclass(frozen=True)
class BenchPrompts:
    """Each problem's prompt text (what ``prompt_hash`` hashes) and its token ids as the model
    reads them (``fit.ids``; ``fit.cut`` the tokens removed from the left)."""

    texts: list[str]
    fit: PromptFit

    @property
    def context(self) -> dict[str, int | bool | None]:
        """The context the prompts were fitted to: the model's limit, the prompt tokens kept
        at most, and whether answers may run past the limit (a RoPE model asked for more
        tokens than its context holds) - summary.json's ``models[i].context``."""
        return {
            "limit": self.fit.limit,
            "prompt_budget": self.fit.budget,
            "past_context": self.fit.past_context,
        }

    def start(
        self,
        model: Any,
        protocol: Protocol,
        missing: Sequence[Problem],
        max_new_tokens: int,
        batch_size: int,
        log: tuple[RunDir, str, dict[str, Any]],
    ) -> tuple[Sampling, list[str], int]:
        """What answering ``missing`` needs, the same in one process and over torchrun's
        ranks: the greedy sampling, each problem's gold as the protocol compares it, and the
        rows decoded together; logs the fit and records the batch in the session."""
        rundir, label, session = log
        if self.fit.kept() != list(range(len(missing))):  # the policy truncates, refusing none
            raise RuntimeError(f"{label}: prompts were refused by the context policy")
        sampling = sampling_for(protocol, max_new_tokens)
        self.log_fit(rundir, label, max_new_tokens)
        lengths = self.lengths
        rows = batch_size or auto_batch_size(model, max(lengths), sampling.max_new_tokens)
        session["batch_size_auto_first"] = None if batch_size else rows
        session["prompt_tokens_mean"] = round(sum(lengths) / len(lengths), 1)
        # lm-eval compares with the whole answer field (its "#### 12.00" is not 12)
        golds = [p.answer if protocol.matcher == "lm-eval" else p.gold for p in missing]
        return sampling, golds, rows

    def log_fit(self, rundir: RunDir, label: str, max_new_tokens: int) -> None:
        """Say in the log what the context policy did to this model's prompts."""
        fit = self.fit
        if fit.truncated:
            rundir.log(
                f"{label}: {fit.truncated} of {len(fit.ids)} prompts left-truncated to their "
                f"last {fit.budget} tokens (context {fit.limit} minus {max_new_tokens} new "
                "tokens), as lm-eval does; problems.jsonl records the tokens cut "
                "(prompt_tokens_cut)"
            )
        if fit.past_context:  # a RoPE model: it runs, on positions it was not trained on
            rundir.log(
                f"WARNING {label}: max_new_tokens={max_new_tokens} is more than the model's "
                f"context of {fit.limit} tokens; answers run past the positions it was trained on"
            )

    @property
    def lengths(self) -> list[int]:
        """Prompt tokens the model reads, per problem (after truncation)."""
        return [len(x or ()) for x in self.fit.ids]


def bench_prompts(
    model: Any,
    tokenizer: Any,
    protocol: Protocol,
    problems: Sequence[Problem],
    fewshot: Sequence[Sequence[Problem]] | None,
    max_new_tokens: int,
    label: str,
) -> BenchPrompts:
    """Render, fit and describe the prompts of ``problems``; a one-line error when
    ``max_new_tokens`` leaves no room for any prompt."""
    # the untruncated prompts (the one rendering path), so the tokens cut are counted here
    with tokenizing_long_prompts():
        rendered = render_prompts(
            model,
            tokenizer,
            [p.question for p in problems],
            protocol,
            max_new_tokens=max_new_tokens,
            fewshot=fewshot,
            fit_context=False,  # fitted below, where the tokens cut are counted
        )
    texts, whole = rendered.texts, rendered.ids
    if protocol.truncation == "left":  # lm-eval's protocols: lm-eval's idea of the context
        limit: int | None = context_length(getattr(model, "config", None), tokenizer)
    else:
        limit = context_limit(model, tokenizer)
    fit = fit_prompts(whole, limit, max_new_tokens, extrapolates=not has_learned_positions(model))
    if fit.no_room is not None:
        raise UserError(f"{label}: {fit.no_room} {_FIX}")
    return BenchPrompts(texts, fit)


def check_context_early(spec: ModelSpec, max_new_tokens: int, trust_remote_code: bool) -> None:
    """Refuse a model whose context ``max_new_tokens`` fills, from its config alone - before
    any model loads or config.json is written, so a multi-model bench fails at once rather
    than after the models before it. A config that does not load, or a Hub model, is left to
    the load (which names its own problem) and :func:`bench_prompts`."""
    if spec.source == "hub":
        return  # its config is a download; the check after loading covers it
    try:
        location, _ = resolve_model_path(spec.path)  # a run directory keeps it in model/
        config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001 - any failure here is the model load's to report
        return
    reason = no_room_reason(
        context_limit(config), max_new_tokens, extrapolates=not has_learned_positions(config)
    )
    if reason is not None:
        raise UserError(f"{spec.label}: {reason} {_FIX}")
