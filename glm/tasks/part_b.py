"""The tied head projected at the loss positions (Part B) only, for every task that trains on Part B
(pretraining, seq2seq) or reads answer slots (cloze): the same numbers as the full ``[B, L, V]`` logits
without computing them where no loss reads them."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from glm.model import GLM

__all__ = ["part_b_index", "part_b_logits"]


def part_b_index(loss_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions with loss (Part B) of each row, left-aligned and padded with position 0: a ``[B, K]``
    index for ``GLM.forward(logits_index=)`` and its ``[B, K]`` validity mask; K = the largest Part B."""
    has_loss = loss_mask > 0
    k = max(1, int(has_loss.sum(1).max()))
    order = torch.argsort((~has_loss).to(torch.int8), dim=1, stable=True)[:, :k]
    valid = torch.gather(has_loss, 1, order)
    return torch.where(valid, order, torch.zeros_like(order)), valid


def part_b_logits(model: GLM, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Run ``model`` on a padded or packed batch with the tied head projected at the loss positions only:
    ``(logits [B, K, V], targets [B, K], loss mask [B, K], index [B, K])`` (see :func:`part_b_index`)."""
    index, valid = part_b_index(batch["loss_mask"])
    logits = model(
        batch["input_ids"],
        batch["position_ids"],
        sep=batch["sep"],  # per token [B, L] in packed batches (data.pack), with segment_ids
        segment_ids=batch.get("segment_ids"),
        logits_index=index,
    ).logits
    mask = torch.gather(batch["loss_mask"], 1, index) * valid
    return logits, torch.gather(batch["targets"], 1, index), mask, index
