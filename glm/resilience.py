"""Runs that survive crashes: the checkpoint callback every config uses (``callbacks.checkpoint``).

Resume = the same command + ``hydra.run.dir=<old run dir> ckpt_path=last`` (see ``glm.run.pipeline``). For that,
``last.ckpt`` must be recent and complete:

- :class:`RunCheckpoint` keeps Lightning's best-``k`` checkpoints by ``monitor`` (saved after validation,
  as before) and additionally writes ``last.ckpt`` every ``every_n_train_steps`` optimizer steps, whether
  or not the monitored metric exists yet (Lightning's own ``every_n_train_steps`` defers every save until
  the first validation when ``monitor`` is set, which leaves a long first stretch without any checkpoint),
  and once more when training ends at a step that was not saved.
- Files are written by Lightning through an fsspec transaction (temp file + rename), so ``last.ckpt`` is
  either the previous complete checkpoint or the new complete one. Sharded (FSDP) checkpoints are
  directories rewritten in place; keep ``save_top_k >= 1`` there so a second complete copy exists.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (best-k by ``monitor`` at validation) + a periodic and a final ``last.ckpt``.

    ``every_n_train_steps``: write ``last.ckpt`` after every N-th optimizer step (None/0: only after
    validations and at the end). All other arguments are ``ModelCheckpoint``'s; ``save_last`` must be true
    for the periodic saves.
    """

    def __init__(self, *args: Any, every_n_train_steps: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        every = int(every_n_train_steps or 0)
        if every < 0:
            raise ValueError(f"callbacks.checkpoint.every_n_train_steps: must be >= 0, got {every}")
        if every and not self.save_last:
            raise ValueError(
                "callbacks.checkpoint.every_n_train_steps needs save_last: true (it writes last.ckpt)"
            )
        self.every_n_steps = every
        self._last_step_in_last = -1  # global step of the newest last.ckpt

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            monitor=self.monitor, mode=self.mode, every_n_train_steps=self.every_n_steps, periodic=True
        )

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Any]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_step_in_last = trainer.global_step

    def _save_periodic(self, trainer: L.Trainer) -> None:
        # Keep Lightning's "saved at this step" marker as it was: a validation at the same step must still be
        # allowed to save its best-k checkpoint (and then last.ckpt again, now with the validation done).
        marker = self._last_global_step_saved
        try:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        finally:
            self._last_global_step_saved = marker

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        step = trainer.global_step
        if (
            self.every_n_steps
            and step > 0
            and step % self.every_n_steps == 0
            and step != self._last_step_in_last  # once per optimizer step under gradient accumulation
            and not trainer.sanity_checking
            and not trainer.fast_dev_run
        ):
            self._save_periodic(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last and not trainer.fast_dev_run and trainer.global_step != self._last_step_in_last:
            self._save_periodic(trainer)
