"""The machine a run measured on, and the matmul peak its MFU is computed against."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

from . import ROOT, synchronize
from .models import x_transformers_version


def machine(device: torch.device, threads: int) -> dict:
    from poslab.records.results import git_state

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = int(line.split()[1]) * 1024
    except OSError:
        pass
    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "memory_bytes": memory,
        "torch": torch.__version__,
        "torch_threads": threads,
        "device": str(device),
        "x_transformers": x_transformers_version(),
        "git": git_state(ROOT),
        "load_average_start": list(os.getloadavg()),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def matmul_peak(device: torch.device, quick: bool, clock=time.perf_counter) -> dict:
    """FLOP/s of the best of several large square matmuls: float32 on a CPU, bf16 on CUDA."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size = 256 if quick else (8192 if device.type == "cuda" else 2048)
    calls = 2 if quick else (50 if device.type == "cuda" else 5)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up
    best = 0.0
    for _ in range(3 if quick else 7):
        synchronize(device)
        started = clock()
        for _ in range(calls):
            a @ b
        synchronize(device)
        best = max(best, calls * 2 * size**3 / (clock() - started))
    return {"flops_per_s": best, "dtype": str(dtype).removeprefix("torch."), "size": size}
