"""The report page: plain, static HTML (no script, no external file) with relative links."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from html import escape
from pathlib import Path

from softloc.report.tables import Table, format_value

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0 0.3em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
th { background: #f0f0f0; } td.name, th.name { text-align: left; }
td.best { font-weight: bold; background: #e6f4e6; }
figure { margin: 0.8em 0; } figcaption { font-size: 0.85em; color: #555; }
img { max-width: 100%; border: 1px solid #ddd; }
.files { font-size: 0.85em; } .note { color: #555; font-size: 0.9em; }
.scroll { overflow-x: auto; }
.gallery { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.gallery > div { flex: 0 1 460px; }
"""


def link(href: str, text: str | None = None) -> str:
    """An anchor to a relative ``href``."""
    return f'<a href="{escape(href)}">{escape(text or href)}</a>'


def files_line(hrefs: Sequence[str]) -> str:
    """``files: a.csv, b.png`` as links."""
    return '<p class="files">files: ' + ", ".join(link(h) for h in hrefs) + "</p>"


def table_html(table: Table, csv_href: str) -> str:
    """A results table with a two-level header (condition, then key) and its CSV link."""
    conditions: list[tuple[str, int]] = []
    for condition, _ in table.columns:
        if conditions and conditions[-1][0] == condition:
            conditions[-1] = (condition, conditions[-1][1] + 1)
        else:
            conditions.append((condition, 1))
    unit = " (%)" if all(table.shares) else ""
    head1 = '<tr><th class="name" rowspan="2">model</th>' + "".join(
        f'<th colspan="{span}">{escape(c)}</th>' for c, span in conditions
    ) + "</tr>"
    head2 = "<tr>" + "".join(f"<th>{escape(k)}</th>" for _, k in table.columns) + "</tr>"
    marks = table.best_rows()
    body = []
    for model, values in table.rows.items():
        cells = [f'<td class="name">{escape(model)}</td>']
        for j, value in enumerate(values):
            css = ' class="best"' if model in marks[j] else ""
            cells.append(f"<td{css}>{escape(format_value(value, table.shares[j]))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f"<h3>{escape(table.name)}{unit}</h3>\n<div class=\"scroll\"><table>"
        f"<thead>{head1}{head2}</thead><tbody>{''.join(body)}</tbody></table></div>\n"
        + files_line([csv_href])
    )


def figure_html(src: str, caption: str, extra: Sequence[str] = ()) -> str:
    """An image with a caption and links to the files behind it."""
    return (
        f'<figure><img src="{escape(src)}" alt="{escape(caption)}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>\n"
        + files_line([src, *extra])
    )


def video_html(src: str, caption: str, extra: Sequence[str] = ()) -> str:
    """A movie (mp4 in a ``<video>`` element; a GIF as an image) with a caption and links."""
    if src.endswith(".gif"):
        return figure_html(src, caption, extra)
    return (
        f'<figure><video controls loop muted playsinline preload="metadata" '
        f'src="{escape(src)}"></video><figcaption>{escape(caption)}</figcaption></figure>\n'
        + files_line([src, *extra])
    )


def csv_preview_html(path: Path, href: str, max_rows: int = 30) -> str:
    """The first ``max_rows`` rows of a CSV file as a table, with a link to the file."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return files_line([href])
    header, body = rows[0], rows[1 : max_rows + 1]
    more = len(rows) - 1 - len(body)
    html = ['<div class="scroll"><table><thead><tr>']
    html += [f"<th>{escape(h)}</th>" for h in header]
    html.append("</tr></thead><tbody>")
    for row in body:
        html.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>")
    html.append("</tbody></table></div>")
    if more > 0:
        html.append(f'<p class="note">... {more} more rows in the CSV</p>')
    return "".join(html) + "\n" + files_line([href])


def gallery(items: Sequence[str]) -> str:
    """Blocks (figures with their links) side by side, wrapping to the page width."""
    return '<div class="gallery">' + "".join(f"<div>{item}</div>" for item in items) + "</div>"


def section(title: str, body: str, anchor: str) -> str:
    """An ``<h2>`` section."""
    return f'<section id="{escape(anchor)}"><h2>{escape(title)}</h2>\n{body}\n</section>\n'


def page(title: str, intro: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole page: title, intro, a contents line and the ``(anchor, title, body)`` sections."""
    contents = " | ".join(link(f"#{a}", t) for a, t, _ in sections)
    body = "".join(section(t, b, a) for a, t, b in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        f"<h1>{escape(title)}</h1>\n{intro}\n<p>{contents}</p>\n{body}</body></html>\n"
    )
