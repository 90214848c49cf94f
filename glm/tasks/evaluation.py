"""Evaluation under several processes: per-example results gathered from every rank, each example once
(`all_gather_objects` also serves any picklable per-rank value, e.g. the RNG states of a checkpoint).

The evaluation loaders split a split between ranks (`glm.data.sampling.eval_sampler`, or Lightning's own
`DistributedSampler` when `use_distributed_sampler` is on). Such a sampler pads the split with repeated
examples so that every rank runs the same number of steps, and it interleaves the order. A task therefore
keeps one record per example with the example's index, and at the epoch end calls `gather_by_index`:
every rank gets all records of all ranks, one per index, in index order (the 1-process order), and
computes the same metric values from them. Only `LightningModule.all_gather` is used, so the tasks do not
know which strategy (DDP, FSDP2, ...) runs them; with one process nothing is communicated.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import lightning as L
import torch

T = TypeVar("T")

__all__ = ["all_gather_objects", "gather_by_index", "log_gathered", "world_size"]


def world_size(module: L.LightningModule) -> int:
    """Number of processes of the attached trainer (1 without a trainer)."""
    trainer = getattr(module, "_trainer", None)
    return int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1


def all_gather_objects(module: L.LightningModule, obj: Any) -> list[Any]:
    """`obj` of every rank, in rank order (picklable objects). Every rank must call it (a collective).

    Built on `module.all_gather`, which wants the same shape everywhere: the pickled bytes are padded to
    the longest rank's length after the lengths themselves have been gathered."""
    if world_size(module) == 1:
        return [obj]
    payload = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
    sizes = module.all_gather(torch.tensor(payload.numel(), dtype=torch.long)).view(-1).tolist()
    padded = torch.zeros(max(sizes), dtype=torch.uint8)
    padded[: payload.numel()] = payload
    gathered = module.all_gather(padded).cpu()  # [world, max(sizes)]
    if gathered.dim() != 2 or gathered.size(0) != len(sizes):
        raise RuntimeError(
            f"all_gather_objects: expected {len(sizes)} rows from {type(module).__name__}.all_gather, got shape "
            f"{tuple(gathered.shape)} (is the process group initialised?)"
        )
    # the bytes come from this job's own ranks (the same code), never from outside
    return [pickle.loads(gathered[r, :n].numpy().tobytes()) for r, n in enumerate(sizes)]


def gather_by_index(module: L.LightningModule, records: Iterable[T], index: Callable[[T], int]) -> list[T]:
    """The records of every rank, one per `index(record)` (a padding sampler repeats examples; the first
    copy is kept: the model and the example are the same, so are the results), sorted by index."""
    merged: dict[int, T] = {}
    for part in all_gather_objects(module, list(records)):
        for rec in part:
            merged.setdefault(int(index(rec)), rec)
    return [merged[i] for i in sorted(merged)]


def log_gathered(module: L.LightningModule, name: str, value: float | torch.Tensor, **kwargs: Any) -> None:
    """Log a value that every rank computed from the same gathered records.

    `sync_dist=True` with `max` keeps the value bit-exact (a mean over 3 ranks could round) and keeps
    Lightning from warning about unsynchronised epoch-level values; with one process it is a plain log."""
    module.log(name, value, sync_dist=True, reduce_fx="max", **kwargs)
