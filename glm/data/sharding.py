"""Training and evaluation splits shared between ranks (finetuning datamodules; pretraining has its own
resumable `EpochIndexSampler`).

Training: every rank takes a disjoint share of each epoch's shuffle (`train_sampler`; Lightning calls
`set_epoch` on it, so each epoch is a new order), so N processes see the examples one process sees in a
global batch N times as wide instead of all training on the same batches.

The run config sets `use_distributed_sampler: false` (the training samplers shard by rank themselves), so
Lightning leaves the evaluation loaders alone and each datamodule shards them here. Every rank gets every
`world_size`-th example (`torch.utils.data.DistributedSampler`, no shuffling); the split is padded with
repeated examples so that every rank runs the same number of steps (the epoch-end collectives then meet).
The task modules drop the repeats by example index (`glm.tasks.evaluation.gather_by_index`).
"""

from __future__ import annotations

import os
from collections.abc import Sized
from typing import Any

from torch.utils.data import DistributedSampler

__all__ = ["eval_sampler", "train_sampler"]


def _world(trainer: Any | None) -> int:
    return int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1


def train_sampler(dataset: Sized, trainer: Any | None) -> DistributedSampler | None:
    """This rank's share of a shuffled training split, or None with one process (the loader then shuffles
    itself). Seeded like Lightning's own sampler (the run's `seed`, via PL_GLOBAL_SEED), so the order is
    reproducible; the epoch is padded with repeats so every rank runs the same number of steps."""
    if _world(trainer) == 1:
        return None
    seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
    return DistributedSampler(
        dataset, num_replicas=_world(trainer), rank=int(trainer.global_rank), shuffle=True, seed=seed
    )


def eval_sampler(dataset: Sized, trainer: Any | None) -> DistributedSampler | None:
    """This rank's share of an evaluation split, or None (the plain in-order loader) with one process or no
    trainer attached."""
    if _world(trainer) == 1:
        return None
    return DistributedSampler(
        dataset, num_replicas=_world(trainer), rank=int(trainer.global_rank), shuffle=False, drop_last=False
    )
