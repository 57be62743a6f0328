"""The package's architecture, read from the source with `ast` (nothing of poslab is imported): no
import cycle between modules nor between top-level subpackages, the library never imports the
console-script commands (nor one command another), no module over 600 lines, and every package
folder has an `__init__.py` with a docstring.

`import_graph()` is the module graph the tests check; run with `-s` to see the cycles found."""

from __future__ import annotations

import ast
from collections import defaultdict, deque
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
ROOT_PACKAGE = "poslab"
MAX_LINES = 600
# poslab.commands: one module per console script, and the helpers they share
COMMANDS = "poslab.commands"
COMMAND_MODULES = {f"{COMMANDS}.{name}" for name in ("train", "evaluate", "inspect", "report")}
# the modules allowed to import the commands: the commands themselves and the console scripts' front door
ABOVE_LIBRARY = (COMMANDS, "poslab.cli", "poslab.__main__")


@dataclass(frozen=True)
class Edge:
    """`source` imports `target` at `line`; `explicit` is False for a parent package that Python runs
    first (importing poslab.a.b runs poslab/a/__init__.py)."""

    source: str
    target: str
    line: int
    explicit: bool


def module_files(src: Path = SRC, package: str = ROOT_PACKAGE) -> dict[str, Path]:
    """Module name -> file, for every .py file of the package (a package's __init__.py is the package)."""
    modules = {}
    for path in sorted((src / package).rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _ancestors(name: str) -> list[str]:
    """poslab.a.b -> [poslab, poslab.a]"""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _existing(name: str, modules: dict[str, Path]) -> str:
    """The longest prefix of a dotted name that is a module here (`import poslab.a.b` of a missing b -> poslab.a)."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _explicit_targets(node: ast.AST, module: str, path: Path, modules: dict[str, Path], package: str) -> list[str]:
    """The modules of the package that one import statement names."""
    if isinstance(node, ast.Import):
        return [_existing(alias.name, modules) for alias in node.names if _within(alias.name, package)]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:  # relative: from the module's own package (or the package itself, for an __init__.py)
        base = module.split(".") if _is_package(path) else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
        origin = ".".join(base + ([node.module] if node.module else []))
    else:
        origin = node.module or ""
    if not _within(origin, package):
        return []
    targets = []
    for alias in node.names:
        submodule = f"{origin}.{alias.name}"
        targets.append(submodule if alias.name != "*" and submodule in modules else _existing(origin, modules))
    return targets


def import_edges(src: Path = SRC, package: str = ROOT_PACKAGE) -> list[Edge]:
    """Every import of the package by the package, at module level and inside functions and methods,
    plus the parent packages each one runs first. Left out: a parent package that contains the importer
    (it has already started by the time the importer runs), and the root package when its __init__.py
    imports nothing of the package (a module that imports nothing is on no cycle)."""
    modules = module_files(src, package)
    edges: set[Edge] = set()
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        own = set(_ancestors(module)) | ({module} if _is_package(path) else set())
        for node in ast.walk(tree):
            for target in _explicit_targets(node, module, path, modules, package):
                edges.add(Edge(module, target, node.lineno, True))
                for parent in _ancestors(target):
                    if parent in modules and parent not in own:
                        edges.add(Edge(module, parent, node.lineno, False))
    if not any(edge.source == package for edge in edges):
        edges = {edge for edge in edges if edge.target != package}
    return sorted(edges, key=lambda e: (e.source, e.line, e.target, not e.explicit))


def import_graph(src: Path = SRC, package: str = ROOT_PACKAGE) -> dict[str, set[str]]:
    """Module -> the modules of the package it imports (every module of the package is a key)."""
    graph: dict[str, set[str]] = {module: set() for module in module_files(src, package)}
    for edge in import_edges(src, package):
        graph[edge.source].add(edge.target)
    return graph


def top_level(module: str, package: str = ROOT_PACKAGE) -> str:
    """poslab.model.gpt -> poslab.model; poslab.cli -> poslab.cli; poslab -> poslab"""
    return ".".join(module.split(".")[:2]) if _within(module, package) else module


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph collapsed to top-level subpackages (and single modules), without self-edges."""
    collapsed: dict[str, set[str]] = {top_level(module): set() for module in graph}
    for module, targets in graph.items():
        collapsed[top_level(module)] |= {top_level(t) for t in targets} - {top_level(module)}
    return collapsed


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components that hold a cycle (more than one node, or a self-loop), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in sorted(graph):  # iterative Tarjan: no recursion limit on a large graph
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    components.append(sorted(component))
    return sorted(components)


def shortest_cycle(graph: dict[str, set[str]], start: str, within: set[str]) -> list[str]:
    """start -> ... -> start, the fewest steps, through nodes of `within` only."""
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph.get(node, ())):
            if child not in within:
                continue
            if child == start:
                chain = [node]
                while chain[-1] != start:
                    chain.append(previous[chain[-1]])
                return [start, *reversed(chain[:-1]), start] if node != start else [start, start]
            if child not in previous:
                previous[child] = node
                queue.append(child)
    return [start]


