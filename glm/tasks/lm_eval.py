"""Zero-shot LM evaluation (spec §10): LAMBADA accuracy and perplexity over overlapping windows.

Both read "scored samples" from `glm.data.lm_eval.LMEvalDataModule`: one forward pass per batch, then
per sample the summed cross-entropy over the scored slots and whether the argmax equals the target at
every scored slot. LAMBADA logs `{stage}/acc`; perplexity logs `{stage}/loss` (average per scored token),
`{stage}/ppl` and `{stage}/adjusted_ppl` (per original word, spec §10.2). A `metrics.json` goes to the run dir.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from glm.data.lm_eval import perplexity
from glm.tasks.base import GLMTaskModule


def score_samples(logits: Tensor, targets: Tensor, loss_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per row: summed CE over the scored slots (float64), number of scored slots, all-argmax-correct."""
    sel = loss_mask > 0
    ce = torch.zeros(logits.shape[:2], dtype=torch.float64, device=logits.device)
    picked = logits[sel].double()
    ce[sel] = F.cross_entropy(picked, targets[sel], reduction="none")
    wrong = torch.zeros(sel.shape, dtype=torch.bool, device=logits.device)
    wrong[sel] = picked.argmax(-1) != targets[sel]
    return ce.sum(1), sel.sum(1), ~wrong.any(1)


class LMEvalModule(GLMTaskModule):
    """Evaluation-only module (`run.py ... stages=[test]`); the datamodule's `kind` picks the metric."""

    def __init__(self, model: dict, optimizer: dict | None = None, scheduler: dict | None = None,
                 pretrained: str | None = None, output_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(model=model, optimizer=optimizer or {}, scheduler=scheduler or {}, pretrained=pretrained,
                         **kwargs)
        self.output_dir = output_dir
        self._reset()

    def _reset(self) -> None:
        self._loss, self._count, self._correct, self._samples = 0.0, 0, 0, 0

    def _step(self, batch: dict[str, Tensor]) -> None:
        logits = self.model(batch["input_ids"], batch["position_ids"], sep=batch["sep"]).logits
        ce, count, correct = score_samples(logits, batch["targets"], batch["loss_mask"])
        self._loss += float(ce.sum())
        self._count += int(count.sum())
        self._correct += int(correct.sum())
        self._samples += int(ce.shape[0])

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch)

    def compute(self) -> dict[str, float]:
        dm = self.trainer.datamodule
        if dm.kind == "lambada":
            return {"acc": self._correct / max(self._samples, 1), "num_samples": float(self._samples)}
        # every token but the first of the document is scored once: count == num_tokens - 1 (spec §10.2)
        num_tokens = self._count + 1
        words = dm.num_original_words or num_tokens
        r = perplexity(self._loss, num_tokens, words)
        return {"loss": r.avg_loss, "ppl": r.ppl, "adjusted_ppl": r.adjusted_ppl, "num_tokens": float(num_tokens)}

    def _finish(self, stage: str) -> None:
        if self.trainer.sanity_checking or self._samples == 0:
            self._reset()
            return
        values = self.compute()
        self._reset()
        for k, v in values.items():
            self.log(f"{stage}/{k}", v, sync_dist=False)
        if self.trainer.is_global_zero:
            out = Path(self.output_dir or self.trainer.default_root_dir)
            out.mkdir(parents=True, exist_ok=True)
            payload = {"kind": self.trainer.datamodule.kind, **{f"{stage}/{k}": v for k, v in values.items()}}
            (out / "metrics.json").write_text(json.dumps(payload, indent=2) + "\n")

    def on_validation_epoch_end(self) -> None:
        self._finish("val")

    def on_test_epoch_end(self) -> None:
        self._finish("test")
