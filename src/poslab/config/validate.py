"""Every check of a setting, each key checked once, before anything is built: a bad setting fails
in one line that names its key (as it is written on the command line) and what is allowed, before
data is loaded, a logger starts or a file is written. The library's classes trust what passed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf

from poslab.config import CONFIG_DIR, available, load_choice, names_of
from poslab.config.command_line import OTHER_COMMANDS
from poslab.config.registry import encodings_of_family, family_of_target
from poslab.data.datamodule import whole_windows
from poslab.data.passkey import MIN_LENGTH as PASSKEY_MIN_LENGTH
from poslab.diagnostics.describe import Settings as InspectSettings
from poslab.encodings import PositionalEncoding
from poslab.errors import ConfigError
from poslab.evaluation.protocols import DEFAULT_PROTOCOL, PROTOCOLS
from poslab.evaluation.settings import EvalSettings, PasskeySettings
from poslab.model import ATTENTION_PATHS
from poslab.model.temperature import DEFAULT_SCALE, TEMPERATURE_RULES
from poslab.records.checkpoints import CONFIG_KEY
from poslab.records.results import IMPLICIT_DEFAULTS

__all__ = ["ConfigError"]


def check_multiples(values, key: str, at_least: float | None = None) -> list[float]:
    """A non-empty list of positive numbers (each >= `at_least` if given): multiples of the
    training context. Ascending, without repeats."""
    if isinstance(values, str) or not isinstance(values, (list, tuple, ListConfig)) or not values:
        raise ConfigError(
            f"{key} must be a non-empty list of multiples of the context, e.g. {key}=[2,4], got {values!r}"
        )
    for value in values:
        if not is_number(value) or value <= 0 or (at_least is not None and value < at_least):
            smallest = f"a number >= {at_least:g}" if at_least is not None else "a positive number"
            raise ConfigError(f"{key}: every multiple must be {smallest}, got {value!r}")
    return sorted({float(value) for value in values})


def multiples_of_context(values, context: int, key: str, at_least: float | None = None) -> list[int]:
    """Eval lengths given as multiples of the training context -> whole numbers of tokens,
    ascending, without repeats: the one rule for `eval.lengths_x`, `eval.passkey.lengths_x` and
    poslab-inspect's `lengths_x`."""
    lengths = []
    for multiple in check_multiples(values, key, at_least):
        length = multiple * context
        if not length.is_integer():
            raise ConfigError(f"{key}: {multiple:g} x {context} is not a whole number of tokens")
        lengths.append(int(length))
    return sorted(set(lengths))


def eval_lengths(eval_cfg, context: int) -> list[int]:
    """Absolute eval lengths: `eval.lengths` if given, else `eval.lengths_x` times the context."""
    if not eval_cfg.get("lengths"):
        return multiples_of_context(eval_cfg.get("lengths_x"), context, "eval.lengths_x")
    lengths = list(eval_cfg.lengths)
    for length in lengths:
        if not is_number(length) or not float(length).is_integer() or length <= 0:
            raise ConfigError(
                f"eval.lengths: every eval length must be a positive whole number of tokens, got {length}"
            )
    return sorted({int(length) for length in lengths})


ARCHITECTURE_KEYS = ("vocab_size", "n_layer", "n_head", "n_embd", "sink", "logit_temperature")
# what a checkpoint saved before a key existed was trained with (records.results' table)
ARCHITECTURE_DEFAULTS = {
    key.removeprefix("model.net."): value for key, value in IMPLICIT_DEFAULTS.items() if key.startswith("model.net.")
}


def check_targets(cfg: DictConfig, keys: tuple[str, ...]) -> None:
    """Each `_target_` names a class that can be imported: a misspelt one (a --config-dir YAML of
    your own) is answered before the data loads, naming the key."""
    from hydra.utils import get_class

    for key in keys:
        target = OmegaConf.select(cfg, key, default=None)
        if not isinstance(target, str):
            continue
        try:
            get_class(target)
        except Exception as error:
            cause = error.__cause__ or error
            raise ConfigError(f"{key}={target} cannot be imported ({type(cause).__name__}: {cause})") from None


