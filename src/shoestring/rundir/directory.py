"""The run directory: the one place every command writes what it was asked and what happened.

Layout (documented in docs/run-directory.md)::

    runs/<name>/
      config.json      the fully resolved config
      summary.json     status, timings, throughput, metrics, device/dtype, versions, host, system
      metrics.jsonl    one JSON object per logged step or evaluation
      log.txt          the human log
      model/           HF save_pretrained output (+ tokenizer)
      checkpoints/     resumable state

Every JSON file is written to a temporary name and renamed, so a killed process never leaves a
half-written file behind; ``summary.json`` says ``running`` until the command ends. A
:class:`RunDir` holds the directory's writer lock (:mod:`shoestring.rundir.lock`) from before its
first write until :meth:`RunDir.close`; one that fails before its lifecycle wrote a final status
is finished as ``failed`` by :meth:`RunDir.abandon` (the CLI does it for every directory still
open when a command fails), so a failed command leaves a complete directory.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata as md
import json
import os
import platform
import socket
import sys
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from shoestring.cli_options import check_run_name
from shoestring.failures import short_reason
from shoestring.rundir.lock import RunDirLock

SCHEMA_VERSION = 1


def _file_mode() -> int:
    """0666 less the process umask: what ``open()`` would give (mkstemp alone gives 0600)."""
    mask = os.umask(0)  # the umask can only be read by setting it: set, then restore
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()
STATUSES = ("running", "finished", "failed", "interrupted", "pruned")


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[Any]:
    """A file that appears at ``path`` only when the block finishes (temp + fsync + rename).

    A killed or failing writer leaves the old file (or none), never a half-written one.
    ``mode`` is ``"w"`` (UTF-8 text) or ``"wb"`` (bytes: PNGs, tensors).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)
        encoding = "utf-8" if mode == "w" else None
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename, or a crash could expose it empty
        os.replace(tmp, path)  # atomic within one file system: old file or new, never half
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same directory and a rename."""
    with atomic_open(path) as f:
        f.write(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and a rename."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy and torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour shapes the numbers a run reports."""
    out = {"python": platform.python_version()}
    for name in (
        "shoestring",
        "torch",
        "transformers",
        "tokenizers",
        "numpy",
        "safetensors",
        "peft",
        "optuna",
    ):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_info() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": cpu_model_name(),
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": psutil.cpu_count(logical=True),
        "memory_total_gb": round(psutil.virtual_memory().total / 2**30, 2),
    }


def unique_run_dir(out: str | Path, name: str) -> Path:
    """``out/name``, or ``out/name-2`` ... when it exists, so a run never overwrites another.

    ``name`` must be one path component (:func:`shoestring.cli_options.check_run_name`), so the
    directory is always inside ``out``, whichever API made the name."""
    check_run_name(name, "run name")
    base = Path(out) / name
    if not base.exists():
        return base
    i = 2
    while (Path(out) / f"{name}-{i}").exists():
        i += 1
    return Path(out) / f"{name}-{i}"


class RunPaths:
    """Where a run directory's parts are, for its writer and for the ranks that only read it."""

    path: Path

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"


