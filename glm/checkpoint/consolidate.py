"""Consolidate a training checkpoint into one export dir (the layout ``glm.checkpoint.io.export_model`` writes).

``python -m glm.checkpoint consolidate SRC --out DIR [--tokenizer PATH] [--dtype bf16]`` where SRC is

- a Lightning ``.ckpt`` file (single process / DDP): its ``state_dict`` and ``hyper_parameters["model"]``;
- a sharded checkpoint directory written by the ``fsdp`` hardware option (Lightning
  ``ModelParallelStrategy``: ``.metadata`` + ``__<rank>_0.distcp`` shards + ``meta.pt``). Only the model
  tensors are read (``torch.distributed.checkpoint.load`` without a process group, one rank), never the
  optimizer shards, so memory peaks at one copy of the weights;
- a DeepSpeed checkpoint directory (``checkpoint/`` with ``*_model_states.pt`` / ``zero_pp_rank_*``):
  Lightning's ``convert_zero_checkpoint_to_fp32_state_dict`` gathers the ZeRO partitions (needs the
  ``[deepspeed]`` extra).

The GLM config comes from the checkpoint's saved ``hyper_parameters["model"]`` (every ``GLMTaskModule``
saves it); only the backbone's tensors are exported (task heads are listed and dropped). When SRC lies in
a run dir (``<run>/checkpoints/...``), that run's ``config.yaml`` is stored as ``run_config.yaml`` and
its ``export/tokenizer`` is copied unless ``--tokenizer`` names another one.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from glm.checkpoint.io import (
    backbone_prefix,
    export_model,
    is_backbone_key,
    safe_load,
    verify_manifest,
)
from glm.errors import CheckpointError
from glm.model import GLMConfig
from glm.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

FSDP_META_FILE = "meta.pt"  # Lightning ModelParallelStrategy: everything but model/optimizer tensors
DCP_METADATA_FILE = ".metadata"


def checkpoint_kind(path: str | Path) -> str:
    """``lightning`` (file), ``fsdp`` (torch.distributed.checkpoint dir) or ``deepspeed`` (dir)."""
    path = Path(path)
    if path.is_file():
        return "lightning"
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint file or directory")
    if (path / DCP_METADATA_FILE).is_file():
        return "fsdp"
    if (path / "checkpoint").is_dir() or any(path.glob("*model_states.pt")) or (path / "latest").is_file():
        return "deepspeed"
    raise CheckpointError(
        f"{path}: directory is neither a sharded FSDP checkpoint ({DCP_METADATA_FILE} + *.distcp) nor a "
        "DeepSpeed checkpoint (checkpoint/*_model_states.pt)"
    )


def _model_config(hparams: Any, source: Path) -> GLMConfig:
    if not isinstance(hparams, Mapping) or not isinstance(hparams.get("model"), Mapping):
        raise CheckpointError(
            f"{source}: no hyper_parameters['model'] (the GLM config) in the checkpoint; was it written by "
            "a glm.tasks module?"
        )
    try:
        return GLMConfig.from_dict(dict(hparams["model"]))
    except (TypeError, ValueError) as err:
        raise CheckpointError(
            f"{source}: hyper_parameters['model'] is not a valid GLM config: {err}"
        ) from None


def _backbone(state: Mapping[str, Tensor], source: Path) -> dict[str, Tensor]:
    """The backbone's tensors without their prefix (``model.`` in our task modules); others are reported."""
    prefix = backbone_prefix(state.keys(), str(source))
    out, dropped = {}, []
    for key, value in state.items():
        inner = key[len(prefix) :] if key.startswith(prefix) else None
        if inner is not None and is_backbone_key(inner):
            out[inner] = value
        else:
            dropped.append(key)
    if dropped:
        log.info("%s: %d non-backbone tensors not exported: %s", source, len(dropped), dropped[:8])
    return out


def read_lightning_file(path: Path) -> tuple[GLMConfig, dict[str, Tensor]]:
    ckpt = safe_load(path)
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("state_dict"), Mapping):
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no 'state_dict' entry)")
    return _model_config(ckpt.get("hyper_parameters"), path), _backbone(ckpt["state_dict"], path)


