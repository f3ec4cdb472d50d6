"""``shoestring bench`` against lm-evaluation-harness's own GSM8K tasks, problem by problem.

One process runs both tools on the same model and the same problems, for each protocol asked
(default: ``lm-eval-5shot`` = lm-eval's ``gsm8k``, ``lm-eval-cot-0shot`` = ``gsm8k_cot_zeroshot``
and ``lm-eval-5shot-chat`` = ``gsm8k --apply_chat_template``, few-shot as multi-turn). lm-eval
runs through its Python API (``simple_evaluate``, HF backend, fp32, ``log_samples``) on its
installed task YAMLs ``include``d unchanged but pointed at local JSONL files, so nothing touches
the Hub; bench runs through its API at its automatic batch size. The two are joined by
lm-eval's ``prompt_hash`` (and document id), and per problem the script counts identical
prompt token ids (after lm-eval's left truncation), responses, ``strict-match`` and
``flexible-extract`` answers and verdicts, then each tool's accuracy and wall time.

Without ``--model`` it trains the toy model of ``gsm8k_toy_model.py`` first (a 2-layer Llama
that answers a fair share of GSM8K-format toy problems right, so right answers are compared
too) and writes the toy problems as the dataset; with ``--model HF_DIR --data DIR`` it runs on
a real model and GSM8K (``DIR`` holding train.jsonl and test.jsonl).

    python benchmarks/lm_eval_vs_bench.py --limit 100 --threads 2
    python benchmarks/lm_eval_vs_bench.py --model HF_DIR --data ../shared/data/gsm8k --limit 30
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from shoestring.host import describe_host

#: shoestring protocol -> (lm-eval task YAML in tasks/gsm8k/, --apply_chat_template)
LM_EVAL_TASKS: dict[str, tuple[str, bool]] = {
    "lm-eval-5shot": ("gsm8k.yaml", False),
    "lm-eval-cot-8shot": ("gsm8k-cot.yaml", False),
    "lm-eval-cot-0shot": ("gsm8k-cot-zeroshot.yaml", False),
    "lm-eval-5shot-chat": ("gsm8k.yaml", True),
    "lm-eval-cot-8shot-chat": ("gsm8k-cot.yaml", True),
    "lm-eval-cot-0shot-chat": ("gsm8k-cot-zeroshot.yaml", True),
}
DEFAULT_PROTOCOLS = ("lm-eval-5shot", "lm-eval-cot-0shot", "lm-eval-5shot-chat")
FIELDS = ("prompt_hash", "token_ids", "response", "strict", "flexible", "verdict")


def local_task(root: Path, data: Path, protocol: str) -> tuple[Path, str]:
    """A task config: lm-eval's YAML for ``protocol``, with the dataset read from ``data``."""
    import lm_eval

    yaml_name, _ = LM_EVAL_TASKS[protocol]
    task = f"local_{yaml_name.removesuffix('.yaml').replace('-', '_')}"
    source = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / yaml_name
    folder = root / "tasks" / task
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{task}.yaml").write_text(
        f"include: {source}\ntask: {task}\ntag: []\n"
        "dataset_path: json\ndataset_name: null\ndataset_kwargs:\n  data_files:\n"
        f"    train: {data / 'train.jsonl'}\n    test: {data / 'test.jsonl'}\n"
    )
    return folder, task


def run_lm_eval(
    lm: Any, root: Path, data: Path, protocol: str, limit: int
) -> tuple[list[dict[str, Any]], float]:
    """lm-eval's logged samples for ``protocol``'s task on the first ``limit`` problems."""
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.tasks import TaskManager

    folder, task = local_task(root, data, protocol)
    chat = LM_EVAL_TASKS[protocol][1]
    t0 = time.perf_counter()
    out = simple_evaluate(
        model=lm,
        tasks=[task],
        task_manager=TaskManager(include_path=str(folder)),
        limit=limit,
        log_samples=True,
        apply_chat_template=chat,
        fewshot_as_multiturn=chat,  # lm-eval's CLI turns it on with --apply_chat_template
    )
    seconds = time.perf_counter() - t0
    assert out is not None
    return out["samples"][task], seconds


def run_bench(
    model: Path, data: Path, protocol: str, limit: int, threads: int, out: Path
) -> tuple[dict[int, dict[str, Any]], float, dict[str, Any]]:
    """bench's problems.jsonl records (by problem idx), wall seconds and summary entry."""
    from shoestring.bench import runner as bench_runner
    from shoestring.bench.config import BenchConfig
    from shoestring.bench.records import read_problem_records

    cfg = BenchConfig(
        models=[str(model)],
        data=str(data / "test.jsonl"),
        limit=limit,
        protocol=protocol,
        dtype="fp32",
        device="cpu",
        threads=threads,
        out=str(out),
        quiet=True,
    )
    t0 = time.perf_counter()
    bench_runner.run(cfg)
    seconds = time.perf_counter() - t0
    (path,) = (out / "models").glob("*/problems.jsonl")
    records, issues = read_problem_records(path)
    if issues:
        raise RuntimeError(f"{path}: {issues[0]}")
    summary = json.loads((out / "summary.json").read_text())
    return {r["idx"]: r for r in records}, seconds, summary["models"][0]


def _prompt_hash(text: str) -> str:
    from lm_eval.utils import hash_string

    return hash_string(text)


