"""Fast feedback (issue 18, items 4 and 5): config errors come before any heavy import, and a
typo gets the key that was meant.

The speed promise ("a bad --set fails in under 2 s") is tested by what makes it slow, not by a
clock: ``python -X importtime`` lists every module a run imported, and a config error reported
without importing torch or transformers is a sub-second error on any host.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shoestring.config import ConfigError, edit_distance, nearest_key
from shoestring.rl.config import grpo_config
from shoestring.run_config import build_run_config

HEAVY = ("torch", "transformers", "optuna", "matplotlib")


def _imported(argv: list[str]) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``python -X importtime -m shoestring ARGV``: the result and the top-level packages
    it imported."""
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "shoestring", *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    mods = {
        line.rsplit("|", 1)[-1].strip().split(".")[0]
        for line in res.stderr.splitlines()
        if line.startswith("import time:")
    }
    return res, mods


def test_version_imports_no_torch() -> None:
    res, mods = _imported(["--version"])
    assert res.returncode == 0 and "shoestring" in res.stdout
    assert not mods & set(HEAVY), mods & set(HEAVY)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "--set", "train.lr=-1"], "train.lr=-1.0 is out of range"),
        (["train", "--set", "train.learnign_rate=1"], "did you mean 'train.lr'"),
        (["analyze", "--set", "train.lr=-1"], "train.lr=-1.0 is out of range"),
        (
            ["search", "--sizes", "tiny", "--variants", "baseline", "--set", "train.lr=-1"],
            "train.lr=-1.0 is out of range",
        ),
        (["grpo", "--set", "learnign_rate=1"], "did you mean 'learning_rate'"),
        (
            ["progressive", "--stages", "synthetic_levels", "--set", "threshold=-1"],
            "threshold=-1.0 is out of range",
        ),
        (["bench", "m", "--data", "x.jsonl", "--subset-seed", "1"], "give --limit N too"),
    ],
)
def test_bad_set_fails_before_heavy_imports(argv: list[str], expected: str) -> None:
    res, mods = _imported(argv)
    messages = "\n".join(ln for ln in res.stderr.splitlines() if not ln.startswith("import time"))
    assert res.returncode == 2, messages
    assert expected in messages and "Traceback" not in messages
    assert not mods & set(HEAVY), f"{argv} imported {mods & set(HEAVY)} before the config error"


@pytest.mark.parametrize("command", ["train", "grpo", "progressive"])
def test_help_config_imports_no_torch(command: str) -> None:
    res, mods = _imported([command, "--help-config"])
    assert res.returncode == 0 and "dtype" in res.stdout
    assert not mods & set(HEAVY), mods & set(HEAVY)


def test_edit_distance_counts_a_swap_as_one() -> None:
    assert edit_distance("learnign", "learning") == 1
    assert edit_distance("", "abc") == 3
    assert edit_distance("kitten", "sitting") == 3


def test_misspelt_alias_suggests_the_real_key() -> None:
    with pytest.raises(ConfigError, match=r"'train.learnign_rate'; did you mean 'train.lr'\?"):
        build_run_config(overrides=["train.learnign_rate=1"])
    # an alias spelt right, a leaf without its section, an alias of another library
    keys = ["train.lr", "train.min_lr_ratio", "train.batch_size", "model.d_model"]
    assert nearest_key("train.learning_rate", keys) == "train.lr"
    assert nearest_key("batch_size", keys) == "train.batch_size"
    assert nearest_key("model.hidden_size", keys) == "model.d_model"
    assert nearest_key("train.completely_unrelated", keys) is None


def test_grpo_typo_suggests_trl_name() -> None:
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
        grpo_config(overrides=["lr=1e-5"])
    with pytest.raises(ConfigError, match="did you mean 'num_generations'"):
        grpo_config(overrides=["num_generation=4"])


# ----------------------------------------------------------------------------- item 11


