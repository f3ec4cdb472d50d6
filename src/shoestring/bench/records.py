"""problems.jsonl and state.json: what was generated for a model, and with which settings.

Why this module exists: a benchmark of several models can take hours, so it is resumable - a
rerun into the same ``--out`` generates only the problems that are missing. That is only
honest when the stored lines were made with exactly the settings asked for now, so every line
carries the hash of its settings (:func:`settings_for`, :func:`settings_hash`) and every
mismatch - settings, or the problem text itself - is an error that suggests a new ``--out``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shoestring.data.gsm8k import Problem
from shoestring.errors import UserError
from shoestring.rundir.directory import atomic_write_text, read_json
from shoestring.scoring.protocols import Protocol, Scored

__all__ = [
    "STATE_VERSION",
    "check_loaded_settings",
    "check_stored_settings",
    "describe_changes",
    "problem_record",
    "problems_path",
    "prompt_hash",
    "read_problem_records",
    "settings_for",
    "settings_hash",
    "sort_problem_lines",
    "state_path",
    "stored_records",
]

STATE_VERSION = 1

_SETTING_NAMES = {
    "model": "model weights (fingerprint)",
    "prompt": "prompt template (fingerprint)",
}


def problems_path(out: Path, label: str) -> Path:
    """``OUT/models/<label>/problems.jsonl``: one scored problem per line."""
    return out / "models" / label / "problems.jsonl"


def state_path(out: Path, label: str) -> Path:
    """``OUT/models/<label>/state.json``: the settings the lines were made with, and sessions."""
    return out / "models" / label / "state.json"


# ----------------------------------------------------------------------------- settings


def settings_for(
    fingerprint: str, protocol: Protocol, tokenizer: Any, max_new_tokens: int, dtype: str
) -> dict[str, Any]:
    """What decides a model's responses; lines made with other settings are never reused.

    Device, batch size and threads are deliberately absent: greedy decoding gives the same
    tokens on any of them (up to floating-point summation order), and a benchmark moved to a
    bigger machine halfway should be able to continue. They are recorded per session instead.
    The prompt fingerprint (the prompt a fixed probe question gets) catches a changed chat
    template, instruction or shot text.
    """
    out: dict[str, Any] = {
        "model": fingerprint,
        "protocol": protocol.name,
        "max_new_tokens": max_new_tokens,
        "dtype": dtype,
        "decoding": "greedy",
        "stop_strings": list(protocol.stop_strings),
        "add_special_tokens": protocol.add_special_tokens,
    }
    if "fewshot" in protocol.to_dict():  # few-shot, in one prompt or as chat turns
        out["fewshot"] = protocol.to_dict()["fewshot"]
    out["prompt"] = protocol.prompt_fingerprint(tokenizer)
    return out


def settings_hash(settings: dict[str, Any]) -> str:
    """A short, order-independent hash of :func:`settings_for`'s dict (stored on every line)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def describe_changes(old: dict[str, Any], new: dict[str, Any]) -> str:
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


def sort_problem_lines(path: Path, problems: Sequence[Problem]) -> None:
    """Rewrite a model's complete problems.jsonl in the order of ``problems``, lines kept
    byte for byte (those of problems not selected now, and unreadable ones, follow in their
    order). One process appends lines as problems finish, torchrun's rank 0 round by round;
    sorted, the finished file is the same whichever ran it, and reads in problem order."""
    position = {p.idx: k for k, p in enumerate(problems)}
    keyed = []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    for n_line, line in enumerate(lines):
        try:
            idx = json.loads(line).get("idx")
        except (json.JSONDecodeError, AttributeError):
            idx = None  # reported when the file was read; kept, at the end
        keyed.append((position.get(idx, len(position)), n_line, line))
    text = "".join(line for *_, line in sorted(keyed))
    if text != "".join(lines):
        atomic_write_text(path, text)


