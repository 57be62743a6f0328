"""A task run as a user types it: poslab-train task=NAME trains on the task's examples and records
accuracy per test length in results.json; bad task settings are one line before any work."""

import pytest

from helpers import TINY_TASK, run_console, strict_json
from poslab import cli
from poslab.records.results import find_results


def train_task(monkeypatch, log_dir, *overrides) -> int:
    return run_console(monkeypatch, cli.train_main, *TINY_TASK, f"paths.log_dir={log_dir}", *overrides)


@pytest.mark.parametrize("name", ["copy", "associative_recall", "flip_flop"])
def test_a_task_run_records_accuracy_per_test_length(monkeypatch, tmp_path, name):
    lengths = ["task.train_lengths=[2,4]"] if name == "flip_flop" else []  # a read needs a write before it
    assert train_task(monkeypatch, tmp_path / "logs", f"task={name}", "pos_enc=alibi", *lengths) == 0
    (path,) = find_results(tmp_path / "logs")
    results = strict_json(path)
    assert results["status"] == "ok" and results["run"]["job"] == "train" and results["extrapolation"] == []
    task = results["task"]
    assert task["name"] == name and task["train_lengths"] == [2 if name == "flip_flop" else 1, 4]
    assert [row["length"] for row in task["rows"]] == [4, 6, 8, 12, 16]  # 1, 1.5, 2, 3, 4 x 4
    for row in task["rows"]:
        assert row["status"] == "ok" and row["examples"] == 8
        assert 0 <= row["exact_match"] <= 1 and 0 <= row["token_accuracy"] <= 1
    # the model's vocabulary and the training context follow the task
    assert (
        results["config"]["model"]["net"]["vocab_size"] == task["vocab_size"] == results["config"]["data"]["vocab_size"]
    )
    assert results["train"]["train_context"] == results["config"]["data"]["context"]
    assert results["data"]["task"]["name"] == name


def test_a_learned_table_is_unsupported_past_its_training_positions(monkeypatch, tmp_path):
    assert train_task(monkeypatch, tmp_path / "logs", "task=copy", "pos_enc=learned") == 0
    (path,) = find_results(tmp_path / "logs")
    rows = strict_json(path)["task"]["rows"]
    assert rows[0]["status"] == "ok"
    assert [row["status"] for row in rows[1:]] == ["unsupported"] * 4 and "Learned has positions" in rows[1]["reason"]


def test_randomized_positions_train_and_score(monkeypatch, tmp_path):
    args = ["task=copy", "pos_enc=rope", "data.positions=randomized", "data.max_position=40"]
    assert train_task(monkeypatch, tmp_path / "logs", *args) == 0
    (path,) = find_results(tmp_path / "logs")
    assert all(row["status"] == "ok" for row in strict_json(path)["task"]["rows"])


BAD_TASK_INPUT = [
    ("task=cpy", "task=cpy: unknown; available: addition, associative_recall, copy,"),
    ("task=copy task.alphabet=1", "task.alphabet must be a whole number of at least 2 for copy, got 1"),
    ("task=copy task.test_lengths=[0,8]", "task.test_lengths: 0 is shorter than the training range [1, 4]"),
    ("task=copy task.train_lengths=[4,1]", "task.train_lengths must satisfy 1 <= shortest <= longest"),
    ("task=associative_recall task.keys=8", "task.keys=8 is too small: 16 pairs need 16 distinct keys"),
    (
        "task=copy data.positions=randomized data.max_position=20",
        "data.max_position=20 does not cover the longest test sequence (33 tokens at task length 16)",
    ),
    ("task=copy data.context=4", "data.context=4 is shorter than the task's longest training sequence (9 tokens)"),
    ("task=copy data.vocab_size=7", "data.vocab_size=7 does not match the task's 19 tokens"),
    ("task=copy data=stdlib", "data must be the task's (data=task, which task=NAME selects)"),
    ("task=copy eval.passkey.enabled=true", "eval.passkey and eval.variants score language models"),
    ("task=copy task.examples_per_length=0", "task.examples_per_length must be at least 1, got 0"),
]


@pytest.mark.parametrize(("bad_input", "message"), BAD_TASK_INPUT, ids=[i for i, _ in BAD_TASK_INPUT])
def test_bad_task_settings_are_one_line_before_any_work(monkeypatch, capfd, tmp_path, bad_input, message):
    log_dir = tmp_path / "logs"
    status = train_task(monkeypatch, log_dir, *bad_input.split())
    out, err = capfd.readouterr()
    assert status == 2
    lines = [line for line in err.splitlines() if message in line]
    assert len(lines) == 1 and lines[0].startswith("poslab-train: error: "), out + err
    assert not log_dir.exists() or not any(log_dir.rglob("*")), sorted(log_dir.rglob("*"))


def test_a_task_checkpoint_is_scored_under_the_rotary_variants(monkeypatch, tmp_path):
    from poslab.report import write_report

    assert (
        train_task(
            monkeypatch, tmp_path / "logs", "task=copy", "pos_enc=rope", "hydra.run.dir=" + str(tmp_path / "run")
        )
        == 0
    )
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    args = [
        f"ckpt_path={checkpoint}",
        "eval.variants=[rope,rope_pi,rope_yarn]",
        "logger=csv",
        f"paths.log_dir={tmp_path / 'eval'}",
    ]
    assert run_console(monkeypatch, cli.eval_main, *args) == 0
    (path,) = find_results(tmp_path / "eval")
    results = strict_json(path)
    assert results["run"]["job"] == "eval" and results["run"]["variants"] == ["rope", "rope_pi", "rope_yarn"]
    rows = results["task"]["rows"]
    assert [row["variant"] for row in rows] == ["rope"] * 5 + ["rope_pi"] * 5 + ["rope_yarn"] * 5
    trained = strict_json(tmp_path / "run" / "results.json")["task"]["rows"]
    # the same weights and examples: plain rope scores exactly what the training run scored
    assert [row["exact_match"] for row in rows[:5]] == [row["exact_match"] for row in trained]
    # within the training context every scaling member is plain rope
    assert rows[5]["token_accuracy"] == rows[10]["token_accuracy"] == rows[0]["token_accuracy"]
    text = write_report(tmp_path / "eval").path.read_text()
    assert "| rope_pi on rope checkpoint (run) |" in text and "| rope_yarn on rope checkpoint (run) |" in text


def test_inspect_refuses_a_task_checkpoint_in_one_line(monkeypatch, capfd, tmp_path):
    assert train_task(monkeypatch, tmp_path / "logs", "task=copy", "hydra.run.dir=" + str(tmp_path / "run")) == 0
    capfd.readouterr()
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    status = run_console(
        monkeypatch, cli.inspect_main, f"ckpt_path={checkpoint}", "logger=csv", f"paths.log_dir={tmp_path / 'inspect'}"
    )
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if "is a task run (task Copy)" in line]
    assert status == 2 and len(lines) == 1 and lines[0].startswith("poslab-inspect: error: "), err
    assert not (tmp_path / "inspect").exists() or not any((tmp_path / "inspect").rglob("*"))
