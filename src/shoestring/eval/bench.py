"""``shoestring bench``: GSM8K accuracy, speed and memory of several models, honestly reported.

Why this module exists: the study this project grew from scored 50 problems one at a time,
compared models that differed by one problem as if it meant something, and called a change in
RSS "memory". ``bench`` runs every model through the same problems with the batched engine
(:mod:`shoestring.eval.generation`), scores every response with every extractor
(:mod:`shoestring.eval.answers`), and reports each accuracy with its 95% Wilson interval and n,
each pair of models with McNemar's exact test on the same problems, and speed and memory as
measured (tokens/s over generation time only, the real peak of the resident set).

Layout of ``--out DIR`` (documented in docs/bench.md)::

    config.json  summary.json  metrics.jsonl  log.txt  report.md
    models/<label>/problems.jsonl   one line per scored problem, appended as generated
    models/<label>/state.json       the settings the lines were made with + per-session timings
    converted/<label>-<sha>/        llama2.c checkpoints converted to HF (a cache)

Resume: rerunning into the same ``--out`` reads each model's ``problems.jsonl`` and generates
only the problems that are missing. Lines are only reused when they were made with the same
settings (model weights, protocol and its prompt, max new tokens, dtype, stop strings); a
different setting is an error that suggests a new ``--out``, never a silent mix.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import json
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoestring.config import ConfigError, opt, validate
from shoestring.data.gsm8k import (
    ADD_SPECIAL_TOKENS,
    CHAT_COT_INSTRUCTION,
    LM_EVAL_FEWSHOT,
    PROTOCOLS,
    STOP_STRINGS,
    Problem,
    build_prompt,
    default_protocol,
    has_chat_template,
    load_gsm8k,
)
from shoestring.errors import UserError
from shoestring.eval.answers import EXTRACTORS, extract_all, is_correct
from shoestring.eval.stats import format_accuracy, mcnemar_exact, wilson_interval
from shoestring.runs.rundir import RunDir, atomic_write_json, atomic_write_text, now_iso, read_json

__all__ = [
    "PRIMARY_EXTRACTOR",
    "BenchConfig",
    "ModelSpec",
    "add_cli",
    "compare_models",
    "read_problem_records",
    "render_report",
    "resolve_models",
    "run",
    "run_bench",
    "score_response",
]

#: The extractor whose accuracy heads the table, per protocol. ``lm-eval-5shot``: lm-eval's
#: ``strict-match`` (its shots end in "#### N"); ``chat-cot``: the instruction asks for a final
#: "#### N" line (:data:`~shoestring.data.gsm8k.CHAT_COT_INSTRUCTION`), so strict is what the
#: model was told to write; ``plain``: no format is asked for, so the last number (flexible).
PRIMARY_EXTRACTOR: dict[str, str] = {
    "lm-eval-5shot": "strict",
    "chat-cot": "strict",
    "plain": "flexible",
}
EXTRACTOR_NAMES: tuple[str, ...] = tuple(EXTRACTORS)
STATE_VERSION = 1
_LABEL_RE = re.compile(r"[^A-Za-z0-9._-]+")
# A problem identity used only to fingerprint a protocol's prompt template.
_PROBE = Problem(idx=-1, question="PROBE QUESTION 1 + 2?", answer="#### 3", gold="3")

OnProblem = Callable[[str, dict[str, Any]], None]


@dataclass
class BenchConfig:
    """Everything ``bench`` was asked; written to config.json."""

    models: list[str] = opt(
        [], "HF model dirs, shoestring run dirs, Hub names, or llama2.c MODEL.bin[:TOKENIZER.model]"
    )
    data: str = opt("", "GSM8K JSONL file, a directory with {split}.jsonl, or openai/gsm8k")
    split: str = opt("test", "split: file in a data directory / hub split")
    limit: int | None = opt(None, "score only N problems (None = all)", min=1)
    subset_seed: int | None = opt(None, "seeded random subset of --limit problems (None = first N)")
    protocol: str = opt(
        "auto",
        "prompt protocol; auto = chat-cot with a chat template, else plain",
        choices=("auto", *PROTOCOLS),
    )
    max_new_tokens: int = opt(256, "tokens generated per problem at most", min=1)
    batch_size: int = opt(
        0, "rows per forward pass; 0 = auto from model shape and free memory", min=0
    )
    dtype: str = opt(
        "auto",
        "weights dtype; auto = bf16 where the host computes it fast",
        choices=("auto", "fp32", "bf16"),
    )
    device: str = opt("auto", "cpu, cuda, cuda:N, mps or auto")
    threads: int = opt(0, "CPU threads for torch; 0 = physical cores", min=0)
    out: str = opt("runs/bench", "results directory (rerun into it to resume)")
    tokenizer_model: str | None = opt(None, "sentencepiece .model for llama2.c .bin models")
    trust_remote_code: bool = opt(False, "allow models that ship their own Python code")
    strict_data: bool = opt(
        False, "reject the data on the first malformed line instead of skipping and reporting it"
    )
    examples: int = opt(2, "correct and incorrect responses shown per model in report.md", min=0)

    def check(self) -> BenchConfig:
        """Validate ranges/choices and cross-field rules; returns self so calls can chain."""
        validate(self)
        if not self.models:
            raise ConfigError("bench needs at least one MODEL")
        if not self.data:
            raise ConfigError("bench needs --data (a GSM8K JSONL file or openai/gsm8k)")
        if self.subset_seed is not None and self.limit is None:
            raise ConfigError(
                "--subset-seed picks a random subset of --limit problems; give --limit N too"
            )
        return self


@dataclass
class ModelSpec:
    """One MODEL argument, resolved: where to load it from and what to call it."""

    arg: str
    label: str
    path: str  # what load_model_and_tokenizer gets (a converted dir for llama2.c)
    source: str  # hf | run | hub | llama2c
    fingerprint: str  # identity of the weights (see _weights_fingerprint)
    convert: dict[str, Any] | None = None  # llama2.c: bin, tokenizer, seconds, report lines

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- model arguments


def _sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _weights_fingerprint(location: str, source: str) -> str:
    """A cheap identity of a model's weights: name, size, and the first and last MiB of every
    weight file, plus config.json.

    Why not the path: a run directory keeps its path when it is trained further, and results
    of old and new weights must never be mixed on resume. Why not a full hash: a 14 GB model
    would take half a minute to hash on every run; the head (safetensors header: names, shapes,
    offsets) and the tail (the last tensors' values) change whenever the weights do.
    """
    if source == "hub":
        return f"hub:{location}"
    root = Path(location)
    h = hashlib.sha256()
    files = sorted(
        p
        for p in root.iterdir()
        if p.is_file()
        and (p.suffix in (".safetensors", ".bin", ".pt", ".pth") or p.name == "config.json")
    )
    for p in files:
        size = p.stat().st_size
        h.update(f"{p.name}:{size}".encode())
        with p.open("rb") as f:
            h.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(size - (1 << 20))
                h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def _split_llama2c_arg(arg: str, tokenizer_model: str | None) -> tuple[Path, Path] | None:
    """``(checkpoint, tokenizer)`` when ``arg`` names a llama2.c checkpoint, else None.

    Accepted: ``MODEL.bin:TOKENIZER.model`` (per model), or ``MODEL.bin`` with
    ``--tokenizer-model`` (for every .bin model without its own). A ``.bin`` that is a
    directory entry of an HF model (``pytorch_model.bin``) is not a llama2.c checkpoint: only
    files passed directly are.
    """
    head, sep, tail = arg.rpartition(":")
    if sep and head.endswith(".bin") and tail:
        return Path(head).expanduser(), Path(tail).expanduser()
    if arg.endswith(".bin"):
        bin_path = Path(arg).expanduser()
        if not bin_path.is_file():
            raise UserError(f"llama2.c checkpoint not found: {arg}")
        if tokenizer_model is None:
            near = sorted(p.name for p in bin_path.parent.glob("*.model"))
            hint = f" ({', '.join(near)} is next to it)" if near else ""
            raise UserError(
                f"{arg} looks like a llama2.c checkpoint; it needs its sentencepiece tokenizer: "
                f"pass {arg}:TOKENIZER.model or --tokenizer-model TOKENIZER.model{hint}"
            )
        return bin_path, Path(tokenizer_model).expanduser()
    return None


def _label_for(arg: str, source: str, location: str) -> str:
    """A short, file-system-safe name for a model (its directory or checkpoint name)."""
    if source == "llama2c":
        name = Path(arg.rpartition(":")[0] if ":" in arg else arg).stem
    elif source == "run":
        name = Path(location).parent.name
    elif source == "hub":
        name = location.rstrip("/").split("/")[-1]
    else:
        name = Path(location).resolve().name
    return _LABEL_RE.sub("_", name).strip("._") or "model"


def _convert_cached(
    bin_path: Path, tok_path: Path, out: Path, log: Callable[[str], None]
) -> tuple[Path, dict[str, Any]]:
    """Convert a llama2.c checkpoint once per content into ``out/converted/`` and reuse it.

    The cache key is the sha256 of the checkpoint and the tokenizer, so a changed file is
    converted again while an unchanged one costs only the hashing.
    """
    from shoestring.models.llama2c import convert_llama2c

    for p in (bin_path, tok_path):
        if not p.is_file():
            raise UserError(f"file not found: {p}")
    digest = hashlib.sha256((_sha256_file(bin_path) + _sha256_file(tok_path)).encode())
    key = digest.hexdigest()[:12]
    target = out / "converted" / f"{_LABEL_RE.sub('_', bin_path.stem)}-{key}"
    meta = {"bin": str(bin_path.resolve()), "tokenizer": str(tok_path.resolve()), "sha": key}
    if (target / "config.json").is_file():
        log(f"llama2.c {bin_path.name}: reusing the conversion in {target}")
        return target, {**meta, "seconds": 0.0, "cached": True}
    t0 = time.perf_counter()
    report = convert_llama2c(bin_path, tok_path, target, overwrite=True)
    seconds = time.perf_counter() - t0
    for line in report.lines():
        log(f"  {line}")
    log(f"llama2.c {bin_path.name}: converted in {seconds:.1f} s into {target}")
    return target, {**meta, "seconds": round(seconds, 3), "cached": False}


def resolve_models(
    models: list[str],
    out: Path,
    tokenizer_model: str | None = None,
    log: Callable[[str], None] = print,
) -> list[ModelSpec]:
    """Resolve every MODEL argument before any model runs, so a typo in the last one fails in
    the first second instead of after an hour of benchmarking the others."""
    from shoestring.models.loading import resolve_model_path

    specs: list[ModelSpec] = []
    seen: dict[str, int] = {}
    for arg in models:
        l2c = _split_llama2c_arg(arg, tokenizer_model)
        convert = None
        if l2c is not None:
            path, convert = _convert_cached(*l2c, out, log)
            location, source = str(path), "llama2c"
        else:
            location, source = resolve_model_path(arg)
        label = _label_for(arg, source, location)
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label}-{seen[label]}"
        specs.append(
            ModelSpec(
                arg=arg,
                label=label,
                path=location if source != "run" else arg,
                source=source,
                fingerprint=_weights_fingerprint(location, source),
                convert=convert,
            )
        )
    return specs


# ----------------------------------------------------------------------------- settings


def _settings(
    spec: ModelSpec, protocol: str, prompt_fingerprint: str | None, cfg: BenchConfig, dtype: str
) -> dict[str, Any]:
    """What decides a model's responses; lines made with other settings are never reused.

    Device, batch size and threads are deliberately absent: greedy decoding gives the same
    tokens on any of them (up to floating-point summation order), and a benchmark moved to a
    bigger machine halfway should be able to continue. They are recorded per session instead.
    """
    out: dict[str, Any] = {
        "model": spec.fingerprint,
        "protocol": protocol,
        "max_new_tokens": cfg.max_new_tokens,
        "dtype": dtype,
        "decoding": "greedy",
        "stop_strings": list(STOP_STRINGS[protocol]),
        "add_special_tokens": ADD_SPECIAL_TOKENS[protocol],
    }
    if protocol == "lm-eval-5shot":
        out["fewshot"] = [s.idx for s in LM_EVAL_FEWSHOT]
    if prompt_fingerprint is not None:
        out["prompt"] = prompt_fingerprint
    return out


def _settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _prompt_fingerprint(protocol: str, tokenizer: Any) -> str:
    """Hash of the prompt a fixed probe problem gets: a changed chat template, instruction or
    shot text changes it, so stale responses are never mixed with new ones."""
    text = build_prompt(_PROBE, protocol, tokenizer)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_SETTING_NAMES = {
    "model": "model weights (fingerprint)",
    "prompt": "prompt template (fingerprint)",
}


def _diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    """``"max_new_tokens: 12 -> 20; ..."`` for the settings that differ."""
    keys = sorted(set(old) | set(new))
    return "; ".join(
        f"{_SETTING_NAMES.get(k, k)}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in keys
        if old.get(k) != new.get(k)
    )


# ----------------------------------------------------------------------------- problems.jsonl


def read_problem_records(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Records of a problems.jsonl and one ``path:line: reason`` per unusable line.

    A last line without its newline was cut by a kill: it is removed from the file (so the
    next append starts on a fresh line) and its problem is generated again. A malformed line
    elsewhere is reported and its problem generated again; nothing is dropped silently.
    """
    if not path.exists():
        return [], []
    raw = path.read_bytes()
    issues: list[str] = []
    if raw and not raw.endswith(b"\n"):
        cut = raw.rfind(b"\n") + 1
        n_line = raw[:cut].count(b"\n") + 1
        with path.open("r+b") as f:
            f.truncate(cut)
        issues.append(
            f"{path}:{n_line}: incomplete last line (cut by a kill); removed, the "
            "problem is generated again"
        )
        raw = raw[:cut]
    records: list[dict[str, Any]] = []
    for n_line, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            issues.append(
                f"{path}:{n_line}: not valid JSON ({exc}); the problem is generated again"
            )
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("idx"), int):
            issues.append(f"{path}:{n_line}: not a problem record (no integer 'idx'); ignored")
            continue
        rec["_line"] = n_line
        records.append(rec)
    return records, issues


