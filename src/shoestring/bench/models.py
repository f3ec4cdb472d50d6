"""MODEL arguments resolved before anything runs: where to load each from, what to call it, and
an identity of its weights (so resume never mixes old and new weights).

llama2.c checkpoints are converted to Hugging Face format once per content into
``OUT/converted/`` and reused from there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoestring.errors import UserError
from shoestring.models.llama2c import convert_llama2c
from shoestring.models.loading import resolve_model_path

__all__ = ["ModelSpec", "resolve_models", "weights_fingerprint"]

_LABEL_RE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class ModelSpec:
    """One MODEL argument, resolved: where to load it from and what to call it."""

    arg: str
    label: str
    path: str  # what load_model_and_tokenizer gets (a converted dir for llama2.c)
    source: str  # hf | run | hub | llama2c
    fingerprint: str  # identity of the weights (see weights_fingerprint)
    convert: dict[str, Any] | None = None  # llama2.c: bin, tokenizer, seconds, report lines

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def weights_fingerprint(location: str, source: str) -> str:
    """A cheap identity of a model's weights: name, size, and the first and last MiB of every
    weight file, plus config.json.

    Why not the path: a run directory keeps its path when it is trained further, and results
    of old and new weights must never be mixed on resume. Why not a full hash: it would read
    every byte of a multi-gigabyte model on every run; the head (safetensors header: names, shapes,
    offsets) and the tail (the last tensors' values) change whenever the weights do.
    """
    if source == "hub":
        return f"hub:{location}"
    root = Path(location)
    h = hashlib.sha256()
    files = sorted(
        p
        for p in root.iterdir()
        if p.is_file()
        and (p.suffix in (".safetensors", ".bin", ".pt", ".pth") or p.name == "config.json")
    )
    for p in files:
        size = p.stat().st_size
        h.update(f"{p.name}:{size}".encode())
        with p.open("rb") as f:
            h.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(size - (1 << 20))
                h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def _split_llama2c_arg(arg: str, tokenizer_model: str | None) -> tuple[Path, Path] | None:
    """``(checkpoint, tokenizer)`` when ``arg`` names a llama2.c checkpoint, else None.

    Accepted: ``MODEL.bin:TOKENIZER.model`` (per model), or ``MODEL.bin`` with
    ``--tokenizer-model`` (for every .bin model without its own). A ``.bin`` that is a
    directory entry of an HF model (``pytorch_model.bin``) is not a llama2.c checkpoint: only
    files passed directly are.
    """
    head, sep, tail = arg.rpartition(":")
    if sep and head.endswith(".bin") and tail:
        return Path(head).expanduser(), Path(tail).expanduser()
    if arg.endswith(".bin"):
        bin_path = Path(arg).expanduser()
        if not bin_path.is_file():
            raise UserError(f"llama2.c checkpoint not found: {arg}")
        if tokenizer_model is None:
            near = sorted(p.name for p in bin_path.parent.glob("*.model"))
            hint = f" ({', '.join(near)} is next to it)" if near else ""
            raise UserError(
                f"{arg} looks like a llama2.c checkpoint; it needs its sentencepiece tokenizer: "
                f"pass {arg}:TOKENIZER.model or --tokenizer-model TOKENIZER.model{hint}"
            )
        return bin_path, Path(tokenizer_model).expanduser()
    return None


def _label_for(arg: str, source: str, location: str) -> str:
    """A short, file-system-safe name for a model (its directory or checkpoint name)."""
    if source == "llama2c":
        name = Path(arg.rpartition(":")[0] if ":" in arg else arg).stem
    elif source == "run":
        name = Path(location).parent.name
    elif source == "hub":
        name = location.rstrip("/").split("/")[-1]
    else:
        name = Path(location).resolve().name
    return _LABEL_RE.sub("_", name).strip("._") or "model"


def _convert_cached(
    bin_path: Path, tok_path: Path, out: Path, log: Callable[[str], None]
) -> tuple[Path, dict[str, Any]]:
    """Convert a llama2.c checkpoint once per content into ``out/converted/`` and reuse it.

    The cache key is the sha256 of the checkpoint and the tokenizer, so a changed file is
    converted again while an unchanged one costs only the hashing.
    """
    for p in (bin_path, tok_path):
        if not p.is_file():
            raise UserError(f"file not found: {p}")
    digest = hashlib.sha256((_sha256_file(bin_path) + _sha256_file(tok_path)).encode())
    key = digest.hexdigest()[:12]
    target = out / "converted" / f"{_LABEL_RE.sub('_', bin_path.stem)}-{key}"
    meta = {"bin": str(bin_path.resolve()), "tokenizer": str(tok_path.resolve()), "sha": key}
    if (target / "config.json").is_file():
        log(f"llama2.c {bin_path.name}: reusing the conversion in {target}")
        return target, {**meta, "seconds": 0.0, "cached": True}
    t0 = time.perf_counter()
    report = convert_llama2c(bin_path, tok_path, target, overwrite=True)
    seconds = time.perf_counter() - t0
    for line in report.lines():
        log(f"  {line}")
    log(f"llama2.c {bin_path.name}: converted in {seconds:.1f} s into {target}")
    return target, {**meta, "seconds": round(seconds, 3), "cached": False}


def resolve_models(
    models: list[str],
    out: Path,
    tokenizer_model: str | None = None,
    log: Callable[[str], None] = print,
) -> list[ModelSpec]:
    """Resolve every MODEL argument before any model runs, so a typo in the last one fails at
    once instead of after benchmarking all the others."""
    specs: list[ModelSpec] = []
    seen: dict[str, int] = {}
    for arg in models:
        l2c = _split_llama2c_arg(arg, tokenizer_model)
        convert = None
        if l2c is not None:
            path, convert = _convert_cached(*l2c, out, log)
            location, source = str(path), "llama2c"
        else:
            location, source = resolve_model_path(arg)
        label = _label_for(arg, source, location)
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label}-{seen[label]}"
        specs.append(
            ModelSpec(
                arg=arg,
                label=label,
                path=location if source != "run" else arg,
                source=source,
                fingerprint=weights_fingerprint(location, source),
                convert=convert,
            )
        )
    return specs