def check_encoding_target(encoding: DictConfig | None, key: str = "pos_enc._target_") -> None:
    """An encoding config given by name (pos_enc=, a variant) names a class that can be imported."""
    if encoding is not None:
        check_targets(OmegaConf.create({"pos_enc": OmegaConf.to_container(encoding)}), ("pos_enc._target_",))


TRAIN_TARGETS = (
    "task._target_",
    "pos_enc._target_",
    "model.net._target_",
    "data._target_",
    "data.corpus._target_",
    "data.tokenizer._target_",
)


def check_optimizer_config(cfg: DictConfig) -> None:
    """model.optimizer and model.scheduler: what AdamW and the schedule can work with."""
    optimizer, scheduler = cfg.model.get("optimizer") or {}, cfg.model.get("scheduler") or {}
    lr = optimizer.get("lr")
    if lr is not None and (not is_number(lr) or not lr > 0):
        raise ConfigError(f"model.optimizer.lr must be a positive number, got {lr!r}")
    decay = optimizer.get("weight_decay")
    if decay is not None and (not is_number(decay) or decay < 0):
        raise ConfigError(f"model.optimizer.weight_decay must be a number >= 0, got {decay!r}")
    betas = optimizer.get("betas")
    if betas is not None and (
        isinstance(betas, str) or len(betas) != 2 or not all(is_number(b) and 0 <= b < 1 for b in betas)
    ):
        raise ConfigError(f"model.optimizer.betas must be two numbers in [0, 1), got {betas!r}")
    warmup = scheduler.get("warmup_steps")
    if warmup is not None and (not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0):
        raise ConfigError(f"model.scheduler.warmup_steps must be an integer >= 0, got {warmup!r}")
    floor = scheduler.get("min_lr_ratio")
    if floor is not None and (not is_number(floor) or not 0 <= floor <= 1):
        raise ConfigError(f"model.scheduler.min_lr_ratio must be in [0, 1], got {floor!r}")


def _positive(cfg: DictConfig, key: str) -> None:
    value = OmegaConf.select(cfg, key, default=None)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")


def check_model_config(cfg: DictConfig) -> None:
    """The GPT's sizes; the one place they are checked (the classes trust them)."""
    for key in ("model.net.vocab_size", "model.net.n_layer", "model.net.n_head", "model.net.n_embd"):
        _positive(cfg, key)
    n_embd, n_head = cfg.model.net.n_embd, cfg.model.net.n_head
    if n_embd % n_head:
        raise ConfigError(f"model.net.n_head={n_head} must divide model.net.n_embd={n_embd}")
    dropout = cfg.model.net.get("dropout", 0.0)
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model.net.dropout must be in [0, 1), got {dropout!r}")
    attention = cfg.model.net.get("attention", "auto")
    if attention not in ATTENTION_PATHS:
        raise ConfigError(f"model.net.attention={attention}: allowed: {', '.join(ATTENTION_PATHS)}")
    compile_setting = cfg.model.get("compile", "auto")
    if compile_setting not in ("auto", True, False):
        raise ConfigError(f"model.compile={compile_setting}: allowed: auto, true, false")
    check_attention_terms(cfg, attention)


