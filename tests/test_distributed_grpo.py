"""``grpo`` under torchrun: two gloo ranks on CPU take the step one process takes.

Each rank samples its share of a step's prompts (every group whole, each prompt on its own
sampling stream), the shares are gathered so every rank holds the whole rollout, each rank
back-propagates its share of the micro-batches with the whole step's denominators, and the
gradients are summed. So per step the loss, gradient norm and rewards must equal one
process's (the target: 1e-4 relative), and the trained weights after 3 steps too - for
``grpo``, ``dr_grpo`` and ``dapo``, LoRA and a full fine-tune, with a reference model (beta),
a reused batch (num_iterations 2, old log-probs) and the held-out evaluation sharded.
``progressive`` on top: two ranks validate, train and decide every stage as one process does.

All configurations run in one torchrun launch (a worker calls the CLI once per
configuration) to pay the start-up of two ranks once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from _helpers import char_tokenizer, save_tiny_llama
from shoestring.cli import main as cli_main
from test_distributed_launch import LAUNCH_TIMEOUT_S, free_port, run_launchers, torchrun_command

#: the target: per-step loss and grad norm within this relative difference of one process
REL = 1e-4
#: (name, extra settings): the loss types, LoRA and full, reference and reused batches
CASES = [
    ("grpo-full-beta", ["loss_type=grpo", "beta=0.04", "scale_rewards=batch"]),
    # every completion of the step in the samples record (rank 1's share too)
    (
        "dr_grpo-lora",
        ["loss_type=dr_grpo", "lora_rank=4", "lora_alpha=8", "num_completions_to_print=12"],
    ),
    ("dapo-lora-reuse", ["loss_type=dapo", "lora_rank=4", "lora_alpha=8", "num_iterations=2"]),
    ("dapo-full-eval", ["loss_type=dapo", "eval_problems=6"]),
]

# joins the group once: a command launched inside a group it did not join stays in it (gloo
# cannot reliably join again through the same launcher's store)
WORKER = """
import json, sys
from shoestring.cli import main
from shoestring.distributed import init_distributed, leave_group
sys.path.insert(0, sys.argv[2])  # the folder of the test's reward module
ranks = init_distributed("cpu")
for args in json.loads(open(sys.argv[1]).read()):
    code = main(args)
    if code:
        sys.exit(code)
leave_group(ranks)
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("grpo-ranks") / "tiny-llama", char_tokenizer())


#: a reward that differs between a group's completions (a random model never answers right,
#: so correctness alone would give every completion 0, no advantage and no gradient)
REWARDS = """
import os

def letters(prompts, completions, **kwargs):
    if "log_extra" in kwargs:  # TRL's contract: a column for the logged samples
        kwargs["log_extra"]("chars", [len(c) for c in completions])
    return [sum(ch in "aeiou" for ch in c) / (1 + len(c)) for c in completions]

CALLS = [0]

def letters_or_die(prompts, completions, **kwargs):
    # rank 1 dies (as a killed process does: no clean-up) at its DIE_AT-th scoring
    CALLS[0] += 1
    if os.environ.get("RANK") == "1" and str(CALLS[0]) == os.environ.get("DIE_AT"):
        os._exit(9)
    return letters(prompts, completions)
"""
REWARD = "rank_rewards:letters"


def _args(model: Path, out: Path, extra: list[str]) -> list[str]:
    sets = [
        f"model_name_or_path={model}",
        "dataset=synthetic:1",
        "dataset_size=40",
        "num_generations=4",
        "per_device_train_batch_size=4",
        "gradient_accumulation_steps=3",  # 3 prompts, 3 micro-batches: ranks get 2 and 1
        "max_completion_length=10",
        "max_steps=3",
        "learning_rate=5e-3",
        "temperature=1.0",
        "threads=1",
        "dtype=fp32",
        "device=cpu",
        f"output_dir={out}",
        f'rewards=["{REWARD}", "correctness"]',
        *extra,
    ]
    return ["grpo", "-q", *(x for s in sets for x in ("--set", s))]


def _stages_file(model: Path, base: Path) -> Path:
    """A two-stage curriculum on the tiny model (validation split over the ranks too)."""
    path = base / "stages.yaml"
    path.write_text(
        "\n".join(
            [
                f"model: {model}",
                "validation: {dataset: 'synthetic:1', n: 6, max_new_tokens: 8, device: cpu,"
                " dtype: fp32}",
                "grpo:",
                "  num_generations: 4",
                "  per_device_train_batch_size: 4",
                "  gradient_accumulation_steps: 2",
                "  max_completion_length: 8",
                "  max_steps: 2",
                "  dataset_size: 16",
                "  threads: 1",
                "  dtype: fp32",
                "  device: cpu",
                "  temperature: 1.0",
                "  learning_rate: 5.0e-3",
                f"  rewards: ['{REWARD}']",
                "stages:",
                "  - {name: one, dataset: 'synthetic:1'}",
                "  - {name: two, dataset: 'synthetic:2', lora_rank: 4}",
            ]
        )
    )
    return path


