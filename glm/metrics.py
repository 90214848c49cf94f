"""Task metrics, built on torchmetrics.

SuperGLUE (values in [0, 1]):
- `acc` for every classification task (MulticlassAccuracy, micro),
- CB: `f1` = macro F1 over the three classes (MulticlassF1Score) plus `acc`,
- MultiRC: `f1a` = binary F1 over all answer options, `em` = fraction of questions whose answer options
  are all predicted correctly (`GroupedExactMatch`), plus `acc` over answers,
- ReCoRD: `f1` / `em` = token F1 / exact match of the predicted entity, each the max over the gold
  answers, with the official SQuAD normalisation (torchmetrics' `squad`), averaged over queries.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import BinaryF1Score, MulticlassAccuracy, MulticlassF1Score
from torchmetrics.functional.text import squad

__all__ = ["GroupedExactMatch", "ReCoRDMetric", "SuperGLUEMetrics", "squad_em_f1"]


class GroupedExactMatch(Metric):
    """Fraction of groups (e.g. MultiRC questions) whose items are all predicted correctly."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("groups", default=[], dist_reduce_fx="cat")
        self.add_state("correct", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor, groups: Tensor) -> None:
        """preds/target: class ids [N]; groups: integer group id per item [N]."""
        self.groups.append(groups.long().flatten())
        self.correct.append((preds == target).long().flatten())

    def compute(self) -> Tensor:
        if not self.groups:
            return torch.tensor(float("nan"))
        groups = torch.cat(self.groups) if isinstance(self.groups, list) else self.groups
        correct = torch.cat(self.correct) if isinstance(self.correct, list) else self.correct
        _, inverse = torch.unique(groups, return_inverse=True)
        n = int(inverse.max()) + 1
        wrong = torch.zeros(n, dtype=torch.long, device=correct.device).index_add_(0, inverse, 1 - correct)
        return (wrong == 0).float().mean()


def squad_em_f1(prediction: str, golds: list[str]) -> tuple[float, float]:
    """(EM, token F1) of one prediction, each the max over `golds`, in [0, 1] (SQuAD normalisation)."""
    if not golds:
        raise ValueError("squad_em_f1 needs at least one gold answer")
    out = squad(
        [{"prediction_text": prediction, "id": "0"}],
        [{"answers": {"answer_start": [0] * len(golds), "text": list(golds)}, "id": "0"}],
    )
    return float(out["exact_match"]) / 100.0, float(out["f1"]) / 100.0


class ReCoRDMetric(Metric):
    """Mean over queries of max-over-golds EM and token F1 (strings in, per-query scores kept as state)."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("em", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("f1", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: list[str], golds: list[list[str]]) -> None:
        for p, g in zip(preds, golds, strict=True):
            em, f1 = squad_em_f1(p, g)
            self.em += em
            self.f1 += f1
            self.n += 1

    def compute(self) -> dict[str, Tensor]:
        n = self.n.clamp(min=1).double()
        return {"em": (self.em / n).float(), "f1": (self.f1 / n).float()}


class SuperGLUEMetrics(nn.Module):
    """The metric set of one SuperGLUE task; `compute()` returns `{"acc": ..., "f1": ..., ...}` floats."""

    def __init__(self, task: str, num_classes: int, **metric_kwargs: Any) -> None:
        """`metric_kwargs` go to every torchmetrics metric (e.g. `sync_on_compute=False` when each process
        already updates with the examples of all processes)."""
        super().__init__()
        self.task = task.lower()
        self.num_classes = num_classes
        if self.task == "record":
            self.record = ReCoRDMetric(**metric_kwargs)
            return
        self.acc = MulticlassAccuracy(num_classes=max(num_classes, 2), average="micro", **metric_kwargs)
        if self.task == "cb":
            self.f1 = MulticlassF1Score(num_classes=num_classes, average="macro", **metric_kwargs)
        if self.task == "multirc":
            self.f1a = BinaryF1Score(**metric_kwargs)
            self.em = GroupedExactMatch(**metric_kwargs)

    def update(
        self,
        preds: Tensor | None = None,
        target: Tensor | None = None,
        groups: Tensor | None = None,
        pred_texts: list[str] | None = None,
        gold_texts: list[list[str]] | None = None,
    ) -> None:
        """Class-id predictions/targets (and MultiRC question ids), or ReCoRD strings."""
        if self.task == "record":
            self.record.update(pred_texts or [], gold_texts or [])
            return
        self.acc.update(preds, target)
        if self.task == "cb":
            self.f1.update(preds, target)
        if self.task == "multirc":
            if groups is None:
                raise ValueError("MultiRC metrics need the question id of every answer (groups)")
            self.f1a.update(preds, target)
            self.em.update(preds, target, groups)

    def compute(self) -> dict[str, float]:
        if self.task == "record":
            return {k: float(v) for k, v in self.record.compute().items()}
        out = {"acc": float(self.acc.compute())}
        if self.task == "cb":
            out["f1"] = float(self.f1.compute())
        if self.task == "multirc":
            out["f1a"] = float(self.f1a.compute())
            out["em"] = float(self.em.compute())
        return out

    def reset(self) -> None:
        for m in self.children():
            m.reset()
