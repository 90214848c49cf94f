"""How every datamodule orders and shards its data between ranks: the resumable training order (pretraining,
cloze, seq2seq) and the evaluation split (`eval_sampler`).

- :class:`EpochIndexSampler`: a per-epoch permutation from ``default_rng([seed, 3, epoch])``, sharded by
  rank by the sampler itself (the run config sets ``use_distributed_sampler: false``), so the order depends
  only on (seed, epoch, world size) and not on worker processes or shared state. Lightning calls
  ``set_epoch`` before each epoch.
- Index form. Pretraining masks sample ``i`` differently in each epoch, so its dataset takes ``epoch * N + i``
  (``epoch_offset=True``); finetuning datasets take plain ``i`` (``epoch_offset=False``).
- Uneven tail under several processes (N not a multiple of the world size). ``tail="drop"`` (pretraining,
  a few of many generated samples) drops the last ``N % world_size`` indices of each epoch's permutation;
  ``tail="pad"`` (finetuning, where a dropped example may be a sizeable share of a small set) pads the
  permutation with its own first indices, as ``torch.utils.data.DistributedSampler`` does, so every example
  is seen each epoch and a few are seen twice. Either way every rank gets the same number of indices, hence
  the same number of batches, so the collectives of the step meet.
- Mid-epoch resume. Lightning 2.6 stores ``state_dict()`` of every train dataloader that has
  ``state_dict``/``load_state_dict`` (``fit_loop.on_save_checkpoint`` -> ``combined_loader``) and hands it
  back through ``load_state_dict`` before the first ``iter()``; it does not fast-forward a loader itself.
  :class:`ResumableDataLoader` saves the layout (seed, N, world size, micro batch, shuffle) plus the epoch and
  the number of batches that finished their step. That number is read from the fit loop's restored
  ``batch_progress`` (:func:`fit_batches_done`) rather than counted in the loader, because Lightning's
  fetcher pulls one batch ahead of the step that is running when a checkpoint is written. On load, the
  sampler skips that many batches of the epoch's order, so the batches after the resume point are exactly
  the ones an uninterrupted run sees. A changed layout cannot continue the same order mid-epoch and is
  refused, naming the field. Iterating the loader leaves the global torch RNG alone (its worker seeds come
  from a private generator seeded by (seed, epoch)), so the dropout masks after a resume, drawn from the RNG
  state the checkpoint restored, are the uninterrupted run's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from glm.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "EpochIndexSampler",
    "ResumableDataLoader",
    "eval_sampler",
    "fit_batches_done",
    "rank_world",
    "resumable_train_loader",
]

TAILS = ("drop", "pad")
# the config keys behind each field of a training loader's layout (named when a resume cannot continue)
_LAYOUT_KEYS = {
    "seed": "seed",
    "num_samples": "the data config: data.seq_length, data.files, data.samples_per_epoch, max samples",
    "world_size": "trainer.devices x trainer.num_nodes",
    "batch_size": "data.micro_batch_size",
    "shuffle": "the datamodule",
}


class EpochIndexSampler(Sampler[int]):
    """This rank's share of a per-epoch permutation of ``range(N)`` (see the module docstring).

    Yields ``epoch * N + i`` (``epoch_offset``, the pretraining dataset's index) or ``i``. Each rank takes
    every ``world_size``-th index of the permutation after the tail is dropped or padded (``tail``).
    :meth:`skip_once` drops the first indices of the next pass only (mid-epoch resume).
    """

    def __init__(
        self,
        num_samples: int,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        epoch_offset: bool = True,
        tail: str = "drop",
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"EpochIndexSampler: rank {rank} outside world size {world_size}")
        if tail not in TAILS:
            raise ValueError(f"EpochIndexSampler: tail must be one of {TAILS}, got {tail!r}")
        self.num_samples, self.seed, self.shuffle = int(num_samples), int(seed), bool(shuffle)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch_offset, self.tail = bool(epoch_offset), tail
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip_once(self, count: int) -> None:
        """The next ``__iter__`` starts after its first ``count`` indices (later passes are whole)."""
        if count < 0:
            raise ValueError(f"EpochIndexSampler.skip_once: count must be >= 0, got {count}")
        self._skip = int(count)

    def __len__(self) -> int:
        if self.tail == "pad":
            return math.ceil(self.num_samples / self.world_size)
        return self.num_samples // self.world_size

    def __iter__(self) -> Iterator[int]:
        order = (
            np.random.default_rng([self.seed, 3, self.epoch]).permutation(self.num_samples)
            if self.shuffle
            else np.arange(self.num_samples)
        )
        total = len(self) * self.world_size
        if total > self.num_samples:  # tail="pad": repeat the permutation's head (N may be < world size)
            order = np.resize(order, total)
        order = order[:total][self.rank :: self.world_size]
        skip, self._skip = self._skip, 0
        base = self.epoch * self.num_samples if self.epoch_offset else 0
        return iter((base + int(i)) for i in order[skip:])


class ResumableDataLoader(DataLoader):
    """A DataLoader over an :class:`EpochIndexSampler` that Lightning checkpoints (see the module docstring).

    ``progress`` returns how many batches of the current epoch finished their training step (the
    datamodules pass :func:`fit_batches_done` of their trainer); it defaults to 0 outside a trainer.
    """

    def __init__(self, *args: Any, progress: Callable[[], int] | None = None, **kwargs: Any) -> None:
        # `iter(DataLoader)` draws its workers' base seed from `generator`, or else from the global torch
        # RNG; a resumed run restores that RNG before its first `iter()` and an uninterrupted one draws at
        # the epoch start, so the global draw would shift every later dropout mask. A private generator
        # reseeded per epoch in `__iter__` keeps the global RNG untouched and the worker seeds per epoch.
        kwargs.setdefault("generator", torch.Generator())
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, EpochIndexSampler):
            raise TypeError("ResumableDataLoader needs an EpochIndexSampler")
        self._progress = progress

    def __iter__(self) -> Any:
        s = self.sampler
        self.generator.manual_seed(int(np.random.SeedSequence([s.seed, 4, s.epoch]).generate_state(1)[0]))
        return super().__iter__()

    def _layout(self) -> dict[str, int]:
        s = self.sampler
        return {
            "seed": s.seed,
            "num_samples": s.num_samples,
            "world_size": s.world_size,
            "batch_size": int(self.batch_size or 1),
            "shuffle": int(s.shuffle),
        }

    def state_dict(self) -> dict[str, int]:
        done = int(self._progress()) if self._progress is not None else 0
        return {**self._layout(), "epoch": self.sampler.epoch, "batches_done": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue the saved epoch after its ``batches_done`` batches; refuse a changed layout."""
        done = int(state.get("batches_done", 0))
        if done == 0 or done >= len(
            self
        ):  # saved at an epoch boundary: Lightning starts the next epoch whole
            return
        for key, value in self._layout().items():
            if key in state and int(state[key]) != value:
                raise ConfigError(  # a user error (one line from run.py); a ValueError for older callers
                    f"resume: the checkpoint stopped mid-epoch with train dataloader {key}={state[key]}, "
                    f"this run has {key}={value} (set by {_LAYOUT_KEYS[key]}); the same sample order cannot "
                    "continue (resume with the same data and hardware settings, or from a checkpoint at an "
                    "epoch boundary)"
                )
        self.sampler.skip_once(done * int(self.batch_size or 1))
        log.info("resume: the train loader continues epoch %s after %d batches", state.get("epoch"), done)


def rank_world(trainer: Any | None) -> tuple[int, int]:
    """(global rank, world size) of ``trainer``; (0, 1) without one (unit tests, notebooks)."""
    if trainer is None:
        return 0, 1
    return int(getattr(trainer, "global_rank", 0) or 0), int(getattr(trainer, "world_size", 1) or 1)


def eval_sampler(dataset: Sized, trainer: Any | None) -> DistributedSampler | None:
    """This rank's share of an evaluation split, or None (the plain in-order loader) with one process.

    The run config sets `use_distributed_sampler: false`, so Lightning leaves evaluation loaders alone and
    each datamodule shards them here: every rank gets every `world_size`-th example, no shuffling, the
    split padded with repeated examples so every rank runs the same number of steps (the epoch-end
    collectives then meet). The task modules drop the repeats by example index
    (`glm.tasks.evaluation.gather_by_index`)."""
    rank, world = rank_world(trainer)
    if world == 1:
        return None
    return DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False, drop_last=False)


