"""The data root: where a bare dataset name (``dataset=gsm8k``) is looked up.

Why one documented place: a default path relative to the current directory works in the
repository and fails everywhere else (``shoestring grpo`` run from ``/tmp`` would find no
GSM8K). The root is, in this order:

1. ``$SHOESTRING_DATA`` (a directory holding ``gsm8k/train.jsonl`` ...): when it is set it is
   the only root - a root the user named that does not exist is an error naming the variable,
   and a dataset missing from it is not looked for elsewhere (no silent fallback to the
   checkout's copy);
2. ``$SHOESTRING_SHARED/data`` (the project's shared directory);
3. ``shared/data`` next to the source checkout shoestring runs from (``<repo>/../shared/data``),
   found from this file's location, never from the current directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from shoestring.errors import UserError

__all__ = ["data_root_candidates", "find_dataset"]


def data_root_candidates() -> list[tuple[Path, str]]:
    """(directory, where it came from) for each data root, in the order they are tried; only
    ``$SHOESTRING_DATA`` when it is set (a ``UserError`` naming it when it is no directory)."""
    out: list[tuple[Path, str]] = []
    user_root = os.environ.get("SHOESTRING_DATA", "")
    if user_root:
        if not Path(user_root).is_dir():
            raise UserError(
                f"SHOESTRING_DATA={user_root} does not exist or is not a directory; set it to the "
                "directory holding the datasets (gsm8k/train.jsonl ...) or unset it"
            )
        return [(Path(user_root), "$SHOESTRING_DATA")]
    if os.environ.get("SHOESTRING_SHARED"):
        out.append((Path(os.environ["SHOESTRING_SHARED"]) / "data", "$SHOESTRING_SHARED/data"))
    checkout = Path(__file__).resolve().parents[3]  # src/shoestring/data/root.py -> <repo>
    out.append((checkout.parent / "shared" / "data", "the source checkout's ../shared/data"))
    return out


def find_dataset(name: str, marker: str) -> Path | None:
    """``<root>/<name>`` of the first data root holding ``<name>/<marker>``, or None."""
    for root, _ in data_root_candidates():
        if (root / name / marker).is_file():
            return root / name
    return None
