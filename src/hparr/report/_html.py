"""The report's one HTML renderer: a Markdown text (headings, bullets, tables, paragraphs, fenced code blocks and,
inline, bold, links and images) as a standalone page in one style. Every index.html of the reports (a run's, a
study's, runs side by side) is its summary.md rendered here, so the page says what the Markdown says."""
from __future__ import annotations

import html
import re

STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;line-height:1.4}"
         "table{border-collapse:collapse;font-size:0.9em}th,td{border:1px solid #ccc;padding:3px 6px}"
         "td.num{text-align:right}"
         "img{max-width:100%;border:1px solid #eee}pre{background:#f6f6f6;padding:1em;overflow:auto}")

# a table cell that holds a number (with an optional unit or "± spread"): right-aligned, so digits line up
_NUMBER = r"[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?%?"
NUMERIC_CELL = re.compile(rf"{_NUMBER}( ± {_NUMBER})?", re.IGNORECASE)


def inline(text: str) -> str:
    """One line of Markdown as HTML: escaped, with images (linked to themselves), links and bold."""
    s = html.escape(text)
    s = re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", r'<a href="\2"><img src="\2" alt="\1"></a>', s)
    s = re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r'<a href="\2">\1</a>', s)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)


def table_cells(line: str) -> list[str]:
    """The cells of one Markdown table row, `\\|` read as a literal bar (as `render.markdown_table` writes it)."""
    cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [c.strip().replace("\\|", "|") for c in cells]


def page(title: str, body: str) -> str:
    """A standalone HTML page around `body`."""
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")


def markdown_html(text: str, title: str) -> str:
    """A Markdown text as a standalone HTML page titled `title`: `#` headings, `- ` bullets, pipe tables (header
    row, separator row, body rows; numeric cells right-aligned), fenced code blocks, and paragraphs (consecutive
    lines joined); within a line, `**bold**`, `[links](...)` and `![images](...)`."""
    body: list[str] = []
    table: list[list[str]] = []
    paragraph: list[str] = []
    code: list[str] | None = None  # the lines of an open fenced code block
    in_list = False

    def flush() -> None:
        nonlocal in_list
        if table:
            head, rows = table[0], table[2:]
            body.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>"
                        + "".join("<tr>" + "".join(
                            f"<td class=\"num\">{inline(c)}</td>" if NUMERIC_CELL.fullmatch(c) else
                            f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rows)
                        + "</table>")
            table.clear()
        if paragraph:
            body.append(f"<p>{inline(' '.join(paragraph))}</p>")
            paragraph.clear()
        if in_list:
            body.append("</ul>")
            in_list = False

    for line in text.splitlines():
        if code is not None:
            if line.startswith("```"):
                body.append(f"<pre>{html.escape(chr(10).join(code))}</pre>")
                code = None
            else:
                code.append(line)
            continue
        if line.startswith("|"):
            if not table:
                flush()
            table.append(table_cells(line))
            continue
        if line.startswith("- "):
            if not in_list:
                flush()
                body.append("<ul>")
                in_list = True
            body.append(f"<li>{inline(line[2:])}</li>")
            continue
        heading = re.match(r"(#+) (.*)", line)
        if line.startswith("```") or heading or not line.strip():
            flush()
        if line.startswith("```"):
            code = []
        elif heading:
            level = len(heading.group(1))
            body.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
        elif line.strip():
            if table or in_list:
                flush()
            paragraph.append(line.strip())
    if code is not None:  # an unclosed block runs to the end, as in CommonMark
        body.append(f"<pre>{html.escape(chr(10).join(code))}</pre>")
    flush()
    return page(title, "\n".join(body))
