"""report.html's two reading aids: the table of contents (ids from heading text, ## with their ###
nested) and the sortable tables, whose one inline script is run with node where node is installed;
and that the page stays one valid document that loads nothing."""

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from poslab.report.html import markdown_to_html, write_html

REPORT = """# Sweep sweep-1

Tiny models: qualitative differences only.

## Summary
- rope: best at every length

## Perplexity, protocol nonoverlapping
### Per length
| encoding | 16 | 32 |
|---|---:|---:|
| rope | 8.27 | 8.22 (0.99x) |
| alibi | 821,504 | unsupported |

### Per length
#### Not in the contents
## Plots
![perplexity](ppl.png)

## `rope` vs `alibi`
| a \\| b | c |
|---|---|
| x | y |
"""

# the report's cells, and the numbers the sort must read from them (None: no number)
CELLS = [
    "8.27",
    "8.22 (0.99x)",
    "821,504",
    "1.02x",
    "8.0 ± 0.3",
    "unsupported",
    "—",
    "n/a",
    "12%",
    "−0.5",
    "OOM",
    "",
    "1,048,576 (2.00x)",
]
NUMBERS = [8.27, 8.22, 821504, 1.02, 8.0, None, None, None, 12, -0.5, None, None, 1048576]


class Page(HTMLParser):
    """Tags balanced in order, plus what these tests look at: headings, the nav's links with their
    depth, tables, header cells, every src, the scripts and the order of start tags."""

    VOID = {"img", "meta", "br", "hr", "link", "input"}

    def __init__(self, text: str):
        super().__init__()
        self.open: list[str] = []
        self.errors: list[str] = []
        self.declarations: list[str] = []
        self.starts: list[str] = []
        self.headings: list[tuple[str, str]] = []  # (tag, id)
        self.links: list[tuple[int, str, str]] = []  # (depth in the nav, href, text)
        self.tables: list[dict] = []
        self.headers: list[dict] = []
        self.sources: list[str] = []
        self.scripts: list[dict] = []
        self.feed(text)
        self.close()

    def handle_decl(self, decl):
        self.declarations.append(decl)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.starts.append(tag)
        if "src" in attrs:
            self.sources.append(attrs["src"])
        if re.fullmatch(r"h[1-6]", tag):
            self.headings.append((tag, attrs.get("id")))
        elif tag == "a" and "nav" in self.open:
            self.links.append((self.open.count("ul"), attrs["href"], ""))
        elif tag == "table":
            self.tables.append(attrs)
        elif tag == "th":
            self.headers.append(attrs)
        elif tag == "script":
            self.scripts.append(attrs)
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_data(self, data):
        if self.open and self.open[-1] in ("a", "code") and "nav" in self.open:
            depth, href, text = self.links[-1]
            self.links[-1] = (depth, href, text + data)

    def handle_endtag(self, tag):
        if not self.open or self.open[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.open[-1] if self.open else 'nothing'}")
        else:
            self.open.pop()


