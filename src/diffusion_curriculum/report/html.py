"""Reports: one self-contained static HTML file, or a Markdown file beside its PNGs.

A report is a title and a list of *sections* ``(heading, items)``.  An item is

* a ``str`` -- Markdown-ish text (:func:`markdown_to_html`: paragraphs, ``#`` headings, ``-`` lists,
  fenced code, inline ``**bold**``, ``*italic*``, ```code```; no links or raw HTML -- text is escaped);
* a :class:`pandas.DataFrame` -- a table;
* a :class:`pathlib.Path` -- a PNG image;
* or :class:`Text`, :class:`Table`, :class:`Image`, which add a caption and options.

The HTML report embeds every image as a ``data:image/png;base64`` URI and its CSS inline: it loads nothing
from anywhere (no scripts, fonts, stylesheets or CDNs), so it can be mailed, archived or opened offline.
It contains no timestamp, so rebuilding it from the same inputs gives the same bytes (DVC and Snakemake
see no change).  The Markdown report links the PNGs by paths relative to the Markdown file.
"""

from __future__ import annotations

import base64
import html
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..io import atomic_write_text
from .tables import NA, markdown_table

__all__ = [
    "Text",
    "Table",
    "Image",
    "Item",
    "Section",
    "markdown_to_html",
    "render_html",
    "write_html_report",
    "render_markdown",
    "write_markdown_report",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Text:
    """Markdown-ish text (see the module docstring)."""

    markdown: str


@dataclass(frozen=True)
class Table:
    """A DataFrame shown as a table, with an optional caption; ``floatfmt`` formats float cells."""

    frame: pd.DataFrame
    caption: str = ""
    floatfmt: str = ".4g"
    index: bool = False


@dataclass(frozen=True)
class Image:
    """A PNG file with an optional caption (``alt`` defaults to the caption, then the file name)."""

    path: str | os.PathLike
    caption: str = ""
    alt: str = ""


Item = str | pd.DataFrame | os.PathLike | Text | Table | Image
Section = tuple[str, Sequence[Item]]


def _item(item: Item) -> Text | Table | Image:
    if isinstance(item, Text | Table | Image):
        return item
    if isinstance(item, str):
        return Text(item)
    if isinstance(item, pd.DataFrame):
        return Table(item)
    if isinstance(item, os.PathLike):
        return Image(item)
    raise TypeError(
        f"report item of type {type(item).__name__} is not supported: pass str (text), DataFrame (table), "
        "pathlib.Path (PNG) or Text / Table / Image"
    )


def _items(items: Item | Sequence[Item]) -> list[Item]:
    single = str | pd.DataFrame | os.PathLike | Text | Table | Image
    return [items] if isinstance(items, single) else list(items)


# --------------------------------------------------------------------------------------------------
# Markdown-ish text -> HTML
# --------------------------------------------------------------------------------------------------

_BULLET = re.compile(r"^[-*]\s+")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])")


def _inline(text: str) -> str:
    """Escape ``text`` and apply ``code``, **bold** and *italic* (nothing inside code spans)."""
    parts = text.split("`")
    out = []
    for i, part in enumerate(parts):
        escaped = html.escape(part, quote=False)
        if i % 2 and i < len(parts) - 1:  # inside a closed pair of backticks
            out.append(f"<code>{escaped}</code>")
        else:  # text; an odd part here follows an unmatched backtick, which is kept
            text = _ITALIC.sub(r"<em>\1</em>", _BOLD.sub(r"<strong>\1</strong>", escaped))
            out.append(("`" if i % 2 else "") + text)
    return "".join(out)


def _block_html(lines: list[str]) -> list[str]:
    """One blank-line separated block: a heading, or runs of paragraph text and bullet lists (a list
    may follow a paragraph line directly, as in CommonMark; an indented line continues a bullet)."""
    stripped = [line.strip() for line in lines]
    heading = re.match(r"^(#{1,4})\s+(.*)$", stripped[0])
    if heading and len(stripped) == 1:
        level = min(6, len(heading.group(1)) + 2)
        return [f"<h{level}>{_inline(heading.group(2))}</h{level}>"]
    out: list[str] = []
    paragraph: list[str] = []
    items: list[list[str]] = []

    def flush_paragraph() -> None:
        if paragraph:
            out.append(f"<p>{_inline(' '.join(paragraph))}</p>")
            paragraph.clear()

    def flush_items() -> None:
        if items:
            out.append("<ul>" + "".join(f"<li>{_inline(' '.join(i))}</li>" for i in items) + "</ul>")
            items.clear()

    for raw, line in zip(lines, stripped, strict=True):
        if _BULLET.match(line):
            flush_paragraph()
            items.append([_BULLET.sub("", line)])
        elif items and raw[:1] in (" ", "\t"):
            items[-1].append(line)
        else:
            flush_items()
            paragraph.append(line)
    flush_paragraph()
    flush_items()
    return out


def markdown_to_html(text: str) -> str:
    """A small Markdown subset as HTML: blank-line separated blocks, ``#``-``####`` headings (rendered
    two levels below the section heading), ``-``/``*`` bullet lists, fenced code blocks, paragraphs;
    inline code, bold and italic.  Everything else is shown as escaped text."""
    out: list[str] = []
    fences = re.split(r"^```[^\n]*\n(.*?)^```[ \t]*$", text, flags=re.M | re.S)
    for k, chunk in enumerate(fences):
        if k % 2:
            out.append(f"<pre><code>{html.escape(chunk.rstrip(), quote=False)}</code></pre>")
            continue
        for block in re.split(r"\n[ \t]*\n", chunk.strip("\n")):
            lines = [line for line in block.splitlines() if line.strip()]
            if lines:
                out.extend(_block_html(lines))
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; line-height: 1.5;
       color: #1a1a1a; max-width: 1100px; margin: 2rem auto; padding: 0 1.25rem; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3rem; }
