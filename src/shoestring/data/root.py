"""The data root: where a bare dataset name (``dataset=gsm8k``) is looked up.

Why one documented place: a default path relative to the current directory works in the
repository and fails everywhere else (``shoestring grpo`` run from ``/tmp`` would find no
GSM8K). The root is, in this order:

1. ``$SHOESTRING_DATA`` (a directory holding ``gsm8k/train.jsonl`` ...);
2. ``$SHOESTRING_SHARED/data`` (the project's shared directory);
3. ``shared/data`` next to the source checkout shoestring runs from (``<repo>/../shared/data``),
   found from this file's location, never from the current directory.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["data_root_candidates", "find_dataset"]


def data_root_candidates() -> list[tuple[Path, str]]:
    """(directory, where it came from) for each data root, in the order they are tried."""
    out: list[tuple[Path, str]] = []
    if os.environ.get("SHOESTRING_DATA"):
        out.append((Path(os.environ["SHOESTRING_DATA"]), "$SHOESTRING_DATA"))
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