def check_attention_terms(cfg: DictConfig, attention: str) -> None:
    """model.net.sink and model.net.logit_temperature, and whether the attention path asked for
    can serve the encoding's bias."""
    net = cfg.model.net
    sink = net.get("sink", False)
    if not isinstance(sink, bool):
        raise ConfigError(f"model.net.sink must be true or false, got {sink!r}")
    rule = net.get("logit_temperature", "none")
    if rule not in TEMPERATURE_RULES:
        raise ConfigError(f"model.net.logit_temperature={rule}: allowed: {', '.join(TEMPERATURE_RULES)}")
    scale = net.get("temperature_scale")
    if scale is not None and (not is_number(scale) or not scale > 0):
        raise ConfigError(f"model.net.temperature_scale must be a positive number or null, got {scale!r}")
    if scale is not None and rule not in DEFAULT_SCALE:
        raise ConfigError(
            f"model.net.temperature_scale applies to model.net.logit_temperature={' or '.join(DEFAULT_SCALE)} "
            f"(llama4's a, ssmax's initial s); logit_temperature={rule} has no scale: leave it null"
        )
    if rule in ("logn", "llama4"):
        train_context = net.get("train_context")
        if not isinstance(train_context, int) or isinstance(train_context, bool) or train_context < 2:
            raise ConfigError(
                f"model.net.logit_temperature={rule} needs model.net.train_context, the training length, "
                f"of at least 2 tokens; got {train_context!r}"
            )
    target = OmegaConf.select(cfg, "pos_enc._target_", default=None)
    if attention == "flex" and isinstance(target, str):
        encoding = get_class(target)
        if encoding.contextual_bias is not PositionalEncoding.contextual_bias:
            raise ConfigError(
                f"model.net.attention=flex cannot serve pos_enc={cfg.get('pos_enc_name', target)}: its bias comes from "
                "each row's logits; use model.net.attention=sdpa, chunked or auto"
            )
        if encoding.block_logits is not PositionalEncoding.block_logits:
            raise ConfigError(
                f"model.net.attention=flex cannot serve pos_enc={cfg.get('pos_enc_name', target)}: it merges two "
                "rotations by distance; use model.net.attention=sdpa, chunked or auto"
            )


POSITIONS = ("contiguous", "randomized")


def check_positions_config(data: DictConfig) -> None:
    positions = data.get("positions", "contiguous")
    if positions not in POSITIONS:
        raise ConfigError(f"data.positions={positions}: allowed: {', '.join(POSITIONS)}")
    max_position = data.get("max_position")
    if positions == "randomized":
        if not isinstance(max_position, int) or isinstance(max_position, bool):
            raise ConfigError(
                f"data.max_position must be a whole number with data.positions=randomized, got {max_position!r}"
            )
        if max_position < data.context:
            raise ConfigError(
                f"data.max_position={max_position} is below data.context={data.context}: a window of "
                f"{data.context} tokens needs as many distinct positions"
            )


def check_trainer_config(cfg: DictConfig) -> None:
    trainer = cfg.trainer
    if not trainer.get("fast_dev_run"):
        max_steps = trainer.get("max_steps", -1)
        zero_shot = cfg.get("init_from") is not None and max_steps == 0  # score the checkpoint as it is
        if not zero_shot and (not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps <= 0):
            allowed = "a positive integer (0 only with init_from)"
            raise ConfigError(f"trainer.max_steps must be {allowed}, got {max_steps!r}")
        if not zero_shot:
            _positive(cfg, "trainer.val_check_interval")
    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                f"trainer.accelerator={accelerator}: no CUDA device here (torch {torch.__version__}); "
                "use trainer.accelerator=cpu, or a CUDA build of torch on a GPU machine"
            )
    elif accelerator not in ("cpu", "auto", "mps"):
        raise ConfigError(f"trainer.accelerator={accelerator}: allowed: auto, cpu, gpu")
    trains = cfg.get("init_from") is None or trainer.get("max_steps", -1) != 0
    if trains and OmegaConf.select(cfg, "model.net.attention", default="auto") == "flex":
        import torch

        if accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()):
            raise ConfigError(
                "model.net.attention=flex cannot train on a CPU (torch's FlexAttention has no backward "
                "there): train with model.net.attention=auto or sdpa; flex serves evaluation on a CPU"
            )


