"""Every TRL 1.16 ``loss_type`` and ``importance_sampling_level`` against TRL's own loss code.

TRL's ``GRPOTrainer._compute_loss`` runs here on the same tensors as shoestring's
``per_token_loss`` + ``aggregate_loss`` (the log-probs its model call would return are handed to
it directly), and the losses, their gradients with respect to the log-probs and the clip
fractions must agree. The shoestring side is configured through ``GRPOConfig`` and
``update.loss_variant``, so the config keys are checked too. Skips where TRL is not installed.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from _helpers import char_tokenizer, save_tiny_llama
from shoestring.rl.config import LOSS_TYPES, grpo_config
from shoestring.rl.loss import aggregate_loss, clip_counts, per_token_loss
from shoestring.rl.loss_variants import LossVariant
from shoestring.rl.update import loss_variant

trl = pytest.importorskip("trl")
from trl import GRPOConfig as TrlGRPOConfig  # noqa: E402  (after the skip)
from trl import GRPOTrainer as TrlGRPOTrainer  # noqa: E402

# TRL's config is a TrainingArguments, which warns about a field TRL itself sets
pytestmark = pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated")

#: non-default values of every key a loss reads, so a key that is not honoured changes numbers
LOSS_KEYS: dict[str, Any] = {
    "epsilon": 0.2,
    "epsilon_high": 0.28,
    "sapo_temperature_pos": 0.8,
    "sapo_temperature_neg": 1.3,
    "vespo_k_pos": 1.5,
    "vespo_lambda_pos": 2.5,
    "vespo_k_neg": 2.5,
    "vespo_lambda_neg": 1.5,
    "max_completion_length": 6,
}
#: cispo's epsilon_high caps the ratio itself (ScaleRL's 5.0 would cap nothing in these tensors)
CISPO_EPSILON_HIGH = 1.3
ACCUMULATION = 2  # this micro-batch is one of two: the per-micro-batch divisions must show
STEP_TOKENS = 31.0  # tokens of the whole step (this micro-batch holds 14 of them)


class _OneProcess:
    """The accelerator calls ``_compute_loss`` makes, as with one process."""

    num_processes = 1
    sync_gradients = True

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        return x

    gather_for_metrics = gather

    def reduce(self, x: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        return x


def _tensors() -> dict[str, torch.Tensor]:
    """Off-policy log-probs (ratios on both sides of every clip bound), a reference, advantages
    of both signs (one zero), and completions of different lengths (one empty)."""
    g = torch.Generator().manual_seed(0)
    b, t = 5, 6
    logps = -torch.rand(b, t, generator=g) * 3 - 0.05
    old = logps + torch.randn(b, t, generator=g) * 0.5
    # two sequences far off-policy, so sequence-level ratios cross the clip bounds too
    old[0] -= 0.4
    old[1] += 0.4
    ref = logps + torch.randn(b, t, generator=g) * 0.3
    mask = torch.ones(b, t)
    mask[1, 4:] = 0
    mask[2, 1:] = 0
    mask[3, :] = 0  # an empty completion: every loss must keep it finite
    mask[4, 3:] = 0
    adv = torch.tensor([1.3, -0.7, 0.4, 0.9, 0.0])
    return {"logps": logps, "old": old, "ref": ref, "mask": mask, "adv": adv}


def _keys(loss_type: str, level: str, beta: float) -> dict[str, Any]:
    keys = {**LOSS_KEYS, "loss_type": loss_type, "importance_sampling_level": level, "beta": beta}
    if loss_type == "cispo":
        keys["epsilon_high"] = CISPO_EPSILON_HIGH
    return keys


def _trl_loss(keys: dict[str, Any], x: dict[str, torch.Tensor], tmp: Path) -> tuple:
    """``(loss, d loss / d logps, metrics)`` from TRL's ``_compute_loss`` on ``x``."""
    # TRL multiplies the KL by the ratio by default; shoestring's KL is plain k3 (documented)
    # gradient_accumulation_steps: TRL derives steps_per_generation (dapo's divisor) from it
    args = TrlGRPOConfig(
        output_dir=str(tmp),
        use_cpu=True,
        use_bias_correction_kl=False,
        gradient_accumulation_steps=ACCUMULATION,
        **keys,
    )
    assert args.steps_per_generation == ACCUMULATION  # one generation per optimizer step
    trainer = TrlGRPOTrainer.__new__(TrlGRPOTrainer)  # no model, dataset or accelerator
    logps = x["logps"].clone().requires_grad_(True)
    # what GRPOTrainer.__init__ derives from args, for the attributes _compute_loss reads
    state = {
        "args": args,
        "loss_type": args.loss_type,
        "importance_sampling_level": args.importance_sampling_level,
        "beta": args.beta,
        "epsilon_low": args.epsilon,
        "epsilon_high": args.epsilon if args.epsilon_high is None else args.epsilon_high,
        "max_completion_length": args.max_completion_length,
        "off_policy_mask_threshold": None,
        "top_entropy_quantile": 1.0,
        "use_vllm": False,
        "vllm_importance_sampling_correction": False,
        "_entropy_bonus_enabled": False,
        "aux_loss_enabled": False,
        "current_gradient_accumulation_steps": ACCUMULATION,
        "model": SimpleNamespace(training=True),
        "accelerator": _OneProcess(),
        "_metrics": {"train": defaultdict(list)},
        # the model call: these log-probs, entropies of 1, no auxiliary loss
        "_get_per_token_logps_and_entropies": lambda *a, **k: (logps, torch.ones_like(logps), None),
    }
    for name, value in state.items():
        setattr(trainer, name, value)
    b, t = logps.shape
    inputs = {
        "prompt_ids": torch.zeros(b, 1, dtype=torch.long),
        "prompt_mask": torch.ones(b, 1, dtype=torch.long),
        "completion_ids": torch.zeros(b, t, dtype=torch.long),
        "completion_mask": x["mask"].long(),
        "advantages": x["adv"],
        "old_per_token_logps": x["old"],
        "ref_per_token_logps": x["ref"],
        # dapo/cispo/vespo: tokens of the generation batch, one generation per optimizer step
        "num_items_in_batch": torch.tensor(STEP_TOKENS),
    }
    loss = trainer._compute_loss(None, inputs)
    loss.backward()
    return loss.detach(), logps.grad, trainer._metrics["train"]