def prompt_hash(prompt: str) -> str:
    """The hash lm-eval logs per sample as ``prompt_hash``: SHA-256 of the whole prompt text
    sent to the model (few-shot examples and chat template included, before any truncation),
    as ``lm_eval.utils.hash_string`` computes it - so bench's problems.jsonl and lm-eval's
    samples file can be joined problem by problem."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def problem_record(
    problem: Problem,
    result: Any,
    scored: Scored,
    shash: str,
    session: int,
    *,
    prompt: str,
    prompt_tokens_cut: int = 0,
    log_prompt: bool = False,
) -> dict[str, Any]:
    """The problems.jsonl line of one generated, judged problem (``result`` is the engine's
    GenerationResult; every extractor's answer and verdict is kept, not only the primary).

    ``prompt`` is the text the model was asked (its hash is always kept, the text itself
    with ``log_prompt``); ``prompt_tokens_cut`` the tokens the context policy removed from
    its left (``models/context.py``; 0 = the whole prompt was read)."""
    out = {
        "idx": problem.idx,
        "question": problem.question,
        "gold": problem.gold,
        "response": result.text,
        "extracted": scored.extracted,
        "correct": scored.correct,
        "tokens": result.n_tokens,
        "prompt_tokens": result.prompt_tokens,
        "finish_reason": result.finish_reason,
        "stop_string": result.stop_string,
        "seconds": round(result.seconds, 4),
        "prompt_hash": prompt_hash(prompt),
        "prompt_tokens_cut": prompt_tokens_cut,
        "settings_hash": shash,
        "session": session,
    }
    if log_prompt:
        out["prompt"] = prompt
    return out


def stored_records(
    out: Path,
    label: str,
    problems: Sequence[Problem],
    data_name: str,
    shash: str | None,
    log: Callable[[str], None] | None = None,
) -> dict[int, dict[str, Any]]:
    """Stored records of the selected problems, checked against the data and settings.

    A line made with another settings hash, or whose question or gold answer differs from the
    problem of the same index in the data now, is an error: mixing them would report a number
    no single setting produced. Lines of problems not selected now are kept but not counted.
    """
    path = problems_path(out, label)
    records, issues = read_problem_records(path)
    for msg in issues if log is not None else []:
        log(f"{label}: {msg}")
    wanted = {p.idx: p for p in problems}
    found: dict[int, dict[str, Any]] = {}
    for rec in records:
        where = f"{path}:{rec.pop('_line')}"
        if shash is not None and rec.get("settings_hash") != shash:
            raise UserError(
                f"{where} was generated with other settings (hash {rec.get('settings_hash')}"
                f", now {shash}); use a new --out, or rerun with the settings of "
                f"{out}/config.json"
            )
        p = wanted.get(rec["idx"])
        if p is None:
            continue  # scored in an earlier run with a larger --limit: kept, not counted
        if rec.get("question") != p.question or str(rec.get("gold")) != p.gold:
            raise UserError(
                f"{where}: problem {p.idx} differs from problem {p.idx} of {data_name} "
                "(the data changed since these responses were generated); use a new --out"
            )
        found[p.idx] = rec
    return found


def check_stored_settings(
    out: Path,
    label: str,
    cheap: dict[str, Any],
    problems: Sequence[Problem],
    data_name: str,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Compare the settings known without loading the model (``cheap``: weights, max new
    tokens, dtype, an explicit protocol) with those of the stored responses; returns state.json.

    Run for every model before anything is written, so a changed flag fails at once and
    leaves a finished benchmark's summary and report as they were. The default protocol and
    the prompt fingerprint need the tokenizer and are checked after loading.
    """
    path = state_path(out, label)
    state: dict[str, Any] = read_json(path) if path.exists() else {}
    old = state.get("settings")
    if old is not None:
        bad = {k: v for k, v in cheap.items() if old.get(k) != v}
        if bad:
            raise UserError(
                f"{out}/models/{label} holds responses made with other settings ("
                f"{describe_changes({k: old.get(k) for k in bad}, bad)}); use a new --out to "
                "benchmark these settings, or rerun with the old ones to continue"
            )
    stored_records(out, label, problems, data_name, state.get("settings_hash"), log)
    return state


def check_loaded_settings(
    out: Path,
    label: str,
    state: dict[str, Any],
    settings: dict[str, Any],
    shash: str,
    done: dict[int, dict[str, Any]],
) -> None:
    """Compare the full settings, known once the model is loaded (the default protocol, the
    prompt fingerprint), with those of the stored responses ``done``.

    Without a state.json (lost) the lines' own hashes decide; with one, its hash does.
    """
    old = state.get("settings")
    stale = sorted(i for i, r in done.items() if r.get("settings_hash") != shash)
    if stale and old is None:
        raise UserError(
            f"{out}/models/{label}/problems.jsonl holds responses made with "
            f"other settings (problems {stale[:5]}...) and no state.json says "
            "which; use a new --out"
        )
    if old is not None and state.get("settings_hash") != shash:
        raise UserError(
            f"{out}/models/{label} holds responses made with other settings ("
            f"{describe_changes(old, settings)}); use a new --out to benchmark these "
            "settings, or rerun with the old ones to continue"
        )
