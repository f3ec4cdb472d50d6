"""bench's ``lm-eval-5shot`` and lm-evaluation-harness's own ``gsm8k`` task agree per problem.

The model is a tiny Llama trained here for a few seconds on a few hundred one-step problems in
GSM8K's "Question: ...\\nAnswer: ...\\n#### N" layout, so greedy decoding writes ``#### N``
lines (not always, and not always the right number). The test problems' gold answers are then
set from a first pass, as tests/test_scoring.py does: some are the model's answer (right),
some are that answer written ``N.00`` (right for a numeric judge, wrong for lm-eval's exact
match), the rest another number - a model that is always wrong could not tell two scorers
apart. Its tokenizer adds a BOS token (as Llama's do), and its context (768 positions, 512 left
for the prompt after lm-eval's 256 generated tokens) makes some 5-shot prompts too long, so
lm-eval's left truncation is exercised too.

lm-eval runs on local files: a task config that ``include``s the installed ``gsm8k.yaml`` and
only points its dataset at this test's JSONL files (no hub access). Per problem, both tools
must feed the same prompt (text, and token ids after truncation), generate the same text,
extract the same strict and flexible answers and give the same verdict.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from _helpers import char_tokenizer
from shoestring.bench import runner as bench_runner
from shoestring.bench.config import BenchConfig
from shoestring.bench.records import read_problem_records
from shoestring.data.gsm8k import Problem, lm_eval_fewshot_for, load_gsm8k
from shoestring.scoring.lm_eval_rules import strict_match
from shoestring.scoring.protocols import get_protocol
from shoestring.scoring.scoring import render_prompts, score_model

lm_eval = pytest.importorskip("lm_eval")
pytestmark = pytest.mark.slow

PROTOCOL = get_protocol("lm-eval-5shot")
N_TEST = 16
CONTEXT = 768  # lm-eval keeps the last 768 - 256 prompt tokens
NAMES = ("Ann", "Bob", "Cal", "Dee")
FILLER = "On a long strip of paper she writes it down. "


def _problem(rnd: random.Random) -> dict[str, str]:
    """A one-step problem: copy a number, or add two digits (a quarter with a preamble)."""
    a, b, name = rnd.randrange(10), rnd.randrange(10), rnd.choice(NAMES)
    fill = FILLER if rnd.random() < 0.25 else ""
    if rnd.random() < 0.5:
        return {
            "question": f"{fill}{name} has {a} cats. How many cats does {name} have?",
            "answer": f"{name} has {a} cats.\n#### {a}",
        }
    return {"question": f"{fill}What is {a} + {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}


def _write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _train_model(root: Path, train: Path) -> Path:
    """A 2-layer Llama trained on random 6-problem documents in the few-shot layout."""
    from tokenizers import processors
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer()
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)]
    )
    pool = load_gsm8k(train)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=CONTEXT,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    rnd = random.Random(1)
    for _ in range(150):
        docs = [
            "\n\n".join(f"Question: {p.question}\nAnswer: {p.answer}" for p in rnd.sample(pool, 6))
            for _ in range(4)
        ]
        batch = tok(docs, return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = root / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _test_rows(model_dir: Path, train: Path, questions: list[str]) -> tuple[list[dict], list[str]]:
    """Gold answers from a first pass: right, right only numerically (``N.00``), or wrong."""
    from shoestring.models.loading import load_model_and_tokenizer

    model, tok, _ = load_model_and_tokenizer(model_dir, device="cpu", dtype="fp32")
    # problem i is lm-eval's document i: the same draw the test file's line i will get
    stub = [Problem(i, q, "#### 0", "0") for i, q in enumerate(questions)]
    shots = lm_eval_fewshot_for(stub, load_gsm8k(train))
    first = score_model(
        model,
        tok,
        questions,
        ["0"] * len(questions),
        PROTOCOL,
        max_new_tokens=256,
        progress=False,
        fewshot=shots,
    )
    rows, kinds = [], []
    for i, s in enumerate(first):
        pred = strict_match(s.result.text)
        kind = ("right", "numeric-only", "wrong", "right")[i % 4]
        if pred is None or not pred.lstrip("-").isdigit():
            kind, pred = "wrong", "-1"
        gold = {"right": pred, "numeric-only": f"{pred}.00"}.get(kind, str(int(pred) + 3))
        rows.append({"question": questions[i], "answer": f"Work.\n#### {gold}"})
        kinds.append(kind)
    return rows, kinds


def _task_config(root: Path, data: Path) -> Path:
    """lm-eval's gsm8k task, unchanged but for where its dataset comes from."""
    gsm8k_yaml = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml"
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "gsm8k_local.yaml").write_text(
        f"include: {gsm8k_yaml}\n"
        "task: gsm8k_local\n"
        "tag: []\n"
        "dataset_path: json\n"
        "dataset_name: null\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    train: {data / 'train.jsonl'}\n"
        f"    test: {data / 'test.jsonl'}\n"
    )
    return tasks


