"""TRL's reward contract, one test per item: prompts/completions/completion_ids, every dataset
column but ``prompt`` as keywords, ``trainer_state``, ``log_extra``/``log_metric``,
conversational completions under a chat protocol, async rewards awaited, ``None`` excluded as
TRL excludes it; TRL's own ``trl.rewards`` functions run unchanged (skipped without trl)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from _helpers import char_tokenizer, save_tiny_llama
from shoestring.rl.config import grpo_config
from shoestring.rl.loss import compute_advantages
from shoestring.rl.reward_contract import ContractReward, RewardContext
from shoestring.rl.rewards import builtin_rewards, load_reward, score
from shoestring.rl.trainer import GRPOTrainer
from shoestring.scoring.protocols import get_protocol

PROMPTS = ["Question: 1+1?\nAnswer:", "Question: 1+1?\nAnswer:"]
COMPLETIONS = [" 2\n#### 2", " 3\n#### 3"]
IDS = [[5, 6], [7, 8]]
COLUMNS = {"question": ["1+1?", "1+1?"], "answer": ["#### 2", "#### 2"], "solution": ["2", "2"]}


def _call(fn, context: RewardContext | None = None, **columns) -> list:
    wrapped = ContractReward(fn, context or RewardContext(10, 1.0), "fn")
    return score([wrapped], PROMPTS, COMPLETIONS, IDS, columns or COLUMNS)[0]


def test_prompts_completions_and_ids() -> None:
    seen = {}

    def reward(prompts, completions, completion_ids, **kwargs):
        seen.update(prompts=prompts, completions=completions, ids=completion_ids)
        return [1.0, 0.0]

    assert _call(reward) == [1.0, 0.0]
    assert seen == {"prompts": PROMPTS, "completions": COMPLETIONS, "ids": IDS}


def test_every_column_but_prompt_is_a_keyword() -> None:
    def reward(completions, solution, question, **kwargs):  # TRL style: columns by name
        assert "prompt" not in kwargs and kwargs["answer"] == ["#### 2", "#### 2"]
        return [float(c.strip().endswith(s)) for c, s in zip(completions, solution, strict=True)]

    assert _call(reward, **COLUMNS, prompt=["p", "p"]) == [1.0, 0.0]


def test_trainer_state_is_transformers_trainer_state() -> None:
    context = RewardContext(max_steps=20, num_train_epochs=2.0, epochs_per_batch=0.25)
    context.begin_step(global_step=6, gen_index=6)

    def reward(completions, trainer_state, **kwargs):  # TRL's progress-dependent shaping
        return [trainer_state.global_step / trainer_state.max_steps] * len(completions)

    assert _call(reward, context) == [0.3, 0.3]
    assert context.state.epoch == 1.5 and type(context.state).__name__ == "TrainerState"


def test_log_extra_and_log_metric_reach_the_step_record() -> None:
    context = RewardContext(10, 1.0)

    def reward(completions, log_extra, log_metric, **kwargs):
        log_extra("length", [len(c) for c in completions])
        log_metric("mean_length", sum(map(len, completions)) / len(completions))
        log_metric("mean_length", 0.0)
        return [0.0] * len(completions)

    _call(reward, context)
    stats = {"_samples": [{"completion": c} for c in COMPLETIONS]}
    context.drain_into(stats)
    assert stats["reward_metrics"] == {"mean_length": 4.5}  # averaged over the two calls
    assert [s["extra"] for s in stats["_samples"]] == [{"length": 9}, {"length": 9}]
    assert context.drain() == ({}, {})  # drained: the next step starts empty


def test_conversational_completions_under_a_chat_protocol() -> None:
    messages = [{"role": "user", "content": "1+1?"}]
    context = RewardContext(10, 1.0, messages={PROMPTS[0]: messages})

    def reward(prompts, completions, **kwargs):
        assert prompts == [messages, messages]
        assert completions[0] == [{"role": "assistant", "content": COMPLETIONS[0]}]
        return [1.0 if "2" in c[0]["content"] else 0.0 for c in completions]

    assert _call(reward, context) == [1.0, 0.0]
    # the built-in rewards read either form
    correctness = builtin_rewards(get_protocol("qa"))["correctness"]
    assert _call(correctness, context) == [1.0, 0.0]


def test_async_rewards_are_awaited() -> None:
    async def reward(completions, **kwargs):  # e.g. an LLM judge behind an HTTP call
        return [0.5] * len(completions)

    assert _call(reward) == [0.5, 0.5]


def test_none_is_excluded_as_trl_excludes_it() -> None:
    def partial(completions, **kwargs):  # scores only the first completion of each pair
        return [1.0 if k % 2 == 0 else None for k in range(len(completions))]

    def never(completions, **kwargs):
        return [None] * len(completions)

    per_func = torch.tensor(
        score(
            [ContractReward(f, RewardContext(1, 1.0), f.__name__) for f in (partial, never)],
            PROMPTS,
            COMPLETIONS,
            IDS,
            COLUMNS,
        )
    ).T
    assert torch.isnan(per_func[1]).all()
    # a group of 3: scored 1.0, unscorable, scored 0.0 -> mean over the scored two only
    rewards = torch.tensor([[1.0, float("nan")], [float("nan")] * 2, [0.0, float("nan")]])
    adv, total, _ = compute_advantages(rewards, torch.tensor([1.0, 1.0]), 3, "none")
    assert adv.tolist() == [0.5, 0.0, -0.5] and torch.isnan(total[1])


# ----------------------------------------------------------------------------- TRL's own rewards


def test_trl_rewards_run_unchanged() -> None:
    pytest.importorskip("trl")
    protocol = get_protocol("qa")
    think = load_reward("trl:think_format_reward", protocol)
    context = RewardContext(10, 1.0, messages={PROMPTS[0]: [{"role": "user", "content": "q"}]})
    out = score(
        [ContractReward(think, context, "think")],
        PROMPTS,
        ["<think>\nadd\n</think>\n2", "2"],
        IDS,
        COLUMNS,
    )[0]
    assert out == [1.0, 0.0]
    overlong = load_reward("trl:get_soft_overlong_punishment", protocol)
    assert _call(overlong) == [0.0, 0.0]  # two tokens are far from 1280 - 256
    pytest.importorskip("math_verify")
    accuracy = load_reward("trl:accuracy_reward", protocol)
    assert accuracy is load_reward("trl.rewards:accuracy_reward", protocol)
    boxed = ["so \\boxed{2}", "so \\boxed{3}"]
    assert score([ContractReward(accuracy, context, "acc")], PROMPTS, boxed, IDS, COLUMNS)[0] == [
        1.0,
        0.0,
    ]


# ----------------------------------------------------------------------------- in a real run


def test_contract_in_a_grpo_run(tmp_path: Path, monkeypatch) -> None:
    model = save_tiny_llama(tmp_path / "tiny", char_tokenizer())
    (tmp_path / "contract_rewards.py").write_text(
        "def progress(prompts, completions, completion_ids, trainer_state, solution, level,\n"
        "             log_metric, log_extra, **kwargs):\n"
        "    assert len(solution) == len(completions) == len(completion_ids)\n"
        "    log_metric('step_seen', trainer_state.global_step)\n"
        "    log_extra('solution', solution)\n"
        "    return [None if k % 4 == 3 else float(trainer_state.global_step)\n"
        "            for k in range(len(completions))]\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("contract_rewards", None)
    cfg = grpo_config(
        overrides=[
            f"model_name_or_path={model}",
            "dataset=synthetic:1",
            "dataset_size=16",
            "num_generations=4",
            "per_device_train_batch_size=8",
            "max_completion_length=6",
            "max_steps=2",
            "threads=1",
            "dtype=fp32",
            "device=cpu",
            "log_completions_steps=1",
            'rewards=["correctness","contract_rewards:progress"]',
        ]
    )
    GRPOTrainer(cfg, tmp_path / "run", echo=False, progress=False).run()
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "reward_mean" in r]
    assert [r["reward_metrics"]["step_seen"] for r in steps] == [0.0, 1.0]
    samples = [r for r in records if r.get("event") == "samples"]
    assert samples and all("solution" in s["extra"] for s in samples[0]["samples"])
