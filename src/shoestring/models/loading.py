"""Load any causal LM the commands accept: a shoestring run directory, a Hugging Face model
directory (Llama, Qwen2, GPT-2, the shoestring GPT ...), or a Hub name when online.

Every downstream command (``generate``, ``bench``, ``grpo``) goes through
:func:`load_model_and_tokenizer`, so the rules live in one place:

* a run directory means its ``model/`` subdirectory (weights and tokenizer are saved together);
* ``shoestring.models.gpt`` is imported by this module, so the shoestring GPT is registered
  with the Auto classes before ``from_pretrained`` looks it up;
* ``dtype="auto"`` picks bf16 only where the host computes it fast (CUDA with bf16, or a CPU
  advertising ``avx512_bf16``/``amx_bf16``), otherwise fp32;
* asking for a device that is not there raises :class:`DeviceUnavailableError` - never a silent
  fallback, because a benchmark that quietly ran on the CPU reports the wrong numbers;
* ``trust_remote_code`` stays off unless the caller turns it on;
* a damaged weight file (a garbage ``model.safetensors``, a truncated ``pytorch_model.bin``) or
  a pickle that ``weights_only`` loading refuses is a named
  :class:`~shoestring.errors.CorruptFileError` / :class:`~shoestring.errors.RefusedPickleError`
  saying which file, not a raw ``SafetensorError``/``PytorchStreamReader`` traceback.
"""

from __future__ import annotations

import contextlib
import re
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

import shoestring.models.gpt  # noqa: F401 - importing it registers the GPT with the Auto classes
from shoestring.errors import CorruptFileError, RefusedPickleError, UserError
from shoestring.runtime import SHORT_NAMES, resolve_device, resolve_torch_dtype
from shoestring.util.safe_load import named_read_error

# a Hub id as `from_pretrained` takes one: owner/name (a bare name is a local path here)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# every path this process resolved as a local model: missing later (deleted during a bench),
# it is a local path that is gone, never a Hub name that happens to look like it
_LOCAL_SEEN: set[Path] = set()


@contextlib.contextmanager
def quiet_hf_progress(quiet: bool = True) -> Iterator[None]:
    """Hide transformers' per-shard loading/saving bar while the caller prints its own."""
    if not quiet:
        yield
        return
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def resolve_model_path(path: str | Path) -> tuple[str, str]:
    """Where the weights are and what ``path`` was: ``(location, 'run' | 'hf' | 'hub')``.

    A shoestring run directory holds the HF model in ``model/``; a plain HF directory holds
    ``config.json`` itself. A path that does not exist is "does not exist" - never a network
    lookup - unless it has the Hub's ``owner/name`` form, ``owner`` is no local directory and
    this process never resolved that path as a local model (one deleted meanwhile stays local).
    """
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / "model" / "config.json").is_file():
            _LOCAL_SEEN.update((p.absolute(), (p / "model").absolute()))
            return str(p / "model"), "run"
        if (p / "config.json").is_file():
            _LOCAL_SEEN.add(p.absolute())
            return str(p), "hf"
        raise UserError(
            f"{p} is neither a shoestring run directory (no model/config.json) nor a Hugging "
            "Face model directory (no config.json); a run that has not finished its first save "
            "has no model yet"
        )
    if p.exists():
        raise UserError(f"{p} is a file; pass a run directory or a model directory")
    text = str(path)
    if p.absolute() in _LOCAL_SEEN:
        raise UserError(
            f"{path} does not exist any more (it was a model directory earlier in this run; "
            "was it moved or deleted?)"
        )
    owner = text.partition("/")[0]
    if _HUB_ID.match(text) and not Path(owner).expanduser().exists():
        return text, "hub"
    raise UserError(
        f"{path} does not exist (expected a run directory, a model directory or a "
        "Hugging Face Hub name like Qwen/Qwen2.5-0.5B)"
    )


def _weight_file_damage(path: Path) -> str | None:
    """Why one weight file cannot be read, from a cheap look at its structure; None if it can."""
    if path.suffix == ".safetensors":
        # deferred: safetensors' header reader, only on the error path
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                for key in list(f.keys())[:1]:  # the header parses; touch one tensor's data
                    f.get_slice(key)
        except Exception as exc:  # noqa: BLE001 - any failure to read is the answer
            return f"not a readable safetensors file ({str(exc).splitlines()[0]})"
        return None
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return f"not a readable torch file ({exc}; truncated or overwritten?)"
    return f"its member {bad} fails its CRC check" if bad else None


