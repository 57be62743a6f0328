"""The report on hand-made results.json files: grouping, averaging, labels, and every kind of job
that has no numbers (failed, diverged, killed, unreadable, fast_dev_run) listed, never dropped."""

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from poslab import report
from poslab.report import ReportCallback, main, write_report
from poslab.results import build_results, write_results

ENCODING_CONFIGS = {
    "rope": {"_target_": "poslab.encodings.RoPE", "n_embd": 32, "n_head": 2, "base": 10000.0},
    "rope_pi": {
        "_target_": "poslab.encodings.RoPEPositionInterpolation",
        "n_embd": 32,
        "n_head": 2,
        "train_length": 16,
        "base": 10000.0,
    },
    "alibi": {"_target_": "poslab.encodings.ALiBi", "n_head": 2},
    "learned": {"_target_": "poslab.encodings.Learned", "n_embd": 32, "max_length": 16},
}


def make_config(pos_enc: str, seed: int, folder: Path, settings: dict) -> dict:
    """A resolved config shaped like a real one; `settings` sets dotted keys."""
    config = {
        "task_name": "train",
        "seed": seed,
        "pos_enc_name": pos_enc,
        "run_group": "sweep-1",
        "tags": [pos_enc],
        "report_note": "Tiny models: qualitative differences only.",
        "data": {"corpus": {"_target_": "poslab.data.TextFilesCorpus", "cache_dir": None}, "context": 16},
        "model": {"net": {"n_layer": 1, "n_head": 2, "n_embd": 32}, "optimizer": {"lr": 0.001}},
        "pos_enc": json.loads(json.dumps(ENCODING_CONFIGS[pos_enc])),
        "trainer": {"max_steps": 4, "default_root_dir": str(folder)},
        "eval": {"protocol": "nonoverlapping", "num_tokens": 256},
        "paths": {"output_dir": str(folder)},
    }
    for key, value in settings.items():
        *parents, last = key.split(".")
        node = config
        for parent in parents:
            node = node.setdefault(parent, {})
        node[last] = value
    return config


def extrapolation_rows(scores: dict, context: int) -> list[dict]:
    """{eval_length: perplexity, or a row status such as "unsupported"} -> results rows."""
    rows = []
    for length, score in scores.items():
        ok = isinstance(score, float)
        rows.append(
            {
                "eval_length": length,
                "length_ratio": length / context,
                "protocol": "nonoverlapping",
                "status": "ok" if ok else score,
                "reason": None if ok else f"{score} at {length}",
                "tokens_scored": 240 if ok else 0,
                "bytes_scored": 240 if ok else 0,
                "loss": None,
                "ppl": score if ok else None,
                "bpb": None,
            }
        )
    return rows


def job(
    root: Path,
    folder: str,
    *,
    pos_enc: str = "rope",
    seed: int = 0,
    scores: dict | None = None,
    parameters: int = 1000,
    settings: dict | None = None,
    status: str = "ok",
    error: str | None = None,
    train: dict | None = None,
    run: dict | None = None,
) -> Path:
    """Write one job's results.json under root/folder, as a train job of a sweep would."""
    output_dir = root / folder
    config = make_config(pos_enc, seed, output_dir, settings or {})
    context = config["data"]["context"]
    scores = {16: 4.0, 32: 6.0} if scores is None else scores
    results = build_results(
        run={
            "name": f"{pos_enc}-s{seed}",
            "pos_enc": pos_enc,
            "seed": seed,
            "group": "sweep-1",
            "output_dir": str(output_dir),
            "task": "train",
            **(run or {}),
        },
        config=config,
        data={"corpus": "text_files", "sha256": "0123456789abcdef0123"},
        train={"steps": 4, "tokens": 256, "parameters": parameters, "train_context": context, **(train or {})},
        extrapolation=extrapolation_rows(scores, context),
        status=status,
        error=error,
        traceback_file=None if status == "ok" else "traceback.txt",
    )
    results["git"] = {"commit": "abcdef0123456789", "dirty": False}
    results["environment"] = {"device": "cpu (2 cores)"}
    return write_results(results, output_dir)


