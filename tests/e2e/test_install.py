"""poslab installed as a user installs it from the source tree: `pip install .`, not editable, in a
fresh virtual environment; the console scripts must find the configs shipped inside the package."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from helpers import REPOSITORY


@pytest.mark.slow
def test_a_non_editable_install_runs_from_another_directory(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    # The dependencies are this environment's (a .pth line adds its site-packages after the fresh
    # environment's own, without running its .pth files: the editable poslab stays out); poslab
    # itself is built from the source tree and installed into the fresh environment.
    own_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(own_site, "dependencies_of_the_test.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # from a copy of the source tree without what a build or an editable install leaves in it
    # (an egg-info's file list would hide missing package data), as in a fresh clone
    source = tmp_path / "source"
    leftovers = (".git", ".venv", "*.egg-info", "build", "outputs", "wandb", ".whl", "__pycache__", ".*_cache")
    shutil.copytree(REPOSITORY, source, symlinks=True, ignore=shutil.ignore_patterns(*leftovers))
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-deps", str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [python, "-c", "import poslab.config as c; print(c.__file__); print(c.CONFIG_DIR)"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all(path.startswith(own_site) for path in where), where  # the installed copy, not src/
    assert Path(where[1], "train.yaml").is_file()

    env = {**os.environ, "WANDB_MODE": "disabled", "POSLAB_DATA_CACHE": str(tmp_path / "cache")}
    env.pop("POSLAB_CONFIG_DIR", None)
    run = subprocess.run(
        [venv / "bin" / "poslab-train", "debug=fast_dev_run", "pos_enc=rope"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    (results,) = (elsewhere / "outputs" / "runs").glob("*_rope_*/results.json")
    assert '"status": "ok"' in results.read_text()
