"""The SuperGLUE recipe for real: `recipes/superglue/run_all.sh` runs a tiny 2-task x 2-seed sweep (glm_tiny,
two steps per job, a Hydra multirun per task), then its aggregation writes the paper-ordered table, CSV and plot.
Every number in the table and CSV is checked against the jobs' own metrics.json files."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO, data_root, need_data

PAPER_COLUMNS = [
    "ReCoRD F1",
    "ReCoRD Acc",
    "COPA",
    "WSC",
    "RTE",
    "BoolQ",
    "WiC",
    "CB F1",
    "CB Acc",
    "MultiRC F1a",
    "MultiRC EM",
    "Avg",
]
SMALL = [
    "model=glm_tiny",
    "logger=none",
    "callbacks.progress=null",
    "trainer.enable_model_summary=false",
    "trainer.max_steps=2",
    "data.max_train_examples=8",
    "data.max_eval_examples=8",
    "data.micro_batch_size=4",
    "data.global_batch_size=4",
    "data.eval_batch_size=4",
    "data.seq_length=64",
    "export_dir=null",
]


def test_run_all_sweep_then_aggregate(tmp_path: Path) -> None:
    need_data("superglue/COPA/train.jsonl")
    need_data("superglue/CB/train.jsonl")
    need_data("tokenizers/bert-base-uncased/vocab.txt")
    root = tmp_path / "sweep"
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "RANK")}
    env.update(
        TASKS="copa cb",
        ROOT=str(root),
        GLM_DATA_ROOT=str(data_root().absolute()),
        GLM_OUTPUT_ROOT=str(tmp_path / "outputs"),
        PYTHON=sys.executable,  # the interpreter that has the project, whatever `python` on PATH is
    )
    proc = subprocess.run(
        ["bash", str(REPO / "recipes" / "superglue" / "run_all.sh"), "none", "1,2", *SMALL],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    # four jobs: task x seed, each with its own metrics.json and resolved config
    jobs: dict[tuple[str, int], dict] = {}
    for metrics_path in root.glob("*/*/metrics.json"):
        cfg = yaml.safe_load((metrics_path.parent / "config.yaml").read_text())
        metrics = json.loads(metrics_path.read_text())
        assert metrics["seed"] == cfg["seed"]
        jobs[(cfg["data"]["task"], cfg["seed"])] = metrics
    assert sorted(jobs) == [("cb", 1), ("cb", 2), ("copa", 1), ("copa", 2)]
    assert all((root / "copa" / n / "test" / "COPA.jsonl").is_file() for n in ("0", "1"))

    def mean_std(key: str, task: str) -> tuple[float, float]:
        vals = [100 * jobs[(task, s)][key] for s in (1, 2)]
        return statistics.fmean(vals), statistics.stdev(vals)

    expected = {
        "COPA": mean_std("val/acc", "copa"),
        "CB F1": mean_std("val/f1", "cb"),
        "CB Acc": mean_std("val/acc", "cb"),
    }
    cb_score = statistics.fmean(
        statistics.fmean([100 * jobs[("cb", s)]["val/f1"], 100 * jobs[("cb", s)]["val/acc"]]) for s in (1, 2)
    )
    avg = statistics.fmean([expected["COPA"][0], cb_score])

    lines = (root / "superglue_results.md").read_text().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == PAPER_COLUMNS
    row = dict(zip(header, [c.strip() for c in lines[2].strip("|").split("|")], strict=True))
    for col, (m, s) in expected.items():
        assert row[col] == f"{m:.1f} ± {s:.1f}", (col, row[col])
    assert row["Avg"] == f"{avg:.1f}"
    assert all(row[c] == "-" for c in PAPER_COLUMNS if c not in expected and c != "Avg")

    rows = {r["column"]: r for r in csv.DictReader((root / "superglue_results.csv").open())}
    for col, (m, s) in expected.items():
        assert abs(float(rows[col]["mean"]) - m) < 1e-3 and abs(float(rows[col]["std"]) - s) < 1e-3
        assert rows[col]["n_seeds"] == "2"
    assert abs(float(rows["Avg"]["mean"]) - avg) < 1e-3
    png = root / "superglue_results.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
