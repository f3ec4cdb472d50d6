"""Small builders shared by several test modules (imported as ``from _helpers import ...``)."""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

#: the characters of the synthetic math corpus and GSM8K answers (#### N, <<a*b=c>>, 5%)
MATH_CHARS = string.ascii_letters + string.digits + " .,:;?!\n+-*/=()$#'<>%"


def char_tokenizer(chars: str = MATH_CHARS) -> PreTrainedTokenizerFast:
    """Character-level tokenizer (BPE with no merges): ids 0-3 are <pad> <s> </s> <unk>.

    Tiny test models need a real HF tokenizer but no training data for one; a character
    vocabulary is deterministic and covers every prompt the tests write.
    """
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", *chars])}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def save_tiny_llama(out: Path, tok: PreTrainedTokenizerFast, seed: int = 0) -> Path:
    """A random 2-layer Llama (hidden 32, GQA 4/2) saved with ``tok`` as an HF directory.

    Random weights at ``initializer_range`` 0.2 write varied text, so greedy answers differ
    from prompt to prompt: enough to tell two scorers or two engines apart.
    """
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


# The tiny GPT and training settings the train-level tests share (deterministic fp32 on one
# thread, so resumed and uninterrupted runs can be compared bit for bit).
TINY_TRAIN = [
    "model.d_model=64",
    "model.n_layers=2",
    "model.n_heads=2",
    "model.d_ff=128",
    "train.seq_len=32",
    "train.batch_size=8",
    "train.lr=3e-3",
    "train.warmup_steps=5",
    "train.threads=1",
    "train.deterministic=true",
    "train.dtype=fp32",
    "train.log_every=1",
]


def prepare_synthetic(out: Path, problems: int = 600) -> Path:
    """Token shards of ``problems`` synthetic problems with a 300-token tokenizer at ``out``."""
    from shoestring.data import text

    text.run(None, out, vocab_size=300, synthetic=problems, quiet=True)
    return out


# The hybrid trainer's tests: a smaller GPT and phases short enough for a few dozen steps.
TINY_HYBRID = [
    "model.d_model=32",
    "model.n_layers=2",
    "model.n_heads=2",
    "model.d_ff=64",
    "train.seq_len=32",
    "train.batch_size=8",
    "train.lr=3e-3",
    "train.warmup_steps=5",
    "train.threads=1",
    "train.deterministic=true",
    "train.dtype=fp32",
    "train.compile=off",
    "train.trainer=hybrid",
    "hybrid.warmup_steps=4",
    "hybrid.min_full_steps=4",
    "hybrid.max_predict_steps=4",
    "hybrid.correct_steps=2",
    "hybrid.monitor_every=2",
    "hybrid.confidence_threshold=0.3",
]
