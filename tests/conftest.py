"""Shared test fixtures. Tests run single-threaded: tiny models are faster that way and the
suite must fit in 15 minutes on 2 shared cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SHOESTRING_SHARED", REPO_ROOT.parent / "shared"))


@pytest.fixture
def shared_dir() -> Path:
    """../shared (real data and models); tests that need it skip cleanly where it is missing."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is not present (real data/models live there)")
    return SHARED
