"""`+experiment=superglue_<task> model=glm_tiny` end to end for all eight tasks (fit -> validate -> predict),
run in-process through `glm.run.pipeline.run` on the composed Hydra config, on real SuperGLUE files.

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
from conftest import data_root, need_data

from glm.data.superglue import get_task
from glm.run.pipeline import run

N_EVAL = 8
# small limits: a couple of optimizer steps, a few examples; ReCoRD/WSC carry many candidates per example
SMALL = [
    "model=glm_tiny",
    "logger=none",
    "callbacks.progress=null",
    "trainer.enable_model_summary=false",
    "trainer.max_steps=2",
    "data.micro_batch_size=4",
    "data.global_batch_size=4",
    "data.eval_batch_size=4",
    "data.max_train_examples=8",
    f"data.max_eval_examples={N_EVAL}",
    "data.seq_length=128",
]
PER_TASK = {
    "record": [
        "data.max_train_examples=2",
        "data.micro_batch_size=2",
        "data.global_batch_size=2",
        "data.max_eval_examples=3",
        "data.seq_length=96",
    ],
    "wsc": ["data.seq_length=64", "data.max_eval_examples=4"],
}
MAIN = {
    "boolq": "val/acc",
    "cb": "val/f1",
    "copa": "val/acc",
    "multirc": "val/f1a",
    "record": "val/f1",
    "rte": "val/acc",
    "wic": "val/acc",
    "wsc": "val/acc",
}
METRICS = {
    "cb": ["val/acc", "val/f1"],
    "multirc": ["val/acc", "val/f1a", "val/em"],
    "record": ["val/f1", "val/em"],
}


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
    for line in (
        (data_root() / "superglue" / t.dirname / "test.jsonl").read_text(encoding="utf-8").splitlines()
    ):
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
        got = [
            (p["idx"], q["idx"], a["idx"])
            for p in rows
            for q in p["passage"]["questions"]
            for a in q["answers"]
        ]
        labels = [a["label"] for p in rows for q in p["passage"]["questions"] for a in q["answers"]]
        assert got == expected and set(labels) <= {0, 1}
        return
    assert [r["idx"] for r in rows] == expected
    assert all(set(r) == {"idx", "label"} for r in rows)
    allowed = {0, 1} if task == "copa" else set(t.labels)
    assert {r["label"] for r in rows} <= allowed, rows


# ------------------------------------------------------------------------------------------------
# Training behaviour on real examples (glm-tiny shape, BERT vocabulary), outside the CLI


def _bert():
    need_data("tokenizers/bert-base-uncased/vocab.txt")
    from glm.tokenizer import load_tokenizer

    return load_tokenizer({"kind": "bert", "path": str(data_root() / "tokenizers" / "bert-base-uncased")})


def _tiny_module(task: str, tok, lr: float = 1e-3, **kwargs):
    from glm.tasks.cloze import ClozeModule

    model = {
        "preset": "glm-tiny",
        "vocab_size": tok.vocab_size,
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
    }
    return ClozeModule(
        model=model,
        optimizer={"lr": lr, "weight_decay": 0.0},
        scheduler={"warmup_ratio": 0.05, "decay_style": "constant"},
        task=task,
        **kwargs,
    )


def _train(module, datamodule, steps: int) -> list[float]:
    """Fit for `steps` optimizer steps (no validation); the training loss of every step."""
    import lightning as L

    losses: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Record()],
        gradient_clip_val=1.0,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(module, datamodule=datamodule)
    assert len(losses) == steps
    return losses


def _loss_falls(task: str, n_train: int, steps: int, window: int, seq_length: int) -> None:
    import lightning as L

    from glm.data.cloze import ClozeDataModule

    need_data(f"superglue/{get_task(task).dirname}/train.jsonl")
    tok = _bert()
    L.seed_everything(0)
    dm = ClozeDataModule(
        task, tok, data_root(), max_train_examples=n_train, micro_batch_size=4, seq_length=seq_length
    )
    losses = _train(_tiny_module(task, tok), dm, steps)
    first, last = sum(losses[:window]) / window, sum(losses[-window:]) / window
    # a train slice this small is memorised: the loss ends far below both its start and chance (ln 2)
    assert last < 0.25 * first and last < 0.2, (first, last, losses[::5])


def test_training_loss_falls_rte_fast() -> None:
    """40 steps on 16 RTE training examples (single-token verbalizers): start ~ln 2, end near 0."""
    _loss_falls("rte", n_train=16, steps=40, window=10, seq_length=64)


@pytest.mark.slow
def test_training_loss_falls_copa_few_hundred_steps() -> None:
    """300 steps on 64 COPA training examples (32 + their mirrors; multi-token candidates)."""
    _loss_falls("copa", n_train=64, steps=300, window=20, seq_length=64)


@pytest.mark.parametrize("freeze", [False, True])
def test_p_tuning_prompt_encoder_trains(freeze: bool) -> None:
    """With p_tuning the prompt slots carry the encoder's output: it gets gradients and changes in training;
    with freeze_backbone every backbone weight stays bit-identical, without it the backbone moves too."""
    import lightning as L
    import torch

    from glm.data.cloze import ClozeDataModule
    from glm.tasks.cloze import cloze_loss

    need_data("superglue/RTE/train.jsonl")
    tok = _bert()
    L.seed_everything(0)
    n_prompt = 3
    dm = ClozeDataModule(
        "rte",
        tok,
        data_root(),
        max_train_examples=8,
        micro_batch_size=4,
        seq_length=64,
        num_prompt_tokens=n_prompt,
    )
    module = _tiny_module(
        "rte",
        tok,
        lr=1e-2,
        num_prompt_tokens=n_prompt,
        p_tuning={"enabled": True, "encoder": "lstm", "freeze_backbone": freeze},
    )
    module.configure_model()
    batch = next(iter(dm.train_dataloader()))
    assert batch["prompt_mask"].sum(-1).eq(n_prompt).all()  # three continuous slots in every sequence
    assert (batch["input_ids"][batch["prompt_mask"]] == tok.eos_id).all()  # placeholders, replaced by embeds

    scores, gen = module.score(batch)
    cloze_loss(scores, batch["label"], "cross_entropy", gen).backward()
    for name, p in module.prompt_encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    backbone_trainable = [p.requires_grad for p in module.model.parameters()]
    assert all(backbone_trainable) if not freeze else not any(backbone_trainable)
    module.zero_grad(set_to_none=True)

    backbone0 = {k: v.clone() for k, v in module.model.state_dict().items()}
    prompt0 = {k: v.clone() for k, v in module.prompt_encoder.state_dict().items()}
    _train(module, dm, steps=3)
    prompt_changed = [
        k for k, v in module.prompt_encoder.state_dict().items() if not torch.equal(v, prompt0[k])
    ]
    backbone_changed = [k for k, v in module.model.state_dict().items() if not torch.equal(v, backbone0[k])]
    assert len(prompt_changed) == len(prompt0)  # every prompt-encoder tensor was updated
    if freeze:
        assert backbone_changed == []
    else:
        assert "word_embeddings.weight" in backbone_changed and len(backbone_changed) > len(backbone0) // 2


def test_demo_copa_finetunes_from_a_pretraining_export(compose_cfg, tmp_path: Path, capsys) -> None:
    """`make demo` part 2 on a quick pretraining (ci_tiny: glm-tiny shape, its own 2000-piece tokenizer):
    demo_copa's model group is the narrowed glm-small, so the run only works because the architecture and
    the tokenizer come from the export (the configured data.tokenizer names a path that does not exist here);
    the validation accuracy is printed and lands in metrics.json."""
    import shutil

    import torch

    need_data("gutenberg/11-0.txt")
    need_data("superglue/COPA/train.jsonl")
    run(compose_cfg("ci_tiny", ["logger=none", "trainer.max_steps=2", "trainer.val_check_interval=2"]))
    export = tmp_path / "pretrain_export"
    shutil.move(tmp_path / "run" / "export", export)
    shutil.rmtree(tmp_path / "run")

    cfg = compose_cfg(
        "demo_copa",
        [
            f"task.pretrained={export}",  # no data.tokenizer: the data must follow the export's tokenizer
            "logger=none",
            "trainer.max_steps=3",
            "data.max_train_examples=16",
            "data.max_eval_examples=16",
            "data.micro_batch_size=8",
            "data.global_batch_size=8",
            "trainer.enable_model_summary=false",
        ],
    )
    assert cfg.model.num_layers == 4 and cfg.model.hidden_size == 256  # what the config alone would build
    metrics = run(cfg)
    out = tmp_path / "run"
    assert 0.0 <= metrics["val/acc"] <= 1.0
    assert json.loads((out / "metrics.json").read_text())["val/acc"] == pytest.approx(metrics["val/acc"])
    assert yaml_load(out / "config.yaml")["data"]["tokenizer"] == str(export / "tokenizer")
    assert "val/acc" in capsys.readouterr().out  # Lightning's validation table

    exported = yaml_load(export / "model_config.yaml")
    ckpt = torch.load(next((out / "checkpoints").glob("step*.ckpt")), map_location="cpu", weights_only=True)
    model_hp = ckpt["hyper_parameters"]["model"]
    for key in ("num_layers", "hidden_size", "num_attention_heads", "vocab_size"):
        assert model_hp[key] == exported[key], key  # the checkpoint rebuilds the exported shape
    assert model_hp["hidden_dropout"] == 0.1  # a training-time field stays the run's
    assert ckpt["state_dict"]["model.word_embeddings.weight"].shape[0] == exported["vocab_size"]


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def test_validation_prediction_table_reaches_table_loggers(tmp_path: Path) -> None:
    """A logger with `log_table` (W&B's, here a CSVLogger that records the call) gets the first rows of
    val_predictions.jsonl each validation epoch."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from glm.data.cloze import ClozeDataModule
    from glm.tasks.cloze import PREDICTION_TABLE_ROWS

    class TableLogger(CSVLogger):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.tables: list[tuple[str, list[str], list[list[str]]]] = []

        def log_table(self, key: str, columns: list[str], data: list[list[str]]) -> None:
            self.tables.append((key, columns, data))

    need_data("superglue/CB/train.jsonl")
    tok = _bert()
    dm = ClozeDataModule(
        "cb",
        tok,
        data_root(),
        max_train_examples=4,
        max_eval_examples=24,
        micro_batch_size=4,
        eval_batch_size=12,
        seq_length=64,
    )
    module = _tiny_module("cb", tok, output_dir=str(tmp_path))
    logger = TableLogger(tmp_path)
    trainer = L.Trainer(
        max_steps=1,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(module, datamodule=dm)
    lines = _read_jsonl(tmp_path / "val_predictions.jsonl")
    assert len(lines) == 24 and len(logger.tables) == 1
    key, columns, rows = logger.tables[0]
    assert key == "val/predictions" and columns == ["idx", "label", "prediction", "scores"]
    assert len(rows) == PREDICTION_TABLE_ROWS == 20
    assert [r[:3] for r in rows] == [[str(x["idx"]), x["label"], x["prediction"]] for x in lines[:20]]