def agreement(
    lm: Any,
    protocol_name: str,
    samples: Sequence[dict[str, Any]],
    records: dict[int, dict[str, Any]],
    data: Path,
    limit: int,
) -> dict[str, Any]:
    """Per-problem equality counts, lm-eval's samples joined to bench's records by prompt hash.

    bench's own ``prompt_hash`` is used where its problems.jsonl records one; otherwise the
    hash of the prompt the protocol renders (with the same shots) stands in, and ``hash_from``
    says so.
    """
    from shoestring.data.gsm8k import lm_eval_fewshot_for, load_fewshot_pool, load_gsm8k
    from shoestring.scoring.protocols import get_protocol
    from shoestring.scoring.scoring import render_prompts

    protocol = get_protocol(protocol_name)
    problems = load_gsm8k(data / "test.jsonl", limit=limit)
    shots: list[Any] = [None] * len(problems)
    if protocol.fewshot_sampler == "lm-eval":
        shots = lm_eval_fewshot_for(problems, load_fewshot_pool(data / "test.jsonl"))
    texts = [
        protocol.prompt(p.question, lm.tokenizer, s) for p, s in zip(problems, shots, strict=True)
    ]
    ids = render_prompts(
        lm.model,
        lm.tokenizer,
        [p.question for p in problems],
        protocol,
        max_new_tokens=lm.max_gen_toks,
        fewshot=None if shots[0] is None else shots,
    )
    recorded = all("prompt_hash" in r for r in records.values())
    by_hash = {
        (r["prompt_hash"] if recorded else _prompt_hash(texts[i]), i): r for i, r in records.items()
    }
    counts: dict[str, Any] = dict.fromkeys(FIELDS, 0)
    counts.update(n=len(problems), truncated=ids.truncated, lm_eval_right=0, bench_right=0)
    counts["hash_from"] = "problems.jsonl" if recorded else "the protocol's prompt"
    budget = lm.max_length - lm.max_gen_toks
    names = {"strict-match": "strict", "flexible-extract": "flexible"}
    for s in samples:
        rec = by_hash.get((s["prompt_hash"], s["doc_id"]))
        if rec is None:
            continue  # no bench problem asked with lm-eval's prompt: counted as a disagreement
        name = names[s["filter"]]
        theirs = s["filtered_resps"][0]
        counts[name] += rec["extracted"][name] == (None if theirs == "[invalid]" else theirs)
        if name != "strict":
            continue
        counts["prompt_hash"] += 1
        enc, _ = lm.tok_batch_encode([s["arguments"][0][0]], left_truncate_len=budget)
        counts["token_ids"] += enc[0].tolist() == ids.ids[s["doc_id"]]
        counts["response"] += s["resps"][0][0] == rec["response"]
        counts["verdict"] += bool(s["exact_match"]) == rec["correct"]["strict"]
        counts["lm_eval_right"] += int(s["exact_match"])
        counts["bench_right"] += int(rec["correct"]["strict"])
    return counts


def toy_setup(root: Path, limit: int, steps: int, protocols: Sequence[str]) -> tuple[Path, Path]:
    """The toy dataset (300 train, ``limit`` test problems) and a model trained on it."""
    from gsm8k_toy_model import toy_problems, train_toy_model, write_gsm8k_files
    from shoestring.scoring.protocols import get_protocol

    data = root / "gsm8k"
    train = toy_problems(300, seed=0)
    write_gsm8k_files(data, train, toy_problems(limit, seed=1), numeric_only_every=10)
    model = train_toy_model(
        root / "model", train, [get_protocol(p) for p in protocols], steps=steps, context=1024
    )
    return model, data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="a Hugging Face model directory (default: toy)")
    ap.add_argument("--data", type=Path, help="directory with train/test.jsonl (with --model)")
    ap.add_argument("--protocols", nargs="+", default=list(DEFAULT_PROTOCOLS))
    ap.add_argument("--limit", type=int, default=100, help="first N test problems")
    ap.add_argument("--steps", type=int, default=600, help="toy model training steps")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    unknown = sorted(set(args.protocols) - set(LM_EVAL_TASKS))
    if unknown:
        ap.error(f"no lm-eval task for {unknown}; choose from {', '.join(LM_EVAL_TASKS)}")
    if (args.model is None) != (args.data is None):
        ap.error("give --model and --data together (or neither, for the toy model)")
    torch.set_num_threads(args.threads)
    print(describe_host(measure=False), flush=True)  # the host every figure below belongs to
    from lm_eval.models.huggingface import HFLM

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.model is None:
            t0 = time.perf_counter()
            model, data = toy_setup(root, args.limit, args.steps, args.protocols)
            print(f"toy model: {args.steps} steps in {time.perf_counter() - t0:.1f} s", flush=True)
        else:
            model, data = args.model, args.data.resolve()
        t0 = time.perf_counter()
        lm = HFLM(pretrained=str(model), device="cpu", dtype="float32", batch_size="auto")
        load_s = time.perf_counter() - t0
        for name in args.protocols:
            samples, lm_s = run_lm_eval(lm, root, data, name, args.limit)
            records, bench_s, entry = run_bench(
                model, data, name, args.limit, args.threads, root / f"bench-{name}"
            )
            c = agreement(lm, name, samples, records, data, args.limit)
            n = c["n"]
            yaml_name, chat = LM_EVAL_TASKS[name]
            flags = " --apply_chat_template --fewshot_as_multiturn" if chat else ""
            print(f"\n{name} vs lm-eval {yaml_name}{flags}: first {n} problems of {data}")
            print("  identical " + ", ".join(f"{k} {c[k]}/{n}" for k in FIELDS))
            print(
                f"  strict-match right: lm-eval {c['lm_eval_right']}/{n}, bench "
                f"{c['bench_right']}/{n}; {c['truncated']} prompts left-truncated; prompt "
                f"hashes from {c['hash_from']}"
            )
            print(
                f"  wall: lm-eval {lm_s:.1f} s (+ {load_s:.1f} s model load once), bench "
                f"{bench_s:.1f} s (model load included); batch size "
                f"{entry['settings'].get('batch_size', 'auto')}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
