"""Callbacks shared by the tasks: the checkpoint callback every config uses (``callbacks.checkpoint``:
:class:`RunCheckpoint`), stopping with a checkpoint on a signal (``callbacks.preemption``:
:class:`Preemption`), token throughput and model-FLOPs utilisation."""

from __future__ import annotations

import logging
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig

from glm.compat import LastCheckpointHooks, disable_lightning_slurm_requeue
from glm.errors import Preempted

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


# ---- stopping on a signal with a checkpoint (docs/preemption.md) ----
# Lightning's own SIGTERM handling raises SIGTERMException, a SystemExit without a code: the process exits 0
# (a scheduler sees success) and nothing is saved. Preemption replaces it while training: the signal sets a
# flag, and the next optimizer-step boundary writes last.ckpt (a mid-epoch checkpoint like the periodic ones,
# so the resumed run is bit-identical) and raises glm.errors.Preempted (run.py exits 128 + signum).

DEFAULT_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")


def slurm_job_id(environ: Mapping[str, str] | None = None) -> str | None:
    """The id ``scontrol requeue`` takes: ``<array job>_<task>`` for an array task, else ``SLURM_JOB_ID``;
    None outside SLURM."""
    env = os.environ if environ is None else environ
    array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return env.get("SLURM_JOB_ID") or None


def hydra_task_overrides() -> list[str] | None:
    """The command-line overrides of the running Hydra job (the sweep's values included), None without Hydra."""
    if not HydraConfig.initialized():
        return None
    return [str(o) for o in HydraConfig.get().overrides.task]


def resume_command(run_dir: str | Path, overrides: Sequence[str] | None) -> str:
    """``python run.py <overrides> hydra.run.dir=<run dir> ckpt_path=last``, shell-quoted; a ``ckpt_path``
    override of the original command is replaced. Without the overrides (no Hydra) a placeholder stands for
    them."""
    if overrides is None:
        args = ["<the same overrides>"]
    else:
        kept = [o for o in overrides if not re.match(r"^[+~]{0,2}ckpt_path=", o)]
        args = [shlex.quote(o) for o in kept]
    tail = [shlex.quote(f"hydra.run.dir={run_dir}"), "ckpt_path=last"]
    return " ".join(["python run.py", *args, *tail])


