"""GRPO: loss maths against hand-computed values, the reference-model rules, config layering,
data splits and exact resume - on tiny models, single-threaded."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from _helpers import char_tokenizer
from shoestring.config import ConfigError
from shoestring.rl import grpo
from shoestring.rl import rollout as G
from shoestring.rl.config import grpo_config, list_grpo_presets, load_grpo_preset, resume_config
from shoestring.rl.data import load_task
from shoestring.rl.logprobs import completion_logps, grouped_completion_logps
from shoestring.rl.loss import aggregate_loss, compute_advantages, per_token_loss
from shoestring.rl.trainer import GRPOTrainer

# ----------------------------------------------------------------------------- fixtures


def _tokenizer() -> PreTrainedTokenizerFast:
    return char_tokenizer()


def _llama(vocab: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(cfg)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("grpo") / "tiny-llama"
    tok = _tokenizer()
    _llama(len(tok)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _cfg(model: Path, *extra: str) -> list[str]:
    return [
        f"model_name_or_path={model}",
        "dataset=synthetic:1",
        "dataset_size=40",
        "num_generations=4",
        "per_device_train_batch_size=4",
        "gradient_accumulation_steps=2",
        "max_completion_length=12",
        "max_steps=4",
        "learning_rate=1e-3",
        "temperature=1.0",
        "threads=1",
        "dtype=fp32",
        "device=cpu",
        "log_completions_steps=2",
        *extra,
    ]


# ----------------------------------------------------------------------------- advantages


REWARDS = torch.tensor([[1.0], [0.0], [0.0], [2.0], [2.0], [2.0]])  # two groups of three


def test_scale_rewards_group_batch_none_hand_computed() -> None:
    w = torch.tensor([1.0])
    adv, rewards, zero = compute_advantages(REWARDS, w, 3, "group")
    # group 1: mean 1/3, sample std sqrt(1/3); group 2: constant
    s1 = math.sqrt(1 / 3)
    expected = [2 / 3 / (s1 + 1e-4), -1 / 3 / (s1 + 1e-4), -1 / 3 / (s1 + 1e-4), 0, 0, 0]
    assert adv.tolist() == pytest.approx(expected, rel=1e-5)
    assert zero.tolist() == [False, False, False, True, True, True]
    adv, _, _ = compute_advantages(REWARDS, w, 3, "none")
    assert adv.tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3, 0, 0, 0], rel=1e-6)
    adv, _, _ = compute_advantages(REWARDS, w, 3, "batch")
    # batch sample std of [1,0,0,2,2,2]: mean 7/6
    xs = [1, 0, 0, 2, 2, 2]
    sd = math.sqrt(sum((x - 7 / 6) ** 2 for x in xs) / 5)
    assert adv.tolist() == pytest.approx(
        [(2 / 3) / (sd + 1e-4), (-1 / 3) / (sd + 1e-4), (-1 / 3) / (sd + 1e-4), 0, 0, 0],
        rel=1e-5,
    )


def test_weights_and_unscorable_rewards() -> None:
    per_func = torch.tensor([[1.0, 1.0], [0.0, 1.0], [float("nan"), float("nan")], [1.0, 0.0]])
    adv, rewards, _ = compute_advantages(per_func, torch.tensor([1.0, 0.5]), 2, "none")
    assert rewards[0] == 1.5 and rewards[1] == 0.5 and torch.isnan(rewards[2])
    assert adv.tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0])  # NaN -> 0, alone in its group


# ----------------------------------------------------------------------------- loss types


ADV = torch.tensor([1.0, -0.5])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


@pytest.mark.parametrize(
    ("loss_type", "kw", "expected"),
    [
        # on-policy: ratio 1, token loss = -advantage: [[-1,-1,(-1)], [0.5,(0.5),(0.5)]]
        ("grpo", {}, (-1 + 0.5) / 2),  # mean of per-sequence token means
        ("bnpo", {}, (-2 + 0.5) / 3),  # token mean over the micro-batch
        ("dr_grpo", {}, (-2 + 0.5) / (2 * 4)),  # / (sequences * max_completion_length)
        ("dapo", {"step_tokens": 6.0}, (-2 + 0.5) / 6),  # / tokens of the whole step
    ],
)
def test_loss_types_hand_computed(loss_type: str, kw: dict, expected: float) -> None:
    logps = torch.zeros(2, 3)
    tl, clipped, kl = per_token_loss(logps, logps, ADV, 0.2, 0.2)
    assert kl is None and not clipped.any()
    args = {"max_completion_length": 4, "accumulation_steps": 1, "step_tokens": 3.0, **kw}
    loss = aggregate_loss(tl, MASK, loss_type, **args)
    assert float(loss) == pytest.approx(expected)
    if loss_type != "dapo":  # accumulation divides the three per-micro-batch losses
        args["accumulation_steps"] = 2
        assert float(aggregate_loss(tl, MASK, loss_type, **args)) == pytest.approx(expected / 2)


def test_clipping_epsilon_high_and_kl() -> None:
    old = torch.zeros(2, 1)
    logps = torch.tensor([[math.log(1.5)], [math.log(0.5)]])
    tl, clipped, _ = per_token_loss(logps, old, torch.tensor([1.0, -1.0]), 0.2, 0.28)
    # positive advantage: ratio 1.5 clipped at 1.28; negative: min(-0.5, -0.8) = -0.8
    assert tl[:, 0].tolist() == pytest.approx([-1.28, 0.8])
    assert clipped.tolist() == [[True], [True]]
    ref = logps + math.log(2.0)
    tl2, _, kl = per_token_loss(logps, logps, torch.tensor([0.0, 0.0]), 0.2, 0.2, 0.1, ref)
    assert kl is not None
    assert kl.flatten().tolist() == pytest.approx([1 - math.log(2)] * 2)
    assert tl2.flatten().tolist() == pytest.approx([0.1 * (1 - math.log(2))] * 2)


def _batch(model: torch.nn.Module) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(1)
    p = torch.randint(4, 60, (3, 5))
    pm = torch.ones_like(p)
    pm[0, :2] = 0
    c = torch.randint(4, 60, (3, 4))
    cm = torch.ones_like(c)
    cm[1, 2:] = 0
    return p, pm, c, cm


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_zero_advantage_gives_zero_policy_gradient(loss_type: str) -> None:
    model = _llama(80)
    p, pm, c, cm = _batch(model)
    logps, _ = completion_logps(model, p, pm, c, cm)
    tl, _, _ = per_token_loss(logps, logps.detach(), torch.zeros(3), 0.2, 0.2)
    loss = aggregate_loss(
        tl, cm, loss_type, max_completion_length=4, accumulation_steps=1, step_tokens=10.0
    )
    loss.backward()
    grads = [q.grad for q in model.parameters() if q.grad is not None]
    assert grads and all(float(g.abs().max()) == 0.0 for g in grads)
    # and a non-zero advantage does move the weights (the test can fail)
    model.zero_grad()
    logps, _ = completion_logps(model, p, pm, c, cm)
    tl, _, _ = per_token_loss(logps, logps.detach(), torch.tensor([1.0, -1.0, 0.5]), 0.2, 0.2)
    aggregate_loss(
        tl, cm, loss_type, max_completion_length=4, accumulation_steps=1, step_tokens=10.0
    ).backward()
    assert any(float(q.grad.abs().max()) > 0 for q in model.parameters() if q.grad is not None)


def _gpt() -> torch.nn.Module:
    from shoestring.models.gpt import ShoestringGPTConfig, ShoestringGPTForCausalLM

    torch.manual_seed(0)
    cfg = ShoestringGPTConfig(
        vocab_size=80,
        d_model=32,
        n_layers=2,
        n_heads=4,
        d_ff=64,
        max_seq_len=64,
        position="rope",
        norm="rmsnorm",
    )
    return ShoestringGPTForCausalLM(cfg)


@pytest.mark.parametrize("make", [lambda: _llama(80), _gpt], ids=["llama", "shoestring-gpt"])
def test_shared_prompt_prefix_gives_same_logps_and_gradients(make) -> None:
    model = make()
    torch.manual_seed(2)
    g = 3
    p = torch.randint(4, 60, (2, 5))
    pm = torch.ones_like(p)
    pm[1, :2] = 0  # left padding in one prompt
    c = torch.randint(4, 60, (2 * g, 4))
    cm = torch.ones_like(c)
    cm[1, 2:] = 0  # a short completion
    cm[4, 1:] = 0
    adv = torch.randn(2 * g)

    def run(fn):  # type: ignore[no-untyped-def]
        model.zero_grad()
        if fn is completion_logps:
            lp, ent = fn(model, p.repeat_interleave(g, 0), pm.repeat_interleave(g, 0), c, cm, True)
        else:
            lp, ent = fn(model, p, pm, c, cm, g, True)
        (lp * cm * adv[:, None]).sum().backward()
        return lp.detach(), ent, [q.grad.clone() for q in model.parameters()]

    lp1, e1, g1 = run(completion_logps)
    lp2, e2, g2 = run(grouped_completion_logps)
    torch.testing.assert_close(lp2 * cm, lp1 * cm, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(e2 * cm, e1 * cm, atol=1e-5, rtol=1e-4)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_lora_reference_with_disabled_adapters_equals_frozen_copy() -> None:
    from peft import LoraConfig, get_peft_model

    model = _llama(80)
    frozen = copy.deepcopy(model).eval()
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    with torch.no_grad():  # make the adapters matter (B starts at zero)
        for name, q in peft_model.named_parameters():
            if "lora_B" in name:
                q.normal_(0, 0.5)
    inner = peft_model.get_base_model().eval()
    p, pm, c, cm = _batch(inner)
    with torch.no_grad():
        want, _ = completion_logps(frozen, p, pm, c, cm)
        adapted, _ = completion_logps(inner, p, pm, c, cm)
        with peft_model.disable_adapter():
            ref, _ = completion_logps(inner, p, pm, c, cm)
    torch.testing.assert_close(ref, want)
    assert not torch.allclose(adapted, want, atol=1e-4)


# ----------------------------------------------------------------------------- trainer


def _count_logps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]

    def counting(real):  # type: ignore[no-untyped-def]
        def wrapped(*a, **k):  # type: ignore[no-untyped-def]
            calls[0] += 1
            return real(*a, **k)

        return wrapped

    for name in ("completion_logps", "grouped_completion_logps"):
        monkeypatch.setattr(G, name, counting(getattr(G, name)))
    return calls


def test_beta_zero_runs_no_reference_pass(tiny_model, tmp_path, monkeypatch) -> None:
    calls = _count_logps(monkeypatch)
    cfg = grpo_config(overrides=_cfg(tiny_model, "beta=0", "max_steps=2"))
    trainer = GRPOTrainer(cfg, tmp_path / "b0", echo=False, progress=False)
    trainer.run()
    assert trainer.reference_passes == 0
    assert calls[0] == 2 * 2  # 2 steps x 2 micro-batches, training passes only
    summary = json.loads((tmp_path / "b0" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["kind"] == "grpo"
    assert set(summary["time_split"]) == {"generation", "scoring", "backward"}
    recs = [json.loads(x) for x in (tmp_path / "b0" / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in recs if "reward_mean" in r)
    for key in ("frac_zero_std", "entropy", "clip_fraction", "completion_length_max", "kl"):
        assert key in step
    assert step["kl"] is None
    # the final model loads as an HF directory with its tokenizer
    from shoestring.models.loading import load_model_and_tokenizer

    load_model_and_tokenizer(tmp_path / "b0", dtype="fp32")


def test_beta_positive_with_lora_uses_disabled_adapters(tiny_model, tmp_path, monkeypatch) -> None:
    calls = _count_logps(monkeypatch)
    cfg = grpo_config(overrides=_cfg(tiny_model, "beta=0.1", "max_steps=2", "lora_rank=4"))
    trainer = GRPOTrainer(cfg, tmp_path / "b1", echo=False, progress=False)
    trainer.run()
    assert trainer.frozen_ref is None  # no second copy in memory
    assert trainer.reference_passes == 2  # one per generation batch
    assert calls[0] == 2 * 2 + 2 * 2  # training + reference micro-batches
    rec = json.loads((tmp_path / "b1" / "metrics.jsonl").read_text().splitlines()[0])
    assert rec["kl"] is not None and rec["kl"] >= 0
    assert (tmp_path / "b1" / "model" / "config.json").is_file()  # merged, not an adapter


def test_resume_after_interruption_matches_uninterrupted(tiny_model, tmp_path, monkeypatch):
    over = _cfg(tiny_model, "num_iterations=2", "save_steps=2", "beta=0.05", "max_steps=4")
    full = grpo.run(grpo_config(overrides=[*over, f"output_dir={tmp_path / 'full'}", "quiet=true"]))

    real_step = GRPOTrainer.train_step

    def interrupt_at_3(self):  # type: ignore[no-untyped-def]
        if self.step == 3:  # mid-rollout: step 3 reuses the batch generated at step 2
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(GRPOTrainer, "train_step", interrupt_at_3)
    with pytest.raises(KeyboardInterrupt):
        grpo.run(grpo_config(overrides=[*over, f"output_dir={tmp_path / 'cut'}", "quiet=true"]))
    cut = tmp_path / "cut"
    assert json.loads((cut / "summary.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(GRPOTrainer, "train_step", real_step)
    grpo.run(resume_config(cut, ["quiet=true"]))

    from safetensors.torch import load_file

    a = load_file(str(full / "checkpoints" / "step_4" / "model.safetensors"))
    b = load_file(str(cut / "checkpoints" / "step_4" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)

    def losses(run: Path) -> list[float]:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(x)["loss"] for x in lines if '"loss"' in x]

    assert losses(full) == losses(cut) and len(losses(cut)) == 4
    assert json.loads((cut / "summary.json").read_text())["status"] == "finished"


def test_ctrl_c_mid_step_ends_the_run_after_that_step(tiny_model, tmp_path, monkeypatch, capsys):
    """A signal that lands inside a step (a rollout or backward) lets the step finish; the run
    then saves a checkpoint and ends ``interrupted``."""
    import os
    import signal

    real_step = GRPOTrainer.train_step

    def signal_in_step_2(self):  # type: ignore[no-untyped-def]
        if self.step == 1:
            os.kill(os.getpid(), signal.SIGINT)  # as if Ctrl-C were pressed during the step
        return real_step(self)

    monkeypatch.setattr(GRPOTrainer, "train_step", signal_in_step_2)
    before = signal.getsignal(signal.SIGINT)
    over = _cfg(tiny_model, "max_steps=4", "save_steps=100")
    with pytest.raises(KeyboardInterrupt):
        grpo.run(grpo_config(overrides=[*over, f"output_dir={tmp_path / 'int'}"]))
    run_dir = tmp_path / "int"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] == 2
    assert (run_dir / "checkpoints" / "step_2").is_dir()
    assert "stopping after this step" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back


def test_startup_warning_is_measured(tiny_model, tmp_path) -> None:
    # a random model never answers: the warning names the missing answers and dead groups
    cfg = grpo_config(overrides=_cfg(tiny_model, "max_steps=2", "temperature=0.1"))
    trainer = GRPOTrainer(cfg, tmp_path / "w", echo=False, progress=False)
    trainer.run()
    text = " ".join(trainer.warnings)
    assert "zero reward std" in text and "temperature=0.1" in text
    assert "state a final answer" in text


# ----------------------------------------------------------------------------- config and data


def test_presets_and_config_errors() -> None:
    assert {"ultra_fast", "extreme_fast", "hardware_accelerated", "cpu"} <= set(list_grpo_presets())
    uf = load_grpo_preset("ultra_fast")
    assert uf["per_device_train_batch_size"] == 2 and uf["temperature"] == 0.1
    cfg = grpo_config("extreme_fast", ["beta=0"])
    assert cfg.max_completion_length == 8 and cfg.beta == 0 and cfg.preset == "extreme_fast"
    with pytest.raises(ConfigError, match="num_generation"):
        grpo_config(overrides=["num_generation=4"])
    with pytest.raises(ConfigError, match="divisible"):
        grpo_config(overrides=["num_generations=3", "per_device_train_batch_size=4"])
    with pytest.raises(ConfigError, match="loss_type"):
        grpo_config(overrides=["loss_type=ppo"])
    with pytest.raises(ConfigError, match="reward_weights"):
        grpo_config(overrides=["reward_weights=[1.0]"])


def test_synthetic_splits_are_disjoint() -> None:
    train = load_task("synthetic:2", "train", n=300, seed=0)
    test = load_task("synthetic:2", "test", n=60, seed=5)
    assert len(train) == 300 and len(test) == 60
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    assert load_task("synthetic:2", "train", n=10, seed=0) == train[:10]


def test_heldout_eval_scores_through_the_protocol(tiny_model, tmp_path) -> None:
    # a tokenizer without a chat template: auto = qa, the synthetic corpus's own layout
    cfg = grpo_config(overrides=_cfg(tiny_model, "max_steps=1", "eval_problems=3"))
    run = tmp_path / "ev"
    GRPOTrainer(cfg, run, echo=False, progress=False).run()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["protocol"]["name"] == "qa" and summary["protocol_key"].startswith("qa@")
    for tag in ("before", "after"):
        ev = summary[f"eval_{tag}"]
        assert set(ev) >= {"correct", "n", "accuracy", "ci_low", "ci_high"} and ev["n"] == 3
        lines = [json.loads(x) for x in (run / f"eval_{tag}.jsonl").read_text().splitlines()]
        assert len(lines) == 3 and {"question", "gold", "response", "correct"} <= set(lines[0])
        assert sum(x["correct"] for x in lines) == ev["correct"]
    assert "eval_mcnemar" in summary


def test_old_prompt_format_maps_onto_a_protocol() -> None:
    from shoestring.rl.config import config_from_dict

    assert config_from_dict({"prompt_format": "plain"}).protocol == "qa"
    assert config_from_dict({"prompt_format": "chat"}).protocol == "chat-cot"
    assert grpo_config(base={"prompt_format": "auto"}).protocol == "auto"
    with pytest.raises(ConfigError, match="protocol"):
        grpo_config(overrides=["protocol=nope"])
