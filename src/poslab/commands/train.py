"""poslab-train: train one GPT, then run the extrapolation sweep on it.

poslab-train pos_enc=alibi data.context=256
poslab-train -m pos_enc='glob(*)' seed=0,1,2
poslab-train resume=outputs/runs/<run>          (continue a killed run, or a sweep folder)

A job's folder decides what the job does: a finished run with the same config is reused, a
last.ckpt without results is resumed, anything else trains from scratch.
"""

from __future__ import annotations

import datetime as _dt
import logging
import signal
import threading
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from poslab.commands.job import config_dirs, guarded_job, is_first_job, say_error
from poslab.commands.scoring import score_and_record, score_task_and_record
from poslab.config import CONFIG_DIR
from poslab.config.resolvers import register_resolvers
from poslab.config.task_config import check_task_train_config
from poslab.config.validate import check_init_from, check_passkey_filler, check_train_config
from poslab.data import TaskDataModule
from poslab.data.datamodule import training_positions
from poslab.errors import ConfigError
from poslab.records.checkpoints import CONFIG_KEY, LAST_CHECKPOINT, read_checkpoint, resumable_checkpoint
from poslab.records.loggers import finish_wandb, grouping_keys, make_loggers
from poslab.records.results import (
    FILENAME,
    REFUSED_FILENAME,
    build_results,
    config_differences,
    read_results,
    write_results,
)
from poslab.training import DivergedError, LitGPT

log = logging.getLogger("poslab.train")

register_resolvers()


def build(cfg: DictConfig):
    """Everything that can fail on a bad setting, before a logger starts or training runs:
    (datamodule, model, eval settings, held-out tokens, init_from's checkpoint or None)."""
    max_steps, interval = cfg.trainer.get("max_steps"), cfg.trainer.get("val_check_interval")
    if isinstance(max_steps, int) and isinstance(interval, int) and 0 < max_steps < interval:
        # a run shorter than the interval would otherwise never validate nor checkpoint
        with open_dict(cfg):
            cfg.trainer.val_check_interval = max_steps
    # a task run (task=NAME) is scored on its task's test lengths, a language model on held-out text
    task = check_task_train_config(cfg) if cfg.get("task") is not None else None
    settings = check_train_config(cfg) if task is None else None
    initial = read_checkpoint(cfg.init_from, key="init_from") if cfg.get("init_from") else None
    if initial is not None:
        check_init_from(cfg, initial, config_dirs())
    pl.seed_everything(cfg.seed, workers=True)  # before the model is built: its init draws from it
    try:
        datamodule = instantiate(cfg.data)
        datamodule.setup("fit")
        heldout = None
        if task is None:
            heldout = datamodule.heldout_tokens(settings.num_tokens, max(settings.lengths))
        if settings is not None and settings.passkey is not None:  # the test split may hold fewer tokens
            check_passkey_filler(settings.passkey.lengths, len(heldout) - 1)
        lit = LitGPT(cfg.model.net, cfg.pos_enc, cfg.model.optimizer, cfg.model.scheduler)
        span = training_positions(cfg.data.get("positions"), cfg.data.context, cfg.data.get("max_position"))
        try:
            lit.model.pos_enc.check_length(span)
        except ValueError as error:  # training must fit the encoding; evaluation lengths may not
            key = f"data.max_position={span}" if span != cfg.data.context else f"data.context={cfg.data.context}"
            raise ValueError(f"{key} cannot be trained with pos_enc: {error}") from error
    except InstantiationException as error:
        cause = error.__cause__ or error
        raise ConfigError(str(cause).splitlines()[0] if str(cause) else repr(cause)) from error
    except ValueError as error:
        raise ConfigError(str(error)) from error
    return datamodule, lit, settings, heldout, initial


def start_from_checkpoint(lit: LitGPT, cfg: DictConfig, checkpoint: dict) -> None:
    """Load init_from's weights into the model (optimizer and schedule start fresh, as in the
    context-extension papers); build() has checked its size and encoding family."""
    try:
        lit.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise ConfigError(f"init_from={cfg.init_from}: {str(error).splitlines()[0]}") from error
    log.info("starting from the weights of %s (step %d)", cfg.init_from, checkpoint.get("global_step", 0))


def previous_work(output_dir: Path, resolved: dict) -> tuple[dict | None, Path | None, int | None]:
    """What an earlier attempt left in this job's folder: (ok results to reuse, checkpoint to
    resume from, its step). A folder holding another config's work is refused, never overwritten."""
    results_path = output_dir / FILENAME
    if results_path.is_file():
        try:
            earlier = read_results(results_path)
        except ValueError:
            earlier = None  # unreadable: this attempt replaces it
        if earlier is not None and earlier["status"] == "ok":
            differ = config_differences(earlier["config"], resolved, ignore_seed=False)
            if differ:
                raise ConfigError(
                    f"{output_dir} holds a finished run with another config ({', '.join(differ[:5])} differ); "
                    "use another folder"
                )
            return earlier, None, None
    checkpoint = last_checkpoint(resolved, output_dir)
    if checkpoint.is_file():
        saved = resumable_checkpoint(checkpoint)
        differ = config_differences(saved.get(CONFIG_KEY), resolved, ignore_seed=False)
        if differ:
            raise ConfigError(
                f"{checkpoint} was trained with another config ({', '.join(differ[:5])} differ); "
                "resume it with its own config (poslab-train resume=RUN_DIR) or use another folder"
            )
        return None, checkpoint, saved["global_step"]
    return None, None, None