def eval_job(root: Path, folder: str, *, variant: str, checkpoint_run: str, seed: int, scores: dict) -> Path:
    """An eval run: the checkpoint's config scored under `variant`."""
    return job(
        root,
        folder,
        pos_enc=variant,
        seed=seed,
        scores=scores,
        settings={"task_name": "eval", "ckpt_path": f"/runs/{checkpoint_run}/checkpoints/last.ckpt"},
        run={
            "task": "eval",
            "variant": variant,
            "trained_as": "rope",
            "checkpoint_run": checkpoint_run,
            "ckpt_path": f"/runs/{checkpoint_run}/checkpoints/last.ckpt",
        },
    )


def table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("| ")]


def test_seeds_are_one_row_and_ratios_are_taken_per_run_then_averaged(tmp_path, capsys):
    job(tmp_path, "0_rope_s0", seed=0, scores={16: 4.0, 32: 6.0, 64: 10.0})
    job(tmp_path, "1_rope_s1", seed=1, scores={16: 8.0, 32: 8.0, 64: 12.0})
    job(tmp_path, "2_learned_s0", pos_enc="learned", parameters=1016, scores={16: 5.0, 32: "unsupported"})

    result = write_report(tmp_path)

    text = (tmp_path / "report.md").read_text()
    # at 32: mean perplexity (6 + 8) / 2 = 7; mean of the per-run ratios (6/4 + 8/8) / 2 = 1.25,
    # not the ratio of the means (7/6)
    assert table_lines(text) == [
        "| encoding | parameters | seeds | 16 | 32 | 64 |",
        "| learned | 1,016 | 1 | 5.00 (1.00x) | unsupported |  |",
        "| rope | 1,000 | 2 | 6.00 (1.00x) | 7.00 (1.25x) | 11.00 (2.00x) |",
    ]
    assert "- runs: 3 measured, in 2 rows; seeds: 0, 1" in text
    assert "- parameters varies: 1,016 (learned); 1,000 (rope)" in text
    assert "- training context: 16" in text
    assert "- training: 4 steps, 256 tokens" in text
    assert "- data: text_files, sha256 0123456789ab, byte-level" in text
    assert "- eval: protocol nonoverlapping, 240 held-out tokens scored at every length" in text
    assert "- code: git abcdef0123" in text
    assert "- encodings: learned, rope" in text
    assert "varies between rows" not in text  # the encodings' own keys differ, and the names say so
    assert "- learned at 32: unsupported: unsupported at 32" in text
    assert "## What this study can and cannot show\nTiny models: qualitative differences only." in text
    assert "![perplexity vs eval length](extrapolation.png)" in text
    assert result.path == tmp_path / "report.md" and result.problems == []
    assert result.plot == tmp_path / "extrapolation.png" and result.plot.read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "| rope | 1,000 | 2 |" in out and f"wrote {tmp_path / 'report.md'} and" in out


def test_runs_that_differ_in_a_setting_are_separate_rows_labelled_by_it(tmp_path):
    job(tmp_path, "0", settings={"model.optimizer.lr": 0.001}, scores={16: 4.0})
    job(tmp_path, "1", settings={"model.optimizer.lr": 1000.0}, scores={16: 9.0})

    text = write_report(tmp_path).path.read_text()

    assert table_lines(text)[1:] == [
        "| rope (model.optimizer.lr=0.001) | 1,000 | 1 | 4.00 (1.00x) |",
        "| rope (model.optimizer.lr=1000.0) | 1,000 | 1 | 9.00 (1.00x) |",
    ]
    assert "- varies between rows: model.optimizer.lr = 0.001, 1000.0" in text


