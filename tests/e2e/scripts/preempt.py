"""Signal injection for tests/e2e/test_preemption.py: ``+callbacks.sig._target_=tests.e2e.scripts.preempt.SignalAtBatch
+callbacks.sig.batch=B +callbacks.sig.signal=SIGTERM`` sends the signal to this process when micro-batch B of
the first epoch starts (so it arrives in the middle of an optimizer step), as a scheduler or Ctrl-C would.
``rank``: only that global rank signals itself (the others must learn of it from the reduction).
``during=val``: at validation batch B instead (of the first validation that reaches it)."""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L


class SignalAtBatch(L.Callback):
    def __init__(
        self, batch: int, signal: str = "SIGTERM", rank: int | None = None, during: str = "train"
    ) -> None:
        self.batch, self.signal, self.rank, self.during = int(batch), str(signal), rank, during
        self._sent = False

    def _send(self, trainer: L.Trainer, batch_idx: int) -> None:
        if self._sent or batch_idx != self.batch or self.rank not in (None, trainer.global_rank):
            return
        self._sent = True
        os.kill(os.getpid(), getattr(signal, self.signal))

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.during == "train" and trainer.current_epoch == 0:
            self._send(trainer, batch_idx)

    def on_validation_batch_start(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.during == "val" and not trainer.sanity_checking:
            self._send(trainer, batch_idx)
