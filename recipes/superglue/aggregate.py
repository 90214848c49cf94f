"""Collect every job's `metrics.json` of a SuperGLUE sweep into one table (markdown + CSV) and a bar plot.

    python recipes/superglue/aggregate.py OUTPUT_ROOT [--out DIR]

Columns follow the GLM paper: ReCoRD F1/Acc, COPA, WSC, RTE, BoolQ, WiC, CB F1/Acc, MultiRC F1a/EM, Avg.
Each cell is mean ± sample std over seeds, in percent. A task's score is the mean of its metrics (the
SuperGLUE convention for the two-metric tasks); Avg is the mean of the task scores that are present.
A job is a folder with a `metrics.json` (written by `glm.run.pipeline.run`). Its task is `metrics.json["task"]`,
else `data.task` of the job's resolved `config.yaml` (or `.hydra/config.yaml`); its seed is
`metrics.json["seed"]`, else `seed` of that config, else the job dir. A `metrics.json` whose job is no
cloze run (no task anywhere) is an error naming the file.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path

# (task, [(column label, metric key in metrics.json)])
COLUMNS = [
    ("record", [("ReCoRD F1", "val/f1"), ("ReCoRD Acc", "val/em")]),
    ("copa", [("COPA", "val/acc")]),
    ("wsc", [("WSC", "val/acc")]),
    ("rte", [("RTE", "val/acc")]),
    ("boolq", [("BoolQ", "val/acc")]),
    ("wic", [("WiC", "val/acc")]),
    ("cb", [("CB F1", "val/f1"), ("CB Acc", "val/acc")]),
    ("multirc", [("MultiRC F1a", "val/f1a"), ("MultiRC EM", "val/em")]),
]


def _job_config(job_dir: Path) -> dict:
    """The job's resolved run config (``config.yaml`` from the pipeline, else Hydra's copy), or {}."""
    import yaml  # comes with omegaconf / hydra

    for cfg in (job_dir / "config.yaml", job_dir / ".hydra" / "config.yaml"):
        if cfg.is_file():
            loaded = yaml.safe_load(cfg.read_text())
            return loaded if isinstance(loaded, dict) else {}
    return {}


def _task_and_seed(path: Path, payload: dict) -> tuple[str | None, str]:
    cfg = None
    task = payload.get("task")
    if task is None:
        cfg = _job_config(path.parent)
        data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
        task = data.get("task") if str(data.get("_target_", "")).endswith("ClozeDataModule") else None
    if "seed" in payload:
        return task, str(int(payload["seed"]))
    cfg = _job_config(path.parent) if cfg is None else cfg
    return task, str(cfg["seed"]) if "seed" in cfg else str(path.parent)


def collect(root: Path) -> dict[str, dict[str, dict[str, float]]]:
    """{task: {seed: {metric: value}}} from every metrics.json below `root` (later files win per task/seed)."""
    runs: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for path in sorted(root.rglob("metrics.json")):
        try:
            payload = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a cloze metrics file (bad JSON: {e})") from None
        task, seed = _task_and_seed(path, payload)
        if task is None:
            raise ValueError(
                f"{path}: not a cloze metrics file (no 'task' in it and no data.task of a "
                f"ClozeDataModule in the job's config.yaml)"
            )
        runs[str(task).lower()][seed] = {k: float(v) for k, v in payload.items() if k.startswith("val/")}
    return runs


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(runs: dict[str, dict[str, dict[str, float]]]) -> tuple[list[str], list[tuple[float, float] | None]]:
    """Header and (mean, std) per column in percent; None where the task has no runs."""
    header, cells, task_scores = [], [], []
    for task, cols in COLUMNS:
        seeds = runs.get(task, {})
        per_seed_score = []
        for label, key in cols:
            header.append(label)
            vals = [100 * m[key] for m in seeds.values() if key in m]
            cells.append(_mean_std(vals) if vals else None)
        for m in seeds.values():
            if all(k in m for _, k in cols):
                per_seed_score.append(statistics.fmean(100 * m[k] for _, k in cols))
        if per_seed_score:
            task_scores.append(statistics.fmean(per_seed_score))
    header.append("Avg")
    cells.append((statistics.fmean(task_scores), 0.0) if task_scores else None)
    return header, cells


def write_outputs(root: Path, out: Path) -> tuple[Path, Path, Path]:
    runs = collect(root)
    if not runs:
        raise FileNotFoundError(f"no metrics.json below {root}")
    header, cells = table(runs)
    out.mkdir(parents=True, exist_ok=True)
    fmt = ["-" if c is None else f"{c[0]:.1f} ± {c[1]:.1f}" for c in cells]
    fmt[-1] = "-" if cells[-1] is None else f"{cells[-1][0]:.1f}"
    md = out / "superglue_results.md"
    md.write_text(
        "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n| " + " | ".join(fmt) + " |\n"
    )
    csv_path = out / "superglue_results.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["column", "mean", "std", "n_seeds"])
        col_tasks = [t for t, c in COLUMNS for _ in c] + [None]
        for label, cell, task in zip(header, cells, col_tasks, strict=True):
            n = len(runs.get(task, {})) if task else sum(len(v) for v in runs.values())
            w.writerow(
                [label, "" if cell is None else f"{cell[0]:.4f}", "" if cell is None else f"{cell[1]:.4f}", n]
            )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [(h, c) for h, c in zip(header, cells, strict=True) if c is not None]
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(shown)), 3.5))
    ax.bar([h for h, _ in shown], [c[0] for _, c in shown], yerr=[c[1] for _, c in shown], capsize=3)
    ax.set_ylabel("score (%)")
    ax.set_title("SuperGLUE dev (mean ± std over seeds)")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    png = out / "superglue_results.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return md, csv_path, png


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path, help="folder holding the sweep's job dirs")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: ROOT)")
    args = p.parse_args(argv)
    for path in write_outputs(args.root, args.out or args.root):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
