"""``ImportConfig`` and ``ExportConfig``: what ``import llama2c`` and ``export`` are asked.

Why a module apart from :mod:`shoestring.models.cli` and :mod:`shoestring.models.convert`: the
command line builds these configs (defaults < ``--config FILE`` < the shortcut flags < ``--set``)
before torch is imported, and the APIs take them; kept here, neither of the two imports the
other. ``out`` is the artifact itself (a model directory or a ``.gguf`` file), not a parent of
uniquely named runs: other tools load it by that path.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoestring.config import ConfigError, opt, validate

__all__ = ["ExportConfig", "ImportConfig"]


@dataclass
class ImportConfig:
    """What ``import llama2c`` is asked: the checkpoint, its tokenizer, and where it goes."""

    model: str = opt("", "llama2.c checkpoint MODEL.bin (required)")
    tokenizer: str = opt("", "the sentencepiece TOKENIZER.model it was trained with (required)")
    out: str = opt("", "the Hugging Face model directory to write (required)")
    overwrite: bool = opt(False, "replace out if it exists and is not empty")
    quiet: bool = opt(False, "print only the written path")

    def check(self) -> ImportConfig:
        validate(self)
        missing = [k for k in ("model", "tokenizer", "out") if not getattr(self, k)]
        if missing:
            raise ConfigError(f"import llama2c needs {', '.join(missing)} (see --help)")
        return self


@dataclass
class ExportConfig:
    """What ``export`` is asked: the source model, the target format, and where it goes."""

    source: str = opt("", "a run directory or its model/ (required)")
    to: str = opt("", "target format: llama or gguf (required)")
    out: str = opt("", "output directory (llama) or .gguf file (gguf) (required)")
    dtype: str = opt("f16", "gguf matrix precision (norms stay f32)", choices=("f32", "f16"))
    overwrite: bool = opt(False, "replace out if it exists")
    quiet: bool = opt(False, "print only the written path")

    def check(self) -> ExportConfig:
        validate(self)
        missing = [k for k in ("source", "to", "out") if not getattr(self, k)]
        if missing:
            raise ConfigError(f"export needs {', '.join(missing)} (see --help)")
        if self.to not in ("llama", "gguf"):
            raise ConfigError(f"to={self.to!r}: choose llama or gguf")
        return self
