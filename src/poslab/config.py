"""Checks that run before anything is built: a bad setting fails in one line that names its key
and what is allowed, before data is loaded, a logger starts or a file is written."""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import secrets
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# conf/ at the repository root (the package is installed in editable mode); POSLAB_CONFIG_DIR
# points elsewhere, and Hydra's --config-dir adds a folder of your own.
CONFIG_DIR = os.environ.get("POSLAB_CONFIG_DIR", str(Path(__file__).resolve().parents[2] / "conf"))


class ConfigError(ValueError):
    """A setting that cannot work. The message is one line: key, value, what is allowed."""


def _unique_suffix() -> str:
    """A few random hex digits for run-folder names: two runs started in the same second (two
    shells, an array job) never share a folder. Cached per config like Hydra's own `now`."""
    return secrets.token_hex(3)


def checkpoint_run_name(ckpt_path: str) -> str:
    """The run folder a checkpoint belongs to (RUN/checkpoints/last.ckpt -> RUN's name)."""
    path = Path(str(ckpt_path)).expanduser().resolve()
    return path.parent.parent.name if path.parent.name == "checkpoints" else path.stem


def _trained_encoding(choice: str | None, ckpt_path: str) -> str:
    """poslab-eval's encoding name: the `pos_enc=` given, else the one the checkpoint was trained
    with (read from its run folder's .hydra/; "trained" when the checkpoint sits elsewhere)."""
    if choice:
        return choice
    hydra_file = Path(str(ckpt_path)).expanduser().resolve().parent.parent / ".hydra" / "hydra.yaml"
    if hydra_file.is_file():  # Hydra saves the group choices of the run there
        name = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.runtime.choices.pos_enc", default=None)
        if isinstance(name, str) and name:
            return name
    return "trained"


def _position_range(positions: str, context: int, max_position: int | None) -> int:
    """How many positions training uses: the context, or max_position with randomized positions."""
    return max_position if positions == "randomized" and max_position else context


def _checkpoint_config(ckpt_path: str) -> dict:
    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        raise ConfigError(f"init_from={ckpt_path}: no such file")
    stat = path.stat()
    return _read_checkpoint_config(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _read_checkpoint_config(path: str, mtime_ns: int, size: int) -> dict:
    """One read per checkpoint file (and version of it) however many resolvers ask."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=False)["poslab_config"]
    except Exception as error:
        raise ConfigError(f"init_from={path}: not a poslab checkpoint ({type(error).__name__})") from error


def _checkpoint_context(ckpt_path: str) -> int:
    """The training context of a checkpoint."""
    return int(_checkpoint_config(ckpt_path)["data"]["context"])


def _original_context(init_from: str | None, context: int) -> int:
    """The context weights were first trained at: this run's, or, continuing a checkpoint, the
    checkpoint's own original context."""
    if not init_from:
        return context
    saved = _checkpoint_config(init_from)
    return int(saved.get("original_context") or saved["data"]["context"])


def _times(factor, value) -> int:
    product = float(factor) * float(value)
    if not product.is_integer():
        raise ConfigError(f"{factor} x {value} is not a whole number of tokens")
    return int(product)


def register_resolvers() -> None:
    """Resolvers used in conf/hydra and conf/eval.yaml; registered before Hydra composes."""
    for name, function in (
        ("poslab.unique", _unique_suffix),
        ("poslab.checkpoint_run", checkpoint_run_name),
        ("poslab.trained_encoding", _trained_encoding),
        ("poslab.position_range", _position_range),
        ("poslab.checkpoint_context", _checkpoint_context),
        ("poslab.original_context", _original_context),
        ("poslab.times", _times),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function, use_cache=True)


register_resolvers()


def available(group: str, config_dir: str = CONFIG_DIR) -> list[str]:
    folder = Path(config_dir) / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


_SWEEP_SYNTAX = re.compile(r"^\s*(glob|choice|range|interval|sort|shuffle|tag)\s*\(")


def _extra_config_dirs(argv: list[str]) -> list[str] | None:
    """Config folders added on the command line (--config-dir / -cd); None if the search path is
    changed in a way this check cannot follow (then Hydra alone checks the names)."""
    dirs = []
    for i, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            dirs.append(argv[i + 1])
        elif arg.startswith("--config-dir="):
            dirs.append(arg.split("=", 1)[1])
        elif arg.lstrip("+").startswith("hydra.searchpath"):
            return None
    return dirs


# Sweep launchers that come from a Hydra plugin: (the plugin's module, the extra that installs it).
# Without the plugin Hydra says only that it "could not load" the launcher's config.
LAUNCHER_PLUGINS = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher", "launchers"),
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher", "slurm"),
    "slurm_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher", "slurm"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher", "slurm"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher", "slurm"),
}


