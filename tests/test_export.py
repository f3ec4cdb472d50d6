"""``shoestring export``: Llama-exact GPTs become LlamaForCausalLM directories and GGUF files
whose logits equal the original's; every other variant is refused with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from shoestring.cli import main
from shoestring.data.tokenizer import save_hf_tokenizer, train_tokenizer
from shoestring.errors import UserError
from shoestring.models.export_llama import export_llama, llama_refusals
from shoestring.models.gpt import ShoestringGPTConfig, ShoestringGPTForCausalLM
from shoestring.train.checkpoint import write_model_dir

DOCS = [
    f"Question: Sam has {a} apples and buys {b}. How many?\nAnswer: {a}+{b}={a + b} #### {a + b}"
    for a in range(3, 40, 3)
    for b in range(2, 30, 4)
]
LLAMA_LIKE = {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu"}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """shoestring's own tokenizer (byte-level BPE, digits split) trained on a few lines."""
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    save_hf_tokenizer(train_tokenizer(DOCS, 300, split_digits=True), "<|endoftext|>", None, out)
    return out


def _model_dir(root: Path, tok_dir: Path, seed: int = 0, **kw: object) -> Path:
    torch.manual_seed(seed)
    cfg = ShoestringGPTConfig(
        vocab_size=300, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=64, **kw
    )
    model = ShoestringGPTForCausalLM(cfg).eval()
    with torch.no_grad():  # norms off their all-ones init, so a misplaced one shows
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = root / f"run{seed}" / "model"
    out.parent.mkdir(parents=True)
    write_model_dir(model, out, tok_dir)
    return out


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize(
    "extra", [{}, {"rope_scaling": 2.0, "rope_theta": 500.0, "tie_word_embeddings": False}]
)
def test_llama_export_matches_logits_and_generation(
    tokenizer_dir: Path, tmp_path: Path, extra: dict
) -> None:
    src = _model_dir(tmp_path, tokenizer_dir, **LLAMA_LIKE, **extra)
    report = export_llama(src.parent, tmp_path / "llama")  # a run directory is accepted
    assert report.max_abs_logit_diff < 1e-5
    out = tmp_path / "llama"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llama" and "auto_map" not in cfg
    assert not list(out.glob("*.py"))  # no custom code: plain transformers loads it
    assert "shoestring export --to llama" in (out / "README.md").read_text()
    llama = AutoModelForCausalLM.from_pretrained(out).eval()
    assert isinstance(llama, LlamaForCausalLM)
    tok = AutoTokenizer.from_pretrained(out)
    assert llama.config.eos_token_id == tok.eos_token_id == 0
    orig = ShoestringGPTForCausalLM.from_pretrained(src).eval()
    ids = tok("Question: Sam has 12 apples and buys 7.", return_tensors="pt").input_ids
    torch.testing.assert_close(_logits(llama, ids), _logits(orig, ids), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        a = llama.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None)
        b = orig.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None)
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"position": "learned"}, "learned position"),
        ({"norm": "layernorm"}, "RMSNorm"),
        ({"mlp": "gelu"}, "SwiGLU"),
        ({"attention_bias": True}, "biases"),
        ({"qk_rope_head_dim": 4}, "decoupled RoPE"),
        ({"kv_lora_rank": 8}, "low-rank"),
        ({"v_head_dim": 8}, "v_head_dim"),
    ],
)
def test_non_llama_variants_are_refused_with_the_reason(kw: dict, reason: str) -> None:
    base = {**LLAMA_LIKE, "vocab_size": 50, "d_model": 32, "n_heads": 2}
    assert llama_refusals(ShoestringGPTConfig(**base)) == []
    reasons = llama_refusals(ShoestringGPTConfig(**{**base, **kw}))
    assert len(reasons) == 1 and reason in reasons[0], reasons


