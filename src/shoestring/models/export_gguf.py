"""``shoestring export --to gguf``: a Llama-exact shoestring GPT as one GGUF file for llama.cpp
and Ollama, written with the ``gguf`` package (llama.cpp's own writer library).

What llama.cpp's ``llama`` architecture expects, and this writes: its tensor names
(``blk.N.attn_q.weight`` ...), q/k rows permuted from Hugging Face's rotate-half RoPE layout
into llama.cpp's pairwise layout (the permutation ``convert_hf_to_gguf.py`` applies), norms in
f32 and matrices in f32 or f16, the hyper-parameters under ``llama.*`` and the byte-level BPE
tokenizer (tokens, merges, special ids, the pre-tokenizer name llama.cpp uses for the same
split). The model must be exactly Llama (``export_llama.llama_refusals``); the tokenizer must
be byte-level BPE with a split llama.cpp knows, else the export is refused with the reason.

llama.cpp itself is not a dependency, so :func:`gguf_logits` is the check: it reads the file
back with ``gguf``'s reader and computes the forward pass from those tensors the way llama.cpp
does (pairwise RoPE on the permuted rows, its RMSNorm, SwiGLU, tied output when ``output`` is
absent), independently of the shoestring and transformers model code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from shoestring.errors import UserError
from shoestring.models.export_llama import (
    ExportReport,
    commit_out,
    llama_refusals,
    load_source_model,
    max_logit_difference,
    probe_ids,
    resolve_model_dir,
)

__all__ = [
    "GGUF_DTYPES",
    "add_gguf_shape",
    "add_gguf_tokenizer",
    "export_gguf",
    "gguf_logits",
    "gguf_pre_tokenizer",
]

GGUF_DTYPES = ("f32", "f16")

# shoestring parameter name (after "model.layers.N.") -> llama.cpp tensor name (after "blk.N.")
_LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def _import_gguf() -> Any:
    try:
        import gguf  # deferred: an optional dependency (the `export` extra)
    except ImportError as exc:
        raise UserError(
            "--to gguf needs the gguf package: pip install 'shoestring[export]' "
            "(or pip install gguf)"
        ) from exc
    return gguf


def permute_rope_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of q/k from HF's rotate-half layout (pairs i, i+d/2) to llama.cpp's (2i, 2i+1)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def gguf_pre_tokenizer(tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's name for this tokenizer's split, or a ``UserError`` saying why none fits.

    shoestring's tokenizer splits every digit, then applies GPT-2's byte-level regex: that is
    llama.cpp's ``starcoder`` pre-tokenizer (regexes ``\\p{N}`` then the GPT-2 pattern). A plain
    GPT-2 byte-level split is ``gpt-2``.
    """
    model = tokenizer_json.get("model") or {}
    decoder = tokenizer_json.get("decoder") or {}
    if (
        model.get("type") != "BPE"
        or model.get("byte_fallback")
        or decoder.get("type") != ("ByteLevel")
    ):
        raise UserError(
            "--to gguf writes byte-level BPE tokenizers only (this one is "
            f"{model.get('type')}, decoder {decoder.get('type')}); export with --to llama and "
            "convert that with llama.cpp's convert_hf_to_gguf.py"
        )
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [(s.get("type"), s.get("individual_digits"), s.get("use_regex", True)) for s in steps]
    byte_level = ("ByteLevel", None, True)
    if kinds == [("Digits", True, True), byte_level] and not steps[1].get("add_prefix_space"):
        return "starcoder"
    if kinds == [byte_level] and not steps[0].get("add_prefix_space"):
        return "gpt-2"
    raise UserError(
        f"the tokenizer's pre-tokenizer {json.dumps(pre)[:200]} has no llama.cpp equivalent "
        "this exporter knows; export with --to llama and use llama.cpp's convert_hf_to_gguf.py"
    )


