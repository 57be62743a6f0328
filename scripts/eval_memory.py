"""Peak resident memory and time of one no-grad forward of gpt_small with ALiBi at T tokens, per
attention path (model.net.attention), on the CPU:

    python scripts/eval_memory.py sdpa 16384      # the (H, T, T) bias materialised
    python scripts/eval_memory.py chunked 16384   # a block of query rows at a time
"""

import sys
import time

import torch

from poslab.encodings import ALiBi
from poslab.memory import PeakMemory
from poslab.model import GPT

path, T = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
model = GPT(256, 4, 4, 128, pos_enc=ALiBi(4), attention=path).eval()
idx = torch.randint(0, 256, (1, T))
start = time.time()
with PeakMemory("cpu") as peak, torch.no_grad():
    model(idx)
print(f"{path} T={T}: +{peak.bytes / 2**20:.0f} MiB ({peak.measure}), {time.time() - start:.1f} s")
