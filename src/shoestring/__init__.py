"""shoestring: pretrain, search, RL-fine-tune, speed up and benchmark small language models
on the hardware you have, with numbers you can trust."""

__version__ = "0.1.0"
