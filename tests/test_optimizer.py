"""train.optimizer: the Muon/AdamW parameter split, Muon's math, and exact state round trips."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from shoestring.config import ConfigError
from shoestring.models.gpt import ShoestringGPTConfig, ShoestringGPTForCausalLM
from shoestring.run_config import build_run_config, list_variants
from shoestring.train.muon import MuonWithAdamW
from shoestring.train.optimizer import build_optimizer, split_parameters

SMALL = ["model.d_model=32", "model.n_heads=2", "model.d_ff=64", "model.n_layers=2"]
SMALL += ["model.vocab_size=50", "train.seq_len=16"]


def _model(variant: str | None, *extra: str) -> tuple[ShoestringGPTForCausalLM, object]:
    over = list(SMALL) + list(extra)
    if variant and variant.startswith(("lora_", "enhanced_")):
        # the variants' ranks are sized for real widths; shrink them to fit d_model=32
        over += ["model.q_lora_rank=8", "model.kv_lora_rank=8"]
        if variant.startswith("enhanced_"):
            over += ["model.qk_rope_head_dim=4", "model.v_head_dim=8"]
    cfg = build_run_config(None, variant, None, over)
    torch.manual_seed(0)
    return ShoestringGPTForCausalLM(ShoestringGPTConfig.from_model_config(cfg.model)), cfg


@pytest.mark.parametrize("tie", ["true", "false"])
@pytest.mark.parametrize("variant", [None, *list_variants()])
def test_every_parameter_in_exactly_one_group(variant: str | None, tie: str) -> None:
    _check_split(variant, f"model.tie_word_embeddings={tie}")


def test_split_with_swiglu_rmsnorm_rope_and_biases() -> None:
    _check_split(None, "model.mlp=swiglu", "model.norm=rmsnorm", "model.position=rope",
                 "model.attention_bias=true")  # fmt: skip


def _check_split(variant: str | None, *extra: str) -> None:
    model, cfg = _model(variant, *extra, "train.optimizer=muon")
    groups = split_parameters(model)
    ids = [id(p) for g in groups.values() for _, p in g]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each exactly once
    hidden = {
        n + ".weight"
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and ".layers." in n
    }
    muon = {n for n, _ in groups["muon"]}
    assert muon == hidden  # q/k/v/o, low-rank q_a/q_b/kv_a/kv_b, MLP: all of them, only them
    for name, p in groups["adamw_decay"]:
        assert p.dim() == 2 and ("embed" in name or "lm_head" in name)
    assert all(p.dim() == 1 for _, p in groups["adamw_no_decay"])
    opt = build_optimizer(model, cfg, torch.device("cpu"))
    kinds = {g["kind"]: g for g in opt.param_groups if g["params"]}
    assert {id(p) for p in kinds["muon"]["params"]} == {id(p) for _, p in groups["muon"]}
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())


def test_adamw_keeps_every_matrix_decayed() -> None:
    model, cfg = _model(None, "train.optimizer=adamw")
    opt = build_optimizer(model, cfg, torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(p) for p in model.parameters() if p.dim() >= 2}


def test_bad_optimizer_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="train.optimizer"):
        build_run_config(overrides=["train.optimizer=sgd"])


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 50, (4, 16), generator=g)
    model(input_ids=x, targets=x, return_logits=False).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def test_muon_update_equals_torch_muon_with_bf16_newton_schulz() -> None:
    """Same math as torch.optim.Muon (Moonshot's lr scale) when Newton-Schulz runs in bf16."""
    torch.manual_seed(0)
    w1 = torch.nn.Parameter(torch.randn(24, 40))
    w2 = torch.nn.Parameter(w1.detach().clone())
    ours = MuonWithAdamW(
        [w1], [{"params": []}], muon_lr=0.02, adamw_lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95),
        ns_dtype=torch.bfloat16,
    )  # fmt: skip
    ref = torch.optim.Muon([w2], lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for i in range(3):
        g = torch.randn(24, 40, generator=torch.Generator().manual_seed(i))
        w1.grad, w2.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
        assert torch.equal(w1, w2)


def test_muon_state_round_trip_is_bit_exact() -> None:
    """Save after 3 steps (weights_only), load into a fresh optimizer: 3 more steps identical."""
    model, cfg = _model("enhanced_small", "train.optimizer=muon", "train.lr=3e-3")
    opt = build_optimizer(model, cfg, torch.device("cpu"))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    for i in range(3):
        _step(model, opt, i)
        sched.step()
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    model2 = copy.deepcopy(model)
    opt2 = build_optimizer(model2, cfg, torch.device("cpu"))
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0 / (1 + s))
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    for i in range(3, 6):
        _step(model, opt, i)
        sched.step()
        _step(model2, opt2, i)
        sched2.step()
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        for k, v in opt.state[p].items():
            assert torch.equal(v, opt2.state[q][k])
    assert {g["kind"] for g in opt2.param_groups} == {"muon", "adamw"}
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
