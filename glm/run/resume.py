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
from glm.checkpoint.io import safe_load, verify_manifest
from glm.errors import CheckpointError, ConfigError
from glm.utils.fs import atomic_write, restore_replaced_dir

log = logging.getLogger(__name__)
WANDB_ID_FILE = "wandb_run_id"
RESUME_CHECKED = ("model", "objective", "data")  # what must not change when a run continues
PLACEHOLDER_GROUPS = ("model", "objective")  # groups whose None values mean "the preset's" (glm.run.schemas)


def resolve_ckpt_path(ckpt_path: Any, output_dir: Path) -> str | None:
    """``last``/``auto`` -> this run dir's ``checkpoints/last.ckpt`` when it exists (resume = same command +
    ``hydra.run.dir=<old run dir> ckpt_path=last``), else None (a fresh start); any other value must be an
    existing checkpoint. The checkpoint is opened once here, so a truncated or corrupt file fails before any
    work with a ``ConfigError`` naming it (rather than deep inside Lightning)."""
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
    check_checkpoint(path)
    return str(path)


def check_checkpoint(path: Path) -> None:
    """A loadable training checkpoint (Lightning file or sharded FSDP dir), else ``ConfigError`` naming it."""
    try:
        kind = checkpoint_kind(path)
        if kind == "lightning":
            ckpt = safe_load(path, expect_digest=True)  # weights_only + mmap; the sha256 sidecar checked
            if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "loops" not in ckpt:
                raise CheckpointError(f"{path}: not a Lightning training checkpoint (no state_dict/loops)")
        else:  # a directory (sharded FSDP, DeepSpeed): every file against its SHA256SUMS
            verify_manifest(path)
        if kind == "fsdp":
            safe_load(path / FSDP_META_FILE)
            try:
                dcp.FileSystemReader(str(path)).read_metadata()
            except Exception as err:  # noqa: BLE001
                raise CheckpointError(f"{path / DCP_METADATA_FILE}: unreadable ({err})") from None
    except CheckpointError as err:
        raise ConfigError(f"ckpt_path: {err}") from None


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
