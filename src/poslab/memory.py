"""Memory: how much a block of work may hold, what to do when it does not fit, and how much it used.

Every place that cuts a long sequence into pieces to bound its memory (the chunked attention path,
FIRE's pairwise MLP, the diagnostics' attention probabilities) takes its budget and its row
blocks from here, so the budget is one number.
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# Elements a block of work may hold at once: 2^24 float32 values, 64 MiB.
BLOCK_ELEMENTS = 2**24


def rows_per_block(elements_per_row: int, budget: int = BLOCK_ELEMENTS) -> int:
    """How many rows of `elements_per_row` elements fit in `budget` (at least one)."""
    return max(1, budget // max(1, elements_per_row))


def row_blocks(rows: int, elements_per_row: int, budget: int = BLOCK_ELEMENTS) -> list[tuple[int, int]]:
    """[start, stop) blocks covering rows 0..rows-1, each within the budget."""
    step = rows_per_block(elements_per_row, budget)
    return [(start, min(rows, start + step)) for start in range(0, rows, step)]


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA raises torch.OutOfMemoryError; the CPU allocator a RuntimeError that says so."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


def release_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def in_batches_that_fit(count: int, batch_size: int, compute: Callable[[int, int], object]) -> Iterator[object]:
    """compute(start, stop) over items [0, count) in batches of batch_size, in order. A batch that
    runs out of memory is retried at half its size, down to one item (whose failure is raised);
    the smaller size is kept for the rest. `compute` must have no side effects until it returns,
    so a failed batch leaves nothing half-counted."""
    start = 0
    while start < count:
        stop = min(count, start + batch_size)
        try:
            result = compute(start, stop)
        except (torch.OutOfMemoryError, RuntimeError) as error:
            if not is_out_of_memory(error) or stop - start == 1:
                raise
            release_memory()
            batch_size = (stop - start) // 2
            log.warning("out of memory at a batch of %d; retrying with %d", stop - start, batch_size)
            continue
        yield result
        start = stop


# --- how much a piece of work used --------------------------------------------------------------


def _proc_status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024  # kB
    raise OSError(f"no {key} in /proc/self/status")


class PeakMemory:
    """The peak memory of the work done inside `with PeakMemory(device) as peak:`, above what was
    in use when it started: `peak.bytes`, and how it was read (`peak.measure`).

    On CUDA, torch.cuda.max_memory_allocated. On a CPU, the peak resident set (VmHWM), restarted
    from the current resident set on entry through /proc/self/clear_refs; where that is not
    available, ru_maxrss, which only ever grows (it starts at the resident set of the parent
    process at the fork), so it measures a process that does nothing else."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.bytes: int | None = None
        self.measure: str | None = None
        self._before = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            self._before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.measure = "torch.cuda.max_memory_allocated"
            return self
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to VmRSS
            self._before, self.measure = _proc_status_bytes("VmRSS"), "VmHWM"
        except OSError:
            self._before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.measure = "ru_maxrss"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.measure == "VmHWM":
            peak = _proc_status_bytes("VmHWM")
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        # nothing new: the resident set moved by a few pages
        self.bytes = max(0, peak - self._before)
