"""A study, start to finish: ``shoestring search``'s API, :func:`run` (and :func:`join`).

The study directory holds the SQLite storage (by default), one ordinary ``train`` run directory
per trial under ``trials/``, ``results.json``/``results.csv``, ``report.md`` (the one report
system's sections for a study), the plots under ``plots/`` and a ``summary.json`` of kind
``study``, kept by :class:`~shoestring.rundir.lifecycle.RunLifecycle`. Running the same command
again resumes the study; a config with ``join`` set adds a worker (here or on another machine)
to an existing study instead - the one ``run(cfg)`` dispatches to :func:`join`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from shoestring.errors import UserError
from shoestring.report.finalize import command_finalizers
from shoestring.run_config import RunConfig
from shoestring.rundir.directory import RunDir
from shoestring.rundir.lifecycle import RunLifecycle
from shoestring.runtime import physical_cores, resolve_device, resolve_dtype
from shoestring.search.config import SearchConfig
from shoestring.search.local_workers import spawn_workers, wait_workers
from shoestring.search.location import redact, sqlite_url
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
from shoestring.search.spec import SPEC_ATTR, StudySpec, trial_config
from shoestring.search.storage import open_storage, pruner_for, sampler_for
from shoestring.search.trial import WorkerOptions
from shoestring.search.worker import progress_of, work

__all__ = ["default_threads", "join", "open_study", "run"]


def open_study(url: str, name: str, spec: StudySpec | None, heartbeat: float) -> Any:
    """Create or load the study; a stored spec must match the one asked for."""
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
        direction="minimize",  # the validation loss
        load_if_exists=True,  # a rerun of the same command resumes the study
    )
    stored = study.user_attrs.get(SPEC_ATTR)
    if stored is None:
        study.set_user_attr(SPEC_ATTR, spec.to_json())
    else:
        old = StudySpec.from_json(stored)
        # the grid's identity (data, sizes, variants, seeds ...) must match: mixing trials
        # of two grids in one study would rank points no single grid holds
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
    """Torch threads per worker: the physical cores shared out among the workers."""
    return max(1, physical_cores() // max(1, workers))


def run(cfg: SearchConfig) -> Path:
    """Run (or resume) the study ``cfg`` describes to completion and write its results - or,
    with ``cfg.join``, work on an existing study as one more worker; return the study
    directory."""
    cfg.check()
    if cfg.join:
        n = join(cfg)
        if cfg.echo:
            print(f"worker {cfg.worker_id}: ran {n} trial(s)")
        return cfg.study_dir()
    return _run_study(cfg)


def _options(cfg: SearchConfig, study_dir: Path, threads: int) -> WorkerOptions:
    """How this process runs trials: the parts of ``cfg`` that are no part of the study."""
    return WorkerOptions(
        trials_dir=study_dir / "trials",
        threads=threads,
        heartbeat=cfg.heartbeat,
        isolate=cfg.isolate,
        worker=cfg.worker_id,
        echo=cfg.echo,
        progress=cfg.progress_bars,
        max_trials=cfg.max_trials,
    )


def _run_study(cfg: SearchConfig) -> Path:
    """A new or resumed study, with this process as its first worker (or its N local ones)."""
    _check_data(cfg.data)
    study_dir = cfg.study_dir()
    study_dir.mkdir(parents=True, exist_ok=True)
    url = cfg.storage or sqlite_url(study_dir)
    name = cfg.study_name or study_dir.resolve().name
    study, spec = open_study(url, name, cfg, cfg.heartbeat)
    threads = cfg.threads or default_threads(cfg.workers)
    rundir = RunDir(study_dir, "study", echo=cfg.echo)
    life = RunLifecycle(
        rundir,
        config={
            "spec": spec.to_json(),
            "storage": redact(url),
            "study_name": name,
            "workers": cfg.workers,
        },
        start_fields={
            "runtime": _runtime(_first_config(spec), threads, cfg.workers),
            "study_name": name,
            "storage": redact(url),
            "sampler": spec.sampler,
            "mode": spec.mode,
            "sizes": spec.sizes,
            "variants": spec.variants,
            "seeds": spec.seeds,
            "grid_points": spec.grid_size() if spec.sampler == "grid" else None,
            "trial_budget": spec.trials if spec.sampler == "tpe" else None,
            "error": None,
        },
        close=False,  # the closing lines (success rate) still go to log.txt
        finalizers=command_finalizers(),  # report.md from the final summary, however it ended
    )
    outcome: dict[str, Any] = {}
    opts = _options(cfg, study_dir, threads)
    try:
        with life:
            rundir.log(
                f"study '{name}' in {redact(url)}: {spec.sampler} over {spec.search_space()}, "
                f"mode {spec.mode}, {cfg.workers} worker(s) x {threads} thread(s)"
            )
            try:
                if cfg.workers <= 1:
                    work(study, spec, opts, url)
                else:
                    _run_local_workers(study, spec, study_dir, url, name, cfg.workers, opts, rundir)
            except KeyboardInterrupt:
                life.set_status("interrupted", "interrupted; run the same command again to resume")
                raise
            else:
                # a worker that stopped early (--max-trials, a crash) leaves the study unfinished
                state = progress_of(study, spec)
                if not state.complete:
                    life.set_status(
                        "interrupted",
                        f"{state.total - state.done} of {state.total} trials not done (a worker "
                        "stopped early); run the same command again to finish",
                    )
            finally:
                # results are written however the workers ended: every finished trial counts
                outcome.update(_write_outcome(study, spec, study_dir, rundir))
                life.fields.update(outcome["fields"])
    finally:
        _wrap_up(rundir, outcome, cfg.echo)
    return study_dir


def _run_local_workers(
    study: optuna.Study,
    spec: StudySpec,
    study_dir: Path,
    url: str,
    name: str,
    workers: int,
    opts: WorkerOptions,
    rundir: RunDir,
) -> None:
    """``--workers N``: N joining worker processes on this machine, watched until they end."""
    args = dict(
        heartbeat=opts.heartbeat,
        threads=opts.threads,
        data=spec.data,
        isolate=opts.isolate,
        worker_id=opts.worker,
    )
    procs = spawn_workers(workers, study_dir, url, name, args)
    wait_workers(procs, study, spec, opts.progress)
    bad = [p.returncode for p in procs if p.returncode]  # nonzero only; None = still running
    if bad:
        rundir.log(f"worker exit codes {bad}; see worker-*.log in {study_dir}")


def _write_outcome(
    study: optuna.Study, spec: StudySpec, study_dir: Path, rundir: RunDir
) -> dict[str, Any]:
    """results.json/.csv and the plots from the storage; returns them and the summary fields."""
    rows, counts = trial_rows(study)
    summary = summarize(rows)
    state = progress_of(study, spec)
    succ = success(rows, spec.mode)
    val = validation_check(rows)
    meta = {"success": succ, "validation": val, "counts": counts, "spec": spec.to_json()}
    files = write_results(study_dir, rows, summary, meta)
    try:
        plots = make_plots(rows, summary, study_dir / "plots")
    except Exception as exc:  # noqa: BLE001 - a plot failure must not lose the results
        plots = {}
        rundir.log(f"plots failed: {type(exc).__name__}: {exc}")
    fields = {
        "trials_done": state.done,
        "trials_total": state.total,
        "success": succ,
        "validation": val,
        "counts": counts,
        # unranked rows (no finished trial with a loss) sort last: no rank 1 means no best
        "best": summary[0] if summary and summary[0]["rank"] == 1 else None,
        "files": {**files, **plots, "report_md": str(study_dir / "report.md")},
    }
    return {"summary": summary, "success": succ, "validation": val, "fields": fields}


def _wrap_up(rundir: RunDir, outcome: dict[str, Any], echo: bool) -> None:
    """After the final summary and report.md (the lifecycle's finalizers): the table and
    success rate, the closing lines."""
    if outcome and echo:
        print(format_table(outcome["summary"]), flush=True)
    if outcome:
        rundir.log(format_success(outcome["success"]))
    rundir.close()
    if outcome and echo:
        val = outcome["validation"]
        print(
            f"validation: {val['val_sequences']} sequences, identical for all trials: "
            f"{val['identical_for_all_trials']}"
        )


def join(cfg: SearchConfig) -> int:
    """Work on the existing study ``cfg.join`` until it is done; return the number of trials
    run here. Its trials go under ``cfg.study_dir()``; its spec is the one the study stores."""
    if cfg.storage:
        url, name = cfg.storage, cfg.join
    else:
        if not (Path(cfg.join) / "study.db").is_file():
            raise UserError(
                f"{cfg.join} holds no study.db; give the study directory, or the study name "
                "with --storage URL"
            )
        url = sqlite_url(cfg.join)
        name = cfg.study_name or _only_study_name(url, cfg.join)
    st, spec = open_study(url, name, None, cfg.heartbeat)
    if cfg.data:
        spec.data = cfg.data
    _check_data(spec.data)
    return work(st, spec, _options(cfg, cfg.study_dir(), cfg.threads or default_threads(1)), url)


def _only_study_name(url: str, study: str) -> str:
    """The one study in the storage, or the one named like its directory."""
    names = optuna.get_all_study_names(url)
    if len(names) == 1:
        return names[0]
    name = Path(study).resolve().name
    if name in names:
        return name
    raise UserError(f"{url} holds studies {names}; name one with --study-name")


def _check_data(path: str) -> None:
    """Refuse early, with the command to run, when the study has no prepared data."""
    if not path:
        raise UserError("no prepared data: pass --data DIR (made by `shoestring prepare`)")
    if not (Path(path) / "meta.json").is_file():
        raise UserError(
            f"{path} is not a prepared data directory (no meta.json); run "
            "`shoestring prepare` first"
        )


def _first_config(spec: StudySpec) -> RunConfig:
    """The first grid point's config: what the study's runtime (device, dtype) is read from."""
    return trial_config(spec, {"size": spec.sizes[0], "variant": spec.variants[0], "seed": 0})


def _runtime(cfg: RunConfig, threads: int, workers: int) -> dict[str, Any]:
    dev = resolve_device(cfg.train.device)
    return {
        "device": str(dev),
        "dtype": resolve_dtype(cfg.train.dtype, dev),
        "threads": threads,
        "workers": workers,
    }