class RunDir(RunPaths):
    """Writer for one run directory; only the process that owns the run (rank 0) creates one."""

    def __init__(self, path: str | Path, kind: str, *, echo: bool = True) -> None:
        self.path = Path(path)
        self.kind = kind
        self.echo = echo
        self.finished = False  # a final status was written by this process
        self.path.mkdir(parents=True, exist_ok=True)
        # the lock comes before any write: a second writer is refused with nothing touched
        self.lock = RunDirLock(self.path)
        took_over = self.lock.acquire()
        try:
            self._log = open(self.path / "log.txt", "a", encoding="utf-8")  # noqa: SIM115
            self._metrics = open(self.path / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        except BaseException:
            self.lock.release()
            raise
        self.summary: dict[str, Any] = {}
        self._wrote_summary = False  # this process has written summary.json
        if (self.path / "summary.json").exists():
            try:
                self.summary = read_json(self.path / "summary.json")
            except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                self.summary = {}  # a damaged summary is rewritten whole by this run
            if not isinstance(self.summary, dict):
                self.summary = {}
        _OPEN.add(self)
        if took_over:
            self.log(took_over)

    # -- files
    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_json(self.path / "config.json", config)

    def log(self, message: str, *, echo: bool = True) -> None:
        """One human-readable line to log.txt (timestamped) and, if echo (the RunDir's and
        this call's), to stderr."""
        stamp = _dt.datetime.now().strftime("%H:%M:%S")
        self._log.write(f"[{stamp}] {message}\n")
        self._log.flush()
        if self.echo and echo:
            print(message, file=sys.stderr, flush=True)

    def metric(self, record: dict[str, Any]) -> None:
        """Append one JSON line to metrics.jsonl and flush it (a crash keeps what was logged)."""
        self._metrics.write(json.dumps(record, default=_json_default) + "\n")
        self._metrics.flush()

    def truncate_metrics_after(self, step: int) -> None:
        """On resume, drop metric lines logged after the checkpoint so no step appears twice."""
        self._metrics.close()
        path = self.path / "metrics.jsonl"
        kept = []
        if path.exists():
            for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by the kill (or damaged bytes)
                if (
                    isinstance(rec, dict) and rec.get("step", 0) <= step
                ):  # later steps will be run and logged again
                    kept.append(line)
        atomic_write_text(path, "".join(k + "\n" for k in kept))
        self._metrics = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def update_summary(self, **fields: Any) -> None:
        """Merge fields into summary.json and rewrite it atomically."""
        self.summary.update(fields)
        self.summary.setdefault("schema_version", SCHEMA_VERSION)
        self.summary.setdefault("kind", self.kind)
        atomic_write_json(self.path / "summary.json", self.summary)
        self._wrote_summary = True

    def start(self, config: dict[str, Any], **fields: Any) -> None:
        """Write config.json and a ``running`` summary with versions and host."""
        self.write_config(config)
        self.update_summary(
            status="running",
            started_at=now_iso(),
            versions=library_versions(),
            host=host_info(),
            **fields,
        )

    def finish(self, status: str, **fields: Any) -> None:
        assert status in STATUSES, status
        self.update_summary(status=status, finished_at=now_iso(), **fields)
        self.finished = True

    def abandon(
        self,
        error: BaseException | str,
        status: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        """End a directory whose lifecycle never wrote its final status (a command that failed
        while setting up), then close it and release its lock.

        ``status`` defaults to ``interrupted`` for Ctrl-C and ``failed`` otherwise; the reason
        is the error's one-line message. A directory this process created, or whose summary it
        already wrote, gets a complete ``summary.json`` with that status and reason (and
        ``config`` as ``config.json`` if it has none). One that already held a summary from an
        earlier run and was not started again keeps it - that run's record stays true - and
        only ``log.txt`` says what happened. Never raises: it runs while another error is on its
        way to the user (a full disk may refuse these writes too).
        """
        if self.closed:
            return
        if isinstance(error, BaseException):
            if status is None and isinstance(error, KeyboardInterrupt):
                status = "interrupted"
            error = short_reason(error)
        status = status or "failed"
        if not self.finished:
            with contextlib.suppress(Exception):
                self.log(f"{status}: {error}", echo=False)  # the caller shows the error
        # an earlier run's summary that this process never touched stays as it is
        if not self.finished and (self._wrote_summary or not self.summary):
            with contextlib.suppress(Exception):
                if config is not None and not (self.path / "config.json").exists():
                    self.write_config(config)
                self.summary.setdefault("started_at", now_iso())
                self.summary.setdefault("versions", library_versions())
                self.summary.setdefault("host", host_info())
                self.finish(status, error=error)
        self.close()

    @property
    def closed(self) -> bool:
        return not self.lock.held

    def close(self) -> None:
        """Close the log and metrics files and release the directory's writer lock."""
        for f in (self._log, self._metrics):
            if not f.closed:
                f.close()
        self.lock.release()
        _OPEN.discard(self)


# RunDirs of this process that are still open (the CLI abandons them when a command fails)
_OPEN: weakref.WeakSet[RunDir] = weakref.WeakSet()


def abandon_open_run_dirs(error: BaseException | str, status: str | None = None) -> list[Path]:
    """:meth:`RunDir.abandon` every run directory this process still has open; their paths."""
    paths = []
    for rd in list(_OPEN):
        paths.append(rd.path)
        rd.abandon(error, status)
    return paths


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl, skipping a last line cut short by a kill (and lines
    that are not JSON objects, so a damaged file never stops a reader)."""
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    out = []
    if not p.exists():
        return out
    # bytes that are not UTF-8 (a damaged file) become lines that fail to parse, skipped below
    for line in p.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out
