"""From an encoding (or a family of them, or a model's attention rows) to the three things a
person reads: figures, the numbers behind them (for inspect.json), and a few summary lines."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from poslab.diagnostics import geometry, plots
from poslab.diagnostics.attention import STATISTICS, statistic_table
from poslab.encodings import ALiBi, IRoPE, Learned, PositionalEncoding, RoPE, ScaledRoPE, Sinusoidal, XPos

# The position-vs-position maps show this many training contexts, at most this many points a side.
HEATMAP_CONTEXTS = 4
HEATMAP_POINTS = 1024


@dataclass
class Settings:
    """The inspect config's geometry settings (conf/inspect.yaml)."""

    distance_x: int  # similarity and bias out to this many training contexts
    scales_x: list[float]  # rotary members' frequencies for sequences of these multiples
    positions_x: list[float]  # interpolation: where the positions of these multiples land
    return_tolerance: float  # "looks alike again": within this fraction of the distance-1 value
    bias_threshold: float  # a bias head's reach: first distance whose bias is this far below distance 0


@dataclass
class Description:
    numbers: dict = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)


def heatmap_positions(train_context: int) -> torch.Tensor:
    end = HEATMAP_CONTEXTS * train_context
    return torch.arange(0, end, max(1, end // HEATMAP_POINTS))


def describe_encoding(
    name: str, encoding: PositionalEncoding, train_context: int, settings: Settings, folder: Path, trained: bool
) -> Description:
    """Figures and numbers for one encoding, by what its hooks do."""
    encoding = encoding.cpu().eval()
    with torch.no_grad():
        if isinstance(encoding, RoPE):
            out = _rotary(name, encoding, train_context, settings, folder)
            if isinstance(encoding, IRoPE):
                layers = ", ".join(str(layer + 1) for layer in encoding.nope_layers)
                out.summary.append(
                    f"{name}: layers {layers} (counted from 1) have no positional encoding; the rest rotate."
                )
                out.numbers["nope_layers"] = list(encoding.nope_layers)
            return out
        if isinstance(encoding, Sinusoidal):
            return _sinusoidal(name, encoding, train_context, settings, folder)
        if isinstance(encoding, Learned):
            return _learned(name, encoding, train_context, folder, trained)
        if encoding.bias(torch.arange(2), torch.arange(2)) is not None:
            return _bias(name, encoding, train_context, settings, folder, trained)
        if encoding.has_input_bias or encoding.has_contextual_bias:
            return _data_dependent(name, encoding)
    return Description(
        numbers={"kind": "none"},
        summary=[f"{name}: no positional signal in any hook; order reaches attention only through the causal mask."],
    )


def _data_dependent(name: str, encoding: PositionalEncoding) -> Description:
    source = "the layer's input (forget gates)" if encoding.has_input_bias else "the queries and the logits"
    return Description(
        numbers={"kind": "data-dependent"},
        summary=[
            f"{name}: the logit bias is computed from {source}, so it has no form without data; "
            "a trained checkpoint shows what it learned (poslab-inspect ckpt_path=...)."
        ],
    )


def describe_forget_gates(
    name: str, mean_log_gates: np.ndarray, train_context: int, settings: Settings, folder: Path
) -> Description:
    """FoX on held-out text: each head's mean gate and decay per token, and its reach, the distance
    at which its mean bias falls below the threshold (as for a bias head)."""
    decay = -mean_log_gates  # nats per token, > 0: a slope, as ALiBi's
    slopes = torch.from_numpy(np.maximum(decay, 1e-12).reshape(-1))
    reach = np.array(geometry.alibi_reach_closed_form(slopes, settings.bias_threshold)).reshape(decay.shape)
    figure = plots.forget_gates_figure(
        name, mean_log_gates, settings.bias_threshold, reach, train_context, folder / f"{name}_forget_gates.png"
    )
    lines = []
    for layer in range(len(decay)):
        heads = ", ".join(
            f"head {h}: gate {np.exp(mean_log_gates[layer, h]):.3f}, reach {reach[layer, h]:,.0f}"
            for h in range(decay.shape[1])
        )
        lines.append(f"{name} layer {layer}: {heads} tokens")
    summary = [
        f"{name}: each head's mean forget gate on held-out text (the bias at distance m is m x mean log f) and "
        f"reach, the distance where that falls below {settings.bias_threshold:g} (training context {train_context}):",
        *lines,
    ]
    numbers = {
        "mean_log_gate": mean_log_gates.tolist(),
        "mean_gate": np.exp(mean_log_gates).tolist(),
        "decay_per_token": decay.tolist(),
        "reach": reach.tolist(),
        "threshold": settings.bias_threshold,
    }
    return Description(numbers={"forget_gates": numbers}, figures=[figure], summary=summary)


def _look_alike_line(name: str, measure: str, look: geometry.LookAlike) -> str:
    back = (
        f"comes back within {look.tolerance:.0%} of it at distance {look.returns_at}"
        if look.returns_at is not None
        else f"never comes back within {look.tolerance:.0%} of it"
    )
    return (
        f"{name}: does the last token look like the first? {measure} at distance {look.max_distance} is "
        f"{look.relative_at_max_distance:.3f} x its distance-1 value; past the context it {back}; the most alike a "
        f"token beyond the context gets is {look.largest_beyond_context:.3f} x, at distance "
        f"{look.largest_beyond_context_at}."
    )


def _rotary(name, encoding: RoPE, train_context, settings, folder) -> Description:
    out = Description()
    head_dim, base = encoding.head_dim, encoding.base
    inv_freq, _ = encoding.frequencies(train_context)
    waves = geometry.wavelengths(inv_freq)
    turning = int(geometry.turning_pairs(inv_freq, train_context).sum())
    closed_form = geometry.critical_dimension_closed_form(head_dim, base, train_context)
    out.figures.append(
        plots.wavelengths_figure(
            name,
            waves.numpy(),
            train_context,
            2 * turning,
            closed_form,
            head_dim,
            base,
            folder / f"{name}_wavelengths.png",
        )
    )
    slowest = float(waves[torch.isfinite(waves)].max()) if torch.isfinite(waves).any() else None
    out.summary.append(
        f"{name}: {2 * turning} of {head_dim} head dims ({turning} of {head_dim // 2} pairs) turn fully within the "
        f"{train_context}-token context; the closed form 2 ceil((d/2) log_{base:g}({train_context}/2pi)) gives "
        f"{closed_form}. The other pairs meet angles past the context that training never showed"
        + (f" (slowest wavelength {slowest:,.0f} tokens)." if slowest else ".")
    )

    longest = settings.distance_x * train_context
    distances = torch.arange(longest + 1)
    decay = geometry.xpos_pair_decay(encoding) if isinstance(encoding, XPos) else None
    scaled_inv_freq, _ = encoding.frequencies(longest + 1)
    bound = geometry.rotary_decay_bound(scaled_inv_freq, distances, decay)
    reference = None
    if not torch.equal(scaled_inv_freq, encoding.inv_freq):
        reference = ("unscaled RoPE frequencies", geometry.rotary_decay_bound(encoding.inv_freq, distances).numpy())
    look = geometry.look_alike(bound, train_context, settings.return_tolerance)
    positions = heatmap_positions(train_context)
    out.figures.append(
        plots.similarity_figure(
            name,
            geometry.fixed_query_key_scores(encoding, positions).numpy(),
            positions.numpy(),
            f"q . k / head size, all-ones q and k ({HEATMAP_CONTEXTS * train_context} tokens)",
            bound.numpy(),
            f"RoFormer bound (1/(d/2)) sum |S_j| (sequence of {longest + 1})",
            train_context,
            asdict(look),
            folder / f"{name}_similarity.png",
            reference_curve=reference,
        )
    )
    out.summary.append(_look_alike_line(name, "RoFormer's bound on the attention score", look))
    out.numbers = {
        "kind": "rotary",
        "head_dim": head_dim,
        "base": base,
        "wavelengths": waves.tolist(),
        "turning_pairs": turning,
        "critical_dimension": {"from_wavelengths": 2 * turning, "closed_form": closed_form},
        "similarity": {"measure": "roformer_bound", "sequence_length": longest + 1, **asdict(look)},
    }
    return out


def _sinusoidal(name, encoding: Sinusoidal, train_context, settings, folder) -> Description:
    out = Description()
    longest = settings.distance_x * train_context
    distances = torch.arange(longest + 1)
    curve = geometry.sinusoid_similarity_by_distance(encoding, distances)
    look = geometry.look_alike(curve, train_context, settings.return_tolerance)
    positions = heatmap_positions(train_context)
    out.figures.append(
        plots.similarity_figure(
            name,
            geometry.sinusoid_dot_products(encoding, positions).numpy(),
            positions.numpy(),
            "PE[m] . PE[n] / (D/2) (cosine)",
            curve.numpy(),
            "PE[0] . PE[m - n] / (D/2) (cosine)",
            train_context,
            asdict(look),
            folder / f"{name}_similarity.png",
        )
    )
    # Absolute: every position has its own vector. Each has squared norm D/2, so
    # |PE[m] - PE[n]|^2 = D (1 - cosine(m - n)): the closest two are at the most alike distance.
    closest = float((encoding.n_embd * (1 - curve[1:].max())).clamp(min=0).sqrt())
    rotation_error = geometry.sinusoid_relative_map_error(encoding, train_context, torch.arange(longest + 1))
    turning = int(geometry.turning_pairs(encoding.inv_freq, train_context).sum())
    out.summary += [
        f"{name} is absolute: each of positions 0..{longest} has its own vector (the closest two are {closest:.3f} "
        f"apart; every vector has norm {(encoding.n_embd / 2) ** 0.5:.2f}). It is also relative: PE[p + k] is one "
        f"fixed rotation of PE[p] for every p (largest error at k = {train_context}: {rotation_error:.1e}), so "
        "PE[m] . PE[n] depends on m - n only.",
        f"{name}: {turning} of {encoding.n_embd // 2} sinusoid pairs complete a turn within the context.",
        _look_alike_line(name, "PE[m] . PE[n]", look),
    ]
    out.numbers = {
        "kind": "sinusoidal",
        "n_embd": encoding.n_embd,
        "closest_two_vectors": closest,
        "relative_rotation_error": rotation_error,
        "turning_pairs": turning,
        "similarity": {"measure": "dot_product_over_half_width", **asdict(look)},
    }
    return out


def _learned(name, encoding: Learned, train_context, folder, trained) -> Description:
    out = Description()
    cosines = geometry.learned_cosines(encoding)
    by_distance = geometry.mean_by_distance(cosines)
    positions = torch.arange(encoding.max_length)
    out.figures.append(
        plots.similarity_figure(
            name,
            cosines.numpy(),
            positions.numpy(),
            "cosine of the learned vectors",
            by_distance.numpy(),
            "mean cosine at distance m - n",
            train_context,
            None,
            folder / f"{name}_similarity.png",
        )
    )
    state = "trained" if trained else "at initialisation"
    out.summary.append(
        f"{name} ({state}): a vector per position 0..{encoding.max_length - 1} and nothing past it; neighbours' "
        f"cosine {float(by_distance[1]):.3f}, at distance {encoding.max_length - 1}: {float(by_distance[-1]):.3f}."
    )
    out.numbers = {"kind": "learned", "max_length": encoding.max_length, "cosine_by_distance": by_distance.tolist()}
    return out


def _bias(name, encoding, train_context, settings, folder, trained) -> Description:
    out = Description()
    longest = settings.distance_x * train_context
    curves = geometry.bias_by_distance(encoding, longest + 1)  # (H, N)
    reach = geometry.bias_reach(curves, settings.bias_threshold)
    positions = heatmap_positions(train_context)
    heatmaps = encoding.bias(positions, positions).double()  # (H, n, n)
    out.figures.append(
        plots.bias_figure(
            name,
            heatmaps.numpy(),
            positions.numpy(),
            curves.numpy(),
            settings.bias_threshold,
            reach,
            train_context,
            folder / f"{name}_bias.png",
        )
    )
    weight = float(np.exp(settings.bias_threshold))
    sight = ", ".join(f"head {h}: {r if r is not None else f'> {longest}'}" for h, r in enumerate(reach))
    learned = "" if isinstance(encoding, ALiBi) else (" (trained)" if trained else " (at initialisation)")
    out.summary.append(
        f"{name}{learned}: how far back each head can see, the first distance at which its bias is "
        f"{settings.bias_threshold:g} below distance 0 (a key there weighs x{weight:.2g}): {sight} tokens "
        f"(training context {train_context})."
    )
    out.numbers = {
        "kind": "bias",
        "threshold": settings.bias_threshold,
        "reach": reach,
        "bias_at_max_distance": (curves[:, -1] - curves[:, 0]).tolist(),
    }
    if isinstance(encoding, ALiBi):
        out.numbers["slopes"] = encoding.slopes.tolist()
        out.numbers["reach_closed_form"] = geometry.alibi_reach_closed_form(encoding.slopes, settings.bias_threshold)
    return out


# PI first: the plainest interpolation, then the schemes that treat pairs differently
_MEMBER_ORDER = {name: i for i, name in enumerate(("rope_pi", "rope_ntk", "rope_yarn", "rope_llama3", "rope_partial"))}


def describe_rotary_members(members: dict[str, RoPE], train_context: int, settings: Settings, folder: Path):
    """How each context-extension member moves every pair's frequency, and where it puts positions."""
    out = Description()
    moving = {}
    for name, member in sorted(members.items(), key=lambda item: _MEMBER_ORDER.get(item[0], len(_MEMBER_ORDER))):
        ratios = {x: geometry.frequency_ratios(member, round(x * train_context)).numpy() for x in settings.scales_x}
        if any(not np.allclose(r, 1.0) for r in ratios.values()):
            moving[name] = ratios
    if not moving:
        return out
    some_member = members[next(iter(moving))]
    original = geometry.wavelengths(some_member.inv_freq).numpy()
    out.figures.append(
        plots.frequency_moves_figure(moving, original, train_context, folder / "rotary_frequency_moves.png")
    )
    positions = {
        name: {
            x: geometry.effective_positions(members[name], round(x * train_context)).numpy()
            for x in settings.positions_x
        }
        for name in moving
    }
    out.figures.append(
        plots.interpolated_positions_figure(positions, train_context, folder / "rotary_interpolated_positions.png")
    )
    out.numbers = {
        name: {
            "frequency_ratio": {f"{x:g}x": moving[name][x].tolist() for x in settings.scales_x},
            "last_position_lands_at": {
                f"{x:g}x": {"fastest_pair": float(p[-1, 0]), "slowest_pair": float(p[-1, -1])}
                for x, p in positions[name].items()
            },
            "factor": members[name].factor if isinstance(members[name], ScaledRoPE) else None,
        }
        for name in moving
    }
    for x in settings.positions_x:
        length = round(x * train_context)
        landed = []
        for name in moving:
            fast, slow = positions[name][x][-1, 0], positions[name][x][-1, -1]
            where = f"{fast:g}" if np.isclose(fast, slow) else f"{fast:g} (fastest pair) to {slow:g} (slowest)"
            landed.append(f"{name} {where}")
        first_steps = ", ".join(f"{p:g}" for p in positions[next(iter(moving))][x][:4, -1])
        out.summary.append(
            f"rotary members at {x:g}x ({length} tokens, trained on positions 0..{train_context - 1}): position "
            f"{length - 1} lands at " + "; ".join(landed) + f". ({next(iter(moving))}'s slowest pair counts "
            f"{first_steps}, ...)"
        )
    return out


def describe_attention(variant: str, rows: list[dict], train_context: int, folder: Path) -> Description:
    """The attention figure of one variant and a line per length (means over layers and heads)."""
    out = Description(numbers={"rows": rows})
    ok = [row for row in rows if row["status"] == "ok"]
    if ok:
        out.figures.append(plots.attention_figure(variant, rows, train_context, folder / f"{variant}_attention.png"))
    for row in rows:
        if row["status"] != "ok":
            out.summary.append(f"{variant} at {row['eval_length']}: {row['status']} ({row['reason']})")
            continue
        with warnings.catch_warnings():  # no query has keys beyond the context at 1x: NaN, said below
            warnings.simplefilter("ignore", RuntimeWarning)
            means = {statistic: float(np.nanmean(statistic_table([row], statistic))) for statistic in STATISTICS}
        uniform = row["uniform"]
        beyond = ""
        if np.isfinite(means["share_beyond_context"]):
            beyond = (
                f"; mass beyond the context {means['share_beyond_context']:.3f} "
                f"(uniform {uniform['share_beyond_context']:.3f})"
            )
        sink = [head["sink_share"] for layer in row["layers"] for head in layer["heads"] if "sink_share" in head]
        on_sink = f"; mass on the sink {float(np.mean(sink)):.3f}" if sink else ""
        out.summary.append(
            f"{variant} at {row['eval_length']} ({row['length_ratio']:g}x): loss {row['loss']:.3f} nats/token; "
            f"mean over heads: entropy {means['entropy']:.3f} nats (uniform {uniform['entropy']:.3f}), distance "
            f"{means['mean_distance']:.1f} tokens (uniform {uniform['mean_distance']:.1f}){beyond}{on_sink}"
        )
    return out
