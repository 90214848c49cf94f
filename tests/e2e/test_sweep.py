"""A 2x2 Hydra multirun of ci_tiny: four run dirs, four metrics.json, four finished W&B offline runs, each with
its own run id (one W&B run per job thanks to wandb.finish() in the task wrapper)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from conftest import need_data, run_cli


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
