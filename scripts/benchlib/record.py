"""The markdown record of a run: the machine, training (with where a step's time goes), what each
option gives, Lightning's loop, and evaluation. It reports the measured ratios; the targets they
are read against are in experiments/benchmarks/README.md ("Targets")."""

from __future__ import annotations

from . import EVAL_LENGTHS_X
from .training import ROPE_PER_LAYER, SHARED_KERNELS


def _rate(entry: dict | None) -> str:
    if not entry:
        return "—"
    return f"{entry['median']:,.0f} ({entry['min']:,.0f}-{entry['max']:,.0f})"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "—"


def _paired(entry: dict | None) -> str:
    if not entry:
        return "—"
    return f"{entry['median']:.2f}x ({entry['min']:.2f}-{entry['max']:.2f})"


def _bytes(n: int | None) -> str:
    return "—" if n is None else f"{n / 2**20:,.1f} MiB"


def markdown(record: dict) -> str:
    m, sizes, peak = record["machine"], record["sizes"], record["matmul_peak"]
    default = record["training_meta"]["default_variant"]
    lines = [
        f"# poslab speed, {record['started']}" + ("" if record["finished"] else " (unfinished: sections missing)"),
        "",
        f"Machine: {m['cpu']}, {m['cpu_count']} CPUs"
        + (f", {m['gpu']} (CUDA {m['cuda']})" if m.get("gpu") else "")
        + f"; torch {m['torch']}, {m['torch_threads']} threads; "
        f"x-transformers {m['x_transformers'] or 'not installed'}; "
        f"git {(m['git'].get('commit') or '?')[:10]}{' (dirty)' if m['git'].get('dirty') else ''}; "
        f"load average {m['load_average_start'][0]:.2f} at the start, {m['load_average_end'][0]:.2f} at the end.",
        "",
        f"Model: {sizes['n_layer']} layers, width {sizes['n_embd']}, {sizes['n_head']} heads, context "
        f"{sizes['context']}, batch {sizes['batch']}{' (--quick sizes)' if record['quick'] else ' (gpt_small)'}. "
        f"Clock: {record['clock']}. {record['repeats']} rounds of {record['steps']} steps, median (min-max) tokens/s. "
        f"Matmul peak: {peak['flops_per_s'] / 1e9:,.1f} GFLOP/s ({peak['dtype']}, {peak['size']}^2). "
        f"'poslab' below is `{default}` (what `model.compile: auto` runs here).",
        "",
        "## Training",
        "",
        "| encoding | poslab eager | poslab compiled (compile s) | x-transformers | poslab / x-transformers "
        "| round by round | MFU | vs RoPE |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    training = record["training"]
    rope = training.get("rope", {}).get("variants", {}).get(default, {}).get("median")
    for encoding, row in training.items():
        v = row["variants"]
        ours, xt = v.get(default, {}).get("median"), v.get("x-transformers", {}).get("median")
        compiled = v.get("poslab compiled")
        compiled_text = f"{_rate(compiled)} ({compiled['compile_s']:.0f} s)" if compiled else "—"
        lines.append(
            f"| {encoding} | {_rate(v.get('poslab eager'))} | {compiled_text} | {_rate(v.get('x-transformers'))} "
            f"| {_ratio(ours, xt)} | {_paired(row.get('ratio_to_x_transformers'))} | {row['mfu']:.0%} "
            f"| {_ratio(ours, rope)} |"
        )
    lines += [
        "",
        f"MFU: model FLOPs per token 6 N + 12 L T d = {next(iter(training.values()))['flops_per_token']:,} "
        "(PaLM appendix B; N the matmul weights incl. the tied head) x tokens/s of 'poslab', over the matmul peak.",
        "",
        "poslab / x-transformers: the ratio of the two medians. Round by round: the median (min-max) of "
        "the ratio within each round, where the two ran next to each other (every other round in the "
        "other order), which cancels what the machine did between rounds. Both are measured in this one "
        'process; the targets they are read against are in experiments/benchmarks/README.md ("Targets").',
        "",
        *kernel_table(record),
    ]
    options = training.get("rope", {}).get("variants", {})
    lines += [
        "## What each option gives (rope)",
        "",
        "| variant | tokens/s | vs poslab eager (the default) |",
        "|---|---:|---:|",
    ]
    base = options.get("poslab eager", {}).get("median")
    default_optimizer = "fused" if record.get("device", "cpu").startswith("cuda") else "torch's default, not fused"
    names = ("poslab eager, AdamW for-loop", "poslab eager, AdamW foreach", "poslab eager, AdamW fused")
    for name in (*names, ROPE_PER_LAYER, "poslab eager", "poslab compiled"):
        if name in options:
            default = f"poslab eager (the default: fused: auto, AdamW {default_optimizer})"
            label = default if name == "poslab eager" else name
            lines.append(f"| {label} | {_rate(options[name])} | {_ratio(options[name]['median'], base)} |")
    lightning = record.get("lightning")
    if lightning:
        lines += [
            "",
            f"Lightning's loop (`Trainer.fit`, the run's trainer config, CSV logger, the run's callbacks; "
            f"{'compiled' if lightning['compiled'] else 'eager'}): {_rate(lightning['trainer_fit'])} tokens/s against "
            f"{_rate(lightning['bare_step'])} for the bare step: {lightning['overhead']:+.1%} per step.",
        ]
    lines += [
        "",
        "## Evaluation (nonoverlapping windows, eval.batch_tokens per batch)",
        "",
        "| encoding | " + " | ".join(f"{x}x tokens/s | {x}x peak memory" for x in EVAL_LENGTHS_X) + " |",
        "|---|" + "---:|---:|" * len(EVAL_LENGTHS_X),
    ]
    for encoding, by_length in record["evaluation"].items():
        cells = []
        for x in EVAL_LENGTHS_X:
            cell = by_length[f"{x}x"]
            if cell["status"] == "ok":
                cells += [f"{cell['tokens_per_s']:,.0f}", _bytes(cell["peak_bytes"])]
            else:
                cells += [cell["status"], "—"]
        lines.append(f"| {encoding} | " + " | ".join(cells) + " |")
    memory = (
        "the worker's peak resident set (VmHWM) above its resident set before scoring"
        + (", one worker for all lengths (--quick)" if record["quick"] else "")
        if record["device"] == "cpu"
        else "torch.cuda.max_memory_allocated"
    )
    lengths = ", ".join(str(x * sizes["context"]) for x in EVAL_LENGTHS_X)
    lines += ["", f"Lengths {lengths}; peak memory: {memory}.", ""]
    return "\n".join(lines)


def kernel_table(record: dict) -> list[str]:
    """The markdown of where a step's time goes, and the ratio to x-transformers poslab would reach
    if everything but the shared kernels cost nothing. Empty when nothing was profiled."""
    sizes, peak = record["sizes"], record["matmul_peak"]["flops_per_s"]
    tokens = sizes["batch"] * sizes["context"]
    default = record["training_meta"]["default_variant"]
    lines, ceilings = [], []
    for encoding, row in record["training"].items():
        matmul_flops = 6 * row["matmul_parameters"] * tokens  # the linear layers; attention's are in its kernel
        variants = row["variants"]
        for variant in (default, ROPE_PER_LAYER, "x-transformers"):
            if "profiled" not in variants.get(variant, {}):
                continue
            step_ms, kernels = variants[variant]["profiled"]["step_ms"], variants[variant]["profiled"]["kernels_ms"]
            rest = step_ms - sum(kernels.values())
            gflops = matmul_flops / (kernels["matmul"] / 1000) / 1e9 if kernels["matmul"] else float("nan")
            name = {default: "poslab", ROPE_PER_LAYER: "poslab, RoPE per layer through autograd"}.get(variant, variant)
            lines.append(
                f"| {encoding} | {name} | {step_ms:.1f} | "
                + " | ".join(f"{kernels[group]:.1f}" for group in SHARED_KERNELS)
                + f" | {rest:.1f} | {gflops:,.0f} ({gflops * 1e9 / peak:.0%}) |"
            )
        if "profiled" in variants.get(default, {}) and "x-transformers" in variants:
            ours = variants[default]["profiled"]
            shared_fraction = sum(ours["kernels_ms"].values()) / ours["step_ms"]
            paired = record["training"][encoding].get("ratio_to_x_transformers")
            ratio = paired["median"] if paired else variants[default]["median"] / variants["x-transformers"]["median"]
            ceilings.append(f"{encoding} {ratio / shared_fraction:.2f}x ({shared_fraction:.0%} in them)")
    if not lines:
        return []
    return [
        "## Where a step's time goes",
        "",
        "Milliseconds per training step under torch.profiler, the median of a few rounds of steps "
        "(interleaved): the step's wall time, "
        "and each op's own time summed by kernel. Both implementations call these kernels with the same "
        "shapes; 'everything else' is the rest of the step (LayerNorm, embedding, loss, optimizer, Python, "
        "the profiler's own cost). Matmul GFLOP/s: the linear layers' 6 N FLOPs per token over the matmul "
        "time, against the measured peak.",
        "",
        "| encoding | implementation | step | " + " | ".join(SHARED_KERNELS) + " | everything else | matmul GFLOP/s |",
        "|---|---|" + "---:|" * (len(SHARED_KERNELS) + 3),
        *lines,
        "",
        "Ceiling of poslab / x-transformers: the measured ratio over the share of poslab's profiled step "
        "spent in these kernels, i.e. the ratio if everything else in its step cost nothing: "
        + (", ".join(ceilings) or "—")
        + ".",
        "",
    ]
