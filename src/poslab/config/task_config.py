"""The checks of a task run's settings (task=NAME), each once: the task's own settings (its class
checks them and names the key), what the run derives from it (the model's vocabulary, the
training context), and the settings a task run cannot use."""

from __future__ import annotations

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from poslab.config.validate import _positive, check_positions_config, check_targets, check_training
from poslab.data.tasks import Task
from poslab.errors import ConfigError

# the data config a task run needs (conf/data/task.yaml, which task=NAME selects)
TASK_DATAMODULE = "poslab.data.TaskDataModule"


def make_task(task_cfg: DictConfig) -> Task:
    """The task a config describes; a bad setting is a ConfigError naming its key."""
    try:
        task = instantiate(task_cfg)
    except InstantiationException as error:
        cause = error.__cause__ or error
        raise ConfigError(str(cause).splitlines()[0] if str(cause) else repr(cause)) from error
    if not isinstance(task, Task):
        raise ConfigError(
            f"task._target_={task_cfg._target_} is not a poslab task (a subclass of poslab.data.tasks.Task)"
        )
    return task


def check_task_train_config(cfg: DictConfig) -> Task:
    """Validate a task run's config and fill in what follows from the task: data.vocab_size (the
    task's tokens) and data.context (its longest training sequence) where they are null. Returns
    the task."""
    check_targets(cfg, ("task._target_", "data._target_"))
    if cfg.data.get("_target_") != TASK_DATAMODULE:
        raise ConfigError(
            f"task={OmegaConf.select(cfg, 'hydra.runtime.choices.task', default=cfg.task._target_)} trains on the "
            f"task's examples: data must be the task's (data=task, which task=NAME selects), not {cfg.data._target_}"
        )
    task = make_task(cfg.task)
    with open_dict(cfg):
        if cfg.data.get("vocab_size") is None:
            cfg.data.vocab_size = task.vocab_size
        if cfg.data.get("context") is None:
            cfg.data.context = task.train_context
    check_training(cfg)
    for key in ("data.context", "data.batch_size", "data.eval_batch_size", "data.val_examples"):
        _positive(cfg, key)
    if cfg.data.vocab_size != task.vocab_size:
        raise ConfigError(
            f"data.vocab_size={cfg.data.vocab_size} does not match the task's {task.vocab_size} tokens; "
            "leave data.vocab_size as null"
        )
    if cfg.data.context < task.train_context:
        raise ConfigError(
            f"data.context={cfg.data.context} is shorter than the task's longest training sequence "
            f"({task.train_context} tokens); leave data.context as null"
        )
    check_positions_config(cfg.data)
    if cfg.data.get("positions") == "randomized":
        longest = task.sequence_length(task.test_lengths[-1]) - 1
        if cfg.data.max_position < longest:
            raise ConfigError(
                f"data.max_position={cfg.data.max_position} does not cover the longest test sequence "
                f"({longest} tokens at task length {task.test_lengths[-1]}): randomized positions must train "
                f"every position a test uses; set data.max_position={longest} or more"
            )
    if cfg.get("init_from"):
        raise ConfigError("init_from is for language-model runs; a task run trains from scratch")
    if (cfg.eval.get("passkey") or {}).get("enabled") or cfg.eval.get("variants"):
        raise ConfigError(
            "eval.passkey and eval.variants score language models; a task run is scored on task.test_lengths"
        )
    return task
