"""What reaches wandb: extrap/* metrics stepped by eval length, a series per protocol, per-ratio
summaries, per-position loss plots, the tables, and the passkey grid."""

from pytorch_lightning.loggers import CSVLogger, WandbLogger

from poslab.evaluation.protocols import ExtrapolationRow
from poslab.records.console import format_passkey
from poslab.records.loggers import log_extrapolation


class RecordingRun:
    """Stands in for a wandb run and keeps what it is given."""

    def __init__(self):
        self.step_metrics, self.logged, self.summary = {}, [], {}

    def define_metric(self, name, step_metric=None, **kwargs):
        self.step_metrics[name] = step_metric

    def log(self, data, **kwargs):
        self.logged.append(data)

    def logged_under(self, key):
        return [d[key] for d in self.logged if key in d]


def per_position(length, loss):
    return {"bin_start": [0, 1], "bin_end": [1, length], "mean_loss": [loss + 1, loss], "tokens": [4, 508]}


def rows():
    def row(length, protocol, ppl, stride, status="ok"):
        ok = status == "ok"
        return ExtrapolationRow(
            length,
            length / 128,
            protocol,
            status,
            reason=None if ok else "max_length=128",
            tokens_scored=512 if ok else 0,
            loss=1.0 if ok else None,
            ppl=ppl,
            bpb=1.44 if ok else None,
            stride=stride,
            per_position=per_position(length, 1.0) if ok else None,
        )

    return [
        row(128, "nonoverlapping", 8.0, 128),
        row(256, "nonoverlapping", 8.5, 256),
        row(512, "nonoverlapping", 9.5, 512),
        row(1024, "nonoverlapping", None, 1024, "unsupported"),
        row(128, "sliding", 7.5, 64),
        row(256, "sliding", 7.9, 64),
        row(512, "sliding", 8.1, 64),
        row(1024, "sliding", None, 64, "unsupported"),
    ]


PASSKEY = {
    "lengths": [128, 256, 512],
    "depths": [0.0, 0.5, 1.0],
    "trials": 20,
    "seed": 0,
    "train_context": 128,
    "threshold": 0.2,
    "accuracy": [[1.0, 1.0, 0.95], [0.5, 0.25, 0.2], [0.0, 0.05, 0.1]],
    "status": [["ok"] * 3] * 3,
    "reasons": {},
    "effective_window": 256,
    "in_length_accuracy": 0.9833,
    "trained_with_mix": 0.5,
    "variant": "rope",
}


def test_extrapolation_metrics_use_eval_length_as_step(tmp_path):
    run = RecordingRun()
    log_extrapolation([WandbLogger(experiment=run), CSVLogger(tmp_path)], rows())

    for metric in ("ppl", "loss", "bpb"):
        for name in (f"extrap/{metric}", f"extrap/nonoverlapping/{metric}", f"extrap/sliding/{metric}"):
            assert run.step_metrics[name] == "extrap/eval_length"
    points = [d for d in run.logged if "extrap/eval_length" in d]
    assert [d["extrap/eval_length"] for d in points] == [128, 256, 512]  # 1024: nothing to plot
    # one point per length with every protocol; extrap/ppl is the nonoverlapping protocol's
    assert [(d["extrap/ppl"], d["extrap/nonoverlapping/ppl"], d["extrap/sliding/ppl"]) for d in points] == [
        (8.0, 8.0, 7.5),
        (8.5, 8.5, 7.9),
        (9.5, 9.5, 8.1),
    ]
    assert run.summary["extrap/ppl@1x"] == 8.0 and run.summary["extrap/ppl@4x"] == 9.5
    assert run.summary["extrap/nonoverlapping/ppl@4x"] == 9.5 and run.summary["extrap/sliding/ppl@4x"] == 8.1
    assert run.summary["extrap/bpb@4x"] == 1.44 and run.summary["extrap/sliding/bpb@2x"] == 1.44
    assert run.summary["extrap/ppl@8x"] is None and run.summary["extrap/sliding/ppl@8x"] is None  # unsupported
    # 8.5 <= 1.1 x 8.0 but 9.5 is not; sliding: 8.1 <= 1.1 x 7.5
    assert run.summary["extrap/max_len_within_10pct"] == 256
    assert run.summary["extrap/nonoverlapping/max_len_within_10pct"] == 256
    assert run.summary["extrap/sliding/max_len_within_10pct"] == 512
    (table,) = run.logged_under("extrap/table")
    assert len(table.data) == 8 and table.columns[:5] == ["eval_length", "length_ratio", "protocol", "stride", "status"]
    assert table.data[3][4] == "unsupported" and table.data[4][2:4] == ["sliding", 64]
    (bins,) = run.logged_under("extrap/per_position_table")
    assert bins.columns == ["protocol", "eval_length", "bin_start", "bin_end", "mean_loss", "tokens"]
    assert len(bins.data) == 6 * 2 and bins.data[0] == ["nonoverlapping", 128, 0, 1, 2.0, 4]
    for protocol in ("nonoverlapping", "sliding"):
        (plot,) = run.logged_under(f"extrap/{protocol}/per_position")
        assert sorted(set(plot.table.get_column("lineKey"))) == ["length 128", "length 256", "length 512"]
        assert plot.table.data[:2] == [[1, "length 128", 2.0], [128, "length 128", 1.0]]  # loss at the end of each bin
    assert not run.logged_under("passkey/table")


