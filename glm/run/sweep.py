"""Hydra multirun (sweep) specifics: is this job part of a sweep, the value its sweeper optimises, and
failures that stay with their job (:func:`job_failed`) and are listed when the sweep ends (:class:`SweepReport`,
:func:`exit_status`; docs/lightning-hydra-notes.md §P9)."""

from __future__ import annotations

import logging
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from glm.errors import ConfigError
from glm.run.wrappers import FAILED_MARKER, failure_reason
from glm.utils.fs import atomic_write

log = logging.getLogger(__name__)
FAILED_EXIT_STATUS = 1  # what run.py exits with when a job of the sweep failed
_exit_status = 0  # set by SweepReport.on_multirun_end, read by run.py once Hydra returns


def is_multirun() -> bool:
    """True inside a Hydra multirun (a sweep) job."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def optimized_metric(cfg: DictConfig, metrics: dict[str, float], sweep: bool = False) -> float | None:
    """The value a sweeper optimises (``cfg.optimized_metric``). Not logged: in a sweep (``sweep``) a
    ``ConfigError`` (the sweep would optimise nothing); in a single run None with a warning (a run without
    validation never logs val/loss)."""
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics:
        logged = ", ".join(sorted(metrics)) or "nothing"
        if sweep:
            raise ConfigError(
                f"optimized_metric: {name!r} was not logged by this sweep job; logged: {logged}"
            )
        log.warning("optimized_metric %r was not logged; logged: %s", name, logged)
        return None
    return metrics[name]


def job_failed(err: Exception, output_dir: Path | None = None) -> None:
    """Record that this multirun job raised ``err`` so that the sweep can go on: log the one-line reason and
    make sure the job dir (``output_dir``, default Hydra's for this job) holds a ``FAILED`` marker (the task
    wrapper writes it when the run itself raised; an error after it, e.g. :func:`optimized_metric`, left none)."""
    reason = failure_reason(err)
    log.error("job failed, the sweep goes on with the next job: %s", reason)
    out = output_dir if output_dir is not None else Path(HydraConfig.get().runtime.output_dir)
    marker = out / FAILED_MARKER
    if not marker.exists():
        trace = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        try:
            atomic_write(marker, f"{reason}\n\n{trace}")
        except OSError:  # the sweep still goes on; the summary cannot list this job
            log.warning("could not write the FAILED marker in %s", out)


@dataclass(frozen=True)
class FailedJob:
    """A failed job of a sweep, as its dir tells it."""

    num: int | None  # hydra.job.num; None when the job dir has no readable .hydra/hydra.yaml
    overrides: list[str]
    reason: str  # the marker's first line
    marker: Path


def _marker_stamps(sweep_dir: Path) -> dict[Path, tuple[int, int]]:
    # (mtime in ns, size) per marker. A marker this sweep (re)writes differs from the snapshot taken at its start,
    # whatever the clocks of the machines that ran the jobs (a remote launcher on a shared filesystem) say, which
    # comparing mtimes with the start time would trust. No inode: not stable on every network filesystem.
    stamps = {}
    for marker in sweep_dir.rglob(FAILED_MARKER) if sweep_dir.is_dir() else ():
        try:
            st = marker.stat()
        except OSError:  # removed meanwhile (a rerun in that dir succeeded)
            continue
        stamps[marker] = (st.st_mtime_ns, st.st_size)
    return stamps


def _read_job(marker: Path) -> FailedJob:
    meta = marker.parent / ".hydra"  # hydra.output_subdir
    # Plain YAML, not OmegaConf: an override such as data.files=[${paths.data_dir}/x] is text here, not to resolve.
    try:
        num: int | None = int(yaml.safe_load((meta / "hydra.yaml").read_text())["hydra"]["job"]["num"])
    except Exception:  # noqa: BLE001  (hydra.output_subdir=null or an unreadable file: listed without its number)
        num = None
    try:
        overrides = [str(o) for o in yaml.safe_load((meta / "overrides.yaml").read_text())]
    except Exception:  # noqa: BLE001  (as above)
        overrides = []
    try:
        with marker.open(encoding="utf-8", errors="replace") as f:
            reason = f.readline().strip() or "(empty FAILED file)"
    except OSError as err:
        reason = f"(FAILED file unreadable: {err})"
    return FailedJob(num, overrides, reason, marker)


def failed_jobs(sweep_dir: Path, before: dict[Path, tuple[int, int]]) -> list[FailedJob]:
    """The jobs under ``sweep_dir`` whose ``FAILED`` marker is new or rewritten since the snapshot ``before``
    (:func:`_marker_stamps` at the start of the sweep): markers left by an earlier sweep in the same dir are not
    this sweep's failures. Sorted by job number."""
    now = _marker_stamps(sweep_dir)
    jobs = [_read_job(m) for m, stamp in now.items() if before.get(m) != stamp]
    return sorted(jobs, key=lambda j: (j.num is None, j.num or 0, str(j.marker)))


def format_failures(jobs: list[FailedJob], sweep_overrides: list[str]) -> str:
    """One line per failed job: number, the overrides that differ from the command line's (all of them if
    none does), reason, marker path."""
    common = set(sweep_overrides)
    lines = [
        f"Sweep: {len(jobs)} job{'s' if len(jobs) != 1 else ''} failed (tracebacks in the FAILED files):"
    ]
    for job in jobs:
        own = [o for o in job.overrides if o not in common] or job.overrides
        num = "?" if job.num is None else job.num
        lines.append(f"  job {num} ({' '.join(own) or 'no overrides'}): {job.reason} -- {job.marker}")
    return "\n".join(lines)


class SweepReport(Callback):
    """Hydra callback (conf/hydra/default.yaml): when a multirun ends, list its failed jobs on stderr and set
    :func:`exit_status`. Runs where the sweep was launched, so it reads the markers from the sweep dir (a shared
    filesystem for remote launchers) rather than from the job returns."""

    def __init__(self) -> None:
        self._before: dict[Path, tuple[int, int]] = {}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _exit_status
        _exit_status = 0
        self._before = _marker_stamps(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global _exit_status
        jobs = failed_jobs(Path(config.hydra.sweep.dir), self._before)
        if jobs:
            overrides = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
            assert isinstance(overrides, list)
            print(format_failures(jobs, [str(o) for o in overrides]), file=sys.stderr)
            _exit_status = FAILED_EXIT_STATUS


def exit_status() -> int:
    """What ``run.py`` exits with after Hydra returns: :data:`FAILED_EXIT_STATUS` if the last multirun had a
    failed job, else 0."""
    return _exit_status
