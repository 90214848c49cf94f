"""glm.compat against the installed Lightning: each workaround on a private member does what it says
(a Lightning upgrade that renames one of those members fails here, not deep inside a run)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from glm.callbacks import RunCheckpoint
from glm.compat import attached_trainer, estimated_stepping_batches, use_every_process_for_data_parallel
from glm.distributed import FSDP2Strategy


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.seen: dict[str, object] = {}

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.seen.setdefault("trainer", attached_trainer(self))
        return self.layer(batch).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        self.seen["steps"] = estimated_stepping_batches(self.trainer)
        self.seen["loader_kept"] = self.trainer.fit_loop._combined_loader is not None
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(module: L.LightningModule, batches: int, **kwargs) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        **kwargs,
    )
    loader = torch.utils.data.DataLoader([torch.ones(2)] * batches, batch_size=1)
    trainer.fit(module, loader)
    return trainer


def test_attached_trainer_and_the_step_estimate(tmp_path: Path) -> None:
    module = Tiny()
    assert attached_trainer(module) is None  # where `module.trainer` would raise
    assert attached_trainer(SimpleNamespace()) is None
    trainer = _fit(module, batches=3, max_epochs=2, enable_checkpointing=False, default_root_dir=tmp_path)
    assert module.seen["trainer"] is trainer
    # 3 batches x 2 epochs; the loader the estimate built is dropped again, and training still ran it all
    assert module.seen["steps"] == 6 and module.seen["loader_kept"] is False
    assert trainer.global_step == 6


def test_auto_data_parallel_means_every_process() -> None:
    strategy = SimpleNamespace(
        _data_parallel_size="auto", _tensor_parallel_size="auto", num_nodes=2, num_processes=4
    )
    use_every_process_for_data_parallel(strategy)
    assert (strategy._data_parallel_size, strategy._tensor_parallel_size) == (8, 1)
    strategy = SimpleNamespace(
        _data_parallel_size="auto", _tensor_parallel_size=2, num_nodes=1, num_processes=4
    )
    use_every_process_for_data_parallel(strategy)
    assert (strategy._data_parallel_size, strategy._tensor_parallel_size) == (2, 2)
    fixed = SimpleNamespace(_data_parallel_size=3, _tensor_parallel_size=1, num_nodes=1, num_processes=4)
    use_every_process_for_data_parallel(fixed)
    assert fixed._data_parallel_size == 3  # an explicit size is left alone
    # the private names exist on the installed Lightning's strategy
    real = FSDP2Strategy(data_parallel_size="auto", tensor_parallel_size=1)
    assert isinstance(real, ModelParallelStrategy)
    assert (real._data_parallel_size, real._tensor_parallel_size) == ("auto", 1)


def test_run_checkpoint_writes_last_every_n_steps_and_at_the_end(tmp_path: Path) -> None:
    saved_at: list[int] = []

    class Recorded(RunCheckpoint):
        def on_last_checkpoint_saved(self, trainer: L.Trainer) -> None:
            super().on_last_checkpoint_saved(trainer)
            saved_at.append(trainer.global_step)

    callback = Recorded(dirpath=tmp_path, save_last=True, save_top_k=0, every_n_train_steps=2)
    _fit(Tiny(), batches=5, max_epochs=1, callbacks=[callback], default_root_dir=tmp_path)
    assert saved_at == [2, 4, 5]  # periodic, then the final step that was not saved yet
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 5
    assert "every_n_train_steps" in callback.state_key and "periodic" in callback.state_key
