"""Read weight and state files so that damage and refused pickles get named errors.

Why one module: a garbage ``model.safetensors`` raises ``SafetensorError: header too large``, a
truncated ``state.pt`` raises ``RuntimeError: PytorchStreamReader failed ...``, and a pickle that
``weights_only=True`` refuses raises ``UnpicklingError`` whose text advises turning the
protection off. None of them names the file. Every reader of such files (checkpoints, model
directories) goes through :func:`read_safetensors`, :func:`read_torch_state` or
:func:`named_read_error`, which raise :class:`~shoestring.errors.CorruptFileError` /
:class:`~shoestring.errors.RefusedPickleError` with the path and what is wrong.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from shoestring.errors import CorruptFileError, RefusedPickleError

__all__ = ["named_read_error", "read_safetensors", "read_torch_state"]

_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
# torch's texts for a damaged zip/pickle stream (truncated, overwritten, not a torch file)
_TORCH_DAMAGE = (
    "PytorchStreamReader",
    "invalid load key",
    "unpickling stack",
    "pickle data was truncated",
    "failed finding central directory",
    "Ran out of input",
)


def named_read_error(path: str | Path, exc: BaseException) -> CorruptFileError | None:
    """The named error for ``exc`` raised while reading ``path``; None when it is not damage.

    Recognised: a refused pickle (``UnpicklingError`` from ``weights_only`` loading), a
    safetensors header or data error, torch's zip/pickle stream errors, and EOF.
    """
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in text:
        m = _GLOBAL.search(text)
        return RefusedPickleError(path, f"{m.group(1)}" if m else "")
    name = type(exc).__name__
    if name == "SafetensorError":
        return CorruptFileError(path, f"not a readable safetensors file ({text.splitlines()[0]})")
    if isinstance(exc, (pickle.UnpicklingError, EOFError)) or (
        isinstance(exc, RuntimeError) and any(s in text for s in _TORCH_DAMAGE)
    ):
        first = text.splitlines()[0] if text else name
        # torch's own sentence ends in advice we do not want repeated; keep the first clause
        first = first.split(". ")[0]
        return CorruptFileError(path, f"not a readable torch file ({first})")
    return None


def read_safetensors(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` with a :class:`CorruptFileError` naming ``path``."""
    try:
        return load_file(str(path), device=device)
    except Exception as exc:
        named = named_read_error(path, exc)
        if named is None:
            raise
        raise named from exc


def read_torch_state(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with named errors for damage and refused pickles."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        named = named_read_error(path, exc)
        if named is None:
            raise
        raise named from exc
