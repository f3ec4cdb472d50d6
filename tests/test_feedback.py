"""Fast feedback (issue 18, items 4 and 5): config errors come before any heavy import, and a
typo gets the key that was meant.

The speed promise ("a bad --set fails in under 2 s") is tested by what makes it slow, not by a
clock: ``python -X importtime`` lists every module a run imported, and a config error reported
without importing torch or transformers is a sub-second error on any host.
"""

from __future__ import annotations

import subprocess
import sys

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
    ],
)
def test_bad_set_fails_before_heavy_imports(argv: list[str], expected: str) -> None:
    res, mods = _imported(argv)
    messages = "\n".join(ln for ln in res.stderr.splitlines() if not ln.startswith("import time"))
    assert res.returncode == 2, messages
    assert expected in messages and "Traceback" not in messages
    assert not mods & set(HEAVY), f"{argv} imported {mods & set(HEAVY)} before the config error"


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
