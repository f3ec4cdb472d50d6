"""Resumable checkpoints: weights, optimizer, scheduler, RNG states and data position.

A checkpoint is a directory ``checkpoints/step_N/`` holding ``model.safetensors`` (weights)
and ``state.pt`` (everything else, plain tensors and Python scalars only, so it loads with
``torch.load(weights_only=True)``). It is written to a hidden temporary directory and renamed
into place, so a run killed at any moment - even with SIGKILL during a save - leaves every
``step_N`` directory complete. The final ``model/`` directory (HF format, loadable by
``from_pretrained``) is written the same way.

A rename cannot protect against damage after the fact (a disk error, a copy cut short, a file
overwritten by hand), so every checkpoint also holds ``manifest.json`` - each file's size and
SHA-256, written after the files are complete and before the rename. ``--resume`` goes through
:func:`load_newest_intact`: it verifies the newest checkpoint, and when it is damaged names it
and why, and falls back to the newest intact one, saying so.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from safetensors.torch import save_file

from shoestring.errors import CorruptFileError, UserError
from shoestring.models.portable import make_portable
from shoestring.util.safe_load import read_safetensors, read_torch_state

MANIFEST = "manifest.json"
T = TypeVar("T")

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
            torch.from_numpy(np_state[1].astype(np.int64)),  # a tensor: weights_only loads it
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
        key = tensor.data_ptr()  # tied weights share storage: same address, kept once
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
    # same directory as the target: the rename stays on one file system, hence atomic
    tmp = ckpt_dir.parent / f".tmp_{ckpt_dir.name}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        weights = _state_tensors(model) if tensors is None else tensors
        save_file(weights, str(tmp / "model.safetensors"))
        torch.save(state, tmp / "state.pt")
        for f in tmp.iterdir():  # on disk before the rename, or a crash leaves empty files
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        write_manifest(tmp)  # after the files are complete, before the rename makes them visible
    except Exception as exc:
        full = _disk_full(tmp)
        shutil.rmtree(tmp, ignore_errors=True)  # a half-written checkpoint gives its space back
        if full and not isinstance(exc, OSError):
            # torch and safetensors report a full disk in their own words ("unexpected pos",
            # "IoError"); say what it is, with the checkpoint it was writing
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(ckpt_dir)) from exc
        raise
    if ckpt_dir.exists():
        # a rename cannot land on a non-empty directory: move the old one aside first (a crash
        # between the two leaves .old_*, which prune_checkpoints removes)
        old = ckpt_dir.parent / f".old_{ckpt_dir.name}_{os.getpid()}"
        os.replace(ckpt_dir, old)
        os.replace(tmp, ckpt_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, ckpt_dir)
    return ckpt_dir


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(ckpt_dir: Path) -> None:
    """``manifest.json``: every file's size and SHA-256 (fsynced, like the files it lists)."""
    files = {
        f.name: {"bytes": f.stat().st_size, "sha256": _sha256(f)}
        for f in sorted(ckpt_dir.iterdir())
        if f.is_file() and f.name != MANIFEST
    }
    path = ckpt_dir / MANIFEST
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"format": 1, "files": files}, fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def verify_checkpoint(ckpt_dir: str | Path) -> str | None:
    """What is wrong with a checkpoint according to its manifest, or None when it is intact.

    A checkpoint without a manifest is accepted here and checked by loading it (damage then
    shows as a :class:`CorruptFileError`).
    """
    ckpt_dir = Path(ckpt_dir)
    manifest = ckpt_dir / MANIFEST
    if not manifest.is_file():
        return None
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{MANIFEST} is unreadable ({type(exc).__name__})"
    for name, want in files.items():
        f = ckpt_dir / name
        if not f.is_file():
            return f"{name} is missing"
        size = f.stat().st_size
        if size != want["bytes"]:
            return f"{name} has {size:,} bytes, the manifest says {want['bytes']:,}"
        if _sha256(f) != want["sha256"]:
            return f"{name} does not match its SHA-256 in the manifest (changed after the save)"
    return None


def _disk_full(path: Path) -> bool:
    """Whether the file system holding ``path`` has (almost) no space left for this user."""
    try:
        return shutil.disk_usage(path).free < 1 << 20
    except OSError:
        return False


def load_checkpoint(
    ckpt_dir: str | Path, model: torch.nn.Module, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load weights into ``model`` (tied weights re-tied) and return the state dict.

    A damaged file raises :class:`CorruptFileError` naming it (verify first with
    :func:`verify_checkpoint`; :func:`load_newest_intact` does both)."""
    ckpt_dir = Path(ckpt_dir)
    weights, state_file = ckpt_dir / "model.safetensors", ckpt_dir / "state.pt"
    if not weights.exists() or not state_file.exists():
        raise UserError(
            f"checkpoint {ckpt_dir} is incomplete (needs model.safetensors and "
            "state.pt); remove it to resume from an earlier one"
        )
    tensors = read_safetensors(weights, device=str(map_location))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if isinstance(getattr(model, "_tied_weights_keys", None), dict):
        tied = set(model._tied_weights_keys)
    # tied weights are stored once (see _state_tensors): their second name is "missing"
    real_missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
    if real_missing or unexpected:
        raise UserError(
            f"checkpoint {ckpt_dir} does not match the model: missing {real_missing}, "
            f"unexpected {unexpected}"
        )
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return read_torch_state(state_file, map_location=map_location)


def load_newest_intact(
    checkpoints_dir: str | Path, load: Callable[[Path], T], log: Callable[[str], None]
) -> tuple[Path, T]:
    """``load`` the newest step checkpoint that is intact; ``(its path, what load returned)``.

    Newest first, each is verified against its manifest and then loaded; a damaged one (bad
    checksum or size, a file missing, or a :class:`CorruptFileError` while loading - which
    includes a refused pickle) is named with the reason in ``log`` and the one before it is
    tried. Falling back is said in ``log`` too. UserError when none is intact.
    """
    root = Path(checkpoints_dir)
    found = list_checkpoints(root)
    if not found:
        raise UserError(f"{root.parent} has no complete checkpoint to resume from")
    damaged: list[str] = []
    for _step, path in reversed(found):  # newest first
        reason = verify_checkpoint(path)
        if reason is None:
            try:
                result = load(path)
            except CorruptFileError as exc:
                reason = str(exc)
            else:
                if damaged:
                    names = ", ".join(d.split(" ")[0] for d in damaged)
                    log(
                        f"falling back to {path.name}, the newest intact checkpoint "
                        f"(damaged: {names})"
                    )
                return path, result
        log(f"checkpoint {path} is damaged: {reason}; trying the one before it")
        damaged.append(f"{path.name} ({reason})")
    raise UserError(
        f"no intact checkpoint in {root}, so the run cannot be resumed (start a new run): "
        + "; ".join(damaged)
    )


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
