"""search: OOM retry, resume after SIGKILL, two workers on one SQLite study, PostgreSQL, stats."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from shoestring.errors import UserError
from shoestring.search import grid
from shoestring.search.attempt import SIMULATE_OOM_ENV
from shoestring.search.config import SearchConfig, StudyOutput
from shoestring.search.location import sqlite_url
from shoestring.search.results import summarize
from shoestring.search.spec import derived_seed, trial_config
from shoestring.search.storage import AskTellGridSampler, open_storage
from shoestring.search.study import join, open_study
from shoestring.search.study import run as search
from shoestring.search.trial import WorkerOptions, execute_trial

TINY = [
    "model.d_model=32",
    "model.n_layers=2",
    "model.n_heads=2",
    "model.d_ff=64",
    "train.seq_len=32",
    "train.batch_size=8",
    "train.max_steps=3",
    "train.eval_every=3",
    "train.eval_batches=2",
    "train.lr=3e-3",
    "train.threads=1",
    "train.dtype=fp32",
    "train.compile=off",
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from shoestring.data import text

    out = tmp_path_factory.mktemp("data") / "synthetic"
    text.run(None, out, vocab_size=300, synthetic=1500, quiet=True)
    return out


def _spec(
    data: Path, variants: list[str], seeds: int = 1, out: Path | None = None, **kw
) -> SearchConfig:
    """A tiny study, quiet, trained in the worker process unless ``isolate`` is given."""
    kw = {"isolate": False, **kw}
    return SearchConfig(
        sizes=["tiny"], variants=variants, seeds=seeds, data=str(data), overrides=list(TINY),
        output=StudyOutput(dir=str(out or ""), quiet=True), **kw,
    )  # fmt: skip


def _finished_points(study_dir: Path, name: str | None = None, url: str | None = None) -> Counter:
    """How many counting, finished trials each grid point has in the study's storage."""
    url = url or sqlite_url(study_dir)
    name = name or optuna.get_all_study_names(open_storage(url, 5))[0]
    study = optuna.load_study(study_name=name, storage=open_storage(url, 5))
    keys = ["size", "variant", "seed"]
    return Counter(
        grid.point_key(t.params, keys)
        for t in grid.counting(study.get_trials())
        if t.state == TrialState.COMPLETE
    )


def _run_dirs(study_dir: Path) -> dict[str, str]:
    out = {}
    for d in sorted((study_dir / "trials").iterdir()):
        s = json.loads((d / "summary.json").read_text()) if (d / "summary.json").exists() else {}
        out[d.name] = s.get("status", "none")
    return out


# ----------------------------------------------------------------------------- OOM