def test_help_config_states_dtype_auto_truthfully() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "shoestring", "train", "--help-config"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    (line,) = [ln for ln in res.stdout.splitlines() if ln.startswith("train.dtype")]
    assert "AVX512-BF16 or AMX" in line and "CUDA" in line  # bf16 on a CPU that has it


def test_progress_off_a_terminal_is_plain_periodic_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from tqdm import tqdm

    from shoestring.util.progress import progress_bar

    monkeypatch.setenv("SHOESTRING_PROGRESS_SECONDS", "3600")
    err = io.StringIO()  # not a terminal
    bar = progress_bar(total=500, desc="train", unit="step", file=err, leave=False)
    for i in range(500):
        bar.update(1)
        bar.set_postfix(loss=1.0 / (i + 1))  # a redraw request on every step
        if i == 250:
            tqdm.write("warning: something happened", file=err)
    bar.close()
    lines = err.getvalue().splitlines()
    assert "\r" not in err.getvalue()
    # a start line and a final line, not one frame per step; the warning on its own line
    assert len(lines) == 3 and lines[0].startswith("train:   0% 0/500")
    assert lines[1] == "warning: something happened"
    assert lines[2].startswith("train: 100% 500/500") and "loss=0.002" in lines[2]


def test_redirected_prepare_writes_no_carriage_returns(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "shoestring", "prepare", "--synthetic", "300"]
        + ["--vocab-size", "300", "--out", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "\r" not in res.stderr and "encode: 100% 300/300" in res.stderr


def test_quiet_train_prints_only_the_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from shoestring.cli import main
    from shoestring.data import text

    text.run(None, tmp_path / "data", vocab_size=300, synthetic=200, quiet=True)
    tiny = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.d_ff=64"]
    tiny += ["train.seq_len=32", "train.batch_size=2", "train.eval_every=2", "train.threads=1"]
    tiny += ["train.eval_batches=1", "train.dtype=fp32", "train.warmup_steps=1"]
    argv = ["train", "--data", str(tmp_path / "data"), "--steps", "2", "--out", str(tmp_path)]
    argv += [f"--set={o}" for o in tiny]
    capsys.readouterr()
    assert main([*argv, "--name", "quiet", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "quiet") and err == ""
    log = (tmp_path / "quiet" / "log.txt").read_text()
    assert "finished: 2 steps, val loss " in log  # log.txt keeps every line
    assert main([*argv, "--name", "loud"]) == 0
    out, err = capsys.readouterr()
    assert "\r" not in err and "step 2: train loss" in err
    # the final line: losses with 4 decimals, not raw floats
    (final,) = [ln for ln in err.splitlines() if ln.startswith("finished:")]
    assert re.fullmatch(r"finished: 2 steps, val loss \d+\.\d{4} -> \d+\.\d{4}; run .*", final)


def test_gsm8k_is_found_under_the_data_root_not_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shoestring.data.root import data_root_candidates
    from shoestring.errors import UserError
    from shoestring.rl.data import load_task

    root = tmp_path / "root"
    (root / "gsm8k").mkdir(parents=True)
    row = {"question": "What is 2 plus 3?", "answer": "2 + 3 = 5\n#### 5"}
    (root / "gsm8k" / "train.jsonl").write_text(json.dumps(row) + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("SHOESTRING_DATA", str(root))
    assert load_task("gsm8k", "train")[0]["question"] == "What is 2 plus 3?"
    monkeypatch.delenv("SHOESTRING_DATA")
    monkeypatch.setenv("SHOESTRING_SHARED", str(tmp_path / "no-such-shared"))
    checkout = data_root_candidates()[-1][0]
    if (checkout / "gsm8k" / "train.jsonl").is_file():
        assert len(load_task("gsm8k", "train", n=3)) == 3  # found from the package, not cwd
    else:
        with pytest.raises(UserError, match="set SHOESTRING_DATA"):
            load_task("gsm8k", "train")