def add_gguf_shape(
    writer: Any,
    *,
    context: int,
    hidden: int,
    layers: int,
    ffn: int,
    heads: int,
    kv_heads: int,
    norm_eps: float,
    rope_theta: float,
) -> None:
    """The hyper-parameters every llama.cpp decoder architecture reads (``llama``, ``qwen2``
    ...), under the writer's architecture prefix."""
    writer.add_context_length(context)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(norm_eps)
    writer.add_rope_freq_base(float(rope_theta))


def add_gguf_tokenizer(writer: Any, gguf: Any, model_dir: Path, n_vocab: int) -> list[str]:
    """Tokens, merges, special ids and the split; returns notes for the report."""
    tokenizer_json = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    pre = gguf_pre_tokenizer(tokenizer_json)
    vocab = gguf.BpeVocab(model_dir)
    tokens: list[bytes] = []
    types: list[int] = []
    for text, _score, kind in vocab.all_tokens():
        tokens.append(text if isinstance(text, bytes) else str(text).encode("utf-8"))
        types.append(int(kind))
    # Added tokens (<|endoftext|> ...) are control tokens for llama.cpp, as its converter marks
    # them: parsed as one token in text and not printed, wherever they sit in the vocabulary.
    for added in tokenizer_json.get("added_tokens") or []:
        if 0 <= added["id"] < len(types):
            special = added.get("special", False)
            types[added["id"]] = int(
                gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED
            )
    notes = []
    if len(tokens) > n_vocab:
        raise UserError(f"the tokenizer has {len(tokens)} tokens but the model only {n_vocab}")
    if len(tokens) < n_vocab:  # embedding rows no token uses (as llama.cpp's converter pads)
        notes.append(f"{n_vocab - len(tokens)} unused embedding rows named [PAD<id>]")
        for i in range(len(tokens), n_vocab):
            tokens.append(f"[PAD{i}]".encode())
            types.append(int(gguf.TokenType.UNUSED))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=n_vocab)
    special.add_to_gguf(writer, quiet=True)
    # shoestring's tokenizers add no BOS; say so, or llama.cpp would prepend one
    post = json.dumps(tokenizer_json.get("post_processor") or {})
    adds_bos = "TemplateProcessing" in post
    writer.add_add_bos_token(adds_bos)
    notes.append(f"tokenizer: byte-level BPE, pre-tokenizer {pre!r}, add_bos={adds_bos}")
    return notes


