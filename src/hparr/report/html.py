"""The report's HTML: one page style, inline Markdown (bold, links, images) as HTML, tables, and a Markdown text
(headings, bullets, tables, paragraphs) as a standalone page. The run report and the study report both draw
their index.html with it."""
from __future__ import annotations

import html
import re

import pandas as pd

STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;line-height:1.4}"
         "table{border-collapse:collapse;font-size:0.9em}th,td{border:1px solid #ccc;padding:3px 6px}"
         "table.layers th,table.layers td{text-align:right}"
         "img{max-width:100%;border:1px solid #eee}pre{background:#f6f6f6;padding:1em;overflow:auto}")

escape = html.escape


def inline(text: str) -> str:
    """One line of Markdown as HTML: escaped, with images, links and bold."""
    s = html.escape(text)
    s = re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", r'<a href="\2"><img src="\2" alt="\1"></a>', s)
    s = re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r'<a href="\2">\1</a>', s)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)


def frame(df: pd.DataFrame) -> str:
    """A DataFrame as an HTML table of right-aligned cells (class "layers"), its values escaped."""
    return df.to_html(index=False, escape=True, border=0, classes="layers")


def page(title: str, body: str) -> str:
    """A standalone HTML page around `body`."""
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")


def markdown_html(text: str, title: str) -> str:
    """A Markdown text (headings, bullets, tables, images, links, bold) as a standalone HTML page."""
    body, in_list, table = [], False, []

    def flush_table() -> None:
        if table:
            head, rows = table[0], table[2:]
            body.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rows)
                        + "</table>")
            table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip("|").split(" | ")])
            continue
        flush_table()
        if line.startswith("- "):
            if not in_list:
                body.append("<ul>")
                in_list = True
            body.append(f"<li>{inline(line[2:])}</li>")
            continue
        if in_list:
            body.append("</ul>")
            in_list = False
        heading = re.match(r"(#+) (.*)", line)
        if heading:
            level = len(heading.group(1))
            body.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
        elif line.strip():
            body.append(f"<p>{inline(line)}</p>")
    flush_table()
    if in_list:
        body.append("</ul>")
    return page(title, "\n".join(body))