def last_checkpoint(config: dict, output_dir: Path) -> Path:
    """Where the run's checkpoint callback writes last.ckpt (callbacks.model_checkpoint.dirpath),
    which resume continues: RUN/checkpoints/last.ckpt unless the config moves it."""
    dirpath = ((config.get("callbacks") or {}).get("model_checkpoint") or {}).get("dirpath")
    return Path(dirpath) / LAST_CHECKPOINT.name if dirpath else output_dir / LAST_CHECKPOINT


def reuse(results: dict, output_dir: Path) -> dict:
    """Keep a finished job as it is; note in its results that a rerun found and kept it."""
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    results["run"]["reused_at"] = [*results["run"].get("reused_at", []), now]
    write_results(results, output_dir)
    (output_dir / REFUSED_FILENAME).unlink(missing_ok=True)  # the same config again: the refusal is over
    log.info("%s already finished with this config: reusing %s", results["run"]["name"], output_dir / FILENAME)
    return results


def log_resumed_attempt_apart(cfg: DictConfig, step: int) -> None:
    """Lightning's CSV logger would write over the killed attempt's metrics.csv: give the resumed
    attempt its own folder, csv/resumed-from-step-N/, and keep the first one as it is."""
    for logger_cfg in (cfg.get("logger") or {}).values():
        if logger_cfg and str(logger_cfg.get("_target_", "")).endswith("CSVLogger"):
            with open_dict(logger_cfg):
                logger_cfg.version = f"resumed-from-step-{step}"


def train(cfg: DictConfig) -> dict | None:
    """Train, evaluate, write results.json; returns the results (None on non-zero DDP ranks)."""
    first_job = is_first_job()
    output_dir = Path(cfg.paths.output_dir)
    datamodule, lit, settings, heldout, initial = build(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    finished, resume_from, resumed_step = previous_work(output_dir, resolved)
    if finished is not None:
        return reuse(finished, output_dir)
    if initial is not None and resume_from is None:
        start_from_checkpoint(lit, cfg, initial)
    if resume_from is not None:
        log_resumed_attempt_apart(cfg, resumed_step)
        log.info("resuming from %s at step %d", resume_from, resumed_step)
    lit.run_config = resolved
    zero_shot = bool(cfg.get("init_from")) and cfg.trainer.max_steps == 0
    context = (
        f"trained at {cfg.original_context}, scored as it is (zero-shot)"
        if zero_shot
        else f"training context {cfg.data.context}"
    )
    task = datamodule.task if isinstance(datamodule, TaskDataModule) else None
    log.info(
        "%s: %d parameters, %s, %s",
        cfg.pos_enc_name,
        lit.model.num_parameters(),
        context,
        f"eval lengths {list(settings.lengths)}"
        if task is None
        else f"task {task.name} at lengths {list(task.train_lengths)}, tested at {task.test_lengths}",
    )
    run = {
        "name": f"{cfg.pos_enc_name}-s{cfg.seed}",
        "pos_enc": cfg.pos_enc_name,
        "seed": cfg.seed,
        "group": cfg.run_group,
        "output_dir": str(output_dir),
        "job": "train",
        "resumed_from_step": resumed_step,
    }

    loggers = make_loggers(cfg.get("logger"))
    try:
        for logger in loggers:
            logger.log_hyperparams(
                {
                    **grouping_keys(
                        lit.model,
                        name=cfg.pos_enc_name,
                        trained_as=cfg.pos_enc_name,
                        job="train",
                        seed=cfg.seed,
                        run_group=cfg.run_group,
                        train_context=cfg.original_context if zero_shot else cfg.data.context,
                        max_steps=cfg.trainer.get("max_steps"),
                        task=task.name if task is not None else None,
                    ),
                    "config": resolved,
                    "data": _summary(datamodule.fingerprint),
                }
            )
        callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
        summary = {} if first_job else {"enable_model_summary": False}  # the first job shows the model
        trainer: pl.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks, **summary)
        started = time.perf_counter()
        if not zero_shot:
            try:
                with CtrlCWatch() as ctrl_c:
                    trainer.fit(lit, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None)
            except DivergedError as error:
                log.error("%s", error)
                return record_divergence(error, trainer, cfg, run, resolved, datamodule, lit, output_dir)
            except SystemExit:  # Lightning's answer to Ctrl-C, after its graceful shutdown
                if trainer.interrupted:
                    say_interrupted(trainer, last_checkpoint(resolved, output_dir))
                raise
            except Exception:
                # A Ctrl-C that lands inside torch.save (a checkpoint being written) comes out of its
                # C++ writer as a RuntimeError, not KeyboardInterrupt. Lightning writes checkpoints
                # through a temporary file, so last.ckpt still holds the step before.
                if not ctrl_c.received:
                    raise
                say_interrupted(trainer, last_checkpoint(resolved, output_dir))
                raise SystemExit(1) from None
        wall_time = time.perf_counter() - started
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and checkpoint.dirpath and not trainer.fast_dev_run and not zero_shot:
            # ModelCheckpoint saves every n steps only; last.ckpt must hold the final weights
            # (called on every rank: Lightning writes from rank 0)
            trainer.save_checkpoint(Path(checkpoint.dirpath) / LAST_CHECKPOINT.name)
        if not trainer.is_global_zero:
            return None

        # a zero-shot job's weights were trained at the original context, not at this one
        train_context = cfg.original_context if zero_shot else cfg.data.context
        steps = trainer.global_step
        # what a step trains on, counted: data.batch_size windows of data.context tokens, or of a
        # task's examples (of several lengths)
        unit = "tokens" if task is None else "examples"
        per_step = cfg.data.batch_size * (cfg.data.context if task is None else 1) * trainer.world_size
        trained = (steps - (resumed_step or 0)) * per_step
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        train = {
            "steps": steps,
            unit: steps * per_step,
            # this attempt's time and speed (a resumed run: since the resume; none for a run
            # resumed at its last step, killed while scoring: it trained nothing this time)
            "wall_time_s": round(wall_time, 2),
            f"{unit}_per_s": round(trained / wall_time, 1) if wall_time > 0 and trained > 0 else None,
            "parameters": lit.model.num_parameters(),
            "train_loss": metrics.get("train/loss"),
            "val_loss": metrics.get("val/loss"),
            "train_context": train_context,
        }
        if task is not None:
            return score_task_and_record(
                lit.model,
                task,
                device=lit.device,
                batch_size=cfg.data.eval_batch_size,
                loggers=loggers,
                run=run,
                config=resolved,
                data=datamodule.fingerprint,
                train=train,
                output_dir=output_dir,
            )
        return score_and_record(
            lit.model,
            heldout,
            settings,
            train_length=train_context,
            device=lit.device,
            loggers=loggers,
            run=run,
            config=resolved,
            data=datamodule.fingerprint,
            scored_bytes=datamodule.heldout_bytes(heldout),
            train={**train, "zero_shot": bool(zero_shot)},
            output_dir=output_dir,
        )
    finally:
        finish_wandb()