def top_level_keys(config_name: str = "train") -> list[str]:
    """The top-level keys of a command's config, read from its file: its own keys and its config
    groups, but not Hydra's, nor the groups that write into the global package (experiment, debug)."""
    primary = load_choice("", config_name)
    keys = [str(k) for k in primary.keys() if k not in ("defaults", "hydra")]
    for entry in primary.get("defaults", []):
        group = next(iter(entry)) if hasattr(entry, "keys") else None
        if group is None or group.startswith(("override", "hydra")):
            continue
        files = [Path(CONFIG_DIR, group, f"{name}.yaml") for name in available(group)]
        if not any(f.read_text().startswith("# @package _global_") for f in files):
            keys.append(group)
    return keys


def check_tokenizer_config(data_cfg, eval_cfg) -> None:
    """Passkey sequences (poslab.data.passkey) are built from bytes: only the byte tokenizer serves them."""
    target = str(OmegaConf.select(data_cfg, "tokenizer._target_", default="poslab.data.ByteTokenizer"))
    if target.endswith("ByteTokenizer"):
        return
    name = OmegaConf.select(data_cfg, "tokenizer.name", default=None) or target.rsplit(".", 1)[-1]
    if OmegaConf.select(eval_cfg, "passkey.enabled", default=False):
        raise ConfigError(
            f"eval.passkey.enabled=true needs the byte tokenizer (passkey sequences are built from bytes), "
            f"not {name}; use data/tokenizer=bytes"
        )
    mix = OmegaConf.select(data_cfg, "passkey_mix", default=0.0) or 0.0
    if mix > 0:
        raise ConfigError(f"data.passkey_mix={mix} needs the byte tokenizer, not {name}; use data/tokenizer=bytes")


def check_train_config(cfg: DictConfig) -> EvalSettings:
    """Validate a composed language-model training config; returns its evaluation settings."""
    check_training(cfg)
    for key in ("data.context", "data.batch_size", "data.eval_batch_size", "data.val_tokens"):
        _positive(cfg, key)
    check_positions_config(cfg.data)
    check_passkey_mix(cfg.data)
    check_tokenizer_config(cfg.data, cfg.eval)
    if cfg.eval.get("variants"):
        raise ConfigError(
            "eval.variants is for poslab-eval (score a trained checkpoint under several encodings); "
            "a training run is scored under its own pos_enc"
        )
    if (cfg.eval.get("window") or {}).get("local") is not None:
        raise ConfigError(
            "eval.window is for poslab-eval (score a checkpoint with windowed attention); a training run is "
            "scored with the attention it trained with"
        )
    if cfg.eval.get("logit_temperature") is not None:
        raise ConfigError(
            "eval.logit_temperature is for poslab-eval (score a checkpoint under a temperature it was not "
            "trained with); to train with one set model.net.logit_temperature"
        )
    return check_eval_config(cfg.eval, cfg.data.context)


