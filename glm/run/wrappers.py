"""``task_wrapper``: failure bookkeeping and teardown around one Hydra job (docs/lightning-hydra-notes.md §P3, §P9)."""

from __future__ import annotations

import functools
import gc
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig

from glm.errors import Preempted, UserError
from glm.utils.fs import atomic_write

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
FAILED_MARKER = "FAILED"


def _output_dir(cfg: DictConfig) -> Path | None:
    try:
        return Path(cfg.paths.output_dir)
    except Exception:  # noqa: BLE001  (no Hydra context (e.g. a hand-built config): nowhere to write markers)
        return None


def failure_reason(err: BaseException) -> str:
    """The one-line reason a ``FAILED`` marker starts with (and a sweep summary shows):
    ``<label> error: <message>`` for a :class:`UserError`, ``<ExceptionType>: <message>`` otherwise."""
    text = f"{err.label} error: {err}" if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
    return " ".join(part.strip() for part in text.splitlines() if part.strip())  # one line, always


def finish_wandb(exit_code: int) -> None:
    """Close the active W&B run so the next job of a multirun gets its own, with the real exit code."""
    if "wandb" not in sys.modules:
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)


def teardown() -> None:
    """Destroy the process group and clear rank variables and caches so the next job starts clean."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for key in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "RANK"):
        if os.environ.get("GLM_KEEP_RANK_ENV") is None:
            os.environ.pop(key, None)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def task_wrapper(fn: F) -> F:
    """On failure: log the traceback (to the run's log file), write ``<run dir>/FAILED`` (first line
    :func:`failure_reason`, then the traceback), re-raise. A :class:`~glm.errors.Preempted` stop is logged
    in one line and ``FAILED`` holds its message (the step and the resume command) instead of a traceback;
    W&B gets exit code ``128 + signum``.
    On success: remove a ``FAILED`` left by an earlier attempt in the same dir. Always:
    ``wandb.finish(exit_code)`` and :func:`teardown`."""

    @functools.wraps(fn)
    def wrapped(cfg: DictConfig, *args: Any, **kwargs: Any) -> Any:
        exit_code = 0
        try:
            result = fn(cfg, *args, **kwargs)
            out = _output_dir(cfg)
            if out is not None:  # a rerun / resume in the dir of a failed attempt: that marker is stale now
                (out / FAILED_MARKER).unlink(missing_ok=True)
            return result
        except BaseException as err:
            exit_code = 1
            text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
            marker = f"{failure_reason(err)}\n\n{text}"
            if isinstance(err, Preempted):
                # not a failure: a stop with a checkpoint; FAILED says where and how to resume
                exit_code = err.exit_code
                marker = f"{err}\n"
                log.warning("%s", err)
            elif isinstance(
                err, UserError
            ):  # the CLI prints the message alone; the traceback goes to FAILED only
                log.error("run failed: %s: %s", type(err).__name__, err)
            else:
                log.error("run failed:\n%s", text)
            out = _output_dir(cfg)
            if out is not None:
                try:
                    atomic_write(out / FAILED_MARKER, marker)
                except OSError:
                    log.warning("could not write the FAILED marker in %s", out)
            raise
        finally:
            try:
                finish_wandb(exit_code)
            finally:
                teardown()

    return wrapped  # type: ignore[return-value]