def read_fsdp_dir(path: Path) -> tuple[GLMConfig, dict[str, Tensor]]:
    """Model tensors of a sharded ``ModelParallelStrategy`` checkpoint, read on one process."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    if not (path / FSDP_META_FILE).is_file():
        raise CheckpointError(f"{path}: sharded checkpoint without {FSDP_META_FILE} (hyperparameters)")
    verify_manifest(path)
    meta = safe_load(path / FSDP_META_FILE)
    config = _model_config(meta.get("hyper_parameters") if isinstance(meta, Mapping) else None, path)
    try:
        metadata = dcp.FileSystemReader(str(path)).read_metadata()
    except Exception as err:  # noqa: BLE001  (any unreadable metadata: say which file)
        raise CheckpointError(f"{path / DCP_METADATA_FILE}: unreadable checkpoint metadata: {err}") from None
    wanted: dict[str, Tensor] = {}
    for fqn, item in metadata.state_dict_metadata.items():
        if fqn.startswith("state_dict.") and isinstance(item, TensorStorageMetadata):
            wanted[fqn[len("state_dict.") :]] = torch.empty(item.size, dtype=item.properties.dtype)
    if not wanted:
        raise CheckpointError(f"{path}: the sharded checkpoint holds no model tensors ('state_dict.*')")
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

    try:
        with warnings.catch_warnings():  # "torch.distributed ... uninitialized": one process is the intent
            warnings.simplefilter("ignore", UserWarning)
            dcp.load({"state_dict": wanted}, checkpoint_id=str(path), no_dist=True)
    except (Exception, CheckpointException) as err:  # noqa: BLE001  (missing/truncated shards surface here)
        first = _first_line(err)
        raise CheckpointError(
            f"{path}: cannot read the model shards ({type(err).__name__}: {first})"
        ) from None
    return config, _backbone(wanted, path)


def _first_line(err: BaseException) -> str:
    """The failing rank's own error for DCP's aggregated exception (its message embeds whole tracebacks)."""
    failures = getattr(err, "failures", None)
    if isinstance(failures, dict) and failures:
        inner = next(iter(failures.values()))
        if isinstance(inner, tuple) and inner:  # (exception, traceback frames)
            inner = inner[0]
        inner = getattr(inner, "exception", inner)
        return f"{type(inner).__name__}: {inner}"
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def read_deepspeed_dir(path: Path) -> tuple[GLMConfig, dict[str, Tensor]]:
    try:
        from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict
    except ImportError as err:  # pragma: no cover - depends on the optional extra
        raise CheckpointError(
            f"{path}: DeepSpeed checkpoint needs deepspeed ({err}); pip install -e '.[deepspeed]'"
        ) from None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "consolidated.ckpt"
        try:
            convert_zero_checkpoint_to_fp32_state_dict(str(path), str(out))
        except ImportError as err:
            raise CheckpointError(
                f"{path}: DeepSpeed checkpoint needs deepspeed ({err}); pip install -e '.[deepspeed]'"
            ) from None
        ckpt = torch.load(out, map_location="cpu", weights_only=False)  # written just now by us
    state = ckpt.get("state_dict", ckpt)
    return _model_config(ckpt.get("hyper_parameters"), path), _backbone(state, path)


def consolidate(
    src: str | Path, out_dir: str | Path, tokenizer: Any = None, dtype: torch.dtype | None = None
) -> Path:
    """Read ``src`` (see module docstring) and write an export dir at ``out_dir``; returns ``out_dir``."""
    src = Path(src)
    kind = checkpoint_kind(src)
    reader = {"lightning": read_lightning_file, "fsdp": read_fsdp_dir, "deepspeed": read_deepspeed_dir}[kind]
    config, state = reader(src)
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    run_dir = src.parent.parent if src.parent.name == "checkpoints" else None
    run_config = None
    if run_dir is not None and (run_dir / "config.yaml").is_file():
        from omegaconf import OmegaConf

        run_config = OmegaConf.load(run_dir / "config.yaml")
    if tokenizer is None and run_dir is not None and (run_dir / "export" / "tokenizer").exists():
        tokenizer = run_dir / "export" / "tokenizer"
    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer)
    export_model(state, config, out_dir, tokenizer=tokenizer, run_config=run_config)
    log.info("consolidated %s checkpoint %s -> %s (%d tensors)", kind, src, out_dir, len(state))
    return Path(out_dir)
