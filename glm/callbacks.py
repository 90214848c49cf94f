"""Callbacks shared by the tasks: the checkpoint callback every config uses (``callbacks.checkpoint``:
:class:`RunCheckpoint`), token throughput and model-FLOPs utilisation."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch

from glm.compat import LastCheckpointHooks

log = logging.getLogger(__name__)


class TokenThroughput(L.Callback):
    """Logs ``train/tokens_per_s``: non-padding input tokens (``loss_mask``-independent) per wall second.

    Tokens are counted from ``batch["input_ids"]`` (all positions, Part A and Part B, padding excluded via
    ``input_ids != pad_id`` only when ``count_padding`` is false; pad id 0 as everywhere in GLM), summed over
    ``log_every_n_steps`` optimizer steps and multiplied by the world size.
    """

    def __init__(self, pad_id: int = 0, count_padding: bool = False) -> None:
        self.pad_id = pad_id
        self.count_padding = count_padding
        self._tokens = 0
        self._start: float | None = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._start is None:
            self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        ids = batch.get("input_ids") if isinstance(batch, dict) else None
        if ids is None:
            return
        self._tokens += int(ids.numel() if self.count_padding else (ids != self.pad_id).sum())
        every = max(1, trainer.log_every_n_steps)
        if (batch_idx + 1) % every == 0 and self._start is not None:
            elapsed = time.perf_counter() - self._start
            if elapsed > 0:
                rate = self._tokens * trainer.world_size / elapsed
                pl_module.log("train/tokens_per_s", rate, on_step=True, on_epoch=False, rank_zero_only=True)
            self._tokens, self._start = 0, time.perf_counter()


# Dense peak throughput per device, TFLOP/s by compute dtype (datasheet figures, no 2:4 sparsity). Keys are
# matched as substrings of `torch.cuda.get_device_name()`, longest key first. "fp32" is the plain FP32 rate;
# "tf32" is used when fp32 matmuls may run on tensor cores (torch.get_float32_matmul_precision() != "highest").
DEFAULT_DEVICE_PEAKS_TFLOPS: dict[str, dict[str, float]] = {
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0},
    "H100": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},  # SXM
    "H200": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "A10G": {"bf16": 70.0, "fp16": 70.0, "tf32": 35.0, "fp32": 31.2},
    "L4": {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "V100": {"fp16": 125.0, "fp32": 15.7},
}


def compute_dtype(precision: str) -> str:
    """Lightning precision string -> the dtype the matmuls run in (the key into the peak table)."""
    p = str(precision)
    if p.startswith("bf16"):
        return "bf16"
    if p.startswith("16"):
        return "fp16"
    if p.startswith("64"):
        return "fp64"
    return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def lookup_peak_tflops(
    device_name: str, dtype: str, table: Mapping[str, Mapping[str, float]]
) -> float | None:
    """The peak of the longest table key contained in ``device_name`` for ``dtype`` (None when unknown)."""
    for key in sorted(table, key=len, reverse=True):
        if key in device_name:
            value = table[key].get(dtype)
            return None if value is None else float(value)
    return None


class MFUMonitor(L.Callback):
    """Logs ``perf/flops_per_s`` (achieved model FLOP/s per device) and ``perf/mfu`` every ``every_n_steps``
    optimizer steps.

    Model FLOPs of a micro-batch = ``GLMConfig.flops_per_token(L) * tokens``, where tokens is every position
    of ``batch["input_ids"]`` (padding included: the device computed it) and ``L`` its last dimension; the
    formula counts forward + backward (3x forward) and the attention score/value products. Modules that
    project the tied head at some positions only say how many with ``head_positions(batch)`` (PretrainModule:
    the padded Part-B index); the head's FLOPs at the other positions are not counted, since nothing ran there. Time is the wall
    clock between two log points (data loading, optimizer and logging included: MFU is end to end). The first
    ``skip_steps`` optimizer steps (allocator warm-up, compilation) are not measured.

    Peak: ``peak_tflops`` when given (e.g. a CPU's fp32 matmul ceiling measured by
    ``bench/bench_train.py``), else the row of :data:`DEFAULT_DEVICE_PEAKS_TFLOPS` merged with
    ``device_peaks`` (rows given there win) matching the CUDA device name, at the trainer's precision. With no peak (CPU without ``peak_tflops``, an unknown GPU) only FLOP/s is logged.
    ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        peak_tflops: float | None = None,
        device_peaks: Mapping[str, Mapping[str, float]] | None = None,
        skip_steps: int = 1,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"callbacks.mfu.every_n_steps: must be >= 1, got {every_n_steps}")
        if peak_tflops is not None and not peak_tflops > 0:
            raise ValueError(f"callbacks.mfu.peak_tflops: must be > 0 or null, got {peak_tflops}")
        if skip_steps < 0:
            raise ValueError(f"callbacks.mfu.skip_steps: must be >= 0, got {skip_steps}")
        self.every_n_steps, self.skip_steps = int(every_n_steps), int(skip_steps)
        self.peak_tflops = None if peak_tflops is None else float(peak_tflops)
        # user entries add to / replace rows of the default table (a new device, a measured figure)
        self.device_peaks = {
            k: dict(v) for k, v in {**DEFAULT_DEVICE_PEAKS_TFLOPS, **(device_peaks or {})}.items()
        }
        self.clock = clock
        self._flops = 0.0
        self._start: float | None = None
        self._last_step = -1
        self._steps_done = 0  # optimizer steps since train start (the warm-up counts these, also on resume)
        self.peak_flops: float | None = None  # resolved at train start, FLOP/s

    @staticmethod
    def _model_config(pl_module: L.LightningModule) -> Any:
        config = getattr(pl_module, "glm_config", None)
        if config is None:
            config = getattr(getattr(pl_module, "model", None), "config", None)
        if config is None or not hasattr(config, "flops_per_token"):
            raise ValueError(
                f"MFUMonitor: {type(pl_module).__name__} has no GLMConfig (`glm_config` or "
                "`model.config` with flops_per_token)"
            )
        return config

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._config = self._model_config(pl_module)
        if self.peak_tflops is not None:
            self.peak_flops = self.peak_tflops * 1e12
        elif pl_module.device.type == "cuda":
            name = torch.cuda.get_device_name(pl_module.device)
            peak = lookup_peak_tflops(name, compute_dtype(str(trainer.precision)), self.device_peaks)
            self.peak_flops = None if peak is None else peak * 1e12
        else:
            self.peak_flops = None
        self._flops, self._last_step, self._steps_done = 0.0, int(trainer.global_step), 0
        self._start = self.clock() if self.skip_steps == 0 else None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = int(trainer.global_step)
        stepped = step != self._last_step  # this micro-batch closed an optimizer step
        self._last_step = step
        self._steps_done += stepped
        if self._start is None:  # warm-up: the clock starts when the skipped steps are done
            if self._steps_done >= self.skip_steps:
                self._flops, self._start = 0.0, self.clock()
            return
        ids = batch.get("input_ids") if isinstance(batch, Mapping) else None
        if ids is not None:
            flops = float(self._config.flops_per_token(int(ids.shape[-1]))) * ids.numel()
            head_positions = getattr(pl_module, "head_positions", None)
            projected = head_positions(batch) if callable(head_positions) else None
            if projected is not None:  # the head runs only there (e.g. Part B in pretraining)
                flops -= float(self._config.head_flops_per_token()) * (ids.numel() - projected)
            self._flops += flops
        if stepped and step % self.every_n_steps == 0 and self._start is not None:
            now = self.clock()
            elapsed = now - self._start
            if elapsed > 0:
                rate = self._flops / elapsed
                pl_module.log("perf/flops_per_s", rate, on_step=True, on_epoch=False, rank_zero_only=True)
                if self.peak_flops:
                    pl_module.log(
                        "perf/mfu", rate / self.peak_flops, on_step=True, on_epoch=False, rank_zero_only=True
                    )
            self._flops, self._start = 0.0, now


