"""Callbacks shared by the tasks."""

from __future__ import annotations

import time
from typing import Any

import lightning as L


class TokenThroughput(L.Callback):
    """Logs ``train/tokens_per_s``: non-padding input tokens (``loss_mask``-independent) per wall second.

    Tokens are counted from ``batch["input_ids"]`` (all positions, Part A and Part B, padding excluded via
    ``input_ids != pad_id`` only when ``count_padding`` is false; pad id 0 as everywhere in GLM), summed over
    ``log_every_n_steps`` optimizer steps and multiplied by the world size.
    """

    def __init__(self, pad_id: int = 0, count_padding: bool = False) -> None:
        self.pad_id = pad_id
        self.count_padding = count_padding
        self._tokens = 0
        self._start: float | None = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._start is None:
            self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        ids = batch.get("input_ids") if isinstance(batch, dict) else None
        if ids is None:
            return
        self._tokens += int(ids.numel() if self.count_padding else (ids != self.pad_id).sum())
        every = max(1, trainer.log_every_n_steps)
        if (batch_idx + 1) % every == 0 and self._start is not None:
            elapsed = time.perf_counter() - self._start
            if elapsed > 0:
                rate = self._tokens * trainer.world_size / elapsed
                pl_module.log("train/tokens_per_s", rate, on_step=True, on_epoch=False, rank_zero_only=True)
            self._tokens, self._start = 0, time.perf_counter()
