"""Fault injection for tests/e2e/test_sweep.py: ``+callbacks.boom._target_=tests.e2e.scripts.boom.RaiseAtStep
+callbacks.boom.step=S`` raises after optimizer step S, a ``RuntimeError`` (a bug) or, with
``+callbacks.boom.preempt=true``, :class:`glm.errors.Preempted` (a signal stopped training)."""

from __future__ import annotations

import signal
from typing import Any

import lightning as L

from glm.errors import Preempted


class RaiseAtStep(L.Callback):
    def __init__(self, step: int, preempt: bool = False) -> None:
        self.step = int(step)
        self.preempt = bool(preempt)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step != self.step:
            return
        if self.preempt:
            raise Preempted(f"stopped by SIGTERM at step {self.step}", signum=signal.SIGTERM, step=self.step)
        raise RuntimeError(f"injected bug at step {self.step}\nsecond line of the message")