def _write(model: Any, model_dir: Path, path: Path, dtype: str) -> list[str]:
    gguf = _import_gguf()
    c = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(model_dir.parent.name if model_dir.name == "model" else model_dir.name)
    add_gguf_shape(
        writer,
        context=c.max_seq_len,
        hidden=c.d_model,
        layers=c.n_layers,
        ffn=c.d_ff,
        heads=c.n_heads,
        kv_heads=c.n_heads,
        norm_eps=c.norm_eps,
        rope_theta=c.rope_theta,
    )
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_vocab_size(c.vocab_size)
    if c.rope_scaling != 1.0:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(c.rope_scaling)
    ftype = gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16
    writer.add_file_type(int(ftype))
    notes = add_gguf_tokenizer(writer, gguf, model_dir, c.vocab_size)

    def add(name: str, t: torch.Tensor) -> None:
        t = t.detach().float()
        # llama.cpp keeps 1-D tensors (norms) in f32 whatever the file type
        array = t.numpy().astype(np.float16 if dtype == "f16" and t.dim() > 1 else np.float32)
        writer.add_tensor(name, array)

    state = model.state_dict()
    add("token_embd.weight", state["model.embed_tokens.weight"])
    for i in range(c.n_layers):
        for ours, theirs in _LAYER_TENSORS.items():
            t = state[f"model.layers.{i}.{ours}"]
            if theirs in ("attn_q.weight", "attn_k.weight"):
                t = permute_rope_rows(t, c.n_heads)
            add(f"blk.{i}.{theirs}", t)
    add("output_norm.weight", state["model.norm.weight"])
    if not c.tie_word_embeddings:
        add("output.weight", state["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    return notes


# ----------------------------------------------------------------------------- reading back


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def _rope_pairwise(x: torch.Tensor, pos: torch.Tensor, base: float, scale: float) -> torch.Tensor:
    """llama.cpp's normal (non-NeoX) RoPE: rotate adjacent pairs (2i, 2i+1). x: [h, T, d]."""
    d = x.shape[-1]
    inv = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = (pos.double()[:, None] / scale) * inv  # [T, d/2]
    cos, sin = ang.cos().float(), ang.sin().float()
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


@torch.no_grad()
def gguf_logits(path: str | Path, ids: torch.Tensor) -> torch.Tensor:
    """Logits [1, T, vocab] of the GGUF file at ``path`` for ``ids`` [1, T], computed from its
    tensors and metadata alone, as llama.cpp's ``llama`` architecture does (f32 math)."""
    gguf = _import_gguf()
    reader = gguf.GGUFReader(str(path))
    w = {t.name: torch.from_numpy(np.array(t.data, dtype=np.float32)) for t in reader.tensors}
    n_layers = int(_field(reader, "llama.block_count"))
    n_head = int(_field(reader, "llama.attention.head_count"))
    eps = float(_field(reader, "llama.attention.layer_norm_rms_epsilon"))
    base = float(_field(reader, "llama.rope.freq_base"))
    scale = float(_field(reader, "llama.rope.scaling.factor", 1.0))

    def rms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    x = w["token_embd.weight"][ids[0]]  # [T, d_model]
    T = x.shape[0]
    pos = torch.arange(T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(n_layers):
        p = f"blk.{i}."
        h = rms(x, w[p + "attn_norm.weight"])
        q = (h @ w[p + "attn_q.weight"].T).view(T, n_head, -1).transpose(0, 1)
        k = (h @ w[p + "attn_k.weight"].T).view(T, n_head, -1).transpose(0, 1)
        v = (h @ w[p + "attn_v.weight"].T).view(T, n_head, -1).transpose(0, 1)
        q, k = _rope_pairwise(q, pos, base, scale), _rope_pairwise(k, pos, base, scale)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        y = (att @ v).transpose(0, 1).reshape(T, -1)
        x = x + y @ w[p + "attn_output.weight"].T
        h = rms(x, w[p + "ffn_norm.weight"])
        gate, up = h @ w[p + "ffn_gate.weight"].T, h @ w[p + "ffn_up.weight"].T
        x = x + (F.silu(gate) * up) @ w[p + "ffn_down.weight"].T
    x = rms(x, w["output_norm.weight"])
    head = w.get("output.weight", w["token_embd.weight"])  # llama.cpp ties when absent
    return (x @ head.T)[None]


def export_gguf(
    source: str | Path, out: str | Path, dtype: str = "f16", overwrite: bool = False
) -> ExportReport:
    """Write ``out`` (one ``.gguf`` file) and check it against the source model's logits."""
    if dtype not in GGUF_DTYPES:
        raise UserError(f"--dtype {dtype!r} is not supported for gguf; choose f32 or f16")
    _import_gguf()
    model_dir = resolve_model_dir(source)
    model = load_source_model(model_dir)
    reasons = llama_refusals(model.config)
    if reasons:
        raise UserError(
            "llama.cpp's llama architecture cannot run this model as it is: "
            + "; ".join(reasons)
            + ". It still loads in transformers with trust_remote_code=True"
        )
    if not (model_dir / "tokenizer.json").is_file():
        raise UserError(f"{model_dir} has no tokenizer.json; GGUF carries the tokenizer")
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp"
    tmp.unlink(missing_ok=True)
    notes = _write(model, model_dir, tmp, dtype)
    diff = max_logit_difference(
        model, lambda ids: gguf_logits(tmp, ids), probe_ids(model.config.vocab_size)
    )
    commit_out(tmp, out)
    size_mb = out.stat().st_size / 2**20
    notes.append(f"{size_mb:.1f} MiB, {dtype} matrices, f32 norms; llama.cpp architecture 'llama'")
    return ExportReport(model_dir, out, f"GGUF, {dtype}", diff, notes)
