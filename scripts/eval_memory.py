"""Peak resident memory and time of one no-grad forward of gpt_small with ALiBi at T tokens, per
attention path (model.net.attention), on the CPU:

    python scripts/eval_memory.py sdpa 16384      # the (H, T, T) bias materialised
    python scripts/eval_memory.py chunked 16384   # a block of query rows at a time
"""

import sys
import time
from pathlib import Path

import torch

from poslab.encodings import ALiBi
from poslab.model import GPT


def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024


path, T = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
model = GPT(256, 4, 4, 128, pos_enc=ALiBi(4), attention=path).eval()
idx = torch.randint(0, 256, (1, T))
Path("/proc/self/clear_refs").write_text("5")
base = status("VmRSS")
start = time.time()
with torch.no_grad():
    model(idx)
print(f"{path} T={T}: +{(status('VmHWM') - base) / 2**20:.0f} MiB, {time.time() - start:.1f} s")