def test_a_context_sweep_is_labelled_by_the_context_not_by_the_keys_that_follow_it(tmp_path):
    """rope_pi's train_length follows data.context: the label names the cause only."""
    for context in (16, 32):
        job(tmp_path, f"rope_{context}", settings={"data.context": context}, scores={context: 4.0})
        job(
            tmp_path,
            f"pi_{context}",
            pos_enc="rope_pi",
            settings={"data.context": context, "pos_enc.train_length": context},
            scores={context: 5.0},
        )

    text = write_report(tmp_path).path.read_text()

    assert [line.split(" | ")[0] for line in table_lines(text)[1:]] == [
        "| rope (data.context=16)",
        "| rope (data.context=32)",
        "| rope_pi (data.context=16)",
        "| rope_pi (data.context=32)",
    ]
    assert "- training context varies: 16 (rope (data.context=16), rope_pi (data.context=16)); 32 (" in text


def test_runs_of_one_encoding_that_differ_inside_it_are_labelled_by_its_keys(tmp_path):
    job(tmp_path, "0", scores={16: 4.0})
    job(tmp_path, "1", settings={"pos_enc.base": 500.0}, scores={16: 5.0})
    job(tmp_path, "2", pos_enc="alibi", scores={16: 6.0})

    text = write_report(tmp_path).path.read_text()

    assert [line.split(" | ")[0] for line in table_lines(text)[1:]] == [
        "| alibi",
        "| rope (pos_enc.base=500.0)",
        "| rope (pos_enc.base=10000.0)",
    ]


def test_eval_runs_are_labelled_by_checkpoint_and_variant(tmp_path):
    one = tmp_path / "one_checkpoint"
    eval_job(one, "a", variant="rope_pi", checkpoint_run="2026-11-29_10-00-00_rope_ab12", seed=0, scores={16: 4.0})
    eval_job(one, "b", variant="rope", checkpoint_run="2026-11-29_10-00-00_rope_ab12", seed=0, scores={16: 4.0})
    # checkpoints that differ only in their seed are seeds of one experiment
    seeds = tmp_path / "two_seeds"
    eval_job(seeds, "a", variant="rope_pi", checkpoint_run="ck_seed0", seed=0, scores={16: 4.0, 32: 5.0})
    eval_job(seeds, "b", variant="rope_pi", checkpoint_run="ck_seed1", seed=1, scores={16: 6.0, 32: 6.0})

    one_text = write_report(one).path.read_text()
    seeds_text = write_report(seeds).path.read_text()

    assert table_lines(one_text)[1:] == [
        "| rope on rope checkpoint (2026-11-29_10-00-00_rope_ab12) | 1,000 | 1 | 4.00 (1.00x) |",
        "| rope_pi on rope checkpoint (2026-11-29_10-00-00_rope_ab12) | 1,000 | 1 | 4.00 (1.00x) |",
    ]
    assert table_lines(seeds_text)[1:] == ["| rope_pi on rope checkpoints | 1,000 | 2 | 5.00 (1.00x) | 5.50 (1.12x) |"]
    assert "- checkpoints of rope_pi on rope checkpoints: ck_seed0 (seed 0), ck_seed1 (seed 1)" in seeds_text


def test_fast_dev_run_jobs_are_left_out_with_a_note(tmp_path):
    job(tmp_path, "0_rope_s0")
    job(tmp_path, "1_alibi_s0", pos_enc="alibi", settings={"trainer.fast_dev_run": True})

    text = write_report(tmp_path).path.read_text()

    assert [line.split(" | ")[0] for line in table_lines(text)[1:]] == ["| rope"]
    assert "Left out of the table: 1 fast_dev_run job(s), which check wiring: 1_alibi_s0." in text


