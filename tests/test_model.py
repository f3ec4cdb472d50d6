"""Tests of the shoestring GPT (src/shoestring/models/gpt.py).

They pin down the promises other commands rely on: every size x variant builds and trains,
parameter counts are exact (tied weights once), the KV cache and left padding change nothing
about greedy outputs, checkpoints round-trip through ``AutoModelForCausalLM`` as safetensors,
``targets``/``labels`` agree, and ``peft`` can wrap the attention projections. Models are tiny
(vocab 256, seq <= 16) so the file stays well under a minute on one thread.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM

from shoestring.config import ConfigError
from shoestring.models import gpt as gpt_mod
from shoestring.models.gpt import (
    ShoestringGPTConfig,
    ShoestringGPTForCausalLM,
    lm_loss,
)
from shoestring.models.param_count import num_parameters_breakdown
from shoestring.models.shape import HF_NAMES, ModelConfig
from shoestring.run_config import build_run_config, list_variants

SIZES = ["tiny", "small", "medium", "large"]
VARIANTS = [
    "baseline", "bias_only", "rope_only", "lora_small", "lora_medium", "lora_large",
    "enhanced_small", "enhanced_medium", "enhanced_large",
]  # fmt: skip
VOCAB = 256

# Small shapes used by the behavioural tests; "mla" is low-rank q/kv + decoupled RoPE + small v.
SMALL = dict(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, d_ff=128, max_seq_len=64)
SHAPES = {
    "baseline": {},
    "rope": {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu"},
    "lowrank": {"q_lora_rank": 16, "kv_lora_rank": 32, "attention_bias": True},
    "mla": {
        "q_lora_rank": 16, "kv_lora_rank": 32, "qk_rope_head_dim": 8, "v_head_dim": 8,
        "position": "rope", "attention_bias": True,
    },
    "decoupled_full_rank": {"qk_rope_head_dim": 8, "position": "rope", "v_head_dim": 24},
}  # fmt: skip


def make_model(seed: int = 0, noise: float = 0.4, **kw: object) -> ShoestringGPTForCausalLM:
    """A small model in eval mode whose weights are perturbed so greedy decoding does not
    collapse onto one repeated token (which would make equality tests vacuous)."""
    torch.manual_seed(seed)
    model = ShoestringGPTForCausalLM(ShoestringGPTConfig(**{**SMALL, **kw})).eval()
    if noise:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * noise)
    return model


def expected_attention_params(cfg: ShoestringGPTConfig) -> int:
    """Attention parameters of one layer from the formulas in docs/variants.md."""
    d, h, hd, r = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.qk_rope_head_dim
    dv, b = cfg.value_head_dim, int(cfg.attention_bias)
    norm = (lambda n: 2 * n) if cfg.norm == "layernorm" else (lambda n: n)

    def lin(i: int, o: int) -> int:
        return i * o + b * o

    qr, kvr = cfg.q_lora_rank, cfg.kv_lora_rank
    n = lin(d, qr) + norm(qr) + lin(qr, h * (hd + r)) if qr else lin(d, h * (hd + r))
    if kvr:
        n += lin(d, kvr + r) + norm(kvr) + lin(kvr, h * (hd + dv))
    else:
        n += lin(d, h * hd + r) + lin(d, h * dv)
    return n + lin(h * dv, d)


def test_variant_list_matches_presets() -> None:
    assert sorted(VARIANTS) == list_variants()


# ----------------------------------------------------------------------------- sizes x variants


@pytest.fixture(scope="module")
def baseline_attention() -> dict[str, int]:
    """Per-size attention parameter count of the baseline variant (for the low-rank checks)."""
    out = {}
    for size in SIZES:
        mc = build_run_config(preset=size, variant="baseline").model
        out[size] = expected_attention_params(
            ShoestringGPTConfig.from_model_config(mc, vocab_size=VOCAB)
        )
    return out


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", SIZES)
def test_size_variant_builds_trains_and_counts(
    size: str, variant: str, baseline_attention: dict[str, int]
) -> None:
    mc = build_run_config(preset=size, variant=variant).model
    cfg = ShoestringGPTConfig.from_model_config(mc, vocab_size=VOCAB)
    torch.manual_seed(0)
    model = ShoestringGPTForCausalLM(cfg)
    x, y = torch.randint(0, VOCAB, (2, 1, 16))
    out = model(x, targets=y)
    assert out.logits.shape == (1, 16, VOCAB)
    assert math.isfinite(out.loss.item())
    # A fresh model predicts roughly uniformly: loss near ln(vocab).
    assert abs(out.loss.item() - math.log(VOCAB)) < 0.5
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)

    counts = num_parameters_breakdown(model)
    unique = {id(p): p.numel() for p in model.parameters()}
    assert counts["total"] == sum(unique.values())
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied by default
    assert counts["lm_head"] == 0
    assert counts["embedding"] == VOCAB * cfg.d_model + mc.max_seq_len * cfg.d_model * (
        cfg.position == "learned"
    )
    assert counts["total"] == (
        counts["embedding"] + counts["lm_head"] + counts["attention"] + counts["mlp"]
        + counts["norm"]
    )  # fmt: skip
    assert counts["non_embedding"] == counts["total"] - counts["embedding"]
    assert counts["layers"] == cfg.n_layers
    per_layer_attn = expected_attention_params(cfg)
    assert all(layer["attention"] == per_layer_attn for layer in counts["per_layer"])
    assert counts["attention"] == cfg.n_layers * per_layer_attn
    # Low-rank variants exist to cut attention parameters at their own size.
    if variant.startswith(("lora_", "enhanced_")) and variant.endswith(size):
        assert counts["attention"] < cfg.n_layers * baseline_attention[size]
    if variant == "bias_only":
        assert counts["attention"] > cfg.n_layers * baseline_attention[size]


def test_untied_head_counted_separately() -> None:
    model = make_model(noise=0.0, tie_word_embeddings=False)
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    counts = num_parameters_breakdown(model)
    assert counts["lm_head"] == VOCAB * SMALL["d_model"]
    assert counts["total"] == sum(p.numel() for p in model.parameters())


def test_scaled_init_of_residual_projections() -> None:
    torch.manual_seed(0)
    cfg = ShoestringGPTConfig(**{**SMALL, "d_model": 256, "n_heads": 4, "n_layers": 8})
    model = ShoestringGPTForCausalLM(cfg)
    block = model.model.layers[0]
    assert block.self_attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.1)
    scaled = 0.02 / math.sqrt(2 * cfg.n_layers)
    assert block.self_attn.o_proj.weight.std().item() == pytest.approx(scaled, rel=0.1)
    assert block.mlp.proj.weight.std().item() == pytest.approx(scaled, rel=0.1)


# ----------------------------------------------------------------------------- caching


def greedy(model: ShoestringGPTForCausalLM, ids: torch.Tensor, n: int, **kw: object):
    return model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0, **kw)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_kv_cache_greedy_matches_no_cache(shape: str) -> None:
    model = make_model(**SHAPES[shape])
    ids = torch.randint(1, VOCAB, (1, 6), generator=torch.Generator().manual_seed(1))
    with_cache = greedy(model, ids, 16, use_cache=True)
    without = greedy(model, ids, 16, use_cache=False)
    assert torch.equal(with_cache, without)
    assert len(set(with_cache[0, 6:].tolist())) > 2  # the check is not vacuous


@pytest.mark.parametrize("shape", ["baseline", "mla", "decoupled_full_rank"])
def test_cached_chunks_match_full_forward(shape: str) -> None:
    """Prefill, a multi-token cached chunk (explicit-mask path) and single steps all give the
    logits of one full forward pass."""
    model = make_model(**SHAPES[shape])
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :5], use_cache=True)
        parts = [out.logits]
        out = model(ids[:, 5:9], past_key_values=out.past_key_values, use_cache=True)
        parts.append(out.logits)
        for t in range(9, 12):
            out = model(ids[:, t : t + 1], past_key_values=out.past_key_values, use_cache=True)
            parts.append(out.logits)
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", ["baseline", "rope", "mla"])
def test_left_padded_batch_matches_single_sequences(shape: str) -> None:
    model = make_model(**SHAPES[shape])
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(1, VOCAB, (n,), generator=gen) for n in (3, 8, 5)]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = p
        mask[i, width - len(p) :] = 1
    batched = greedy(model, ids, 12, attention_mask=mask)
    for i, p in enumerate(prompts):
        single = greedy(model, p[None], 12)
        assert torch.equal(batched[i, width:], single[0, len(p) :]), f"row {i} differs"


def test_left_padded_forward_matches_unpadded() -> None:
    """Position ids derived from the mask: a left-padded row scores like the bare sequence."""
    for kw in (SHAPES["baseline"], SHAPES["mla"]):
        model = make_model(**kw)
        seq = torch.randint(1, VOCAB, (1, 6), generator=torch.Generator().manual_seed(4))
        padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), seq], dim=1)
        mask = torch.cat([torch.zeros(1, 3), torch.ones(1, 6)], dim=1).long()
        with torch.no_grad():
            a = model(seq).logits
            b = model(padded, attention_mask=mask).logits[:, 3:]
        assert torch.isfinite(model(padded, attention_mask=mask).logits).all()
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_training_path_uses_is_causal_without_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, bool]] = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kw):  # type: ignore[no-untyped-def]
        calls.append((attn_mask, is_causal))
        return real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kw)

    monkeypatch.setattr(gpt_mod.F, "scaled_dot_product_attention", spy)
    model = make_model(noise=0.0, **SHAPES["mla"]).train()
    x = torch.randint(0, VOCAB, (2, 16))
    out = model(x, targets=x, attention_mask=torch.ones_like(x))
    assert out.past_key_values is None
    assert calls and all(m is None and c for m, c in calls)


# ----------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("tied", [True, False])
def test_save_pretrained_roundtrip(tmp_path: Path, tied: bool) -> None:
    model = make_model(tie_word_embeddings=tied, **SHAPES["mla"])
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not (tmp_path / "pytorch_model.bin").exists()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "shoestring_gpt"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, ShoestringGPTForCausalLM)
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == tied
    x = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)


def test_hf_standard_names_and_model_config_roundtrip() -> None:
    mc = build_run_config(preset="small", variant="lora_medium").model
    cfg = ShoestringGPTConfig.from_model_config(mc)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (384, 6, 6)
    assert cfg.intermediate_size == 1536 and cfg.max_position_embeddings == mc.max_seq_len
    assert (cfg.q_lora_rank, cfg.kv_lora_rank) == (64, 128)
    assert cfg.to_model_config() == mc
    model = ShoestringGPTForCausalLM(ShoestringGPTConfig.from_model_config(mc, vocab_size=VOCAB))
    assert hasattr(model.model.layers[0].self_attn, "kv_b_proj")


def test_hf_config_fields_and_defaults_come_from_the_shape_table() -> None:
    import dataclasses

    ours = {f.name: f.default for f in dataclasses.fields(ShoestringGPTConfig)}
    default = ShoestringGPTConfig()
    for f in dataclasses.fields(ModelConfig):
        # max_seq_len=0 means train.seq_len in a run config; a bare model needs a number
        expected = 128 if f.name == "max_seq_len" else f.default
        assert ours[f.name] == expected, f.name
        assert getattr(default, f.name) == expected, f.name  # __init__'s default is the field's
    assert ShoestringGPTConfig.attribute_map == HF_NAMES
    assert HF_NAMES["hidden_size"] == "d_model" and HF_NAMES["num_hidden_layers"] == "n_layers"
    assert ShoestringGPTConfig(**SMALL) == ShoestringGPTConfig(**SMALL)
    assert ShoestringGPTConfig(**SMALL) != ShoestringGPTConfig(**{**SMALL, "d_model": 128})
    assert ShoestringGPTConfig(**SMALL) != ShoestringGPTConfig(
        **{**SMALL, "tie_word_embeddings": False}
    )


# ----------------------------------------------------------------------------- losses and knobs


def test_targets_and_labels_give_the_same_loss() -> None:
    model = make_model(noise=0.0)
    x = torch.randint(0, VOCAB, (2, 12))
    labels = x.clone()
    labels[0, :4] = -100
    targets = torch.full_like(x, -100)
    targets[:, :-1] = labels[:, 1:]
    a = model(x, labels=labels).loss
    b = model(x, targets=targets).loss
    torch.testing.assert_close(a, b)
    logits = model(x).logits
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(a, ref)
    n = (targets != -100).sum()
    torch.testing.assert_close(lm_loss(logits, targets, num_items_in_batch=n), b)
    with pytest.raises(ValueError, match="not both"):
        model(x, labels=labels, targets=targets)


def test_logits_to_keep() -> None:
    model = make_model(noise=0.0)
    x = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        full = model(x).logits
        last = model(x, logits_to_keep=1).logits
    assert last.shape == (2, 1, VOCAB)
    torch.testing.assert_close(last, full[:, -1:])


def test_rope_scaling_changes_outputs() -> None:
    a = make_model(position="rope")
    b = ShoestringGPTForCausalLM(
        ShoestringGPTConfig(**{**SMALL, "position": "rope", "rope_scaling": 4.0})
    ).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, VOCAB, (1, 10))
    with torch.no_grad():
        la, lb = a(x).logits, b(x).logits
    torch.testing.assert_close(la[:, 0], lb[:, 0])  # position 0 is not rotated either way
    assert not torch.allclose(la[:, 1:], lb[:, 1:])


def test_learned_positions_refuse_too_long_inputs() -> None:
    model = make_model(noise=0.0, max_seq_len=8)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_hidden_states_and_gradient_checkpointing() -> None:
    model = make_model(noise=0.0, **SHAPES["mla"])
    x = torch.randint(0, VOCAB, (1, 8))
    out = model(x, output_hidden_states=True)
    assert len(out.hidden_states) == SMALL["n_layers"] + 1
    model.train()
    enable = getattr(model, "activation_checkpointing_enable", None)
    (enable or model.gradient_checkpointing_enable)()
    loss = model(x, targets=x).loss
    loss.backward()
    assert model.model.layers[0].self_attn.q_a_proj.weight.grad is not None


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"qk_rope_head_dim": 8}, "position='rope'"),
        ({"qk_rope_head_dim": 7, "position": "rope"}, "even"),
        ({"n_heads": 5}, "divisible"),
        ({"position": "alibi"}, "position"),
        ({"norm": "batchnorm"}, "norm"),
        ({"mlp": "relu"}, "mlp"),
        ({"d_model": 60, "n_heads": 4, "position": "rope"}, "even head dim"),
        ({"rope_scaling": 0.0}, "rope_scaling"),
    ],
)
def test_config_errors_are_clear(kw: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ShoestringGPTConfig(**{**SMALL, **kw})


# ----------------------------------------------------------------------------- peft


@pytest.mark.parametrize(
    ("shape", "targets"),
    [
        ("baseline", ["q_proj", "k_proj", "v_proj", "o_proj"]),
        ("mla", ["q_a_proj", "q_b_proj", "kv_a_proj", "kv_b_proj", "o_proj"]),
    ],
)
def test_peft_lora_wraps_attention(shape: str, targets: list[str]) -> None:
    peft = pytest.importorskip("peft")
    model = make_model(noise=0.0, **SHAPES[shape])
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=targets))
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    x = torch.randint(0, VOCAB, (2, 8))
    out = wrapped(input_ids=x, labels=x)
    out.loss.backward()
    unique = {id(p): p.numel() for p in wrapped.parameters()}
    assert num_parameters_breakdown(wrapped)["total"] == sum(unique.values())
