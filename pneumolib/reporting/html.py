"""The HTML pieces of the report: escaping, embedded images, a small Markdown subset and
CSV tables rendered as HTML (no JavaScript, nothing outside the file).
"""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}


MAX_TABLE_ROWS = 200


_INT_COLUMN = re.compile(r"^(n_|num_|count)|(^|_)(epoch|epochs|epochs_run|best_epoch|seed|rank|fold|k)$")


CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1150px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #444;padding-bottom:.2em}h2{border-bottom:1px solid #bbb;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#fafafa}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.9em;color:#444;margin-top:.3em}
.missing{background:#fff4e5;border-left:4px solid #f0a020;padding:.4em .8em;margin:.6em 0}
.meta td:first-child{font-weight:bold;white-space:nowrap}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:.85em}
code{background:#f3f3f3;padding:0 .2em}.note{font-size:.9em;color:#444}
"""


# -- small helpers ------------------------------------------------------------------------------
def esc(text: Any) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def missing(text: str) -> str:
    return f'<p class="missing">{esc(text)}</p>'


def fmt_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    mime = IMAGE_TYPES.get(path.suffix.lower(), "image/png")
    return f'<img alt="{esc(alt)}" src="data:{mime};base64,{data}">'


def _inline_md(text: str) -> str:
    """Escaped ``text`` with Markdown's inline code and bold turned into HTML."""
    t = esc(text)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    t = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)
    return t


def md_title(md: str) -> str | None:
    for line in md.splitlines():
        s = line.strip()
        if s.startswith("#"):
            return s.lstrip("#").strip() or None
        if s:
            return None
    return None


def _md_table_rows(lines: Sequence[str]) -> list[list[str]]:
    rows = []
    for ln in lines:
        s = ln.strip()
        if re.fullmatch(r"\|?[\s:|-]+\|?", s) and "-" in s:
            continue  # the |---|---| separator
        s = s[1:] if s.startswith("|") else s
        s = s[:-1] if s.endswith("|") and not s.endswith("\\|") else s
        rows.append([c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", s)])
    return rows


def md_to_html(md: str, tables: bool = True, skip_title: bool = True) -> str:
    """A small, safe subset of Markdown: headings, paragraphs, ``-`` lists, pipe tables.

    Args:
        md: the Markdown text (everything is escaped).
        tables: render pipe tables; False drops them (their numbers are shown from the CSV).
        skip_title: drop a leading ``#`` heading (the report shows it as the section heading).
    """
    lines = md.splitlines()
    if skip_title and md_title(md) is not None:
        first = next(i for i, ln in enumerate(lines) if ln.strip())
        lines = lines[first + 1:]
    out: list[str] = []
    para: list[str] = []
    items: list[str] = []
    table: list[str] = []

    def flush() -> None:
        if para:
            out.append("<p>" + " ".join(_inline_md(p) for p in para) + "</p>")
            para.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{_inline_md(i)}</li>" for i in items) + "</ul>")
            items.clear()
        if table:
            if tables:
                rows = _md_table_rows(table)
                if rows:
                    out.append(html_table(rows[0], rows[1:]))
            table.clear()

    for ln in lines:
        s = ln.strip()
        if s.startswith("|"):
            if not table:
                flush()
            table.append(s)
            continue
        if table:
            flush()
        if not s:
            flush()
        elif s.startswith("#"):
            flush()
            out.append(f"<h4>{_inline_md(s.lstrip('#').strip())}</h4>")
        elif re.match(r"^[-*] ", s):
            if para:
                flush()
            items.append(s[2:])
        elif items and ln[:1].isspace():
            items[-1] += " " + s  # a wrapped list item
        else:
            if items:
                flush()
            para.append(s)
    flush()
    return "\n".join(out)


def md_notes_around_table(md: str) -> tuple[str, str]:
    """(HTML of the notes before the first pipe table, HTML of those after it), the tables
    themselves dropped: the notes that go above and below a table rendered from its CSV."""
    lines = md.splitlines()
    idx = [i for i, ln in enumerate(lines) if ln.strip().startswith("|")]
    if not idx:
        return md_to_html(md, tables=False), ""
    before = "\n".join(lines[:idx[0]])
    after = "\n".join(lines[idx[0]:])
    return md_to_html(before, tables=False), md_to_html(after, tables=False, skip_title=False)


def html_table(header: Sequence[Any], rows: Iterable[Sequence[Any]], numeric: Sequence[bool] | None = None) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for r in rows:
        cells = []
        for i, v in enumerate(r):
            cls = ' class="num"' if numeric and i < len(numeric) and numeric[i] else ""
            cells.append(f"<td{cls}>{esc(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _is_nan(v: Any) -> bool:
    try:
        import pandas as pd

        if v is pd.NA or v is pd.NaT:
            return True
    except ImportError:  # pragma: no cover
        pass
    return v is None or (isinstance(v, float) and math.isnan(v))


def csv_to_html(path: Path, digits: int = 3, max_rows: int = MAX_TABLE_ROWS) -> str:
    """A CSV file as an HTML table: floats to ``digits`` decimals (counts and epochs as
    integers), empty cells blank, every cell escaped; at most ``max_rows`` rows."""
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return missing(f"{path.name} is empty")
    except Exception as e:  # noqa: BLE001 - a bad study table must not stop the report
        return missing(f"{path.name} could not be read: {type(e).__name__}: {e}")
    n = len(df)
    df = df.head(max_rows)
    numeric, cols = [], []
    for c in df.columns:
        s = df[c]
        is_num = pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
        numeric.append(is_num)
        if is_num and pd.api.types.is_float_dtype(s):
            vals = s.dropna()
            as_int = bool(_INT_COLUMN.search(str(c))) and bool(((vals % 1) == 0).all())
            cols.append(["" if _is_nan(v) else (f"{int(v)}" if as_int else f"{v:.{digits}f}") for v in s])
        else:
            cols.append(["" if _is_nan(v) else str(v) for v in s])
    rows = list(zip(*cols)) if cols else []
    table = html_table([str(c) for c in df.columns], rows, numeric)
    if n > max_rows:
        table += f'<p class="note">First {max_rows} of {n} rows shown; the full table is {esc(path.name)}.</p>'
    return table
