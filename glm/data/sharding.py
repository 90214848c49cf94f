"""Evaluation splits shared between ranks (finetuning and lm-eval datamodules). Training loaders shard by
rank in their own resumable sampler (`glm.data.sampling`).

The run config sets `use_distributed_sampler: false` (the training samplers shard by rank themselves), so
Lightning leaves the evaluation loaders alone and each datamodule shards them here. Every rank gets every
`world_size`-th example (`torch.utils.data.DistributedSampler`, no shuffling); the split is padded with
repeated examples so that every rank runs the same number of steps (the epoch-end collectives then meet).
The task modules drop the repeats by example index (`glm.tasks.evaluation.gather_by_index`).
"""

from __future__ import annotations

from collections.abc import Sized
from typing import Any

from torch.utils.data import DistributedSampler

__all__ = ["eval_sampler"]


def _world(trainer: Any | None) -> int:
    return int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1


def eval_sampler(dataset: Sized, trainer: Any | None) -> DistributedSampler | None:
    """This rank's share of an evaluation split, or None (the plain in-order loader) with one process or no
    trainer attached."""
    if _world(trainer) == 1:
        return None
    return DistributedSampler(
        dataset, num_replicas=_world(trainer), rank=int(trainer.global_rank), shuffle=False, drop_last=False
    )
