"""Resumable checkpoints: weights, optimizer, scheduler, RNG states and data position.

A checkpoint is a directory ``checkpoints/step_N/`` holding ``model.safetensors`` (weights)
and ``state.pt`` (everything else, plain tensors and Python scalars only, so it loads with
``torch.load(weights_only=True)``). It is written to a hidden temporary directory and renamed
into place, so a run killed at any moment - even with SIGKILL during a save - leaves every
``step_N`` directory complete, and ``--resume`` continues from the newest one. The final
``model/`` directory (HF format, loadable by ``from_pretrained``) is written the same way.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from shoestring.errors import UserError
from shoestring.models.portable import make_portable

STEP_DIR = re.compile(r"^step_(\d+)$")


def rng_state() -> dict[str, Any]:
    """All RNG states that can influence training (torch CPU/CUDA, numpy, random)."""
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _state_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights with shared (tied) tensors stored once, as safetensors requires."""
    seen: dict[int, str] = {}
    out = {}
    for name, tensor in model.state_dict().items():
        key = tensor.data_ptr()
        if key in seen and tensor.numel() > 0:
            continue
        seen[key] = name
        out[name] = tensor.detach().contiguous().cpu()
    return out


def save_checkpoint(
    ckpt_dir: str | Path,
    model: torch.nn.Module,
    state: dict[str, Any],
    tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model.safetensors`` + ``state.pt`` into ``ckpt_dir`` atomically (temp + rename).

    ``tensors`` replaces the model's full state dict (GRPO stores only the trained parameters).
    """
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir.parent / f".tmp_{ckpt_dir.name}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(_state_tensors(model) if tensors is None else tensors, str(tmp / "model.safetensors"))
    torch.save(state, tmp / "state.pt")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if ckpt_dir.exists():
        old = ckpt_dir.parent / f".old_{ckpt_dir.name}_{os.getpid()}"
        os.replace(ckpt_dir, old)
        os.replace(tmp, ckpt_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, ckpt_dir)
    return ckpt_dir


def load_checkpoint(
    ckpt_dir: str | Path, model: torch.nn.Module, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load weights into ``model`` (tied weights re-tied) and return the state dict."""
    ckpt_dir = Path(ckpt_dir)
    weights, state_file = ckpt_dir / "model.safetensors", ckpt_dir / "state.pt"
    if not weights.exists() or not state_file.exists():
        raise UserError(
            f"checkpoint {ckpt_dir} is incomplete (needs model.safetensors and "
            "state.pt); remove it to resume from an earlier one"
        )
    tensors = load_file(str(weights), device=str(map_location))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if isinstance(getattr(model, "_tied_weights_keys", None), dict):
        tied = set(model._tied_weights_keys)
    real_missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
    if real_missing or unexpected:
        raise UserError(
            f"checkpoint {ckpt_dir} does not match the model: missing {real_missing}, "
            f"unexpected {unexpected}"
        )
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return torch.load(state_file, map_location=map_location, weights_only=True)


def list_checkpoints(checkpoints_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete step checkpoint, oldest first."""
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = STEP_DIR.match(p.name)
        if m and (p / "state.pt").exists() and (p / "model.safetensors").exists():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(checkpoints_dir: str | Path) -> Path | None:
    found = list_checkpoints(checkpoints_dir)
    return found[-1][1] if found else None


def prune_checkpoints(checkpoints_dir: str | Path, keep: int) -> None:
    """Keep the newest ``keep`` step checkpoints; remove temp dirs left by killed saves."""
    root = Path(checkpoints_dir)
    for _step, path in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)
    for p in root.glob(".tmp_*") if root.is_dir() else []:
        shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(".old_*") if root.is_dir() else []:
        shutil.rmtree(p, ignore_errors=True)


def write_model_dir(model: Any, final: Path, tokenizer_dir: Path | None) -> None:
    """``model/`` = final weights as an HF directory with the tokenizer, written then renamed.

    Written to a hidden sibling first, so a reader never sees a half-written ``model/``.
    ``model`` is a transformers ``PreTrainedModel`` (``save_pretrained``).
    """
    tmp = final.parent / ".model.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer_dir is not None and tokenizer_dir.is_dir():
        for f in tokenizer_dir.iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
    make_portable(tmp)  # modeling code + auto_map, eos ids, model_max_length
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
