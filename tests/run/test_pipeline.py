"""run.py end to end in subprocesses: config errors name the key, deepspeed is refused on CPU, ci_tiny writes
metrics.json, the resolved config and checkpoints that load with weights_only=True."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import need_data, run_cli
from omegaconf import OmegaConf


def _fails_naming(result, *needles: str) -> None:
    assert result.returncode != 0, f"expected a failure, got rc 0\n{result.stdout[-2000:]}"
    for needle in needles:
        assert needle in result.stderr, f"{needle!r} not in stderr:\n{result.stderr[-3000:]}"


def test_unknown_key_is_named(tmp_path: Path) -> None:
    r = run_cli(
        ["+experiment=ci_tiny", "logger=none", "trainer.max_stepz=3", f"hydra.run.dir={tmp_path}"], tmp_path
    )
    _fails_naming(r, "max_stepz")


def test_added_unknown_trainer_option_is_named(tmp_path: Path) -> None:
    # `+key=` gets past Hydra's struct check; start-up validation still names it before any work
    r = run_cli(
        ["+experiment=ci_tiny", "logger=none", "+trainer.max_stepz=3", f"hydra.run.dir={tmp_path}"], tmp_path
    )
    _fails_naming(r, "Config error", "trainer.max_stepz")
    assert not (tmp_path / "metrics.json").exists()


def test_wrong_type_is_named_by_the_cli(tmp_path: Path) -> None:
    r = run_cli(
        ["+experiment=ci_tiny", "logger=none", "trainer.max_steps=abc", f"hydra.run.dir={tmp_path}"], tmp_path
    )
    _fails_naming(r, "Config error", "trainer.max_steps", "expected int")
    # one message, not a deep traceback (Hydra's log handler prints to stdout); the traceback is in FAILED
    assert "Traceback" not in r.stderr + r.stdout
    assert "Traceback" in (tmp_path / "FAILED").read_text()


def test_missing_data_is_one_line_naming_the_download(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli(
        ["+experiment=ci_tiny", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"],
        tmp_path,
        env={"GLM_DATA_ROOT": str(empty)},
    )
    _fails_naming(r, "Data error", "gutenberg/11-0.txt", "python -m glm.data download gutenberg")
    assert "Traceback" not in r.stderr + r.stdout


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("trainer.max_steps=abc", ("trainer.max_steps", "expected int")),
        ("data.seq_length=long", ("data.seq_length", "expected int")),
        ("+data.seq_lenght=64", ("data.seq_lenght", "unknown option")),
        ("task.optimizer.lr=fast", ("task.optimizer.lr",)),
        ("+task.optimizer.momentum=0.9", ("task.optimizer.momentum", "unknown key")),
        ("+model.num_layers=0", ("model", "num_layers")),
        ("+model.num_layerz=2", ("model", "num_layerz")),
        ("+objective.bert_prob=1.5", ("objective", "bert_prob")),
        ("task.scheduler.decay_style=exp", ("task.scheduler.decay_style",)),
        ("data.global_batch_size=6", ("data.global_batch_size", "micro_batch_size")),
        ("stages=[fit,evaluate]", ("stages", "evaluate")),
        ("+callbacks.checkpoint.save_topk=2", ("callbacks.checkpoint.save_topk",)),
        ("task.pretrained=nonexistent/glm-large", ("task.pretrained", "does not exist", "export dir")),
    ],
)
def test_wrong_value_is_named(override: str, needles: tuple[str, ...], compose_cfg) -> None:
    """In-process (fast): compose, apply the override (``+`` adds a key the way Hydra would), validate."""
    import yaml
    from omegaconf import OmegaConf, open_dict

    from glm.errors import ConfigError
    from glm.run.validation import validate

    key, value = override.lstrip("+").split("=", 1)
    cfg = compose_cfg("ci_tiny", ["logger=none"])
    with open_dict(cfg):
        OmegaConf.update(cfg, key, yaml.safe_load(value), force_add=True)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    for needle in needles:
        assert needle in str(err.value), str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_gpu_hardware_refused_without_cuda(compose_cfg) -> None:
    from glm.errors import ConfigError
    from glm.run.validation import validate

    cfg = compose_cfg("ci_tiny", ["logger=none", "hardware=[gpu,bf16]"])
    with pytest.raises(
        ConfigError, match=r"hardware: trainer.accelerator=gpu .* no CUDA device.*hardware=cpu"
    ):
        validate(cfg)


def test_unknown_group_option_is_named(tmp_path: Path) -> None:
    r = run_cli(
        ["+experiment=ci_tiny", "logger=none", "model=glm_huge", f"hydra.run.dir={tmp_path}"], tmp_path
    )
    _fails_naming(r, "glm_huge", "model")


def test_unknown_experiment_is_named(tmp_path: Path) -> None:
    r = run_cli(["+experiment=no_such_thing", f"hydra.run.dir={tmp_path}"], tmp_path)
    _fails_naming(r, "no_such_thing")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_deepspeed_refused_on_cpu(tmp_path: Path) -> None:
    r = run_cli(
        [
            "+experiment=ci_tiny",
            "logger=none",
            "hardware=[cpu,deepspeed_stage2]",
            f"hydra.run.dir={tmp_path}",
        ],
        tmp_path,
    )
    _fails_naming(r, "Config error", "deepspeed", "CUDA", "hardware=[cpu,ddp]")


def test_multirun_with_subprocess_ddp_refused(tmp_path: Path) -> None:
    r = run_cli(
        [
            "-m",
            "+experiment=ci_tiny",
            "logger=none",
            "hardware=[cpu,ddp]",
            "trainer.devices=2",
            "seed=1,2",
            f"hydra.sweep.dir={tmp_path}",
        ],
        tmp_path,
    )
    _fails_naming(r, "Config error", "multirun", "ddp_spawn")


def test_ci_tiny_end_to_end(tmp_path: Path) -> None:
    need_data("gutenberg/11-0.txt")
    run_dir = tmp_path / "run"
    r = run_cli(
        [
            "+experiment=ci_tiny",
            "logger=csv",
            f"hydra.run.dir={run_dir}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("train/loss", "val/loss", "val/ppl", "train/lr"):
        assert key in metrics, sorted(metrics)
    assert (
        abs(metrics["val/ppl"] - torch.tensor(metrics["val/loss"]).exp().item()) < 1e-3 * metrics["val/ppl"]
    )
    # the model's vocabulary followed the 2000-piece tokenizer (padded to 2048): an untrained model starts
    # near ln(2048) = 7.6 and six steps cannot be far from it
    assert 5.0 < metrics["val/loss"] < 8.2
    assert metrics["seed"] == 1234
    assert (run_dir / "config.yaml").is_file() and (run_dir / "run.log").is_file()
    assert not (run_dir / "FAILED").exists()
    ckpts = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    assert any(p.name == "last.ckpt" for p in ckpts)
    for path in ckpts:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert ckpt["global_step"] == 6
        assert "model.word_embeddings.weight" in ckpt["state_dict"]
        assert ckpt["hyper_parameters"]["model"]["preset"] == "glm-tiny"
        assert ckpt["hyper_parameters"]["model"]["vocab_size"] == 2048
    # the export dir holds the final backbone + tokenizer: identical to the last checkpoint's weights
    from glm.checkpoint.io import load_export

    config, state, tok = load_export(run_dir / "export")
    assert config.vocab_size == 2048 and tok is not None and tok.vocab_size == 2048
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert set(state) == {k.removeprefix("model.") for k in last["state_dict"]}
    for key, value in state.items():
        assert torch.equal(value, last["state_dict"]["model." + key]), key
    # the CSV logger wrote per-step train loss and the val loss
    csv = next((run_dir / "csv").rglob("metrics.csv")).read_text()
    assert "train/loss" in csv and "val/loss" in csv


def test_failure_writes_marker(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    missing = tmp_path / "nonexistent" / "corpus_*.txt"  # no such folder: the glob matches nothing
    r = run_cli(
        [
            "+experiment=ci_tiny",
            "logger=none",
            f"data.files=[{missing}]",
            f"hydra.run.dir={run_dir}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        tmp_path,
    )
    assert r.returncode != 0 and f"Data error: data.files: '{missing}'" in r.stderr
    marker = (run_dir / "FAILED").read_text()  # the traceback is kept here, not printed
    assert "DataNotFoundError" in marker and "corpus_*.txt" in marker
    assert "corpus_*.txt" in (run_dir / "run.log").read_text()


def test_success_clears_a_stale_failed_marker(tmp_path: Path) -> None:
    """A rerun or resume in the run dir of a failed attempt must not leave that attempt's FAILED behind."""
    from omegaconf import OmegaConf

    from glm.run.wrappers import FAILED_MARKER, task_wrapper

    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path)}})
    (tmp_path / FAILED_MARKER).write_text("Traceback of an earlier attempt")
    with pytest.raises(RuntimeError):
        task_wrapper(lambda c: (_ for _ in ()).throw(RuntimeError("boom")))(cfg)
    assert "boom" in (tmp_path / FAILED_MARKER).read_text()
    assert task_wrapper(lambda c: 1)(cfg) == 1
    assert not (tmp_path / FAILED_MARKER).exists()


