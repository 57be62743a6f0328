"""Small pieces of text every part of the report writes the same way."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

ROW_STATUS_TEXT = {"unsupported": "unsupported", "non_finite": "non-finite", "out_of_memory": "out of memory"}

ABSENT = object()  # a key missing from one config: a value of its own, unlike any config value


def is_unresolved(value) -> bool:
    return isinstance(value, str) and "${" in value


def is_finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def count_text(value, missing: str | None = "-") -> str | None:
    """An integer with thousands separators."""
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else missing


def value_text(value) -> str:
    """A config value as written on the command line."""
    if value is ABSENT:
        return "unset"
    if value is None or isinstance(value, (bool, list, dict)):
        return json.dumps(value, default=str)
    return str(value)


def natural_key(text: str) -> list:
    """Sort 'context=64' before 'context=128'."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part]


def relative_to_root(path: Path, root: Path) -> str:
    try:
        relative = path.relative_to(root)
    except ValueError:
        return str(path)
    return str(relative) if str(relative) != "." else (root.resolve().name or str(root))


def one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def escape_cells(cells: list[str]) -> list[str]:
    return [cell.replace("|", "\\|") for cell in cells]
