"""What reaches wandb: extrap/* metrics stepped by eval length, per-ratio summaries, the table."""

from pytorch_lightning.loggers import CSVLogger, WandbLogger

from poslab.evaluate import ExtrapolationRow
from poslab.tracking import log_extrapolation


class RecordingRun:
    """Stands in for a wandb run and keeps what it is given."""

    def __init__(self):
        self.step_metrics, self.logged, self.summary = {}, [], {}

    def define_metric(self, name, step_metric=None, **kwargs):
        self.step_metrics[name] = step_metric

    def log(self, data, **kwargs):
        self.logged.append(data)


def test_extrapolation_metrics_use_eval_length_as_step(tmp_path):
    run = RecordingRun()
    rows = [
        ExtrapolationRow(128, 1.0, "nonoverlapping", "ok", tokens_scored=512, loss=2.0, ppl=7.39, bpb=2.89),
        ExtrapolationRow(512, 4.0, "nonoverlapping", "ok", tokens_scored=512, loss=2.1, ppl=8.17, bpb=3.03),
        ExtrapolationRow(1024, 8.0, "nonoverlapping", "unsupported", reason="max_length=128"),
    ]
    log_extrapolation([WandbLogger(experiment=run), CSVLogger(tmp_path)], rows)

    for metric in ("extrap/ppl", "extrap/loss", "extrap/bpb"):
        assert run.step_metrics[metric] == "extrap/eval_length"
    points = [d for d in run.logged if "extrap/ppl" in d]
    assert [(d["extrap/eval_length"], d["extrap/ppl"]) for d in points] == [(128, 7.39), (512, 8.17)]
    assert run.summary["extrap/ppl@1x"] == 7.39 and run.summary["extrap/ppl@4x"] == 8.17
    assert run.summary["extrap/ppl@8x"] is None  # unsupported: present, but no number
    (table,) = [d["extrap/table"] for d in run.logged if "extrap/table" in d]
    assert len(table.data) == 3 and table.data[2][3] == "unsupported"
