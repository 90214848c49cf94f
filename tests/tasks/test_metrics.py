"""SuperGLUE metrics against hand-computed values; the sweep aggregation table and plot."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from glm.metrics import GroupedExactMatch, SuperGLUEMetrics, squad_em_f1

REPO = Path(__file__).resolve().parents[2]


def test_cb_macro_f1_and_acc():
    m = SuperGLUEMetrics("cb", 3)
    m.update(torch.tensor([0, 0, 1, 2, 2]), torch.tensor([0, 1, 1, 2, 0]))
    out = m.compute()
    # per class F1: c0 P=1/2 R=1/2 -> 1/2; c1 P=1 R=1/2 -> 2/3; c2 P=1/2 R=1 -> 2/3
    assert math.isclose(out["f1"], (0.5 + 2 / 3 + 2 / 3) / 3, rel_tol=1e-6)
    assert math.isclose(out["acc"], 3 / 5, rel_tol=1e-6)


def test_multirc_f1a_and_em_per_question():
    m = SuperGLUEMetrics("multirc", 2)
    # question 5: both answers right; question 7: one wrong; question 9: right. Updates split across calls.
    m.update(torch.tensor([1, 0]), torch.tensor([1, 0]), torch.tensor([5, 5]))
    m.update(torch.tensor([1, 1]), torch.tensor([0, 1]), torch.tensor([7, 9]))
    out = m.compute()
    assert math.isclose(out["f1a"], 2 * 2 / (2 * 2 + 1 + 0), rel_tol=1e-6)  # TP 2, FP 1, FN 0
    assert math.isclose(out["em"], 2 / 3, rel_tol=1e-6)
    assert math.isclose(out["acc"], 3 / 4, rel_tol=1e-6)
    g = GroupedExactMatch()
    g.update(torch.tensor([1, 1, 0]), torch.tensor([1, 0, 0]), torch.tensor([3, 3, 3]))
    assert float(g.compute()) == 0.0


def test_record_squad_normalisation_and_max_over_golds():
    assert squad_em_f1("The  Eiffel Tower!", ["eiffel tower", "Paris"]) == (1.0, 1.0)  # case, article, punct
    em, f1 = squad_em_f1("Benazir", ["Benazir Bhutto", "Bhutto"])
    assert em == 0.0 and math.isclose(f1, 2 * (1 * 0.5) / 1.5, rel_tol=1e-6)  # P=1, R=1/2 on the first gold
    em, f1 = squad_em_f1("Bhutto", ["Benazir Bhutto", "Bhutto"])
    assert (em, f1) == (1.0, 1.0)  # the max over golds
    m = SuperGLUEMetrics("record", 0)
    m.update(pred_texts=["Benazir", "a cat"], gold_texts=[["Benazir Bhutto", "Bhutto"], ["the dog"]])
    out = m.compute()
    assert math.isclose(out["f1"], (2 / 3 + 0.0) / 2, rel_tol=1e-6) and out["em"] == 0.0


def _aggregate_module():
    spec = importlib.util.spec_from_file_location(
        "aggregate", REPO / "recipes" / "superglue" / "aggregate.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_aggregation_table_and_plot(tmp_path):
    fake = {
        ("copa", 1): {"val/acc": 0.70},
        ("copa", 2): {"val/acc": 0.80},
        ("cb", 1): {"val/f1": 0.60, "val/acc": 0.80},
        ("cb", 2): {"val/f1": 0.70, "val/acc": 0.90},
    }
    for i, ((task, seed), metrics) in enumerate(fake.items()):
        d = tmp_path / "multiruns" / str(i)
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"task": task, "seed": seed, **metrics}))
    agg = _aggregate_module()
    md, csv_path, png = agg.write_outputs(tmp_path, tmp_path / "out")
    lines = md.read_text().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == [
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
    row = dict(zip(header, [c.strip() for c in lines[2].strip("|").split("|")], strict=True))
    sd = math.sqrt(((70 - 75) ** 2 + (80 - 75) ** 2) / 1)  # sample std over the two seeds = 7.07
    assert (
        row["COPA"] == f"75.0 ± {sd:.1f}"
        and row["CB F1"] == f"65.0 ± {sd:.1f}"
        and row["CB Acc"] == f"85.0 ± {sd:.1f}"
    )
    assert row["RTE"] == "-"
    assert row["Avg"] == f"{(75 + (65 + 85) / 2) / 2:.1f}"  # CB's score is the mean of F1 and Acc
    rows = {r["column"]: r for r in csv.DictReader(csv_path.open())}
    assert math.isclose(float(rows["COPA"]["mean"]), 75.0) and rows["COPA"]["n_seeds"] == "2"
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_aggregation_rejects_foreign_metrics_file(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match="not a cloze metrics file"):
        _aggregate_module().collect(tmp_path)
