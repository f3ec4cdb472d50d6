"""``shoestring bench``: GSM8K accuracy, speed and memory of several models, honestly reported.

Why this package exists: the study this project grew from scored 50 problems one at a time,
compared models that differed by one problem as if it meant something, and called a change in
RSS "memory". ``bench`` runs every model through the same problems with the batched engine
(:mod:`shoestring.engine`), judges every response under the model's scoring protocol
(:mod:`shoestring.scoring.protocols`, judged as :func:`shoestring.scoring.scoring.score_model`
judges) with every extractor recorded, and reports each accuracy with its 95% Wilson interval
and n, each pair of models with McNemar's exact test on the same problems, and speed and memory as
measured (tokens/s over generation time only, the real peak of the resident set).

One job per module, in the order a run uses them (:func:`.runner.run` reads top to bottom):

- :mod:`.cli` - the flags, each a ``--set`` shortcut over ``--config FILE``; no torch;
- :mod:`.config` - :class:`~.config.BenchConfig`, what was asked (config.json);
- :mod:`.runner` - the whole run: preflight, lifecycle, each model, the summary;
- :mod:`.protocol` - the one place ``--protocol`` is resolved (``auto`` per model);
- :mod:`.problems` - the problems every model answers, and lm-eval's per-problem shots;
- :mod:`.models` - MODEL arguments resolved to loadable specs, weight fingerprints, the
  llama2.c conversion cache;
- :mod:`.model_run` - one model: load, generate what is missing, measure its memory;
- :mod:`.ranks` - under torchrun: rank 0's orders, every rank's share of the generation;
- :mod:`.results` - a model's entry in summary.json, from its session or from disk;
- :mod:`.prompts` - each problem's prompt: rendered, fitted to the model's context (the
  context policy of :mod:`shoestring.models.context`), hashed as lm-eval hashes it;
- :mod:`.records` - problems.jsonl and state.json: the settings hash that guards resume;
- :mod:`.metrics` - accuracy per extractor, speed and memory per model, paired tests.

This ``__init__`` imports nothing, so that the wiring can read :mod:`.config` without loading
torch.

Layout of ``--out DIR`` (documented in docs/bench.md)::

    config.json  summary.json  metrics.jsonl  log.txt  report.md
    models/<label>/problems.jsonl   one line per scored problem, appended as generated
                                    (in problem order once the model is complete)
    models/<label>/state.json       the settings the lines were made with + per-session timings
    converted/<label>-<sha>/        llama2.c checkpoints converted to HF (a cache)

Resume: rerunning into the same ``--out`` reads each model's ``problems.jsonl`` and generates
only the problems that are missing. Lines are only reused when they were made with the same
settings (model weights, protocol and its prompt, max new tokens, dtype, stop strings); a
different setting is an error that suggests a new ``--out``, never a silent mix.
"""
