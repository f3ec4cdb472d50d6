"""lm-eval's other GSM8K tasks as protocols: gsm8k_cot, gsm8k_cot_zeroshot and the chat-templated
variants (``--apply_chat_template``, few-shot as multi-turn), prompt and filter for filter.

Where lm-eval is installed, the prompts are compared with the ones lm-eval's own task objects
build (``build_all_requests``, as its evaluator calls it) from its installed YAML files pointed
at a small local dataset, and the filters and metric with lm-eval's ``RegexFilter`` and
``exact_match``. tests/test_lm_eval_agreement.py runs both tools end to end.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from shoestring.data.gsm8k import Problem
from shoestring.scoring import lm_eval_rules as rules
from shoestring.scoring.exemplars import GSM8K_COT_EXEMPLARS
from shoestring.scoring.protocols import PROTOCOLS, get_protocol

_BENCHMARKS = str(Path(__file__).resolve().parents[1] / "benchmarks")
sys.path.insert(0, _BENCHMARKS)  # the toy model's data and tokenizer live beside its benchmark
try:
    from gsm8k_toy_model import toy_problems, toy_tokenizer, write_gsm8k_files
finally:
    sys.path.remove(_BENCHMARKS)

COT_8 = get_protocol("lm-eval-cot-8shot")
COT_0 = get_protocol("lm-eval-cot-0shot")
#: shoestring protocol -> (lm-eval task YAML, --apply_chat_template)
LM_EVAL_TASKS = {
    "lm-eval-5shot": ("gsm8k.yaml", False),
    "lm-eval-cot-8shot": ("gsm8k-cot.yaml", False),
    "lm-eval-cot-0shot": ("gsm8k-cot-zeroshot.yaml", False),
    "lm-eval-5shot-chat": ("gsm8k.yaml", True),
    "lm-eval-cot-8shot-chat": ("gsm8k-cot.yaml", True),
    "lm-eval-cot-0shot-chat": ("gsm8k-cot-zeroshot.yaml", True),
}

#: (response, the strict-match text lm-eval's cot filter keeps, or None for "[invalid]")
COT_CASES = [
    ("So 21 - 15 = 6. The answer is 6.", "6"),
    ("The answer is 29. Then more text", "29."),  # the pattern's last "." is any character
    ("The answer is 66", "6"),  # ... so it takes the second digit
    ("The answer is 6", None),  # ... and needs one: no match at the very end
    ("The answer is 6\n", None),  # "." does not match a newline
    ("The answer is 1,000.", "1,000"),
    ("the answer is 6.", None),  # case-sensitive
    ("The answer is $6.", None),  # no currency in the pattern
    ("The answer is -3.", "-3"),
    ("The answer is 5. The answer is 7.", "5."),  # take_first
    ("#### 6", None),
]


def test_cot_prompts_without_lm_eval() -> None:
    assert COT_0.prompt("What is 2 + 3?") == "Q: What is 2 + 3?\nA: Let's think step by step."
    prompt = COT_8.prompt("What is 2 + 3?")
    assert prompt.startswith(
        "Q: There are 15 trees in the grove. Grove workers will plant trees in the grove today."
    )
    assert prompt.endswith("23 - 15 is 8. The answer is 8.\n\nQ: What is 2 + 3?\nA:")
    assert prompt.count("\n\nQ: ") == 8
    for p in (COT_8, COT_0):
        assert p.stop_strings == ("Q:", "</s>", "<|im_end|>")
        assert p.strict_pattern == rules.COT_STRICT_PATTERN and p.truncation == "left"
    assert COT_8.to_dict()["fewshot"]["indices"] == list(range(8))


@pytest.mark.parametrize(("response", "kept"), COT_CASES)
def test_cot_strict_match(response: str, kept: str | None) -> None:
    assert COT_8.score(response, "x\n#### 6").extracted["strict"] == kept
    assert COT_0.extract(response) == kept


def test_references_follow_each_tasks_doc_to_target() -> None:
    assert rules.reference("Work.\n#### 1,000", "after-hashes") == "1,000"
    assert rules.reference("Work.\n#### 1,000", "answer") == "Work.\n#### 1,000"
    assert rules.reference("18", "after-hashes") == "18"  # a canonical gold passes through
    for protocol in (COT_8, COT_0):
        assert protocol.judge("2 + 4 = 6. The answer is 6.", "2 + 4 = 6.\n#### 6")
        assert not protocol.judge("The answer is 6.", "Work.\n#### 6.00")
        assert protocol.score("The answer is 1,000.", "Work.\n#### 1000").ok


def test_chat_protocols_are_lm_evals_multiturn_messages() -> None:
    shot = Problem(7, "Q1?", "A1\n#### 1", "1")
    assert get_protocol("lm-eval-5shot-chat").messages("Z?", [shot]) == [
        {"role": "user", "content": "Question: Q1?\nAnswer:"},
        {"role": "assistant", "content": "A1\n#### 1"},
        {"role": "user", "content": "Question: Z?\nAnswer:"},
    ]
    cot8 = get_protocol("lm-eval-cot-8shot-chat").messages("Z?")
    assert len(cot8) == 17 and cot8[1]["content"] == GSM8K_COT_EXEMPLARS[0].answer
    assert get_protocol("lm-eval-cot-0shot-chat").messages("Z?") == [
        {"role": "user", "content": "Q: Z?\nA: Let's think step by step."}
    ]


def test_bos_written_by_the_chat_template_is_not_added_again() -> None:
    tok = toy_tokenizer()
    chat = get_protocol("lm-eval-cot-0shot-chat")
    prompt = chat.prompt("What is 2 + 3?", tok)
    assert prompt.startswith("<s>User: Q: What is 2 + 3?")
    (ids,) = chat.encode(tok, [prompt])
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    (plain,) = COT_0.encode(tok, [COT_0.prompt("What is 2 + 3?")])
    assert plain[0] == tok.bos_token_id and plain[1] != tok.bos_token_id
    # without lm-eval's check the template's BOS would be doubled
    (doubled,) = PROTOCOLS["chat-cot"].encode(tok, [prompt])
    assert doubled[:1] == [tok.bos_token_id]


def test_keys_of_the_earlier_protocols_are_unchanged() -> None:
    """Fields added to Protocol are recorded only off their defaults, so the keys stored in
    existing run directories still name the same protocols."""
    assert {n: PROTOCOLS[n].key() for n in ("lm-eval-5shot", "qa", "chat-cot")} == {
        "lm-eval-5shot": "lm-eval-5shot@d5af830b",
        "qa": "qa@0ae97ee1",
        "chat-cot": "chat-cot@a05f1802",
    }


# --- against lm-eval itself ---------------------------------------------------------------


def test_cot_exemplars_are_lm_evals() -> None:
    lm_eval = pytest.importorskip("lm_eval")
    import yaml

    path = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k-cot.yaml"
    samples = yaml.safe_load(path.read_text())["fewshot_config"]["samples"]
    assert [(s["question"], s["target"]) for s in samples] == [
        (p.question, p.answer) for p in GSM8K_COT_EXEMPLARS
    ]
    for p in GSM8K_COT_EXEMPLARS:
        assert rules.regex_filter(p.answer, rules.COT_STRICT_PATTERN, 0) == p.gold


def test_cot_filters_and_metric_are_lm_evals() -> None:
    pytest.importorskip("lm_eval")
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    strict = RegexFilter(rules.COT_STRICT_PATTERN, group_select=0)
    for response, kept in COT_CASES:
        got = strict.apply([[response]], [{}])[0][0]
        assert (None if got == "[invalid]" else got) == kept, response
        for gold in ("6", "29", "1000", "-3", "5"):
            em = exact_match_hf_evaluate(
                [got], [gold], list(rules.IGNORE_REGEXES), ignore_case=True
            )["exact_match"]
            assert COT_8.judge(response, f"w\n#### {gold}") is bool(em), (response, gold)


def _task_name(yaml_name: str) -> str:
    return f"local_{yaml_name.removesuffix('.yaml').replace('-', '_')}"


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("gsm8k_cot")
    write_gsm8k_files(root / "data", toy_problems(40, 0), toy_problems(6, 1), numeric_only_every=0)
    return root, root / "data"


@pytest.fixture(scope="module")
def task_manager(toy_data: tuple[Path, Path]) -> Any:
    """One lm-eval TaskManager (indexing lm-eval's tasks is its slow part) over the installed
    gsm8k YAMLs, each ``include``d unchanged but pointed at the toy dataset."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    root, data = toy_data
    tasks = root / "tasks"
    tasks.mkdir(exist_ok=True)
    for yaml_name in {y for y, _ in LM_EVAL_TASKS.values()}:
        source = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / yaml_name
        task = _task_name(yaml_name)
        (tasks / f"{task}.yaml").write_text(
            f"include: {source}\ntask: {task}\ntag: []\ndataset_path: json\n"
            f"dataset_name: null\ndataset_kwargs:\n  data_files:\n"
            f"    train: {data / 'train.jsonl'}\n    test: {data / 'test.jsonl'}\n"
        )
    return TaskManager(include_path=str(tasks))


def _lm_eval_prompts(manager: Any, name: str, n: int) -> list[str]:
    """The prompts lm-eval's evaluator would send for the first ``n`` test documents."""
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import get_task_dict

    yaml_name, chat = LM_EVAL_TASKS[name]
    task = _task_name(yaml_name)
    obj = get_task_dict([task], manager)[task]
    obj.set_config(key="num_fewshot", value=obj.get_config("num_fewshot") or 0)
    obj.set_fewshot_seed(seed=1234)  # simple_evaluate's fewshot_random_seed
    # HFLM.apply_chat_template reads only these two attributes of the model object
    hflm = SimpleNamespace(tokenizer=toy_tokenizer(), chat_template_args={})

    def template(history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return HFLM.apply_chat_template(hflm, history, add_generation_prompt)  # type: ignore[arg-type]

    obj.build_all_requests(
        limit=n,
        apply_chat_template=chat,
        fewshot_as_multiturn=chat,
        chat_template=template if chat else None,
    )
    return [inst.arguments[0] for inst in sorted(obj.instances, key=lambda i: i.doc_id)]


@pytest.mark.parametrize("name", sorted(LM_EVAL_TASKS))
def test_prompts_are_the_ones_lm_eval_builds(
    name: str, toy_data: tuple[Path, Path], task_manager: Any
) -> None:
    from shoestring.data.gsm8k import lm_eval_fewshot_for, load_gsm8k

    _, data = toy_data
    protocol = get_protocol(name)
    problems = load_gsm8k(data / "test.jsonl")
    draws: list[Any] = [None] * len(problems)
    if protocol.fewshot_sampler == "lm-eval":
        draws = lm_eval_fewshot_for(problems, load_gsm8k(data / "train.jsonl"), protocol.n_shots)
    tok = toy_tokenizer()
    ours = [protocol.prompt(p.question, tok, d) for p, d in zip(problems, draws, strict=True)]
    assert ours == _lm_eval_prompts(task_manager, name, len(problems))


def test_toy_data_is_gsm8k_format(toy_data: tuple[Path, Path]) -> None:
    _, data = toy_data
    row = json.loads((data / "test.jsonl").read_text().splitlines()[0])
    assert set(row) == {"question", "answer"} and "\n#### " in row["answer"]
