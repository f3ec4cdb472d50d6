"""The fixed validation set a progressive (curriculum) run measures every stage on.

Why a separate module: the curriculum's whole promise is that a stage which makes the model
worse is noticed and undone. That only works if every model is measured the same way - the
same problems, the same prompt, greedy decoding, the same answer extractor - so this module
loads the problems once, fingerprints them (a resumed run refuses a different set) and scores
any model directory against them with the shared batched generation engine and the bench's
answer normaliser. Accuracy always comes with its 95% Wilson interval and n.

The progressive runner only needs a callable ``evaluator(model_dir, label) -> EvalResult``; this
:class:`ValidationEvaluator` is the real one, and tests pass scripted ones.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoestring.config import opt, validate
from shoestring.errors import UserError
from shoestring.eval.answers import EXTRACTORS, AnswerFormatError, is_correct, parse_gold
from shoestring.eval.stats import wilson_interval

__all__ = [
    "EvalResult",
    "Evaluator",
    "ValidationConfig",
    "ValidationEvaluator",
    "eval_result",
    "problems_fingerprint",
]


@dataclass
class ValidationConfig:
    """Which problems every stage is validated on, and how they are answered."""

    dataset: str = opt(
        "synthetic:1", "task spec like GRPO's dataset: synthetic:LEVEL | gsm8k | gsm8k:PATH"
    )
    split: str = opt(
        "test", "split to draw from (the stages train on 'train')", choices=("train", "test")
    )
    n: int = opt(200, "number of validation problems (fixed for the whole run)", min=1)
    seed: int = opt(1234, "seed that picks/generates the validation problems", min=0)
    max_new_tokens: int = opt(160, "tokens generated per answer at most", min=1)
    extractor: str = opt(
        "strict", "which answer extractor decides correctness", choices=tuple(EXTRACTORS)
    )
    batch_size: int = opt(0, "rows per forward pass; 0 = auto", min=0)
    device: str = opt("auto", "device for validation: cpu, cuda, cuda:N, mps or auto")
    dtype: str = opt(
        "fp32",
        "weights dtype for validation; fp32 = greedy decoding that matches model.generate",
        choices=("auto", "fp32", "bf16", "fp16"),
    )


@dataclass
class EvalResult:
    """One model measured on the validation set (the contract's eval shape plus extras)."""

    correct: int
    n: int
    accuracy: float
    ci_low: float
    ci_high: float
    per_problem: list[bool] | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The shape stored in summary.json: correct, n, accuracy, ci_low, ci_high (+ seconds)."""
        return {
            "correct": self.correct,
            "n": self.n,
            "accuracy": self.accuracy,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "seconds": round(self.seconds, 3),
        }


#: What the progressive runner calls: ``evaluator(model_dir, label) -> EvalResult``.
Evaluator = Callable[[Path, str], EvalResult]


def eval_result(
    correct: int | Sequence[bool], n: int | None = None, seconds: float = 0.0
) -> EvalResult:
    """Build an :class:`EvalResult` from a count (with ``n``) or a per-problem list."""
    per_problem = None
    if not isinstance(correct, int):
        per_problem = [bool(c) for c in correct]
        correct, n = sum(per_problem), len(per_problem)
    if n is None:
        raise ValueError("n is required with a count of correct answers")
    lo, hi = wilson_interval(correct, n)
    return EvalResult(
        correct=correct,
        n=n,
        accuracy=correct / n if n else 0.0,
        ci_low=lo,
        ci_high=hi,
        per_problem=per_problem,
        seconds=seconds,
    )


def problems_fingerprint(problems: Sequence[dict[str, Any]]) -> str:
    """sha256 of the questions and answers, so a resumed run can prove it uses the same set."""
    h = hashlib.sha256()
    for p in problems:
        h.update(json.dumps([p["question"], p["answer"]], ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def load_validation_problems(cfg: ValidationConfig) -> list[dict[str, Any]]:
    """The validation problems through GRPO's own task loader (same specs, same split rules)."""
    from shoestring.rl.data import load_task

    problems = load_task(cfg.dataset, split=cfg.split, seed=cfg.seed, n=cfg.n)
    if len(problems) < cfg.n:
        raise UserError(
            f"validation.dataset {cfg.dataset!r} ({cfg.split}) has only {len(problems)} problems "
            f"but validation.n={cfg.n}; lower validation.n"
        )
    return list(problems)[: cfg.n]


def _prompt_builder(
    tokenizer: Any, prompt_format: str, stop_strings: Sequence[str] | None
) -> tuple[Callable[[dict[str, Any]], str], list[str], bool]:
    """How GRPO prompts a problem (``shoestring.rl.data.build_prompt``), so validation asks
    exactly what training asked: ``(build, stop strings, add_special_tokens)``.

    Chat prompts already carry the template's special tokens; plain ``Question: ...`` prompts
    get the tokenizer's BOS like the pretraining documents did.
    """
    from shoestring.rl.data import build_prompt, uses_chat

    chat = uses_chat(tokenizer, prompt_format)
    stops = list(stop_strings) if stop_strings is not None else ([] if chat else ["Question:"])
    return (lambda p: build_prompt(p["question"], tokenizer, prompt_format)), stops, not chat


class ValidationEvaluator:
    """Scores model directories on one fixed set of problems (greedy, batched KV cache).

    ``records_dir``, when given, receives one JSONL file per evaluated model with each
    problem's response, extracted answer and correctness, so a reader can check any number.
    """

    def __init__(
        self,
        cfg: ValidationConfig,
        *,
        records_dir: Path | None = None,
        progress: bool = True,
        problems: Sequence[dict[str, Any]] | None = None,
        prompt_format: str = "auto",
        stop_strings: Sequence[str] | None = None,
    ) -> None:
        validate(cfg)
        self.cfg = cfg
        self.prompt_format = prompt_format
        self.stop_strings = None if stop_strings is None else list(stop_strings)
        self.progress = progress
        self.records_dir = records_dir
        self.problems = list(problems) if problems is not None else load_validation_problems(cfg)
        try:
            self.golds = [parse_gold(p["answer"]) for p in self.problems]
        except (AnswerFormatError, KeyError) as exc:
            raise UserError(f"a validation problem has no usable '#### N' answer: {exc}") from exc
        self.fingerprint = problems_fingerprint(self.problems)

    def __call__(self, model_dir: Path, label: str) -> EvalResult:
        import torch

        from shoestring.eval.generation import SamplingConfig, generate_all
        from shoestring.models.loading import load_model_and_tokenizer

        t0 = time.perf_counter()
        model, tokenizer, _ = load_model_and_tokenizer(
            model_dir, device=self.cfg.device, dtype=self.cfg.dtype
        )
        build, stops, add_special = _prompt_builder(
            tokenizer, self.prompt_format, self.stop_strings
        )
        prompts = [build(p) for p in self.problems]
        sampling = SamplingConfig(
            max_new_tokens=self.cfg.max_new_tokens,
            stop_strings=stops,
            batch_size=self.cfg.batch_size,
            add_special_tokens=add_special,
        )
        with torch.no_grad():
            results = generate_all(
                model,
                tokenizer,
                prompts,
                sampling,
                progress=self.progress,
                desc=f"validate {label}",
            )
        extract = EXTRACTORS[self.cfg.extractor]
        preds = [extract(r.text) for r in results]
        correct = [is_correct(p, g) for p, g in zip(preds, self.golds, strict=True)]
        del model
        out = eval_result(correct, seconds=time.perf_counter() - t0)
        if self.records_dir is not None:
            from shoestring.runs.rundir import atomic_open

            with atomic_open(self.records_dir / f"{label}.jsonl") as f:
                for i, (prob, res, pred, ok) in enumerate(
                    zip(self.problems, results, preds, correct, strict=True)
                ):
                    rec = {
                        "index": i,
                        "question": prob["question"],
                        "gold": self.golds[i],
                        "response": res.text,
                        "pred": pred,
                        "correct": ok,
                    }
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        return out
