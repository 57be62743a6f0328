"""Why the model passes an additive attention bias to SDPA as (1, H, T, T), not (H, T, T).

    .venv/bin/python scripts/bench_attention_mask.py [--length 2048] [--batch 8] [--heads 4]

Times F.scaled_dot_product_attention with a causal ALiBi-style float mask of each shape, against
is_causal=True with no bias, on the current device. On CPU a 3-D mask takes the slow math path.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from poslab.encodings import ALiBi
from poslab.model import causal_bias


def seconds_per_call(fn, repeats: int) -> float:
    fn()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    q, k, v = (torch.randn(args.batch, args.heads, args.length, args.head_dim) for _ in range(3))
    pos = torch.arange(args.length)
    bias_3d = causal_bias(ALiBi(args.heads).bias(pos, pos))  # (H, T, T)
    bias_4d = bias_3d.unsqueeze(0)  # (1, H, T, T)
    cases = {
        "no bias, is_causal=True": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "bias (H, T, T)": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias_3d),
        "bias (1, H, T, T)": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias_4d),
    }
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; B={args.batch} H={args.heads} "
        f"T={args.length} head_dim={args.head_dim}"
    )
    with torch.no_grad():
        for name, fn in cases.items():
            print(f"{name:>26}: {seconds_per_call(fn, args.repeats):.3f} s")


if __name__ == "__main__":
    main()
