"""A tiny model that gets a fair share of GSM8K-format problems right, for agreement checks.

Why this exists: two scorers can only be shown to judge right answers the same way on a model
that gives right answers, and a small real model (stories260K) answers no GSM8K problem right.
So this module writes toy problems in GSM8K's format ("question", "answer" ending
``#### N``) - half ask how many legs a cat, bird or spider has, the rest copy a number ("Ann
has 7 cats. How many cats does Ann have?") or add two digits - and trains a 2-layer Llama for a
few hundred steps on documents laid out exactly as the protocols under test ask (lm-eval's
5-shot "Question:/Answer:", the chain-of-thought "Q:/A: ... The answer is N." and the chat
template's turns), its loss taken on the answers only. The legs facts are learnt within those
steps and copying or adding mostly is not, so greedy answers are a mix of right and wrong.

The tokenizer is character-level (every prompt character is one token, nothing unknown), adds
a BOS token as Llama's does, and carries a chat template that writes the BOS itself, so
lm-eval's rule "no special tokens when the text already starts with BOS" is exercised.
Used by ``benchmarks/lm_eval_vs_bench.py`` and ``tests/test_lm_eval_agreement.py``.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shoestring.data.gsm8k import Problem
from shoestring.scoring import lm_eval_rules
from shoestring.scoring.protocols import Protocol

__all__ = [
    "CHAT_TEMPLATE",
    "ToyProblem",
    "toy_problems",
    "toy_tokenizer",
    "train_toy_model",
    "training_text",
    "write_gsm8k_files",
]

NAMES = ("Ann", "Bob", "Cal", "Dee")
#: (animal, legs): the facts the model learns
LEGS = (("cat", 4), ("bird", 2), ("spider", 8))
#: a preamble a quarter of the questions carry, so some few-shot prompts outgrow the context
FILLER = "On a long strip of paper she writes it down. "
CHARS = string.ascii_letters + string.digits + " .,:;?!\n+-*/=()$#'<>%"
#: Llama-style: the template writes the BOS token, each assistant turn ends with EOS.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
    "{{ 'User: ' + m['content'] + '\\n' }}{% else %}"
    "{{ 'Assistant: ' + m['content'] + eos_token + '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


@dataclass(frozen=True)
class ToyProblem:
    """One toy problem: the question, its one-line working, and the number it comes to."""

    question: str
    work: str
    number: int

    def gsm8k_answer(self) -> str:
        """The GSM8K ``answer`` field: working, then ``#### N``."""
        return f"{self.work}\n#### {self.number}"

    def cot_answer(self) -> str:
        """The chain-of-thought exemplars' form: working, then "The answer is N."."""
        return f"{self.work} The answer is {self.number}."


def toy_problems(n: int, seed: int) -> list[ToyProblem]:
    """``n`` problems: half ask how many legs an animal has (a fact the model learns, so it
    answers them right), the rest copy a number or add two digits (mostly wrong from a model
    this small); a quarter carry a preamble."""
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        a, b, name = rnd.randrange(10), rnd.randrange(10), rnd.choice(NAMES)
        fill = FILLER if rnd.random() < 0.25 else ""
        kind = rnd.random()
        if kind < 0.5:
            animal, legs = rnd.choice(LEGS)
            q = f"{fill}{name} has a {animal}. How many legs does the {animal} have?"
            out.append(ToyProblem(q, f"Each {animal} has {legs} legs.", legs))
        elif kind < 0.75:
            q = f"{fill}{name} has {a} cats. How many cats does {name} have?"
            out.append(ToyProblem(q, f"{name} has {a} cats.", a))
        else:
            out.append(ToyProblem(f"{fill}What is {a} + {b}?", f"{a} + {b} = {a + b}.", a + b))
    return out


