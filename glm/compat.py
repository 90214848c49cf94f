"""Every use of a private Lightning member, in one place.

Each function works around one gap in Lightning's public API. They were written for the versions
pyproject pins (``lightning>=2.4,<2.7``) and checked against 2.6.6; when the pin moves, this module is
the one to re-read. The rest of the package touches no ``_``-prefixed Lightning attribute.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment

if TYPE_CHECKING:
    import lightning as L

__all__ = [
    "LastCheckpointHooks",
    "attached_trainer",
    "disable_lightning_slurm_requeue",
    "estimated_stepping_batches",
    "use_every_process_for_data_parallel",
]


def attached_trainer(module: Any) -> L.Trainer | None:
    """The trainer ``module`` is attached to, or None.

    ``LightningModule.trainer`` raises when no trainer is attached (Lightning 2.0-2.6), and there is no
    public "is attached" test; the private ``_trainer`` is None then. Also takes stand-in objects
    without the attribute (tests call hooks on them)."""
    return getattr(module, "_trainer", None)


def estimated_stepping_batches(trainer: L.Trainer) -> int:
    """``trainer.estimated_stepping_batches`` without keeping the train loader it builds (at least 1).

    Asked inside ``configure_optimizers``, the estimate makes Lightning build (and start iterating) the
    train loader before a resumed checkpoint's loop state is restored; the fit loop then keeps that loader
    and never applies the saved loader state (the mid-epoch position). Dropping the loader it built makes
    the fit loop build it again after the restore. Private: ``fit_loop._combined_loader`` (Lightning
    2.4-2.6). Pinned by tests/e2e/test_resume.py."""
    fit_loop = trainer.fit_loop
    built_before = fit_loop._combined_loader is not None
    steps = max(1, int(trainer.estimated_stepping_batches))
    if not built_before:
        fit_loop._combined_loader = None
    return steps


def use_every_process_for_data_parallel(strategy: Any) -> None:
    """Resolve ``data_parallel_size="auto"`` of a ``ModelParallelStrategy`` to every process (pure FSDP),
    before its ``setup_environment`` builds the device mesh.

    Lightning's own "auto" is the number of nodes (it pairs with tensor parallelism inside a node), which
    with ``tensor_parallel_size=1`` does not multiply to the world size; the sizes are only stored in the
    private ``_data_parallel_size`` / ``_tensor_parallel_size`` (Lightning 2.4-2.6)."""
    if strategy._data_parallel_size == "auto":
        tp = 1 if strategy._tensor_parallel_size == "auto" else int(strategy._tensor_parallel_size)
        strategy._tensor_parallel_size = tp
        strategy._data_parallel_size = max(1, strategy.num_nodes * strategy.num_processes // tp)


def disable_lightning_slurm_requeue(trainer: L.Trainer) -> bool:
    """Turn off Lightning's SLURM auto-requeue for this trainer; True when it was on.

    Under SLURM Lightning picks ``SLURMEnvironment(auto_requeue=True)``, and its ``_SignalConnector`` then
    saves ``hpc_ckpt_N.ckpt`` inside the SIGUSR1 handler (in the middle of a step) and requeues the job.
    ``glm.callbacks.Preemption`` does both at a step boundary instead, so this must not run as well. The
    connector reads the private ``_accelerator_connector.cluster_environment`` (``trainer.strategy`` has no
    environment on one device) when ``Trainer._run`` registers its handlers, after the ``setup`` hooks
    (Lightning 2.4-2.6)."""
    environment = trainer._accelerator_connector.cluster_environment
    if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
        environment.auto_requeue = False
        return True
    return False


class LastCheckpointHooks(ModelCheckpoint):
    """``ModelCheckpoint`` with two hooks its public API lacks (for ``glm.callbacks.RunCheckpoint``):
    :meth:`on_last_checkpoint_saved` after every ``last.ckpt`` it writes, and :meth:`save_last_now` to write
    ``last.ckpt`` outside validation. Built on the private ``_save_last_checkpoint``,
    ``_monitor_candidates``, ``_last_global_step_saved`` and ``Callback._generate_state_key`` (Lightning
    2.4-2.6)."""

    def on_last_checkpoint_saved(self, trainer: L.Trainer) -> None:
        """Called after each ``last.ckpt`` write (``save_last`` true), Lightning's own or :meth:`save_last_now`'s."""

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Any]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self.on_last_checkpoint_saved(trainer)

    def save_last_now(self, trainer: L.Trainer) -> None:
        """Write ``last.ckpt`` now. Lightning's "saved at this step" marker is kept as it was: a validation
        at the same step must still be allowed to save its best-k checkpoint (and then ``last.ckpt`` again,
        now with the validation done)."""
        marker = self._last_global_step_saved
        try:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        finally:
            self._last_global_step_saved = marker

    def state_key_of(self, **kwargs: Any) -> str:
        """The checkpoint-state key from ``kwargs``, as Lightning builds its own (``Callback._generate_state_key``)."""
        return self._generate_state_key(**kwargs)
