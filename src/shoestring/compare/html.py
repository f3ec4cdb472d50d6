"""report.html: the report as one self-contained page, readable offline and on a phone.

Why self-contained (plots embedded as base64 PNG): a report is mailed or attached to an issue,
where a page that loads its images or styles from elsewhere breaks. Wide tables scroll inside
their own box and images shrink to the screen's width, so the page is never wider than a
phone's. Inline text is escaped first and only ``**bold**`` and ```code``` become tags, so a run
name with ``<`` in it cannot break the page.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shoestring.report.blocks import NO_FINDINGS, Image, Report, Table

__all__ = ["render_html"]

CSS = """
:root { color-scheme: light; } * { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1b1b1b;
  margin: 0 auto; padding: 12px 16px 40px; max-width: 1200px; background: #fff; }
h1 { font-size: 1.5em; margin: 0.4em 0; } p { margin: 0.5em 0; }
h2 { font-size: 1.2em; margin: 1.6em 0 0.5em; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
code { font: 0.9em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  background: #f3f3f3; padding: 0 3px; border-radius: 3px; overflow-wrap: anywhere; }
.table-wrap { overflow-x: auto; -webkit-overflow-scrolling: touch; margin: 0.5em 0 1em;
  border: 1px solid #e3e3e3; border-radius: 4px; }
table { border-collapse: collapse; font-size: 0.86em; min-width: 100%; }
th, td { padding: 4px 8px; border-bottom: 1px solid #eee; vertical-align: top; }
th { background: #f6f6f6; text-align: left; white-space: nowrap; position: sticky; top: 0; }
td.r, th.r { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:last-child td { border-bottom: none; }
/* the first column (run or field name) stays in view while a wide table scrolls sideways */
th:first-child, td:first-child { position: sticky; left: 0; background: #fff; z-index: 1; }
th:first-child { background: #f6f6f6; z-index: 2; } .caption { margin: 0.8em 0 0.2em; }
figure { margin: 0.8em 0 1.2em; } figcaption { font-size: 0.85em; color: #555; }
figure img { max-width: 100%; height: auto; display: block; border: 1px solid #eee; }
ul.findings { list-style: none; padding: 0; }
ul.findings li { border-left: 4px solid #999; background: #fafafa; padding: 6px 10px;
  margin: 6px 0; }
ul.findings li.warning { border-color: #c62828; background: #fdf1f1; }
ul.findings li.caution { border-color: #ef8f00; background: #fff7ea; }
ul.findings li.info { border-color: #1f77b4; background: #f2f7fc; }
.tag { font-size: 0.75em; font-weight: 700; text-transform: uppercase; letter-spacing: 0.04em;
  margin-right: 6px; }
li.warning .tag { color: #c62828; } li.caution .tag { color: #a86300; }
li.info .tag { color: #1f5f94; } .meta { color: #555; font-size: 0.9em; }
pre { font: 0.85em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #f6f6f6;
  padding: 6px 8px; border-radius: 4px; white-space: pre-wrap; overflow-wrap: anywhere; }
nav { font-size: 0.9em; } nav a { margin-right: 10px; white-space: nowrap; }
@media (max-width: 600px) { body { font-size: 14px; padding: 8px 10px 30px; }
  table { font-size: 0.8em; } th, td { padding: 3px 5px; } }
"""


def inline(text: str) -> str:
    """Escape ``text``, then turn ```code``` and ``**bold**`` into tags (nothing else)."""
    out = html.escape(str(text), quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)


def _row(tag: str, cells: list[str], aligns: list[str]) -> str:
    tds = (f'<{tag} class="{a}">{inline(c)}</{tag}>' for c, a in zip(cells, aligns, strict=False))
    return "<tr>" + "".join(tds) + "</tr>"


def _table(t: Table) -> str:
    cap = f'<p class="caption">{inline(t.caption)}</p>' if t.caption else ""
    body = "".join(_row("td", row, t.aligns()) for row in t.rows)
    return (
        f'{cap}<div class="table-wrap"><table><thead>{_row("th", t.headers, t.aligns())}</thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _image(img: Image, base: Path) -> str:
    data = base64.b64encode((base / img.file).read_bytes()).decode("ascii")
    cap = f"<figcaption>{inline(img.caption)}</figcaption>" if img.caption else ""
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(img.alt)}" '
        f'title="{html.escape(img.file)}">{cap}</figure>'
    )


#: Each block kind as HTML; ``base``: the directory holding the PNGs.
_HTML: dict[str, Callable[[Any, Path], str]] = {
    "para": lambda b, _: f"<p>{inline(b.text)}</p>",
    "bullets": lambda b, _: "<ul>" + "".join(f"<li>{inline(x)}</li>" for x in b.items) + "</ul>",
    "code": lambda b, _: f"<pre>{html.escape(b.shown(), quote=False)}</pre>",
    "table": lambda b, _: _table(b),
    "image": _image,
}


def render_html(report: Report, base: Path) -> str:
    """The HTML page; ``base`` is the directory holding the PNGs the report references."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(report.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(report.title)}</h1>",
    ]
    out += [f'<p class="meta">{inline(p)}</p>' for p in report.intro]
    nav = ['<a href="#findings">Findings</a>'] + [
        f'<a href="#{html.escape(s.anchor or str(i))}">{html.escape(s.title)}</a>'
        for i, s in enumerate(report.sections)
    ]
    out += ["<nav>" + " ".join(nav) + "</nav>", '<h2 id="findings">Findings</h2>']
    lis = [
        f'<li class="{f.severity}"><span class="tag">{f.severity}</span>'
        f'<span class="tag">{html.escape(f.rule)}</span>{inline(f.text)}</li>'
        for f in report.findings
    ]
    out += ['<ul class="findings">', *lis, "</ul>"] if lis else [f"<p>{NO_FINDINGS}</p>"]
    for i, s in enumerate(report.sections):
        out.append(f'<h2 id="{html.escape(s.anchor or str(i))}">{html.escape(s.title)}</h2>')
        out += [_HTML[b.kind](b, base) for b in s.blocks]
    out.append("</body></html>")
    return "\n".join(out) + "\n"
