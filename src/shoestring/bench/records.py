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
from shoestring.rundir.directory import read_json
from shoestring.scoring.protocols import Protocol, Scored

__all__ = [
    "STATE_VERSION",
    "check_loaded_settings",
    "check_stored_settings",
    "describe_changes",
    "problem_record",
    "problems_path",
    "read_problem_records",
    "settings_for",
    "settings_hash",
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
    if protocol.style == "fewshot":
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


def problem_record(
    problem: Problem, result: Any, scored: Scored, shash: str, session: int
) -> dict[str, Any]:
    """The problems.jsonl line of one generated, judged problem (``result`` is the engine's
    GenerationResult; every extractor's answer and verdict is kept, not only the primary)."""
    return {
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
        "settings_hash": shash,
        "session": session,
    }


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
