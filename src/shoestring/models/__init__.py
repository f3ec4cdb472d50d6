"""Model definitions, loaders and importers; import the submodule that defines what you need.

This package's ``__init__`` imports nothing on purpose: ``shoestring --help`` reaches
``shoestring.models.cli`` through it and must not load torch. Importing
``shoestring.models.gpt`` (which :mod:`shoestring.models.loading` does) registers the
shoestring GPT with the Auto classes (model type ``shoestring_gpt``), so a saved run's
``model/`` directory loads with ``AutoModelForCausalLM.from_pretrained`` and no
``trust_remote_code``.
"""
