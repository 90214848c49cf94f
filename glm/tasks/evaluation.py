"""The end of every evaluation epoch (cloze, seq2seq, LM evaluation): per-example results gathered from
every rank, each example once, then metrics logged and files written (`finish_evaluation`).
`all_gather_objects` also serves any picklable per-rank value, e.g. the RNG states of a checkpoint.

The evaluation loaders split a split between ranks (`glm.data.sampling.eval_sampler`, or Lightning's own
`DistributedSampler` when `use_distributed_sampler` is on). Such a sampler pads the split with repeated
examples so that every rank runs the same number of steps, and it interleaves the order. A task therefore
keeps one record per example with the example's index, and at the epoch end calls `gather_by_index`:
every rank gets all records of all ranks, one per index, in index order (the 1-process order), and
computes the same metric values from them. Only `LightningModule.all_gather` is used, so the tasks do not
know which strategy (DDP, FSDP2, ...) runs them; with one process nothing is communicated.

`finish_evaluation` is that epoch end, the same for every task: skip the sanity check, gather by example
index, let the task turn the records into an `EvaluationReport` (metrics, files), log the metrics, write
the files on rank 0, and wait at a barrier so the files exist when any rank goes on.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import torch

from glm.compat import attached_trainer
from glm.utils.fs import atomic_write

T = TypeVar("T")

__all__ = [
    "EvaluationReport",
    "all_gather_objects",
    "finish_evaluation",
    "gather_by_index",
    "log_gathered",
    "world_size",
]


def world_size(module: L.LightningModule) -> int:
    """Number of processes of the attached trainer (1 without a trainer)."""
    trainer = attached_trainer(module)
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


@dataclass
class EvaluationReport:
    """What a task makes of the gathered records of one evaluation epoch.

    `metrics`: full logged names (`val/acc`) -> values, logged in this order (names in `prog_bar` on the
    progress bar too); `files`: paths relative to the output directory -> text, written by rank 0;
    `on_rank_zero`: more rank-0 work after the files (tables for the loggers, a log line)."""

    metrics: dict[str, float | torch.Tensor] = field(default_factory=dict)
    prog_bar: Collection[str] = ()
    files: dict[str, str] = field(default_factory=dict)
    on_rank_zero: Callable[[], None] | None = None


def finish_evaluation(
    module: L.LightningModule,
    records: Iterable[T],
    index: Callable[[T], int],
    report: Callable[[list[T]], EvaluationReport],
    output_dir: str | Path | None = None,
    skip_if_empty: bool = True,
    barrier: str = "evaluation_outputs",
) -> EvaluationReport | None:
    """The epoch end of an evaluation loop; every rank calls it with its own `records`.

    Nothing happens in Lightning's sanity check (the same on every rank: no rank waits in the gather
    alone), nor, with `skip_if_empty`, when no rank has a record. Otherwise every rank gets the records
    of all ranks, one per `index(record)` in index order (`gather_by_index`), and computes the same
    `report(records)` from them; its metrics are logged with `log_gathered`, rank 0 creates `output_dir`
    and writes the files into it (`atomic_write`) and runs `on_rank_zero`, and all ranks meet at the
    barrier named `barrier`. Returns the report (None when skipped)."""
    trainer = module.trainer
    if trainer.sanity_checking:
        return None
    gathered = gather_by_index(module, records, index)
    if not gathered and skip_if_empty:
        return None
    result = report(gathered)
    for name, value in result.metrics.items():
        log_gathered(module, name, value, prog_bar=name in result.prog_bar)
    if trainer.is_global_zero:
        if output_dir is not None:
            out = Path(output_dir)
            out.mkdir(parents=True, exist_ok=True)
            for relative, text in result.files.items():
                path = out / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, text)
        if result.on_rank_zero is not None:
            result.on_rank_zero()
    trainer.strategy.barrier(barrier)
    return result