def test_unreadable_results_are_listed_with_the_reason(tmp_path):
    job(tmp_path, "0_rope_s0")
    good = job(tmp_path, "1_rope_s1", seed=1).read_text()
    (tmp_path / "2_truncated").mkdir()
    (tmp_path / "2_truncated" / "results.json").write_text(good[: good.index('"extrapolation"')])
    (tmp_path / "3_nan").mkdir()
    (tmp_path / "3_nan" / "results.json").write_text(good.replace('"ppl": 4.0', '"ppl": NaN'))
    (tmp_path / "4_other").mkdir()
    (tmp_path / "4_other" / "results.json").write_text(json.dumps({"schema": "other/1"}))

    result = write_report(tmp_path)

    # where the file breaks off (line and column) depends on the length of tmp_path
    assert result.problems[0].startswith(
        "2_truncated/results.json: unreadable: not valid JSON: Expecting property name enclosed in double quotes: line "
    )
    assert result.problems[1:] == [
        "3_nan/results.json: unreadable: non-standard JSON number NaN",
        "4_other/results.json: unreadable: schema 'other/1' is not 'poslab.results/2'",
    ]
    text = result.path.read_text()
    assert "## Problems\n- 2_truncated/results.json: unreadable: not valid JSON: Expecting" in text
    assert "- 3_nan/results.json: unreadable: non-standard JSON number NaN" in text
    assert table_lines(text)[1] == "| rope | 1,000 | 2 | 4.00 (1.00x) | 6.00 (1.50x) |"


def test_failed_and_diverged_jobs_are_rows_and_problems_never_numbers(tmp_path):
    job(tmp_path, "0_rope_s0", seed=0, scores={16: 4.0, 32: 6.0})
    job(
        tmp_path,
        "1_rope_s1",
        seed=1,
        scores={16: "non_finite", 32: "non_finite"},
        status="diverged",
        error="DivergedError: training diverged: the loss is nan at step 12",
        train={"diverged_at_step": 12},
    )
    # failed before its config resolved: the unresolved value must not label the rows
    job(
        tmp_path,
        "2_alibi_s0",
        pos_enc="alibi",
        scores={},
        settings={"model.net.n_embd": "${oops}"},
        status="failed",
        error="InterpolationResolutionError: oops",
    )

    result = write_report(tmp_path)

    text = result.path.read_text()
    assert table_lines(text)[1:] == [
        "| alibi | 1,000 | seed 0 | failed |  |",
        "| rope | 1,000 | 1 | 4.00 (1.00x) | 6.00 (1.50x) |",
        "| rope | 1,000 | seed 1 | diverged at step 12 |  |",
    ]
    assert "nan" not in "\n".join(table_lines(text)).lower()
    assert result.problems == [
        "1_rope_s1: diverged at step 12: DivergedError: training diverged: the loss is nan at step 12 "
        "(traceback: 1_rope_s1/traceback.txt)",
        "2_alibi_s0: failed: InterpolationResolutionError: oops (traceback: 2_alibi_s0/traceback.txt)",
    ]
    assert "- runs: 1 measured, in 1 rows; seeds: 0; 2 failed or diverged (see Problems)" in text
    assert "## Problems\n- 1_rope_s1: diverged at step 12: DivergedError" in text


def test_a_folder_of_diverged_and_non_finite_runs_writes_a_report_without_a_plot(tmp_path):
    (tmp_path / "extrapolation.png").write_bytes(b"an earlier report's plot")
    job(tmp_path, "0_rope_s0", scores={16: "non_finite", 32: "non_finite"})
    job(tmp_path, "1_alibi_s0", pos_enc="alibi", scores={}, status="diverged", train={"diverged_at_step": 3})

    result = write_report(tmp_path)

    text = result.path.read_text()
    assert table_lines(text)[1:] == [
        "| alibi | 1,000 | seed 0 | diverged at step 3 |  |",
        "| rope | 1,000 | 1 | non-finite | non-finite |",
    ]
    assert (
        "No plot: no run has a finite perplexity at any eval length; "
        "the extrapolation.png of an earlier report was removed." in text
    )
    assert result.plot is None and not (tmp_path / "extrapolation.png").exists()


def test_only_failed_jobs_still_give_a_table(tmp_path):
    job(tmp_path, "0_rope_s0", scores={}, status="diverged", train={"diverged_at_step": 3})

    text = write_report(tmp_path).path.read_text()

    assert table_lines(text) == [
        "| encoding | parameters | seeds | result |",
        "| rope | 1,000 | seed 0 | diverged at step 3 |",
    ]
    assert "No plot: no run has a finite perplexity at any eval length." in text


