"""Fault injection for tests/e2e/test_checkpoint_write.py: ``+callbacks.kill_in_save._target_=
tests.e2e.scripts.slow_save.KillDuringSave +callbacks.kill_in_save.step=S`` makes the checkpoint saved at
optimizer step S large (a padding tensor) and SIGKILLs the process while that file is being written into
the checkpoint dir — as a node failure during a checkpoint write would."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import lightning as L
import torch

PADDING_BYTES = 256 << 20  # big enough that writing it takes a while on any disk
KILL_AT_BYTES = 32 << 20  # a file in the checkpoint dir growing past this, while the save runs: kill


class KillDuringSave(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = int(step)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if trainer.global_step != self.step:
            return
        checkpoint["padding"] = torch.ones(PADDING_BYTES // 4)
        ckpt_dir = Path(trainer.checkpoint_callback.dirpath)
        before = {p.name: p.stat().st_mtime_ns for p in ckpt_dir.iterdir()}
        threading.Thread(target=self._kill_when_writing, args=(ckpt_dir, before), daemon=True).start()

    @staticmethod
    def _kill_when_writing(ckpt_dir: Path, before: dict[str, int]) -> None:
        while True:  # whichever file the save writes into (a temp file, or last.ckpt itself)
            for p in ckpt_dir.iterdir():
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue
                if st.st_size > KILL_AT_BYTES and before.get(p.name) != st.st_mtime_ns:
                    os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.0005)
