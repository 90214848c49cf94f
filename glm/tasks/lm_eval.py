"""Zero-shot LM evaluation (docs/original-glm.md §10): LAMBADA accuracy and perplexity over overlapping windows.

Both read "scored samples" from `glm.data.lm_eval.LMEvalDataModule`: one forward pass per batch, then
per sample the summed cross-entropy over the scored slots and whether the argmax equals the target at
every scored slot. Those per-sample results are kept with the sample's index and gathered from every
rank at the epoch end (`glm.tasks.evaluation.finish_evaluation`): under several processes each rank scores
its share, and the metrics are those of one process. LAMBADA logs `{stage}/acc` (and `{stage}/loss`, mean
CE per answer token); perplexity logs `{stage}/loss` (average per scored token), `{stage}/ppl` and
`{stage}/adjusted_ppl` (per original word, docs/original-glm.md §10.2); `glm.run.pipeline.run` writes them to `metrics.json`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from glm.compat import attached_trainer
from glm.data.lm_eval import perplexity
from glm.errors import ConfigError
from glm.tasks.base import GLMTaskModule
from glm.tasks.evaluation import EvaluationReport, finish_evaluation


def score_samples(logits: Tensor, targets: Tensor, loss_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per row: summed CE over the scored slots (float64), number of scored slots, all-argmax-correct."""
    sel = loss_mask > 0
    ce = torch.zeros(logits.shape[:2], dtype=torch.float64, device=logits.device)
    picked = logits[sel].double()
    ce[sel] = F.cross_entropy(picked, targets[sel], reduction="none")
    wrong = torch.zeros(sel.shape, dtype=torch.bool, device=logits.device)
    wrong[sel] = picked.argmax(-1) != targets[sel]
    return ce.sum(1), sel.sum(1), ~wrong.any(1)


def check_positions(config: Any, largest: int, key: str) -> None:
    """A learned position table has `max_sequence_length + 1` rows (docs/original-glm.md §1.1): refuse larger position ids
    before the forward pass (which would fail deep inside `F.embedding`), naming the config key to change.
    Start-up validation (`glm.run.validation.check_positions`) refuses such lengths from the config first;
    this is the check on the samples themselves."""
    limit = int(config.max_sequence_length)
    if getattr(config, "position_encoding", "learned") == "learned" and largest > limit:
        raise ConfigError(
            f"{key}: the samples need position ids up to {largest}, but the model's position table stops at "
            f"model.max_sequence_length={limit}; lower {key} (or use a model with longer positions)"
        )


class LMEvalModule(GLMTaskModule):
    """Evaluation-only module (`run.py ... stages=[test]` or `[validate]`); the datamodule's `kind` picks
    the metric. It takes no optimizer or scheduler (there is nothing to train): a `fit` stage is refused
    with a clear error in `setup`. Counts and losses are summed over the samples of every rank, each once."""

    def __init__(self, model: dict, pretrained: str | None = None, compile: bool = False) -> None:
        super().__init__(model=model, optimizer=None, scheduler=None, pretrained=pretrained, compile=compile)
        self._reset()

    def setup(self, stage: str) -> None:
        if stage == "fit":
            raise RuntimeError(
                "LMEvalModule only evaluates (zero-shot LAMBADA / perplexity): use stages=[test] or "
                f"stages=[validate], not {stage!r}"
            )
        dm = getattr(attached_trainer(self), "datamodule", None)
        if dm is not None and getattr(dm, "samples", None):
            check_positions(
                self.glm_config, max(int(s.position_ids.max()) for s in dm.samples), "data.seq_length"
            )

    def configure_optimizers(self) -> Any:  # never reached (setup refuses fit); keeps the base's AdamW out
        raise RuntimeError("LMEvalModule has no optimizer: it only evaluates")

    def _reset(self) -> None:
        # per scored sample of this rank: (index in the split, summed CE, scored slots, all argmax correct)
        self._records: list[tuple[int, float, int, bool]] = []

    def _step(self, batch: dict[str, Tensor]) -> None:
        logits = self.model(batch["input_ids"], batch["position_ids"], sep=batch["sep"]).logits
        ce, count, correct = score_samples(logits, batch["targets"], batch["loss_mask"])
        if "example_index" in batch:
            index = batch["example_index"].tolist()
        else:  # a batch built without the datamodule: one process, samples numbered in the order seen
            start = len(self._records)
            index = list(range(start, start + ce.shape[0]))
        self._records.extend(zip(index, ce.tolist(), count.tolist(), correct.tolist(), strict=True))

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch)

    def compute(self, records: list[tuple[int, float, int, bool]]) -> dict[str, float]:
        """The metrics of the records of every rank, each sample once (see the module docstring).
        `math.fsum` makes the loss sum independent of the order and of how samples were batched."""
        loss = math.fsum(r[1] for r in records)
        count = sum(int(r[2]) for r in records)
        dm = self.trainer.datamodule
        if dm.kind == "lambada":
            # loss: mean CE per answer token (a sanity number next to the accuracy; ln V for a random model)
            samples = len(records)
            return {
                "acc": sum(bool(r[3]) for r in records) / max(samples, 1),
                "loss": loss / max(count, 1),
                "num_samples": float(samples),
            }
        # every token but the first of the document is scored once: count == num_tokens - 1 (docs/original-glm.md §10.2)
        num_tokens = count + 1
        if dm.num_tokens and num_tokens != dm.num_tokens:
            raise RuntimeError(
                f"perplexity: scored {num_tokens - 1} tokens of a {dm.num_tokens}-token document "
                "(each token but the first must be scored exactly once; limit_test_batches?)"
            )
        words = dm.num_original_words or num_tokens
        r = perplexity(loss, num_tokens, words)
        return {
            "loss": r.avg_loss,
            "ppl": r.ppl,
            "adjusted_ppl": r.adjusted_ppl,
            "num_tokens": float(num_tokens),
        }

    def _finish(self, stage: str) -> None:
        records = self._records
        self._reset()
        finish_evaluation(
            self, records, index=lambda r: r[0], report=lambda gathered: self._report(stage, gathered)
        )

    def _report(self, stage: str, records: list[tuple[int, float, int, bool]]) -> EvaluationReport:
        # the pipeline writes these to metrics.json; float64 keeps every digit
        values = self.compute(records)
        return EvaluationReport(
            metrics={f"{stage}/{k}": torch.tensor(v, dtype=torch.float64) for k, v in values.items()}
        )

    def on_validation_epoch_end(self) -> None:
        self._finish("val")

    def on_test_epoch_end(self) -> None:
        self._finish("test")
