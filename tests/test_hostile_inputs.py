"""Hostile input, second pass (issue 25): each fault is run through the command line and must
end in one line naming the file or key with a fix (exit 2), or in a recorded skip - and leave
everything else in the run directory as it was.

Covered here: absurd batch sizes and a step that ignores SIGTERM (3), ``--resume`` of a run of
another kind (4), run names that escape ``--out`` (5), a missing model path taken for a Hub name
(6), garbage in a directory ``compare`` reads (7), a data root that does not exist (9), ``-q``
on every command (10); and the smaller ones: Ctrl-C without a traceback, ``prepare`` on a
directory of notes, unique search worker names, ``compile=auto`` from steady-state steps. The
context policy (faults 1, 2, 8) is tested in test_hostile_bench_generate.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _helpers import TINY_TRAIN, char_tokenizer, prepare_synthetic, save_tiny_llama
from shoestring.cli import build_parser
from shoestring.cli import main as cli_main
from shoestring.config import ConfigError
from shoestring.errors import UserError
from shoestring.rundir.directory import unique_run_dir
from test_compare import make_train_run

TINY_SETS = [arg for o in TINY_TRAIN for arg in ("--set", o)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_synthetic(tmp_path_factory.mktemp("data") / "synthetic", problems=600)


def _one_line_error(err: str, command: str) -> str:
    """The error line of a failed command; it must be the only line that says ``error:``."""
    lines = [ln for ln in err.splitlines() if f"shoestring {command}: error:" in ln]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (to show that nothing else changed)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------- fault 3: sizes


def test_batch_larger_than_the_data_is_refused_with_the_numbers(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["train", "--data", str(prepared), "--out", str(tmp_path), "--name", "big"]
    rc = cli_main([*argv, *TINY_SETS, "--set", "train.batch_size=1e9"])
    line = _one_line_error(capsys.readouterr().err, "train")
    assert rc == 2
    assert "1,000,000,000 sequences per step" in line and "set train.batch_size to" in line
    summary = json.loads((tmp_path / "big" / "summary.json").read_text())
    assert summary["status"] == "failed" and "sequences per step" in summary["error"]
    assert json.loads((tmp_path / "big" / "config.json").read_text())["train"]["batch_size"] == 1e9
    assert not (tmp_path / "big" / "checkpoints").exists()  # refused before the first step


def test_batch_whose_activations_cannot_fit_is_refused_with_the_estimate(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shoestring.run_config import build_run_config
    from shoestring.train import sizes
    from shoestring.train.footprint import memory_estimate

    cfg = build_run_config(overrides=[*TINY_TRAIN, "model.vocab_size=300", "train.batch_size=4"])
    fits = memory_estimate(cfg, "fp32", "cpu")["total_bytes"]  # what batch 4 needs
    monkeypatch.setattr(sizes, "available_memory_bytes", lambda device: fits)
    argv = ["train", "--data", str(prepared), "--out", str(tmp_path), "--name", "mem"]
    rc = cli_main([*argv, *TINY_SETS, "--set", "train.batch_size=64"])
    line = _one_line_error(capsys.readouterr().err, "train")
    assert rc == 2 and "the estimate `shoestring analyze` reports" in line
    suggested = int(line.split("set train.batch_size to ")[1].split(" ")[0].replace(",", ""))
    assert 4 <= suggested < 64  # the largest batch that fits, by the same estimate
    cfg.train.batch_size = suggested
    sizes.check_batch_fits_memory(cfg, "fp32", __import__("torch").device("cpu"))
    cfg.train.batch_size = suggested + 1
    with pytest.raises(UserError):
        sizes.check_batch_fits_memory(cfg, "fp32", __import__("torch").device("cpu"))


HANGING_STEP = """
import sys
from shoestring import cli
from shoestring.rundir.lifecycle import RunLifecycle
from shoestring.train.trainer import Trainer

RunLifecycle.STOP_GRACE_SECONDS = 1.0
real_step = Trainer._train_step


def hanging_step(self, step):
    if step >= 2:
        while True:  # a step that never ends: the stop signal only sets a flag meanwhile
            pass
    return real_step(self, step)


