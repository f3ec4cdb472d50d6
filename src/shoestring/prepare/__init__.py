"""``shoestring prepare``: text in, a prepared data directory out (tokenizer, token shards,
``meta.json``), as a run directory with its own ``report.md``.

Why a command package apart from :mod:`shoestring.data`: the data layer does the work
(:func:`shoestring.data.text.run`) and sits below the report; the command wraps it in the run
lifecycle whose finalizer writes ``report.md`` through :mod:`shoestring.report`, which only a
layer above the report may import. ``cli.py`` is the light wiring, ``config.py`` the
:class:`~shoestring.prepare.config.PrepareConfig`, ``run.py`` the API ``run(cfg) -> Path``.
"""
