"""Errors meant for the user: the CLI prints their message (what went wrong, what to do)."""

from __future__ import annotations


class UserError(RuntimeError):
    """A problem with the user's input or environment that the message explains."""


class DeviceUnavailableError(UserError):
    """The requested device does not exist here; shoestring never falls back silently."""


class CorruptFileError(UserError):
    """A file shoestring must read is damaged (truncated, garbage, wrong checksum).

    ``path`` is the damaged file and ``reason`` what is wrong with it, so a caller that can
    fall back (resume from an older checkpoint) names both without parsing the message.
    """

    headline = "is damaged"

    def __init__(self, path: object, reason: str, advice: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        text = f"{self.path} {self.headline}: {reason}"
        super().__init__(text + (f"; {advice}" if advice else ""))


class RefusedPickleError(CorruptFileError):
    """A ``torch.load`` file holds pickled Python objects beyond tensors and plain values.

    shoestring loads with ``weights_only=True`` and never retries without it: unpickling an
    arbitrary object can run code. The message deliberately does not repeat torch's advice to
    turn that protection off.
    """

    headline = "was not loaded"

    def __init__(self, path: object, what: str = "") -> None:
        self.what = what
        reason = (
            "it holds pickled Python objects"
            + (f" ({what})" if what else "")
            + ", which shoestring refuses to unpickle because unpickling can run code"
        )
        super().__init__(
            path,
            reason,
            "use a file written by shoestring, or convert trusted weights to safetensors",
        )


class RunDirLockedError(UserError):
    """Another live process is writing the run directory (the message names it)."""
