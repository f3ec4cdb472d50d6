"""What every run kind module is built from: the :class:`Kind` record it registers (the whole
contract between a kind and the report: filling it in adds a kind), the plot context, and the
cells and tables several kinds share, so a cell reads the same in every section.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from shoestring.report import plots
from shoestring.report.blocks import Finding, Image, Para, Section, Table
from shoestring.report.rules import SpeedItem
from shoestring.report.run import RunInfo, flatten

__all__ = ["Kind", "SectionContext", "cell", "config_table", "group_by", "groups_text", "of_kind"]
__all__ += ["overview_section", "safe_name", "status_cell", "unfinished_blocks"]

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


class SectionContext:
    """What every builder shares: where PNGs go (None: no plots), the colour of each run, and
    ``own_dir``: the run directory when the report is that run's own report.md."""

    def __init__(self, out_dir: Path | None, own_dir: Path | None = None) -> None:
        self.out_dir = out_dir
        self.own_dir = own_dir
        self.palette = plots.Palette()

    def own_image(self, run: RunInfo, name: Any, alt: str) -> Image | None:
        """A PNG the command itself drew into ``run``'s directory, shown in its own report only
        (a report elsewhere would point at a file that is not next to it)."""
        if self.own_dir is None or not name or run.path.resolve() != self.own_dir.resolve():
            return None
        file = Path(str(name)).name
        return Image(file, alt) if (run.path / file).is_file() else None

    def plot(
        self, name: str, draw: Callable[[Path], str | None], alt: str, caption: str = ""
    ) -> list[Image]:
        """The figure ``draw`` writes to ``name`` in the report directory, as a block list:
        empty where there is no report directory or nothing to draw."""
        if self.out_dir is None:
            return []
        made = draw(self.out_dir / name)
        return [Image(made, alt, caption)] if made else []


def _none(_: Any) -> list[Any]:
    return []


@dataclass(frozen=True)
class Kind:
    """What a run kind module registers: how its directories are recognised and read, and what
    the report shows of them. ``sections``, ``speed`` and ``accuracies`` get the report's runs
    of this kind and of ``covers`` (called only where there are some); ``findings`` gets every
    run (a rule may read another kind's runs: a study's seed spread, say)."""

    name: str
    writer: str  # what writes it: shown when a directory is of no known kind
    sections: Callable[[list[RunInfo], SectionContext], list[Section]]
    covers: tuple[str, ...] = ()  # the other kinds whose runs it shows as its own
    summary_kind: str | None = None  # the summary.json "kind" it claims ...
    claims: Callable[[dict[str, Any]], bool] = lambda summary: True  # ... when this says so
    result_file: str | None = None  # its own result file, read into RunInfo.result
    result_key: str | None = None  # a key that file holds (recognises it without a summary)
    load: Callable[[RunInfo], None] | None = None  # reads more files into RunInfo.extra
    record: Callable[[RunInfo], dict[str, Any]] = lambda run: {}  # its part of report.json
    findings: Callable[[list[RunInfo]], list[Finding]] = _none  # its own rules
    speed: Callable[[list[RunInfo]], list[tuple[list[SpeedItem], str]]] = _none  # for naming
    # (label, protocol identity, protocol name) of every accuracy it reports, for the protocol rule
    accuracies: Callable[[list[RunInfo]], list[tuple[str, str | None, str]]] = _none


def of_kind(runs: Sequence[RunInfo], *kinds: str) -> list[RunInfo]:
    return [r for r in runs if r.kind in kinds]


def group_by(items: Iterable[T], key: Callable[[T], K]) -> dict[K, list[T]]:
    """``items`` grouped by ``key``; groups in the order of their first item."""
    out: dict[K, list[T]] = {}
    for x in items:
        out.setdefault(key(x), []).append(x)
    return out


def groups_text(groups: dict[str, list[RunInfo]]) -> str:
    """``value: `a`, `b`; other: `c``` - which runs share which value."""
    return "; ".join(f"{v}: " + ", ".join(f"`{r.label}`" for r in g) for v, g in groups.items())


def cell(v: Any) -> str:
    """Any config or result value as a table cell (floats to 6 digits, lists as JSON)."""
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def config_table(
    runs: Sequence[RunInfo],
    key_fields: Sequence[str],
    extra: Sequence[tuple[str, Callable[[RunInfo], Any]]] = (),
) -> Table:
    """Fields (rows) by runs (columns): every field whose value differs, plus ``key_fields``.

    A differing field is marked bold, so the eye goes to what changed between the runs.
    """
    flats = [flatten(r.config) for r in runs]
    keys: list[str] = [k for k in key_fields if any(k in f for f in flats)]
    for f in flats:
        for k in f:
            vals = {json.dumps(fl.get(k), sort_keys=True, default=str) for fl in flats}
            if k not in keys and len(vals) > 1:
                keys.append(k)
    rows = [[k, *[cell(f.get(k)) for f in flats]] for k in keys]
    rows += [[name, *[cell(get(r)) for r in runs]] for name, get in extra]
    for row in rows:
        if len(set(row[1:])) > 1:
            row[0] = f"**{row[0]}**"
    return Table(["field", *[r.label for r in runs]], rows, "l" + "r" * len(runs))


def status_cell(r: RunInfo) -> str:
    return r.status if r.finished else f"**{r.status_text()}**"


def unfinished_blocks(runs: Sequence[RunInfo], what: str, last_value: bool = False) -> list[Any]:
    """The runs that did not finish, apart from the results: their state and error, and with
    ``last_value`` the last validation loss they logged (where they stopped, not a result)."""
    not_done = [r for r in runs if not r.finished]
    if not not_done:
        return []
    rows = []
    for r in not_done:
        vals = [m["val_loss"] for m in r.metrics if m.get("val_loss") is not None]
        last = [f"{vals[-1]:.4f} (partial)" if vals else "-"] if last_value else []
        rows.append([r.label, f"**{r.status_text()}**", *last, str(r.summary.get("error") or "-")])
    head = ["run", "status", *(["last val loss"] if last_value else []), "error"]
    return [Para(what), Table(head, rows)]


def overview_section(runs: Sequence[RunInfo]) -> Section:
    rows = [[r.label, r.kind, status_cell(r), f"`{r.path}`"] for r in runs]
    return Section("Runs compared", [Table(["run", "kind", "status", "directory"], rows)], "runs")


def safe_name(label: str) -> str:
    """A run label as a file-name part (for its PNGs)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:60]
