"""Make a saved model directory usable where shoestring is not installed.

Why one place: ``train`` (and ``quickstart``, which trains), GRPO and ``export`` each write a
``model/`` directory, and every one of them must load in plain ``transformers``, stop
``model.generate`` at the end-of-text token and tell the tokenizer its context. So after
``save_pretrained`` every writer calls :func:`make_portable`, which

* copies the shoestring GPT's modeling code (``gpt.py`` as ``modeling_shoestring_gpt.py`` and
  the modules it imports, ``MODELING_FILES``, verbatim: they import each other relatively and
  shoestring only inside ``try``) and adds ``auto_map`` to ``config.json``, so
  ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` works without shoestring;
* fills ``eos_token_id``/``bos_token_id``/``pad_token_id`` in ``config.json`` and
  ``generation_config.json`` from the tokenizer saved next to the weights, where missing;
* sets the tokenizer's ``model_max_length`` to the model's context where it is unset.

Values already present (a Qwen2 policy's own eos, its tokenizer's length) are never changed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from shoestring.models.gpt import MODEL_TYPE
from shoestring.rundir.directory import atomic_write_json

__all__ = ["AUTO_MAP", "MODELING_FILES", "MODEL_TYPE", "make_portable", "special_token_ids"]

#: source module in shoestring/models -> its name in a model directory
MODELING_FILES = {
    "gpt.py": "modeling_shoestring_gpt.py",
    "attention.py": "attention.py",
    "layers.py": "layers.py",
    "rope.py": "rope.py",
    "fused_ce.py": "fused_ce.py",
    "shape.py": "shape.py",
}
_ENTRY = "modeling_shoestring_gpt"
AUTO_MAP = {
    "AutoConfig": f"{_ENTRY}.ShoestringGPTConfig",
    "AutoModel": f"{_ENTRY}.ShoestringGPTModel",
    "AutoModelForCausalLM": f"{_ENTRY}.ShoestringGPTForCausalLM",
}

# transformers' "no limit" sentinel for model_max_length (int(1e30))
_UNSET_LENGTH = 10**29


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def ship_modeling_code(model_dir: Path, config: dict[str, Any]) -> None:
    """Copy the GPT's modeling files into ``model_dir`` and point ``auto_map`` at them."""
    source = Path(__file__).resolve().parent
    for name, target in MODELING_FILES.items():
        shutil.copyfile(source / name, model_dir / target)
    config["auto_map"] = dict(AUTO_MAP)


def special_token_ids(model_dir: Path) -> dict[str, int]:
    """eos/bos/pad ids of the tokenizer saved in ``model_dir`` ({} when it has none)."""
    if not (model_dir / "tokenizer_config.json").is_file():
        return {}
    # deferred: transformers is heavy and only needed when a tokenizer is there
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ids = {
        "eos_token_id": tok.eos_token_id,
        "bos_token_id": tok.bos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    return {k: int(v) for k, v in ids.items() if isinstance(v, int)}


def _context_length(config: dict[str, Any]) -> int | None:
    for key in ("max_seq_len", "max_position_embeddings", "n_positions", "seq_length"):
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def make_portable(model_dir: str | Path) -> list[str]:
    """Fill in what ``model_dir`` needs outside shoestring; returns one line per change.

    A directory without ``config.json`` (a PEFT adapter) is left as it is. Call it after the
    weights and the tokenizer are saved, before the directory is renamed into place.
    """
    model_dir = Path(model_dir)
    config = _read_json(model_dir / "config.json")
    if config is None:
        return []
    done: list[str] = []
    if config.get("model_type") == MODEL_TYPE:
        ship_modeling_code(model_dir, config)
        done.append("modeling code + auto_map (loads with trust_remote_code=True)")

    special = special_token_ids(model_dir)
    for key, value in special.items():
        if config.get(key) is None:
            config[key] = value
            done.append(f"config {key}={value}")
    atomic_write_json(model_dir / "config.json", config)

    generation = _read_json(model_dir / "generation_config.json") or {"_from_model_config": True}
    changed = False
    for key, value in special.items():
        if generation.get(key) is None:
            generation[key] = value
            changed = True
    context = _context_length(config)
    # without it transformers' generate defaults to 20 tokens and warns past the context
    if context is not None and generation.get("max_length") is None:
        generation["max_length"] = context
        changed = True
    if changed:
        atomic_write_json(model_dir / "generation_config.json", generation)
        done.append("generation_config eos/bos/pad/max_length")

    tok_cfg = _read_json(model_dir / "tokenizer_config.json")
    if tok_cfg is not None and context is not None:
        current = tok_cfg.get("model_max_length")
        if not isinstance(current, int) or current >= _UNSET_LENGTH:
            tok_cfg["model_max_length"] = context
            atomic_write_json(model_dir / "tokenizer_config.json", tok_cfg)
            done.append(f"tokenizer model_max_length={context}")
    return done
