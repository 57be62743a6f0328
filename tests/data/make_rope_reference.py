"""Reference frequencies for tests/unit/test_rotary_family.py, from Hugging Face transformers.

Generated once, in a virtual environment of its own (transformers is not a poslab dependency):

    python3 -m venv /tmp/hfref
    /tmp/hfref/bin/pip install torch==2.13.0 transformers     # resolved to transformers 5.24.0
    /tmp/hfref/bin/python tests/data/make_rope_reference.py   # writes tests/data/rope_reference.json

(Cases added later leave the earlier ones as they were: the file is rewritten whole, and its diff
shows only the new lines.) Each case is one call of a function in `transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS`
for head size 64, base 1e4 and a training context of 128, and stores what it returns: the
per-pair inverse frequencies (float32) and the attention factor transformers multiplies cos and
sin by. Which poslab setting each case stands for is worked out in the test module's docstring.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

HEAD_DIM, BASE, TRAIN_LENGTH, N_HEAD = 64, 10000.0, 128, 4
SCALES = (2, 4, 16)
# LongRoPE's per-pair factors, as a released config lists them (one per pair): rising from 1 on the
# fastest pair to 8 on the slowest, and short ones just above 1
LONG_FACTOR = [round(8.0 ** (i / (HEAD_DIM // 2 - 1)), 6) for i in range(HEAD_DIM // 2)]
SHORT_FACTOR = [round(1.0 + 0.01 * i, 6) for i in range(HEAD_DIM // 2)]


def case(rope_type: str, parameters: dict, max_position_embeddings: int, seq_len: int | None = None) -> dict:
    rope_parameters = {"rope_type": rope_type, "rope_theta": BASE, **parameters}
    config = LlamaConfig(
        hidden_size=HEAD_DIM * N_HEAD,
        num_attention_heads=N_HEAD,
        head_dim=HEAD_DIM,
        max_position_embeddings=max_position_embeddings,
        rope_parameters=dict(rope_parameters),
    )
    init = ROPE_INIT_FUNCTIONS.get(rope_type)
    if init is None:  # "default" is not in the table: plain RoPE
        inv_freq = 1.0 / (BASE ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.int64).float() / HEAD_DIM))
        attention_factor = 1.0
    else:
        inv_freq, attention_factor = init(config, "cpu", seq_len=seq_len)
    assert inv_freq.dtype == torch.float32 and inv_freq.shape == (HEAD_DIM // 2,)
    return {
        "rope_type": rope_type,
        "rope_parameters": parameters,
        "max_position_embeddings": max_position_embeddings,
        "seq_len": seq_len,
        "inv_freq": inv_freq.tolist(),
        "attention_factor": float(attention_factor),
    }


def main() -> None:
    cases = {"default": case("default", {}, TRAIN_LENGTH)}
    for s in SCALES:
        target = s * TRAIN_LENGTH
        cases[f"linear_{s}"] = case("linear", {"factor": float(s)}, TRAIN_LENGTH)
        # dynamic NTK: factor 1, the scale comes from seq_len / max_position_embeddings
        cases[f"dynamic_{s}"] = case("dynamic", {"factor": 1.0}, TRAIN_LENGTH, seq_len=target)
        cases[f"yarn_{s}"] = case(
            "yarn", {"factor": float(s), "original_max_position_embeddings": TRAIN_LENGTH}, target
        )
        cases[f"llama3_{s}"] = case(
            "llama3",
            {
                "factor": float(s),
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": TRAIN_LENGTH,
            },
            target,
        )
    # YaRN's options, and LongRoPE with per-pair factors of its own
    for s in SCALES:
        target = s * TRAIN_LENGTH
        yarn = {"factor": float(s), "original_max_position_embeddings": TRAIN_LENGTH}
        cases[f"yarn_mscale_{s}"] = case("yarn", {**yarn, "mscale": 1.0, "mscale_all_dim": 0.5}, target)
        cases[f"yarn_untruncated_{s}"] = case("yarn", {**yarn, "truncate": False}, target)
        cases[f"yarn_attention_factor_{s}"] = case("yarn", {**yarn, "attention_factor": 1.3}, target)
        longrope = {
            "factor": float(s),
            "original_max_position_embeddings": TRAIN_LENGTH,
            "long_factor": LONG_FACTOR,
            "short_factor": SHORT_FACTOR,
        }
        cases[f"longrope_long_{s}"] = case("longrope", longrope, target, seq_len=target)
        cases[f"longrope_short_{s}"] = case("longrope", longrope, target, seq_len=TRAIN_LENGTH)
        cases[f"longrope_attention_factor_{s}"] = case(
            "longrope", {**longrope, "attention_factor": 1.1}, target, seq_len=target
        )
    for fraction in (0.25, 0.75):
        cases[f"proportional_{fraction}"] = case("proportional", {"partial_rotary_factor": fraction}, TRAIN_LENGTH)

    reference = {
        "generated_by": "tests/data/make_rope_reference.py",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "head_dim": HEAD_DIM,
        "base": BASE,
        "train_length": TRAIN_LENGTH,
        "cases": cases,
    }
    # one line per case: small, and a diff shows which case changed
    lines = [f" {json.dumps(key)}: {json.dumps(value)}" for key, value in reference.items() if key != "cases"]
    lines.append(' "cases": {\n' + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in cases.items()) + "\n }")
    path = Path(__file__).with_name("rope_reference.json")
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    print(f"wrote {len(cases)} cases to {path}")


if __name__ == "__main__":
    main()
