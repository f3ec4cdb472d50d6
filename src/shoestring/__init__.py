"""shoestring: pretrain, search, RL-fine-tune, speed up and benchmark small language models
on the hardware you have, with numbers you can trust.

Importing the package is cheap on purpose (``shoestring --version`` and ``--help`` answer at
once): it loads no torch. The GPT registers itself with transformers' Auto classes when
``shoestring.models.gpt`` is imported, which every model loader does.
"""

__version__ = "0.1.0"
