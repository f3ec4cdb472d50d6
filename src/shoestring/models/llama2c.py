"""This module is one idea: importing llama2.c checkpoints (karpathy/llama2.c ``.bin``) as
Hugging Face Llama models (header, weights, RoPE permutation, tokenizer, output directory).

Why: llama2.c's tiny TinyStories models (stories260K, 15M, 42M, 110M) are real pretrained
models small enough to test a whole pipeline on a laptop. Converted to a ``LlamaForCausalLM``
directory (safetensors + config + tokenizer) they load with ``AutoModelForCausalLM`` and
``AutoTokenizer`` like any other model, so every shoestring command accepts them unchanged.

Formats read (all little-endian, see llama2.c ``export.py``/``run.c``):

- **version 0 ("legacy")**: 7 int32 ``dim, hidden_dim, n_layers, n_heads, n_kv_heads,
  vocab_size, seq_len`` (a negative vocab_size means an unshared classifier), then float32
  ``token_embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final,
  freq_cis_real, freq_cis_imag[, wcls]``, each stacked over layers.
- **version 1**: uint32 magic ``0x616b3432`` ("ak42"), int32 version, the 7 ints, a uint8
  shared-classifier flag, zero padding to 256 bytes, then float32 ``rms_att, rms_ffn,
  rms_final, token_embedding, wq, wk, wv, wo, w1, w2, w3[, wcls]``.
- **version 2**: as version 1 plus an int32 group size in the header; norms in float32, all
  matrices Q8_0 (int8 values for every matrix in order, then all float32 group scales).
  Dequantised to float32 here (the result carries the quantisation error of the file).

RoPE: llama2.c rotates adjacent pairs (2i, 2i+1) of each head (complex form); HF Llama
rotates the two halves of each head (``rotate_half``). The same attention results need the
rows of wq and wk permuted within each head, exactly as HF's
``convert_llama_weights_to_hf.permute`` does (:func:`permute_rope`).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
from sentencepiece import sentencepiece_model_pb2
from tokenizers import Regex, normalizers, pre_tokenizers
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaTokenizerFast,  # v5: an alias of LlamaTokenizer
)

from shoestring.errors import UserError
from shoestring.models.loading import quiet_hf_progress

__all__ = [
    "ConversionReport",
    "Llama2cHeader",
    "convert_llama2c",
    "llama2c_config",
    "load_llama2c_state_dict",
    "permute_rope",
    "read_header",
]

MAGIC = 0x616B3432  # "ak42" read as a little-endian uint32
HEADER_BYTES_V12 = 256
# Strings used to check the converted tokenizer against sentencepiece itself.
_TOKENIZER_PROBES = (
    "Once upon a time, there was a little girl named Lily.",
    "  two leading spaces and  double  spaces, trailing space ",
    "tabs\tand a space before a newline \n end",
    "Line one.\nLine two\n\nnew paragraph",
    "Numbers 1,234.50 and $5; caf\u00e9 \u00fcber \u4f60\u597d \U0001f600",
    "#### 72",
)


@dataclass(frozen=True)
class Llama2cHeader:
    """What the header of a llama2.c ``.bin`` says (vocab_size always positive here)."""

    version: int
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool
    group_size: int | None = None

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    @property
    def header_bytes(self) -> int:
        return 28 if self.version == 0 else HEADER_BYTES_V12

    def expected_bytes(self) -> int:
        """The exact file size this header implies (used to reject truncated files)."""
        d, h, n, v = self.dim, self.hidden_dim, self.n_layers, self.vocab_size
        kv = self.n_kv_heads * self.head_size
        norms = n * d * 2 + d  # rms_att and rms_ffn per layer, rms_final
        # the embedding, then per layer wq, wk, wv, wo and the three MLP matrices
        mats = v * d + n * (d * d + 2 * kv * d + d * d + 3 * d * h)
        cls = 0 if self.shared_classifier else v * d
        if self.version == 0:
            freqs = 2 * self.seq_len * self.head_size // 2  # freq_cis real and imaginary
            return self.header_bytes + 4 * (norms + mats + freqs + cls)
        if self.version == 1:
            return self.header_bytes + 4 * (norms + mats + cls)
        assert self.group_size is not None
        qvals = mats + cls  # Q8_0: one int8 per weight plus one fp32 scale per group
        return self.header_bytes + 4 * norms + qvals + 4 * (qvals // self.group_size)


def read_header(path: str | Path) -> Llama2cHeader:
    """Parse and sanity-check the header of a llama2.c checkpoint.

    Raises UserError when the file is not a llama2.c checkpoint of a known version, or when
    its size does not match what the header implies (truncated or foreign file).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(HEADER_BYTES_V12)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(head) < 28:
        raise UserError(f"{path} is too small ({size} bytes) to be a llama2.c checkpoint")
    group_size = None
    if struct.unpack_from("<I", head, 0)[0] == MAGIC:
        version = struct.unpack_from("<i", head, 4)[0]
        if version not in (1, 2):
            raise UserError(f"{path}: llama2.c format version {version} is not supported (0-2)")
        params = struct.unpack_from("<7i", head, 8)
        shared = bool(head[36])  # the flag byte after magic, version and the 7 ints
        if version == 2:
            group_size = struct.unpack_from("<i", head, 37)[0]
        vocab = params[5]
    else:
        version = 0
        params = struct.unpack_from("<7i", head, 0)
        shared = params[5] > 0  # version 0 stores an unshared classifier as a negative vocab
        vocab = abs(params[5])
    dim, hidden, n_layers, n_heads, n_kv, _, seq_len = params
    sane = (
        min(dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len) > 0
        and dim % n_heads == 0
        and n_heads % n_kv == 0
        and (dim // n_heads) % 2 == 0
        and max(dim, hidden, vocab) < 1 << 24
        and (group_size is None or group_size > 0)
    )
    if not sane:
        raise UserError(
            f"{path} does not look like a llama2.c checkpoint (header {params}); expected "
            "dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len"
        )
    header = Llama2cHeader(
        version=version,
        dim=dim,
        hidden_dim=hidden,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        vocab_size=vocab,
        seq_len=seq_len,
        shared_classifier=shared,
        group_size=group_size,
    )
    expected = header.expected_bytes()
    if size != expected:
        raise UserError(
            f"{path} has {size:,} bytes but its header (version {version}, dim={dim}, "
            f"layers={n_layers}, vocab={vocab}) implies {expected:,}: truncated, or not a "
            "standard llama2.c export"
        )
    return header


def permute_rope(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder q/k projection rows from interleaved-pair RoPE to HF's rotate-half RoPE.

    Within each head, output rows (0, 1, 2, 3, ...) = pairs (x0, y0, x1, y1, ...) become
    (x0, x1, ..., y0, y1, ...). Same as HF's convert_llama_weights_to_hf ``permute``.
    """
    out_dim, in_dim = w.shape
    return (
        w.view(n_heads, out_dim // n_heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)
    )


class _Reader:
    """Sequential reads from a memory-mapped file, so a big checkpoint is not copied twice."""

    def __init__(self, path: Path, offset: int) -> None:
        self.data = np.memmap(path, dtype=np.uint8, mode="r")
        self.pos = offset

    def take(self, dtype: str, *shape: int) -> np.ndarray:
        count = int(np.prod(shape))
        nbytes = count * np.dtype(dtype).itemsize
        arr = self.data[self.pos : self.pos + nbytes].view(dtype).reshape(shape)
        self.pos += nbytes
        return arr

    def f32(self, *shape: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.take("<f4", *shape), dtype=np.float32))


def _read_raw(path: Path, h: Llama2cHeader) -> dict[str, torch.Tensor]:
    """llama2.c tensors by llama2.c name, layer-stacked, in llama2.c's own layout."""
    d, hd, n, v = h.dim, h.hidden_dim, h.n_layers, h.vocab_size
    kv = h.n_kv_heads * h.head_size
    r = _Reader(path, h.header_bytes)
    mats = [
        ("wq", (n, d, d)),
        ("wk", (n, kv, d)),
        ("wv", (n, kv, d)),
        ("wo", (n, d, d)),
        ("w1", (n, hd, d)),
        ("w2", (n, d, hd)),
        ("w3", (n, hd, d)),
    ]
    t: dict[str, torch.Tensor] = {}
    if h.version == 0:
        t["tok"] = r.f32(v, d)
        t["rms_att"] = r.f32(n, d)
        for name, shape in mats[:4]:
            t[name] = r.f32(*shape)
        t["rms_ffn"] = r.f32(n, d)
        for name, shape in mats[4:]:
            t[name] = r.f32(*shape)
        t["rms_final"] = r.f32(d)
        r.take("<f4", 2 * h.seq_len * h.head_size // 2)  # freq_cis_real/imag: recomputed by HF
        if not h.shared_classifier:
            t["cls"] = r.f32(v, d)
        return t
    t["rms_att"] = r.f32(n, d)
    t["rms_ffn"] = r.f32(n, d)
    t["rms_final"] = r.f32(d)
    order = [("tok", (v, d)), *mats] + ([] if h.shared_classifier else [("cls", (v, d))])
    if h.version == 1:
        for name, shape in order:
            t[name] = r.f32(*shape)
        return t
    # version 2: every quantised matrix's int8 values first, then all the fp32 scales
    assert h.group_size is not None
    qs = [(name, shape, r.take("i1", int(np.prod(shape)))) for name, shape in order]
    for name, shape, q in qs:
        scales = r.f32(q.size // h.group_size)  # the scales follow in the same matrix order
        values = torch.from_numpy(np.array(q, dtype=np.float32)).view(-1, h.group_size)
        t[name] = (values * scales[:, None]).reshape(shape)
    return t


def load_llama2c_state_dict(path: str | Path) -> tuple[Llama2cHeader, dict[str, torch.Tensor]]:
    """Read a llama2.c checkpoint into a HF ``LlamaForCausalLM`` state dict (RoPE-permuted)."""
    path = Path(path)
    h = read_header(path)
    raw = _read_raw(path, h)
    sd: dict[str, torch.Tensor] = {"model.embed_tokens.weight": raw["tok"]}
    for i in range(h.n_layers):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = raw["rms_att"][i]
        sd[p + "self_attn.q_proj.weight"] = permute_rope(raw["wq"][i], h.n_heads)
        sd[p + "self_attn.k_proj.weight"] = permute_rope(raw["wk"][i], h.n_kv_heads)
        sd[p + "self_attn.v_proj.weight"] = raw["wv"][i]
        sd[p + "self_attn.o_proj.weight"] = raw["wo"][i]
        sd[p + "post_attention_layernorm.weight"] = raw["rms_ffn"][i]
        sd[p + "mlp.gate_proj.weight"] = raw["w1"][i]
        sd[p + "mlp.down_proj.weight"] = raw["w2"][i]
        sd[p + "mlp.up_proj.weight"] = raw["w3"][i]
    sd["model.norm.weight"] = raw["rms_final"]
    sd["lm_head.weight"] = raw["tok"] if h.shared_classifier else raw["cls"]
    return h, {k: v.contiguous() for k, v in sd.items()}


def llama2c_config(h: Llama2cHeader) -> LlamaConfig:
    """The HF LlamaConfig equivalent to a llama2.c header (llama2.c's fixed eps and theta)."""
    return LlamaConfig(
        vocab_size=h.vocab_size,
        hidden_size=h.dim,
        intermediate_size=h.hidden_dim,
        num_hidden_layers=h.n_layers,
        num_attention_heads=h.n_heads,
        num_key_value_heads=h.n_kv_heads,
        max_position_embeddings=h.seq_len,
        rms_norm_eps=1e-5,  # llama2.c model.py / run.c
        rope_theta=10000.0,  # llama2.c precompute_freqs_cis default
        hidden_act="silu",
        tie_word_embeddings=h.shared_classifier,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=1,
        eos_token_id=2,
        torch_dtype="float32",
    )


@dataclass
class ConversionReport:
    """What :func:`convert_llama2c` wrote, for the CLI to print and tests to check."""

    out_dir: Path
    header: Llama2cHeader
    n_params: int
    files: list[tuple[str, int]] = field(default_factory=list)  # (name, bytes)
    tokenizer_check: str = ""

    def lines(self) -> list[str]:
        h = self.header
        shared = "shared with embedding" if h.shared_classifier else "separate"
        q = f", Q8_0 group {h.group_size} dequantised to fp32" if h.version == 2 else ""
        out = [
            f"llama2.c v{h.version}{q}: dim={h.dim} hidden={h.hidden_dim} layers={h.n_layers} "
            f"heads={h.n_heads} kv_heads={h.n_kv_heads} vocab={h.vocab_size} "
            f"seq_len={h.seq_len} classifier={shared}",
            f"parameters: {self.n_params:,} (fp32)",
            f"tokenizer: {self.tokenizer_check}",
            f"wrote {self.out_dir}/",
        ]
        out += [f"  {name:<28} {size:>12,} bytes" for name, size in self.files]
        out.append(f"load with: AutoModelForCausalLM.from_pretrained({str(self.out_dir)!r})")
        return out


def _convert_tokenizer(sp_model: Path, workdir: Path, vocab_size: int) -> str:
    """Write a fast Llama tokenizer converted from a sentencepiece model into ``workdir``.

    Returns a one-line result of comparing it with sentencepiece on probe strings.
    """
    try:
        sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    except Exception as exc:
        hint = ""
        if sp_model.suffix == ".bin":
            hint = (
                " (a .bin tokenizer is llama2.c's own export; pass the sentencepiece "
                ".model it was made from, e.g. tok512.model)"
            )
        raise UserError(f"{sp_model} is not a sentencepiece model: {exc}{hint}") from exc
    if sp.get_piece_size() != vocab_size:
        raise UserError(
            f"tokenizer {sp_model} has {sp.get_piece_size()} pieces but the model's vocab is "
            f"{vocab_size}: they do not belong together"
        )
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(sp_model.read_bytes())
    spec = proto.normalizer_spec

    shutil.copyfile(sp_model, workdir / "tokenizer.model")
    tok = LlamaTokenizerFast.from_pretrained(
        str(workdir),
        add_bos_token=True,  # llama2.c models saw BOS before every story
        add_eos_token=False,
        add_prefix_space=spec.add_dummy_prefix,
        legacy=False,
    )
    if spec.remove_extra_whitespaces:
        # sentencepiece trims ASCII spaces at both ends and collapses runs of them before
        # encoding; HF's Llama converter ignores that flag, so the model would see token
        # sequences it never saw in training. \A and \z, not ^ and $: Oniguruma's ^/$ also
        # match at newlines, and sentencepiece keeps a space before "\n".
        tok.backend_tokenizer.normalizer = normalizers.Sequence(
            [
                normalizers.Replace(Regex(" {2,}"), " "),
                normalizers.Replace(Regex(r"\A "), ""),
                normalizers.Replace(Regex(r" \z"), ""),
            ]
        )
        if spec.add_dummy_prefix:
            # "first" only prepends when the text still starts at original offset 0, which
            # trimmed leading spaces break; "always" matches sentencepiece (these
            # vocabularies have no special tokens inside text).
            tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
                replacement="\u2581", prepend_scheme="always", split=False
            )
    tok.save_pretrained(str(workdir))
    cfg_path = workdir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    # Load as the generic fast tokenizer: LlamaTokenizer rebuilds its pipeline in __init__
    # (transformers 5) and would drop the whitespace normaliser saved in tokenizer.json.
    cfg.update(
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": True,
            "add_eos_token": False,
        }
    )
    cfg.pop("is_local", None)  # an artefact of where it was built, not of the tokenizer
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")

    tok = AutoTokenizer.from_pretrained(str(workdir))  # check what users will load
    mismatches = [
        s for s in _TOKENIZER_PROBES if tok.encode(s) != [tok.bos_token_id, *sp.encode(s)]
    ]
    if mismatches:
        return (
            f"WARNING: HF tokenizer differs from sentencepiece on {len(mismatches)} of "
            f"{len(_TOKENIZER_PROBES)} probe strings (e.g. {mismatches[0]!r})"
        )
    return (
        f"{len(tok)} tokens, bos={tok.bos_token_id} eos={tok.eos_token_id}; matches "
        f"sentencepiece on {len(_TOKENIZER_PROBES)} probe strings"
    )


def convert_llama2c(
    model_path: str | Path,
    tokenizer_path: str | Path,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
) -> ConversionReport:
    """Convert a llama2.c checkpoint + sentencepiece tokenizer into a HF model directory.

    The directory is built under a temporary name next to ``out_dir`` and renamed into
    place when complete, so an interrupted import never leaves a half-written model. An
    existing non-empty ``out_dir`` is an error unless ``overwrite=True``.
    """
    model_path, tokenizer_path, out_dir = Path(model_path), Path(tokenizer_path), Path(out_dir)
    if not model_path.is_file():
        raise UserError(f"llama2.c checkpoint not found: {model_path}")
    if not tokenizer_path.is_file():
        raise UserError(f"tokenizer not found: {tokenizer_path}")
    if out_dir.exists() and not (out_dir.is_dir() and not any(out_dir.iterdir())):
        if not overwrite:
            raise UserError(f"{out_dir} already exists and is not empty; pass --overwrite")
        if not out_dir.is_dir():
            raise UserError(f"{out_dir} exists and is not a directory")

    header, state = load_llama2c_state_dict(model_path)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        work.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary directory
        config = llama2c_config(header)
        model = LlamaForCausalLM(config)
        missing, unexpected = model.load_state_dict(state, strict=False)
        # a shared classifier has no lm_head tensor of its own: tie_weights supplies it
        missing = [k for k in missing if not (header.shared_classifier and k == "lm_head.weight")]
        if missing or unexpected:
            raise RuntimeError(f"state dict mismatch: missing={missing} unexpected={unexpected}")
        if header.shared_classifier:
            model.tie_weights()
        model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2)
        model.eval()
        with quiet_hf_progress():
            model.save_pretrained(str(work), safe_serialization=True)
        check = _convert_tokenizer(tokenizer_path, work, header.vocab_size)
        files = []
        for p in sorted(work.iterdir()):
            p.chmod(0o644)  # some writers create private temp files; this is a plain output
            files.append((p.name, p.stat().st_size))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    n_params = sum(p.numel() for p in model.parameters())
    return ConversionReport(
        out_dir=out_dir, header=header, n_params=n_params, files=files, tokenizer_check=check
    )
