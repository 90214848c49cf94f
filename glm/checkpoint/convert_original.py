"""Original THUDM/GLM checkpoints <-> our export directory (docs/original-glm.md §1.9, §12.1).

Original layout: `DIR/latest_checkpointed_iteration.txt` holds a tag (an iteration or `release`), and
`DIR/<tag>/mp_rank_XX_model_states.pt` is one file per model-parallel rank; each is a dict whose
`module` entry is the model state dict. Our backbone uses the same parameter names, so the conversion
is: pick `module`, strip wrapper prefixes, merge model-parallel shards, infer the config.

Merging k shards (docs/original-glm.md §1.9, `mpu/layers.py`, `change_mp.py`), per key:
- `word_embeddings.weight`, `mlp.dense_h_to_4h.weight/bias`: concatenated along dim 0;
- `attention.query_key_value.weight/bias`: rank r holds `[Q_r; K_r; V_r]`; merged is
  `[Q_0..Q_{k-1}; K_0..K_{k-1}; V_0..V_{k-1}]` (not a plain concatenation);
- `attention.dense.weight`, `mlp.dense_4h_to_h.weight`: concatenated along dim 1;
- everything else (their biases, LayerNorms, position tables, wrapper heads) is replicated; the copies
  are checked equal.
`split_state_dict` is the exact inverse (re-sharding to k ranks).

Memory: shard files are opened with `mmap=True`; merged tensors are built one key at a time and each
shard's entry is dropped as soon as it is used, so at most one full copy (the output) is resident.
With one shard nothing is copied at all.

Decisions (docs/original-glm.md §13.5: released checkpoints are probably all model-parallel size 1; sharded ones are
handled anyway):
- The classification wrapper (`GLMForSequenceClassification`) stores the backbone under `model.`; the
  prefix is stripped. Its `pool_layer.*` / `multichoice_head.*` and P-tuning's `prompt_spell.*` are not
  part of the backbone: they are dropped with a log line, or written to `DIR/extra_heads.pt` with
  `keep_extras=True`.
- The head count cannot be read from the shapes (the fused QKV is `[3h, h]` for any head count): it
  comes from `--model PRESET` or `num_attention_heads`, else from the rule every GLM release follows,
  head size 64 (docs/original-glm.md §11), with a warning.
- V and P always come from the tables (V = embedding rows, P = position rows - 1), so a preset can be
  named for a checkpoint with a different (padded) vocabulary.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from glm.checkpoint.io import (
    atomic_save,
    export_model,
    safe_load,
)
from glm.errors import CheckpointError
from glm.model import GLMConfig
from glm.utils.fs import atomic_write
from glm.utils.inputs import read_lines

log = logging.getLogger(__name__)

TRACKER_FILE = "latest_checkpointed_iteration.txt"
SHARD_RE = re.compile(r"^mp_rank_(\d{2})_model_states\.pt$")
EXTRA_PREFIXES = ("pool_layer.", "multichoice_head.", "prompt_spell.")
EXTRAS_FILE = "extra_heads.pt"
HEAD_SIZE = 64  # every original release (docs/original-glm.md §11)


def _numpy_safe_globals() -> list:
    # Original checkpoints carry numpy RNG states (`np_rng_state`): plain arrays, safe to allow-list.
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    dtypes = {type(np.dtype(t)) for t in ("uint32", "int64", "float64", "<U7")}
    return [np.ndarray, np.dtype, _reconstruct, *dtypes]


ORIGINAL_SAFE_GLOBALS = _numpy_safe_globals()


# --------------------------------------------------------------------------------------------------
# Finding and reading the files
# --------------------------------------------------------------------------------------------------
def is_original_dir(path: str | Path) -> bool:
    """A checkpoint root (with the tracker file) or a tag directory holding `mp_rank_XX_model_states.pt`."""
    path = Path(path)
    return path.is_dir() and (
        (path / TRACKER_FILE).is_file() or any(SHARD_RE.match(p.name) for p in path.iterdir())
    )


def read_tracker(tracker: Path) -> str:
    """The tag `latest_checkpointed_iteration.txt` names: one line, an iteration number or `release`."""
    try:
        lines = [line.strip() for line in read_lines(tracker, "checkpoint tracker")]
    except (OSError, ValueError) as err:
        raise CheckpointError(str(err)) from None
    tags = [(n, line) for n, line in enumerate(lines, start=1) if line]
    if not tags:
        raise CheckpointError(f"{tracker}: empty; expected an iteration number or 'release'")
    if len(tags) > 1:
        n, extra = tags[1]
        raise CheckpointError(f"{tracker}:{n}: unexpected second line {extra!r}; expected one tag")
    n, tag = tags[0]
    if tag in (".", "..") or "/" in tag or "\\" in tag:  # the tag must name a directory right here
        raise CheckpointError(f"{tracker}:{n}: tag {tag!r} is not a directory name")
    return tag


def original_shard_files(path: str | Path) -> list[Path]:
    """The per-rank files of an original checkpoint, ordered by rank; `path` is a root, tag dir or file."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint file or directory")
    tag_dir = path
    if (path / TRACKER_FILE).exists():
        tag = read_tracker(path / TRACKER_FILE)
        tag_dir = path / tag
        if not tag_dir.is_dir():
            raise CheckpointError(f"{path / TRACKER_FILE}: names tag {tag!r} but {tag_dir} does not exist")
    ranks = {}
    for p in tag_dir.iterdir():
        m = SHARD_RE.match(p.name)
        if m:
            ranks[int(m.group(1))] = p
    if not ranks:
        raise CheckpointError(f"{tag_dir}: no mp_rank_XX_model_states.pt files")
    if sorted(ranks) != list(range(len(ranks))):
        raise CheckpointError(f"{tag_dir}: model-parallel ranks {sorted(ranks)} are not 0..{len(ranks) - 1}")
    return [ranks[r] for r in range(len(ranks))]


