"""Building blocks of the self-contained HTML reports: page, sections, sortable tables, embedded images, galleries.

Everything a page needs is inside the one file: PNGs as base64 ``data:`` URIs, the CSS and a few lines of script
that sort tables. Nothing is fetched, so a report opens offline, from a mail attachment or a phone's file viewer.
Every user-supplied string (class and file names, config values) goes through ``html.escape``.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from html import escape
from pathlib import Path

import numpy as np

from unetseg.core.atomic import write_atomic
from unetseg.tracking import plots

TILE = 256  # px: the longer side of each gallery tile (sharp on a laptop, four across fit a phone when stacked)

CSS = """
:root{--fg:#1d1d1f;--muted:#6b6b70;--line:#e3e3e8;--bg:#fff;--head:#f5f5f7}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:1200px;margin:0 auto;padding:16px}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.2em;margin:1.6em 0 .5em;border-bottom:1px solid var(--line)}
.sub{color:var(--muted);margin:0 0 1em}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:12px}
.charts img,.wide img{width:100%;height:auto;border:1px solid var(--line);border-radius:6px}
.wide{max-width:560px}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;font-size:.92em;font-variant-numeric:tabular-nums}
th,td{padding:4px 10px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{background:var(--head);position:sticky;top:0}
th:first-child,td:first-child,td.t{text-align:left}
td.t{white-space:normal;min-width:8em;max-width:60em;overflow-wrap:anywhere}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2"}
table.sortable th[aria-sort=descending]::after{content:" \\25BC"}
tr.best td{font-weight:600;background:#fff8e1}
.gallery figure{margin:0 0 18px;max-width:880px}
.tiles{display:grid;gap:6px}
.tiles div{font-size:.8em;color:var(--muted)}
.tiles img{width:100%;height:auto;image-rendering:pixelated;border:1px solid var(--line)}
figcaption{font-size:.9em;margin-top:2px;overflow-wrap:anywhere}
.legend span{display:inline-block;margin-right:14px}
.legend i{display:inline-block;width:12px;height:12px;border:1px solid #555;margin-right:4px;vertical-align:-1px}
pre{background:var(--head);padding:10px;overflow-x:auto;font-size:.85em}
details summary{cursor:pointer;color:#0a58ca}
@media (max-width:640px){main{padding:10px}body{font-size:14px}.tiles{grid-template-columns:repeat(2,1fr)!important}}
"""

# Sorts a table by the clicked column: numbers by data-v (empty cells last), text otherwise.
SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var down = th.getAttribute("aria-sort") === "ascending";
      table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", down ? "descending" : "ascending");
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var cell = row.cells[col], v = cell.getAttribute("data-v");
        return v === null ? cell.textContent : (v === "" ? NaN : parseFloat(v));
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b), nx = typeof x === "number", ny = typeof y === "number";
        if (nx && isNaN(x)) return 1;
        if (ny && isNaN(y)) return -1;
        var order = nx && ny ? x - y : String(x).localeCompare(String(y));
        return down ? -order : order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
document.documentElement.setAttribute("data-ready", "1");  // the script ran to its end (tests read it)
"""


def page(title: str, subtitle: str, sections: Sequence[str]) -> str:
    """A whole HTML document: head with the CSS, the title, the sections, the sorting script."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<link rel="icon" href="data:,">'  # no favicon request
        f"<title>{escape(title)}</title><style>{CSS}</style></head>\n<body><main>"
        f"<h1>{escape(title)}</h1><p class=sub>{escape(subtitle)}</p>\n"
        + "\n".join(sections)
        + f"\n</main><script>{SORT_JS}</script></body></html>\n"
    )


def section(title: str, body: str, anchor: str = "") -> str:
    """``<section>`` with a heading; ``body`` is HTML already escaped."""
    ident = f' id="{escape(anchor)}"' if anchor else ""
    return f"<section{ident}><h2>{escape(title)}</h2>{body}</section>"


def fmt(value: object, digits: int = 4) -> str:
    """A cell's text: floats to ``digits`` decimals (4 significant for small ones), NaN as "empty"."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if math.isnan(value):
        return "empty"
    if value != 0 and abs(value) < 10 ** -(digits - 1):
        return f"{value:.{digits}g}"
    return f"{value:.{digits}f}"


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)  # metrics.csv strings
    except (TypeError, ValueError):
        return None


def table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], sortable: bool = True, marked: int | None = None
) -> str:
    """A table of escaped cells; numbers carry ``data-v`` so sorting is numeric; row ``marked`` is highlighted."""
    head = "".join(f"<th>{escape(str(h))}</th>" for h in headers)
    body = []
    for index, row in enumerate(rows):
        cells = []
        for value in row:
            number = _number(value)
            if number is None and value != "":
                cells.append(f"<td class=t>{escape(str(value))}</td>")  # text: left, wrapped
            else:
                sort = "" if number is None or math.isnan(number) else repr(number)
                text = fmt(value) if isinstance(value, float) else escape(str(value))
                cells.append(f'<td data-v="{sort}">{text}</td>')
        mark = ' class="best"' if index == marked else ""
        body.append(f"<tr{mark}>{''.join(cells)}</tr>")
    kind = ' class="sortable"' if sortable else ""
    return f"<div class=scroll><table{kind}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def data_uri(picture: bytes) -> str:
    """PNG or SVG bytes as a ``data:`` URI."""
    kind = "svg+xml" if picture.lstrip()[:5] in (b"<?xml", b"<svg ") else "png"
    return f"data:image/{kind};base64," + base64.b64encode(picture).decode("ascii")


def image(picture: bytes, alt: str) -> str:
    """An embedded PNG or SVG."""
    return f'<img src="{data_uri(picture)}" alt="{escape(alt)}">'


def encode(picture: object) -> bytes:
    """A Pillow image as PNG bytes (fast zlib level: reports are rewritten every round)."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=plots.PNG_LEVEL)
    return buffer.getvalue()


def legend(names: Sequence[str], colors: Sequence[Sequence[int]], errors: bool = False) -> str:
    """Colour swatches of the classes (and of false positives and negatives)."""
    items = list(zip(names, colors))
    if errors:
        items += [("false positive", plots.FALSE_POSITIVE), ("false negative", plots.FALSE_NEGATIVE)]
    spans = "".join(
        f'<span><i style="background:rgb{tuple(int(c) for c in color[:3])}"></i>{escape(plots.clean_label(n))}</span>'
        for n, color in items
    )
    return f"<p class=legend>{spans}</p>"


def gallery(panels: Sequence[dict], class_map: object | None, errors: bool = False, tile: int = TILE) -> str:
    """One figure per panel: image | truth | prediction | overlay (| errors), with its caption.

    ``panels``: dicts with ``name``, ``image``, ``truth``, ``pred`` and optionally ``caption`` (plain text).
    """
    if not panels:
        return "<p>No images yet: the gallery appears with the first validation round that improves.</p>"
    colors = plots.class_colors(class_map, 1 + max(int(np.max(p["pred"], initial=0)) for p in panels))
    names = list(getattr(class_map, "names", None) or [f"class {i}" for i in range(len(colors))])
    labels = [*plots.COLUMNS, *(["errors"] if errors else [])]
    figures = []
    for panel in panels:
        rgb, truth, pred = plots.to_rgb(panel["image"]), np.asarray(panel["truth"]), np.asarray(panel["pred"])
        tiles = [
            (rgb, False),
            (plots.colorize(truth, colors), True),
            (plots.colorize(pred, colors), True),
            (plots.overlay(rgb, pred, truth, colors), True),
        ]
        if errors:
            tiles.append((plots.error_overlay(rgb, pred, truth), True))
        cells = "".join(
            f"<div>{label}{image(encode(plots.fit_tile(array, tile, nearest)), label)}</div>"
            for label, (array, nearest) in zip(labels, tiles)
        )
        caption = escape(plots.clean_label(panel.get("caption") or panel["name"]))
        columns = f"grid-template-columns:repeat({len(tiles)},1fr)"
        figures.append(f'<figure><div class=tiles style="{columns}">{cells}</div><figcaption>{caption}</figcaption>')
        figures[-1] += "</figure>"
    return f"<div class=gallery>{legend(names, colors, errors)}{''.join(figures)}</div>"


def write_page(path: str | Path, text: str) -> Path:
    """Write the page atomically: a browser refreshing it mid-run sees the old page or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text.encode("utf-8"))
    return path