def _shoestring_loss(keys: dict[str, Any], x: dict[str, torch.Tensor]) -> tuple:
    """``(loss, d loss / d logps, clip fraction or None)`` from shoestring's loss functions,
    configured as a run would be: ``keys`` through ``GRPOConfig``."""
    cfg = grpo_config(overrides=[f"{k}={json.dumps(v)}" for k, v in keys.items()])
    logps = x["logps"].clone().requires_grad_(True)
    tl, clipped, _ = per_token_loss(
        logps,
        x["old"],
        x["adv"],
        cfg.epsilon_low,
        cfg.upper_epsilon,
        cfg.beta,
        x["ref"],
        mask=x["mask"],
        variant=loss_variant(cfg),
    )
    loss = aggregate_loss(
        tl,
        x["mask"],
        cfg.loss_type,
        max_completion_length=cfg.max_completion_length,
        accumulation_steps=ACCUMULATION,
        step_tokens=STEP_TOKENS,
    )
    loss.backward()
    fraction = None
    if clipped is not None:
        n_clipped, n_counted = clip_counts(clipped, x["mask"])
        fraction = n_clipped / n_counted
    return loss.detach(), logps.grad, fraction


def test_every_trl_loss_type_is_a_choice() -> None:
    """The installed TRL's list of loss types (its help's first sentence) is shoestring's."""
    text = TrlGRPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    supported = text.split("Supported values are", 1)[1].split(". ", 1)[0]
    assert set(re.findall(r"'(\w+)'", supported)) == set(LOSS_TYPES)


