"""The sweep failure report (glm/run/sweep.py) on hand-made sweep dirs: which FAILED markers count as this
sweep's, the one-line reasons, the summary lines and the exit status run.py uses."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from glm.errors import ConfigError, DataFormatError
from glm.run import sweep
from glm.run.wrappers import failure_reason
from glm.utils.fs import atomic_write


def _job(sweep_dir: Path, num: int, overrides: list[str], reason: str | None) -> Path:
    """A job dir as Hydra and the task wrapper leave it; ``reason`` None: a job that succeeded."""
    job = sweep_dir / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"num": num}}}))
    if reason is not None:
        atomic_write(job / "FAILED", f"{reason}\n\nTraceback (most recent call last):\n  ...\n")
    return job / "FAILED"


def test_failure_reason_is_one_line() -> None:
    assert failure_reason(ConfigError("seed: expected an int")) == "Config error: seed: expected an int"
    assert failure_reason(DataFormatError("a.jsonl:3: label")) == "Input error: a.jsonl:3: label"
    assert failure_reason(RuntimeError("first\n  second\n")) == "RuntimeError: first second"
    assert failure_reason(KeyError("k")) == "KeyError: 'k'"


def test_only_markers_written_during_the_sweep_are_reported(tmp_path: Path) -> None:
    d = tmp_path / "sweep"
    stale = _job(d, 5, ["lr=1", "seed=5"], "Config error: from an earlier sweep")
    rewritten = _job(d, 1, ["lr=1", "seed=1"], "Config error: old reason")
    old = stale.stat().st_mtime - 3600
    for marker in (stale, rewritten):
        os.utime(marker, (old, old))
    before = sweep._marker_stamps(d)
    assert set(before) == {stale, rewritten}
    assert sweep.failed_jobs(d, before) == []  # nothing new yet

    _job(d, 3, ["lr=1", "data.files=[${paths.data_dir}/x]"], "RuntimeError: boom")  # listed as written
    _job(d, 2, ["lr=1", "seed=2"], None)
    atomic_write(
        rewritten, "Config error: seed: new reason\n\ntrace\n"
    )  # this sweep's job 1 failed again there
    jobs = sweep.failed_jobs(d, before)
    assert [(j.num, j.reason, j.marker) for j in jobs] == [
        (1, "Config error: seed: new reason", rewritten),
        (3, "RuntimeError: boom", d / "3" / "FAILED"),
    ]
    assert jobs[0].overrides == ["lr=1", "seed=1"]
    assert sweep.format_failures(jobs, ["lr=1", "seed=1,2,3"]).splitlines() == [
        "Sweep: 2 jobs failed (tracebacks in the FAILED files):",
        f"  job 1 (seed=1): Config error: seed: new reason -- {rewritten}",
        f"  job 3 (data.files=[${{paths.data_dir}}/x]): RuntimeError: boom -- {d / '3' / 'FAILED'}",
    ]
    # no override of its own (a one-point "sweep"): all of them; no .hydra dir: no number
    assert (
        sweep.format_failures(jobs[:1], ["lr=1", "seed=1"])
        .splitlines()[1]
        .startswith("  job 1 (lr=1 seed=1): ")
    )
    bare = tmp_path / "bare" / "x" / "FAILED"
    atomic_write(bare, "ValueError: v\n")
    (job,) = sweep.failed_jobs(tmp_path / "bare", {})
    assert (
        sweep.format_failures([job], []).splitlines()[1] == f"  job ? (no overrides): ValueError: v -- {bare}"
    )


def test_sweep_report_sets_the_exit_status(tmp_path: Path, capsys) -> None:
    d = tmp_path / "sweep"
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(d)}, "overrides": {"task": ["seed=1,2"]}}})
    _job(d, 0, ["seed=1"], "Config error: stale")  # before the sweep started
    report = sweep.SweepReport()
    report.on_multirun_start(cfg)
    _job(d, 1, ["seed=2"], None)
    report.on_multirun_end(cfg)
    assert sweep.exit_status() == 0 and capsys.readouterr().err == ""

    report.on_multirun_start(cfg)
    _job(d, 2, ["seed=2"], "RuntimeError: boom")
    report.on_multirun_end(cfg)
    err = capsys.readouterr().err
    assert sweep.exit_status() == sweep.FAILED_EXIT_STATUS == 1
    assert err.splitlines()[1:] == [f"  job 2 (seed=2): RuntimeError: boom -- {d / '2' / 'FAILED'}"]
    report.on_multirun_start(cfg)  # the next multirun in this process starts clean
    assert sweep.exit_status() == 0


def test_job_failed_writes_a_marker_only_where_the_run_left_none(tmp_path: Path) -> None:
    try:
        raise ConfigError("optimized_metric: 'val/loss' was not logged by this sweep job; logged: nothing")
    except ConfigError as err:
        sweep.job_failed(err, tmp_path)
    reason, blank, trace = (tmp_path / "FAILED").read_text().split("\n", 2)
    assert (
        reason
        == "Config error: optimized_metric: 'val/loss' was not logged by this sweep job; logged: nothing"
    )
    assert blank == "" and trace.startswith("Traceback (most recent call last):")
    (tmp_path / "FAILED").write_text("RuntimeError: written by the task wrapper\n")
    sweep.job_failed(RuntimeError("again"), tmp_path)
    assert (tmp_path / "FAILED").read_text() == "RuntimeError: written by the task wrapper\n"