def check_training(cfg: DictConfig) -> None:
    """What every training config must hold, language model or task: known keys, importable
    targets, the model, the optimizer, the trainer."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{', '.join(missing)} must be given (no default), e.g. {missing[0]}=...")
    if "ckpt_path" in cfg:
        raise ConfigError(f"ckpt_path is not a poslab-train setting: {OTHER_COMMANDS['train', 'ckpt_path']}")
    known = top_level_keys("train")
    unknown = sorted(set(cfg.keys()) - set(known) - {"hydra"})
    if unknown:  # a +key=... outside them would be carried along and silently ignored
        raise ConfigError(
            f"{', '.join(unknown)}: not a poslab-train setting; the top-level keys are {', '.join(known)}"
        )
    check_targets(cfg, TRAIN_TARGETS)
    check_model_config(cfg)
    check_optimizer_config(cfg)
    check_trainer_config(cfg)


# what eval.protocols holds unless a run asks otherwise (conf/eval/extrapolation.yaml)
DEFAULT_PROTOCOLS = [DEFAULT_PROTOCOL]


def eval_protocols(eval_cfg) -> list[str]:
    """The protocols to score: `eval.protocols`, or the one-protocol shorthand `eval.protocol`,
    which, when given, means a one-element list."""
    allowed = ", ".join(PROTOCOLS)
    single, protocols = eval_cfg.get("protocol"), eval_cfg.get("protocols")
    if single is not None:
        if protocols is not None and list(protocols) not in ([single], DEFAULT_PROTOCOLS):
            raise ConfigError(f"eval.protocol={single} and eval.protocols={list(protocols)} disagree; give one of them")
        if single not in PROTOCOLS:
            raise ConfigError(f"eval.protocol={single}: allowed: {allowed}")
        return [single]
    if not protocols or isinstance(protocols, str):
        raise ConfigError(
            f"eval.protocols must be a non-empty list such as [nonoverlapping,sliding], got {protocols!r}"
        )
    protocols = list(protocols)
    unknown = [str(p) for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ConfigError(f"eval.protocols: {', '.join(unknown)} unknown; allowed: {allowed}")
    if len(set(protocols)) != len(protocols):
        raise ConfigError(f"eval.protocols lists a protocol twice: {protocols}")
    return protocols


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_passkey_mix(data: DictConfig) -> None:
    mix = data.get("passkey_mix", 0.0)
    if not is_number(mix) or not 0.0 <= mix <= 1.0:
        raise ConfigError(f"data.passkey_mix must be a fraction of training windows in [0, 1], got {mix!r}")
    if mix > 0 and data.context < PASSKEY_MIN_LENGTH:
        raise ConfigError(
            f"data.passkey_mix={mix} needs data.context >= {PASSKEY_MIN_LENGTH} (a key line, a question and filler), "
            f"got {data.context}"
        )


def passkey_lengths(passkey_cfg, context: int) -> list[int]:
    """Absolute passkey eval lengths: `eval.passkey.lengths_x` times the context, each long enough
    for a key line, a question and filler."""
    key = "eval.passkey.lengths_x"
    for multiple in check_multiples(passkey_cfg.get("lengths_x"), key):
        length = multiple * context
        if not length.is_integer() or length < PASSKEY_MIN_LENGTH:
            raise ConfigError(
                f"{key}: {multiple:g} x data.context={context} must be a whole number of at least "
                f"{PASSKEY_MIN_LENGTH} tokens (a key line, a question and filler)"
            )
    return multiples_of_context(passkey_cfg.get("lengths_x"), context, key)


def check_passkey_filler(lengths, heldout_tokens: int) -> None:
    """The passkey filler comes from the held-out tokens: the longest passkey length must fit."""
    if max(lengths) > heldout_tokens:
        raise ConfigError(
            f"eval.passkey.lengths_x: the longest passkey length {max(lengths)} is more than the {heldout_tokens} "
            "held-out tokens its filler comes from (eval.num_tokens in whole windows of the longest eval length)"
        )


def check_passkey_config(passkey_cfg, context: int, heldout_tokens: int) -> PasskeySettings | None:
    """The passkey settings, or None when passkey is off. The filler comes from the sweep's
    held-out tokens, `heldout_tokens` of them."""
    if passkey_cfg is None:
        return None
    enabled = passkey_cfg.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ConfigError(f"eval.passkey.enabled must be true or false, got {enabled!r}")
    if not enabled:
        return None
    lengths = passkey_lengths(passkey_cfg, context)
    check_passkey_filler(lengths, heldout_tokens)
    depths = passkey_cfg.get("depths")
    if not depths or isinstance(depths, str) or not all(is_number(d) and 0.0 <= d <= 1.0 for d in depths):
        raise ConfigError(f"eval.passkey.depths must be a non-empty list of fractions in [0, 1], got {depths!r}")
    if len(set(depths)) != len(depths):
        raise ConfigError(f"eval.passkey.depths lists a depth twice: {list(depths)}")
    for key in ("trials", "seed"):
        value = passkey_cfg.get(key)
        smallest = 1 if key == "trials" else 0
        if not isinstance(value, int) or isinstance(value, bool) or value < smallest:
            raise ConfigError(f"eval.passkey.{key} must be an integer >= {smallest}, got {value!r}")
    threshold = passkey_cfg.get("threshold")
    if not is_number(threshold) or not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"eval.passkey.threshold must be an accuracy in [0, 1], got {threshold!r}")
    return PasskeySettings(
        lengths=tuple(lengths),
        depths=tuple(float(d) for d in depths),
        trials=passkey_cfg.trials,
        seed=passkey_cfg.seed,
        threshold=float(threshold),
    )


def check_eval_config(eval_cfg, context: int) -> EvalSettings:
    """eval.* for a model trained at `context`, as settings."""
    for key in ("num_tokens", "batch_tokens"):
        value = eval_cfg.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"eval.{key} must be a positive integer, got {value!r}")
    protocols = eval_protocols(eval_cfg)
    lengths = eval_lengths(eval_cfg, context)
    if max(lengths) > eval_cfg.num_tokens:
        raise ConfigError(
            f"eval.num_tokens={eval_cfg.num_tokens} is shorter than the longest eval length {max(lengths)}; "
            "raise eval.num_tokens or lower eval.lengths"
        )
    stride = None
    if "sliding" in protocols:
        stride = eval_cfg.get("stride")
        if not isinstance(stride, int) or isinstance(stride, bool) or stride <= 0:
            raise ConfigError(f"eval.stride must be a positive integer with the sliding protocol, got {stride!r}")
        if stride > min(lengths):
            raise ConfigError(
                f"eval.stride={stride} is longer than the shortest eval length {min(lengths)}; a sliding window "
                "cannot advance past its own end (a stride equal to the length is nonoverlapping)"
            )
    heldout_tokens = whole_windows(eval_cfg.num_tokens, max(lengths))
    passkey = check_passkey_config(eval_cfg.get("passkey"), context, heldout_tokens)
    variants = eval_cfg.get("variants")
    if passkey and variants and len(variants) > 1:
        raise ConfigError(
            "eval.passkey.enabled=true scores one encoding per run; with several eval.variants run poslab-eval "
            "once per variant (pos_enc=NAME)"
        )
    return EvalSettings(
        lengths=tuple(lengths),
        protocols=tuple(protocols),
        stride=stride,
        num_tokens=eval_cfg.num_tokens,
        batch_tokens=eval_cfg.batch_tokens,
        passkey=passkey,
    )


# --- encodings and checkpoints -----------------------------------------------------------------


def check_encoding_names(names: list[str], key: str, config_dirs: Sequence[str] = (CONFIG_DIR,)) -> list[str]:
    """pos_enc names given as a list (eval.variants, inspect's variant): each known, none twice."""
    known = available("pos_enc", config_dirs)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(f"{key}: {', '.join(unknown)} unknown; available: {', '.join(known)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"{key} lists a name twice: {list(names)}")
    return list(names)


def check_same_family(
    checkpoint: dict,
    asked_target: str,
    key: str = "pos_enc",
    use: str = "scored under",
    config_dirs: Sequence[str] = (CONFIG_DIR,),
) -> None:
    """A checkpoint is scored (or continued) only under an encoding of its own family: the same
    weights mean the same thing there (RoPE weights under PI or YaRN, not under ALiBi). The names
    allowed are listed from the config folders."""
    trained_target = checkpoint["hyper_parameters"]["pos_enc"]["_target_"]
    trained, asked = family_of_target(trained_target), family_of_target(asked_target)
    if trained != asked:
        trained_name = checkpoint[CONFIG_KEY].get("pos_enc_name") or trained_target.rsplit(".", 1)[-1]
        allowed = ", ".join(encodings_of_family(trained, config_dirs)) or "its own"
        raise ConfigError(
            f"{key}: the checkpoint was trained with {trained_name} ({trained} family) and cannot "
            f"be {use} a {asked} encoding; allowed: {allowed}"
        )


def check_init_from(cfg: DictConfig, checkpoint: dict, config_dirs: Sequence[str] = (CONFIG_DIR,)) -> None:
    """init_from's weights go into this run's model: the same size, an encoding of the same family."""
    saved_net = checkpoint["hyper_parameters"]["net"]
    net = OmegaConf.to_container(cfg.model.net, resolve=True)
    # what the weights' shapes and meaning depend on (dropout or the attention path may change)
    differ = sorted(
        k
        for k in ("_target_", *ARCHITECTURE_KEYS)
        if saved_net.get(k, ARCHITECTURE_DEFAULTS.get(k)) != net.get(k, ARCHITECTURE_DEFAULTS.get(k))
    )
    if differ:
        settings = ", ".join(f"model.net.{k}={saved_net.get(k, ARCHITECTURE_DEFAULTS.get(k))}" for k in differ)
        raise ConfigError(f"init_from={cfg.init_from}: the checkpoint's model differs; use its settings: {settings}")
    key = f"init_from={cfg.init_from}: pos_enc={cfg.pos_enc_name}"
    check_same_family(checkpoint, cfg.pos_enc._target_, key=key, use="continued with", config_dirs=config_dirs)


def eval_variants(cfg: DictConfig, config_dirs: Sequence[str] = (CONFIG_DIR,)) -> list[str] | None:
    """poslab-eval's eval.variants, checked; None when not given (one encoding, pos_enc= or the
    checkpoint's own)."""
    names = cfg.eval.get("variants")
    if not names:
        return None
    if cfg.get("pos_enc") is not None:
        raise ConfigError("give pos_enc= or eval.variants=[...], not both")
    return check_encoding_names([str(name) for name in names], "eval.variants", config_dirs)


# --- poslab-inspect ---------------------------------------------------------------------------


def _positive_int(cfg: DictConfig, key: str) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    return value


def check_inspect_config(cfg: DictConfig, config_dirs: Sequence[str] = (CONFIG_DIR,)) -> InspectSettings:
    """Every inspect setting, before a model or a file is touched."""
    has_checkpoint = bool(cfg.get("ckpt_path"))
    if not has_checkpoint and cfg.get("pos_enc") is None:
        raise ConfigError(
            f"give pos_enc=NAME to inspect an encoding (one of: {', '.join(available('pos_enc', config_dirs))}), "
            "or ckpt_path=RUN/checkpoints/last.ckpt to inspect a trained model"
        )
    if has_checkpoint and cfg.get("pos_enc") is not None:
        raise ConfigError(
            "with ckpt_path, name the encoding with variant=NAME (a member of the checkpoint's family); "
            "pos_enc= inspects an encoding without a checkpoint"
        )
    names = names_of(cfg.get("variant"))
    if names and not has_checkpoint:
        raise ConfigError("variant= applies to a checkpoint (ckpt_path=...); without one, use pos_enc=NAME")
    check_encoding_names(names, "variant", config_dirs)
    if not has_checkpoint:
        check_model_config(cfg)
        _positive_int(cfg.data, "context")
    tolerance = cfg.get("return_tolerance")
    if not is_number(tolerance) or not 0 < tolerance < 1:
        raise ConfigError(f"return_tolerance must be a fraction between 0 and 1, e.g. 0.05, got {tolerance!r}")
    threshold = cfg.get("bias_threshold")
    if not is_number(threshold) or not threshold < 0:
        raise ConfigError(f"bias_threshold must be a negative number of logits, e.g. -4.6, got {threshold!r}")
    check_multiples(cfg.get("lengths_x"), "lengths_x", at_least=1)
    for key in ("distance_x", "num_tokens"):
        _positive_int(cfg, key)
    return InspectSettings(
        distance_x=cfg.distance_x,
        scales_x=check_multiples(cfg.get("scales_x"), "scales_x", at_least=1),
        positions_x=check_multiples(cfg.get("positions_x"), "positions_x", at_least=1),
        return_tolerance=float(tolerance),
        bias_threshold=float(threshold),
    )


def inspect_lengths(cfg: DictConfig, train_context: int) -> list[int]:
    """inspect's lengths_x at a checkpoint's training context."""
    return multiples_of_context(cfg.get("lengths_x"), train_context, "lengths_x", at_least=1)
