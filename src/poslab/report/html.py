"""report.md -> report.html: one self-contained page, for a browser or an e-mail attachment.

The page is made from report.md itself, so the two never say different things. It knows only
the markdown that the report writes: headings, paragraphs, lists, tables (with `\\|` escaped in
cells), `code` and images alone on a line. Every image is embedded as a base64 data URI, and the
style is inline: the page loads nothing from anywhere.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

HTML_FILENAME = "report.html"

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 78rem; margin: 2rem auto; padding: 0 1rem;
       line-height: 1.45; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; }
th { background: #f3f3f3; }
td.number, th.number { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; }
code { background: #f3f3f3; padding: 0 0.2rem; }
"""

IMAGE_LINE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<src>[^)]+)\)$")
MIME_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}


def write_html(markdown_path: Path) -> Path:
    """report.html beside report.md, its images (paths relative to report.md) inline."""
    markdown_path = Path(markdown_path)
    path = markdown_path.with_name(HTML_FILENAME)
    path.write_text(markdown_to_html(markdown_path.read_text(), markdown_path.parent), encoding="utf-8")
    return path


def markdown_to_html(text: str, folder: Path) -> str:
    lines = text.splitlines()
    title = next((line[2:] for line in lines if line.startswith("# ")), "Report")
    body = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif heading := re.match(r"^(#{1,6}) (.*)$", line):
            level = len(heading.group(1))
            body.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
            i += 1
        elif image := IMAGE_LINE.match(line):
            body.append(figure(image.group("alt"), folder / image.group("src")))
            i += 1
        elif line.startswith("|"):
            block, i = _take(lines, i, lambda line: line.startswith("|"))
            body.append(table(block))
        elif line.startswith("- "):
            block, i = _take(lines, i, lambda line: line.startswith("- "))
            body.append("<ul>\n" + "\n".join(f"<li>{inline(item[2:])}</li>" for item in block) + "\n</ul>")
        else:
            block, i = _take(lines, i, lambda line: bool(line.strip()) and not _starts_a_block(line))
            body.append(f"<p>{inline(' '.join(block))}</p>")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _starts_a_block(line: str) -> bool:
    return line.startswith(("#", "|", "- ")) or bool(IMAGE_LINE.match(line))


def _take(lines: list[str], start: int, belongs) -> tuple[list[str], int]:
    """The lines from `start` on that belong to one block, and the index after them."""
    end = start + 1
    while end < len(lines) and belongs(lines[end]):
        end += 1
    return lines[start:end], end


def inline(text: str) -> str:
    """Escape, then `code`."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


def table(lines: list[str]) -> str:
    """A header line, an alignment line (---: is right-aligned), then the body."""
    header, alignment, *body = [_cells(line) for line in lines]
    numeric = [cell.strip().endswith(":") for cell in alignment]

    def cells(values: list[str], tag: str) -> str:
        return "".join(
            f'<{tag} class="number">{inline(value)}</{tag}>' if right else f"<{tag}>{inline(value)}</{tag}>"
            for value, right in zip(values, numeric + [False] * len(values), strict=False)
        )

    head = f"<thead><tr>{cells(header, 'th')}</tr></thead>"
    rows = "\n".join(f"<tr>{cells(values, 'td')}</tr>" for values in body)
    return f"<table>\n{head}\n<tbody>\n{rows}\n</tbody>\n</table>"


def _cells(line: str) -> list[str]:
    """'| a | b \\| c |' -> ['a', 'b | c']"""
    inner = line.strip()[1:-1] if line.strip().endswith("|") else line.strip()[1:]
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", inner)]


def figure(alt: str, path: Path) -> str:
    """The image inline as a data URI; a missing file is said, never linked."""
    mime = MIME_TYPES.get(path.suffix.lower())
    if mime is None or not path.is_file():
        return f"<p>[image not found: {html.escape(path.name)}]</p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img src="data:{mime};base64,{data}" alt="{html.escape(alt)}"></figure>'
