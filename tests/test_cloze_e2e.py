"""`+experiment=superglue_<task> model=glm_tiny` end to end for all eight tasks (fit -> validate -> predict),
run in-process through `glm.pipeline.run` on the composed Hydra config, on real SuperGLUE files.

Checks per task: metrics.json holds the task's metrics in range, and its main metric equals the value
recomputed here by hand from `val_predictions.jsonl` (accuracy, CB macro-F1, MultiRC F1a / per-question EM,
ReCoRD max-over-golds EM); every validation line's prediction is the argmax of its scores; the
submission file `test/<TASK>.jsonl` has one line per test example read, in file order, with the record's
`idx` and a label from the task's label set (MultiRC nested per paragraph/question, as SuperGLUE expects).
"""

from __future__ import annotations

import json
import math
import re
import string
from pathlib import Path

import pytest

from glm.data.superglue import get_task
from glm.pipeline import run

from conftest import data_root, need_data

N_EVAL = 8
# small limits: a couple of optimizer steps, a few examples; ReCoRD/WSC carry many candidates per example
SMALL = ["model=glm_tiny", "logger=none", "callbacks.progress=null", "trainer.enable_model_summary=false",
         "trainer.max_steps=2", "data.micro_batch_size=4", "data.global_batch_size=4", "data.eval_batch_size=4",
         "data.max_train_examples=8", f"data.max_eval_examples={N_EVAL}", "data.seq_length=128"]
PER_TASK = {
    "record": ["data.max_train_examples=2", "data.micro_batch_size=2", "data.global_batch_size=2",
               "data.max_eval_examples=3", "data.seq_length=96"],
    "wsc": ["data.seq_length=64", "data.max_eval_examples=4"],
}
MAIN = {"boolq": "val/acc", "cb": "val/f1", "copa": "val/acc", "multirc": "val/f1a", "record": "val/f1",
        "rte": "val/acc", "wic": "val/acc", "wsc": "val/acc"}
METRICS = {"cb": ["val/acc", "val/f1"], "multirc": ["val/acc", "val/f1a", "val/em"], "record": ["val/f1", "val/em"]}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _squad_norm(text: str) -> str:
    """SQuAD answer normalisation, written out here: lower, drop punctuation and articles, squeeze spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def _macro_f1(pred: list[int], gold: list[int], classes: int) -> float:
    f1s = []
    for c in range(classes):
        tp = sum(p == c and g == c for p, g in zip(pred, gold, strict=True))
        fp = sum(p == c and g != c for p, g in zip(pred, gold, strict=True))
        fn = sum(p != c and g == c for p, g in zip(pred, gold, strict=True))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / classes


def _expected_main(task: str, lines: list[dict]) -> dict[str, float]:
    """The metrics recomputed from the validation predictions file."""
    t = get_task(task)
    if task == "record":
        em = [max(_squad_norm(r["prediction"]) == _squad_norm(a) for a in r["answers"]) for r in lines]
        return {"val/em": sum(em) / len(em)}
    if task in ("copa", "multirc"):
        pred = [int(r["prediction"]) for r in lines]
        gold = [int(r["label"]) for r in lines]
    else:
        pred = [t.labels.index(r["prediction"]) for r in lines]
        gold = [t.labels.index(r["label"]) for r in lines]
    out = {"val/acc": sum(p == g for p, g in zip(pred, gold, strict=True)) / len(lines)}
    if task == "cb":
        out["val/f1"] = _macro_f1(pred, gold, 3)
    if task == "multirc":
        tp = sum(p == 1 and g == 1 for p, g in zip(pred, gold, strict=True))
        fp = sum(p == 1 and g == 0 for p, g in zip(pred, gold, strict=True))
        fn = sum(p == 0 and g == 1 for p, g in zip(pred, gold, strict=True))
        out["val/f1a"] = 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)
        questions: dict[tuple, bool] = {}
        for r, p, g in zip(lines, pred, gold, strict=True):
            key = (r["idx"]["paragraph"], r["idx"]["question"])
            questions[key] = questions.get(key, True) and p == g
        out["val/em"] = sum(questions.values()) / len(questions)
    return out


def _test_items(task: str, n: int) -> list:
    """The submission ids of the first n test examples, in file order (MultiRC: (paragraph, question, answer))."""
    t = get_task(task)
    items: list = []
    for line in (data_root() / "superglue" / t.dirname / "test.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if task == "multirc":
            for q in rec["passage"]["questions"]:
                items += [(rec["idx"], q["idx"], a["idx"]) for a in q["answers"]]
        else:
            items.append(rec["idx"])
        if len(items) >= n:
            break
    return items[:n]


@pytest.mark.parametrize("task", ["boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc"])
def test_superglue_experiment_end_to_end(task: str, compose_cfg, tmp_path: Path) -> None:
    t = get_task(task)
    need_data(f"superglue/{t.dirname}/train.jsonl")
    need_data("tokenizers/bert-base-uncased/vocab.txt")
    overrides = SMALL + PER_TASK.get(task, [])
    cfg = compose_cfg(f"superglue_{task}", overrides)
    assert cfg.optimized_metric == MAIN[task] == t.main_metric
    assert list(cfg.stages) == (["fit", "validate"] if task == "record" else ["fit", "validate", "predict"])
    returned = run(cfg)
    out = tmp_path / "run"

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == pytest.approx(returned, nan_ok=True)
    for key in METRICS.get(task, ["val/acc"]):
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics)
    assert math.isfinite(metrics["train/loss"]) and metrics["train/loss"] > 0
    assert metrics["seed"] == cfg.seed

    lines = _read_jsonl(out / "val_predictions.jsonl")
    n_val = int(cfg.data.max_eval_examples)
    assert len(lines) == n_val  # every split here has more examples than the limit
    for r in lines:
        best = max(range(len(r["scores"])), key=r["scores"].__getitem__)
        if task == "record":
            assert len(r["candidates"]) == len(r["scores"]) and r["prediction"] == r["candidates"][best]
        elif task in ("copa", "multirc"):
            assert r["prediction"] == best
        elif task == "wsc":  # True iff the marked span (candidate 0) scores highest
            assert r["prediction"] == ("True" if best == 0 else "False")
        else:
            assert r["prediction"] == t.labels[best]
    for key, value in _expected_main(task, lines).items():
        assert metrics[key] == pytest.approx(value, abs=1e-6), key
    val_metrics = json.loads((out / "val_metrics.json").read_text())
    assert val_metrics["task"] == task and val_metrics["main_metric"] == MAIN[task]
    assert val_metrics["optimized_metric"] == pytest.approx(metrics[MAIN[task]], abs=1e-6)

    submission = out / "test" / f"{t.dirname}.jsonl"
    if task == "record":  # no ReCoRD test file in the shared data (FewGLUE train + dev32 only)
        assert not submission.exists()
        return
    rows = _read_jsonl(submission)
    expected = _test_items(task, n_val)
    if task == "multirc":
        got = [(p["idx"], q["idx"], a["idx"]) for p in rows for q in p["passage"]["questions"] for a in q["answers"]]
        labels = [a["label"] for p in rows for q in p["passage"]["questions"] for a in q["answers"]]
        assert got == expected and set(labels) <= {0, 1}
        return
    assert [r["idx"] for r in rows] == expected
    assert all(set(r) == {"idx", "label"} for r in rows)
    allowed = {0, 1} if task == "copa" else set(t.labels)
    assert {r["label"] for r in rows} <= allowed, rows