def test_a_row_without_any_finite_point_does_not_stop_the_plot(tmp_path):
    job(tmp_path, "0_rope_s0", scores={16: 4.0, 32: 5.0})
    job(tmp_path, "1_alibi_s0", pos_enc="alibi", scores={16: "non_finite", 32: "out_of_memory"})

    result = write_report(tmp_path)

    assert result.plot.stat().st_size > 1000
    assert table_lines(result.path.read_text())[1] == "| alibi | 1,000 | 1 | non-finite | out of memory |"


def test_a_seed_without_a_value_is_named_in_the_cell(tmp_path):
    job(tmp_path, "0", seed=0, scores={16: 4.0, 32: 6.0})
    job(tmp_path, "1", seed=1, scores={16: 8.0, 32: "out_of_memory"})

    text = write_report(tmp_path).path.read_text()

    assert table_lines(text)[1] == "| rope | 1,000 | 2 | 6.00 (1.00x) | 6.00 (1.50x); seed 1: out of memory |"


def test_job_folders_without_results_are_listed(tmp_path, capsys):
    job(tmp_path, "0_rope_s0")
    (tmp_path / "1_alibi_s0" / ".hydra").mkdir(parents=True)

    result = write_report(tmp_path)

    assert result.problems == ["1_alibi_s0: no results.json (killed, or still running)"]
    assert "## Problems\n- 1_alibi_s0: no results.json (killed, or still running)" in result.path.read_text()

    killed_only = tmp_path / "killed_sweep"
    (killed_only / "0_rope_s0" / ".hydra").mkdir(parents=True)
    nothing = write_report(killed_only)
    assert nothing.path is None and nothing.problems == ["0_rope_s0: no results.json (killed, or still running)"]


def test_reused_and_resumed_jobs_are_listed(tmp_path):
    job(tmp_path, "0_rope_s0", run={"reused_at": ["2026-11-29T10:00:00+00:00", "2026-11-30T09:00:00+00:00"]})
    job(tmp_path, "1_alibi_s0", pos_enc="alibi", run={"resumed_from_step": 100})

    text = write_report(tmp_path).path.read_text()

    assert (
        "## Reused and resumed jobs\n"
        "- reused: 0_rope_s0 (at 2026-11-29T10:00:00+00:00, 2026-11-30T09:00:00+00:00)\n"
        "- resumed from step 100: 1_alibi_s0\n"
    ) in text


def test_the_callback_keeps_the_sweep_problems_and_never_raises(tmp_path, capsys, monkeypatch):
    job(tmp_path, "0_rope_s0", status="failed", scores={}, error="RuntimeError: boom")
    sweep = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})

    ReportCallback().on_multirun_end(sweep)

    assert report.LAST_SWEEP_PROBLEMS == ["0_rope_s0: failed: RuntimeError: boom (traceback: 0_rope_s0/traceback.txt)"]
    assert "1 problem(s) in" in capsys.readouterr().out

    def broken(root):
        raise RuntimeError("disk full")

    empty = tmp_path / "empty_sweep"
    empty.mkdir()
    ReportCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(empty)}}}))
    assert report.LAST_SWEEP_PROBLEMS == [f"{empty}: no results.json"]

    monkeypatch.setattr(report, "write_report", broken)
    ReportCallback().on_multirun_end(sweep)
    assert report.LAST_SWEEP_PROBLEMS == [f"{tmp_path}: the report could not be written: disk full"]


def test_report_command_exit_status(tmp_path, capsys):
    job(tmp_path / "sweep", "0_rope_s0", status="failed", scores={}, error="RuntimeError: boom")
    main([str(tmp_path / "sweep")])  # returns: a report that lists failures is still a report
    assert "0_rope_s0: failed: RuntimeError: boom" in capsys.readouterr().out

    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as no_results:
        main([str(tmp_path / "empty")])
    assert no_results.value.code == 1

    with pytest.raises(SystemExit) as not_a_folder:
        main([str(tmp_path / "missing")])
    assert not_a_folder.value.code == 2