# ---- runs that survive crashes ----
# Resume = the same command + ``hydra.run.dir=<old run dir> ckpt_path=last`` (see ``glm.run.pipeline``). For
# that, ``last.ckpt`` must be recent and complete: every file is written by glm.checkpoint.io's
# AtomicCheckpointIO (temp file in the checkpoint dir + fsync + rename, sha256 sidecar), so ``last.ckpt`` is
# either the previous complete checkpoint or the new complete one. Sharded (FSDP) checkpoints are directories
# rewritten in place; keep ``save_top_k >= 1`` there so a second complete copy exists.


class RunCheckpoint(LastCheckpointHooks):
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
        return self.state_key_of(
            monitor=self.monitor, mode=self.mode, every_n_train_steps=self.every_n_steps, periodic=True
        )

    def on_last_checkpoint_saved(self, trainer: L.Trainer) -> None:
        self._last_step_in_last = trainer.global_step

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        if trainer.is_global_zero and self.dirpath and os.path.isdir(self.dirpath):
            # temp files of writes a SIGKILL interrupted (atomic_write's ".<name>.*.tmp"; nothing else
            # writes into this dir while the run owns it)
            stale = [
                e.path for e in os.scandir(self.dirpath) if e.name.startswith(".") and e.name.endswith(".tmp")
            ]
            for path in stale:
                os.unlink(path)
            if stale:
                log.info(
                    "removed %d temp file(s) of an interrupted checkpoint write from %s",
                    len(stale),
                    self.dirpath,
                )

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
            self.save_last_now(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last and not trainer.fast_dev_run and trainer.global_step != self._last_step_in_last:
            self.save_last_now(trainer)