def test_ci_tiny_with_packing_end_to_end(tmp_path: Path) -> None:
    """data.pack=true through run.py: packed batches train and validate (finite losses near ln V)."""
    need_data("gutenberg/11-0.txt")
    run_dir = tmp_path / "run"
    r = run_cli(
        [
            "+experiment=ci_tiny",
            "logger=none",
            "data.pack=true",
            f"hydra.run.dir={run_dir}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 5.0 < metrics["val/loss"] < 8.2 and 5.0 < metrics["train/loss"] < 8.2, metrics


# ---- the model / objective schemas (glm.run.schemas) ----------------------------------------------------
def test_schemas_hold_every_config_field() -> None:
    import dataclasses

    from glm.data.masking import MaskingConfig
    from glm.model import GLMConfig
    from glm.run.schemas import ModelSchema, ObjectiveSchema, set_values

    for schema, cls in ((ModelSchema, GLMConfig), (ObjectiveSchema, MaskingConfig)):
        names = [f.name for f in dataclasses.fields(schema)]
        assert names == ["preset", *(f.name for f in dataclasses.fields(cls))]
        assert all(f.default is None for f in dataclasses.fields(schema))
    assert set_values({"preset": "glm-tiny", "num_layers": 4, "vocab_size": None}) == {
        "preset": "glm-tiny",
        "num_layers": 4,
    }


def test_model_and_objective_fields_override_without_plus(compose_cfg) -> None:
    from glm.run.validation import validate

    cfg = compose_cfg("ci_tiny", ["logger=none", "model.num_layers=4", "objective.bert_prob=0.25"])
    assert cfg.model.vocab_size is None  # a placeholder: the preset's value (or the tokenizer's, at run time)
    checked = validate(cfg)
    assert (checked.model.num_layers, checked.model.hidden_size, checked.model.vocab_size) == (4, 64, 8064)
    assert checked.model.hidden_dropout == 0.0  # ci_tiny's own value survives
    assert checked.model_values == {
        "preset": "glm-tiny",
        "num_layers": 4,
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
    }
    # glm-doc is 0.5 token + 0.5 document; bert_prob=0.25 leaves 0.75 for the document mode
    assert checked.objective.bert_prob == 0.25 and checked.objective.gpt_prob == 0.75
    assert checked.objective_values == {"preset": "glm-doc", "bert_prob": 0.25}


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("model.num_layayers=4", ("model.num_layayers",)),
        ("objective.bert_prop=0.3", ("objective.bert_prop",)),
        ("model.num_layers=abc", ("model.num_layers", "Integer")),
    ],
)
def test_misspelt_or_mistyped_model_key_fails_at_compose(override: str, needles, compose_cfg) -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg("ci_tiny", ["logger=none", override])
    text = f"{err.value} {err.value.__cause__}"
    for needle in needles:
        assert needle in text, text


