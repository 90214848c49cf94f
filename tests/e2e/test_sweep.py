"""Hydra multiruns of ci_tiny. A 2x2 grid: four run dirs, four metrics.json, four finished W&B offline runs, each
with its own run id (one W&B run per job thanks to wandb.finish() in the task wrapper). A bad job (a config error
or a bug) fails alone: the later jobs run, the summary on stderr lists it, the command exits 1; a preempted job
still stops the sweep."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml
from conftest import need_data, run_cli

BOOM = "tests.e2e.scripts.boom.RaiseAtStep"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")  # the ci_tiny tokenizer is trained once for the sweeps below


def _sweep(tmp_path: Path, cache: Path, *overrides: str, env: dict[str, str] | None = None):
    """``run.py -m`` on ci_tiny (2 steps) with the sweep dir ``tmp_path/sweep`` unless ``overrides`` set one."""
    need_data("gutenberg/11-0.txt")
    args = ["-m", "+experiment=ci_tiny", "trainer.max_steps=2", "trainer.val_check_interval=2"]
    if not any(o.startswith("paths.log_dir=") for o in overrides):
        args.append(f"hydra.sweep.dir={tmp_path / 'sweep'}")
    args += [f"paths.cache_dir={cache}", *overrides]
    return run_cli(args, tmp_path, timeout=300, env=env or {"WANDB_MODE": "disabled"})


def _summary(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("  job ")]


def _stale_marker(job_dir: Path, overrides: list[str]) -> Path:
    """A FAILED marker as an earlier sweep into the same dir left it, an hour ago."""
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    marker = job_dir / "FAILED"
    marker.write_text("Config error: from an earlier sweep\n")
    old = time.time() - 3600
    os.utime(marker, (old, old))
    return marker


def test_two_by_two_sweep_with_offline_wandb(tmp_path: Path) -> None:
    need_data("gutenberg/11-0.txt")
    sweep = tmp_path / "sweep"
    r = run_cli(
        [
            "-m",
            "+experiment=ci_tiny",
            "task.optimizer.lr=1e-3,3e-4",
            "seed=1,2",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            f"hydra.sweep.dir={sweep}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        tmp_path,
        timeout=400,
        env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"},
    )
    assert r.returncode == 0, r.stderr[-4000:]
    assert "Sweep:" not in r.stderr  # no failure list
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    run_ids, combos = set(), set()
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        assert "val/loss" in metrics and not (job / "FAILED").exists()
        cfg = yaml.safe_load((job / "config.yaml").read_text())
        combos.add((cfg["task"]["optimizer"]["lr"], cfg["seed"]))
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, f"{job}: expected one offline run, found {runs}"
        run_dir = runs[0]
        run_id = run_dir.name.rsplit("-", 1)[1]
        records = (run_dir / f"run-{run_id}.wandb").read_bytes()
        assert b"train/loss" in records and b"val/loss" in records  # metrics went into this job's run
        log = (run_dir / "logs" / "debug.log").read_text()
        assert f"finishing run glm-lightning/{run_id}" in log  # wandb.finish() ran for this job
        assert "got exitcode: 0" in log
        run_ids.add(run_id)
    assert len(run_ids) == 4  # every job its own W&B run
    assert combos == {(1e-3, 1), (1e-3, 2), (3e-4, 1), (3e-4, 2)}  # the four grid points


def test_a_bad_job_fails_alone_and_is_listed(tmp_path: Path, cache: Path) -> None:
    sweep = tmp_path / "sweep"
    stale_elsewhere = _stale_marker(sweep / "7", ["seed=7"])  # a job dir this sweep does not use
    stale_rerun = _stale_marker(sweep / "2", ["seed=3"])  # this sweep's job 2 reruns there and succeeds
    r = _sweep(tmp_path, cache, "logger=none", "seed=1,abc,3")
    assert r.returncode == 1, r.stderr[-4000:]
    for ok in ("0", "2"):  # the jobs before and after the bad one
        assert json.loads((sweep / ok / "metrics.json").read_text())["val/loss"] > 0
        assert not (sweep / ok / "FAILED").exists()
    assert not stale_rerun.exists()  # removed by the successful rerun in that dir
    marker = sweep / "1" / "FAILED"
    reason, blank, *trace = marker.read_text().splitlines()
    assert reason == "Config error: seed: expected a non-negative int, got 'abc'"
    assert blank == "" and trace[0] == "Traceback (most recent call last):"
    assert _summary(r.stderr) == [
        f"  job 1 (seed=abc): {reason} -- {marker}"
    ]  # the stale markers are not listed
    assert "Sweep: 1 job failed" in r.stderr and str(stale_elsewhere) not in r.stderr
    assert "Traceback" not in r.stderr


def test_a_bug_in_one_job_fails_it_alone(tmp_path: Path, cache: Path) -> None:
    # In the default sweep dir: it holds ${experiment_name}, which the report (and the sweeper, for multirun.yaml)
    # resolve outside any job; it must be the dir the jobs write to.
    out = tmp_path / "outputs"
    r = _sweep(
        tmp_path,
        cache,
        f"paths.log_dir={out}",
        f"+callbacks.boom._target_={BOOM}",
        "+callbacks.boom.step=1,100",  # job 0 raises after step 1; job 1 never reaches step 100
        env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"},
    )
    assert r.returncode == 1, r.stderr[-4000:]
    # nothing under pretrain/default/multiruns (where multirun.yaml went while the name resolved to "default")
    assert [p.name for p in (out / "pretrain").iterdir()] == ["ci_tiny"]
    (sweep,) = (out / "pretrain" / "ci_tiny" / "multiruns").iterdir()
    assert (sweep / "multirun.yaml").is_file()
    marker = sweep / "0" / "FAILED"
    reason = marker.read_text().splitlines()[0]
    assert reason == "RuntimeError: injected bug at step 1 second line of the message"
    assert _summary(r.stderr) == [f"  job 0 (+callbacks.boom.step=1): {reason} -- {marker}"]
    assert "Traceback" not in r.stderr
    assert "val/loss" in json.loads((sweep / "1" / "metrics.json").read_text())
    (run,) = (sweep / "0" / "wandb").glob("offline-run-*")  # the failed job's W&B run was finished as failed
    assert "got exitcode: 1" in (run / "logs" / "debug.log").read_text()


def test_a_preempted_job_stops_the_sweep(tmp_path: Path, cache: Path) -> None:
    sweep = tmp_path / "sweep"
    r = _sweep(
        tmp_path,
        cache,
        "logger=none",
        f"+callbacks.boom._target_={BOOM}",
        "+callbacks.boom.step=1",
        "+callbacks.boom.preempt=true",
        "seed=1,2",
    )
    assert r.returncode == 128 + 15, r.stderr[-4000:]
    assert "Preempted: stopped by SIGTERM at step 1" in r.stderr
    assert not (sweep / "1").exists()  # job 1 never started
    assert "Sweep:" not in r.stderr  # no summary: the sweep did not end
