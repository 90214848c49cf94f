"""Pretrained weights from any source into a backbone: what ``task.pretrained=PATH`` uses.

``load_pretrained_into(model, path)`` accepts an export dir, a Lightning ``.ckpt``, a plain state-dict file
or an original GLM checkpoint (dir or file); it finds the backbone's keys wherever they sit in the file,
extends position tables when the model has more positions, and reports what it loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from glm.checkpoint.convert_original import ORIGINAL_SAFE_GLOBALS, is_original_dir, load_original
from glm.checkpoint.io import (
    CONFIG_FILE,
    MODEL_FILE,
    POSITION_TABLES,
    as_state_dict,
    backbone_prefix,
    is_backbone_key,
    is_export_dir,
    load_export,
    safe_load,
)
from glm.errors import CheckpointError

log = logging.getLogger(__name__)

__all__ = ["LoadReport", "extend_position_table", "load_pretrained_into", "read_weights"]


@dataclass
class LoadReport:
    """What `load_pretrained_into` did: keys that were not loaded and tables that were extended."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file (task heads)
    unexpected: list[str] = field(default_factory=list)  # in the file, not used by the model
    extended: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (rows in file, rows now)


def read_weights(
    path: str | Path, map_location: str | torch.device | None = "cpu"
) -> tuple[dict[str, Tensor], str]:
    """The state dict stored at `path` and what kind of source it was.

    Kinds: `export` (export dir), `lightning` (`.ckpt` with a `state_dict` entry), `original` (original
    GLM checkpoint dir or file with a `module` entry), `state_dict` (a plain dict of tensors).
    """
    path = Path(path)
    if path.is_dir():
        if is_export_dir(path):
            return load_export(path, map_location, load_tokenizer=False)[1], "export"
        if is_original_dir(path):
            return load_original(path)[0], "original"
        raise CheckpointError(
            f"{path}: directory is neither an export dir ({MODEL_FILE} + {CONFIG_FILE}) nor an original GLM "
            "checkpoint (latest_checkpointed_iteration.txt or mp_rank_XX_model_states.pt)"
        )
    obj = safe_load(path, map_location, safe_globals=ORIGINAL_SAFE_GLOBALS)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        return as_state_dict(obj["state_dict"], path, "Lightning 'state_dict'"), "lightning"
    if isinstance(obj, Mapping) and isinstance(obj.get("module"), Mapping):
        return as_state_dict(obj["module"], path, "original 'module' dict"), "original"
    return as_state_dict(obj, path), "state_dict"


def extend_position_table(
    table: Tensor, rows: int, std: float, generator: torch.Generator | None = None
) -> Tensor:
    """A fresh N(0, std) table of `rows` rows whose first rows are `table` (docs/original-glm.md §1.1, §12.1)."""
    if table.shape[0] > rows:
        raise ValueError(f"cannot shrink a position table from {table.shape[0]} to {rows} rows")
    fresh = torch.empty(rows, table.shape[1], dtype=table.dtype)
    fresh.normal_(0.0, std, generator=generator)
    fresh[: table.shape[0]] = table
    return fresh


def load_pretrained_into(model: nn.Module, path: str | Path, *, strict_backbone: bool = True) -> LoadReport:
    """Load pretrained GLM weights from `path` into `model` (a `GLM` or a module containing one).

    The backbone is found in both the file and `model` by its `word_embeddings.weight` key, so the
    prefixes `model.` (Lightning / classification wrapper), `module.` (DDP/DeepSpeed) and `glm.` (HF)
    all work. Keys outside the backbone are loaded when the model has them with the same shape and
    reported otherwise (task heads are allowed to be missing). Position tables shorter than the model's
    are extended as the original `load_pretrained` does. `strict_backbone`: a backbone key missing from
    the file is an error (set False for partial finetuning checkpoints, docs/original-glm.md §12.1).
    """
    source = str(path)
    sd, kind = read_weights(path)
    bad = [k for k in sd if "_orig_mod." in k]
    if bad:
        raise CheckpointError(
            f"{source}: keys carry torch.compile's '_orig_mod.' prefix (e.g. {bad[0]!r}); save the "
            "uncompiled module's state dict (this project compiles blocks in place, which keeps the names)"
        )
    target = model.state_dict()
    src_prefix = backbone_prefix(sd, source)
    dst_prefix = backbone_prefix(target, f"model {type(model).__name__}")
    glm_module = model.get_submodule(dst_prefix[:-1]) if dst_prefix else model
    cfg = getattr(glm_module, "config", None)
    std = cfg.initializer_range if cfg is not None else 0.02

    mapped: dict[str, Tensor] = {}
    report = LoadReport(source=f"{source} ({kind})")
    for key, value in sd.items():
        name = dst_prefix + key[len(src_prefix) :] if key.startswith(src_prefix) else key
        if name not in target:
            report.unexpected.append(key)
            continue
        want = target[name].shape
        inner = name[len(dst_prefix) :]
        if inner in POSITION_TABLES and value.shape[1:] == want[1:] and value.shape[0] < want[0]:
            value = extend_position_table(value, want[0], std)
            report.extended[name] = (sd[key].shape[0], want[0])
        if value.shape != want:
            raise CheckpointError(
                f"{source}: {key}: shape {tuple(value.shape)} does not fit the model's {name} {tuple(want)}"
            )
        mapped[name] = value
    report.loaded = sorted(mapped)
    report.unexpected.sort()
    report.missing = sorted(set(target) - set(mapped))
    missing_backbone = [
        k for k in report.missing if k.startswith(dst_prefix) and is_backbone_key(k[len(dst_prefix) :])
    ]
    if missing_backbone and strict_backbone:
        raise CheckpointError(
            f"{source}: backbone weights missing from the file: {missing_backbone[:6]}"
            f"{' ...' if len(missing_backbone) > 6 else ''} ({len(missing_backbone)} in all)"
        )
    model.load_state_dict(mapped, strict=False)
    for name, (old, new) in report.extended.items():
        log.info("%s: extended %s from %d to %d rows (new rows N(0, %g))", source, name, old, new, std)
    if report.missing:
        log.warning(
            "%s: %d model keys not in the file (kept as initialised): %s",
            source,
            len(report.missing),
            report.missing[:10],
        )
    if report.unexpected:
        log.warning(
            "%s: %d keys in the file not used by the model: %s",
            source,
            len(report.unexpected),
            report.unexpected[:10],
        )
    return report
