"""Where one generation run's time goes, per engine: the parts of ``generate_vs_hf.py --split``.

:func:`split_timers` wraps, for the length of one run, the functions that do each part - the
engine's prefills, decode steps, cache copies and token choice, or HF's ``model.forward`` split
into the prefill (more than one position) and decode steps (one) - and :func:`print_split`
prints them with what is left over (each engine's own Python and small tensor work), the mean
rows per decode step and the share of computed rows that were wanted tokens.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any


class Timers:
    """Seconds, calls and rows per named part of one run, filled by :func:`timed` wrappers."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.rows: dict[str, int] = {}  # rows through the prefills / the decode steps, summed

    def add(self, name: str, seconds: float, rows: int = 0) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.calls[name] = self.calls.get(name, 0) + 1
        self.rows[name] = self.rows.get(name, 0) + rows


def timed(timers: Timers, name: str, fn: Any, rows_of: Any = None) -> Any:
    """``fn`` with each call's seconds added to ``timers`` under ``name`` (and the rows that
    ``rows_of(args, kwargs)`` reads off the call)."""

    def wrapper(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*a, **k)
        timers.add(name, time.perf_counter() - t0, rows_of(a, k) if rows_of else 0)
        return out

    return wrapper


@contextlib.contextmanager
def split_timers(engine: str, model: Any, timers: Timers) -> Any:
    """Time the parts of one run by wrapping the functions that do them (patched back after).

    Engine: the prefills (first batch and refills, ``prefill_prompts``), the decode steps
    (``LeanDecoder.step``), the cache copies (compaction, trim, refill appends) and the token
    choice. HF: ``model.forward`` with more than one input position (the prefill) or one
    (a decode step). What is left of the run's wall time is each engine's own Python and
    small tensor work (logits processor, stopping criteria, book-keeping).
    """
    from shoestring.engine import decode, lean_decode

    patches: list[tuple[Any, str, Any]] = []

    def patch(obj: Any, attr: str, new: Any) -> None:
        patches.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, new)

    if engine == "shoestring":
        patch(
            decode,
            "prefill_prompts",
            timed(timers, "prefill", decode.prefill_prompts, lambda a, k: len(a[2])),
        )
        step = lean_decode.LeanDecoder.step
        patch(
            lean_decode.LeanDecoder,
            "step",
            timed(timers, "decode step", step, lambda a, k: int(a[1].shape[0])),
        )
        for fn in ("select_cache_rows", "trim_cache_left", "_refill"):
            patch(decode, fn, timed(timers, "cache copies", getattr(decode, fn)))
        patch(
            decode, "choose_next_tokens", timed(timers, "token choice", decode.choose_next_tokens)
        )
    else:
        forward = model.forward

        def hf_forward(*a: Any, **k: Any) -> Any:
            ids = k.get("input_ids", a[0] if a else None)
            name = "decode step" if ids is not None and ids.shape[1] == 1 else "prefill"
            t0 = time.perf_counter()
            out = forward(*a, **k)
            timers.add(name, time.perf_counter() - t0, int(ids.shape[0]) if ids is not None else 0)
            return out

        patch(model, "forward", hf_forward)
    try:
        yield
    finally:
        for obj, attr, old in reversed(patches):
            if obj is model:
                del model.forward  # the instance attribute; the class's method shows again
            else:
                setattr(obj, attr, old)


def print_split(name: str, timers: Timers, total: float, tokens: int) -> None:
    parts = ", ".join(
        f"{k} {v:.1f} s ({v / total:.0%}, {timers.calls[k]} calls)"
        for k, v in timers.seconds.items()
    )
    other = total - sum(timers.seconds.values())
    steps = timers.calls.get("decode step", 0)
    per_step = timers.seconds.get("decode step", 0.0) / max(steps, 1)
    step_rows = timers.rows.get("decode step", 0)
    # every output token is one row of a forward pass: the prefill gives each row its first
    slots = step_rows + timers.rows.get("prefill", 0)
    print(
        f"  split {name:10s} {total:6.1f} s: {parts}, other {other:.1f} s ({other / total:.0%}); "
        f"{steps} decode steps at {per_step * 1e3:.0f} ms, {step_rows / max(steps, 1):.1f} "
        f"rows per step; {tokens / max(slots, 1):.0%} of the rows computed were wanted tokens",
        flush=True,
    )