def test_misspelt_model_key_is_named_by_the_cli(tmp_path: Path) -> None:
    r = run_cli(
        ["+experiment=ci_tiny", "logger=none", "model.num_layayers=4", f"hydra.run.dir={tmp_path}"], tmp_path
    )
    _fails_naming(r, "model.num_layayers")
    assert not (tmp_path / "config.yaml").exists()  # refused while composing: nothing ran


# ---- what validation resolves ---------------------------------------------------------------------------
def test_tokenizer_follows_the_pretrained_export(compose_cfg, tmp_path: Path) -> None:
    from glm.run.validation import validate

    export = tmp_path / "export"
    (export / "tokenizer").mkdir(parents=True)
    cfg = compose_cfg("superglue_copa", ["logger=none", f"task.pretrained={export}"])
    configured = OmegaConf.to_container(cfg.data.tokenizer, resolve=True)
    assert configured["kind"] == "bert"
    checked = validate(cfg)
    assert checked.tokenizer == str(export / "tokenizer")
    assert "tokenizer" in checked.data_inputs() and "objective" not in checked.data_inputs()  # cloze data
    assert OmegaConf.to_container(cfg.data.tokenizer, resolve=True) == configured  # the config is not edited
    built = checked.run_config(cfg)
    assert built.data.tokenizer == str(export / "tokenizer")
    assert (
        OmegaConf.to_container(built.task.model)
        == OmegaConf.to_container(built.model)
        == {"preset": "glm-large"}
    )
    # without task.pretrained: the configured tokenizer; pretraining data takes the objective
    checked = validate(compose_cfg("ci_tiny", ["logger=none"]))
    assert checked.tokenizer == OmegaConf.to_container(compose_cfg("ci_tiny").data.tokenizer, resolve=True)
    assert checked.data_inputs()["objective"] is checked.objective


