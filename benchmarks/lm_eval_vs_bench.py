"""``shoestring bench --protocol lm-eval-5shot`` against lm-evaluation-harness's own ``gsm8k`` task.

One process runs both tools on the same model and the first N GSM8K test problems, lm-eval
through its Python API (``simple_evaluate`` with its HF backend at ``batch_size="auto"``, the
``gsm8k`` task config ``include``d unchanged but pointed at local JSONL files, so nothing
touches the Hub), bench at its automatic batch size, both in fp32. It prints, per problem,
whether the two built the same prompt (text, and the token ids after lm-eval's left truncation),
generated the same text, extracted the same ``strict-match`` and ``flexible-extract`` answers
and gave the same verdict; then each tool's accuracy and wall time (model load included) and
their ratio. Rounds alternate which tool runs first.

    python benchmarks/lm_eval_vs_bench.py --model HF_DIR --data ../shared/data/gsm8k \\
        --limit 20 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def task_dir(root: Path, data: Path) -> Path:
    """A task config: lm-eval's gsm8k.yaml, with the dataset read from ``data``."""
    import lm_eval

    gsm8k_yaml = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml"
    tasks = root / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    (tasks / "gsm8k_local.yaml").write_text(
        f"include: {gsm8k_yaml}\ntask: gsm8k_local\ntag: []\n"
        "dataset_path: json\ndataset_name: null\ndataset_kwargs:\n  data_files:\n"
        f"    train: {data / 'train.jsonl'}\n    test: {data / 'test.jsonl'}\n"
    )
    return tasks


def run_lm_eval(model: Path, tasks: Path, limit: int) -> tuple[Any, list[dict], float]:
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    t0 = time.perf_counter()
    lm = HFLM(pretrained=str(model), device="cpu", dtype="float32", batch_size="auto")
    out = simple_evaluate(
        model=lm,
        tasks=["gsm8k_local"],
        task_manager=TaskManager(include_path=str(tasks)),
        limit=limit,
        log_samples=True,
    )
    seconds = time.perf_counter() - t0
    assert out is not None
    return lm, out["samples"]["gsm8k_local"], seconds


def run_shoestring(model: Path, data: Path, limit: int, threads: int, out: Path) -> tuple:
    from shoestring.bench import runner as bench_runner
    from shoestring.bench.config import BenchConfig
    from shoestring.bench.records import read_problem_records

    cfg = BenchConfig(
        models=[str(model)],
        data=str(data / "test.jsonl"),
        limit=limit,
        protocol="lm-eval-5shot",
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
    records, _ = read_problem_records(path)
    summary = json.loads((out / "summary.json").read_text())
    return {r["idx"]: r for r in records}, seconds, summary["models"][0]


def agreement(lm: Any, samples: list[dict], records: dict, data: Path, limit: int) -> dict:
    """Per-problem equality counts of prompts, token ids, texts, answers and verdicts."""
    from shoestring.data.gsm8k import lm_eval_fewshot_for, load_fewshot_pool, load_gsm8k
    from shoestring.scoring.protocols import get_protocol
    from shoestring.scoring.scoring import render_prompts

    protocol = get_protocol("lm-eval-5shot")
    problems = load_gsm8k(data / "test.jsonl", limit=limit)
    shots = lm_eval_fewshot_for(problems, load_fewshot_pool(data / "test.jsonl"))
    ours = [
        protocol.prompt(p.question, lm.tokenizer, s) for p, s in zip(problems, shots, strict=True)
    ]
    ids = render_prompts(
        lm.model,
        lm.tokenizer,
        [p.question for p in problems],
        protocol,
        max_new_tokens=lm.max_gen_toks,
        fewshot=shots,
    )
    budget = lm.max_length - lm.max_gen_toks
    counts = {k: 0 for k in ("prompt", "token_ids", "response", "strict", "flexible", "verdict")}
    names = {"strict-match": "strict", "flexible-extract": "flexible"}
    for s in samples:
        i, rec, name = s["doc_id"], records[s["doc_id"]], names[s["filter"]]
        theirs = s["filtered_resps"][0]
        counts[name] += rec["extracted"][name] == (None if theirs == "[invalid]" else theirs)
        if name != "strict":
            continue
        counts["prompt"] += s["arguments"][0][0] == ours[i]
        enc, _ = lm.tok_batch_encode([ours[i]], left_truncate_len=budget)
        counts["token_ids"] += enc[0].tolist() == ids.ids[i]
        counts["response"] += s["resps"][0][0] == rec["response"]
        counts["verdict"] += bool(s["exact_match"]) == rec["correct"]["strict"]
    counts["n"] = len(problems)
    counts["truncated"] = ids.truncated
    counts["lm_eval_correct"] = sum(
        int(s["exact_match"]) for s in samples if s["filter"] == "strict-match"
    )
    counts["bench_correct"] = sum(int(r["correct"]["strict"]) for r in records.values())
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="a Hugging Face model directory")
    ap.add_argument("--data", type=Path, required=True, help="directory with train/test.jsonl")
    ap.add_argument("--limit", type=int, default=20, help="first N test problems")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1, help="alternating runs of both tools")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tasks = task_dir(root, args.data.resolve())
        times: dict[str, list[float]] = {"lm-eval": [], "bench": []}
        for r in range(args.rounds):
            order = ("lm-eval", "bench") if r % 2 == 0 else ("bench", "lm-eval")
            for tool in order:
                if tool == "lm-eval":
                    lm, samples, sec = run_lm_eval(args.model, tasks, args.limit)
                else:
                    out = root / f"bench{r}"
                    records, sec, model_entry = run_shoestring(
                        args.model, args.data, args.limit, args.threads, out
                    )
                times[tool].append(sec)
                print(f"round {r + 1}: {tool} {sec:.1f} s", flush=True)
        counts = agreement(lm, samples, records, args.data, args.limit)
    n = counts["n"]
    print(
        f"problems: first {n} of {args.data / 'test.jsonl'}; {counts['truncated']} prompts "
        "left-truncated to the context"
    )
    for key in ("prompt", "token_ids", "response", "strict", "flexible", "verdict"):
        print(f"identical {key}: {counts[key]}/{n}")
    print(
        f"strict-match accuracy: lm-eval {counts['lm_eval_correct']}/{n}, "
        f"bench {counts['bench_correct']}/{n}"
    )
    lm_s, bench_s = min(times["lm-eval"]), min(times["bench"])
    print(
        f"wall (model load included, best of {args.rounds}): lm-eval {lm_s:.1f} s, bench "
        f"{bench_s:.1f} s, ratio lm-eval/bench {lm_s / bench_s:.2f}"
    )
    print(
        f"bench: batch size {model_entry['settings'].get('batch_size', 'auto')}, "
        f"{model_entry['metrics']['tokens_per_second']} tokens/s, peak RSS "
        f"{model_entry['metrics']['peak_rss_mb']} MB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
