"""llama2.c importer: real stories260K reproduces llama2.c's greedy text word for word, and
synthetic checkpoints (v0 unshared, v1, v2 Q8_0, GQA) match a reference llama2.c forward."""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shoestring.errors import UserError
from shoestring.models.llama2c import (
    MAGIC,
    convert_llama2c,
    llama2c_config,
    load_llama2c_state_dict,
    read_header,
)

STORIES = "models/stories260K"


# --- the real model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stories_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """stories260K converted once for this module (skips without ../shared).

    Module-scoped, so it cannot use the function-scoped ``shared_dir`` fixture; it resolves
    the folder the same way conftest.py does.
    """
    shared = Path(
        os.environ.get("SHOESTRING_SHARED", Path(__file__).resolve().parents[2] / "shared")
    )
    if not shared.is_dir():
        pytest.skip(f"{shared} is not present (real data/models live there)")
    out = tmp_path_factory.mktemp("import") / "stories260K"
    report = convert_llama2c(
        shared / STORIES / "stories260K.bin", shared / STORIES / "tok512.model", out
    )
    assert "matches sentencepiece" in report.tokenizer_check
    assert report.n_params == 260_032
    return out


def test_stories260k_greedy_matches_llama2c(stories_dir: Path, shared_dir: Path) -> None:
    """README protocol: greedy from BOS for 256 steps (run.c samples 256 tokens after BOS and
    prints a final newline); decoded text must equal expected_greedy_256.txt exactly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    expected = (shared_dir / STORIES / "expected_greedy_256.txt").read_text(encoding="utf-8")
    model = AutoModelForCausalLM.from_pretrained(stories_dir).eval()
    tok = AutoTokenizer.from_pretrained(stories_dir)
    ids = torch.tensor([[tok.bos_token_id]])
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=256, do_sample=False
        )
    assert out.shape[1] == 1 + 256  # no EOS/BOS stop inside the 256 steps
    text = tok.decode(out[0], skip_special_tokens=True)
    assert text + "\n" == expected


def test_stories260k_tokenizer_matches_sentencepiece(stories_dir: Path, shared_dir: Path) -> None:
    import sentencepiece as spm
    from transformers import AutoTokenizer

    sp = spm.SentencePieceProcessor(model_file=str(shared_dir / STORIES / "tok512.model"))
    tok = AutoTokenizer.from_pretrained(stories_dir)
    text = (shared_dir / STORIES / "expected_greedy_256.txt").read_text(encoding="utf-8")
    for sample in [text, "  Spaces  everywhere  ", "Tabs\tand\nnewlines \n end"]:
        assert tok.encode(sample) == [1, *sp.encode(sample)]
        assert tok.decode(tok.encode(sample), skip_special_tokens=True) == sp.decode(
            sp.encode(sample)
        )


