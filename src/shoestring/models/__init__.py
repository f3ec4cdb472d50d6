"""Model classes. Importing this package registers the shoestring GPT with the Auto classes
(``AutoConfig``, ``AutoModel``, ``AutoModelForCausalLM``; model type ``shoestring_gpt``), so a
saved run's ``model/`` directory loads with ``AutoModelForCausalLM.from_pretrained`` and no
``trust_remote_code``."""

from shoestring.models.gpt import (
    ShoestringGPTConfig,
    ShoestringGPTForCausalLM,
    ShoestringGPTModel,
    lm_loss,
    num_parameters_breakdown,
    register_auto_classes,
)

__all__ = [
    "ShoestringGPTConfig",
    "ShoestringGPTForCausalLM",
    "ShoestringGPTModel",
    "lm_loss",
    "num_parameters_breakdown",
    "register_auto_classes",
]