def test_oom_trial_succeeds_on_retry_with_half_micro_batch(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # evaluation batches above 4 sequences "run out of memory"; the asked batch is 8
    monkeypatch.setenv(SIMULATE_OOM_ENV, "4")
    # default isolation: each attempt in its own spawned process (the hook travels in the env)
    out = search(_spec(prepared, ["baseline"], out=tmp_path / "study", isolate=True))
    res = json.loads((out / "results.json").read_text())
    (row,) = res["trials"]
    assert row["status"] == "finished", row
    assert row["oom_retries"] == 1
    first, second = row["attempts"]
    assert first["status"] == "failed" and "out of memory" in first["error"]
    assert (first["micro_batch"], first["grad_accum"]) == (8, 1)
    assert (second["micro_batch"], second["grad_accum"]) == (4, 2)  # same tokens per step
    # the validation set is still the same 2 x 8 sequences (eval_batches doubled to 4 x 4)
    assert row["val_sequences"] == 16 and row["eval_batches"] == 4
    assert res["success"]["recovered_by_oom_retry"] == 1
    assert json.loads((out / "summary.json").read_text())["kind"] == "study"
    # the failed attempt keeps its own run directory with its error
    failed = json.loads((Path(first["run_dir"]) / "summary.json").read_text())
    assert failed["status"] == "failed" and "out of memory" in failed["error"]


def test_oom_that_never_fits_is_recorded_failed_with_its_error(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SIMULATE_OOM_ENV, "1")  # only micro-batch 1 fits; one retry is allowed
    spec = _spec(prepared, ["baseline"], oom_retries=1)
    row = execute_trial(
        spec, {"size": "tiny", "variant": "baseline", "seed": 0}, 0,
        WorkerOptions(trials_dir=tmp_path, isolate=False, echo=False),
    )  # fmt: skip
    assert row["status"] == "failed"
    assert "out of memory" in row["error"]
    assert [a["micro_batch"] for a in row["attempts"]] == [8, 4]


# ----------------------------------------------------------------------------- resume / workers


def _cli(study: Path, data: Path, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "shoestring", "search", "--sizes", "tiny", "--variants",
           "baseline,rope_only", "--seeds", "2", "--data", str(data), "--out", str(study),
           "--heartbeat", "1", "--no-isolate", "--quiet", *extra]  # fmt: skip
    for o in TINY:
        cmd += ["--set", o]
    return cmd


def test_killed_sweep_resumes_and_runs_each_grid_point_exactly_once(
    prepared: Path, tmp_path: Path
) -> None:
    study = tmp_path / "study"
    # trials of 200 steps (1-2 s each): with 3-step trials the whole sweep could end between
    # two polls, before a moment with one trial finished and the next one running was seen
    longer = ["train.max_steps=200", "train.eval_every=200"]
    proc = subprocess.Popen(_cli(study, prepared) + [a for o in longer for a in ("--set", o)])
    deadline = time.time() + 180  # generous: CI hosts can be slow
    try:
        # kill -9 once one trial has finished and the next one is running
        while time.time() < deadline:
            dirs = _run_dirs(study) if (study / "trials").exists() else {}
            if "finished" in dirs.values() and "running" in dirs.values():
                break
            assert proc.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.1)
        else:
            pytest.fail("no trial finished within 180 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = _run_dirs(study)
    finished_before = {k for k, v in before.items() if v == "finished"}
    assert 1 <= len(finished_before) < 4
    assert "running" in before.values()  # the trial the kill interrupted

    # the same study, resumed (here in-process; `shoestring search` with the same arguments)
    spec = _spec(prepared, ["baseline", "rope_only"], seeds=2, out=study, heartbeat=1)
    spec.overrides += longer
    search(spec)
    points = _finished_points(study)
    assert len(points) == 4 and set(points.values()) == {1}, points
    after = _run_dirs(study)
    assert sum(v == "finished" for v in after.values()) == 4  # nothing ran twice
    assert finished_before <= {k for k, v in after.items() if v == "finished"}
    res = json.loads((study / "results.json").read_text())
    assert len(res["trials"]) == 4 and res["success"]["rate"] == 1.0
    assert res["counts"]["requeued_after_crash"] >= 1
    assert json.loads((study / "summary.json").read_text())["status"] == "finished"


def test_two_workers_share_a_sqlite_study_without_duplicate_points(
    prepared: Path, tmp_path: Path
) -> None:
    # trials of 200 steps (1-2 s each), so that the second worker - a spawned process
    # that takes seconds to import torch - starts before the first has done them all
    spec = _spec(prepared, ["baseline", "rope_only"], seeds=3, out=tmp_path / "study",
                 workers=2, threads=1, heartbeat=2)  # fmt: skip
    spec.overrides += ["train.max_steps=200", "train.eval_every=200"]
    out = search(spec)
    points = _finished_points(out)
    assert len(points) == 6 and set(points.values()) == {1}, points
    assert sum(v == "finished" for v in _run_dirs(out).values()) == 6
    res = json.loads((out / "results.json").read_text())
    workers = {r["worker"] for r in res["trials"]}
    assert len(workers) == 2 and {w[-3:] for w in workers} == {"-w0", "-w1"}  # both took part
    assert (out / "worker-0.log").exists() and (out / "worker-1.log").exists()


def test_grid_sampler_duplicates_running_points_and_the_guard_stands_down() -> None:
    space = {"size": ["tiny"], "variant": ["a", "b"], "seed": [0]}
    keys = list(space)
    study = optuna.create_study(sampler=AskTellGridSampler(space, seed=0))
    t0, t1 = study.ask(), study.ask()
    p0 = {k: t0.suggest_categorical(k, v) for k, v in space.items()}
    p1 = {k: t1.suggest_categorical(k, v) for k, v in space.items()}
    assert p0 != p1  # the first n trials get distinct points
    t2 = study.ask()  # both points running: GridSampler re-proposes one of them
    p2 = {k: t2.suggest_categorical(k, v) for k, v in space.items()}
    assert p2 in (p0, p1)
    trials = study.get_trials(deepcopy=False)
    assert grid.stand_down_reason(t0.number, t0.number, p0, trials, keys) is None
    assert grid.stand_down_reason(t1.number, t1.number, p1, trials, keys) is None
    assert "taken by trial" in grid.stand_down_reason(t2.number, t2.number, p2, trials, keys)
    study.tell(t0, 1.0)
    trials = study.get_trials(deepcopy=False)
    assert "done by trial" in grid.stand_down_reason(99, 99, p0, trials, keys)


def test_tpe_over_a_range_runs_its_budget_with_median_pruning(
    prepared: Path, tmp_path: Path
) -> None:
    spec = _spec(prepared, ["baseline"], sampler="tpe", trials=5, prune="median",
                 ranges=["train.lr=1e-4:1e-2:log"], out=tmp_path / "tpe")  # fmt: skip
    spec.overrides += ["train.max_steps=4", "train.eval_every=2"]
    out = search(spec)
    rows = json.loads((out / "results.json").read_text())["trials"]
    assert len(rows) == 5
    lrs = [r["extra_params"]["train.lr"] for r in rows]
    assert len(set(lrs)) == 5 and all(1e-4 <= lr <= 1e-2 for lr in lrs)
    assert {r["status"] for r in rows} <= {"finished", "pruned"}
    for r in rows:  # the config each trial trained with is the one TPE chose
        cfg = json.loads((Path(r["run_dir"]) / "config.json").read_text())
        assert cfg["train"]["lr"] == r["extra_params"]["train.lr"]


def test_cli_config_layers_and_an_identity_free_of_placement(
    prepared: Path, tmp_path: Path
) -> None:
    from shoestring.cli import build_parser
    from shoestring.config import ConfigError
    from shoestring.search.cli import search_cli_config

    def cfg(*argv: str) -> SearchConfig:
        return search_cli_config(build_parser().parse_args(["search", *argv]))

    cfg_file = tmp_path / "search.yaml"
    cfg_file.write_text("seeds: 2\nworkers: 3\noverrides: [train.max_steps=9]\n")
    base = ["--variants", "baseline,rope_only", "--data", str(prepared), "--config", str(cfg_file)]
    base += [a for o in TINY for a in ("--set", o)]
    c = cfg("--sizes", "all", *base, "--choice", "model.n_layers=2,4", "--sampler", "tpe",
            "--trials", "3", "--range", "train.lr=1e-4:1e-3:log", "--no-isolate", "-q",
            "--out", str(tmp_path / "s"), "--set", "workers=2")  # fmt: skip
    assert c.sizes == ["tiny", "small", "medium", "large"]  # 'all' = the four sizes, in order
    assert c.variants == ["baseline", "rope_only"]
    assert c.seeds == 2 and c.workers == 2  # the file, then --set over it
    assert c.overrides == ["train.max_steps=9", *TINY]  # the file's, then every --set of train.*
    assert c.choices == {"model.n_layers": [2, 4]} and c.ranges[0]["kind"] == "log"
    assert not c.isolate and c.output.quiet and c.study_dir() == tmp_path / "s"
    assert c.data == str(prepared.resolve())
    # the study is the spec alone: placement, quiet and how this process works are not in it
    other = cfg("--sizes", "all", *base, "--choice", "model.n_layers=2,4", "--sampler", "tpe",
                "--trials", "3", "--range", "train.lr=1e-4:1e-3:log", "--threads", "1",
                "--storage", "sqlite:///x.db", "--out", "elsewhere", "--name", "n")  # fmt: skip
    assert other.identity() == c.identity() and other.study_dir() == Path("elsewhere/n")
    assert "output" not in c.to_json() and "workers" not in c.to_json()
    assert cfg("--join", str(tmp_path)).study_dir() == tmp_path  # a worker's default directory
    with pytest.raises(ConfigError, match="did you mean 'seeds'"):
        cfg("--sizes", "tiny", *base, "--set", "seed=2")
    with pytest.raises(UserError, match="say what to search"):
        cfg("--data", str(prepared))


def test_resume_with_a_different_grid_is_refused(prepared: Path, tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    open_study(url, "s", _spec(prepared, ["baseline"]), heartbeat=5)
    with pytest.raises(UserError, match="different grid"):
        open_study(url, "s", _spec(prepared, ["baseline", "rope_only"]), heartbeat=5)


# ----------------------------------------------------------------------------- PostgreSQL


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / name).exists():
            return str(d / name)
    return None


@pytest.fixture
def postgres_url():
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    pytest.importorskip("psycopg2")
    prefix: list[str] = []
    root = tempfile.mkdtemp(prefix="shoestring-pg-")
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as 'postgres'
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.skip("running as root and there is no 'postgres' user to run initdb as")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        runuser = shutil.which("runuser")
        prefix = [runuser, "-u", "postgres", "--"] if runuser else ["su", "postgres", "-c"]
    data = os.path.join(root, "data")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def as_pg(cmd: list[str]) -> subprocess.CompletedProcess:
        if prefix and prefix[0] == "su":
            cmd = [*prefix, " ".join(cmd)]
        else:
            cmd = [*prefix, *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    r = as_pg([initdb, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"])
    if r.returncode:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"initdb failed: {r.stderr.strip()[-300:]}")
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    r = as_pg([pg_ctl, "-D", data, "-o", f"'{opts}'" if prefix[:1] == ["su"] else opts,
               "-l", os.path.join(root, "log"), "-w", "-t", "60", "start"])  # fmt: skip
    if r.returncode:
        log = Path(root, "log").read_text() if Path(root, "log").exists() else r.stderr
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"pg_ctl start failed: {log[-500:]}")
    try:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE shoestring")
        conn.close()
        yield f"postgresql://postgres@127.0.0.1:{port}/shoestring"
    finally:
        as_pg([pg_ctl, "-D", data, "-m", "immediate", "stop"])
        shutil.rmtree(root, ignore_errors=True)


def test_postgresql_storage_with_a_joining_worker(
    prepared: Path, tmp_path: Path, postgres_url: str
) -> None:
    spec = _spec(prepared, ["baseline", "rope_only"], out=tmp_path / "a", storage=postgres_url,
                 study_name="pg", max_trials=1)  # fmt: skip
    # the first process stops after one trial (as if its machine went away) ...
    search(spec)
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["trials_done"] == 1
    assert summary["storage"].startswith("postgresql://")
    # ... and a worker on "another machine" joins by name and finishes the study
    worker = SearchConfig(join="pg", storage=postgres_url, isolate=False,
                          output=StudyOutput(dir=str(tmp_path / "b"), quiet=True))  # fmt: skip
    ran = join(worker.check())
    assert ran == 1
    points = _finished_points(tmp_path, name="pg", url=postgres_url)
    assert len(points) == 2 and set(points.values()) == {1}
    # results come from the storage, so they include the trial run on the other machine
    spec.max_trials = 0
    search(spec)
    rows = json.loads((tmp_path / "a" / "results.json").read_text())["trials"]
    assert sorted(r["variant"] for r in rows) == ["baseline", "rope_only"]
    assert any("/b/trials/" in r["run_dir"] for r in rows)


# ----------------------------------------------------------------------------- statistics


def test_summary_ranks_by_mean_and_tests_against_baseline() -> None:
    def rows(variant: str, losses: list[float]) -> list[dict]:
        return [
            {"size": "tiny", "variant": variant, "seed": i, "val_loss": v, "status": "finished"}
            for i, v in enumerate(losses)
        ]

    data = (
        rows("baseline", [5.0, 5.1, 5.05])
        + rows("rope_only", [4.0, 4.1, 4.05])
        + rows("bias_only", [5.02, 5.08, 5.04])
        + rows("lora_small", [6.0])
    )
    s = {e["variant"]: e for e in summarize(data)}
    assert s["rope_only"]["rank"] == 1 and s["lora_small"]["rank"] == 4
    assert s["rope_only"]["p_vs_baseline"] < 0.01 and "better" in s["rope_only"]["note"]
    assert s["bias_only"]["p_vs_baseline"] > 0.05
    assert "no significant" in s["bias_only"]["note"]
    assert s["lora_small"]["p_vs_baseline"] is None and s["lora_small"]["note"] == "n too small"
    assert s["baseline"]["note"] == "baseline"
    assert abs(s["rope_only"]["val_loss_std"] - 0.05) < 1e-9


def test_trial_seed_is_a_function_of_seed_and_config(prepared: Path) -> None:
    spec = _spec(prepared, ["baseline", "rope_only"], seeds=2)
    a = trial_config(spec, {"size": "tiny", "variant": "baseline", "seed": 0}).train.seed
    assert a == trial_config(spec, {"size": "tiny", "variant": "baseline", "seed": 0}).train.seed
    assert a != trial_config(spec, {"size": "tiny", "variant": "baseline", "seed": 1}).train.seed
    assert a != trial_config(spec, {"size": "tiny", "variant": "rope_only", "seed": 0}).train.seed
    assert derived_seed(1, 0, {"train": {"seed": 5, "threads": 1}}) == derived_seed(
        1, 0, {"train": {"seed": 9, "threads": 2}}
    )