def _named_load_error(location: str, exc: BaseException) -> CorruptFileError | None:
    """A named error when a model directory's weights cannot be read (None: not damage).

    Whatever ``from_pretrained`` raised (a ``SafetensorError``, torch's stream errors, even a
    bare ``OSError: [Errno 22]`` from a truncated file), the weight files are looked at and the
    first damaged one is named.
    """
    named = named_read_error(location, exc)
    d = Path(location)
    if not d.is_dir():
        return named
    if isinstance(named, RefusedPickleError):
        pickles = sorted(d.glob("*.bin")) + sorted(d.glob("*.pt")) + sorted(d.glob("*.pth"))
        return RefusedPickleError(pickles[0] if len(pickles) == 1 else d, named.what)
    for f in sorted(d.glob("*.safetensors")) + sorted(d.glob("*.bin")):
        reason = _weight_file_damage(f)
        if reason is not None:
            return CorruptFileError(
                f, reason, "the model directory is damaged: save or download it again"
            )
    if named is None:
        return None
    return CorruptFileError(
        d, named.reason, "a weight file in it is damaged: save or download the model again"
    )


def _load_tokenizer(location: str, kind: str, run_dir: Path | None, trust_remote_code: bool) -> Any:
    """The tokenizer saved with the model; a bare ``tokenizer.json`` also works."""
    candidates = [location] + ([str(run_dir)] if run_dir is not None else [])
    errors = []
    for loc in candidates:
        try:
            return AutoTokenizer.from_pretrained(loc, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            errors.append(f"{loc}: {exc}")
        tok_file = Path(loc) / "tokenizer.json"
        if kind != "hub" and tok_file.is_file():  # a bare tokenizer.json without its config
            return PreTrainedTokenizerFast(tokenizer_file=str(tok_file))
    raise UserError(
        "could not load a tokenizer saved with the model ("
        + "; ".join(errors)[:500]
        + "); save it next to the weights with tokenizer.save_pretrained(model_dir)"
    )


def load_model_and_tokenizer(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
) -> tuple[Any, Any, dict[str, Any]]:
    """Load a causal LM and its tokenizer, ready for inference (``eval()``, on ``device``).

    Returns ``(model, tokenizer, info)``; ``info`` records what actually happened:
    ``load_seconds``, ``dtype`` (``fp32``/``bf16``/``fp16``), ``device``, ``n_params``,
    ``path`` (where the weights came from), ``source`` (``run``/``hf``/``hub``) and
    ``model_type``.

    Raises:
        DeviceUnavailableError: ``device`` is not available on this host.
        UserError: the path holds no model, or the model/tokenizer cannot be loaded.
    """
    t0 = time.perf_counter()
    dev = resolve_device(device)
    torch_dtype = resolve_torch_dtype(dtype, dev)
    location, kind = resolve_model_path(path)
    run_dir = Path(path).expanduser() if kind == "run" else None

    try:
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype=torch_dtype, trust_remote_code=trust_remote_code
        )
    except Exception as exc:
        named = _named_load_error(location, exc)
        if named is not None:
            raise named from exc
        if not isinstance(exc, (OSError, ValueError)):
            raise
        hint = ""
        if kind == "hub":
            hint = (
                " (Hub names need network access and HF_HUB_OFFLINE unset, or the model in "
                "the local cache)"
            )
        elif "trust_remote_code" in str(exc):
            hint = " (this model ships its own code; pass --trust-remote-code if you trust it)"
        raise UserError(f"could not load a causal LM from {location}{hint}: {exc}") from exc
    model.to(dev)
    model.eval()
    tokenizer = _load_tokenizer(location, kind, run_dir, trust_remote_code)
    info = {
        "load_seconds": time.perf_counter() - t0,
        "dtype": SHORT_NAMES.get(torch_dtype, str(torch_dtype)),
        "device": str(dev),
        "n_params": int(sum(p.numel() for p in model.parameters())),
        "path": location,
        "source": kind,
        "model_type": getattr(model.config, "model_type", type(model).__name__),
    }
    return model, tokenizer, info


__all__ = ["load_model_and_tokenizer", "quiet_hf_progress", "resolve_model_path"]
