"""Signal injection for tests/e2e/test_preemption.py: ``+callbacks.sig._target_=tests.e2e.scripts.preempt.SignalAtBatch
+callbacks.sig.batch=B +callbacks.sig.signal=SIGTERM`` sends the signal to this process when micro-batch B of
the first epoch starts (so it arrives in the middle of an optimizer step), as a scheduler or Ctrl-C would.
``rank``: only that global rank signals itself (the others must learn of it from the reduction)."""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L


class SignalAtBatch(L.Callback):
    def __init__(self, batch: int, signal: str = "SIGTERM", rank: int | None = None) -> None:
        self.batch, self.signal, self.rank = int(batch), str(signal), rank

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        mine = self.rank is None or trainer.global_rank == self.rank
        if mine and trainer.current_epoch == 0 and batch_idx == self.batch:
            os.kill(os.getpid(), getattr(signal, self.signal))