@pytest.fixture
def page(tmp_path):
    (tmp_path / "ppl.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(64)))
    return markdown_to_html(REPORT, tmp_path)


def test_contents_lists_every_section_and_subsection_in_order_linking_to_its_heading(page):
    parsed = Page(page)

    assert parsed.links == [
        (1, "#summary", "Summary"),
        (1, "#perplexity-protocol-nonoverlapping", "Perplexity, protocol nonoverlapping"),
        (2, "#per-length", "Per length"),
        (2, "#per-length-2", "Per length"),
        (1, "#plots", "Plots"),
        (1, "#rope-vs-alibi", "rope vs alibi"),
    ]
    ids = {anchor for tag, anchor in parsed.headings if tag in ("h2", "h3")}
    assert {href[1:] for _, href, _ in parsed.links} == ids
    assert '<h2 id="perplexity-protocol-nonoverlapping">Perplexity, protocol nonoverlapping</h2>' in page
    assert '<a href="#rope-vs-alibi"><code>rope</code> vs <code>alibi</code></a>' in page


def test_contents_comes_right_after_the_title(page):
    starts = Page(page).starts

    assert starts.count("nav") == 1 and starts.count("h1") == 1
    assert starts.index("nav") == starts.index("h1") + 1
    assert page.index("</h1>") < page.index("<nav") < page.index("<p>Tiny models")


def test_every_heading_has_an_id_from_its_text_and_repeats_are_numbered(tmp_path):
    text = "# Report\n## Results\n## Results 2\n## Results\n### Results\n## ±\n#### A_b  c!\n"

    headings = Page(markdown_to_html(text, tmp_path)).headings

    assert headings == [
        ("h1", "report"),
        ("h2", "results"),
        ("h2", "results-2"),
        ("h2", "results-3"),  # not a second "results-2": "Results 2" holds that one
        ("h3", "results-4"),
        ("h2", "section"),
        ("h4", "a-b-c"),
    ]
    assert markdown_to_html(text, tmp_path) == markdown_to_html(text, tmp_path)


def test_a_subsection_before_any_section_is_listed_at_the_top(tmp_path):
    links = Page(markdown_to_html("# R\n### Early\n### Also early\n## Late\n### Inside\n", tmp_path)).links

    assert links == [
        (1, "#early", "Early"),
        (1, "#also-early", "Also early"),
        (1, "#late", "Late"),
        (2, "#inside", "Inside"),
    ]


@pytest.mark.parametrize(
    "text",
    ["# Report\n## Only section\ntext\n", "# Report\ntext\n", "# Report\n## One\n#### Deep\n"],
    ids=["one-section", "no-section", "one-section-and-a-deeper-heading"],
)
def test_no_contents_for_a_page_with_fewer_than_two_sections(tmp_path, text):
    page = markdown_to_html(text, tmp_path)

    assert "<nav" not in page and Page(page).links == []


def test_every_table_is_marked_sortable_and_every_header_says_so(page):
    parsed = Page(page)

    assert len(parsed.tables) == 2 and all(table.get("class") == "sortable" for table in parsed.tables)
    assert len(parsed.headers) == 5 and all(th.get("title") == "click to sort" for th in parsed.headers)
    assert "table.sortable th { cursor: pointer; }" in page
    # before a click nothing is sorted, and the rows are in report.md's order
    assert all("aria-sort" not in th for th in parsed.headers)
    assert page.index("<td>rope</td>") < page.index("<td>alibi</td>")
    assert '<th class="number" title="click to sort">16</th>' in page


def test_page_is_one_valid_document_that_loads_nothing(tmp_path, page):
    (tmp_path / "report.md").write_text(REPORT)
    written = write_html(tmp_path / "report.md").read_text(encoding="utf-8")
    parsed = Page(written)

    assert written == page
    assert parsed.declarations == ["DOCTYPE html"]
    assert parsed.errors == [] and parsed.open == []
    assert len(parsed.sources) == 1 and parsed.sources[0].startswith("data:image/png;base64,")
    assert parsed.scripts == [{}]  # one script, inline
    assert "http://" not in written and "https://" not in written and "<link" not in written
    assert len(re.findall(r"\bsrc\s*=", written)) == 1


@pytest.fixture
def node():
    path = shutil.which("node")
    if path is None:
        pytest.skip("node is not installed, so the sort's JavaScript cannot be run")
    return path


def run_script(node: str, page: str, tmp_path, before: str, after: str):
    """The page's own script between `before` (what it needs of a browser) and `after`, run with
    node; what `after` prints as JSON."""
    script = re.search(r"<script>(.*?)</script>", page, re.S).group(1)
    path = tmp_path / "sort.js"
    path.write_text(before + "\n" + script + "\n" + after, encoding="utf-8")
    done = subprocess.run([node, str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


NO_TABLES = "const document = {querySelectorAll: () => []};"


def both_ways(cells: list[str]) -> str:
    """JavaScript that prints sortedOrder's row order for `cells`, ascending then descending."""
    orders = "[true, false].map((ascending) => sortedOrder(cells, ascending))"
    return f"const cells = {json.dumps(cells)};\nconsole.log(JSON.stringify({orders}));"


def test_cell_number_reads_the_reports_cells(node, page, tmp_path):
    numbers = run_script(
        node, page, tmp_path, NO_TABLES, f"console.log(JSON.stringify({json.dumps(CELLS)}.map(cellNumber)));"
    )

    assert numbers == NUMBERS


def test_numbers_sort_both_ways_with_cells_without_one_last_and_ties_in_order(node, page, tmp_path):
    cells = CELLS[:8] + ["8.27 (1.00x)"]
    ascending, descending = run_script(node, page, tmp_path, NO_TABLES, both_ways(cells))

    # 1.02x, 8.0 ± 0.3, 8.22 (0.99x), 8.27 and 8.27 (1.00x) in their order, 821,504; then the rest as they were
    assert ascending == [3, 4, 1, 0, 8, 2, 5, 6, 7]
    assert descending == [2, 0, 8, 1, 4, 3, 5, 6, 7]


def test_text_columns_sort_by_locale_both_ways(node, page, tmp_path):
    cells = ["rope_pi", "alibi", "Learned", "rope", "alibi"]
    ascending, descending = run_script(node, page, tmp_path, NO_TABLES, both_ways(cells))

    assert [cells[i] for i in ascending] == ["alibi", "alibi", "Learned", "rope", "rope_pi"]
    assert [cells[i] for i in descending] == ["rope_pi", "rope", "Learned", "alibi", "alibi"]
    assert ascending[:2] == descending[3:] == [1, 4]  # equal names keep their order both ways


# just enough of a browser's table for the script: a header row of two cells and a body of three rows
FAKE_TABLE = """
const rows = [["rope", "8.27"], ["alibi", "unsupported"], ["learned", "1.02x"]].map((texts) =>
  ({name: texts[0], cells: texts.map((text) => ({textContent: text}))}));
const body = {rows: rows.slice(),
  appendChild(row) { this.rows.splice(this.rows.indexOf(row), 1); this.rows.push(row); }};
const table = {tBodies: [body]}, headerRow = {cells: []}, listeners = [];
for (let i = 0; i < 2; i++) {
  const attributes = {};
  headerRow.cells.push({cellIndex: i, parentNode: headerRow,
    closest: (selector) => (selector === "table" ? table : null),
    getAttribute: (name) => (name in attributes ? attributes[name] : null),
    setAttribute: (name, value) => { attributes[name] = value; },
    removeAttribute: (name) => { delete attributes[name]; },
    addEventListener: (type, listener) => listeners.push({column: i, type, listener})});
}
const document = {querySelectorAll: (selector) => (selector === "table.sortable th" ? headerRow.cells : [])};
"""

CLICKS = """
const seen = [];
for (const column of [1, 1, 0, 1]) {
  listeners.filter((l) => l.column === column && l.type === "click").forEach((l) => l.listener());
  seen.push([body.rows.map((row) => row.name), headerRow.cells.map((th) => th.getAttribute("aria-sort"))]);
}
console.log(JSON.stringify(seen));
"""


def test_clicking_a_header_sorts_its_rows_ascending_then_descending_and_marks_it(node, page, tmp_path):
    seen = run_script(node, page, tmp_path, FAKE_TABLE, CLICKS)

    assert seen == [
        [["learned", "rope", "alibi"], [None, "ascending"]],
        [["rope", "learned", "alibi"], [None, "descending"]],
        [["alibi", "learned", "rope"], ["ascending", None]],
        [["learned", "rope", "alibi"], [None, "ascending"]],  # a fresh column starts ascending again
    ]
