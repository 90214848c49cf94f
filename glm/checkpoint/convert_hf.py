"""Hugging Face GLM port (THUDM/glm-large, glm-10b, ...) <-> our weights (docs/original-glm.md §12.2, §12.3).

The HF port keeps the original parameter names; in memory they sit under the `glm.` attribute, and
`pytorch_model.bin` was written by the original converter without the prefix. Both forms are read
(docs/original-glm.md §13.3: the hub files were not inspected). `config.json` fields map onto GLMConfig as below.

GELU decision (docs/original-glm.md §12.3): the HF port applies the exact erf GELU, the original training code the tanh
approximation. Converting from HF keeps `gelu_approximate="tanh"` by default, because the weights were
trained with it and that is what reproduces the original model; pass `gelu_approximate="none"`
(CLI `--gelu none`) to reproduce the HF port's logits instead (they differ by ~3e-3 on a small model).

Not converted: HF task heads (`GLMForSequenceClassification`'s `dense`/`out_proj`) and P-tuning
`prompt_spell` weights are dropped with a log line. `relative_encoding=True` or
`block_position_encoding=False` configs describe models our backbone does not implement: refused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from glm.checkpoint.convert_original import check_original_compatible
from glm.checkpoint.io import atomic_save, is_backbone_key, safe_load
from glm.errors import CheckpointError
from glm.model import GLMConfig
from glm.utils.fs import atomic_write
from glm.utils.inputs import json_key_line, load_json, read_text

log = logging.getLogger(__name__)

HF_PREFIX = "glm."
HF_CONFIG = "config.json"
HF_WEIGHTS = "pytorch_model.bin"
HF_INDEX = "pytorch_model.bin.index.json"
HF_SAFETENSORS = "model.safetensors"
HF_SAFETENSORS_INDEX = "model.safetensors.index.json"

# Fields of the HF port's GLMConfig that must be present (no safe default to fall back on).
_REQUIRED = ("hidden_size", "num_attention_heads", "max_sequence_length")


def hf_config_to_glm(
    hf: Mapping[str, Any],
    *,
    source: str = HF_CONFIG,
    gelu_approximate: str = "tanh",
    line_of: Callable[[str], int | None] = lambda key: None,
) -> GLMConfig:
    """Map a HF `config.json` dict onto GLMConfig (dropouts: output -> hidden, attention -> attention);
    `line_of(key)` places a bad field's message at its line of the file."""
    if not isinstance(hf, Mapping):
        raise CheckpointError(f"{source}: expected a JSON object of config fields, got {type(hf).__name__}")
    missing = [k for k in _REQUIRED if k not in hf]
    if "num_layers" not in hf and "num_hidden_layers" not in hf:
        missing.insert(0, "num_layers")
    if missing:
        raise CheckpointError(f"{source}: missing field(s) {missing}")
    if hf.get("relative_encoding", False):
        raise CheckpointError(f"{source}: relative_encoding=true (Transformer-XL style) is not supported")
    if not hf.get("block_position_encoding", True):
        raise CheckpointError(
            f"{source}: block_position_encoding=false (single position table) is not supported"
        )
    emb, out = hf.get("embedding_dropout_prob", 0.1), hf.get("output_dropout_prob", 0.1)
    if emb != out:
        # Our backbone has one hidden dropout for all three places (as the original code, docs/original-glm.md §1.6).
        log.warning(
            "%s: embedding_dropout_prob %s != output_dropout_prob %s; using %s for both",
            source,
            emb,
            out,
            out,
        )
    if hf.get("spell_length"):
        log.warning(
            "%s: spell_length=%s: P-tuning prompt weights are not converted", source, hf["spell_length"]
        )
    layers_key = "num_layers" if "num_layers" in hf else "num_hidden_layers"

    def number(key: str, kind: type, default: Any = None) -> Any:
        value = hf.get(key, default)
        # int("abc") / int(None) / int([2]) would fail without naming the field; bool is not a size
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not numeric or (kind is int and not float(value).is_integer()):
            where = f"{source}:{line_of(key)}" if line_of(key) else source
            raise CheckpointError(f"{where}: field {key!r} must be {kind.__name__}, got {value!r:.40}")
        return kind(value)

    try:
        return GLMConfig(
            name=str(hf.get("_name_or_path") or "hf-glm").rstrip("/").split("/")[-1] or "hf-glm",
            num_layers=number(layers_key, int),
            hidden_size=number("hidden_size", int),
            num_attention_heads=number("num_attention_heads", int),
            vocab_size=number("vocab_size", int, 30592),  # the HF port's default (docs/original-glm.md §12.2)
            max_sequence_length=number("max_sequence_length", int),
            hidden_dropout=number("output_dropout_prob", float, 0.1),
            attention_dropout=number("attention_dropout_prob", float, 0.1),
            initializer_range=number("initializer_range", float, 0.02),
            gelu_approximate=gelu_approximate,
        )
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: {err}") from None