class Preemption(L.Callback):
    """Stop training on SIGTERM, SIGUSR1 or SIGINT (``signals``) with a checkpoint at a step boundary.

    While training (from the sanity check or ``on_train_start`` to the end of the fit) the signals only set a
    flag. At the next optimizer-step boundary (``on_train_batch_end`` of the micro-batch that stepped, so
    under gradient accumulation a signal in a step's first micro-batch is honoured at that step's end)
    ``last.ckpt`` is written by the run's ``RunCheckpoint`` (``save_last_now``; without one,
    ``<run_dir>/checkpoints/last.ckpt`` through ``trainer.save_checkpoint``) and :class:`glm.errors.Preempted`
    is raised with the step, the checkpoint and the resume command. A signal during validation is honoured
    at the next step boundary, or once the fit has ended when no step follows (the checkpoint is then the
    final ``last.ckpt``). Under several processes the ranks agree on the step: the flag is reduced (max of the
    signal numbers) at every boundary, so one signalled rank stops them all at the same step.

    A second SIGINT while a stop is pending raises ``KeyboardInterrupt`` at once (Lightning then exits 1
    without a checkpoint). SIGTERM and SIGUSR1 are forwarded to the processes Lightning launched (what its own
    handler does); SIGINT is not (Ctrl-C reaches the whole process group already).

    ``requeue``: after the checkpoint, rank 0 runs ``scontrol requeue <job id>`` when ``SLURM_JOB_ID`` is set;
    None (default) = only on SIGUSR1, the ``sbatch --signal=USR1@90`` warning before the time limit (SIGTERM
    under SLURM is ``scancel`` or a preemption that SLURM requeues itself). The requeued job runs the same
    command; with ``ckpt_path=auto`` in it, it resumes. Lightning's own SLURM auto-requeue (which saves
    ``hpc_ckpt_*.ckpt`` inside its signal handler, mid-step) is turned off in ``setup``.
    """

    def __init__(
        self,
        run_dir: str | None = None,
        requeue: bool | None = None,
        signals: Sequence[str] = DEFAULT_SIGNALS,
    ) -> None:
        self.run_dir = None if run_dir is None else str(run_dir)
        self.requeue = requeue
        self.signals: list[signal.Signals] = []
        for name in signals:
            number = getattr(signal, str(name).upper(), None)
            if not isinstance(number, signal.Signals) or number in (signal.SIGKILL, signal.SIGSTOP):
                raise ValueError(
                    f"callbacks.preemption.signals: {name!r} is not a signal that can be caught "
                    "(e.g. SIGTERM, SIGUSR1, SIGINT)"
                )
            self.signals.append(number)
        self._pending: int | None = None  # the first signal received, not yet acted on
        self._previous: dict[int, Any] = {}  # handlers replaced while training
        self._trainer: L.Trainer | None = None
        self._last_step = -1
        self._stop_at_fit_end = 0  # signal number agreed in on_train_end (no step boundary followed)

    # -- handlers --
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self._pending is not None:
            raise KeyboardInterrupt  # the impatient second Ctrl-C
        if self._pending is not None:
            return
        self._pending = signum
        if signum == signal.SIGINT:  # os.write: print/logging are not safe inside a signal handler
            os.write(2, b"\nCtrl-C: saving a checkpoint at the end of this step (Ctrl-C again to stop now)\n")
        trainer = self._trainer
        launcher = getattr(getattr(trainer, "strategy", None), "launcher", None)
        if signum != signal.SIGINT and launcher is not None:
            launcher.kill(signum)  # the DDP children Lightning started (as its own SIGTERM handler does)

    def _install(self, trainer: L.Trainer) -> None:
        if self._previous or threading.current_thread() is not threading.main_thread():
            return
        self._trainer = trainer
        for signum in self.signals:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)

    def _restore(self) -> None:
        """Put back the handlers seen at install, where ours is still in place (Lightning's teardown may
        have restored its own originals first)."""
        for signum, handler in self._previous.items():
            if signal.getsignal(signum) == self._on_signal:
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()
        self._trainer = None

    # -- hooks --
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._pending, self._stop_at_fit_end = None, 0
        if disable_lightning_slurm_requeue(trainer):
            log.info("SLURM: Lightning's auto-requeue is off; callbacks.preemption saves and requeues")
        if self.requeue and slurm_job_id() is None:
            log.warning(
                "callbacks.preemption.requeue=true: not under SLURM (no SLURM_JOB_ID), nothing to requeue"
            )

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning registers its SIGTERM handler after on_fit_start, so ours goes in after it
        self._install(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install(trainer)
        self._last_step = int(trainer.global_step)

    def _agreed_signal(self, trainer: L.Trainer) -> int:
        signum = int(self._pending or 0)
        if trainer.world_size > 1:  # a collective: every rank reaches each boundary
            flag = torch.tensor(signum, device=trainer.strategy.root_device)
            signum = int(trainer.strategy.reduce(flag, reduce_op="max").item())
        return signum

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = int(trainer.global_step)
        if step == self._last_step:  # inside a gradient-accumulation window: no step boundary yet
            return
        self._last_step = step
        signum = self._agreed_signal(trainer)
        if signum:
            log.info("%s received: saving a checkpoint at step %d", signal.Signals(signum).name, step)
            self._stop(trainer, signum, self._save(trainer))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # training ended with a signal pending (it came during the last validation): stop after the fit,
        # from the final last.ckpt (RunCheckpoint writes it after this hook); decided here, on every rank
        self._stop_at_fit_end = self._agreed_signal(trainer)
        if self._stop_at_fit_end and self._checkpoint_callback(trainer) is None:
            self._save(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._stop_at_fit_end:
            callback = self._checkpoint_callback(trainer)
            path = callback.last_model_path if callback is not None else str(self._fallback_path(trainer))
            self._stop(trainer, self._stop_at_fit_end, path)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()

    # -- saving, requeueing, stopping --
    @staticmethod
    def _checkpoint_callback(trainer: L.Trainer) -> LastCheckpointHooks | None:
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, LastCheckpointHooks) and callback.save_last:
                return callback
        return None

    def _fallback_path(self, trainer: L.Trainer) -> Path:
        return Path(self.run_dir or trainer.default_root_dir) / "checkpoints" / "last.ckpt"

    def _save(self, trainer: L.Trainer) -> str:
        callback = self._checkpoint_callback(trainer)
        if callback is not None:
            callback.save_last_now(trainer)
            return callback.last_model_path
        path = self._fallback_path(trainer)  # where ckpt_path=last looks (glm.run.resume)
        trainer.save_checkpoint(path)
        return str(path)

    def _requeue(self, trainer: L.Trainer, signum: int) -> str | None:
        """``scontrol requeue`` on rank 0 when configured; the job id when it succeeded (None elsewhere)."""
        job = slurm_job_id()
        wanted = self.requeue if self.requeue is not None else signum == signal.SIGUSR1
        if job is None or not wanted:
            return None
        if not re.fullmatch(r"[0-9]+(_[0-9]+)?", job):
            log.warning("SLURM job id %r is not numeric: not requeued", job)
            return None
        if not trainer.is_global_zero:
            return None
        try:
            done = subprocess.run(
                ["scontrol", "requeue", job], capture_output=True, text=True, timeout=60, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            log.warning("could not requeue SLURM job %s: %s", job, err)
            return None
        if done.returncode != 0:
            log.warning("scontrol requeue %s failed (%d): %s", job, done.returncode, done.stderr.strip())
            return None
        log.info("requeued SLURM job %s", job)
        return job

    def _stop(self, trainer: L.Trainer, signum: int, path: str) -> None:
        step = int(trainer.global_step)
        self._pending, self._stop_at_fit_end = None, 0
        run_dir = self.run_dir or trainer.default_root_dir
        message = f"preempted by {signal.Signals(signum).name} at step {step}; checkpoint {path}; "
        job = self._requeue(trainer, signum)
        if trainer.world_size > 1:  # every rank's message (and FAILED) says what rank 0's scontrol did
            job = trainer.strategy.broadcast(job, src=0)
        if job is not None:
            message += f"requeued SLURM job {job} (it resumes with ckpt_path=auto in its command); "
        message += f"resume with: {resume_command(run_dir, hydra_task_overrides())}"
        raise Preempted(message, signum, step)