def check_launcher_plugin(launcher: str) -> None:
    """hydra/launcher=NAME needs its plugin installed: say which, and how."""
    if launcher not in LAUNCHER_PLUGINS:
        return
    module, package, extra = LAUNCHER_PLUGINS[launcher]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # hydra_plugins itself is absent
        found = False
    if not found:
        raise ConfigError(f"hydra/launcher={launcher} needs the {package} plugin: pip install -e '.[{extra}]'")


def check_group_overrides(argv: list[str], config_dir: str = CONFIG_DIR) -> None:
    """`pos_enc=rop` should say which encodings exist. Hydra would also refuse it, but in a
    multi-line message after start-up; this checks plain `group=a,b` overrides up front, and that
    a launcher's plugin is installed."""
    extra_dirs = _extra_config_dirs(argv)
    if extra_dirs is None:
        return
    for override in argv:
        key, sep, value = override.partition("=")
        key = key.lstrip("+~")
        if key == "hydra/launcher" and sep:
            check_launcher_plugin(value.strip())
        if not sep or key.startswith("-") or "." in key or "/" in key or value in ("null", ""):
            continue
        if _SWEEP_SYNTAX.match(value):
            continue
        names = sorted({name for folder in (config_dir, *extra_dirs) for name in available(key, folder)})
        if not names:
            continue  # not a config group
        unknown = [v for v in value.split(",") if v.strip() not in names]
        if unknown:
            raise ConfigError(f"{key}={','.join(unknown)}: unknown; available: {', '.join(names)}")


def eval_lengths(eval_cfg, context: int) -> list[int]:
    """Absolute eval lengths: `eval.lengths` if given, else `eval.lengths_x` times the context."""
    if eval_cfg.get("lengths"):
        lengths, key = list(eval_cfg.lengths), "eval.lengths"
    else:
        lengths, key = [x * context for x in eval_cfg.lengths_x], "eval.lengths_x"
    if not lengths:
        raise ConfigError(f"{key} is empty; give at least one eval length")
    for length in lengths:
        if not float(length).is_integer() or length <= 0:
            raise ConfigError(f"{key}: every eval length must be a positive whole number of tokens, got {length}")
    return sorted({int(length) for length in lengths})


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
    from poslab.model import ATTENTION

    attention = cfg.model.net.get("attention", "auto")
    if attention not in ATTENTION:
        raise ConfigError(f"model.net.attention={attention}: allowed: {', '.join(ATTENTION)}")
    compile_setting = cfg.model.get("compile", "auto")
    if compile_setting not in ("auto", True, False):
        raise ConfigError(f"model.compile={compile_setting}: allowed: auto, true, false")


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


# Top-level keys of a training config (conf/train.yaml and its groups). A `+key=...` outside
# them would be carried along and silently ignored, so it is refused.
TRAIN_KEYS = (
    "task_name",
    "seed",
    "pos_enc_name",
    "run_group",
    "tags",
    "report_note",
    "data",
    "model",
    "pos_enc",
    "trainer",
    "logger",
    "eval",
    "callbacks",
    "paths",
    "init_from",
    "extend_factor",
    "original_context",
)


def check_tokenizer_config(data_cfg, eval_cfg) -> None:
    """Passkey sequences (poslab.passkey) are built from bytes: only the byte tokenizer serves them."""
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


