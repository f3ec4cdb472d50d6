"""The fixed validation set a progressive (curriculum) run measures every stage on.

Why a separate module: the curriculum's whole promise is that a stage which makes the model
worse is noticed and undone. That only works if every model is measured the same way - the
same problems, the same protocol (prompt, stop strings, answer extractor), greedy decoding - so
this module loads the problems once, fingerprints them (a resumed run refuses a different set)
and scores any model directory against them through the one scoring path,
:func:`shoestring.scoring.scoring.score_model`. A stage gate and GRPO's held-out evaluation
therefore give the same per-problem verdicts for the same model, problems and protocol.
Accuracy always comes with its 95% Wilson interval and n.

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

from shoestring.config import validate
from shoestring.data.answers import AnswerFormatError, parse_gold
from shoestring.distributed import DistInfo, gather_ordered, rank_device, shard_positions
from shoestring.errors import UserError
from shoestring.models.loading import load_model_and_tokenizer
from shoestring.rl.data import load_task
from shoestring.rl.progressive_config import ValidationConfig
from shoestring.rundir.directory import atomic_open
from shoestring.scoring.protocols import resolve_protocol
from shoestring.scoring.scoring import accuracy_summary, score_model

__all__ = [
    "EvalResult",
    "Evaluator",
    "ValidationEvaluator",
    "eval_result",
    "load_validation_problems",
    "problems_fingerprint",
]


@dataclass
class EvalResult:
    """One model measured on the validation set (the contract's eval shape plus extras).

    ``extra`` carries what the real evaluator knows beyond the counts: the protocol the model
    was scored under (``protocol``: ``Protocol.to_dict()``, ``protocol_key``).
    """

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
    if isinstance(correct, int):
        if n is None:
            raise ValueError("n is required with a count of correct answers")
        verdicts = [True] * correct + [False] * (n - correct)
    else:
        per_problem = verdicts = [bool(c) for c in correct]
    acc = accuracy_summary(verdicts)
    return EvalResult(
        correct=acc["correct"],
        n=acc["n"],
        accuracy=acc["accuracy"] or 0.0,
        ci_low=acc["ci_low"],
        ci_high=acc["ci_high"],
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
    problems = load_task(cfg.dataset, split=cfg.split, seed=cfg.seed, n=cfg.n)
    if len(problems) < cfg.n:
        raise UserError(
            f"validation.dataset {cfg.dataset!r} ({cfg.split}) has only {len(problems)} problems "
            f"but validation.n={cfg.n}; lower validation.n"
        )
    return list(problems)[: cfg.n]


class ValidationEvaluator:
    """Scores model directories on one fixed set of problems (greedy, batched KV cache).

    The protocol is resolved per model from its tokenizer (``auto``: ``chat-cot`` with a chat
    template, else ``qa``), exactly as a GRPO stage resolves its own. ``records_dir``, when
    given, receives one JSONL file per evaluated model with each problem's response, every
    extractor's answer and the verdict, so a reader can check any number. Under torchrun
    (``ranks``) each rank answers its share of the problems on its own device and every rank
    gets every verdict, in problem order; rank 0 writes the records.
    """

    def __init__(
        self,
        cfg: ValidationConfig,
        *,
        records_dir: Path | None = None,
        progress: bool = True,
        problems: Sequence[dict[str, Any]] | None = None,
        ranks: DistInfo | None = None,
    ) -> None:
        validate(cfg)
        self.cfg = cfg
        self.ranks = ranks or DistInfo()
        self.progress = progress
        self.records_dir = records_dir
        self.problems = list(problems) if problems is not None else load_validation_problems(cfg)
        try:
            self.golds = [parse_gold(p["answer"]) for p in self.problems]
        except (AnswerFormatError, KeyError) as exc:
            raise UserError(f"a validation problem has no usable '#### N' answer: {exc}") from exc
        self.fingerprint = problems_fingerprint(self.problems)

    def __call__(self, model_dir: Path, label: str) -> EvalResult:
        t0 = time.perf_counter()
        ranks = self.ranks
        model, tokenizer, _ = load_model_and_tokenizer(
            model_dir, device=rank_device(self.cfg.device, ranks), dtype=self.cfg.dtype
        )
        # fallback qa: the corpus layout GRPO trains a template-less model on
        protocol = resolve_protocol(self.cfg.protocol, tokenizer, fallback="qa")
        mine = shard_positions(len(self.problems), ranks)  # this rank's share (all in one)
        scores = score_model(
            model,
            tokenizer,
            [self.problems[i]["question"] for i in mine],
            [self.golds[i] for i in mine],
            protocol,
            max_new_tokens=self.cfg.max_new_tokens,
            batch_size=self.cfg.batch_size,
            progress=self.progress,
            desc=f"validate {label}",
            streams=mine,  # each problem's own stream, whichever rank answers it
        )
        del model
        scores = gather_ordered(scores, len(self.problems), ranks)  # every verdict, in order
        out = eval_result([s.ok for s in scores], seconds=time.perf_counter() - t0)
        out.extra = {"protocol": protocol.to_dict(), "protocol_key": protocol.key()}
        if self.records_dir is not None and ranks.is_main:
            with atomic_open(self.records_dir / f"{label}.jsonl") as f:
                for s in scores:
                    f.write(json.dumps(s.record(), ensure_ascii=False) + "\n")
        return out