def test_convert_refuses_to_clobber_and_bad_tokenizers(tmp_path: Path, shared_dir: Path) -> None:
    model = shared_dir / STORIES / "stories260K.bin"
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="--overwrite"):
        convert_llama2c(model, shared_dir / STORIES / "tok512.model", out)
    with pytest.raises(UserError, match="sentencepiece .model"):
        convert_llama2c(model, shared_dir / STORIES / "tok512.bin", tmp_path / "o2")
    assert not (tmp_path / "o2").exists()
    # no temporary directory is left behind after a failure
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_cli_prints_what_it_wrote(tmp_path: Path, shared_dir: Path, capsys) -> None:
    import argparse

    from shoestring.models import cli as import_cli

    parser = argparse.ArgumentParser(prog="shoestring")
    import_cli.add_cli(parser.add_subparsers(dest="command"))
    out = tmp_path / "hf"
    args = parser.parse_args(
        [
            "import",
            "llama2c",
            str(shared_dir / STORIES / "stories260K.bin"),
            "--tokenizer",
            str(shared_dir / STORIES / "tok512.model"),
            "--out",
            str(out),
        ]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "llama2.c v0: dim=64 hidden=172 layers=5 heads=8 kv_heads=4 vocab=512" in printed
    assert "model.safetensors" in printed and "tokenizer.json" in printed
    assert (out / "model.safetensors").is_file()
    assert printed.splitlines()[-1] == str(out)  # the written directory, last
    report = (out / "report.md").read_text()  # what was read and checked, inside the directory
    assert "llama2.c v0" in report and "dim=64 hidden=172 layers=5" in report
    assert "matches sentencepiece" in report


# --- synthetic checkpoints against a reference llama2.c forward -------------------------------

DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB, SEQ = 32, 48, 2, 4, 2, 64, 16


def _random_weights(seed: int, shared: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    kv = KV_HEADS * DIM // HEADS

    def r(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    w = {
        "tok": r(VOCAB, DIM, scale=1.0),
        "rms_att": 1 + r(LAYERS, DIM),
        "wq": r(LAYERS, DIM, DIM),
        "wk": r(LAYERS, kv, DIM),
        "wv": r(LAYERS, kv, DIM),
        "wo": r(LAYERS, DIM, DIM),
        "rms_ffn": 1 + r(LAYERS, DIM),
        "w1": r(LAYERS, HIDDEN, DIM),
        "w2": r(LAYERS, DIM, HIDDEN),
        "w3": r(LAYERS, HIDDEN, DIM),
        "rms_final": 1 + r(DIM),
    }
    w["cls"] = w["tok"] if shared else r(VOCAB, DIM, scale=1.0)
    return w


def _f32(*tensors: torch.Tensor) -> bytes:
    return b"".join(t.detach().contiguous().numpy().astype("<f4").tobytes() for t in tensors)


def _write_v0(path: Path, w: dict[str, torch.Tensor], shared: bool) -> None:
    vocab = VOCAB if shared else -VOCAB
    head = struct.pack("<7i", DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, vocab, SEQ)
    freqs = torch.zeros(SEQ, DIM // HEADS // 2)
    body = _f32(w["tok"], w["rms_att"], w["wq"], w["wk"], w["wv"], w["wo"], w["rms_ffn"])
    body += _f32(w["w1"], w["w2"], w["w3"], w["rms_final"], freqs, freqs)
    if not shared:
        body += _f32(w["cls"])
    path.write_bytes(head + body)


def _header_v12(version: int, shared: bool, group_size: int | None = None) -> bytes:
    head = struct.pack(
        "<Ii7iB", MAGIC, version, DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB, SEQ, int(shared)
    )
    if group_size is not None:
        head += struct.pack("<i", group_size)
    return head + b"\0" * (256 - len(head))


_MATRICES = ("tok", "wq", "wk", "wv", "wo", "w1", "w2", "w3")


def _write_v1(path: Path, w: dict[str, torch.Tensor], shared: bool) -> None:
    mats = [w[k] for k in _MATRICES] + ([] if shared else [w["cls"]])
    path.write_bytes(
        _header_v12(1, shared) + _f32(w["rms_att"], w["rms_ffn"], w["rms_final"], *mats)
    )


def _quantize_q80(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """llama2.c export.py quantize_q80: symmetric int8 per group of group_size values."""
    groups = w.float().reshape(-1, group_size)
    scale = groups.abs().max(dim=1).values / 127.0
    return torch.round(groups / scale[:, None]).to(torch.int8), scale


def _write_v2(path: Path, w: dict[str, torch.Tensor], shared: bool, group_size: int) -> dict:
    """Write a v2 file; return the dequantised weights the importer should reproduce."""
    names = list(_MATRICES) + ([] if shared else ["cls"])
    qs, scales, deq = [], [], dict(w)
    for name in names:
        q, s = _quantize_q80(w[name], group_size)
        qs.append(q.numpy().astype("i1").tobytes())
        scales.append(s)
        deq[name] = (q.float() * s[:, None]).reshape(w[name].shape)
    if shared:
        deq["cls"] = deq["tok"]
    body = _f32(w["rms_att"], w["rms_ffn"], w["rms_final"]) + b"".join(qs) + _f32(*scales)
    path.write_bytes(_header_v12(2, shared, group_size) + body)
    return deq


def _rmsnorm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * weight


def _reference_logits(w: dict[str, torch.Tensor], tokens: list[int]) -> torch.Tensor:
    """llama2.c model.py forward: interleaved-pair (complex) RoPE, GQA, SwiGLU, fp64."""
    w = {k: v.double() for k, v in w.items()}
    hs, t = DIM // HEADS, len(tokens)
    freqs = 1.0 / (10000.0 ** (torch.arange(0, hs, 2, dtype=torch.float64) / hs))
    angles = torch.outer(torch.arange(t, dtype=torch.float64), freqs)
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]

    def rope(x: torch.Tensor, heads: int) -> torch.Tensor:
        pairs = x.view(t, heads, hs // 2, 2)
        a, b = pairs[..., 0], pairs[..., 1]
        return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).view(t, heads, hs)

    x = w["tok"][tokens]
    mask = torch.full((t, t), -math.inf, dtype=torch.float64).triu(1)
    for layer in range(LAYERS):
        xn = _rmsnorm(x, w["rms_att"][layer])
        q = rope(xn @ w["wq"][layer].T, HEADS).transpose(0, 1)
        k = rope(xn @ w["wk"][layer].T, KV_HEADS).transpose(0, 1)
        v = (xn @ w["wv"][layer].T).view(t, KV_HEADS, hs).transpose(0, 1)
        k = k.repeat_interleave(HEADS // KV_HEADS, dim=0)  # query head h uses kv head h // 2
        v = v.repeat_interleave(HEADS // KV_HEADS, dim=0)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hs) + mask, dim=-1)
        x = x + (att @ v).transpose(0, 1).reshape(t, DIM) @ w["wo"][layer].T
        xn = _rmsnorm(x, w["rms_ffn"][layer])
        x = x + (F.silu(xn @ w["w1"][layer].T) * (xn @ w["w3"][layer].T)) @ w["w2"][layer].T
    return _rmsnorm(x, w["rms_final"]) @ w["cls"].T


def _hf_logits(path: Path, tokens: list[int]) -> torch.Tensor:
    from transformers import LlamaForCausalLM

    header, state = load_llama2c_state_dict(path)
    model = LlamaForCausalLM(llama2c_config(header)).eval()
    model.load_state_dict(state)
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].double()


TOKENS = [1, 5, 9, 33, 2, 17, 63, 40, 8, 8, 12]


@pytest.mark.parametrize(("version", "shared"), [(0, False), (0, True), (1, False), (1, True)])
def test_fp32_formats_match_reference_forward(tmp_path: Path, version: int, shared: bool) -> None:
    w = _random_weights(seed=version * 2 + shared, shared=shared)
    path = tmp_path / "model.bin"
    (_write_v0 if version == 0 else _write_v1)(path, w, shared)
    header = read_header(path)
    assert (header.version, header.shared_classifier) == (version, shared)
    assert header.vocab_size == VOCAB
    got = _hf_logits(path, TOKENS)
    assert torch.allclose(got, _reference_logits(w, TOKENS), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shared", [False, True])
def test_v2_q80_dequantises_exactly(tmp_path: Path, shared: bool) -> None:
    w = _random_weights(seed=11, shared=shared)
    path = tmp_path / "model_q80.bin"
    deq = _write_v2(path, w, shared, group_size=16)
    header = read_header(path)
    assert (header.version, header.group_size) == (2, 16)
    got = _hf_logits(path, TOKENS)
    assert torch.allclose(got, _reference_logits(deq, TOKENS), atol=1e-4, rtol=1e-4)


def test_rope_permutation_is_needed(tmp_path: Path) -> None:
    """Without the q/k permutation HF's rotate-half RoPE gives different logits."""
    w = _random_weights(seed=3, shared=True)
    path = tmp_path / "model.bin"
    _write_v0(path, w, shared=True)
    ref = _reference_logits(w, TOKENS)
    assert torch.allclose(_hf_logits(path, TOKENS), ref, atol=1e-4, rtol=1e-4)
    from transformers import LlamaForCausalLM

    header, state = load_llama2c_state_dict(path)
    for i in range(LAYERS):
        state[f"model.layers.{i}.self_attn.q_proj.weight"] = w["wq"][i]
        state[f"model.layers.{i}.self_attn.k_proj.weight"] = w["wk"][i]
    model = LlamaForCausalLM(llama2c_config(header)).eval()
    model.load_state_dict(state)
    with torch.no_grad():
        unpermuted = model(torch.tensor([TOKENS])).logits[0].double()
    assert not torch.allclose(unpermuted, ref, atol=1e-2)


def test_bad_files_are_user_errors(tmp_path: Path) -> None:
    w = _random_weights(seed=5, shared=True)
    good = tmp_path / "good.bin"
    _write_v0(good, w, shared=True)
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(UserError, match="truncated"):
        read_header(truncated)
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 255, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(UserError, match="does not look like a llama2.c checkpoint"):
        read_header(garbage)
    tiny = tmp_path / "tiny.bin"
    tiny.write_bytes(b"\0" * 10)
    with pytest.raises(UserError, match="too small"):
        read_header(tiny)
    future = tmp_path / "v9.bin"
    future.write_bytes(struct.pack("<Ii", MAGIC, 9) + b"\0" * 300)
    with pytest.raises(UserError, match="version 9"):
        read_header(future)