def score_response(response: str, gold: str) -> tuple[dict[str, str | None], dict[str, bool]]:
    """Every extractor's answer and whether it equals the gold answer."""
    extracted = extract_all(response)
    return extracted, {name: is_correct(pred, gold) for name, pred in extracted.items()}


# ----------------------------------------------------------------------------- memory


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux >= 4.0), so VmHWM read later is
    this model's true peak rather than the whole process's; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _vm_hwm_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _rss_mb() -> float:
    import psutil

    return round(psutil.Process().memory_info().rss / 2**20, 1)


# ----------------------------------------------------------------------------- metrics


def _accuracy(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    n = len(records)
    out: dict[str, dict[str, Any]] = {}
    for name in EXTRACTOR_NAMES:
        k = sum(1 for r in records if r["correct"].get(name))
        lo, hi = wilson_interval(k, n)
        out[name] = {
            "correct": k,
            "n": n,
            "accuracy": k / n if n else None,
            "ci95": [lo, hi],
            "text": format_accuracy(k, n),
        }
    return out


def _model_metrics(records: list[dict[str, Any]], state: dict[str, Any]) -> dict[str, Any]:
    """Accuracy of the selected problems, and speed summed over every session that generated
    lines for these settings (a resumed benchmark's throughput covers all of its work)."""
    sessions = state.get("sessions", [])
    gen_tokens = sum(s.get("generated_tokens", 0) for s in sessions)
    gen_seconds = sum(s.get("generation_seconds", 0.0) for s in sessions)
    gen_problems = sum(s.get("generated_problems", 0) for s in sessions)
    finish: dict[str, int] = {}
    for r in records:
        finish[r.get("finish_reason", "?")] = finish.get(r.get("finish_reason", "?"), 0) + 1
    loaded = [s for s in sessions if s.get("loaded")]
    last = loaded[-1] if loaded else {}
    peaks = [s["peak_rss_mb"] for s in loaded if s.get("peak_rss_mb") is not None]
    cuda = [s["cuda_peak_allocated_mb"] for s in loaded if s.get("cuda_peak_allocated_mb")]
    n = len(records)
    return {
        "n": n,
        "accuracy": _accuracy(records),
        "generated_tokens": gen_tokens,
        "generation_seconds": round(gen_seconds, 3),
        "tokens_per_second": gen_tokens / gen_seconds if gen_seconds > 0 else None,
        "seconds_per_problem": gen_seconds / gen_problems if gen_problems else None,
        "mean_latency_seconds": (sum(r.get("seconds", 0.0) for r in records) / n) if n else None,
        "mean_tokens_per_problem": (sum(r.get("tokens", 0) for r in records) / n) if n else None,
        "finish_reasons": finish,
        "load_seconds": last.get("load_seconds"),
        "peak_rss_mb": max(peaks) if peaks else None,
        "rss_before_load_mb": last.get("rss_before_load_mb"),
        "cuda_peak_allocated_mb": max(cuda) if cuda else None,
        "sessions": len(sessions),
        "throughput_note": "generated tokens (EOS included) / generation wall time of every "
        "session, model loading and scoring excluded",
    }


def compare_models(
    results: list[dict[str, Any]], by_model: dict[str, dict[int, dict[str, Any]]]
) -> list[dict[str, Any]]:
    """McNemar's exact test for every pair of models on the problems both have scored, each
    with its own primary extractor (the number each row of the table reports)."""
    out = []
    for i, a in enumerate(results):
        for b in results[i + 1 :]:
            ra, rb = by_model[a["label"]], by_model[b["label"]]
            common = sorted(set(ra) & set(rb))
            ea, eb = a["primary_extractor"], b["primary_extractor"]
            res = mcnemar_exact(
                [bool(ra[k]["correct"][ea]) for k in common],
                [bool(rb[k]["correct"][eb]) for k in common],
                a_name=a["label"],
                b_name=b["label"],
            )
            out.append(
                {
                    "a": a["label"],
                    "b": b["label"],
                    "extractor_a": ea,
                    "extractor_b": eb,
                    "n": len(common),
                    "a_right_b_wrong": res.b10,
                    "a_wrong_b_right": res.b01,
                    "p_value": res.p_value,
                    "significant": res.significant,
                    "statement": res.statement,
                }
            )
    return out


# ----------------------------------------------------------------------------- report


def _fmt(x: float | None, spec: str = ".1f", unit: str = "") -> str:
    return "-" if x is None else f"{x:{spec}}{unit}"


def _fence(text: str, limit: int = 700) -> str:
    text = text if len(text) <= limit else text[:limit] + f" [... {len(text) - limit} chars]"
    return "```text\n" + text.replace("```", "` ` `") + "\n```"


def _load_note(system: dict[str, Any]) -> str:
    """How busy the host was: timings from a shared, busy machine are not comparable."""
    host, own = system.get("host_cpu_percent_mean"), system.get("cpu_percent_mean")
    if host is None:
        return "Host CPU use was not sampled."
    note = f"Host CPU use during the run: {host:.0f}% of all cores (this process: {own:.0f}%)."
    if own is not None and host - own > 25:
        note += (
            " Other processes used the CPU too, so the speed figures are lower than this "
            "host can do and only comparable with runs under the same load."
        )
    return note


def render_report(
    summary: dict[str, Any], by_model: dict[str, dict[int, dict[str, Any]]], examples: int = 2
) -> str:
    """report.md: the comparison table, accuracy by extractor, paired tests, examples."""
    data = summary.get("data", {})
    models = summary.get("models", [])
    runtime = summary.get("runtime", {})
    lines = ["# shoestring bench: GSM8K", ""]
    subset = (
        "all problems"
        if data.get("limit") is None
        else f"limit {data['limit']}, "
        + (
            "first N in file order"
            if data.get("subset_seed") is None
            else f"subset seed {data['subset_seed']}"
        )
    )
    lines += [
        f"Status: **{summary.get('status')}**. Data: `{data.get('source')}` "
        f"({data.get('n_selected')} problems: {subset}; {len(data.get('skipped_lines', []))} "
        "malformed line(s) skipped). Greedy decoding, at most "
        f"{summary.get('settings', {}).get('max_new_tokens')} new tokens. Host: "
        f"{summary.get('host', {}).get('cpu', '?')}, device {runtime.get('device')}, "
        f"{runtime.get('threads')} threads.",
        "",
        _load_note(summary.get("system", {})),
        "",
        "Accuracy is the primary extractor of the model's protocol (chat-cot and lm-eval-5shot: "
        "strict `#### N`; plain: flexible, the last number) with its 95% Wilson interval. "
        "Tokens/s = generated tokens / generation wall time (loading excluded). Peak RSS is the "
        "process's resident-set peak while the model loaded and generated (a sampled and "
        "kernel-tracked peak, not a difference); the RSS before loading (Python, torch, earlier "
        "models' leftovers) is shown next to it.",
        "",
        "| model | protocol | accuracy [95% CI] | tokens/s | s/problem | load s |"
        " peak RSS MB (before load) | params | dtype |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for m in models:
        mm = m.get("metrics", {})
        acc = mm.get("accuracy", {}).get(m.get("primary_extractor"), {})
        mem = _fmt(mm.get("peak_rss_mb"))
        if mm.get("rss_before_load_mb") is not None:
            mem += f" ({mm['rss_before_load_mb']:.1f})"
        if mm.get("cuda_peak_allocated_mb"):
            mem += f" (CUDA {mm['cuda_peak_allocated_mb']:.0f})"
        params = m.get("n_params")
        lines.append(
            f"| {m['label']} | {m.get('protocol')} ({m.get('primary_extractor')}) | "
            f"{acc.get('text', '-')} | {_fmt(mm.get('tokens_per_second'))} | "
            f"{_fmt(mm.get('seconds_per_problem'), '.2f')} | {_fmt(mm.get('load_seconds'), '.2f')}"
            f" | {mem} | {'-' if params is None else f'{params / 1e6:.2f}M'} | "
            f"{m.get('dtype', '-')} |"
        )
    lines += [
        "",
        "## Accuracy by extractor",
        "",
        "| model | " + " | ".join(EXTRACTOR_NAMES) + " |",
        "|---|" + "---|" * len(EXTRACTOR_NAMES),
    ]
    for m in models:
        accs = m.get("metrics", {}).get("accuracy", {})
        cells = [accs.get(e, {}).get("text", "-") for e in EXTRACTOR_NAMES]
        lines.append(f"| {m['label']} | " + " | ".join(cells) + " |")
    lines += ["", "## Paired comparisons (McNemar exact test, same problems)", ""]
    comps = summary.get("comparisons", [])
    if not comps:
        lines.append("One model only: nothing to compare.")
    for c in comps:
        lines.append(
            f"- **{c['a']} vs {c['b']}** ({c['extractor_a']} vs {c['extractor_b']}): "
            f"{c['statement']}."
        )
    if comps:
        lines += [
            "",
            "A difference that is not significant is not evidence that the models "
            "differ: with n this small, only large gaps can be told apart.",
        ]
    for m in models:
        recs = [by_model.get(m["label"], {})[k] for k in sorted(by_model.get(m["label"], {}))]
        e = m.get("primary_extractor", "flexible")
        right = [r for r in recs if r["correct"].get(e)][:examples]
        wrong = [r for r in recs if not r["correct"].get(e)][:examples]
        if not examples or not recs:
            continue
        lines += ["", f"## Examples: {m['label']}", ""]
        for title, group in (("correct", right), ("incorrect", wrong)):
            if not group:
                lines += [f"No {title} responses.", ""]
            for r in group:
                lines += [
                    f"**{title}** - problem {r['idx']}, gold {r['gold']}, {e} extracted "
                    f"{r['extracted'].get(e)!r}, {r.get('tokens')} tokens, finish "
                    f"{r.get('finish_reason')}",
                    "",
                    _fence(r["question"], 400),
                    "",
                    _fence(r["response"]),
                    "",
                ]
    if summary.get("error"):
        lines += ["", f"**Error:** {summary['error']}"]
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------- the run


class _Bench:
    """One invocation of ``bench``: owns the run directory and the per-model files."""

    def __init__(
        self, cfg: BenchConfig, progress: bool, echo: bool, on_problem: OnProblem | None
    ) -> None:
        self.cfg = cfg
        self.progress = progress
        self.on_problem = on_problem
        self.out = Path(cfg.out)
        existing = self.out / "summary.json"
        if existing.exists():
            try:
                kind = read_json(existing).get("kind")
            except (OSError, json.JSONDecodeError, AttributeError):
                kind = None
            if kind not in (None, "bench"):
                raise UserError(
                    f"{self.out} is a '{kind}' run directory, not a bench; choose another --out"
                )
        self.rundir = RunDir(self.out, "bench", echo=echo)
        self.problems: list[Problem] = []
        self.results: list[dict[str, Any]] = []
        self.by_model: dict[str, dict[int, dict[str, Any]]] = {}
        self.data_issues: list[str] = []

    def log(self, msg: str) -> None:
        self.rundir.log(msg)

    # -- data
    def load_data(self) -> None:
        c = self.cfg
        self.problems = load_gsm8k(
            c.data,
            c.split,
            c.limit,
            c.subset_seed,
            strict=c.strict_data,
            on_warning=self.data_issues.append,
        )
        for msg in self.data_issues:
            self.log(f"data: skipped {msg}")
        self.log(
            f"data: {len(self.problems)} problems from {c.data}"
            + (f" ({len(self.data_issues)} malformed line(s) skipped)" if self.data_issues else "")
        )

    def data_summary(self) -> dict[str, Any]:
        c = self.cfg
        src = Path(c.data)
        source = str(src.resolve()) if src.exists() else c.data
        return {
            "source": source,
            "split": c.split,
            "limit": c.limit,
            "subset_seed": c.subset_seed,
            "n_selected": len(self.problems),
            "idx": [p.idx for p in self.problems],
            "skipped_lines": self.data_issues,
        }

    # -- one model
    def _state_path(self, label: str) -> Path:
        return self.out / "models" / label / "state.json"

    def _existing(
        self, spec: ModelSpec, settings_hash: str | None, quiet: bool = False
    ) -> dict[int, dict[str, Any]]:
        """Stored records of the selected problems, checked against the data and settings."""
        path = self.out / "models" / spec.label / "problems.jsonl"
        records, issues = read_problem_records(path)
        for msg in [] if quiet else issues:
            self.log(f"{spec.label}: {msg}")
        wanted = {p.idx: p for p in self.problems}
        found: dict[int, dict[str, Any]] = {}
        for rec in records:
            where = f"{path}:{rec.pop('_line')}"
            if settings_hash is not None and rec.get("settings_hash") != settings_hash:
                raise UserError(
                    f"{where} was generated with other settings (hash {rec.get('settings_hash')}"
                    f", now {settings_hash}); use a new --out, or rerun with the settings of "
                    f"{self.out}/config.json"
                )
            p = wanted.get(rec["idx"])
            if p is None:
                continue  # scored in an earlier run with a larger --limit: kept, not counted
            if rec.get("question") != p.question or str(rec.get("gold")) != p.gold:
                raise UserError(
                    f"{where}: problem {p.idx} differs from problem {p.idx} of {self.cfg.data} "
                    "(the data changed since these responses were generated); use a new --out"
                )
            found[p.idx] = rec
        return found

    def check_settings_early(self, spec: ModelSpec, rt: Any) -> dict[str, Any]:
        """Compare the settings known without loading the model (weights, max new tokens,
        dtype, an explicit protocol) with those of the stored responses; returns the state.

        Run for every model before anything is written, so a changed flag fails at once and
        leaves a finished benchmark's summary and report as they were. The default protocol
        and the prompt fingerprint need the tokenizer and are checked after loading.
        """
        c = self.cfg
        state_path = self._state_path(spec.label)
        state: dict[str, Any] = read_json(state_path) if state_path.exists() else {}
        old = state.get("settings")
        cheap = {"model": spec.fingerprint, "max_new_tokens": c.max_new_tokens, "dtype": rt.dtype}
        if c.protocol != "auto":
            cheap["protocol"] = c.protocol
        if old is not None:
            bad = {k: v for k, v in cheap.items() if old.get(k) != v}
            if bad:
                raise UserError(
                    f"{self.out}/models/{spec.label} holds responses made with other settings ("
                    f"{_diff({k: old.get(k) for k in bad}, bad)}); use a new --out to benchmark"
                    " these settings, or rerun with the old ones to continue"
                )
        self._existing(spec, state.get("settings_hash"))  # changed data fails here too
        return state

    def run_model(self, spec: ModelSpec, rt: Any) -> dict[str, Any]:
        """Load (only when problems are missing), generate the missing problems, score."""
        import torch

        from shoestring.models.loading import load_model_and_tokenizer, quiet_hf_progress
        from shoestring.runs.monitor import SystemMonitor

        c = self.cfg
        label = spec.label
        state_path = self._state_path(label)
        state = self.check_settings_early(spec, rt)
        old = state.get("settings")
        done = self._existing(spec, state.get("settings_hash"), quiet=True)
        missing = [p for p in self.problems if p.idx not in done]
        session: dict[str, Any] = {
            "started_at": now_iso(),
            "device": rt.device,
            "threads": rt.threads,
            "batch_size": c.batch_size or "auto",
            "reused_problems": len(done),
            "generated_problems": 0,
            "generated_tokens": 0,
            "generation_seconds": 0.0,
            "loaded": False,
        }
        info: dict[str, Any] = dict(state.get("info", {}))
        # "auto" reuses a stored default protocol without loading; a protocol that was given
        # explicitly last time needs the tokenizer to know whether it is this model's default.
        stored_default = str(state.get("info", {}).get("protocol_source", "")).startswith("default")
        if not missing and old is not None and (c.protocol != "auto" or stored_default):
            self.log(f"{label}: all {len(done)} problems already scored; not loading the model")
            protocol = old["protocol"]
        else:
            monitor = SystemMonitor(interval=0.1)
            session["rss_before_load_mb"] = _rss_mb()
            hwm_reset = _reset_peak_rss()
            if rt.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            monitor.start()
            try:
                with quiet_hf_progress(not self.progress):
                    model, tokenizer, info = load_model_and_tokenizer(
                        spec.path,
                        device=rt.device,
                        dtype=rt.dtype,
                        trust_remote_code=c.trust_remote_code,
                    )
                session["loaded"] = True
                session["load_seconds"] = round(info["load_seconds"], 3)
                if c.protocol == "auto":
                    protocol = default_protocol(tokenizer)
                    info["protocol_source"] = (
                        "default: the tokenizer has a chat template"
                        if has_chat_template(tokenizer)
                        else "default: no chat template"
                    )
                else:
                    protocol = c.protocol
                    info["protocol_source"] = "--protocol"
                settings = _settings(
                    spec, protocol, _prompt_fingerprint(protocol, tokenizer), c, info["dtype"]
                )
                shash = _settings_hash(settings)
                stale = sorted(i for i, r in done.items() if r.get("settings_hash") != shash)
                if stale and old is None:  # state.json lost: the lines' own hashes decide
                    raise UserError(
                        f"{self.out}/models/{label}/problems.jsonl holds responses made with "
                        f"other settings (problems {stale[:5]}...) and no state.json says "
                        "which; use a new --out"
                    )
                if old is not None and state.get("settings_hash") != shash:
                    raise UserError(
                        f"{self.out}/models/{label} holds responses made with other settings ("
                        f"{_diff(old, settings)}); use a new --out to benchmark these settings, "
                        "or rerun with the old ones to continue"
                    )
                state.update(
                    {
                        "version": STATE_VERSION,
                        "label": label,
                        "model": spec.to_dict(),
                        "settings": settings,
                        "settings_hash": shash,
                        "info": {k: v for k, v in info.items() if k != "load_seconds"},
                    }
                )
                state.setdefault("sessions", [])
                atomic_write_json(state_path, state)
                self.log(
                    f"{label}: loaded {info['path']} ({info['model_type']}, "
                    f"{info['n_params'] / 1e6:.2f}M params) on {info['device']} as "
                    f"{info['dtype']} in {info['load_seconds']:.2f} s; protocol {protocol} "
                    f"({info['protocol_source']}); {len(done)} problems reused, "
                    f"{len(missing)} to generate"
                )
                self.rundir.metric(
                    {
                        "event": "model_loaded",
                        "model": label,
                        "load_seconds": info["load_seconds"],
                        "n_params": info["n_params"],
                        "protocol": protocol,
                        "to_generate": len(missing),
                        "reused": len(done),
                    }
                )
                if missing:
                    self._generate(
                        spec,
                        model,
                        tokenizer,
                        protocol,
                        settings,
                        shash,
                        missing,
                        done,
                        session,
                        n_session=len(state["sessions"]),
                    )
            finally:
                stats = monitor.stop()
                hwm = _vm_hwm_mb() if hwm_reset else None
                peak = max(x for x in (stats.get("peak_rss_mb"), hwm) if x is not None)
                session.update(
                    {
                        "peak_rss_mb": peak,
                        "peak_rss_sampled_mb": stats["peak_rss_mb"],
                        "peak_rss_kernel_mb": hwm,
                        "cpu_percent_mean": stats.get("cpu_percent_mean"),
                    }
                )
                if rt.device.startswith("cuda"):
                    session["cuda_peak_allocated_mb"] = round(
                        torch.cuda.max_memory_allocated() / 2**20, 1
                    )
                    session["cuda_peak_reserved_mb"] = round(
                        torch.cuda.max_memory_reserved() / 2**20, 1
                    )
                session["finished_at"] = now_iso()
                if state.get("settings_hash"):
                    state.setdefault("sessions", []).append(session)
                    atomic_write_json(state_path, state)
                model = tokenizer = None  # noqa: F841 - free before the next model loads
                gc.collect()
                if rt.device.startswith("cuda"):
                    torch.cuda.empty_cache()
        return self._result(spec, state, protocol, done)

    def _generate(
        self,
        spec: ModelSpec,
        model: Any,
        tokenizer: Any,
        protocol: str,
        settings: dict[str, Any],
        shash: str,
        missing: list[Problem],
        done: dict[int, dict[str, Any]],
        session: dict[str, Any],
        n_session: int,
    ) -> None:
        """Generate ``missing``, appending each scored record to problems.jsonl as it ends."""
        from shoestring.eval.generation import SamplingConfig, auto_batch_size, generate_all

        c = self.cfg
        label = spec.label
        prompts = [build_prompt(p, protocol, tokenizer) for p in missing]
        scfg = SamplingConfig(
            max_new_tokens=c.max_new_tokens,
            batch_size=c.batch_size,
            stop_strings=list(settings["stop_strings"]),
            add_special_tokens=settings["add_special_tokens"],
        ).check()
        add = settings["add_special_tokens"]
        lengths = [len(x) for x in tokenizer(prompts, add_special_tokens=add)["input_ids"]]
        ctx = getattr(model.config, "max_position_embeddings", None)
        if isinstance(ctx, int) and ctx > 0:
            over = sum(1 for n in lengths if n + c.max_new_tokens > ctx)
            if over:
                self.log(
                    f"{label}: WARNING {over} of {len(prompts)} prompts plus "
                    f"{c.max_new_tokens} new tokens exceed the model's context of {ctx} "
                    f"positions (longest prompt {max(lengths)} tokens); text past it is "
                    "unreliable, and models with learned positions will fail"
                )
        session["batch_size_auto_first"] = (
            None if c.batch_size else auto_batch_size(model, max(lengths), scfg)
        )
        session["prompt_tokens_mean"] = round(sum(lengths) / len(lengths), 1)
        path = self.out / "models" / label / "problems.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()

        with path.open("a", encoding="utf-8") as f:

            def deliver(i: int, res: Any) -> None:
                p = missing[i]
                extracted, correct = score_response(res.text, p.gold)
                rec = {
                    "idx": p.idx,
                    "question": p.question,
                    "gold": p.gold,
                    "response": res.text,
                    "extracted": extracted,
                    "correct": correct,
                    "tokens": res.n_tokens,
                    "prompt_tokens": res.prompt_tokens,
                    "finish_reason": res.finish_reason,
                    "stop_string": res.stop_string,
                    "seconds": round(res.seconds, 4),
                    "settings_hash": shash,
                    "session": n_session,
                }
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                f.flush()
                done[p.idx] = rec
                session["generated_problems"] += 1
                session["generated_tokens"] += res.n_tokens
                session["generation_seconds"] = round(time.perf_counter() - t0, 4)
                if self.on_problem is not None:
                    self.on_problem(label, rec)

            generate_all(
                model,
                tokenizer,
                prompts,
                scfg,
                callback=deliver,
                progress=self.progress,
                desc=label,
            )

    def _result(
        self, spec: ModelSpec, state: dict[str, Any], protocol: str, done: dict[int, dict[str, Any]]
    ) -> dict[str, Any]:
        info = state.get("info", {})
        records = [done[p.idx] for p in self.problems if p.idx in done]
        self.by_model[spec.label] = {r["idx"]: r for r in records}
        metrics = _model_metrics(records, state)
        result = {
            "label": spec.label,
            "model": spec.arg,
            "source": spec.source,
            "path": info.get("path", spec.path),
            "model_type": info.get("model_type"),
            "n_params": info.get("n_params"),
            "device": info.get("device"),
            "dtype": info.get("dtype"),
            "protocol": protocol,
            "protocol_source": info.get("protocol_source"),
            "primary_extractor": PRIMARY_EXTRACTOR[protocol],
            "settings": state.get("settings"),
            "settings_hash": state.get("settings_hash"),
            "complete": len(records) == len(self.problems),
            "problems_file": str(Path("models") / spec.label / "problems.jsonl"),
            "metrics": metrics,
        }
        if spec.convert is not None:
            result["converted_from"] = spec.convert
        return result

    def _partial(self, spec: ModelSpec) -> dict[str, Any] | None:
        """A result from whatever is on disk (for an interrupted or failed model)."""
        state_path = self._state_path(spec.label)
        if not state_path.exists():
            return None
        state = read_json(state_path)
        if "settings" not in state:
            return None
        try:
            done = self._existing(spec, state.get("settings_hash"), quiet=True)
        except UserError:
            return None
        return self._result(spec, state, state["settings"]["protocol"], done)

    # -- whole run
    def summary_fields(self) -> dict[str, Any]:
        comps = compare_models(self.results, self.by_model)
        return {
            "data": self.data_summary(),
            "models": self.results,
            "comparisons": comps,
            "settings": {
                "max_new_tokens": self.cfg.max_new_tokens,
                "protocol": self.cfg.protocol,
                "decoding": "greedy",
                "batch_size": self.cfg.batch_size or "auto",
                "primary_extractor": PRIMARY_EXTRACTOR,
                "chat_cot_instruction": CHAT_COT_INSTRUCTION,
            },
        }

    def write_outputs(
        self, status: str, error: str | None, wall: float, system: dict[str, Any]
    ) -> None:
        fields = self.summary_fields()
        self.rundir.finish(
            status, **fields, error=error, session_wall_seconds=round(wall, 3), system=system
        )
        atomic_write_text(
            self.out / "report.md",
            render_report(self.rundir.summary, self.by_model, self.cfg.examples),
        )


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_bench(
    cfg: BenchConfig,
    *,
    progress: bool = True,
    echo: bool = True,
    on_problem: OnProblem | None = None,
) -> Path:
    """Benchmark every model of ``cfg`` on the same GSM8K problems; returns the out dir.

    ``on_problem(label, record)`` is called after each problem's line is written (tests use
    it to interrupt a run part-way). Ctrl-C (or SIGTERM) marks the run ``interrupted``, keeps
    every line written so far and re-raises KeyboardInterrupt; rerunning resumes.
    """
    from shoestring.runs.monitor import SystemMonitor
    from shoestring.runtime import setup_runtime

    cfg.check()
    bench = _Bench(cfg, progress, echo, on_problem)
    wall0 = time.perf_counter()
    monitor = SystemMonitor().start()
    status, error = "failed", None
    # Preflight: everything that can fail on a bad argument fails here, before config.json
    # or summary.json is touched (a typo must not turn a finished benchmark into "failed").
    try:
        rt = setup_runtime(cfg.device, cfg.dtype, cfg.threads)
        bench.load_data()
        specs = resolve_models(cfg.models, bench.out, cfg.tokenizer_model, bench.log)
        for spec in specs:
            bench.check_settings_early(spec, rt)
    except BaseException as exc:
        bench.log(f"not started: {exc}")
        bench.rundir.close()
        monitor.stop()
        raise
    prev = None
    if threading.current_thread() is threading.main_thread():
        prev = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        bench.rundir.start(
            dataclasses.asdict(cfg),
            runtime=rt.to_dict(),
            finished_at=None,
            error=None,
            models=[],
            comparisons=[],
        )
        bench.log(
            f"bench into {bench.out}: {len(cfg.models)} model(s), device {rt.device}, "
            f"dtype {rt.dtype}, {rt.threads} threads"
        )
        bench.rundir.update_summary(
            data=bench.data_summary(), model_specs=[s.to_dict() for s in specs]
        )
        for spec in specs:
            result = bench.run_model(spec, rt)
            bench.results.append(result)
            m = result["metrics"]
            primary = m["accuracy"][result["primary_extractor"]]
            bench.log(
                f"{spec.label}: {result['primary_extractor']} {primary['text']}; "
                f"{_fmt(m['tokens_per_second'])} tokens/s; peak RSS "
                f"{_fmt(m['peak_rss_mb'])} MB"
            )
            bench.rundir.metric(
                {
                    "event": "model_result",
                    "model": spec.label,
                    "protocol": result["protocol"],
                    "extractor": result["primary_extractor"],
                    "accuracy": primary["accuracy"],
                    "ci95": primary["ci95"],
                    "n": primary["n"],
                    "tokens_per_second": m["tokens_per_second"],
                    "load_seconds": m["load_seconds"],
                    "peak_rss_mb": m["peak_rss_mb"],
                }
            )
            bench.rundir.update_summary(models=bench.results)
        status = "finished"
    except KeyboardInterrupt:
        status = "interrupted"
        bench.log("interrupted; every finished problem is kept - rerun the same command to resume")
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        bench.log(f"failed: {error}")
        raise
    finally:
        if prev is not None:
            signal.signal(signal.SIGTERM, prev)
        if status != "finished":
            # Report what is on disk for the model that stopped part-way.
            done_labels = {r["label"] for r in bench.results}
            for spec in specs:
                if spec.label not in done_labels:
                    partial = bench._partial(spec)
                    if partial is not None:
                        bench.results.append(partial)
        comps = compare_models(bench.results, bench.by_model)
        for comp in comps:
            bench.rundir.metric({"event": "comparison", **comp})
            bench.log(f"{comp['a']} vs {comp['b']}: {comp['statement']}")
        bench.write_outputs(status, error, time.perf_counter() - wall0, monitor.stop())
        bench.log(f"{status}: report in {bench.out / 'report.md'}")
        bench.rundir.close()
    if status == "interrupted":
        raise KeyboardInterrupt
    return bench.out


# ----------------------------------------------------------------------------- CLI


def add_cli(subparsers: Any) -> None:
    """Register ``bench`` on the top-level parser."""
    p = subparsers.add_parser(
        "bench",
        help="GSM8K accuracy (with 95%% CIs and paired tests), speed and memory of models",
        description="Benchmark one or more causal LMs on the same GSM8K problems with the "
        "batched engine: accuracy per extractor with 95% Wilson intervals, McNemar exact tests "
        "between models, tokens/s, load time and peak memory. Rerun into the same --out to "
        "resume. See docs/bench.md.",
    )
    p.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="HF model dir, shoestring run dir, Hub name (online), or llama2.c "
        "MODEL.bin[:TOKENIZER.model]",
    )
    p.add_argument(
        "--data",
        required=True,
        help="GSM8K JSONL file, a directory with {split}.jsonl, or openai/gsm8k",
    )
    p.add_argument("--split", default="test", help="split inside a directory / on the hub")
    p.add_argument("--limit", type=int, default=None, help="score N problems (default: all)")
    p.add_argument(
        "--subset-seed",
        type=int,
        default=None,
        help="with --limit: a seeded random subset instead of the first N",
    )
    p.add_argument(
        "--protocol",
        default="auto",
        choices=("auto", *PROTOCOLS),
        help="prompt protocol; auto = chat-cot for models with a chat template, plain otherwise",
    )
    p.add_argument("--max-new-tokens", type=int, default=256, help="tokens per problem at most")
    p.add_argument("--batch-size", type=int, default=0, help="rows per batch; 0 = auto")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="weights dtype; auto = bf16 where the host computes it fast, else fp32",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = physical cores")
    p.add_argument("--out", default="runs/bench", help="results directory; rerun to resume")
    p.add_argument(
        "--tokenizer-model",
        default=None,
        metavar="TOKENIZER.model",
        help="sentencepiece model for llama2.c .bin models given without :TOKENIZER",
    )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow models that ship their own Python code (off by default)",
    )
    p.add_argument(
        "--strict-data",
        action="store_true",
        help="reject the data on its first malformed line (default: skip, report)",
    )
    p.add_argument(
        "--examples",
        type=int,
        default=2,
        help="correct and incorrect responses per model shown in report.md",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The BenchConfig an argparse namespace asks for."""
    return BenchConfig(
        models=list(args.models),
        data=args.data,
        split=args.split,
        limit=args.limit,
        subset_seed=args.subset_seed,
        protocol=args.protocol,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        dtype=args.dtype,
        device=args.device,
        threads=args.threads,
        out=args.out,
        tokenizer_model=args.tokenizer_model,
        trust_remote_code=args.trust_remote_code,
        strict_data=args.strict_data,
        examples=args.examples,
    )


def run(args: argparse.Namespace) -> int:
    """CLI entry: run the benchmark, print where the report is; 130 after Ctrl-C."""
    cfg = config_from_args(args)
    try:
        out = run_bench(cfg, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"interrupted; rerun the same command to resume from {cfg.out}", file=sys.stderr)
        return 130
    summary = read_json(out / "summary.json")
    for m in summary.get("models", []):
        acc = m["metrics"]["accuracy"][m["primary_extractor"]]["text"]
        print(f"{m['label']:<24} {m['protocol']:<14} {m['primary_extractor']:<9} {acc}")
    for c in summary.get("comparisons", []):
        print(f"{c['a']} vs {c['b']}: {c['statement']}")
    print(f"report: {out / 'report.md'}")
    return 0