Trainer._train_step = hanging_step
sys.exit(cli.main(sys.argv[1:]))
"""


def test_sigterm_on_a_step_that_never_ends_leaves_the_run_interrupted(
    prepared: Path, tmp_path: Path
) -> None:
    script = tmp_path / "hang.py"
    script.write_text(HANGING_STEP)
    run = tmp_path / "hang"
    argv = ["train", "--data", str(prepared), "--out", str(tmp_path), "--name", "hang"]
    sets = [*TINY_SETS, "--set", "train.compile=off", "--set", "train.save_every=1"]
    err = (tmp_path / "err.txt").open("w")
    proc = subprocess.Popen([sys.executable, str(script), *argv, *sets], stderr=err)
    deadline = time.time() + 180
    while time.time() < deadline and not (run / "checkpoints" / "step_2").exists():
        time.sleep(0.2)
    time.sleep(0.5)  # inside the step that never ends
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("SIGTERM did not end a run whose step never ends")
    assert rc == 128 + signal.SIGTERM
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted", summary
    assert re.search(r"did not end within \d+ s of the signal", summary["error"]), summary
    assert summary["steps"] == 2
    assert (run / "checkpoints" / "step_2" / "state.pt").exists()  # the last good one stays
    assert (run / "config.json").exists() and (run / "report.md").exists()
    assert "did not end within" in (run / "log.txt").read_text()


# ----------------------------------------------------------------------------- fault 4: kinds


def test_train_resume_of_a_grpo_run_names_the_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "g"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": "Qwen/Qwen2.5-0.5B", "lr": 1e-6}))
    (run / "summary.json").write_text(json.dumps({"kind": "grpo", "status": "interrupted"}))
    before = _files(run)
    assert cli_main(["train", "--resume", str(run)]) == 2
    line = _one_line_error(capsys.readouterr().err, "train")
    assert f"{run} is a grpo run, not a train run" in line and "shoestring grpo" in line
    assert _files(run) == before  # nothing in the other command's run was touched


def test_train_resume_of_a_damaged_config_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "t"
    run.mkdir()
    (run / "config.json").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe garbage")
    assert cli_main(["train", "--resume", str(run)]) == 2
    line = _one_line_error(capsys.readouterr().err, "train")
    assert f"{run / 'config.json'} is not a readable JSON file" in line


# ----------------------------------------------------------------------------- fault 5: names


def _commands_with_name() -> list[tuple[str, list[str]]]:
    """(command, positional placeholders) for every command that takes ``--name``."""
    out = []
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        if any("--name" in a.option_strings for a in parser._actions):
            positionals = [
                "x" for a in parser._actions if not a.option_strings and a.nargs in (None, 1)
            ]
            out.append((name, positionals))
    return out


NAME_COMMANDS = _commands_with_name()
# commands that build their directory from --name themselves and are tested with their own
# command (none today: grpo's TRL output_dir path calls cli_options.check_run_name too)
OWN_CHECK: set[str] = set()


@pytest.mark.parametrize("command", [c for c, _ in NAME_COMMANDS if c not in OWN_CHECK])
@pytest.mark.parametrize("bad", ["../escape", "/abs", "a/b", "..", ""])
def test_every_name_is_one_path_component(
    command: str, bad: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    positionals = dict(NAME_COMMANDS)[command]
    out = tmp_path / "out"
    rc = cli_main([command, *positionals, "--out", str(out), "--name", bad])
    line = _one_line_error(capsys.readouterr().err, command)
    assert rc == 2 and "is not a directory name" in line and "--name" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written anywhere


def test_name_set_through_the_config_and_the_api_is_checked_too(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rc = cli_main(["train", "--out", str(tmp_path), "--set", "output.name=../up"])
    assert rc == 2 and "output.name='../up'" in _one_line_error(capsys.readouterr().err, "train")
    with pytest.raises(ConfigError, match="not a directory name"):
        unique_run_dir(tmp_path, "a/b")
    assert unique_run_dir(tmp_path, "fine") == tmp_path / "fine"


# ----------------------------------------------------------------------------- fault 6: models


def test_a_missing_local_model_is_never_a_hub_lookup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from shoestring.models.loading import resolve_model_path

    monkeypatch.chdir(tmp_path)
    model = tmp_path / "t" / "mB"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    assert resolve_model_path("t/mB") == ("t/mB", "hf")
    (model / "config.json").unlink()
    model.rmdir()  # deleted while the command runs (bench loads it again per model)
    with pytest.raises(UserError, match="t/mB does not exist any more"):
        resolve_model_path("t/mB")
    # a path whose owner part is a local directory is local too, even if never seen
    with pytest.raises(UserError, match="t/other does not exist"):
        resolve_model_path("t/other")
    with pytest.raises(UserError, match="gpt2 does not exist"):
        resolve_model_path("gpt2")  # one name is a local path, not a Hub id
    assert resolve_model_path("Qwen/Qwen2.5-0.5B") == ("Qwen/Qwen2.5-0.5B", "hub")
    rc = cli_main(["generate", "t/gone", "--prompt", "x", "--out", str(tmp_path / "g")])
    line = _one_line_error(capsys.readouterr().err, "generate")
    assert rc == 2 and "t/gone does not exist" in line


# ----------------------------------------------------------------------------- fault 7: compare


@pytest.mark.parametrize("bad_file", ["summary.json", "config.json", "metrics.jsonl"])
def test_compare_names_a_garbage_file_and_reports_the_good_runs(
    bad_file: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    good = make_train_run(tmp_path / "runs", "good")
    bad = make_train_run(tmp_path / "runs", "bad", tokens_per_second=5000)
    (bad / bad_file).write_bytes(b"\x00\xff\xfe\x89 binary garbage \xc3\x28")
    before = _files(tmp_path / "runs")
    out = tmp_path / "report"
    assert cli_main(["compare", str(good), str(bad), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    data = json.loads((out / "report.json").read_text())
    if bad_file == "metrics.jsonl":  # damaged lines are skipped; the run itself is readable
        assert [r["label"] for r in data["runs"]] == ["good", "bad"]
    else:
        skipped = [ln for ln in captured.err.splitlines() if "skipped:" in ln]
        assert len(skipped) == 1 and str(bad / bad_file) in skipped[0], captured.err
        assert [r["label"] for r in data["runs"]] == ["good"]
        assert data["skipped"] == [skipped[0].split("skipped: ", 1)[1]]
        assert str(bad / bad_file) in (out / "report.md").read_text()  # the reader is told
    assert "Traceback" not in captured.err
    assert _files(tmp_path / "runs") == before  # compare writes nothing into the runs
    # a parent directory of runs: the bad one is named, not silently passed over
    assert cli_main(["compare", str(tmp_path / "runs"), "--out", str(tmp_path / "r2")]) == 0
    if bad_file != "metrics.jsonl":
        assert f"skipped: {bad / bad_file}" in capsys.readouterr().err


def test_compare_of_nothing_readable_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = make_train_run(tmp_path, "bad")
    (bad / "summary.json").write_bytes(b"\xff\xfe\x00")
    assert cli_main(["compare", str(bad), "--out", str(tmp_path / "rep")]) == 2
    line = _one_line_error(capsys.readouterr().err, "compare")
    assert f"{bad / 'summary.json'} is not text" in line


# ----------------------------------------------------------------------------- fault 9: data root


def test_a_data_root_that_does_not_exist_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from shoestring.data.root import data_root_candidates, find_dataset

    monkeypatch.setenv("SHOESTRING_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="SHOESTRING_DATA=.*nowhere does not exist"):
        find_dataset("gsm8k", "train.jsonl")
    # through the command: grpo on gsm8k is refused in one line, nothing is trained
    model = save_tiny_llama(tmp_path / "tiny", char_tokenizer())
    argv = ["grpo", "--model", str(model), "--dataset", "gsm8k", "--steps", "1", "-q"]
    assert cli_main([*argv, "--out", str(tmp_path / "g")]) == 2
    line = _one_line_error(capsys.readouterr().err, "grpo")
    assert f"SHOESTRING_DATA={tmp_path / 'nowhere'} does not exist" in line
    [run] = (tmp_path / "g").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "SHOESTRING_DATA" in summary["error"]
    assert not (run / "model").exists()
    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.setenv("SHOESTRING_DATA", str(root))
    # the user's root is the only one: no silent fallback to the checkout's copy
    assert data_root_candidates() == [(root, "$SHOESTRING_DATA")]
    assert find_dataset("gsm8k", "train.jsonl") is None


# ----------------------------------------------------------------------------- fault 10: -q


def test_every_command_takes_q_and_quiet() -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, parser in sub.choices.items():
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parsers = list(nested[0].choices.items()) if nested else [("", parser)]
        for inner, p in parsers:
            flags = {s for a in p._actions for s in a.option_strings}
            if not {"-q", "--quiet"} <= flags:
                missing.append(f"{name} {inner}".strip())
    assert not missing, f"commands without -q/--quiet: {missing}"


# ----------------------------------------------------------------------------- the smaller ones


def test_ctrl_c_in_a_command_is_one_line_and_exit_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt  # what Ctrl-C or SIGTERM does outside a command's own handling

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub.choices["compare"].set_defaults(func=interrupted)
    monkeypatch.setattr("shoestring.cli.build_parser", lambda: parser)
    assert cli_main(["compare", "x"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "shoestring compare: interrupted" and "Traceback" not in err


def test_sigterm_during_quickstart_is_clean_and_names_the_last_evaluation(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    argv = ["quickstart", "--out", str(out), "--steps", "5000", "--problems", "300"]
    err_path = tmp_path / "err.txt"
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shoestring", *argv, "--eval-problems", "1", "--device", "cpu"],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        metrics = out / "runs" / "quickstart" / "metrics.jsonl"
        deadline = time.time() + 300
        while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size):
            time.sleep(0.2)  # until step 0's evaluation is recorded
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)  # during training: the last evaluation was step 0's
        rc = proc.wait(timeout=120)
    err = err_path.read_text()
    assert rc == 130 and "Traceback" not in err and "KeyboardInterrupt" not in err, err
    run = out / "runs" / "quickstart"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] >= 1
    closing = (run / "log.txt").read_text().splitlines()[-1]
    assert f"interrupted: {summary['steps']:,} steps" in closing
    assert "(evaluated at step 0)" in closing  # not shown as the final run's val loss
    assert (run / "checkpoints" / f"step_{summary['steps']}" / "state.pt").exists()


def test_prepare_leaves_out_notes_and_no_empty_out_on_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from shoestring.data import synthetic

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rows = synthetic.generate_problems(60, seed=0)
    (corpus / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (corpus / "SOURCE.md").write_text("Downloaded from NOTE-MARKER on 2026-01-01.\n")
    out = tmp_path / "data"
    assert cli_main(["prepare", str(corpus), "--out", str(out), "--vocab-size", "300"]) == 0
    err = capsys.readouterr().err
    assert "left out" in err and "SOURCE.md" in err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["notes_skipped"] == [str(corpus / "SOURCE.md")]
    assert all("SOURCE.md" not in f for f in meta["files"])
    assert json.loads((out / "summary.json").read_text())["notes_skipped"] == meta["notes_skipped"]

    notes_only = tmp_path / "notes"
    notes_only.mkdir()
    (notes_only / "README.md").write_text("what this was\n")
    fresh = tmp_path / "fresh"
    assert cli_main(["prepare", str(notes_only), "--out", str(fresh)]) == 2
    line = _one_line_error(capsys.readouterr().err, "prepare")
    assert "holds no data files (only notes about the data: README.md)" in line
    assert not fresh.exists()
    # a failure inside the data layer (one document only) removes the --out it created too
    single = tmp_path / "one.txt"
    single.write_text("just one document\n")
    assert cli_main(["prepare", str(single), "--out", str(fresh)]) == 2
    _one_line_error(capsys.readouterr().err, "prepare")
    assert not fresh.exists()


def test_search_workers_get_distinct_names() -> None:
    from shoestring.search.config import SearchConfig

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    code = (
        "from shoestring.search.config import SearchConfig;"
        "c = SearchConfig(join='s');print(c.check().worker_id)"
    )
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout.strip()
    mine = SearchConfig(join="s").check().worker_id
    assert mine and other and mine != other  # two processes on one study: two names
    assert SearchConfig(join="s", worker_id="lab-1").check().worker_id == "lab-1"


def test_compile_auto_decides_from_steady_steps_not_warm_up() -> None:
    from shoestring.train.autocompile import CompilePolicy

    warm_up = [30.0, 4.0]  # first steps pay for allocations and thread pools
    steady = [0.15, 0.14, 0.16]
    policy = CompilePolicy("auto", distributed=False)
    assert not policy.decide(warm_up + steady[:2], 1000, 4, 600.0)  # not enough steady steps
    assert not policy.decide(warm_up + steady, 1000, 5, 600.0)  # 150 s left: stays eager
    assert (
        policy.info["eager_step_seconds"] == 0.15 and "would not pay off" in policy.info["reason"]
    )
    slow = CompilePolicy("auto", distributed=False)
    assert slow.decide([0.1, 0.1, 1.0, 1.1, 0.9], 1000, 5, 600.0)  # steady 1 s/step: compile


def test_a_binary_config_file_is_named_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = tmp_path / "cfg.yaml"
    bad.write_bytes(b"\x80\x81\xfe\xff" * 64)
    rc = cli_main(["train", "--config", str(bad), "--out", str(tmp_path / "out")])
    line = _one_line_error(capsys.readouterr().err, "train")
    assert rc == 2 and str(bad) in line and "not text" in line