def read_module(file: str | Path, *, trust: bool = False) -> dict[str, Tensor]:
    """The `module` state dict of one original checkpoint file (or the file itself if it is a plain dict)."""
    file = Path(file)
    obj = safe_load(file, "cpu", safe_globals=ORIGINAL_SAFE_GLOBALS, trust=trust)
    if isinstance(obj, Mapping) and "module" in obj:
        obj = obj["module"]
        what = "'module' entry"
    else:
        what = "contents (no 'module' entry)"
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{file}: {what} is not a state dict of tensors; not an original GLM checkpoint"
        )
    return dict(obj)


def split_extras(module: dict[str, Tensor], source: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Strip `module.` / classification-wrapper `model.` prefixes; separate non-backbone heads."""
    sd = dict(module)
    for prefix in ("module.", "model."):
        if any(k.startswith(prefix + "word_embeddings.") for k in sd):
            sd = {(k.removeprefix(prefix)): v for k, v in sd.items()}
    bad = [k for k in sd if "_orig_mod." in k]
    if bad:
        raise CheckpointError(
            f"{source}: torch.compile '_orig_mod.' in key {bad[0]!r}; not an original checkpoint"
        )
    extras = {k: v for k, v in sd.items() if k.startswith(EXTRA_PREFIXES)}
    backbone = {k: v for k, v in sd.items() if k not in extras}
    if "word_embeddings.weight" not in backbone:
        raise CheckpointError(
            f"{source}: no 'word_embeddings.weight' in the state dict (first keys: "
            f"{list(sd)[:5]}); not a GLM checkpoint"
        )
    return backbone, extras


# --------------------------------------------------------------------------------------------------
# Model-parallel merge / split
# --------------------------------------------------------------------------------------------------
def shard_rule(key: str) -> str:
    """How `key` is split across model-parallel ranks: rows | qkv | cols | replicated (docs/original-glm.md §1.9)."""
    if key.endswith("word_embeddings.weight") or re.search(r"mlp\.dense_h_to_4h\.(weight|bias)$", key):
        return "rows"
    if re.search(r"attention\.query_key_value\.(weight|bias)$", key):
        return "qkv"
    if key.endswith(("attention.dense.weight", "mlp.dense_4h_to_h.weight")):
        return "cols"
    return "replicated"


def merge_tensor(key: str, parts: list[Tensor], source: str = "") -> Tensor:
    """Merge one key's per-rank tensors (rank order) into the full tensor."""
    if len(parts) == 1:
        return parts[0]
    rule = shard_rule(key)
    if rule == "rows":
        return torch.cat(parts, dim=0)
    if rule == "cols":
        return torch.cat(parts, dim=1)
    if rule == "qkv":
        thirds = [p.chunk(3, dim=0) for p in parts]  # each rank: [Q_r; K_r; V_r]
        for r, p in enumerate(parts):
            if p.shape[0] % 3:
                raise CheckpointError(
                    f"{source}: {key} on rank {r} has {p.shape[0]} rows, not divisible by 3"
                )
        return torch.cat([t[i] for i in range(3) for t in thirds], dim=0)
    for r, p in enumerate(parts[1:], start=1):
        if p.shape != parts[0].shape or not torch.equal(p, parts[0]):
            raise CheckpointError(f"{source}: replicated tensor {key} differs between rank 0 and rank {r}")
    return parts[0]


def split_tensor(key: str, tensor: Tensor, k: int) -> list[Tensor]:
    """The inverse of `merge_tensor`: `k` per-rank tensors (replicated ones are shared, not copied)."""
    rule = shard_rule(key)
    if k == 1 or rule == "replicated":
        return [tensor] * k
    dim = 1 if rule == "cols" else 0
    size = tensor.shape[dim] // 3 if rule == "qkv" else tensor.shape[dim]
    if size % k:
        raise CheckpointError(
            f"cannot split {key} {tuple(tensor.shape)} into {k} model-parallel ranks "
            f"({size} is not divisible by {k})"
        )
    if rule == "qkv":
        q, kk, v = (t.chunk(k, dim=0) for t in tensor.chunk(3, dim=0))
        return [torch.cat([q[r], kk[r], v[r]], dim=0) for r in range(k)]
    return [c.contiguous() for c in tensor.chunk(k, dim=dim)]


def merge_shards(
    shards: list[dict[str, Tensor]], source: str = "", progress: Callable | None = None
) -> dict[str, Tensor]:
    """Merge per-rank state dicts into one; entries are popped from `shards` as they are used."""
    keys = list(shards[0])
    for r, shard in enumerate(shards[1:], start=1):
        if set(shard) != set(keys):
            diff = sorted(set(shard) ^ set(keys))
            raise CheckpointError(f"{source}: rank {r} has different keys than rank 0, e.g. {diff[:5]}")
    merged: dict[str, Tensor] = {}
    for key in progress(keys) if progress else keys:
        merged[key] = merge_tensor(key, [s.pop(key) for s in shards], source)
    return merged


def split_state_dict(state_dict: Mapping[str, Tensor], k: int) -> list[dict[str, Tensor]]:
    """Re-shard a full state dict into `k` model-parallel ranks (inverse of `merge_shards`)."""
    if k < 1:
        raise ValueError(f"model-parallel size must be >= 1, got {k}")
    ranks: list[dict[str, Tensor]] = [{} for _ in range(k)]
    for key, tensor in state_dict.items():
        for r, part in enumerate(split_tensor(key, tensor, k)):
            ranks[r][key] = part
    return ranks


# --------------------------------------------------------------------------------------------------
# Config inference and the conversions
# --------------------------------------------------------------------------------------------------
def infer_config(
    state_dict: Mapping[str, Tensor], preset: str | None = None, source: str = "", **overrides
) -> GLMConfig:
    """GLMConfig for an original `module` dict: shapes give layers, h, V, P; heads from preset/overrides."""
    if "transformer.block_position_embeddings.weight" not in state_dict:
        raise CheckpointError(
            f"{source}: no transformer.block_position_embeddings.weight: not a block-LM GLM "
            "(the masked-LM variant with a single position table is not supported)"
        )
    vocab, hidden = state_dict["word_embeddings.weight"].shape
    pos_rows = state_dict["transformer.position_embeddings.weight"].shape[0]
    layer_ids = {int(m.group(1)) for k in state_dict if (m := re.match(r"transformer\.layers\.(\d+)\.", k))}
    if not layer_ids or sorted(layer_ids) != list(range(len(layer_ids))):
        raise CheckpointError(f"{source}: layer indices {sorted(layer_ids)[:10]} are not 0..N-1")
    ffn = state_dict["transformer.layers.0.mlp.dense_h_to_4h.weight"].shape[0]
    if ffn != 4 * hidden:
        raise CheckpointError(
            f"{source}: MLP width {ffn} is not 4 * hidden ({4 * hidden}); not an original GLM"
        )
    shape = {
        "num_layers": len(layer_ids),
        "hidden_size": int(hidden),
        "vocab_size": int(vocab),
        "max_sequence_length": int(pos_rows) - 1,
    }
    try:
        if preset is not None:
            config = GLMConfig.from_name(preset, **overrides)
            clash = {
                k: (getattr(config, k), v)
                for k, v in shape.items()
                if k in ("num_layers", "hidden_size") and getattr(config, k) != v
            }
            if clash:
                raise CheckpointError(
                    f"{source}: preset {preset!r} does not match the checkpoint: "
                    + ", ".join(f"{k} preset {a} vs checkpoint {b}" for k, (a, b) in clash.items())
                )
            return GLMConfig.from_name(preset, **{**overrides, **shape})
        if "num_attention_heads" not in overrides:
            overrides["num_attention_heads"] = max(1, int(hidden) // HEAD_SIZE)
            log.warning(
                "%s: head count not given; assuming head size %d -> %d heads (pass --model or "
                "num_attention_heads to be explicit)",
                source,
                HEAD_SIZE,
                overrides["num_attention_heads"],
            )
        return GLMConfig(**{"name": "converted", **overrides, **shape})
    except ValueError as err:
        raise CheckpointError(f"{source}: {err}") from None


@dataclass
class OriginalCheckpoint:
    """What `load_original` found besides the weights."""

    files: list[Path]
    extras: dict[str, Tensor] = field(default_factory=dict)


def load_original(
    path: str | Path, *, trust: bool = False, progress: Callable | None = None
) -> tuple[dict[str, Tensor], OriginalCheckpoint]:
    """Read an original checkpoint (root dir, tag dir or single file): merged backbone state dict + info."""
    files = original_shard_files(path)
    source = str(path)
    backbones, extras_per_rank = [], []
    for file in files:
        backbone, extras = split_extras(read_module(file, trust=trust), str(file))
        backbones.append(backbone)
        extras_per_rank.append(extras)
    merged = merge_shards(backbones, source, progress)
    extras = merge_shards(extras_per_rank, source) if extras_per_rank[0] else {}
    return merged, OriginalCheckpoint(files=files, extras=extras)


def convert_original_to_export(
    path: str | Path,
    out_dir: str | Path,
    *,
    preset: str | None = None,
    tokenizer=None,
    keep_extras: bool = False,
    dtype: torch.dtype | None = None,
    trust: bool = False,
    progress: Callable | None = None,
    **overrides,
) -> GLMConfig:
    """Original checkpoint -> our export dir (weights, config [, tokenizer]); returns its config."""
    sd, info = load_original(path, trust=trust, progress=progress)
    config = infer_config(sd, preset, str(path), **overrides)
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    export_model(sd, config, out_dir, tokenizer=tokenizer)
    if info.extras:
        if keep_extras:
            atomic_save(info.extras, Path(out_dir) / EXTRAS_FILE)
            log.info("%s: wrote %d non-backbone tensors to %s", path, len(info.extras), EXTRAS_FILE)
        else:
            log.warning(
                "%s: dropped %d non-backbone tensors (%s); keep them with keep_extras/--keep-extras",
                path,
                len(info.extras),
                sorted({k.split(".")[0] for k in info.extras}),
            )
    return config


def save_original(
    state_dict: Mapping[str, Tensor],
    out_dir: str | Path,
    *,
    mp: int = 1,
    tag: str = "release",
    extras: Mapping[str, Tensor] | None = None,
) -> list[Path]:
    """Write the original layout: `latest_checkpointed_iteration.txt` + `<tag>/mp_rank_XX_model_states.pt`.

    Each file is `{"module": shard}` — what the original `load_pretrained` and the HF converter read
    (`--no-load-optim --no-load-rng` for a full DeepSpeed resume, which expects more keys).
    """
    out_dir = Path(out_dir)
    full = dict(state_dict)
    if extras:
        full.update(extras)
    ranks = split_state_dict(full, mp)
    files = []
    for r, shard in enumerate(ranks):
        file = out_dir / tag / f"mp_rank_{r:02d}_model_states.pt"
        files.append(atomic_save({"module": shard}, file))
    atomic_write(out_dir / TRACKER_FILE, f"{tag}\n")  # last: the tracker only names complete tags
    return files


def check_original_compatible(config: GLMConfig) -> None:
    """Raise unless `config` describes the original GLM architecture (what the original code can run)."""
    problems = []
    if config.position_encoding != "learned":
        problems.append(f"position_encoding={config.position_encoding!r} (original: learned tables)")
    if config.layernorm_order != "pre":
        problems.append(f"layernorm_order={config.layernorm_order!r} (original: pre)")
    if config.mlp != "gelu" or config.ffn_size != 4 * config.hidden_size:
        problems.append(f"mlp={config.mlp!r} with width {config.ffn_size} (original: gelu, 4h)")
    if config.layernorm_epsilon != 1e-5:
        problems.append(f"layernorm_epsilon={config.layernorm_epsilon} (original: hard-wired 1e-5)")
    if problems:
        raise CheckpointError(
            f"GLMConfig '{config.name}' cannot be written in the original layout: " + "; ".join(problems)
        )
    if config.gelu_approximate != "tanh":
        log.warning(
            "GLMConfig '%s' uses the erf GELU; the original code always applies the tanh form", config.name
        )


__all__ = [
    "EXTRAS_FILE",
    "ORIGINAL_SAFE_GLOBALS",
    "OriginalCheckpoint",
    "check_original_compatible",
    "convert_original_to_export",
    "infer_config",
    "is_original_dir",
    "load_original",
    "merge_shards",
    "merge_tensor",
    "original_shard_files",
    "read_module",
    "save_original",
    "shard_rule",
    "split_extras",
    "split_state_dict",
    "split_tensor",
]
