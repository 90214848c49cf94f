"""glm.tasks.evaluation.finish_evaluation in one process: the epoch-end choreography every evaluation task
shares (sanity check skipped, records gathered by example index, metrics logged, rank 0's files written)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch

from glm.tasks.evaluation import EvaluationReport, finish_evaluation


class Recording(L.LightningModule):
    """Validates on batches of (example index, value); the epoch end reports the mean value per example,
    a file listing the examples and a rank-0 side effect."""

    def __init__(self, out: Path, skip_if_empty: bool = True) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.out, self.skip_if_empty = out, skip_if_empty
        self.records: list[tuple[int, float]] = []
        self.reports: list[list[tuple[int, float]]] = []  # what report() was given, per epoch end
        self.rank_zero_calls = 0

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.layer(batch["value"][:, None]).sum()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.records.extend(zip(batch["example_index"].tolist(), batch["value"].tolist(), strict=True))

    def _report(self, records: list[tuple[int, float]]) -> EvaluationReport:
        self.reports.append(records)
        values = [v for _, v in records]

        def count() -> None:
            self.rank_zero_calls += 1

        return EvaluationReport(
            metrics={"val/mean": sum(values) / len(values), "val/num": float(len(values))},
            prog_bar=["val/mean"],
            files={"sub/examples.json": json.dumps([i for i, _ in records])},
            on_rank_zero=count,
        )

    def on_validation_epoch_end(self) -> None:
        records, self.records = self.records, []
        finish_evaluation(
            self,
            records,
            index=lambda r: r[0],
            report=self._report,
            output_dir=self.out,
            skip_if_empty=self.skip_if_empty,
        )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def _batches(indices: list[list[int]]) -> torch.utils.data.DataLoader:
    # the value of example i is 10 * i: a repeated example (a padding sampler) carries the same value
    batches = [
        {"example_index": torch.tensor(ix), "value": torch.tensor([10.0 * i for i in ix])} for ix in indices
    ]
    return torch.utils.data.DataLoader(batches, batch_size=None)


def test_records_are_gathered_once_per_example_logged_and_written(tmp_path: Path) -> None:
    module = Recording(tmp_path / "run")
    # the order a sampler interleaves, with example 2 repeated as padding
    loader = _batches([[3, 0], [2, 1], [2]])
    metrics = _trainer().validate(module, dataloaders=loader, verbose=False)[0]
    assert module.reports == [[(0, 0.0), (1, 10.0), (2, 20.0), (3, 30.0)]]  # each example once, index order
    assert metrics["val/mean"] == 15.0 and metrics["val/num"] == 4.0
    assert json.loads((tmp_path / "run" / "sub" / "examples.json").read_text()) == [0, 1, 2, 3]
    assert module.rank_zero_calls == 1


def test_sanity_check_is_skipped(tmp_path: Path) -> None:
    module = Recording(tmp_path / "run")
    train = _batches([[0]])
    val = _batches([[1, 0], [2]])
    _trainer(max_steps=1, num_sanity_val_steps=1, limit_val_batches=2).fit(module, train, val)
    # the sanity check saw batch [1, 0] only and reported nothing; the one real validation saw all
    assert module.reports == [[(0, 0.0), (1, 10.0), (2, 20.0)]]
    assert module.rank_zero_calls == 1


def test_nothing_to_report(tmp_path: Path) -> None:
    module = Recording(tmp_path / "run")
    module.validation_step = lambda batch, batch_idx: None  # records nothing
    _trainer().validate(module, dataloaders=_batches([[0]]), verbose=False)
    assert module.reports == [] and module.rank_zero_calls == 0
    assert not (tmp_path / "run").exists()
    # skip_if_empty=False: the report runs on no records (e.g. an empty submission file)
    module = Recording(tmp_path / "run", skip_if_empty=False)
    module.validation_step = lambda batch, batch_idx: None
    module._report = lambda records: EvaluationReport(files={"empty.jsonl": ""})
    _trainer().validate(module, dataloaders=_batches([[0]]), verbose=False)
    assert (tmp_path / "run" / "empty.jsonl").read_text() == ""
