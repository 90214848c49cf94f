"""Checkpoint I/O: atomic writes, weights_only loads with clear errors, export dirs, pretrained loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from glm.checkpoint.io import (
    atomic_save,
    export_model,
    load_export,
    safe_load,
)
from glm.checkpoint.pretrained import extend_position_table, load_pretrained_into
from glm.errors import CheckpointError
from glm.model import GLM, GLMConfig
from glm.utils.fs import atomic_write

TINY = {
    "num_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "vocab_size": 256,
    "max_sequence_length": 32,
}


def tiny_model(seed: int = 0, **overrides) -> GLM:
    torch.manual_seed(seed)
    return GLM(GLMConfig(**{**TINY, **overrides})).eval()


def logits(model: GLM, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (2, 10), generator=g)
    pos = torch.stack([torch.arange(10).expand(2, 10), torch.zeros(2, 10, dtype=torch.long)], dim=1)
    with torch.no_grad():
        return model(ids, pos, sep=torch.tensor([4, 7])).logits


class Unpicklable:
    """A custom class: `torch.load(weights_only=True)` must refuse it."""

    def __init__(self) -> None:
        self.x = 1


# --------------------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------------------
def test_atomic_write_failure_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    atomic_save({"w": torch.arange(4.0)}, target)
    before = target.read_bytes()

    def crash(f) -> None:
        f.write(b"PK\x03\x04 half a checkpoint")
        raise RuntimeError("disk died")

    with pytest.raises(RuntimeError, match="disk died"):
        atomic_write(target, crash)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "model.pt.sha256"]


def test_atomic_save_crash_inside_torch_save_never_creates_target(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "sub" / "model.pt"
    real_save = torch.save

    def save_then_crash(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # the bytes are written to the temp file...
        raise KeyboardInterrupt  # ...and the process is interrupted before the rename

    monkeypatch.setattr(torch, "save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"w": torch.ones(3)}, target)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_atomic_save_result_loads_with_weights_only_and_mmap(tmp_path: Path) -> None:
    sd = {"a": torch.randn(5, 3), "b": torch.arange(7)}
    atomic_save(sd, tmp_path / "x.pt")
    assert (tmp_path / "x.pt").read_bytes()[:4] == b"PK\x03\x04"  # zip format: the only one mmap can read
    loaded = torch.load(tmp_path / "x.pt", weights_only=True, mmap=True)
    assert loaded.keys() == sd.keys() and all(torch.equal(loaded[k], sd[k]) for k in sd)


# --------------------------------------------------------------------------------------------------
# safe_load errors name the file and the problem
# --------------------------------------------------------------------------------------------------
def test_safe_load_truncated_file(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    torch.save({"w": torch.randn(64, 64)}, good)
    data = good.read_bytes()
    bad = tmp_path / "cut.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt: truncated or corrupt zip checkpoint"):
        safe_load(bad)


def test_safe_load_garbage_empty_missing_and_directory(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is a text file, not a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"junk\.pt: not a torch checkpoint"):
        safe_load(junk)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pt: empty file"):
        safe_load(empty)
    with pytest.raises(CheckpointError, match=r"nope\.pt: no such checkpoint file"):
        safe_load(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="is a directory"):
        safe_load(tmp_path)


def test_safe_load_refuses_arbitrary_objects_unless_trusted(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "obj": Unpicklable()}, path)
    with pytest.raises(
        CheckpointError, match=r"evil\.pt: refused by torch.load\(weights_only=True\).*Unpicklable"
    ):
        safe_load(path)
    assert safe_load(path, trust=True)["obj"].x == 1


def test_safe_load_legacy_format_without_mmap(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.arange(3)}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(safe_load(path)["w"], torch.arange(3))


# --------------------------------------------------------------------------------------------------
# export directory
# --------------------------------------------------------------------------------------------------
def test_export_round_trip_with_run_config(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    model = tiny_model()
    run_cfg = OmegaConf.create({"seed": 3, "data": {"len": 128, "twice": "${data.len}"}})
    out = export_model(model, model.config, tmp_path / "export", run_config=run_cfg)
    assert sorted(p.name for p in out.iterdir()) == [
        "model.pt",
        "model.pt.sha256",
        "model_config.yaml",
        "run_config.yaml",
    ]
    config, sd, tok = load_export(out)
    assert config == model.config and tok is None
    assert sd.keys() == model.state_dict().keys()
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    assert OmegaConf.load(out / "run_config.yaml").data.twice == 128  # resolved, not an interpolation
    # Every file we write loads with weights_only=True.
    torch.load(out / "model.pt", weights_only=True)


def test_export_rejects_weights_that_do_not_fit_the_config(tmp_path: Path) -> None:
    sd = tiny_model().state_dict()
    with pytest.raises(
        CheckpointError,
        match=r"wrong shapes: word_embeddings.weight: \(256, 64\) \(config wants \(512, 64\)\)",
    ):
        export_model(sd, GLMConfig(**{**TINY, "vocab_size": 512}), tmp_path / "e")
    del sd["transformer.final_layernorm.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys \['transformer.final_layernorm.bias'\]"):
        export_model(sd, GLMConfig(**TINY), tmp_path / "e2")
    compiled = {"_orig_mod." + k: v for k, v in tiny_model().state_dict().items()}
    with pytest.raises(CheckpointError, match="_orig_mod"):
        export_model(compiled, GLMConfig(**TINY), tmp_path / "e3")


def test_load_export_names_missing_file(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no model_config.yaml"):
        load_export(tmp_path)


# --------------------------------------------------------------------------------------------------
# load_pretrained_into
# --------------------------------------------------------------------------------------------------
class Wrapper(nn.Module):
    """Stands in for a task module: the backbone as `.model` plus a task head."""

    def __init__(self, **overrides) -> None:
        super().__init__()
        self.model = tiny_model(seed=99, **overrides)
        self.head = nn.Linear(64, 3)


def test_load_from_export_gives_identical_logits(tmp_path: Path) -> None:
    src = tiny_model(seed=0)
    export_model(src, src.config, tmp_path / "e")
    dst = tiny_model(seed=5)
    assert not torch.equal(logits(src), logits(dst))
    report = load_pretrained_into(dst, tmp_path / "e")
    assert torch.equal(logits(src), logits(dst))
    assert report.missing == [] and report.unexpected == [] and report.extended == {}


def test_load_lightning_ckpt_into_wrapper_and_bare_backbone(tmp_path: Path) -> None:
    src = Wrapper()
    torch.nn.init.normal_(src.head.weight)
    ckpt = {"state_dict": src.state_dict(), "epoch": 3, "hyper_parameters": {"lr": 1e-4}}
    torch.save(ckpt, tmp_path / "last.ckpt")

    dst = Wrapper()
    torch.manual_seed(7)
    dst.model.reset_parameters()
    load_pretrained_into(dst, tmp_path / "last.ckpt")
    assert torch.equal(dst.head.weight, src.head.weight)
    assert torch.equal(logits(dst.model), logits(src.model))

    bare = tiny_model(seed=3)
    report = load_pretrained_into(bare, tmp_path / "last.ckpt")  # `model.` prefix stripped
    assert torch.equal(logits(bare), logits(src.model))
    assert report.unexpected == ["head.bias", "head.weight"]


def test_task_head_missing_is_reported_not_fatal(tmp_path: Path) -> None:
    src = tiny_model(seed=0)
    torch.save(src.state_dict(), tmp_path / "plain.pt")
    dst = Wrapper()
    report = load_pretrained_into(dst, tmp_path / "plain.pt")
    assert report.missing == ["head.bias", "head.weight"]
    assert torch.equal(logits(dst.model), logits(src))


def test_position_tables_extended_by_copying_first_rows(tmp_path: Path) -> None:
    src = tiny_model(seed=0, max_sequence_length=16)  # 17 rows
    torch.save(src.state_dict(), tmp_path / "short.pt")
    dst = tiny_model(seed=1, max_sequence_length=64)  # 65 rows
    torch.manual_seed(123)
    report = load_pretrained_into(dst, tmp_path / "short.pt")
    for name in ("transformer.position_embeddings.weight", "transformer.block_position_embeddings.weight"):
        assert report.extended[name] == (17, 65)
        new, old = dst.state_dict()[name], src.state_dict()[name]
        assert torch.equal(new[:17], old)
        fresh = new[17:].double()
        assert abs(fresh.std().item() - 0.02) < 0.002 and abs(fresh.mean().item()) < 0.002
    assert torch.equal(dst.word_embeddings.weight, src.word_embeddings.weight)


def test_extend_position_table_hand_case() -> None:
    table = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    out = extend_position_table(table, 4, std=0.0)
    assert torch.equal(out, torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="cannot shrink"):
        extend_position_table(out, 2, std=0.02)


def test_load_pretrained_errors(tmp_path: Path) -> None:
    sd = tiny_model().state_dict()
    torch.save({"_orig_mod." + k: v for k, v in sd.items()}, tmp_path / "compiled.pt")
    with pytest.raises(
        CheckpointError, match=r"compiled\.pt: keys carry torch.compile's '_orig_mod\.' prefix"
    ):
        load_pretrained_into(tiny_model(), tmp_path / "compiled.pt")

    partial = {k: v for k, v in sd.items() if ".layers.1." not in k}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"partial\.pt: backbone weights missing .*\(12 in all\)"):
        load_pretrained_into(tiny_model(), tmp_path / "partial.pt")
    report = load_pretrained_into(tiny_model(), tmp_path / "partial.pt", strict_backbone=False)
    assert len(report.missing) == 12

    torch.save(tiny_model(max_sequence_length=64).state_dict(), tmp_path / "long.pt")
    with pytest.raises(CheckpointError, match=r"position_embeddings.weight: shape \(65, 64\) does not fit"):
        load_pretrained_into(tiny_model(), tmp_path / "long.pt")

    torch.save({"foo.weight": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt: no GLM backbone found"):
        load_pretrained_into(tiny_model(), tmp_path / "other.pt")


def test_export_with_tokenizer_round_trip(tmp_path: Path) -> None:
    from glm.data.paths import need_shared_data
    from glm.tokenizer import WordPieceTokenizer

    tok = WordPieceTokenizer(need_shared_data("tokenizers/bert-base-uncased/vocab.txt", "BERT vocab"))
    config = GLMConfig(
        **{**TINY, "vocab_size": tok.vocab_size}
    )  # 30592 for BERT + GLM specials (docs/original-glm.md §4.1)
    model = GLM(config)
    export_model(model, config, tmp_path / "e", tokenizer=tok)
    loaded_config, _, loaded_tok = load_export(tmp_path / "e")
    assert loaded_config.vocab_size == loaded_tok.vocab_size == 30592
    text = "GLM fills [MASK] blanks."
    assert loaded_tok.encode(text) == tok.encode(text)
    assert (loaded_tok.mask_id, loaded_tok.sop_id, loaded_tok.eos_id) == (103, 30522, 0)