def _progressive_args(stages: Path, out: Path, name: str) -> list[str]:
    return ["progressive", "--stages", str(stages), "--out", str(out), "--name", name, "-q"]


def _steps(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


def _samples(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    records = [r for r in map(json.loads, lines) if r.get("event") == "samples"]
    return [s for r in records for s in r["samples"]]


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= REL * max(abs(a), abs(b)) + 1e-7


@pytest.fixture(scope="module")
def runs(model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Every case as one process (in this process) and as two ranks (one torchrun launch)."""
    base = tmp_path_factory.mktemp("grpo-runs")
    (base / "rank_rewards.py").write_text(REWARDS)
    sys.path.insert(0, str(base))
    try:
        for name, extra in CASES:
            assert cli_main(_args(model, base / f"one-{name}", extra)) == 0
        stages = _stages_file(model, base)
        assert cli_main(_progressive_args(stages, base, "one-progressive")) == 0
    finally:
        sys.path.remove(str(base))
    batch = base / "cases.json"
    launches = [_args(model, base / f"two-{n}", e) for n, e in CASES]
    launches.append(_progressive_args(stages, base, "two-progressive"))
    batch.write_text(json.dumps(launches))
    worker = base / "worker.py"
    worker.write_text(WORKER)
    cmd = torchrun_command("--nproc_per_node=2", f"--master_port={free_port()}", str(worker))
    log = base / "launch.log"
    code = run_launchers([[*cmd, str(batch), str(base)]], [log], timeout=LAUNCH_TIMEOUT_S * 2)[0]
    assert code == 0, log.read_text()[-3000:]
    return {
        n: (base / f"one-{n}", base / f"two-{n}") for n in [*(n for n, _ in CASES), "progressive"]
    }


@pytest.mark.parametrize("name", [n for n, _ in CASES])
def test_two_ranks_take_the_one_process_step(runs: dict[str, tuple[Path, Path]], name: str) -> None:
    one, two = runs[name]
    a, b = _steps(one), _steps(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    # the rewards vary within groups, so the steps have a gradient to get wrong
    assert all(r["frac_zero_std"] < 1.0 and r["grad_norm"] > 0 for r in a), a
    for ra, rb in zip(a, b, strict=True):
        # the same samples (streams per prompt), so the same rewards, exactly
        assert ra["reward_mean"] == rb["reward_mean"], (ra, rb)
        assert ra["completion_length_mean"] == rb["completion_length_mean"]
        for key in ("loss", "grad_norm", "entropy"):
            assert _close(ra[key], rb[key]), (key, ra[key], rb[key])
        if ra.get("kl") is not None:
            assert _close(ra["kl"], rb["kl"]), (ra["kl"], rb["kl"])
    # the logged samples, with what the reward logged (log_extra) from every rank's share
    samples_a, samples_b = _samples(one), _samples(two)
    assert samples_a == samples_b
    assert all("chars" in x["extra"] for x in samples_a)
    # the steps really moved the weights, and the same way
    wa = load_file(str(one / "model" / "model.safetensors"))
    wb = load_file(str(two / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6, msg=k)


def test_two_ranks_write_one_run_directory(runs: dict[str, tuple[Path, Path]]) -> None:
    one, two = runs["dapo-full-eval"]
    summary = json.loads((two / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["world_size"] == 2
    assert json.loads((one / "summary.json").read_text())["world_size"] == 1
    # one directory: nothing written next to it by the other rank
    assert sorted(p.name for p in two.parent.iterdir() if p.name.startswith("two-")) == sorted(
        f"two-{n}" for n in runs
    )
    # the sharded held-out evaluation: the same verdicts in the same order
    for tag in ("before", "after"):
        va = (one / f"eval_{tag}.jsonl").read_text().splitlines()
        vb = (two / f"eval_{tag}.jsonl").read_text().splitlines()
        assert [json.loads(x)["correct"] for x in va] == [json.loads(x)["correct"] for x in vb]
        assert len(va) == 6
    assert summary["eval_after"]["n"] == 6
    # config.json is the one-process config but for the directory it names
    ca = json.loads((one / "config.json").read_text())
    cb = json.loads((two / "config.json").read_text())
    assert {k: v for k, v in ca.items() if k != "output_dir"} == {
        k: v for k, v in cb.items() if k != "output_dir"
    }


def test_two_ranks_run_the_curriculum_one_process_runs(
    runs: dict[str, tuple[Path, Path]],
) -> None:
    one, two = runs["progressive"]
    sa = json.loads((one / "summary.json").read_text())
    sb = json.loads((two / "summary.json").read_text())
    assert sb["status"] == "finished" and sb["world_size"] == 2
    assert sa["base_eval"]["correct"] == sb["base_eval"]["correct"]
    # the same stages, the same verdicts per problem, the same decisions
    assert [r["label"] for r in sa["stages"]] == [r["label"] for r in sb["stages"]]
    assert [r["status"] for r in sa["stages"]] == [r["status"] for r in sb["stages"]]
    for label in ["00-base", *(r["label"] for r in sa["stages"])]:
        ea = json.loads((one / "evals" / f"{label}.json").read_text())
        eb = json.loads((two / "evals" / f"{label}.json").read_text())
        assert ea["per_problem"] == eb["per_problem"], label
    # each stage's GRPO run is one directory with world_size 2 and the one-process losses
    for r in sa["stages"]:
        a = _steps(one / "stages" / r["label"])
        b = _steps(two / "stages" / r["label"])
        assert [x["reward_mean"] for x in a] == [x["reward_mean"] for x in b]
        assert all(_close(x["loss"], y["loss"]) for x, y in zip(a, b, strict=True))
        stage_summary = json.loads((two / "stages" / r["label"] / "summary.json").read_text())
        assert stage_summary["world_size"] == 2


def test_a_killed_rank_fails_grpo_cleanly_and_resume_finishes_the_run(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rank 1 dies while scoring step 3: the job fails (no hang) with the run directory
    marked, its step-2 checkpoint intact; ``--resume`` (here in one process: any number of
    ranks) finishes it with the steps an uninterrupted run takes."""
    (tmp_path / "rank_rewards.py").write_text(REWARDS)
    extra = ["loss_type=dapo", "lora_rank=4", "max_steps=4", "save_steps=1"]
    extra.append('rewards=["rank_rewards:letters_or_die"]')
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli_main(_args(model, tmp_path / "whole", extra)) == 0
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    batch = tmp_path / "cases.json"
    batch.write_text(json.dumps([_args(model, tmp_path / "cut", extra)]))
    monkeypatch.setenv("DIE_AT", "3")
    cmd = torchrun_command("--nproc_per_node=2", f"--master_port={free_port()}", str(worker))
    log = tmp_path / "launch.log"
    assert run_launchers([[*cmd, str(batch), str(tmp_path)]], [log])[0] != 0
    monkeypatch.delenv("DIE_AT")
    cut = tmp_path / "cut"
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["status"] in ("failed", "interrupted"), summary
    assert summary["world_size"] == 2
    assert (cut / "checkpoints" / "step_2").is_dir()
    assert [r["step"] for r in _steps(cut)] == [1, 2]
    assert cli_main(["grpo", "-q", "--resume", str(cut)]) == 0
    whole, resumed = _steps(tmp_path / "whole"), _steps(cut)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for ra, rb in zip(whole, resumed, strict=True):
        assert ra["reward_mean"] == rb["reward_mean"]
        assert _close(ra["loss"], rb["loss"]) and _close(ra["grad_norm"], rb["grad_norm"])
    assert json.loads((cut / "summary.json").read_text())["status"] == "finished"


def test_a_curriculum_cut_in_one_process_resumes_on_two_ranks(
    runs: dict[str, tuple[Path, Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C during stage 2's second step (after its step-1 checkpoint) in one process;
    ``--resume`` on two ranks: rank 0 reads ``state.json`` and what the attempt left, both
    ranks resume its GRPO run from the checkpoint, and the curriculum ends as the
    uninterrupted one did."""
    from shoestring.rl.trainer import GRPOTrainer

    one, _ = runs["progressive"]
    base = one.parent
    stages = tmp_path / "stages.yaml"
    stages.write_text((base / "stages.yaml").read_text())
    real_step = GRPOTrainer.train_step

    def interrupted_once(self: GRPOTrainer) -> Any:
        if self.run_path.name == "02-two" and self.step == 1:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.syspath_prepend(str(base))  # the reward module
    monkeypatch.setattr(GRPOTrainer, "train_step", interrupted_once)
    args = _progressive_args(stages, tmp_path, "cut")
    assert cli_main([*args, "--set", "grpo.save_steps=1"]) == 130
    monkeypatch.setattr(GRPOTrainer, "train_step", real_step)
    cut = tmp_path / "cut"
    assert (cut / "stages" / "02-two" / "checkpoints" / "step_1").is_dir()
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    batch = tmp_path / "cases.json"
    batch.write_text(json.dumps([["progressive", "--resume", str(cut), "-q"]]))
    cmd = torchrun_command("--nproc_per_node=2", f"--master_port={free_port()}", str(worker))
    log = tmp_path / "launch.log"
    assert run_launchers([[*cmd, str(batch), str(base)]], [log])[0] == 0, log.read_text()[-3000:]
    sa = json.loads((one / "summary.json").read_text())
    sb = json.loads((cut / "summary.json").read_text())
    assert sb["status"] == "finished" and sb["world_size"] == 2
    assert [r["status"] for r in sa["stages"]] == [r["status"] for r in sb["stages"]]
    for r in sa["stages"]:
        ea = json.loads((one / "evals" / f"{r['label']}.json").read_text())
        eb = json.loads((cut / "evals" / f"{r['label']}.json").read_text())
        assert ea["per_problem"] == eb["per_problem"], r["label"]
    resumed = _steps(cut / "stages" / "02-two")
    assert [x["step"] for x in resumed] == [1, 2]
    whole = _steps(one / "stages" / "02-two")
    assert [x["reward_mean"] for x in whole] == [x["reward_mean"] for x in resumed]
