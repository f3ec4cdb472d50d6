"""When to use torch.compile: ``train.compile`` = on, off, or auto (decided from measurement).

torch.compile costs 10-60 s up front and saved 11% (2M params) to 33% (13M params) of a CPU
step in our measurements, so it pays only for long runs. ``auto`` measures a few eager steps
and compiles only if the eager time left exceeds a threshold; a compile error then falls back
to eager instead of ending the run. The decision and its reasons are recorded
(``summary.json`` ``compile``) so a reader knows what really ran. DDP runs stay eager under
``auto`` (the ranks would have to agree). The policy holds no model: the trainer swaps its
``train_model`` when :meth:`CompilePolicy.decide` or :meth:`CompilePolicy.fall_back` says so.
"""

from __future__ import annotations

from typing import Any

from shoestring.util.memory import is_oom_error

__all__ = ["CompilePolicy"]


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
        """``compile=auto``: True once, when three eager steps predict > ``min_seconds`` left.

        The median of the last three step times is the estimate; the decision is made once and
        recorded either way (``eager_step_seconds``, ``eager_seconds_left``, ``reason``).
        """
        info = self.info
        if self.mode != "auto" or info["used"] or "decided" in info or self.distributed:
            return False
        if len(step_times) < 3:
            return False
        step_time = sorted(step_times[-3:])[1]
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