@pytest.mark.parametrize("beta", [0.0, 0.04], ids=["beta0", "beta0.04"])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_loss_and_gradient_equal_trls(loss_type: str, level: str, beta: float, tmp_path) -> None:
    x = _tensors()
    keys = _keys(loss_type, level, beta)
    want, want_grad, metrics = _trl_loss(keys, x, tmp_path)
    got, got_grad, clip_fraction = _shoestring_loss(keys, x)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-6, atol=1e-7)
    assert float(want_grad.abs().max()) > 0  # a loss that teaches something: the test can fail
    assert float(want_grad[3].abs().max()) == 0  # the empty completion gets no gradient
    # the clip statistic TRL logs for this loss type, counted the same way
    trl_clip = metrics.get("cispo_clip_ratio") or metrics.get("clip_ratio/region_mean")
    if trl_clip:
        assert clip_fraction == pytest.approx(trl_clip[0], abs=1e-7)
    else:  # sapo and vespo clip nothing; TRL logs no clip ratio for them
        assert clip_fraction is None and loss_type in ("sapo", "vespo")


def test_the_tensors_reach_every_clip_bound() -> None:
    """The comparison above means something only if ratios fall outside the bounds."""
    x = _tensors()
    ratio = torch.exp(x["logps"] - x["old"])[x["mask"].bool()]
    assert (ratio < 1 - LOSS_KEYS["epsilon"]).any() and (
        ratio > 1 + LOSS_KEYS["epsilon_high"]
    ).any()
    assert (ratio > CISPO_EPSILON_HIGH).any()
    for level in ("token", "sequence"):
        for loss_type, eps_high in (
            ("grpo", LOSS_KEYS["epsilon_high"]),
            ("cispo", CISPO_EPSILON_HIGH),
        ):
            variant = LossVariant(loss_type=loss_type, importance_sampling_level=level)
            _, clipped, _ = per_token_loss(
                x["logps"], x["old"], x["adv"], 0.2, eps_high, mask=x["mask"], variant=variant
            )
            assert clipped is not None and clipped.any(), (loss_type, level)


def test_trl_config_with_new_losses_is_honoured_not_refused() -> None:
    cfg = grpo_config(
        base={
            "model_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct",
            "dataset_name": "openai/gsm8k",
            "loss_type": "sapo",
            "importance_sampling_level": "sequence",
            "sapo_temperature_neg": 1.2,
            "vespo_k_pos": 2.5,
        }
    )
    assert (cfg.loss_type, cfg.importance_sampling_level) == ("sapo", "sequence")
    assert (cfg.sapo_temperature_neg, cfg.vespo_k_pos) == (1.2, 2.5)
    text = "\n".join(cfg.notices)
    for key in ("loss_type", "importance_sampling_level", "sapo_temperature_neg", "vespo_k_pos"):
        assert key not in text, f"{key} is a field, not a notice"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("trl-losses") / "tiny-llama", char_tokenizer())


@pytest.mark.parametrize(
    "extra",
    [
        ["loss_type=luspo", "importance_sampling_level=sequence"],
        ["loss_type=cispo", "epsilon_high=1.1"],
        ["loss_type=sapo"],
        ["loss_type=vespo", "beta=0.05"],
        ["loss_type=grpo", "importance_sampling_level=sequence"],
    ],
    ids=["luspo-seq", "cispo", "sapo", "vespo-kl", "gspo"],
)
def test_grpo_run_with_each_new_loss(tiny_model: Path, tmp_path: Path, extra: list[str]) -> None:
    """Two optimizer steps on one generated batch (``num_iterations=2``: the second step is
    off-policy, so ratios differ from 1) through the config and the trainer."""
    from shoestring.rl import grpo

    run = grpo.run(
        grpo_config(
            overrides=[
                f"model_name_or_path={tiny_model}",
                "dataset=synthetic:1",
                "dataset_size=16",
                "num_generations=4",
                "per_device_train_batch_size=4",
                "gradient_accumulation_steps=2",
                "max_completion_length=8",
                "max_steps=2",
                "num_iterations=2",
                "learning_rate=1e-2",
                "threads=1",
                "dtype=fp32",
                "device=cpu",
                "log_completions_steps=0",
                "quiet=true",
                f"output_dir={tmp_path / 'run'}",
                *extra,
            ]
        )
    )
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    assert json.loads((run / "config.json").read_text())["loss_type"] == extra[0].split("=")[1]
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "loss" in r]
    assert len(steps) == 2 and all(isinstance(r["loss"], float) for r in steps)
    soft = extra[0] in ("loss_type=sapo", "loss_type=vespo")
    assert all((r["clip_fraction"] is None) == soft for r in steps)