def _run_lm_eval(model_dir: Path, tasks: Path) -> tuple[Any, list[dict[str, Any]]]:
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=str(model_dir), device="cpu", dtype="float32", batch_size=8)
    out = simple_evaluate(
        model=lm,
        tasks=["gsm8k_local"],
        task_manager=TaskManager(include_path=str(tasks)),
        log_samples=True,
    )
    assert out is not None
    return lm, out["samples"]["gsm8k_local"]


@pytest.fixture(scope="module")
def agreement(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("lm_eval_agreement")
    data = root / "gsm8k"
    data.mkdir()
    rnd = random.Random(0)
    train = _write_jsonl(data / "train.jsonl", [_problem(rnd) for _ in range(300)])
    model_dir = _train_model(root, train)
    questions = [_problem(rnd)["question"] for _ in range(N_TEST)]
    rows, kinds = _test_rows(model_dir, train, questions)
    _write_jsonl(data / "test.jsonl", rows)
    lm, samples = _run_lm_eval(model_dir, _task_config(root, data))
    cfg = BenchConfig(
        models=[str(model_dir)],
        data=str(data / "test.jsonl"),
        protocol=PROTOCOL.name,
        dtype="fp32",
        device="cpu",
        threads=1,
        out=str(root / "bench"),
        quiet=True,
    )
    bench_runner.run(cfg)
    (path,) = (root / "bench" / "models").glob("*/problems.jsonl")
    records, issues = read_problem_records(path)
    assert not issues
    return {"data": data, "lm": lm, "samples": samples, "records": records, "kinds": kinds}


def test_bench_and_lm_eval_build_the_same_prompts(agreement: dict[str, Any]) -> None:
    data, lm, samples = agreement["data"], agreement["lm"], agreement["samples"]
    problems = load_gsm8k(data / "test.jsonl")
    shots = lm_eval_fewshot_for(problems, load_gsm8k(data / "train.jsonl"))
    ours = [
        PROTOCOL.prompt(p.question, lm.tokenizer, s) for p, s in zip(problems, shots, strict=True)
    ]
    theirs: dict[int, str] = {}
    for s in samples:
        theirs[s["doc_id"]] = s["arguments"][0][0]
    assert [theirs[i] for i in range(N_TEST)] == ours

    rendered = render_prompts(
        lm.model,
        lm.tokenizer,
        [p.question for p in problems],
        PROTOCOL,
        max_new_tokens=256,
        fewshot=shots,
    )
    budget = lm.max_length - lm.max_gen_toks
    for i, text in enumerate(ours):
        ids, _ = lm.tok_batch_encode([text], left_truncate_len=budget)
        assert rendered.ids[i] == ids[0].tolist(), f"problem {i}: token ids differ"
    assert 0 < rendered.truncated < N_TEST, "the fixture needs truncated and whole prompts"


def test_bench_and_lm_eval_extract_and_judge_the_same(agreement: dict[str, Any]) -> None:
    samples, records = agreement["samples"], agreement["records"]
    by_idx = {r["idx"]: r for r in records}
    assert sorted(by_idx) == list(range(N_TEST))
    lm_eval_name = {"strict-match": "strict", "flexible-extract": "flexible"}
    verdicts = []
    for s in samples:
        rec = by_idx[s["doc_id"]]
        assert rec["response"] == s["resps"][0][0], f"problem {s['doc_id']}: texts differ"
        name = lm_eval_name[s["filter"]]
        theirs = s["filtered_resps"][0]
        assert rec["extracted"][name] == (None if theirs == "[invalid]" else theirs)
        assert rec["correct"][name] is bool(s["exact_match"])
        if name == PROTOCOL.primary:
            verdicts.append(rec["correct"][name])
    assert len(verdicts) == N_TEST
    assert any(verdicts) and not all(verdicts), "the fixture needs right and wrong answers"
    # "N.00" golds: lm-eval (and so bench) says wrong where the numeric protocol says right
    numeric = get_protocol("gsm8k-5shot-numeric")
    lenient = [i for i, k in enumerate(agreement["kinds"]) if k == "numeric-only"]
    assert lenient, "the fixture needs answers only a numeric judge accepts"
    for i in lenient:
        assert verdicts[i] is False
        assert numeric.score(by_idx[i]["response"], by_idx[i]["gold"]).ok
