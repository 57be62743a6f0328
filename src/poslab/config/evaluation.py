"""poslab-eval's own settings: what it puts on a checkpoint beyond its encoding (eval.window,
eval.logit_temperature), checked against the checkpoint before any scoring."""

from __future__ import annotations

from poslab.config.validate import is_number
from poslab.errors import ConfigError
from poslab.model.temperature import TEMPERATURE_RULES
from poslab.model.window import WINDOW_METHODS, AttentionWindow


def check_eval_window(eval_cfg, train_context: int) -> AttentionWindow | None:
    """poslab-eval's eval.window as settings, or None (full attention) when eval.window.local is null."""
    window = eval_cfg.get("window") or {}
    local = window.get("local")
    if local is None:
        return None
    sinks, method = window.get("sinks", 4), window.get("method", "streaming_llm")
    for key, value, least in (("local", local, 1), ("sinks", sinks, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ConfigError(f"eval.window.{key} must be a whole number >= {least}, got {value!r}")
    if method not in WINDOW_METHODS:
        raise ConfigError(f"eval.window.method={method}: allowed: {', '.join(WINDOW_METHODS)}")
    return AttentionWindow(sinks=sinks, local=local, method=method, cap=int(train_context))


def evaluation_settings(eval_cfg) -> list[str]:
    """What poslab-eval puts on a checkpoint beyond its encoding, as labels for run names and
    report rows: ['logn', 'streaming_llm(sinks=4, local=128)'] (empty when nothing)."""
    labels = [str(eval_cfg.get("logit_temperature"))] if eval_cfg.get("logit_temperature") is not None else []
    window = eval_cfg.get("window") or {}
    if window.get("local") is not None:
        method, sinks = window.get("method", "streaming_llm"), window.get("sinks", 4)
        labels.append(AttentionWindow(sinks=sinks, local=window["local"], method=method, cap=0).label())  # cap unused
    return labels


# eval.logit_temperature: the rules without weights, which a checkpoint can be scored under as it is
EVAL_TEMPERATURE_RULES = tuple(rule for rule in TEMPERATURE_RULES if rule != "ssmax")


def check_eval_temperature(eval_cfg, trained_rule: str) -> str | None:
    """poslab-eval's eval.logit_temperature against the checkpoint's model.net.logit_temperature:
    the rule to score under, or None (the trained one). SSMax has weights: neither put on nor taken
    off a checkpoint."""
    rule = eval_cfg.get("logit_temperature")
    scale = eval_cfg.get("temperature_scale")
    if scale is not None and (not is_number(scale) or not scale > 0):
        raise ConfigError(f"eval.temperature_scale must be a positive number or null, got {scale!r}")
    if rule is None:
        if scale is not None:
            raise ConfigError("eval.temperature_scale goes with eval.logit_temperature=llama4")
        return None
    if rule not in EVAL_TEMPERATURE_RULES:
        raise ConfigError(
            f"eval.logit_temperature={rule}: allowed: null (as trained), {', '.join(EVAL_TEMPERATURE_RULES)} "
            "(ssmax learns weights in training)"
        )
    if trained_rule == "ssmax":
        raise ConfigError(
            "eval.logit_temperature: the checkpoint was trained with model.net.logit_temperature=ssmax, whose "
            "learned weights cannot be taken off; score it without eval.logit_temperature"
        )
    if scale is not None and rule != "llama4":
        raise ConfigError("eval.temperature_scale goes with eval.logit_temperature=llama4")
    return rule
