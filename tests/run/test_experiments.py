"""Every conf/experiment/*.yaml composes and passes start-up validation (no data loading, no training)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from glm.errors import ConfigError
from glm.model import GLMConfig
from glm.run.validation import validate

EXPERIMENTS = sorted(
    p.stem for p in (Path(__file__).resolve().parents[2] / "conf" / "experiment").glob("*.yaml")
)


def test_experiment_dir_is_listed() -> None:
    assert {"pretrain_tiny", "ci_tiny"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_validates(name: str, compose_cfg) -> None:
    cfg = compose_cfg(name, ["logger=none"])
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:  # values the user must give (e.g. a tokenizer path): a clear error first, then fill them in
        with pytest.raises(ConfigError, match=re.escape(missing[0])):
            validate(cfg)
        cfg = compose_cfg(name, ["logger=none", *(f"{key}=placeholder" for key in missing)])
    pretrained = cfg.task.get("pretrained")
    if pretrained and not Path(pretrained).exists():  # demo_copa names make demo's first step's export
        with pytest.raises(ConfigError, match=r"task\.pretrained: .* does not exist"):
            validate(cfg)
        cfg = compose_cfg(name, ["logger=none", "task.pretrained=null"])
    try:
        checked = validate(cfg)
    except ConfigError as err:  # lengths meant for a pretrained export with longer positions (xsum, wikitext)
        assert "position ids up to" in str(err) and "model.max_sequence_length=512" in str(err), str(err)
        cfg = compose_cfg(name, ["logger=none", "model.max_sequence_length=1024"])
        checked = validate(cfg)
    assert cfg.experiment_name == name
    assert isinstance(checked.model, GLMConfig)
    assert cfg.experiment_name, "experiments should name themselves (output dir, W&B group)"
    # batch arithmetic: accumulation * micro * world == global when the data group has both sizes
    if checked.accumulate_grad_batches is not None:
        assert (
            checked.accumulate_grad_batches * cfg.data.micro_batch_size * checked.world_size
            == cfg.data.global_batch_size
        )


def test_pretrain_tiny_values(compose_cfg) -> None:
    cfg = compose_cfg("pretrain_tiny", ["logger=none"])
    checked = validate(cfg)
    assert checked.model.name == "glm-small" and checked.model.vocab_size == 8064
    assert (checked.model.num_layers, checked.model.hidden_size) == (4, 256)
    # 4 * (12 h^2 + 13 h) + V h + 2 (P + 1) h + 2 h with h 256, V 8064, P 512 (docs/original-glm.md §11 formula)
    assert (
        checked.model.num_parameters() == 4 * (12 * 256**2 + 13 * 256) + 8064 * 256 + 2 * 513 * 256 + 2 * 256
    )
    assert checked.objective.bert_prob == 0.5 and checked.objective.gpt_prob == 0.5  # glm-doc mix
    assert cfg.data.files[0].endswith("gutenberg/*.txt")
    assert cfg.trainer.accelerator == "cpu"