def test_export_cli_refuses_non_llama_and_foreign_models(
    tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _model_dir(tmp_path, tokenizer_dir)  # learned positions, LayerNorm, GELU
    assert main(["export", str(src), "--to", "llama", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "not exactly Llama" in err and "learned position" in err and "GELU" not in err
    assert "trust_remote_code=True" in err and not (tmp_path / "x").exists()
    llama = tmp_path / "plain_llama"
    export_llama(_model_dir(tmp_path, tokenizer_dir, seed=1, **LLAMA_LIKE), llama)
    assert main(["export", str(llama), "--to", "llama", "--out", str(tmp_path / "y")]) == 2
    assert "not a shoestring GPT" in capsys.readouterr().err


def test_export_cli_writes_the_directory_and_its_report(
    tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The flags are --set shortcuts; the model directory gets report.md with the check's
    figure, and the path is the last line printed."""
    src = _model_dir(tmp_path, tokenizer_dir, seed=2, **LLAMA_LIKE)
    out = tmp_path / "llama"
    assert main(["export", str(src), "--out", str(out), "--set", "to=llama"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == str(out) and printed[1].startswith("check: max |logit difference|")
    diff = printed[1].rsplit("= ", 1)[1]
    report = (out / "report.md").read_text()
    assert f"on a fixed probe sequence = {diff}" in report and '"to": "llama"' in report
    assert (out / "README.md").is_file() and (out / "model.safetensors").is_file()
    assert main(["export", str(src), "--out", str(out), "--to", "llama", "-q"]) == 2
    assert "--overwrite" in capsys.readouterr().err  # the existing directory is kept
    assert main(["export", str(src), "--out", str(out), "--set", "to=onnx"]) == 2
    assert "llama or gguf" in capsys.readouterr().err


# ----------------------------------------------------------------------------- GGUF


@pytest.mark.parametrize(("dtype", "tol"), [("f32", 1e-4), ("f16", 2e-2)])
def test_gguf_export_read_back_matches_logits(
    tokenizer_dir: Path, tmp_path: Path, dtype: str, tol: float
) -> None:
    gguf = pytest.importorskip("gguf")
    from shoestring.models.export_gguf import gguf_logits

    src = _model_dir(tmp_path, tokenizer_dir, **LLAMA_LIKE)
    out = tmp_path / "m.gguf"
    rc = main(["export", str(src), "--to", "gguf", "--out", str(out), "--dtype", dtype, "-q"])
    assert rc == 0 and out.is_file()
    report = (tmp_path / "m.gguf.report.md").read_text()  # beside the file
    assert f"GGUF, {dtype}" in report and "max \\|logit difference\\| to the source" in report
    orig = ShoestringGPTForCausalLM.from_pretrained(src).eval()
    tok = AutoTokenizer.from_pretrained(src)
    ids = tok("Question: Sam has 12 apples and buys 7.", return_tensors="pt").input_ids
    torch.testing.assert_close(gguf_logits(out, ids), _logits(orig, ids), rtol=tol, atol=tol)

    reader = gguf.GGUFReader(str(out))
    field = {k: f.contents() for k, f in reader.fields.items()}
    assert field["general.architecture"] == "llama"
    assert field["llama.block_count"] == 2 and field["llama.context_length"] == 64
    assert field["tokenizer.ggml.pre"] == "starcoder"  # digits split, then GPT-2's regex
    tokens = field["tokenizer.ggml.tokens"]
    assert len(tokens) == 300 and tokens[field["tokenizer.ggml.eos_token_id"]] == "<|endoftext|>"
    vocab = json.loads((src / "tokenizer.json").read_text())["model"]["vocab"]
    assert all(tokens[i] == t for t, i in vocab.items())
    assert field["tokenizer.ggml.add_bos_token"] is False
    eos_type = field["tokenizer.ggml.token_type"][field["tokenizer.ggml.eos_token_id"]]
    assert eos_type == gguf.TokenType.CONTROL and field["tokenizer.ggml.token_type"][5] == (
        gguf.TokenType.NORMAL
    )
    merges = json.loads((src / "tokenizer.json").read_text())["model"]["merges"]
    assert field["tokenizer.ggml.merges"] == [
        m if isinstance(m, str) else " ".join(m) for m in merges
    ]
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["blk.0.attn_norm.weight"] == "F32" and kinds["blk.0.attn_q.weight"] == (
        dtype.upper()
    )
    assert "output.weight" not in kinds  # tied: llama.cpp reuses token_embd


def test_gguf_check_catches_unpermuted_rope_rows(
    tokenizer_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read-back forward uses llama.cpp's pairwise RoPE, so q/k rows written in HF's
    layout (no permutation) give different logits: the check can fail."""
    pytest.importorskip("gguf")
    from shoestring.models import export_gguf

    src = _model_dir(tmp_path, tokenizer_dir, **LLAMA_LIKE)
    monkeypatch.setattr(export_gguf, "permute_rope_rows", lambda w, n_head: w)
    report = export_gguf.export_gguf(src, tmp_path / "bad.gguf", dtype="f32")
    assert report.max_abs_logit_diff > 1e-2


def test_gguf_refuses_a_tokenizer_llama_cpp_cannot_split(tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    from shoestring.models.export_gguf import gguf_pre_tokenizer

    with pytest.raises(UserError, match="byte-level BPE"):
        gguf_pre_tokenizer({"model": {"type": "Unigram"}, "decoder": {"type": "Metaspace"}})
    plain = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    bpe = {"model": {"type": "BPE"}, "decoder": {"type": "ByteLevel"}}
    assert gguf_pre_tokenizer({**bpe, "pre_tokenizer": plain}) == "gpt-2"
    weird = {"type": "Whitespace"}
    with pytest.raises(UserError, match="no llama.cpp equivalent"):
        gguf_pre_tokenizer(
            {"model": {"type": "BPE"}, "decoder": {"type": "ByteLevel"}, "pre_tokenizer": weird}
        )
