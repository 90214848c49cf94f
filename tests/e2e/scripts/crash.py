"""Fault injection for tests/e2e/test_resume.py: ``+callbacks.crash._target_=tests.e2e.scripts.crash.KillAtStep
+callbacks.crash.step=S`` kills the training process with SIGKILL right after optimizer step S (no cleanup,
no checkpoint, no logger flush), as a node failure or an OOM kill would."""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L


class KillAtStep(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = int(step)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