h2 { border-bottom: 1px solid #eee; padding-bottom: .2rem; margin-top: 2.2rem; }
nav ol { columns: 2; font-size: .95rem; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .92rem; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d0d0; padding: .3rem .6rem; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #fafafa; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption, caption { color: #555; font-size: .9rem; margin-top: .3rem; text-align: left; }
caption { caption-side: bottom; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .9em; }
pre { background: #f6f8fa; padding: .6rem .8rem; overflow-x: auto; }
""".strip()


def _slug(text: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    slug, k = base, 2
    while slug in taken:
        slug, k = f"{base}-{k}", k + 1
    taken.add(slug)
    return slug


def _png_data_uri(path: str | os.PathLike) -> str:
    data = Path(path).read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"{path} is not a PNG file; the HTML report embeds PNG images only")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _table_html(table: Table) -> str:
    # The index as ordinary first column(s): a named index would get a header row of its own.
    frame = table.frame.reset_index() if table.index else table.frame
    body = frame.to_html(
        index=False,
        float_format=lambda v: format(v, table.floatfmt),
        na_rep=NA,
        border=0,
        escape=True,
    )
    if table.caption:
        body = body.replace(">", f">\n<caption>{_inline(table.caption)}</caption>", 1)
    return body


def _item_html(item: Text | Table | Image) -> str:
    if isinstance(item, Text):
        return markdown_to_html(item.markdown)
    if isinstance(item, Table):
        return _table_html(item)
    alt = html.escape(item.alt or item.caption or Path(item.path).name)
    caption = f"<figcaption>{_inline(item.caption)}</figcaption>" if item.caption else ""
    return f'<figure><img src="{_png_data_uri(item.path)}" alt="{alt}">{caption}</figure>'


def render_html(title: str, sections: Iterable[Section], intro: Item | Sequence[Item] = ()) -> str:
    """The whole report as one HTML document (see :func:`write_html_report`)."""
    intro_items = _items(intro)
    sections = list(sections)
    taken: set[str] = set()
    slugs = [_slug(heading, taken) for heading, _ in sections]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>\n{_CSS}\n</style>",
        "</head>",
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
        *(_item_html(_item(i)) for i in intro_items),
    ]
    if len(sections) > 1:
        links = "".join(
            f'<li><a href="#{slug}">{html.escape(heading)}</a></li>'
            for slug, (heading, _) in zip(slugs, sections, strict=True)
        )
        parts.append(f"<nav><ol>{links}</ol></nav>")
    for slug, (heading, items) in zip(slugs, sections, strict=True):
        parts.append(f'<section id="{slug}">')
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.extend(_item_html(_item(i)) for i in items)
        parts.append("</section>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def write_html_report(
    path: str | os.PathLike, title: str, sections: Iterable[Section], intro: Item | Sequence[Item] = ()
) -> Path:
    """Write a self-contained static HTML report to ``path`` (atomically) and return the path.

    Args:
        path: the ``.html`` file to write; parent folders are created.
        title: the page title and top heading.
        sections: ``(heading, items)`` pairs, in order; items as in the module docstring.  A table of
            contents is added when there is more than one section.
        intro: item(s) shown under the title, before the sections.

    Images are read now and embedded as base64 data URIs; nothing in the file refers to another file or
    to the network.

    Raises:
        ValueError: an image is not a PNG.  TypeError: an item has an unsupported type.
    """
    return atomic_write_text(path, render_html(title, sections, intro))


# --------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------


def _item_markdown(item: Text | Table | Image, base: Path) -> str:
    if isinstance(item, Text):
        return item.markdown.strip()
    if isinstance(item, Table):
        table = markdown_table(item.frame, floatfmt=item.floatfmt, index=item.index).rstrip()
        return f"{table}\n\n*{item.caption}*" if item.caption else table
    target = Path(os.path.relpath(Path(item.path).resolve(), base.resolve())).as_posix()
    alt = (item.alt or item.caption or Path(item.path).name).replace("]", "")
    image = f"![{alt}]({target})"
    return f"{image}\n\n*{item.caption}*" if item.caption else image


def render_markdown(
    title: str, sections: Iterable[Section], base_dir: str | os.PathLike, intro: Item | Sequence[Item] = ()
) -> str:
    """The report as GitHub Markdown; images are linked relative to ``base_dir`` (the file's folder)."""
    base = Path(base_dir)
    intro_items = _items(intro)
    blocks = [f"# {title}", *(_item_markdown(_item(i), base) for i in intro_items)]
    for heading, items in sections:
        blocks.append(f"## {heading}")
        blocks.extend(_item_markdown(_item(i), base) for i in items)
    return "\n\n".join(blocks) + "\n"


def write_markdown_report(
    path: str | os.PathLike, title: str, sections: Iterable[Section], intro: Item | Sequence[Item] = ()
) -> Path:
    """Write the report as Markdown (tables as GitHub tables, PNGs linked by relative path, not embedded)
    to ``path`` atomically and return the path.  Suited to a ``results.md`` in the repository, which
    GitHub renders; the linked PNGs must travel with it."""
    target = Path(path)
    return atomic_write_text(target, render_markdown(title, sections, target.parent, intro))