def glm_config_to_hf(config: GLMConfig) -> dict[str, Any]:
    """The HF port's `config.json` fields for `config` (original architecture only)."""
    check_original_compatible(config)
    return {
        "model_type": "glm",
        "architectures": ["GLMModel"],
        "num_layers": config.num_layers,
        "hidden_size": config.hidden_size,
        "num_attention_heads": config.num_attention_heads,
        "vocab_size": config.vocab_size,
        "max_sequence_length": config.max_sequence_length,
        "embedding_dropout_prob": config.hidden_dropout,
        "attention_dropout_prob": config.attention_dropout,
        "output_dropout_prob": config.hidden_dropout,
        "initializer_range": config.initializer_range,
        "checkpoint_activations": False,
        "checkpoint_num_layers": 1,
        "parallel_output": True,
        "relative_encoding": False,
        "block_position_encoding": True,
        "output_predict": True,
        "spell_length": None,
        "spell_func": "lstm",
        "attention_scale": 1.0,
        "pool_token": "cls",
    }


def _weight_files(directory: Path) -> list[Path]:
    for index_name in (HF_INDEX, HF_SAFETENSORS_INDEX):
        index = directory / index_name
        if index.is_file():
            try:
                weight_map = load_json(index, "weight index")["weight_map"]
                if not isinstance(weight_map, dict):
                    raise TypeError("'weight_map' is not an object")
            except (ValueError, KeyError, TypeError) as err:
                raise CheckpointError(
                    f"{index}: not a weight index (need a 'weight_map' object): {err}"
                ) from None
            return [directory / name for name in dict.fromkeys(weight_map.values())]
    for name in (HF_WEIGHTS, HF_SAFETENSORS):
        if (directory / name).is_file():
            return [directory / name]
    raise CheckpointError(f"{directory}: no {HF_WEIGHTS}, {HF_SAFETENSORS} or weight index")


def _read_weight_file(file: Path) -> dict[str, Tensor]:
    if file.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(f"{file}: reading .safetensors needs the 'safetensors' package") from None
        return load_file(file)
    obj = safe_load(file, "cpu")
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{file}: not a state dict of tensors")
    return dict(obj)


def load_hf(path: str | Path, *, gelu_approximate: str = "tanh") -> tuple[GLMConfig, dict[str, Tensor]]:
    """Read a HF GLM directory (`config.json` + weights): our config and the un-prefixed backbone weights."""
    directory = Path(path)
    if not (directory / HF_CONFIG).is_file():
        raise CheckpointError(f"{directory}: no {HF_CONFIG}; not a Hugging Face model directory")
    try:
        hf = load_json(directory / HF_CONFIG, "Hugging Face config")
        text = read_text(directory / HF_CONFIG, "Hugging Face config")
    except (OSError, ValueError) as err:
        raise CheckpointError(str(err)) from None
    config = hf_config_to_glm(
        hf,
        source=str(directory / HF_CONFIG),
        gelu_approximate=gelu_approximate,
        line_of=lambda key: json_key_line(text, key),
    )
    state_dict: dict[str, Tensor] = {}
    dropped: list[str] = []
    for file in _weight_files(directory):
        for key, value in _read_weight_file(file).items():
            name = key.removeprefix(HF_PREFIX)
            if is_backbone_key(name):
                state_dict[name] = value
            else:
                dropped.append(key)
    if dropped:
        log.warning(
            "%s: dropped %d non-backbone tensors (task heads / prompts): %s",
            directory,
            len(dropped),
            dropped[:8],
        )
    return config, state_dict


def save_hf(state_dict: Mapping[str, Tensor], config: GLMConfig, out_dir: str | Path) -> Path:
    """Write `config.json` + `pytorch_model.bin` (un-prefixed keys, as the original HF converter wrote them).

    The port's code files (`modeling_glm.py`, `configuration_glm.py`, `tokenization_glm.py`) and the
    tokenizer files must be copied from the matching hub repo to load it with `trust_remote_code`.
    """
    out_dir = Path(out_dir)
    hf = glm_config_to_hf(config)
    atomic_save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, out_dir / HF_WEIGHTS)
    atomic_write(out_dir / HF_CONFIG, json.dumps(hf, indent=2) + "\n")
    return out_dir


__all__ = ["glm_config_to_hf", "hf_config_to_glm", "load_hf", "save_hf"]