class CtrlCWatch:
    """Notes whether a Ctrl-C (SIGINT) arrived while inside, and hands the signal on to the handler
    there before (Python's, which raises KeyboardInterrupt). Off the main thread it notes nothing."""

    def __init__(self):
        self.received = False
        self.previous = None

    def __enter__(self) -> CtrlCWatch:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self.note)
        return self

    def note(self, signum, frame) -> None:
        self.received = True
        if callable(self.previous):
            self.previous(signum, frame)
        elif self.previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        # also after Lightning's graceful shutdown, which leaves Ctrl-C ignored
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def say_interrupted(trainer: pl.Trainer, checkpoint: Path) -> None:
    """Which step the last checkpoint holds, and the command that continues from it."""
    try:
        step = read_checkpoint(checkpoint, key="resume")["global_step"] if checkpoint.is_file() else None
    except ConfigError:
        step = None
    held = f"{checkpoint} holds step {step}" if step is not None else "no checkpoint was written yet"
    say_error(
        f"interrupted at step {trainer.global_step}; {held}; continue with: poslab-train resume={resume_folder()}"
    )


def resume_folder() -> str:
    """What resume= continues this job with: its sweep's folder in a sweep (the other jobs too),
    else its own."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra = HydraConfig.get()
    return str(hydra.sweep.dir) if hydra.mode == RunMode.MULTIRUN else str(hydra.runtime.output_dir)


def record_divergence(error: DivergedError, trainer, cfg, run, resolved, datamodule, lit, output_dir) -> dict | None:
    """A diverged run is a result, not numbers: status "diverged", the step, no scores."""
    if not trainer.is_global_zero:
        return None
    results = build_results(
        run=run,
        config=resolved,
        data=datamodule.fingerprint,
        train={
            "steps": error.step - 1,
            "parameters": lit.model.num_parameters(),
            "train_context": cfg.data.context,
            "diverged_at_step": error.step,
        },
        extrapolation=[],
        status="diverged",
        error=str(error),
    )
    write_results(results, output_dir)
    return results


def _summary(fingerprint: dict) -> dict:
    """The fingerprint without its file list (kept in results.json), for logger configs."""
    return {k: v for k, v in fingerprint.items() if k != "files"}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
@guarded_job(job="train")
def hydra_main(cfg: DictConfig) -> dict | None:
    return train(cfg)
