"""The report's task part: a table per task with the mean exact match over seeds and its 95%
t-interval, the longest length holding 0.9 and 0.5, the plot, and rows built per task."""

import math
import statistics

from poslab.records.results import build_results, write_results
from poslab.report import write_report
from poslab.report.intervals import t_interval


def task_job(root, folder, *, task, pos_enc, seed, exact, target="poslab.encodings.ALiBi", statuses=None):
    lengths = [10, 15, 20, 40]
    rows = [
        {
            "length": n,
            "length_ratio": n / 10,
            "sequence_length": 2 * n + 1,
            "status": (statuses or {}).get(n, "ok"),
            "reason": None,
            "examples": 200,
            "exact_match": e if (statuses or {}).get(n, "ok") == "ok" else None,
            "token_accuracy": min(1.0, e + 0.05) if (statuses or {}).get(n, "ok") == "ok" else None,
        }
        for n, e in zip(lengths, exact, strict=True)
    ]
    config = {
        "job_name": "train",
        "seed": seed,
        "pos_enc_name": pos_enc,
        "pos_enc": {"_target_": target},
        "task": {"_target_": f"poslab.data.tasks.{task.title()}", "seed": seed},
        "model": {"net": {"n_layer": 2, "n_embd": 64, "n_head": 4}},
    }
    results = build_results(
        run={"name": f"{pos_enc}-s{seed}", "pos_enc": pos_enc, "seed": seed, "job": "train", "output_dir": folder},
        config=config,
        data={"task": {"name": task, "train_lengths": [1, 10], "vocab_size": 19, "seed": seed}},
        train={"steps": 100, "examples": 6400, "parameters": 100_160, "train_context": 21},
        extrapolation=[],
        task={"name": task, "train_lengths": [1, 10], "test_lengths": lengths, "rows": rows},
    )
    return write_results(results, root / folder)


def test_a_table_per_task_with_intervals_and_how_far_each_row_holds(tmp_path):
    alibi = [[1.0, 0.95, 0.6, 0.1], [1.0, 0.9, 0.5, 0.0], [0.98, 0.92, 0.7, 0.2]]
    for seed, exact in enumerate(alibi):
        task_job(tmp_path, f"a{seed}", task="copy", pos_enc="alibi", seed=seed, exact=exact)
    for seed in range(3):
        task_job(
            tmp_path, f"r{seed}", task="copy", pos_enc="rope", seed=seed, exact=[0.99, 0.4, 0.0, 0.0],
            target="poslab.encodings.RoPE",
        )  # fmt: skip
    unsupported = {15: "unsupported", 20: "unsupported", 40: "unsupported"}
    task_job(tmp_path, "s0", task="sort", pos_enc="learned", seed=0, exact=[0.97, 0.0, 0.0, 0.0],
             target="poslab.encodings.Learned", statuses=unsupported)  # fmt: skip
    report = write_report(tmp_path)
    text = report.path.read_text()
    assert "## Perplexity" not in text  # no language-model runs: no perplexity tables
    assert "### copy" in text and "### sort" in text and (tmp_path / "tasks.png").is_file()
    # the alibi row at 15: mean of three seeds with its t-interval, token accuracy in brackets
    mean, half = t_interval([0.95, 0.9, 0.92], 0.95)
    token = statistics.fmean([1.0, 0.95, 0.97])
    assert "| alibi | 100,160 | 3 | 0.99 ± " in text and f"{mean:.2f} ± {half:.2f} ({token:.2f})" in text
    # alibi: 0.99, 0.923 hold 0.9; 0.6 does not; 0.6 holds 0.5, 0.1 does not
    assert "- copy, alibi: exact match >= 0.9 up to length 15 (1.5x); exact match >= 0.5 up to length 20 (2x)." in text
    assert "- copy, rope: exact match >= 0.9 up to length 10 (1x); exact match >= 0.5 up to length 10 (1x)." in text
    assert "| learned | 100,160 | 1 | 0.97 (1.00) | unsupported | unsupported | unsupported |" in text
    # rows are built per task: their labels carry no task settings
    tables = text.split("## Algorithmic tasks")[1].split("## Commands")[0]
    assert "(task." not in tables and math.isfinite(mean)


def test_task_and_language_model_runs_share_one_report(tmp_path):
    import json

    from helpers import REPOSITORY

    lm = REPOSITORY / "experiments" / "all_encodings" / "runs" / "5_rope_s0" / "results.json"
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "results.json").write_text(json.dumps(json.loads(lm.read_text())))
    task_job(tmp_path, "t0", task="copy", pos_enc="alibi", seed=0, exact=[1.0, 0.9, 0.5, 0.1])
    text = write_report(tmp_path).path.read_text()
    assert "## Perplexity, protocol nonoverlapping" in text and "| rope |" in text
    assert "## Algorithmic tasks" in text and "- copy, alibi:" in text
    assert "- alibi: no perplexity" not in text  # the task run is not a perplexity row


def test_a_diverged_task_job_is_a_row_of_its_tasks_table(tmp_path):
    """A job that diverged wrote no task block: its config's task class says which table it is a
    row of, and the perplexity tables (of language models) do not get it."""
    for seed in range(2):
        task_job(tmp_path, f"a{seed}", task="copy", pos_enc="alibi", seed=seed, exact=[1.0, 0.9, 0.5, 0.1])
    config = {
        "job_name": "train",
        "seed": 0,
        "pos_enc_name": "fire",
        "pos_enc": {"_target_": "poslab.encodings.FIRE"},
        "task": {"_target_": "poslab.data.tasks.Copy", "seed": 0},
        "model": {"net": {"n_layer": 2, "n_embd": 64, "n_head": 4}},
    }
    diverged = build_results(
        run={"name": "fire-s0", "pos_enc": "fire", "seed": 0, "job": "train", "output_dir": "d0"},
        config=config,
        data=None,
        train={"steps": 40, "diverged_at_step": 40},
        extrapolation=[],
        status="diverged",
        error="loss is nan at step 40",
    )
    write_results(diverged, tmp_path / "d0")
    text = write_report(tmp_path).path.read_text()
    assert "## Perplexity" not in text and "## Results" not in text
    copy_table = text.split("### copy")[1].split("![")[0]
    assert "| fire |" in copy_table and "diverged" in copy_table
