"""``shoestring search``: an Optuna study of ``train`` runs that survives, resumes and scales out.

The study directory holds the SQLite storage (by default), one ordinary ``train`` run directory
per trial under ``trials/``, ``results.json``/``results.csv``, ``summary.md``, the plots under
``plots/`` and a ``summary.json`` of kind ``study``. Running the same command again resumes the
study; ``--join`` adds a worker (here or on another machine) to an existing study.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from shoestring.cli_options import add_set_option
from shoestring.config import list_variants
from shoestring.errors import UserError
from shoestring.search.location import DEFAULT_HEARTBEAT, redact, sqlite_url
from shoestring.search.spec import (
    SIZES,
    StudySpec,
    list_modes,
    parse_choice,
    parse_list,
    parse_range,
)

SPEC_ATTR = "shoestring_spec"


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="architecture sweep: an Optuna study of train runs (grid or TPE), resumable",
        description="Train every (size, variant, seed) of a grid - or a TPE-chosen budget of "
        "trials - as ordinary train runs in one study directory, and rank the configurations "
        "by mean validation loss with std and a Welch t-test against baseline. Run the same "
        "command again to resume; add workers with --workers N or --join.",
    )
    p.add_argument("--sizes", help=f"comma-separated size presets ({', '.join(SIZES)}) or all")
    p.add_argument(
        "--variants", help=f"comma-separated variants or all: {', '.join(list_variants())}"
    )
    p.add_argument("--mode", default="fast", help=f"search mode preset: {', '.join(list_modes())}")
    p.add_argument("--seeds", type=int, default=3, help="seeds per configuration (default 3)")
    p.add_argument("--data", help="prepared data directory (from `shoestring prepare`)")
    p.add_argument("--out", help="study directory (default: ./study, or the --join directory)")
    add_set_option(p, "train.max_steps=100")
    p.add_argument(
        "--choice",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="an extra grid dimension, e.g. --choice train.lr=1e-3,3e-3 (repeatable)",
    )
    p.add_argument(
        "--range",
        dest="ranges",
        action="append",
        default=[],
        metavar="KEY=LOW:HIGH[:log|:int]",
        help="a range for --sampler tpe, e.g. --range train.lr=1e-4:3e-3:log (repeatable)",
    )
    p.add_argument("--sampler", default="grid", choices=("grid", "tpe"))
    p.add_argument("--trials", type=int, default=0, help="trial budget for --sampler tpe")
    p.add_argument(
        "--prune",
        default="none",
        choices=("none", "median"),
        help="stop trials whose intermediate validation loss is below the median",
    )
    p.add_argument(
        "--storage",
        help="Optuna storage URL, e.g. postgresql://user@host/db "
        "(default: sqlite file study.db in the study directory)",
    )
    p.add_argument("--study-name", help="study name in the storage (default: the directory name)")
    p.add_argument(
        "--join",
        metavar="STUDY",
        help="work on an existing study: its directory (SQLite) or, with --storage, "
        "its name; runs trials until the study is done",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="local worker processes (threads are divided among them)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per worker (default: physical cores / workers)",
    )
    p.add_argument(
        "--oom-retries",
        type=int,
        default=2,
        help="retries of an out-of-memory trial at half micro-batch (default 2)",
    )
    p.add_argument("--seed", type=int, default=1337, help="base seed every trial seed derives from")
    p.add_argument(
        "--heartbeat",
        type=float,
        default=DEFAULT_HEARTBEAT,
        help="seconds between trial heartbeats; a trial silent for 2x this is "
        "re-queued (default 30)",
    )
    p.add_argument(
        "--no-isolate",
        action="store_true",
        help="train in the worker process instead of a child per trial (peak memory "
        "then accumulates across trials)",
    )
    p.add_argument("--max-trials", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--worker-id", default="w0", help=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-trial lines")
    p.add_argument("--no-bar", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run_cli)


# ----------------------------------------------------------------------------- study plumbing


def open_study(url: str, name: str, spec: StudySpec | None, heartbeat: float) -> Any:
    """Create or load the study; a stored spec must match the one asked for."""
    import optuna

    from shoestring.search.storage import open_storage, pruner_for, sampler_for

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url, heartbeat)
    if spec is None:  # joining: everything comes from the storage
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            names = optuna.get_all_study_names(storage)
            raise UserError(
                f"no study named '{name}' in {redact(url)}; studies there: "
                f"{', '.join(names) or 'none'}"
            ) from None
        data = study.user_attrs.get(SPEC_ATTR)
        if data is None:
            raise UserError(f"study '{name}' was not created by shoestring search")
        spec = StudySpec.from_json(data)
    sampler = sampler_for(spec.search_space(), spec.sampler, spec.base_seed)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=sampler,
        pruner=pruner_for(spec.prune),
        direction="minimize",
        load_if_exists=True,
    )
    stored = study.user_attrs.get(SPEC_ATTR)
    if stored is None:
        study.set_user_attr(SPEC_ATTR, spec.to_json())
    else:
        old = StudySpec.from_json(stored)
        if old.identity() != spec.identity():
            diff = [
                f"{k}: stored {old.identity()[k]!r}, asked {v!r}"
                for k, v in spec.identity().items()
                if old.identity().get(k) != v
            ]
            raise UserError(
                f"study '{name}' in {redact(url)} was created with a different grid ("
                + "; ".join(diff)
                + "); resume with the same arguments, or start a new study with another --out"
            )
        if spec.sampler == "tpe" and spec.trials != old.trials:
            study.set_user_attr(SPEC_ATTR, spec.to_json())  # extending a TPE budget is allowed
    return study, spec


def default_threads(workers: int) -> int:
    from shoestring.runtime import physical_cores

    return max(1, physical_cores() // max(1, workers))


def _spawn_workers(
    n: int, study_dir: Path, url: str, name: str, args: dict[str, Any]
) -> list[subprocess.Popen]:
    procs = []
    for i in range(n):
        cmd = [
            sys.executable,
            "-m",
            "shoestring",
            "search",
            "--join",
            name,
            "--storage",
            url,
            "--out",
            str(study_dir),
            "--worker-id",
            f"w{i}",
            "--heartbeat",
            str(args["heartbeat"]),
            "--threads",
            str(args["threads"]),
            "--no-bar",
        ]
        if args.get("data"):
            cmd += ["--data", args["data"]]
        if not args.get("isolate", True):
            cmd.append("--no-isolate")
        log = open(study_dir / f"worker-{i}.log", "a", encoding="utf-8")  # noqa: SIM115
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        log.close()
    return procs


def _wait_workers(
    procs: list[subprocess.Popen], study: Any, spec: StudySpec, progress: bool
) -> None:
    from tqdm import tqdm

    from shoestring.search.sweep import progress_of

    state = progress_of(study, spec)
    bar = tqdm(
        total=state.total,
        initial=state.done,
        unit="trial",
        desc="search",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.5 if sys.stderr.isatty() else 30.0,
    )
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(0.5)
            done = progress_of(study, spec).done
            if done != bar.n:
                bar.n = done
                bar.refresh()
    except KeyboardInterrupt:
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.terminate()
        raise
    finally:
        bar.close()


# ----------------------------------------------------------------------------- the Python API


def search(
    spec: StudySpec,
    out: str | Path,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    workers: int = 1,
    threads: int = 0,
    heartbeat: float = DEFAULT_HEARTBEAT,
    isolate: bool = True,
    echo: bool = True,
    progress: bool = True,
    max_trials: int = 0,
) -> Path:
    """Run (or resume) a study to completion and write its results; return the study dir."""
    from shoestring.runs.monitor import SystemMonitor
    from shoestring.runs.rundir import RunDir
    from shoestring.search.sweep import WorkerOptions, work

    spec.validate()
    _check_data(spec.data)
    study_dir = Path(out)
    study_dir.mkdir(parents=True, exist_ok=True)
    url = storage or sqlite_url(study_dir)
    name = study_name or study_dir.resolve().name
    study, spec = open_study(url, name, spec, heartbeat)
    threads = threads or default_threads(workers)
    rundir = RunDir(study_dir, "study", echo=echo)
    cfg0 = _first_config(spec)
    rundir.start(
        {"spec": spec.to_json(), "storage": redact(url), "study_name": name, "workers": workers},
        runtime=_runtime(cfg0, threads, workers),
        study_name=name,
        storage=redact(url),
        sampler=spec.sampler,
        mode=spec.mode,
        sizes=spec.sizes,
        variants=spec.variants,
        seeds=spec.seeds,
        grid_points=spec.grid_size() if spec.sampler == "grid" else None,
        trial_budget=spec.trials if spec.sampler == "tpe" else None,
        error=None,
    )
    rundir.log(
        f"study '{name}' in {redact(url)}: {spec.sampler} over {spec.search_space()}, mode "
        f"{spec.mode}, {workers} worker(s) x {threads} thread(s)"
    )
    monitor = SystemMonitor().start()
    status, error = "finished", None
    opts = dict(heartbeat=heartbeat, threads=threads, data=spec.data, isolate=isolate)
    try:
        if workers <= 1:
            work(
                study,
                spec,
                WorkerOptions(
                    trials_dir=study_dir / "trials",
                    threads=threads,
                    heartbeat=heartbeat,
                    isolate=isolate,
                    echo=echo,
                    progress=progress,
                    max_trials=max_trials,
                ),
                url,
            )
        else:
            procs = _spawn_workers(workers, study_dir, url, name, opts)
            _wait_workers(procs, study, spec, progress)
            bad = [p.returncode for p in procs if p.returncode]
            if bad:
                rundir.log(f"worker exit codes {bad}; see worker-*.log in {study_dir}")
    except KeyboardInterrupt:
        status, error = "interrupted", "interrupted; run the same command again to resume"
    except BaseException as exc:
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        system = monitor.stop()
        _finish(study, spec, study_dir, rundir, status, error, system, echo)
    if status == "interrupted":
        raise KeyboardInterrupt
    return study_dir


def _finish(
    study: Any,
    spec: StudySpec,
    study_dir: Path,
    rundir: Any,
    status: str,
    error: str | None,
    system: dict[str, Any],
    echo: bool,
) -> None:
    from shoestring.search.plots import make_plots
    from shoestring.search.results import (
        format_success,
        format_table,
        success,
        summarize,
        trial_rows,
        validation_check,
        write_results,
    )
    from shoestring.search.sweep import progress_of

    rows, counts = trial_rows(study)
    summary = summarize(rows)
    state = progress_of(study, spec)
    if status == "finished" and not state.complete:
        status = "interrupted"
        error = (
            f"{state.total - state.done} of {state.total} trials not done (a worker stopped "
            "early); run the same command again to finish"
        )
    succ = success(rows, spec.mode)
    val = validation_check(rows)
    meta = {"success": succ, "validation": val, "counts": counts, "spec": spec.to_json()}
    files = write_results(study_dir, rows, summary, meta)
    try:
        plots = make_plots(rows, summary, study_dir / "plots")
    except Exception as exc:  # noqa: BLE001 - a plot failure must not lose the results
        plots = {}
        rundir.log(f"plots failed: {type(exc).__name__}: {exc}")
    rundir.finish(
        status,
        error=error,
        system=system,
        trials_done=state.done,
        trials_total=state.total,
        success=succ,
        validation=val,
        counts=counts,
        best=summary[0] if summary and summary[0]["rank"] == 1 else None,
        files={**files, **plots},
    )
    table = format_table(summary)
    if echo:
        print(table, flush=True)
    rundir.log(format_success(succ))
    rundir.close()
    if echo:
        print(
            f"validation: {val['val_sequences']} sequences, identical for all trials: "
            f"{val['identical_for_all_trials']}"
        )
        print(f"study directory: {study_dir}")


def join(
    study: str,
    *,
    storage: str | None = None,
    out: str | Path | None = None,
    data: str | None = None,
    threads: int = 0,
    heartbeat: float = DEFAULT_HEARTBEAT,
    isolate: bool = True,
    worker: str = "w0",
    echo: bool = True,
    progress: bool = True,
    max_trials: int = 0,
) -> int:
    """Work on an existing study until it is done; return the number of trials run here."""
    from shoestring.search.sweep import WorkerOptions, work

    if storage:
        url, name = storage, study
        study_dir = Path(out or study)
    else:
        study_dir = Path(out or study)
        if not (Path(study) / "study.db").is_file():
            raise UserError(
                f"{study} holds no study.db; give the study directory, or the study name with "
                "--storage URL"
            )
        url = sqlite_url(study)
        name = _only_study_name(url, study)
    st, spec = open_study(url, name, None, heartbeat)
    if data:
        spec.data = data
    _check_data(spec.data)
    return work(
        st,
        spec,
        WorkerOptions(
            trials_dir=study_dir / "trials",
            threads=threads or default_threads(1),
            heartbeat=heartbeat,
            isolate=isolate,
            worker=worker,
            echo=echo,
            progress=progress,
            max_trials=max_trials,
        ),
        url,
    )


def _only_study_name(url: str, study: str) -> str:
    import optuna

    names = optuna.get_all_study_names(url)
    if len(names) == 1:
        return names[0]
    name = Path(study).resolve().name
    if name in names:
        return name
    raise UserError(f"{url} holds studies {names}; name one with --study-name")


def _check_data(path: str) -> None:
    if not path:
        raise UserError("no prepared data: pass --data DIR (made by `shoestring prepare`)")
    if not (Path(path) / "meta.json").is_file():
        raise UserError(
            f"{path} is not a prepared data directory (no meta.json); run "
            "`shoestring prepare` first"
        )


def _first_config(spec: StudySpec) -> Any:
    from shoestring.search.spec import trial_config

    return trial_config(spec, {"size": spec.sizes[0], "variant": spec.variants[0], "seed": 0})


def _runtime(cfg: Any, threads: int, workers: int) -> dict[str, Any]:
    from shoestring.runtime import resolve_device, resolve_dtype

    dev = resolve_device(cfg.train.device)
    return {
        "device": str(dev),
        "dtype": resolve_dtype(cfg.train.dtype, dev),
        "threads": threads,
        "workers": workers,
    }


# ----------------------------------------------------------------------------- CLI


def run_cli(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise UserError("--workers must be at least 1")
    try:
        if args.join:
            n = join(
                args.join,
                storage=args.storage,
                out=args.out,
                data=args.data,
                threads=args.threads,
                heartbeat=args.heartbeat,
                isolate=not args.no_isolate,
                worker=args.worker_id,
                echo=not args.quiet,
                progress=not (args.quiet or args.no_bar),
                max_trials=args.max_trials,
            )
            if not args.quiet:
                print(f"worker {args.worker_id}: ran {n} trial(s)")
            return 0
        if not args.sizes or not args.variants:
            raise UserError(
                "say what to search: --sizes tiny,small --variants baseline,rope_only "
                "(or 'all'); --join STUDY adds a worker to an existing study"
            )
        from shoestring.config import list_presets

        spec = StudySpec(
            sizes=parse_list(
                args.sizes,
                [s for s in SIZES if s in list_presets()]
                + [p for p in list_presets() if p not in SIZES],
                "sizes",
            ),
            variants=parse_list(args.variants, list_variants(), "variants"),
            seeds=args.seeds,
            mode=args.mode,
            data=str(Path(args.data).resolve()) if args.data else "",
            overrides=list(args.overrides),
            choices=dict(parse_choice(c) for c in args.choice),
            ranges=[parse_range(r) for r in args.ranges],
            sampler=args.sampler,
            trials=args.trials,
            prune=args.prune,
            base_seed=args.seed,
            oom_retries=args.oom_retries,
        )
        if args.sizes.strip() == "all":
            spec.sizes = [s for s in SIZES if s in spec.sizes]
        search(
            spec,
            args.out or "study",
            storage=args.storage,
            study_name=args.study_name,
            workers=args.workers,
            threads=args.threads,
            heartbeat=args.heartbeat,
            isolate=not args.no_isolate,
            echo=not args.quiet,
            progress=not args.quiet,
            max_trials=args.max_trials,
        )
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0
