"""report.md -> report.html: one self-contained page, for a browser or an e-mail attachment.

The page is made from report.md itself, so the two never say different things. It knows only
the markdown that the report writes: headings, paragraphs, lists, tables (with `\\|` escaped in
cells), `code` and images alone on a line. Every image is embedded as a base64 data URI, and the
style and the one script are inline: the page loads nothing from anywhere.

Two aids for a long report, both optional to its reading: a table of contents after the title,
and tables that sort by a column when its header is clicked. Without JavaScript the page reads
as it always did; the script only reorders rows that are already there.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

HTML_FILENAME = "report.html"

# The sort arrows are generated content keyed on aria-sort, so the script sets one attribute and
# a header's text stays the column's name (screen readers read aria-sort instead).
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 78rem; margin: 2rem auto; padding: 0 1rem;
       line-height: 1.45; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; }
th { background: #f3f3f3; }
table.sortable th { cursor: pointer; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
td.number, th.number { text-align: right; font-variant-numeric: tabular-nums; }
nav { border-left: 3px solid #ccc; padding-left: 0.5rem; }
nav ul { margin: 0.2rem 0; }
img { max-width: 100%; }
code { background: #f3f3f3; padding: 0 0.2rem; }
"""

# cellNumber is the one place that says what number a cell holds: "8.22 (0.99x)" -> 8.22,
# "821,504" -> 821504, "1.02x" -> 1.02, "8.0 ± 0.3" -> 8, and "n/a", "—", "OOM" -> null.
# A column with any number sorts by number, its cells without one last in either direction;
# otherwise it sorts as text. Ties keep the rows' current order, so a second column can be
# sorted within a first.
SCRIPT = """
function cellNumber(text) {
  const head = text.trim().split(/[ (]/)[0].replace(/,/g, "").replace(/[x%]$/, "").replace("\\u2212", "-");
  return /^[-+]?(\\d+\\.?\\d*|\\.\\d+)(e[-+]?\\d+)?$/i.test(head) ? Number(head) : null;
}
function sortedOrder(texts, ascending) {
  const numbers = texts.map(cellNumber), sign = ascending ? 1 : -1;
  const numeric = numbers.some((n) => n !== null);
  return texts.map((_, i) => i).sort((a, b) => {
    if (!numeric) return sign * texts[a].localeCompare(texts[b], undefined, {numeric: true}) || a - b;
    const x = numbers[a], y = numbers[b];
    if (x === null || y === null) return (x === null) - (y === null) || a - b;
    return sign * (x - y) || a - b;
  });
}
function sortBy(th) {
  const body = th.closest("table").tBodies[0], rows = Array.from(body.rows);
  const ascending = th.getAttribute("aria-sort") !== "ascending";
  const texts = rows.map((row) => (row.cells[th.cellIndex] ? row.cells[th.cellIndex].textContent : ""));
  for (const other of th.parentNode.cells) other.removeAttribute("aria-sort");
  th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  for (const i of sortedOrder(texts, ascending)) body.appendChild(rows[i]);
}
document.querySelectorAll("table.sortable th").forEach((th) => th.addEventListener("click", () => sortBy(th)));
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
    headings: list[tuple[int, str, str]] = []  # (level, id, inner html), in page order
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif heading := re.match(r"^(#{1,6}) (.*)$", line):
            level, anchor = len(heading.group(1)), _anchor(heading.group(2), {h[1] for h in headings})
            headings.append((level, anchor, inline(heading.group(2))))
            body.append(f'<h{level} id="{anchor}">{headings[-1][2]}</h{level}>')
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
    if nav := contents(headings):
        # after the title, or first on a page that has none
        body.insert(next((n + 1 for n, block in enumerate(body) if block.startswith("<h1")), 0), nav)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + f"\n<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )


def _starts_a_block(line: str) -> bool:
    return line.startswith(("#", "|", "- ")) or bool(IMAGE_LINE.match(line))


def _take(lines: list[str], start: int, belongs) -> tuple[list[str], int]:
    """The lines from `start` on that belong to one block, and the index after them."""
    end = start + 1
    while end < len(lines) and belongs(lines[end]):
        end += 1
    return lines[start:end], end


def _anchor(text: str, taken: set[str]) -> str:
    """A heading's id from its text alone, so a link to a section survives a rerun of the report;
    a repeated heading (one per protocol, say) gets -2, -3... in page order."""
    base = re.sub(r"[\W_]+", "-", text.lower()).strip("-") or "section"
    anchor, n = base, 1
    while anchor in taken:  # a loop, not one suffix: "Results 2" may already hold "results-2"
        n += 1
        anchor = f"{base}-{n}"
    return anchor


def contents(headings: list[tuple[int, str, str]]) -> str:
    """The ## and ### headings as nested links; none for a page too short to need them.

    A ### before any ## has no section to sit in, so it is listed at the top level."""
    sections = [heading for heading in headings if heading[0] in (2, 3)]
    if len(sections) < 2:
        return ""
    groups: list[tuple[str, list[str]]] = []
    in_section = False
    for level, anchor, text in sections:
        link = f'<a href="#{anchor}">{text}</a>'
        if level == 3 and in_section:
            groups[-1][1].append(link)
        else:
            groups.append((link, []))
            in_section = level == 2
    items = "\n".join(f"<li>{link}{_links(subsections)}</li>" for link, subsections in groups)
    return f'<nav aria-label="Contents">\n<ul>\n{items}\n</ul>\n</nav>'


def _links(links: list[str]) -> str:
    return ("\n<ul>\n" + "\n".join(f"<li>{link}</li>" for link in links) + "\n</ul>\n") if links else ""


def inline(text: str) -> str:
    """Escape, then `code`."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


def table(lines: list[str]) -> str:
    """A header line, an alignment line (---: is right-aligned), then the body.

    The sort's marks are in the markup (SCRIPT finds tables by them); the script adds only the
    click."""
    header, alignment, *body = [_cells(line) for line in lines]
    numeric = [cell.strip().endswith(":") for cell in alignment]
    number = ' class="number"'

    def cells(values: list[str], tag: str) -> str:
        sort = ' title="click to sort"' if tag == "th" else ""
        return "".join(
            f"<{tag}{number if right else ''}{sort}>{inline(value)}</{tag}>"
            for value, right in zip(values, numeric + [False] * len(values), strict=False)
        )

    head = f"<thead><tr>{cells(header, 'th')}</tr></thead>"
    rows = "\n".join(f"<tr>{cells(values, 'td')}</tr>" for values in body)
    return f'<table class="sortable">\n{head}\n<tbody>\n{rows}\n</tbody>\n</table>'


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
