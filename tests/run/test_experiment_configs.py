"""The values every experiment composes to (the settings of docs/original-glm.md §7.3 / §8.2-§8.3 and the demo
runs), the SuperGLUE task table behind them, and where the masking objective appears (pretraining only)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

from glm.data.superglue.tasks import TASKS
from glm.errors import ConfigError
from glm.run.resolvers import superglue_setting
from glm.run.validation import validate

CONF = Path(__file__).resolve().parents[2] / "conf"
FIT_VALIDATE_PREDICT = ["fit", "validate", "predict"]

# name: data.task, seq_length, pattern_id, (global, micro, eval batch), lr, max_epochs, max_steps,
#       optimized_metric, checkpoint mode, stages, model preset, task_name
FVP, FV, FT, T = FIT_VALIDATE_PREDICT, ["fit", "validate"], ["fit", "test"], ["test"]
SG, G = "superglue", "glm-large"
# fmt: off
EXPECTED = {
    "ci_tiny":          (None, 64, None, (4, 4, None), 1e-3, 1, 6, "val/loss", "min", ["fit"], "glm-tiny", "pretrain"),
    "pretrain_tiny":    (None, 128, None, (16, 16, None), 1e-3, 1, 240, "val/loss", "min", ["fit"], "glm-small",
                         "pretrain"),
    "demo_copa":        ("copa", 128, 0, (16, 16, 50), 1e-4, 1, -1, "val/acc", "max", FV, "glm-small", "demo"),
    "superglue_boolq":  ("boolq", 256, 4, (16, 16, 16), 1e-5, 20, -1, "val/acc", "max", FVP, G, SG),
    "superglue_cb":     ("cb", 256, 3, (16, 16, 16), 1e-5, 50, -1, "val/f1", "max", FVP, G, SG),
    "superglue_copa":   ("copa", 256, 0, (16, 16, 16), 1e-5, 50, -1, "val/acc", "max", FVP, G, SG),
    "superglue_multirc": ("multirc", 512, 0, (64, 64, 64), 1e-5, 15, -1, "val/f1a", "max", FVP, G, SG),
    "superglue_record": ("record", 512, 0, (64, 64, 64), 1e-5, 5, -1, "val/f1", "max", FV, G, SG),
    "superglue_rte":    ("rte", 256, 0, (16, 16, 16), 1e-5, 50, -1, "val/acc", "max", FVP, G, SG),
    "superglue_wic":    ("wic", 256, 1, (16, 16, 16), 1e-5, 30, -1, "val/acc", "max", FVP, G, SG),
    "superglue_wsc":    ("wsc", 128, 2, (16, 16, 16), 1e-5, 50, -1, "val/acc", "max", FVP, G, SG),
    "cnn_dm":           (None, None, None, (8, 8, 8), 1e-5, 10, -1, "val/rougeL", "max", FT, "glm-tiny", "train"),
    "xsum":             (None, None, None, (8, 8, 8), 1e-5, 6, -1, "val/rougeL", "max", FT, "glm-tiny", "train"),
    "gigaword":         (None, None, None, (8, 8, 8), 3e-5, 10, -1, "val/rougeL", "max", FT, "glm-tiny", "train"),
    "lambada_zeroshot": (None, 512, None, (None, 8, None), None, 1, -1, "test/acc", "min", T, "glm-tiny", "train"),
    "lambada_uni":      (None, 512, None, (None, 8, None), None, 1, -1, "test/acc", "min", T, "glm-tiny", "train"),
    "wikitext_ppl":     (None, 1024, None, (None, 4, None), None, 1, -1, "test/ppl", "min", T, "glm-tiny", "train"),
}
# fmt: on
# (beams, length penalty, no-repeat n-gram, min length) of docs/original-glm.md §8.3
GENERATION = {"cnn_dm": (5, 0.7, 3, 55), "xsum": (6, 1.0, 3, 10), "gigaword": (5, 0.6, 3, 0)}
PRETRAINING = {"ci_tiny": "glm-doc", "pretrain_tiny": "glm-doc"}


def _resolved(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def test_every_experiment_has_expected_values() -> None:
    assert set(EXPECTED) == {p.stem for p in (CONF / "experiment").glob("*.yaml")}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_experiment_composes_to_its_settings(name: str, compose_cfg) -> None:
    cfg = _resolved(compose_cfg(name, ["logger=none"]))
    task, seq, pattern, batches, lr, epochs, steps, metric, mode, stages, preset, task_name = EXPECTED[name]
    data = cfg["data"]
    assert (data.get("task"), data.get("seq_length"), data.get("pattern_id")) == (task, seq, pattern)
    assert (data.get("global_batch_size"), data["micro_batch_size"], data.get("eval_batch_size")) == batches
    assert cfg["task"].get("optimizer", {}).get("lr") == lr
    assert (cfg["trainer"]["max_epochs"], cfg["trainer"]["max_steps"]) == (epochs, steps)
    assert cfg["optimized_metric"] == metric
    assert (
        cfg["callbacks"]["checkpoint"]["monitor"] == metric and cfg["callbacks"]["checkpoint"]["mode"] == mode
    )
    assert cfg["stages"] == stages and cfg["model"]["preset"] == preset and cfg["task_name"] == task_name
    assert cfg["experiment_name"] == name
    if name in GENERATION:
        gen = cfg["task"]["generation"]
        got = (gen["num_beams"], gen["length_penalty"], gen["no_repeat_ngram_size"], gen["min_new_tokens"])
        assert got == GENERATION[name]
        assert cfg["task"]["optimizer"]["weight_decay"] == 0.1 and cfg["task"]["label_smoothing"] == 0.1
        assert cfg["task"]["scheduler"] == {"warmup_ratio": 0.06, "decay_style": "linear"}
    if task is not None:  # cloze finetuning: docs/original-glm.md §7.3 schedule for every task
        assert cfg["task"]["optimizer"]["weight_decay"] == 0.1
        assert cfg["task"]["scheduler"] == {"warmup_ratio": 0.1, "decay_style": "linear"}
        assert cfg["task"]["task"] == task
    loss = ("mix", 1.0) if name == "superglue_wsc" else ("cross_entropy", 0.0)
    if task is not None:
        assert (cfg["task"]["loss"], cfg["task"]["length_penalty"]) == loss
    # the masking objective belongs to pretraining only
    assert (cfg.get("objective") or {}).get("preset") == PRETRAINING.get(name)


def test_demo_copa_on_the_superglue_base(compose_cfg) -> None:
    demo = _resolved(compose_cfg("demo_copa"))
    assert demo["task"]["pretrained"].endswith("demo/pretrain/export") and demo["export_dir"] is None
    assert (demo["model"]["num_layers"], demo["model"]["hidden_size"]) == (4, 256)
    assert demo["data"]["max_train_examples"] == 400 and "csv" in demo["logger"]


def test_no_experiment_pretrains_with_glm_base(compose_cfg) -> None:
    cfg = compose_cfg(None, ["logger=none"])
    checked = validate(cfg)
    assert cfg.task._target_ == "glm.tasks.pretrain.PretrainModule" and cfg.objective.preset == "glm-base"
    assert (checked.objective.bert_prob, checked.objective.gpt_prob) == (1.0, 0.0)
    assert compose_cfg(None, ["logger=none", "objective=span"]).objective.preset == "span"
    assert compose_cfg("ci_tiny", ["logger=none", "objective=glm_large"]).objective.preset == "glm-large"


def test_finetuning_without_experiment_has_no_objective(compose_cfg) -> None:
    cfg = compose_cfg(None, ["logger=none", "task=cloze", "data=superglue", "data.task=cb", "model=glm_tiny"])
    assert "objective" not in cfg and validate(cfg).objective is None
    assert "objective" not in compose_cfg(None, ["logger=none", "task=lm_eval", "data=lambada"])


def test_task_table_holds_the_original_settings() -> None:
    # docs/original-glm.md §7.2 config ids, §7.3 lengths, EPOCH_SINGLE and BATCH_SIZE
    table = {
        name: (t.default_pattern, t.seq_length, t.epochs, t.batch_size, t.main_metric)
        for name, t in TASKS.items()
    }
    assert table == {
        "boolq": (4, 256, 20, 16, "val/acc"),
        "cb": (3, 256, 50, 16, "val/f1"),
        "copa": (0, 256, 50, 16, "val/acc"),
        "multirc": (0, 512, 15, 64, "val/f1a"),
        "record": (0, 512, 5, 64, "val/f1"),
        "rte": (0, 256, 50, 16, "val/acc"),
        "wic": (1, 256, 30, 16, "val/acc"),
        "wsc": (2, 128, 50, 16, "val/acc"),
    }
    assert superglue_setting("CB", "main_metric") == "val/f1"
    with pytest.raises(ValueError, match="unknown field 'lr'"):
        superglue_setting("cb", "lr")


def test_superglue_values_follow_data_task(compose_cfg) -> None:
    cfg = _resolved(compose_cfg("superglue_cb", ["logger=none", "data.task=multirc"]))
    assert (cfg["data"]["pattern_id"], cfg["data"]["seq_length"], cfg["data"]["micro_batch_size"]) == (
        0,
        512,
        64,
    )
    assert (cfg["optimized_metric"], cfg["trainer"]["max_epochs"]) == ("val/f1a", 15)
    # a command-line value still wins over the table
    cfg = _resolved(compose_cfg("superglue_cb", ["logger=none", "data.pattern_id=1", "trainer.max_epochs=2"]))
    assert (cfg["data"]["pattern_id"], cfg["trainer"]["max_epochs"], cfg["data"]["seq_length"]) == (1, 2, 256)


def test_unknown_superglue_task_is_named(compose_cfg) -> None:
    cfg = compose_cfg("superglue_cb", ["logger=none", "data.task=glue"])
    with pytest.raises(InterpolationResolutionError, match="unknown SuperGLUE task 'glue'; known: .*'boolq'"):
        OmegaConf.to_container(cfg, resolve=True)
    with pytest.raises(ConfigError, match="config interpolation failed: .*unknown SuperGLUE task 'glue'"):
        validate(cfg)  # one located line at start-up, not a traceback


def test_experiment_files_say_only_what_differs() -> None:
    lengths = {p.stem: len(p.read_text().splitlines()) for p in (CONF / "experiment").glob("*.yaml")}
    assert all(n <= 12 for name, n in lengths.items() if name.startswith("superglue_")), lengths
    assert sum(lengths.values()) <= 212, lengths
