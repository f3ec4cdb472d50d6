"""What every section builder shares: the plot context, table cells, the config table, status.

Why: each kind's section (one module per kind in this package) turns its files into tables,
paragraphs and plots of the intermediate report (:mod:`shoestring.report.blocks`); the pieces
they share - a value as a cell, the fields-by-runs config table, a run's status in bold when it
is not a result, where PNGs go - live here so a cell reads the same in every section.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shoestring.report import plots
from shoestring.report.blocks import Image, Section, Table
from shoestring.report.kinds import RunInfo, flatten

__all__ = [
    "SectionContext",
    "cell",
    "ci_text",
    "config_table",
    "dig",
    "overview_section",
    "safe_name",
    "status_cell",
]


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
    ) -> Image | None:
        if self.out_dir is None:
            return None
        made = draw(self.out_dir / name)
        return Image(made, alt, caption) if made else None


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
    seen = set(keys)
    for f in flats:
        for k in f:
            if k in seen:
                continue
            vals = {json.dumps(fl.get(k), sort_keys=True, default=str) for fl in flats}
            if len(vals) > 1:
                keys.append(k)
                seen.add(k)
    rows = []
    for k in keys:
        vals = [cell(f.get(k)) for f in flats]
        differs = len(set(vals)) > 1
        rows.append([f"**{k}**" if differs else k, *vals])
    for name, get in extra:
        vals = [cell(get(r)) for r in runs]
        rows.append([f"**{name}**" if len(set(vals)) > 1 else name, *vals])
    return Table(["field", *[r.label for r in runs]], rows, ["l"] + ["r"] * len(runs))


def status_cell(r: RunInfo) -> str:
    return r.status if r.finished else f"**{r.status_text()}**"


def overview_section(runs: Sequence[RunInfo]) -> Section:
    rows = [[r.label, r.kind, status_cell(r), f"`{r.path}`"] for r in runs]
    return Section(
        "Runs compared",
        [
            Table(["run", "kind", "status", "directory"], rows),
        ],
        "runs",
    )


def safe_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:60]


def ci_text(v: Any, digits: int = 3) -> str:
    """A ``{"mean", "ci_low", "ci_high", "n", "missing"}`` value as ``mean [lo, hi] (n=..)``."""
    if not isinstance(v, dict):
        return cell(v)
    if v.get("mean") is None:
        miss = v.get("missing", 0)
        return f"not reached ({miss}/{miss + v.get('n', 0)})" if miss else "-"
    out = f"{v['mean']:.{digits}f}"
    if v.get("ci_low") is not None and v.get("ci_high") is not None:
        out += f" [{v['ci_low']:.{digits}f}, {v['ci_high']:.{digits}f}]"
    out += f" (n={v.get('n')})"
    if v.get("missing"):
        out += f", {v['missing']} not reached"
    return out


def dig(d: Any, *keys: str) -> Any:
    """``d[k1][k2]...``, or None where a level is missing or not a dict (older files)."""
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d
