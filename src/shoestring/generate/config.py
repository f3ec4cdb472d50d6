"""``GenerateConfig``: what one ``shoestring generate`` call is asked, and where its run goes.

Why a module apart from :mod:`shoestring.generate.run`: the command line builds this config
(defaults < ``--config FILE`` < the shortcut flags < ``--set key=value``) before anything heavy
is imported, so it imports no torch. The ``output`` section places the run directory and says
how loudly the command runs, so :func:`shoestring.generate.run.run` needs nothing but this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shoestring.cli_options import OutputConfig
from shoestring.config import ConfigError, opt, run_dict, validate
from shoestring.errors import UserError

__all__ = ["PLACEMENT_KEYS", "GenerateConfig"]

#: The keys of a GenerateConfig that place the run rather than say what is generated.
PLACEMENT_KEYS = ("output",)


@dataclass
class GenerateConfig:
    """What ``generate`` is asked; the command-line wiring is :mod:`shoestring.generate.cli`."""

    model: str = opt("", "shoestring run directory, HF model directory or Hub name (required)")
    prompts: list[str] = opt([], "prompt texts; one streams to the terminal, several are batched")
    max_new_tokens: int = opt(100, "tokens per prompt at most", min=1)
    temperature: float = opt(0.0, "0 = greedy; above 0 samples", min=0.0)
    top_k: int = opt(0, "sample among the k most likely tokens; 0 = all", min=0)
    top_p: float = opt(1.0, "nucleus sampling mass (1 = off)", min=0.0, max=1.0)
    seed: int = opt(0, "seed of the sampling streams (one per prompt)", min=0)
    stop: list[str] = opt([], "stop a sequence once its generated text contains one of these")
    batch_size: int = opt(0, "rows per forward pass; 0 = auto", min=0)
    device: str = opt("auto", "cpu, cuda, cuda:N, mps or auto")
    dtype: str = opt(
        "auto",
        "weights dtype; auto = bf16 where the host computes it fast, else fp32",
        choices=("auto", "fp32", "bf16", "fp16"),
    )
    trust_remote_code: bool = opt(False, "allow models that ship their own Python code")
    output: OutputConfig = field(default_factory=OutputConfig)

    def check(self) -> GenerateConfig:
        """Validate ranges and choices, and that there is something to generate."""
        validate(self)
        if not self.model:
            raise ConfigError("model is required: a run directory, HF model directory or Hub name")
        if not self.prompts:
            raise UserError("give at least one --prompt TEXT (or --set prompts=[...])")
        return self

    def run_dict(self) -> dict[str, Any]:
        """What ``config.json`` holds: the request without its placement (``output``)."""
        return run_dict(self, PLACEMENT_KEYS)
