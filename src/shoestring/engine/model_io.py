"""How the engine talks to a Hugging Face causal LM: where its weights live, what its forward
accepts, the dtype it computes in, and one forward pass that returns next-token logits.

One place for these facts so the prefill, the decode loop, the batch sizing and GRPO ask the
model the same way (a model that lacks ``position_ids`` or ``logits_to_keep`` is still served).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any, Self

import torch

from shoestring.config import ConfigError
from shoestring.runtime import DTYPE_NAMES

__all__ = [
    "KeptOnModel",
    "compute_dtype",
    "forward_last_logits",
    "forward_params",
    "model_device",
    "model_dtype",
]


class KeptOnModel:
    """Derived state kept on a model between calls (merged or packed weight copies): found or
    made with :meth:`on`. A deep copy or pickle of the model gets an empty one: such copies
    are cheap to rebuild and must neither share storage with the original's nor double the
    copy's memory."""

    def __deepcopy__(self, memo: dict[int, Any]) -> Self:
        return type(self)()

    def __getstate__(self) -> dict[str, Any]:
        return type(self)().__dict__

    @classmethod
    def on(cls, model: Any, attr: str) -> Self:
        """The one kept on ``model`` as ``attr``, made there if it has none yet."""
        found = getattr(model, attr, None)
        if not isinstance(found, cls):
            found = cls()
            setattr(model, attr, found)
        return found


def model_device(model: torch.nn.Module) -> torch.device:
    """Device of the model's first parameter (HF models keep all weights on one device here)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """Dtype of the model's first floating-point parameter."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def forward_params(model: Any) -> set[str]:
    """Keyword arguments the model's forward declares (cached on the model object)."""
    cached = getattr(model, "_shoestring_forward_params", None)
    if cached is None:
        try:
            cached = set(inspect.signature(model.forward).parameters)
        except (TypeError, ValueError):
            cached = set()
        with contextlib.suppress(AttributeError, TypeError):
            model._shoestring_forward_params = cached
    return cached


@contextlib.contextmanager
def compute_dtype(model: torch.nn.Module, dtype: str) -> Iterator[None]:
    """Autocast when the config asks for a lower precision than the weights hold.

    bf16 *weights* (``load_model_and_tokenizer(dtype="bf16")``) are faster than autocast, which
    re-casts every weight on every step; autocast is the fallback for an fp32 model.
    """
    weights = model_dtype(model)
    want = None if dtype == "auto" else DTYPE_NAMES[dtype]
    if want is None or want == weights:
        yield
        return
    if want == torch.float32:
        raise ConfigError(
            f"dtype=fp32 was asked for but the weights are {weights}; load the "
            "model in fp32 (--dtype fp32) instead of up-casting low-precision weights"
        )
    device_type = model_device(model).type
    with torch.autocast(device_type=device_type, dtype=want):
        yield


def forward_last_logits(
    model: Any,
    params: set[str],
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    cache: Any,
) -> tuple[torch.Tensor, Any]:
    """One forward pass returning fp32 logits of the last position and the updated cache.

    ``params`` is :func:`forward_params` of the model, passed in so a decode loop inspects the
    signature once, not once per token.
    """
    kwargs: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": mask,
        "past_key_values": cache,
        "use_cache": True,
    }
    if "position_ids" in params:
        kwargs["position_ids"] = positions
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = 1  # prefill: skip the vocab projection of every prompt token
    out = model(**kwargs)
    logits = out.logits if hasattr(out, "logits") else out[0]
    new_cache = getattr(out, "past_key_values", None)
    if new_cache is None and isinstance(out, tuple) and len(out) > 1:
        new_cache = out[1]
    return logits[:, -1, :].float(), new_cache