def test_passkey_grid_reaches_wandb_as_table_heatmap_and_summaries():
    import wandb

    run = RecordingRun()
    log_extrapolation([WandbLogger(experiment=run)], rows()[:1], PASSKEY)
    (table,) = run.logged_under("passkey/table")
    assert table.columns == ["eval_length", "length_ratio", "depth", "accuracy", "status", "trials"]
    assert len(table.data) == 9 and table.data[4] == [256, 2.0, 0.5, 0.25, "ok", 20]
    (heatmap,) = run.logged_under("passkey/heatmap")
    assert isinstance(heatmap, wandb.Image)
    assert run.summary["passkey/effective_window"] == 256 and run.summary["passkey/in_length_accuracy"] == 0.9833
    assert run.summary["passkey/accuracy@1x"] == (1.0 + 1.0 + 0.95) / 3
    assert run.summary["passkey/accuracy@4x"] == (0.0 + 0.05 + 0.1) / 3


def test_passkey_grid_on_the_console():
    text = format_passkey(PASSKEY)
    assert text.splitlines()[1].split() == ["128", "100%", "100%", "95%"]
    assert "effective window 256" in text


def test_ratio_to_in_length_perplexity_and_loss_by_position_reach_wandb():
    run = RecordingRun()
    log_extrapolation([WandbLogger(experiment=run)], rows())

    assert run.step_metrics["extrap/ppl_ratio"] == "extrap/eval_length"
    assert run.step_metrics["extrap/sliding/position_loss@*"] == "extrap/position"
    points = [d for d in run.logged if "extrap/eval_length" in d]
    # each length's perplexity over the same protocol's perplexity at 128
    assert [d["extrap/ppl_ratio"] for d in points] == [1.0, 8.5 / 8.0, 9.5 / 8.0]
    assert [d["extrap/sliding/ppl_ratio"] for d in points] == [1.0, 7.9 / 7.5, 8.1 / 7.5]
    assert run.summary["extrap/ppl_ratio@4x"] == 9.5 / 8.0 and run.summary["extrap/sliding/ppl_ratio@2x"] == 7.9 / 7.5
    assert run.summary["extrap/ppl_ratio@8x"] is None  # unsupported there: no ratio
    # loss by position: one point per bin end, each length its own metric
    by_position = [d for d in run.logged if "extrap/position" in d]
    assert [d["extrap/position"] for d in by_position] == [1, 128, 256, 512] * 2
    assert by_position[0] == {
        "extrap/position": 1,
        **{f"{p}/position_loss@{n}x": 2.0 for p in ("extrap", "extrap/nonoverlapping") for n in (1, 2, 4)},
    }
    assert by_position[1]["extrap/position_loss@1x"] == 1.0 and "extrap/position_loss@2x" not in by_position[1]


def test_task_accuracy_reaches_wandb_against_input_length():
    from poslab.records.loggers import log_task

    run = RecordingRun()
    rows = [
        {"length": 10, "length_ratio": 1.0, "sequence_length": 21, "status": "ok", "examples": 200,
         "exact_match": 0.98, "token_accuracy": 0.999, "reason": None},
        {"length": 20, "length_ratio": 2.0, "sequence_length": 41, "status": "unsupported", "examples": 0,
         "exact_match": None, "token_accuracy": None, "reason": "max_length=21"},
    ]  # fmt: skip
    log_task([WandbLogger(experiment=run)], {"name": "copy", "rows": rows})
    assert run.step_metrics["task/exact_match"] == run.step_metrics["task/copy/token_accuracy"] == "task/length"
    (point,) = [d for d in run.logged if "task/length" in d]  # the unsupported length has no point
    assert point == {
        "task/length": 10,
        "task/exact_match": 0.98,
        "task/token_accuracy": 0.999,
        "task/copy/exact_match": 0.98,
        "task/copy/token_accuracy": 0.999,
    }
    assert run.summary["task/exact_match@1x"] == 0.98 and run.summary["task/copy/exact_match@2x"] is None
    (table,) = run.logged_under("task/table")
    assert table.data[1][3] == "unsupported"