def check_train_config(cfg: DictConfig) -> list[int]:
    """Validate a composed training config; returns the absolute eval lengths. Every key is
    checked here once, and the message names it as it is written on the command line."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{', '.join(missing)} must be given (no default), e.g. {missing[0]}=...")
    if "ckpt_path" in cfg:
        raise ConfigError(
            "ckpt_path is not a training setting: to continue a killed run use `poslab-train resume=RUN_DIR`; "
            "to score a checkpoint use `poslab-eval ckpt_path=...`"
        )
    unknown = sorted(set(cfg.keys()) - set(TRAIN_KEYS) - {"hydra"})
    if unknown:
        raise ConfigError(
            f"{', '.join(unknown)}: not a poslab-train setting; the top-level keys are {', '.join(TRAIN_KEYS)}"
        )
    check_model_config(cfg)
    for key in ("data.context", "data.batch_size", "data.eval_batch_size", "data.val_tokens"):
        _positive(cfg, key)
    check_positions_config(cfg.data)
    check_passkey_mix(cfg.data)
    check_tokenizer_config(cfg.data, cfg.eval)
    check_trainer_config(cfg)
    if cfg.eval.get("variants"):
        raise ConfigError(
            "eval.variants is for poslab-eval (score a trained checkpoint under several encodings); "
            "a training run is scored under its own pos_enc"
        )
    return check_eval_config(cfg.eval, cfg.data.context)


# what eval.protocols holds unless a run asks otherwise (conf/eval/extrapolation.yaml)
DEFAULT_PROTOCOLS = ["nonoverlapping"]


def eval_protocols(eval_cfg) -> list[str]:
    """The protocols to score: `eval.protocols`, or the older single `eval.protocol`, which, when
    given, means a one-element list."""
    from poslab.evaluate import PROTOCOLS

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


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_passkey_mix(data: DictConfig) -> None:
    from poslab.passkey import MIN_LENGTH

    mix = data.get("passkey_mix", 0.0)
    if not _is_number(mix) or not 0.0 <= mix <= 1.0:
        raise ConfigError(f"data.passkey_mix must be a fraction of training windows in [0, 1], got {mix!r}")
    if mix > 0 and data.context < MIN_LENGTH:
        raise ConfigError(
            f"data.passkey_mix={mix} needs data.context >= {MIN_LENGTH} (a key line, a question and filler), "
            f"got {data.context}"
        )


def passkey_lengths(passkey_cfg, context: int) -> list[int]:
    """Absolute passkey eval lengths: `eval.passkey.lengths_x` times the context."""
    from poslab.passkey import MIN_LENGTH

    factors = passkey_cfg.get("lengths_x")
    if not factors or isinstance(factors, str):
        raise ConfigError(f"eval.passkey.lengths_x must be a non-empty list such as [1, 2, 4], got {factors!r}")
    lengths = []
    for factor in factors:
        length = float(factor) * context if _is_number(factor) else None
        if length is None or not length.is_integer() or length < MIN_LENGTH:
            raise ConfigError(
                f"eval.passkey.lengths_x: {factor!r} x data.context={context} must be a whole number of at least "
                f"{MIN_LENGTH} tokens (a key line, a question and filler)"
            )
        lengths.append(int(length))
    return sorted(set(lengths))


def check_passkey_config(passkey_cfg, context: int, heldout_tokens: int) -> list[int] | None:
    """The passkey settings; returns the absolute lengths, or None when passkey is off. The filler
    comes from the sweep's held-out tokens, `heldout_tokens` of them."""
    if passkey_cfg is None:
        return None
    enabled = passkey_cfg.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ConfigError(f"eval.passkey.enabled must be true or false, got {enabled!r}")
    if not enabled:
        return None
    lengths = passkey_lengths(passkey_cfg, context)
    if max(lengths) > heldout_tokens:
        raise ConfigError(
            f"eval.passkey.lengths_x: the longest passkey length {max(lengths)} is more than the {heldout_tokens} "
            "held-out tokens its filler comes from (eval.num_tokens in whole windows of the longest eval length)"
        )
    depths = passkey_cfg.get("depths")
    if not depths or isinstance(depths, str) or not all(_is_number(d) and 0.0 <= d <= 1.0 for d in depths):
        raise ConfigError(f"eval.passkey.depths must be a non-empty list of fractions in [0, 1], got {depths!r}")
    if len(set(depths)) != len(depths):
        raise ConfigError(f"eval.passkey.depths lists a depth twice: {list(depths)}")
    for key in ("trials", "seed"):
        value = passkey_cfg.get(key)
        smallest = 1 if key == "trials" else 0
        if not isinstance(value, int) or isinstance(value, bool) or value < smallest:
            raise ConfigError(f"eval.passkey.{key} must be an integer >= {smallest}, got {value!r}")
    threshold = passkey_cfg.get("threshold")
    if not _is_number(threshold) or not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"eval.passkey.threshold must be an accuracy in [0, 1], got {threshold!r}")
    return lengths


def check_eval_config(eval_cfg, context: int) -> list[int]:
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
    if "sliding" in protocols:
        stride = eval_cfg.get("stride")
        if not isinstance(stride, int) or isinstance(stride, bool) or stride <= 0:
            raise ConfigError(f"eval.stride must be a positive integer with the sliding protocol, got {stride!r}")
        if stride > min(lengths):
            raise ConfigError(
                f"eval.stride={stride} is longer than the shortest eval length {min(lengths)}; a sliding window "
                "cannot advance past its own end (a stride equal to the length is nonoverlapping)"
            )
    heldout_tokens = eval_cfg.num_tokens // max(lengths) * max(lengths)  # as TokenDataModule.heldout_tokens cuts them
    passkey = check_passkey_config(eval_cfg.get("passkey"), context, heldout_tokens)
    variants = eval_cfg.get("variants")
    if passkey and variants and len(variants) > 1:
        raise ConfigError(
            "eval.passkey.enabled=true scores one encoding per run; with several eval.variants run poslab-eval "
            "once per variant (pos_enc=NAME)"
        )
    return lengths