def write_gsm8k_files(
    folder: Path, train: Sequence[ToyProblem], test: Sequence[ToyProblem], numeric_only_every: int
) -> list[str]:
    """``train.jsonl`` and ``test.jsonl`` in GSM8K's format; returns each test problem's kind.

    Every ``numeric_only_every``-th test answer is written ``N.00`` ("numeric-only": right for
    a numeric judge, wrong for lm-eval's exact match); 0 writes none.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"question": p.question, "answer": p.gsm8k_answer()} for p in train]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines, kinds = [], []
    for i, p in enumerate(test):
        odd = numeric_only_every and i % numeric_only_every == numeric_only_every - 1
        gold = f"{p.number}.00" if odd else str(p.number)
        lines.append(json.dumps({"question": p.question, "answer": f"{p.work}\n#### {gold}"}))
        kinds.append("numeric-only" if odd else "exact")
    (folder / "test.jsonl").write_text("".join(line + "\n" for line in lines))
    return kinds


def toy_tokenizer() -> Any:
    """Character-level tokenizer: ids 0-3 <pad> <s> </s> <unk>, BOS added, chat template."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", *CHARS])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _answer_in_style(protocol: Protocol, p: ToyProblem) -> str:
    """The answer text a protocol's shots and expected responses carry."""
    cot = (
        protocol.matcher == "lm-eval"
        and protocol.strict_pattern == lm_eval_rules.COT_STRICT_PATTERN
    )
    return p.cot_answer() if cot else p.gsm8k_answer()


def training_text(
    protocol: Protocol, tokenizer: Any, problems: Sequence[ToyProblem]
) -> tuple[str, list[tuple[int, int]]]:
    """One training document and the character spans the loss is taken on.

    The document is ``problems`` laid out as ``protocol`` lays out its shots, each answered;
    the spans are the answers with what follows them up to the next question's ":" (plain
    layouts, so the model learns to write the stop string) or the EOS token (chat), so training
    spends itself on answering rather than on predicting random questions.
    """
    shots = [
        Problem(i, p.question, _answer_in_style(protocol, p), str(p.number))
        for i, p in enumerate(problems)
    ]
    if protocol.is_chat:
        turns = protocol.messages(shots[-1].question, shots[:-1])
        turns.append({"role": "assistant", "content": shots[-1].answer})
        text = tokenizer.apply_chat_template(turns, tokenize=False)
        tail = tokenizer.eos_token
    else:
        text = "\n\n".join(
            protocol.template.format(question=s.question) + f" {s.answer}" for s in shots
        )
        tail = ":"
    spans, pos = [], 0
    for shot in shots:
        start = text.index(shot.answer, pos)
        pos = start + len(shot.answer)
        start -= text[start - 1] == " "  # the space before an answer is the model's to write
        after = text.find(tail, pos)
        end = len(text) if after < 0 else after + len(tail)
        spans.append((start, end))
    return text, spans


def _answer_labels(batch: Any, spans: Sequence[Sequence[tuple[int, int]]]) -> torch.Tensor:
    """Token labels: the token id inside an answer span, -100 (no loss) elsewhere."""
    labels = torch.full_like(batch["input_ids"], -100)
    for row, (offsets, row_spans) in enumerate(zip(batch["offset_mapping"], spans, strict=True)):
        for col, (start, end) in enumerate(offsets.tolist()):
            if end > start and any(a <= start < b for a, b in row_spans):
                labels[row, col] = batch["input_ids"][row, col]
    return labels


def train_toy_model(
    out: Path,
    problems: Sequence[ToyProblem],
    protocols: Sequence[Protocol],
    *,
    steps: int,
    context: int,
    shots: int = 4,
    lr: float = 1e-2,
    seed: int = 0,
) -> Path:
    """A 2-layer Llama trained on documents of ``shots`` random ``problems`` in each
    protocol's layout, in turn; saved with its tokenizer as a Hugging Face directory ``out``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = toy_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=context,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains fastest on one thread
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 1 - i / steps
    )  # linear decay: a quiet end
    rnd = random.Random(seed)
    for step in range(steps):
        protocol = protocols[step % len(protocols)]
        docs, spans = zip(
            *(training_text(protocol, tok, rnd.sample(list(problems), shots)) for _ in range(4)),
            strict=True,
        )
        # a chat document already starts with the BOS its template writes
        batch = tok(
            list(docs),
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=context,
            add_special_tokens=not protocol.is_chat,
            return_offsets_mapping=True,
        )
        labels = _answer_labels(batch, spans)
        loss = model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    torch.set_num_threads(threads)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
