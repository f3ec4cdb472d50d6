"""When to use torch.compile: ``train.compile`` = on, off, or auto (decided from measurement).

torch.compile costs 10-60 s up front and saved 11% (2M params) to 33% (13M params) of a CPU
step in our measurements, so it pays only for long runs. ``auto`` measures a few eager steps
after the warm-up ones (the first steps pay for allocations, thread pools and caches: on a
2-core host they ran several times slower than the rest, and a decision from them turned
compile on for a three-minute quickstart) and compiles only if the eager time left exceeds a
threshold; a compile error then falls back
to eager instead of ending the run. The decision and its reasons are recorded
(``summary.json`` ``compile``) so a reader knows what really ran. DDP runs stay eager under
``auto`` (the ranks would have to agree). The policy holds no model: the trainer swaps its
``train_model`` when :meth:`CompilePolicy.decide` or :meth:`CompilePolicy.fall_back` says so.
"""

from __future__ import annotations

from typing import Any

from shoestring.util.memory import is_oom_error

__all__ = ["CompilePolicy"]

#: Eager steps left out of ``auto``'s estimate (warm-up), and steps measured after them.
WARMUP_STEPS = 2
MEASURED_STEPS = 3


class CompilePolicy:
    """The ``compile`` record of one run and the decisions that fill it."""

    def __init__(self, mode: str, distributed: bool) -> None:
        self.mode = mode
        self.distributed = distributed
        self.info: dict[str, Any] = {"mode": mode, "used": False}

    def compile_from_start(self) -> bool:
        """``compile=on``: compile before the first step (recorded as used from step 0)."""
        if self.mode != "on":
            return False
        self.info.update(used=True, from_step=0, reason="train.compile=on")
        return True

    def decide(
        self, step_times: list[float], steps_left: int, step: int, min_seconds: float
    ) -> bool:
        """``compile=auto``: True once, when the steady eager steps predict > ``min_seconds`` left.

        ``step_times`` are this process's eager steps; the first :data:`WARMUP_STEPS` are left
        out and the median of the next :data:`MEASURED_STEPS` is the estimate. The decision is
        made once and recorded either way (``eager_step_seconds``, ``eager_seconds_left``,
        ``warmup_steps_ignored``, ``reason``).
        """
        info = self.info
        if self.mode != "auto" or info["used"] or "decided" in info or self.distributed:
            return False
        if len(step_times) < WARMUP_STEPS + MEASURED_STEPS:
            return False
        steady = sorted(step_times[WARMUP_STEPS : WARMUP_STEPS + MEASURED_STEPS])
        step_time = steady[len(steady) // 2]
        info["warmup_steps_ignored"] = WARMUP_STEPS
        left = step_time * steps_left
        info["decided"] = True
        info["eager_step_seconds"] = round(step_time, 4)
        info["eager_seconds_left"] = round(left, 1)
        if left < min_seconds:
            info["reason"] = (
                f"auto: {left:.0f} s of eager training left < "
                f"{min_seconds:.0f} s, compiling would not pay off"
            )
            return False
        info.update(used=True, from_step=step, reason=f"auto: {left:.0f} s of eager training left")
        return True

    def fall_back(self, exc: BaseException) -> bool:
        """With compile=auto, True if ``exc`` is a compile error: the run continues eager.

        Out-of-memory errors are not compile errors (the trainer's back-off handles them), and
        with ``compile=on`` a failure is the user's to see.
        """
        info = self.info
        if not info["used"] or self.mode != "auto" or is_oom_error(exc):
            return False
        info.update(
            used=False,
            failed=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
            reason="auto: torch.compile failed, continuing eager",
        )
        return True
