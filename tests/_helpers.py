"""Small builders shared by several test modules (imported as ``from _helpers import ...``)."""

from __future__ import annotations

import string

from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

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