def fit_batches_done(trainer: Any | None) -> int:
    """Batches of the current epoch whose training step finished (the fit loop's own counter); 0 without
    a trainer."""
    if trainer is None:
        return 0
    # `processed`, not `completed`: ModelCheckpoint saves in on_train_batch_end, after the step's
    # `processed` increment and before its `completed` one (Lightning fixes `completed` up on restore).
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)


def resumable_train_loader(
    dataset: Dataset,
    datamodule: Any,
    batch_size: int,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    num_workers: int = 0,
    *,
    seed: int,
    epoch_offset: bool = False,
    tail: str = "pad",
    drop_last: bool = False,
) -> ResumableDataLoader:
    """A training loader: this rank's share of each epoch's shuffle of ``dataset`` from ``seed``, resumable
    mid-epoch. ``datamodule.trainer`` is read when Lightning asks for the progress (at checkpoint time), not
    now, and gives the rank and world size. The defaults are the finetuning ones (plain indices, tail padded
    with repeats, the last batch of an epoch may be short); pretraining takes ``epoch_offset=True``,
    ``tail="drop"``, ``drop_last=True`` (see the module docstring)."""
    trainer = getattr(datamodule, "trainer", None)
    rank, world = rank_world(trainer)
    sampler = EpochIndexSampler(
        len(dataset),  # type: ignore[arg-type]
        seed,
        shuffle=True,
        rank=rank,
        world_size=world,
        epoch_offset=epoch_offset,
        tail=tail,
    )
    return ResumableDataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=num_workers,
        drop_last=drop_last,
        progress=lambda: fit_batches_done(getattr(datamodule, "trainer", None)),
    )