def test_vocab_follows_the_tokenizer_unless_set() -> None:
    from types import SimpleNamespace

    from glm.errors import ConfigError
    from glm.run.validation import vocab_follows_tokenizer

    tiny = {"preset": "glm-tiny"}
    assert vocab_follows_tokenizer(tiny, SimpleNamespace(vocab_size=2048)) == {
        "preset": "glm-tiny",
        "vocab_size": 2048,
    }
    assert vocab_follows_tokenizer(tiny, SimpleNamespace(vocab_size=8064)) == tiny  # the preset's V already
    assert vocab_follows_tokenizer(tiny, None) == tiny
    explicit = {"preset": "glm-tiny", "vocab_size": 4096}
    assert vocab_follows_tokenizer(explicit, SimpleNamespace(vocab_size=2048)) == explicit
    with pytest.raises(ConfigError, match=r"model.vocab_size: 4096 is smaller .* \(8192\)"):
        vocab_follows_tokenizer(explicit, SimpleNamespace(vocab_size=8192))


# ---- the value a sweep optimises -------------------------------------------------------------------------
def test_optimized_metric_not_logged_fails_a_sweep_only(caplog) -> None:
    from glm.errors import ConfigError
    from glm.run.sweep import optimized_metric

    cfg = OmegaConf.create({"optimized_metric": "val/loss"})
    logged = {"train/loss": 2.5, "seed": 1.0}
    assert optimized_metric(cfg, {**logged, "val/loss": 2.25}, sweep=True) == 2.25
    with pytest.raises(
        ConfigError, match=r"^optimized_metric: 'val/loss' was not logged .*; logged: seed, train/loss$"
    ):
        optimized_metric(cfg, logged, sweep=True)
    with caplog.at_level("WARNING"):
        assert optimized_metric(cfg, logged, sweep=False) is None  # a run without validation: a warning
    assert "optimized_metric 'val/loss' was not logged; logged: seed, train/loss" in caplog.text
    assert optimized_metric(OmegaConf.create({"optimized_metric": None}), logged, sweep=True) is None


def test_sweep_with_an_unlogged_optimized_metric_fails_each_job_and_says_so(tmp_path: Path) -> None:
    """A sweep optimising a metric no job logs optimises nothing: every job fails with that reason (after its
    run, the first moment it is known), the sweep lists them and exits 1."""
    need_data("gutenberg/11-0.txt")
    r = run_cli(
        [
            "-m",
            "+experiment=ci_tiny",
            "logger=none",
            "seed=1,2",
            "trainer.max_steps=1",
            "optimized_metric=val/accuracy",
            "callbacks.checkpoint.monitor=null",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        tmp_path,
    )
    reason = "Config error: optimized_metric: 'val/accuracy' was not logged by this sweep job"
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "Sweep: 2 jobs failed" in r.stderr
    for job in ("0", "1"):
        marker = tmp_path / "sweep" / job / "FAILED"
        assert marker.read_text().splitlines()[0].startswith(reason)
        assert f"{reason}; logged: seed, train/loss, train/lr -- {marker}" in r.stderr
        assert (tmp_path / "sweep" / job / "metrics.json").is_file()
