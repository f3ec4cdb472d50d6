"""shoestring: pretrain, search, RL-fine-tune, speed up and benchmark small language models
on the hardware you have, with numbers you can trust."""

__version__ = "0.1.0"

# Importing shoestring registers the GPT with transformers' Auto classes, so
# ``AutoModelForCausalLM.from_pretrained(run_dir / "model")`` works after ``import shoestring``.
from shoestring import models  # noqa: E402,F401
