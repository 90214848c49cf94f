"""Continuing a run in its run dir: the checkpoint to resume from, the config check, the W&B run id.

Resume after a crash: repeat the command with ``hydra.run.dir=<old run dir> ckpt_path=last`` (or ``auto``).
The checkpoint is opened before anything is built (a corrupt one is named), and the model / objective / data
config the run builds is compared with the run dir's ``config.yaml`` (a difference is refused, naming the
key). The W&B run id is kept in ``<run dir>/wandb_run_id`` and reused.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any

import torch.distributed.checkpoint as dcp
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from glm.checkpoint.consolidate import DCP_METADATA_FILE, FSDP_META_FILE, checkpoint_kind
from glm.checkpoint.io import ANCHOR_KEY, expected_shapes, is_backbone_key, safe_load, verify_manifest
from glm.errors import CheckpointError, ConfigError
from glm.model import GLMConfig
from glm.tasks.base import RUN_FIELDS
from glm.utils.fs import atomic_write, restore_replaced_dir

log = logging.getLogger(__name__)
WANDB_ID_FILE = "wandb_run_id"
RESUME_CHECKED = ("model", "objective", "data")  # what must not change when a run continues
PLACEHOLDER_GROUPS = ("model", "objective")  # groups whose None values mean "the preset's" (glm.run.schemas)


def resolve_ckpt_path(ckpt_path: Any, output_dir: Path, model: GLMConfig | None = None) -> str | None:
    """``last``/``auto`` -> this run dir's ``checkpoints/last.ckpt`` when it exists (resume = same command +
    ``hydra.run.dir=<old run dir> ckpt_path=last``), else None (a fresh start); any other value must be an
    existing checkpoint. The checkpoint is opened once here, so a truncated or corrupt file fails before any
    work with a ``ConfigError`` naming it (rather than deep inside Lightning); with ``model`` (the
    architecture the run builds) a checkpoint of another architecture is refused too, its vocabulary aside
    (the tokenizer fixes that later: :func:`check_checkpoint_architecture` again)."""
    if ckpt_path in (None, ""):
        return None
    if ckpt_path in ("last", "auto"):
        path = output_dir / "checkpoints" / "last.ckpt"
        if restore_replaced_dir(path):  # a sharded save was killed between its two renames
            log.warning(
                "%s: restored the previous sharded checkpoint an interrupted save had moved aside", path
            )
        if not path.exists():
            log.info("ckpt_path=%s: no %s yet, starting from scratch", ckpt_path, path)
            return None
    else:
        path = Path(str(ckpt_path))
        if not path.exists():
            raise ConfigError(f"ckpt_path: no checkpoint file at {ckpt_path}")
    ckpt = check_checkpoint(path)
    if model is not None:
        check_checkpoint_architecture(ckpt, path, model, vocab_known=False)
    return str(path)


def check_checkpoint(path: Path) -> dict[str, Any] | None:
    """A loadable training checkpoint (Lightning file or sharded FSDP dir), else ``ConfigError`` naming it.
    Returns what the architecture check reads: the Lightning file's dict (memory-mapped) or the FSDP dir's
    ``meta.pt`` (None for DeepSpeed dirs)."""
    try:
        kind = checkpoint_kind(path)
        if kind == "lightning":
            ckpt = safe_load(path, expect_digest=True)  # weights_only + mmap; the sha256 sidecar checked
            if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "loops" not in ckpt:
                raise CheckpointError(f"{path}: not a Lightning training checkpoint (no state_dict/loops)")
            return ckpt
        verify_manifest(path)  # a directory (sharded FSDP, DeepSpeed): every file against its SHA256SUMS
        if kind == "fsdp":
            meta = safe_load(path / FSDP_META_FILE)
            try:
                dcp.FileSystemReader(str(path)).read_metadata()
            except Exception as err:  # noqa: BLE001
                raise CheckpointError(f"{path / DCP_METADATA_FILE}: unreadable ({err})") from None
            return meta if isinstance(meta, dict) else None
    except CheckpointError as err:
        raise ConfigError(f"ckpt_path: {err}") from None
    return None


# GLMConfig fields a checkpoint's weights fix (RUN_FIELDS are training-time choices a run may change)
ARCHITECTURE_FIELDS = tuple(f for f in GLMConfig.field_names() if f != "name" and f not in RUN_FIELDS)


def _stored_architecture(ckpt: dict[str, Any], path: Path) -> GLMConfig | None:
    """The GLMConfig in the checkpoint's ``hyper_parameters["model"]`` (what ``GLMTaskModule`` saves), None
    when it has none (a checkpoint of another LightningModule)."""
    hparams = ckpt.get("hyper_parameters")
    if not isinstance(hparams, dict) or not isinstance(hparams.get("model"), dict):
        return None
    try:
        return GLMConfig.from_dict(dict(hparams["model"]))
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"ckpt_path: {path}: hyper_parameters['model'] is not a GLM config ({err})"
        ) from None


def _architecture_value(config: GLMConfig, field: str) -> Any:
    """A field as the built network sees it: ``intermediate_size`` None means 4h (or 8h/3), and the rotary
    and DeepNorm constants matter only when those switches are on."""
    if field == "intermediate_size":
        return config.ffn_size
    if field == "rotary_base" and config.position_encoding != "rotary":
        return None
    if field in ("deepnorm_alpha", "deepnorm_beta") and config.layernorm_order != "deepnorm":
        return None
    return getattr(config, field)


def _shape_difference(ckpt: dict[str, Any], configured: GLMConfig, skip_vocab: bool) -> str | None:
    """Without stored hyperparameters: the first backbone weight whose shape differs from ``configured``."""
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        return None
    backbone = {
        k.removeprefix("model."): v for k, v in state.items() if is_backbone_key(k.removeprefix("model."))
    }
    if not backbone:
        return None
    want = expected_shapes(configured)
    for key in sorted(set(want) | set(backbone)):
        if skip_vocab and key == ANCHOR_KEY:
            continue
        if key not in backbone:
            return f"weight {key} missing from the checkpoint"
        if key not in want:
            return f"weight {key} not in the configured model"
        if tuple(backbone[key].shape) != tuple(want[key]):
            return f"{key}: stored shape {tuple(backbone[key].shape)}, configured {tuple(want[key])}"
    return None


def check_checkpoint_architecture(
    ckpt: dict[str, Any] | None, path: str | Path, configured: GLMConfig, vocab_known: bool = True
) -> None:
    """Refuse a checkpoint of another architecture before any model is built (instead of Lightning's
    ``Missing key(s) in state_dict`` after it), naming the checkpoint, the first differing
    architecture field (stored vs configured) and what to do. ``configured`` is the model the run builds;
    ``vocab_known=False`` (before the tokenizer has fixed ``vocab_size``) skips the vocabulary."""
    if ckpt is None:
        return
    path = Path(path)
    stored = _stored_architecture(ckpt, path)
    if stored is None:
        diff = _shape_difference(ckpt, configured, skip_vocab=not vocab_known)
        if diff:
            raise ConfigError(
                f"ckpt_path: {path} holds weights of another architecture than this run's model "
                f"(preset {configured.name}): {diff}; give a checkpoint of this model, or set the model "
                "group to the checkpoint's shape"
            )
        return
    for field in ARCHITECTURE_FIELDS:
        if field == "vocab_size" and not vocab_known:
            continue
        old, new = _architecture_value(stored, field), _architecture_value(configured, field)
        if old != new:
            old, new = getattr(stored, field), getattr(configured, field)
            raise ConfigError(
                f"ckpt_path: {path} was trained with model.{field}={old!r} (model {stored.name}, from its "
                f"hyper_parameters), this run configures model.{field}={new!r} (model {configured.name}); "
                f"set model.{field}={old!r} (or the model group it was trained with) to continue it, or "
                "drop ckpt_path to start a new run"
            )


def _first_difference(old: Any, new: Any, where: str, not_yet: tuple[str, ...] = ()) -> str | None:
    """The first differing key (sorted, depth first) as a message (``not_yet`` keys may lack in ``new``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            if key not in old:
                return f"{where}.{key}: not in the stored config, now {new[key]!r}"
            if key not in new:
                if f"{where}.{key}" in not_yet:
                    continue
                return f"{where}.{key}: stored {old[key]!r}, now absent"
            found = _first_difference(old[key], new[key], f"{where}.{key}", not_yet)
            if found:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            found = _first_difference(a, b, f"{where}[{i}]", not_yet)
            if found:
                return found
        return None
    return None if old == new else f"{where}: stored {old!r}, now {new!r}"


def _checked_groups(values: dict[str, Any]) -> dict[str, Any]:
    """The resume-checked groups, with the None placeholders of the preset groups dropped (None = unset)."""
    out = {key: values.get(key) for key in RESUME_CHECKED}
    for key in PLACEHOLDER_GROUPS:
        if isinstance(out[key], dict):
            out[key] = {k: v for k, v in out[key].items() if v is not None}
    return out


def check_resume_config(cfg: DictConfig, stored_file: Path, not_yet: tuple[str, ...] = ()) -> None:
    """Refuse to resume when the model/objective/data config differs from the run dir's stored one (trainer,
    logging, hardware and callbacks may change), naming the first differing key. ``not_yet``: dotted keys
    not resolved yet (``model.vocab_size`` before the tokenizer exists), skipped while absent from ``cfg``."""
    if not stored_file.is_file():
        return
    stored = _checked_groups(OmegaConf.to_container(OmegaConf.load(stored_file), resolve=False))
    now = _checked_groups(OmegaConf.to_container(cfg, resolve=True))
    for key in RESUME_CHECKED:
        diff = _first_difference(stored[key], now[key], key, not_yet)
        if diff:
            raise ConfigError(
                f"{diff} -- differs from the config of the run being resumed ({stored_file}); a resumed run "
                f"must keep {', '.join(RESUME_CHECKED)}. Start a new run dir, or use task.pretrained=<export "
                "dir> to start a different setup from these weights"
            )


def wandb_resume_kwargs(cfg: DictConfig, output_dir: Path) -> dict[str, dict[str, Any]]:
    """``{logger entry: {id, resume}}`` for W&B loggers: the run id is stored in the run dir on first use, so
    a resumed run (same ``hydra.run.dir``) logs into the same W&B run."""
    extra: dict[str, dict[str, Any]] = {}
    for name, node in (cfg.get("logger") or {}).items():
        if node is None or not str(node.get("_target_", "")).endswith("WandbLogger"):
            continue
        id_file = output_dir / WANDB_ID_FILE
        if id_file.is_file():
            run_id = id_file.read_text().strip()
        else:
            run_id = str(node.get("id") or secrets.token_hex(6))  # W&B accepts any [a-z0-9] id
            if rank_zero_only.rank == 0:
                atomic_write(id_file, run_id + "\n")
        extra[str(name)] = {"id": run_id, "resume": "allow"}
    return extra
