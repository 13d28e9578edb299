"""The report as one document: a title and a list of blocks, built once and then rendered to
Markdown and to a self-contained HTML page (images inline, no stylesheet or script fetched).

Text in headings, paragraphs and list items may use the two bits of Markdown the report needs,
`code` and **bold**; the HTML renderer turns them into tags.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass


@dataclass
class Heading:
    text: str
    """A section (``##``); the document's title is the only first-level heading."""


@dataclass
class Paragraph:
    text: str


@dataclass
class Table:
    headers: list[str]
    body: list[list[str]]
    name: str
    """The HTML table's class (``results``, ``memory``, ``environment``)."""


@dataclass
class Image:
    file: str
    """The PNG beside report.md; report.html carries the bytes inline instead."""
    title: str
    png: bytes


@dataclass
class Code:
    text: str
    language: str


@dataclass
class BulletList:
    items: list[str]


Block = Heading | Paragraph | Table | Image | Code | BulletList


@dataclass
class Document:
    title: str
    blocks: list[Block]


# --------------------------------------------------------------------------------------------
# Markdown


def to_markdown(doc: Document) -> str:
    """Blocks apart by one blank line, as a Markdown reader expects them."""
    return "\n\n".join([f"# {doc.title}"] + [_markdown_block(b) for b in doc.blocks]) + "\n"


def _markdown_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"## {block.text}"
    if isinstance(block, Paragraph):
        return block.text
    if isinstance(block, Table):
        return markdown_table(block)
    if isinstance(block, Image):
        return f"![{block.title}]({block.file})"
    if isinstance(block, Code):
        return f"```{block.language}\n{block.text.rstrip()}\n```"
    if isinstance(block, BulletList):
        return "\n".join(f"- {item}" for item in block.items)
    raise TypeError(f"no Markdown for {block!r}")


def markdown_table(table: Table) -> str:
    """A pipe table; every column but the first is right-aligned (they hold numbers)."""
    lines = ["| " + " | ".join(table.headers) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(table.headers) - 1)) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in table.body]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# HTML


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead { background: #f2f2f2; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; }
"""


def to_html(doc: Document) -> str:
    """One page, one block per line; the style is inline too, so the file stands alone."""
    title = html.escape(doc.title)
    head = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>\n"
            f"<style>{CSS}</style></head><body>")
    return "\n".join([head, f"<h1>{title}</h1>"] + [_html_block(b) for b in doc.blocks] + ["</body></html>"])


def _html_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"<h2>{inline(block.text)}</h2>"
    if isinstance(block, Paragraph):
        return f"<p>{inline(block.text)}</p>"
    if isinstance(block, Table):
        return html_table(block)
    if isinstance(block, Image):
        title, data = html.escape(block.title), base64.b64encode(block.png).decode()
        return (f'<figure><img alt="{title}" src="data:image/png;base64,{data}">'
                f'<figcaption>{title}</figcaption></figure>')
    if isinstance(block, Code):
        return f"<pre>{html.escape(block.text)}</pre>"
    if isinstance(block, BulletList):
        return "<ul>" + "".join(f"<li>{inline(item)}</li>" for item in block.items) + "</ul>"
    raise TypeError(f"no HTML for {block!r}")


def html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in table.body)
    return f'<table class="{table.name}"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def listing(items: list[str]) -> str:
    """Names in a sentence: ``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def inline(text: str) -> str:
    """The little Markdown the report's text uses (`code`, **bold**) as HTML."""
    escaped = re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text, quote=False))
    return re.sub(r"\*\*([^*]*)\*\*", r"<strong>\1</strong>", escaped)
