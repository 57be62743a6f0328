"""What the command-line checks read from an override before Hydra runs: a sweep's values, the log
folders, a path setting's files."""

from __future__ import annotations

from pathlib import Path

import pytest

from poslab import cli
from poslab.config.command_line import log_folders, sweep_values
from poslab.errors import ConfigError


@pytest.mark.parametrize(
    ("value", "values"),
    [
        ("rope", ["rope"]),
        ("rope,alibi", ["rope", "alibi"]),
        ("[1,2,4],[8,16]", ["[1,2,4]", "[8,16]"]),  # commas inside brackets do not split
        ("'a,b'", ["a,b"]),  # nor inside quotes; the quotes go
        ("'a b',c", ["a b", "c"]),
        ("{x:1,y:2}", ["{x:1,y:2}"]),
        ("glob(*)", None),  # Hydra's sweep functions are Hydra's to expand
        ("range(1,4)", None),
        ("choice(a,b)", None),
    ],
)
def test_sweep_values(value, values):
    assert sweep_values(value) == values


def test_log_folders_of_a_sweep_and_of_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("POSLAB_LOG_DIR", raising=False)
    a, b = tmp_path / "a", tmp_path / "b"
    assert log_folders([f"paths.log_dir={a},{b}"]) == [("paths.log_dir", a), ("paths.log_dir", b)]
    monkeypatch.setenv("POSLAB_LOG_DIR", str(a))
    assert log_folders(["seed=1"]) == [("POSLAB_LOG_DIR", a)]
    monkeypatch.setenv("POSLAB_LOG_DIR", " ")
    with pytest.raises(ConfigError, match="POSLAB_LOG_DIR is set but empty"):
        log_folders(["seed=1"])


def test_each_file_of_a_sweep_over_a_path_must_exist(tmp_path, capsys):
    present = tmp_path / "a.ckpt"
    present.write_bytes(b"")
    missing = tmp_path / "b.ckpt"
    assert cli.require("poslab-eval", str(present), "ckpt_path") == [str(present)]
    with pytest.raises(SystemExit) as exit_:
        cli.require("poslab-eval", f"{present},{missing}", "ckpt_path")
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("poslab-eval: error: ckpt_path=") and str(missing) in err and "\n" not in err
    assert Path(present).is_file()
