"""``shoestring analyze``'s command line: the argument parser and the handler, nothing heavy.

``analyze [TARGET ...]`` (presets, ``preset+variant``, config files or run directories; default:
the four CPU-cache-study presets) prints one summary table and writes an ``analysis`` run
directory. The handler builds an :class:`~shoestring.analyze.config.AnalysisConfig` (defaults <
``--quick`` < ``--config FILE`` < the shortcut flags < ``--set key=value``; every flag but
``--json`` and ``--probe`` is a ``--set`` in disguise) and calls
:func:`shoestring.analyze.analysis.run`. ``analyze --probe`` measures and caches the host facts
other commands use for MFU. This module imports no torch, so ``shoestring --help`` stays fast;
the handler imports the measuring code when it runs.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from shoestring.analyze.config import (
    CACHE_STUDY_PRESETS,
    RUN_SECTIONS,
    AnalysisConfig,
    analysis_config,
)
from shoestring.analyze.spec import expand_sweep, parse_sweep, resolve_targets
from shoestring.cli_options import (
    OUTPUT_SHORTCUTS,
    add_config_options,
    add_output_options,
    print_config_keys,
    shortcut_overrides,
)
from shoestring.errors import UserError
from shoestring.rundir.directory import read_json

__all__ = ["SHORTCUT_FLAGS", "add_cli", "analysis_cli_config", "parse_count", "run_cli"]

# (argparse destination, config key) of the flags that are shortcuts for --set; a key under a
# training-config section (train.device ...) becomes an override of every target
SHORTCUT_FLAGS = (
    ("targets", "targets"),
    ("sweep", "sweep"),
    ("projected", "projected"),
    ("tokens", "tokens"),
    ("data", "data"),
    ("epochs", "epochs"),
    ("measure", "measure"),
    ("warmup", "settings.warmup"),
    ("steps", "settings.steps"),
    ("seconds", "settings.seconds"),
    ("device", "train.device"),
    ("dtype", "train.dtype"),
    ("threads", "train.threads"),
    *OUTPUT_SHORTCUTS,
)


def parse_count(text: str) -> float:
    """'1e9', '300M', '2.5B', '50k', '1,000,000' -> a number of tokens."""
    m = re.fullmatch(r"\s*([0-9][0-9_,]*(?:\.[0-9]+)?(?:e[0-9]+)?)\s*([kKmMbBgGtT]?)\s*", text)
    if not m:
        raise UserError(f"--tokens {text!r} is not a count; use e.g. 300M, 2.5B or 1e9")
    value = float(m.group(1).replace(",", "").replace("_", ""))
    mult = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}[m.group(2).lower()]
    return value * mult


def _parse_projected(items: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise UserError(
                f"--projected {item!r} must look like CONFIG=TOKENS_PER_S, "
                "e.g. --projected wiki_cache_optimized=20000"
            ) from None
    return out


def add_cli(sub: argparse._SubParsersAction) -> None:
    """Register ``analyze`` on the top-level parser."""
    p = sub.add_parser(
        "analyze",
        help="parameters, FLOPs, memory, cache fit and measured speed of configs on this host",
        description="Compute exactly (and check against counted values) what each config costs "
        "- parameters, FLOPs per token, memory, cache fit against this host's caches - and "
        "measure its training throughput, GFLOP/s and MFU here. TARGETs are presets, "
        "PRESET+VARIANT, config files or run directories; default: "
        + ", ".join(CACHE_STUDY_PRESETS)
        + ". Config layers: defaults < --quick < --config FILE < the flags below < --set "
        "key=value; a --set of model.*, train.*, data.* or hybrid.* applies to every target.",
    )
    # Every shortcut defaults to None: only a flag that was given overrides the layers below.
    p.add_argument(
        "targets",
        nargs="*",
        default=argparse.SUPPRESS,  # absent rather than [], so the default targets stand
        metavar="TARGET",
        help="what to analyse",
    )
    p.add_argument(
        "--sweep",
        action="append",
        metavar="KEY=V1,V2,...",
        help="measure across values of one or two fields (repeat the flag for two), e.g. "
        "--sweep train.batch_size=8,16,32 --sweep train.threads=1,2; prints the best",
    )
    p.add_argument(
        "--projected",
        action="append",
        metavar="CONFIG=TOKENS_PER_S",
        help="a projected throughput to set against the measurement (repeatable)",
    )
    p.add_argument("--tokens", help="estimate time to train on this many tokens (e.g. 300M)")
    p.add_argument("--data", help="estimate time to train on a prepared dataset (its train split)")
    p.add_argument("--epochs", type=float, help="epochs of --data (default 1)")
    p.add_argument("--device", help="same as --set train.device=...")
    p.add_argument("--dtype", choices=("auto", "fp32", "bf16"), help="same as --set train.dtype=")
    p.add_argument("--threads", type=int, help="same as --set train.threads=N")
    p.add_argument("--warmup", type=int, help="warm-up steps per config (default 2)")
    p.add_argument("--steps", type=int, help="most timed steps per config (default 5)")
    p.add_argument(
        "--seconds", type=float, help="stop timing a config after this long, >= 3 steps (15)"
    )
    p.add_argument(
        "--no-measure",
        dest="measure",
        action="store_false",
        default=None,
        help="formulas and counts only, no timing",
    )
    p.add_argument("--quick", action="store_true", help="short measurement and probe (tests)")
    p.add_argument(
        "--probe", action="store_true", help="measure and cache this host's facts, then exit"
    )
    p.add_argument("--json", action="store_true", help="print analysis.json instead of the table")
    add_config_options(p, "train.threads=1")
    add_output_options(p, "analysis")
    p.set_defaults(func=run_cli)


def _run_probe(args: argparse.Namespace) -> int:
    """``analyze --probe``: measure this host again, cache it and print what was found."""
    # deferred: torch is heavy; shoestring --help must not load it
    import torch

    from shoestring.analyze.probe import cache_path, load_probe
    from shoestring.runtime import setup_runtime

    rt = setup_runtime(args.device or "auto", "auto", args.threads or 0)
    probe = load_probe(refresh=True, device=rt.device, quick=args.quick)
    assert probe is not None
    torch.set_num_threads(rt.threads)
    if args.json:
        print(json.dumps(probe, indent=2))
        return 0
    c, mm = probe["caches"], probe["matmul_gflops"]
    print(
        f"host       {probe['cpu']['model']} ({probe['cpu']['physical_cores']} cores, "
        f"{probe['cpu']['logical_cores']} threads), torch {probe['torch']}"
    )
    print(f"isa        {', '.join(probe['cpu']['isa']) or '-'}")
    print(
        "caches     "
        + ", ".join(f"{k} {c[k] // 1024} KiB" for k in ("L1d", "L1i", "L2", "L3") if c.get(k))
        + f" (from {c['source']})"
    )
    print(
        f"matmul     fp32 {mm['fp32']:,.0f} GFLOP/s, bf16 {mm['bf16']:,.0f} GFLOP/s "
        f"({probe['matmul_note']})"
    )
    bw = probe["memory_bandwidth_gbs"]
    print(f"memory     {bw:,.1f} GB/s ({probe['memory_bandwidth_note']})")
    if probe.get("cuda"):
        g = probe["cuda"]
        print(
            f"cuda       {g['name']}, {g['memory_gb']} GB, bf16 "
            f"{g['matmul_gflops']['bf16']:,.0f} GFLOP/s, fp32 {g['matmul_gflops']['fp32']:,.0f}"
        )
    if probe.get("under_load"):
        print(
            f"not cached: other processes used {probe['host_cpu_percent_before']:.0f}% / "
            f"{probe['host_cpu_percent_after']:.0f}% of the CPU before / after the measurement "
            f"(waited {probe['quiet_wait_seconds']:.0f} s for a quiet host); the peaks are low - "
            "run `shoestring analyze --probe` again on an idle machine",
            file=sys.stderr,
        )
        return 1
    print(f"cached in  {cache_path()} (key: {probe['key']})")
    return 0


def analysis_cli_config(args: argparse.Namespace) -> AnalysisConfig:
    """The checked AnalysisConfig the flags describe: defaults < --quick < --config < the
    shortcut flags < --set (``--tokens 300M`` and ``--projected A=N`` read into numbers first)."""
    shortcuts = argparse.Namespace(**vars(args))
    if args.tokens is not None:
        shortcuts.tokens = parse_count(args.tokens)
    if args.projected is not None:
        shortcuts.projected = _parse_projected(args.projected)
    overrides = shortcut_overrides(shortcuts, SHORTCUT_FLAGS) + list(args.overrides)
    return analysis_config(quick=args.quick, config_file=args.config, overrides=overrides)


def run_cli(args: argparse.Namespace) -> int:
    """The ``analyze`` handler: build the config, run it, print the table and the run
    directory (analysis.json alone with --json); 130 after Ctrl-C."""
    if args.help_config:
        print_config_keys(AnalysisConfig())
        sections = ", ".join(f"{s}.*" for s in RUN_SECTIONS)
        print(f"{sections}: training-config keys (as for train), applied to every target")
        return 0
    if args.probe:
        return _run_probe(args)
    cfg = analysis_cli_config(args)
    # a bad target, --set or --sweep is reported before torch is imported (within a second)
    expand_sweep(resolve_targets(cfg.targets, cfg.overrides), parse_sweep(cfg.sweep))
    # deferred: torch is heavy; shoestring --help must not load it
    from shoestring.analyze.analysis import run

    try:
        path = run(cfg)
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(json.dumps(read_json(path / "analysis.json"), indent=2))
    else:
        _print_results(path, swept=bool(cfg.sweep))
        print(path)
    return 0


def _print_results(path: Path, swept: bool) -> None:
    """The summary table, the warnings its rows carry and, for a sweep, the best settings."""
    analysis = read_json(path / "analysis.json")
    # deferred: the report sections load matplotlib; shoestring --help must not
    from shoestring.analyze.table import host_line, summary_table

    print(host_line(analysis["host"]))
    print(summary_table(analysis["configs"]))
    for row in analysis["configs"]:
        for flag in ("peak_flag", "mfu_flag"):
            if row.get(flag):
                print(f"warning: {row['label']}: {row[flag]}", file=sys.stderr)
        if not row["flops"]["within_tolerance"]:
            print(
                f"warning: {row['label']}: analytic FLOPs differ from the counted ones by "
                f"{row['flops']['train_rel_error']:+.2%} (tolerance "
                f"{row['flops']['tolerance']:.0%})",
                file=sys.stderr,
            )
    summary = read_json(path / "summary.json")
    if summary.get("best") and swept:
        for base, b in summary["best"].items():
            print(f"best for {base}: {b['sweep']} at {b['tokens_per_second']:,.0f} tokens/s")
