"""What Hydra records beside a run, read in one place: a job's overrides (.hydra/overrides.yaml),
a sweep's command line (multirun.yaml), and the config-group choices of a job (.hydra/hydra.yaml).
The file paths are Hydra's; `resume=` replays these overrides and the report quotes them."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

JOB_OVERRIDES = Path(".hydra") / "overrides.yaml"
JOB_HYDRA = Path(".hydra") / "hydra.yaml"
SWEEP_FILE = "multirun.yaml"


def job_overrides(folder: Path) -> list[str] | None:
    """The command-line overrides of the job in `folder`, or None when Hydra recorded none there.
    A damaged file raises (yaml and OmegaConf errors)."""
    path = Path(folder) / JOB_OVERRIDES
    return [str(override) for override in OmegaConf.load(path)] if path.is_file() else None


def sweep_command(folder: Path) -> tuple[str | None, list[str]] | None:
    """(the primary config's name, the overrides) of the sweep whose folder is `folder`, or None
    when it has no multirun.yaml. A damaged file raises."""
    path = Path(folder) / SWEEP_FILE
    if not path.is_file():
        return None
    hydra = OmegaConf.load(path).hydra
    return hydra.job.get("config_name"), [str(override) for override in hydra.overrides.task]


def launch_overrides(folder: Path) -> tuple[list[str], list[str]] | None:
    """What a run or sweep folder was launched with, beyond its task overrides: (Hydra's own
    overrides, such as hydra/launcher=joblib or hydra.launcher.n_jobs=2, without where it ran;
    the config folders added with --config-dir). None when Hydra recorded nothing there."""
    path = Path(folder) / SWEEP_FILE
    if not path.is_file():
        path = Path(folder) / JOB_HYDRA
    if not path.is_file():
        return None
    hydra = OmegaConf.load(path).hydra
    own = [str(o) for o in OmegaConf.select(hydra, "overrides.hydra", default=[]) or []]
    own = [o for o in own if o.partition("=")[0].lstrip("+") not in ("hydra.run.dir", "hydra.sweep.dir")]
    sources = OmegaConf.select(hydra, "runtime.config_sources", default=[]) or []
    folders = [str(source.path) for source in sources if source.schema == "file" and source.provider == "command-line"]
    return own, folders


def job_choice(folder: Path, group: str) -> str | None:
    """The option of a config group the job in `folder` ran with (e.g. pos_enc), if recorded."""
    path = Path(folder) / JOB_HYDRA
    if not path.is_file():
        return None
    name = OmegaConf.select(OmegaConf.load(path), f"hydra.runtime.choices.{group}", default=None)
    return name if isinstance(name, str) and name else None