def describe_cycles(
    graph: dict[str, set[str]], where: dict[tuple[str, str], list[str]], noun: str = "modules"
) -> list[str]:
    """One line per cycle-holding component: its members, and a shortest cycle through its first member with
    the import lines of each step (`where[(a, b)]`: where a imports b)."""
    lines = []
    for component in strongly_connected(graph):
        chain = shortest_cycle(graph, component[0], set(component))
        steps = [chain[0]]
        for a, b in pairwise(chain):
            steps.append(f"-> {b}  [{'; '.join(where.get((a, b), ['?'])[:3])}]")
        lines.append(
            f"{len(component)} {noun if len(component) > 1 else noun[:-1]} {{{', '.join(component)}}}: "
            + " ".join(steps)
        )
    return lines


def _module_where(edges: list[Edge]) -> dict[tuple[str, str], list[str]]:
    where: dict[tuple[str, str], list[str]] = defaultdict(list)
    for edge in edges:
        where[(edge.source, edge.target)].append(f"{edge.source}:{edge.line}" + ("" if edge.explicit else " (parent)"))
    return where


def _package_where(edges: list[Edge]) -> dict[tuple[str, str], list[str]]:
    where: dict[tuple[str, str], list[str]] = defaultdict(list)
    for edge in edges:
        a, b = top_level(edge.source), top_level(edge.target)
        if a != b:
            where[(a, b)].append(
                f"{edge.source}:{edge.line} imports {edge.target}" + ("" if edge.explicit else " (parent)")
            )
    return where


def module_cycles(src: Path = SRC) -> list[str]:
    return describe_cycles(import_graph(src), _module_where(import_edges(src)))


def package_cycles(src: Path = SRC) -> list[str]:
    return describe_cycles(package_graph(import_graph(src)), _package_where(import_edges(src)), "packages")


def command_imports(src: Path = SRC) -> list[str]:
    """Imports of a command (or of the front door) from below it, and of one command by another."""
    problems = []
    for edge in import_edges(src):
        if not edge.explicit:
            continue
        above = any(_within(edge.source, name) for name in ABOVE_LIBRARY)
        if not above and (_within(edge.target, COMMANDS) or _within(edge.target, "poslab.cli")):
            problems.append(f"{edge.source}:{edge.line} (library) imports {edge.target}")
        if _within(edge.source, COMMANDS) and edge.target in COMMAND_MODULES and edge.target != edge.source:
            problems.append(f"{edge.source}:{edge.line} (command module) imports command {edge.target}")
    return problems


def long_modules(src: Path = SRC, limit: int = MAX_LINES) -> list[str]:
    problems = []
    for module, path in module_files(src).items():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > limit:
            problems.append(f"{module} ({path.relative_to(src)}): {n} lines")
    return problems


def packages_without_docstring(src: Path = SRC, package: str = ROOT_PACKAGE) -> list[str]:
    """Every folder of the package that holds Python code (at any depth) needs an __init__.py with a docstring;
    folders of data only (conf/) are not packages."""
    top = src / package
    folders = {top}
    for path in top.rglob("*.py"):
        if "__pycache__" not in path.parts:
            folders.update(p for p in path.parents if p == top or top in p.parents)
    problems = []
    for folder in sorted(folders):
        init = folder / "__init__.py"
        name = folder.relative_to(src).as_posix()
        if not init.is_file():
            problems.append(f"{name}/: no __init__.py")
        elif not (ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or "").strip():
            problems.append(f"{name}/__init__.py: no docstring")
    return problems


def _report(title: str, lines: list[str]) -> str:
    text = f"{title}: {len(lines)}" + "".join(f"\n  {line}" for line in lines)
    print(f"\n{text}")
    return text


def test_import_graph_reads_the_package():
    graph = import_graph()
    assert "poslab.cli" in graph and len(graph) > 10, sorted(graph)
    assert sum(map(len, graph.values())) > len(graph) / 2, "few imports between poslab modules found: parsing is broken"


def test_no_module_import_cycle():
    cycles = module_cycles()
    assert not cycles, _report("module import cycles (strongly connected components)", cycles)
    _report("module import cycles (strongly connected components)", cycles)


def test_no_package_import_cycle():
    cycles = package_cycles()
    assert not cycles, _report("top-level package import cycles", cycles)
    _report("top-level package import cycles", cycles)


def test_library_never_imports_the_commands():
    problems = command_imports()
    assert not problems, _report("forbidden imports of poslab.commands / poslab.cli", problems)
    _report("forbidden imports of poslab.commands / poslab.cli", problems)


def test_no_module_is_too_long():
    problems = long_modules()
    assert not problems, _report(f"modules over {MAX_LINES} lines", problems)
    _report(f"modules over {MAX_LINES} lines", problems)


def test_every_package_has_an_init_with_a_docstring():
    problems = packages_without_docstring()
    assert not problems, _report("package folders without an __init__.py docstring", problems)
    _report("package folders without an __init__.py docstring", problems)
