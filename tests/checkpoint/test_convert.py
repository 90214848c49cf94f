"""Conversion of original GLM (docs/original-glm.md §1.9, §12.1) and HF-port (§12.2) checkpoints, on synthetic files.

The synthetic checkpoints are built here from the original's key table, and model-parallel shards by the
spec's split rule written independently of `glm.checkpoint` (`shard_by_spec`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from glm.checkpoint.__main__ import main as cli_main
from glm.checkpoint.convert_hf import load_hf, save_hf
from glm.checkpoint.convert_original import (
    convert_original_to_export,
    infer_config,
    load_original,
    save_original,
)
from glm.checkpoint.io import load_export
from glm.checkpoint.pretrained import load_pretrained_into
from glm.errors import CheckpointError
from glm.model import GLM, GLMConfig

L, H, N, V, P = 2, 64, 4, 256, 32
CONFIG = GLMConfig(num_layers=L, hidden_size=H, num_attention_heads=N, vocab_size=V, max_sequence_length=P)
# docs/original-glm.md §11 count: L*(12h^2 + 13h) + V*h + 2*(P+1)*h + 2h
N_PARAMS = L * (12 * H * H + 13 * H) + V * H + 2 * (P + 1) * H + 2 * H


def spec_module(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with the keys and shapes of docs/original-glm.md §12.1 (LayerNorms not 1/0 so mix-ups show)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "word_embeddings.weight": (V, H),
        "transformer.position_embeddings.weight": (P + 1, H),
        "transformer.block_position_embeddings.weight": (P + 1, H),
    }
    for i in range(L):
        p = f"transformer.layers.{i}."
        shapes.update(
            {
                p + "input_layernorm.weight": (H,),
                p + "input_layernorm.bias": (H,),
                p + "attention.query_key_value.weight": (3 * H, H),
                p + "attention.query_key_value.bias": (3 * H,),
                p + "attention.dense.weight": (H, H),
                p + "attention.dense.bias": (H,),
                p + "post_attention_layernorm.weight": (H,),
                p + "post_attention_layernorm.bias": (H,),
                p + "mlp.dense_h_to_4h.weight": (4 * H, H),
                p + "mlp.dense_h_to_4h.bias": (4 * H,),
                p + "mlp.dense_4h_to_h.weight": (H, 4 * H),
                p + "mlp.dense_4h_to_h.bias": (H,),
            }
        )
    shapes["transformer.final_layernorm.weight"] = (H,)
    shapes["transformer.final_layernorm.bias"] = (H,)
    sd = {k: torch.randn(s, generator=g) * 0.05 for k, s in shapes.items()}
    for k in sd:
        if "layernorm.weight" in k:
            sd[k] += 1.0
    return sd


def shard_by_spec(sd: dict[str, torch.Tensor], k: int) -> list[dict[str, torch.Tensor]]:
    """docs/original-glm.md §1.9, forwards: what rank r of k stores."""
    ranks = []
    for r in range(k):
        shard = {}
        for key, t in sd.items():
            if key == "word_embeddings.weight" or "dense_h_to_4h" in key:
                n = t.shape[0] // k
                shard[key] = t[r * n : (r + 1) * n].clone()
            elif "query_key_value" in key:
                q, kk, v = t[:H], t[H : 2 * H], t[2 * H :]
                n = H // k
                shard[key] = torch.cat(
                    [q[r * n : (r + 1) * n], kk[r * n : (r + 1) * n], v[r * n : (r + 1) * n]]
                )
            elif key.endswith(("attention.dense.weight", "dense_4h_to_h.weight")):
                n = t.shape[1] // k
                shard[key] = t[:, r * n : (r + 1) * n].clone()
            else:
                shard[key] = t.clone()
        ranks.append(shard)
    return ranks


def write_original(
    root: Path, shards: list[dict[str, torch.Tensor]], tag: str = "250000", prefix: str = ""
) -> Path:
    """An original-style checkpoint dir, with the non-model entries DeepSpeed/Megatron save too."""
    (root / tag).mkdir(parents=True)
    (root / "latest_checkpointed_iteration.txt").write_text(tag)
    for r, shard in enumerate(shards):
        torch.save(
            {
                "module": {prefix + k: v for k, v in shard.items()},
                "iteration": 250000,
                "optimizer": None,
                "random_rng_state": random.getstate(),
                "np_rng_state": np.random.RandomState(0).get_state(),
                "torch_rng_state": torch.get_rng_state(),
            },
            root / tag / f"mp_rank_{r:02d}_model_states.pt",
        )
    return root


def reference_logits(sd: dict[str, torch.Tensor], config: GLMConfig = CONFIG) -> torch.Tensor:
    model = GLM(config).eval()
    model.load_state_dict(sd, strict=True)
    return run(model)


def run(model: GLM) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (2, 12), generator=g)
    pos = torch.stack([torch.arange(12).expand(2, 12), (torch.arange(12) >= 8).long().expand(2, 12)], dim=1)
    with torch.no_grad():
        return model(ids, pos, sep=torch.tensor([8, 5])).logits


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k, value in a.items():
        assert value.dtype == b[k].dtype and torch.equal(value, b[k]), k


# --------------------------------------------------------------------------------------------------
# original -> ours
# --------------------------------------------------------------------------------------------------
def test_unsharded_original_converts_and_gives_identical_logits(tmp_path: Path) -> None:
    sd = spec_module()
    write_original(tmp_path / "orig", [sd])
    config = convert_original_to_export(tmp_path / "orig", tmp_path / "ours", preset="glm-tiny")
    # Shapes from the tables (V, P), heads from the preset.
    assert (
        config.num_layers,
        config.hidden_size,
        config.num_attention_heads,
        config.vocab_size,
        config.max_sequence_length,
    ) == (L, H, N, V, P)
    assert config.num_parameters() == N_PARAMS
    loaded_config, loaded, _ = load_export(tmp_path / "ours")
    assert loaded_config == config
    assert_same(loaded, sd)
    model = GLM(loaded_config).eval()
    load_pretrained_into(model, tmp_path / "ours")
    assert torch.equal(run(model), reference_logits(sd))


@pytest.mark.parametrize("k", [2, 4])
def test_sharded_original_merges_to_unsharded(tmp_path: Path, k: int) -> None:
    sd = spec_module(seed=1)
    shards = shard_by_spec(sd, k)
    write_original(tmp_path / "orig", shards)
    merged, info = load_original(tmp_path / "orig")
    assert [f.name for f in info.files] == [f"mp_rank_{r:02d}_model_states.pt" for r in range(k)]
    assert_same(merged, sd)
    # The QKV rule matters: a plain concatenation of the shards is a different matrix.
    key = "transformer.layers.0.attention.query_key_value.weight"
    assert not torch.equal(torch.cat([s[key] for s in shards]), sd[key])
    model = GLM(CONFIG).eval()
    load_pretrained_into(model, tmp_path / "orig")  # task.pretrained may name an original dir directly
    assert torch.equal(run(model), reference_logits(sd))


def test_round_trip_original_ours_original_is_exact(tmp_path: Path) -> None:
    sd = spec_module(seed=2)
    write_original(tmp_path / "orig", shard_by_spec(sd, 2))
    convert_original_to_export(tmp_path / "orig", tmp_path / "ours", num_attention_heads=N)
    _, ours, _ = load_export(tmp_path / "ours")
    save_original(ours, tmp_path / "back1", mp=1)
    save_original(ours, tmp_path / "back2", mp=2, tag="iter_7")
    assert (tmp_path / "back1" / "latest_checkpointed_iteration.txt").read_text().strip() == "release"
    back1 = torch.load(tmp_path / "back1" / "release" / "mp_rank_00_model_states.pt", weights_only=True)
    assert list(back1) == ["module"]
    assert_same(back1["module"], sd)
    for r, expected in enumerate(shard_by_spec(sd, 2)):  # re-sharding is the original's split, exactly
        shard = torch.load(
            tmp_path / "back2" / "iter_7" / f"mp_rank_{r:02d}_model_states.pt", weights_only=True
        )
        assert_same(shard["module"], expected)


def test_classification_wrapper_prefix_and_extra_heads(tmp_path: Path) -> None:
    sd = spec_module(seed=3)
    module = {"model." + k: v for k, v in sd.items()}
    module.update(
        {
            "pool_layer.weight": torch.randn(H, H),
            "pool_layer.bias": torch.randn(H),
            "multichoice_head.weight": torch.randn(1, H),
            "multichoice_head.bias": torch.randn(1),
        }
    )
    (tmp_path / "f").mkdir()
    torch.save({"module": module}, tmp_path / "f" / "cls.pt")  # a single file also works
    convert_original_to_export(tmp_path / "f" / "cls.pt", tmp_path / "drop", num_attention_heads=N)
    assert not (tmp_path / "drop" / "extra_heads.pt").exists()
    convert_original_to_export(
        tmp_path / "f" / "cls.pt", tmp_path / "keep", num_attention_heads=N, keep_extras=True
    )
    assert_same(load_export(tmp_path / "keep")[1], sd)
    extras = torch.load(tmp_path / "keep" / "extra_heads.pt", weights_only=True)
    assert_same(extras, {k: v for k, v in module.items() if not k.startswith("model.")})


def test_config_inference_and_its_errors(caplog) -> None:
    sd = spec_module()
    cfg = infer_config(sd, source="ckpt")  # no heads given: head size 64 rule -> 1 head for h = 64
    assert "ckpt: head count not given; assuming head size 64 -> 1 heads" in caplog.text
    assert cfg.num_attention_heads == 1 and cfg.vocab_size == V and cfg.max_sequence_length == P
    with pytest.raises(
        CheckpointError,
        match="preset 'glm-small' does not match the checkpoint: num_layers preset 6 vs checkpoint 2",
    ):
        infer_config(sd, "glm-small", "ckpt")
    no_block = {k: v for k, v in sd.items() if "block_position" not in k}
    with pytest.raises(CheckpointError, match="not a block-LM GLM"):
        infer_config(no_block)


def test_bad_original_checkpoints_give_clear_errors(tmp_path: Path) -> None:
    sd = spec_module()
    shards = shard_by_spec(sd, 2)
    shards[1]["transformer.final_layernorm.bias"] = shards[1]["transformer.final_layernorm.bias"] + 1
    write_original(tmp_path / "diverged", shards)
    with pytest.raises(
        CheckpointError,
        match="replicated tensor transformer.final_layernorm.bias differs between rank 0 and rank 1",
    ):
        load_original(tmp_path / "diverged")

    write_original(tmp_path / "gap", shard_by_spec(sd, 2))
    (tmp_path / "gap" / "250000" / "mp_rank_01_model_states.pt").rename(
        tmp_path / "gap" / "250000" / "mp_rank_02_model_states.pt"
    )
    with pytest.raises(CheckpointError, match=r"model-parallel ranks \[0, 2\] are not 0..1"):
        load_original(tmp_path / "gap")

    write_original(tmp_path / "cut", [sd])
    f = tmp_path / "cut" / "250000" / "mp_rank_00_model_states.pt"
    f.write_bytes(f.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"mp_rank_00_model_states\.pt: truncated or corrupt"):
        load_original(tmp_path / "cut")

    (tmp_path / "cut" / "latest_checkpointed_iteration.txt").write_text("999")
    with pytest.raises(CheckpointError, match="names tag '999' but .* does not exist"):
        load_original(tmp_path / "cut")

    (tmp_path / "notglm").mkdir()
    torch.save({"module": {"encoder.weight": torch.ones(2)}}, tmp_path / "notglm" / "x.pt")
    with pytest.raises(CheckpointError, match=r"x\.pt: no 'word_embeddings.weight'"):
        load_original(tmp_path / "notglm" / "x.pt")

    with pytest.raises(CheckpointError, match=r"cannot split word_embeddings.weight \(256, 64\) into 3"):
        save_original(sd, tmp_path / "three", mp=3)


# --------------------------------------------------------------------------------------------------
# Hugging Face port
# --------------------------------------------------------------------------------------------------
HF_CONFIG = {
    "_name_or_path": "THUDM/glm-tiny-test",
    "architectures": ["GLMModel"],
    "model_type": "glm",
    "num_layers": L,
    "hidden_size": H,
    "num_attention_heads": N,
    "vocab_size": V,
    "max_sequence_length": P,
    "embedding_dropout_prob": 0.1,
    "attention_dropout_prob": 0.05,
    "output_dropout_prob": 0.1,
    "block_position_encoding": True,
    "relative_encoding": False,
    "initializer_range": 0.02,
    "checkpoint_activations": False,
    "output_predict": True,
    "pad_token_id": 0,
}


@pytest.mark.parametrize("prefix", ["", "glm."])
def test_hf_directory_loads_with_or_without_prefix(tmp_path: Path, prefix: str) -> None:
    sd = spec_module(seed=4)
    weights = {prefix + k: v for k, v in sd.items()}
    weights.update({"dense.weight": torch.ones(H, H), "out_proj.weight": torch.ones(2, H)})  # a task head
    torch.save(weights, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(HF_CONFIG))
    config, loaded = load_hf(tmp_path)
    assert_same(loaded, sd)
    assert (
        config.name,
        config.num_layers,
        config.hidden_size,
        config.num_attention_heads,
        config.vocab_size,
        config.max_sequence_length,
    ) == ("glm-tiny-test", L, H, N, V, P)
    assert (config.hidden_dropout, config.attention_dropout, config.gelu_approximate) == (0.1, 0.05, "tanh")
    assert load_hf(tmp_path, gelu_approximate="none")[0].gelu_approximate == "none"
    model = GLM(config).eval()
    model.load_state_dict(loaded)
    assert torch.equal(run(model), reference_logits(sd))


def test_hf_sharded_index_and_round_trip(tmp_path: Path) -> None:
    sd = spec_module(seed=5)
    keys = list(sd)
    parts = {"pytorch_model-00001-of-00002.bin": keys[:10], "pytorch_model-00002-of-00002.bin": keys[10:]}
    for name, ks in parts.items():
        torch.save({"glm." + k: sd[k] for k in ks}, tmp_path / name)
    index = {"metadata": {}, "weight_map": {"glm." + k: name for name, ks in parts.items() for k in ks}}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text(json.dumps(HF_CONFIG))
    config, loaded = load_hf(tmp_path)
    assert_same(loaded, sd)
    save_hf(loaded, config, tmp_path / "out")
    written = torch.load(tmp_path / "out" / "pytorch_model.bin", weights_only=True)
    assert_same(written, sd)  # un-prefixed, as the original HF converter wrote them
    back_config, back = load_hf(tmp_path / "out")
    assert_same(back, sd)
    assert back_config.attention_dropout == config.attention_dropout


def test_hf_config_errors(tmp_path: Path) -> None:
    torch.save(spec_module(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps({**HF_CONFIG, "relative_encoding": True}))
    with pytest.raises(CheckpointError, match=r"config\.json: relative_encoding=true"):
        load_hf(tmp_path)
    (tmp_path / "config.json").write_text(
        json.dumps({k: v for k, v in HF_CONFIG.items() if k != "hidden_size"})
    )
    with pytest.raises(CheckpointError, match=r"config\.json: missing field\(s\) \['hidden_size'\]"):
        load_hf(tmp_path)


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def test_cli_original_to_ours_to_resharded_original(tmp_path: Path, capsys) -> None:
    sd = spec_module(seed=6)
    write_original(tmp_path / "orig", shard_by_spec(sd, 2))
    assert (
        cli_main(
            [
                "convert",
                "--from",
                "original",
                str(tmp_path / "orig"),
                "--model",
                "glm-tiny",
                "--out",
                str(tmp_path / "ours"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"{N_PARAMS:,} parameters" in out and "num_attention_heads: 4" in out
    assert_same(load_export(tmp_path / "ours")[1], sd)
    assert (
        cli_main(
            [
                "convert",
                "--from",
                "ours",
                str(tmp_path / "ours"),
                "--to",
                "original",
                "--mp",
                "2",
                "--out",
                str(tmp_path / "back"),
            ]
        )
        == 0
    )
    for r, expected in enumerate(shard_by_spec(sd, 2)):
        shard = torch.load(
            tmp_path / "back" / "release" / f"mp_rank_{r:02d}_model_states.pt", weights_only=True
        )
        assert_same(shard["module"], expected)
    assert (
        cli_main(
            [
                "convert",
                "--from",
                "ours",
                str(tmp_path / "ours"),
                "--to",
                "ours",
                "--dtype",
                "bf16",
                "--out",
                str(tmp_path / "bf16"),
            ]
        )
        == 0
    )
    assert all(v.dtype == torch.bfloat16 for v in load_export(tmp_path / "bf16")[1].values())


def test_cli_reports_errors_without_traceback(tmp_path: Path, capsys) -> None:
    assert (
        cli_main(["convert", "--from", "original", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
        == 1
    )
    assert "error: " in capsys.readouterr().err
    rotary = GLMConfig(**{**CONFIG.to_dict(), "position_encoding": "rotary"})
    from glm.checkpoint.io import export_model

    export_model(GLM(rotary), rotary, tmp_path / "rot")
    assert (
        cli_main(
            [
                "convert",
                "--from",
                "ours",
                str(tmp_path / "rot"),
                "--to",
                "original",
                "--out",
                str(tmp_path / "o2"),
            ]
        )
        == 1
    )
    assert "cannot be written in the original layout: position_encoding='rotary'" in capsys.readouterr().err
