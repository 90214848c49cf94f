"""``run(cfg)``: validate -> seed -> datamodule (tokenizer) -> task module -> callbacks/loggers -> trainer ->
stages -> ``metrics.json``. The only module that calls ``hydra.utils.instantiate``.

Resume after a crash: repeat the command with ``hydra.run.dir=<old run dir> ckpt_path=last`` (or ``auto``).
Before anything is built, the checkpoint is opened (a corrupt one is named), and the resolved model /
objective / data config is compared with the run dir's ``config.yaml`` (a difference is refused, naming
the key). The W&B run id is kept in ``<run dir>/wandb_run_id`` and reused. The loop, optimizer, scheduler,
RNG and train-loader position come from the checkpoint, so the continued run is the uninterrupted one.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from glm.model import GLMConfig
from glm.utils.allocator import set_host_allocator
from glm.utils.fs import atomic_write
from glm.run.instantiate import instantiate_group
from glm.run.validation import check_tokenizer, validate
from glm.errors import ConfigError
from glm.run.wrappers import task_wrapper

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
WANDB_ID_FILE = "wandb_run_id"


def _is_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001  (no Hydra context at all: a plain run)
        return False


def _accepts(target: str, name: str) -> bool:
    module, _, attr = target.rpartition(".")
    cls = getattr(__import__(module, fromlist=[attr]), attr)
    return name in inspect.signature(cls).parameters


def _resolve_ckpt_path(ckpt_path: Any, output_dir: Path) -> str | None:
    """``last``/``auto`` -> this run dir's ``checkpoints/last.ckpt`` when it exists (resume = same command +
    ``hydra.run.dir=<old run dir> ckpt_path=last``), else None (a fresh start); any other value must be an
    existing checkpoint. The checkpoint is opened once here, so a truncated or corrupt file fails before any
    work with a ``ConfigError`` naming it (rather than deep inside Lightning)."""
    if ckpt_path in (None, ""):
        return None
    if ckpt_path in ("last", "auto"):
        path = output_dir / "checkpoints" / "last.ckpt"
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
    from glm.checkpoint.consolidate import DCP_METADATA_FILE, FSDP_META_FILE, checkpoint_kind
    from glm.checkpoint.io import safe_load
    from glm.errors import CheckpointError

    try:
        kind = checkpoint_kind(path)
        if kind == "lightning":
            ckpt = safe_load(path)  # weights_only + mmap: cheap, and refuses anything but plain containers
            if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "loops" not in ckpt:
                raise CheckpointError(f"{path}: not a Lightning training checkpoint (no state_dict/loops)")
        elif kind == "fsdp":
            import torch.distributed.checkpoint as dcp

            safe_load(path / FSDP_META_FILE)
            try:
                dcp.FileSystemReader(str(path)).read_metadata()
            except Exception as err:  # noqa: BLE001
                raise CheckpointError(f"{path / DCP_METADATA_FILE}: unreadable ({err})") from None
    except CheckpointError as err:
        raise ConfigError(f"ckpt_path: {err}") from None


RESUME_CHECKED = ("model", "objective", "data")  # what must not change when a run continues


def _first_difference(old: Any, new: Any, where: str) -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            if key not in old:
                return f"{where}.{key}: not in the stored config, now {new[key]!r}"
            if key not in new:
                return f"{where}.{key}: stored {old[key]!r}, now absent"
            found = _first_difference(old[key], new[key], f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            found = _first_difference(a, b, f"{where}[{i}]")
            if found:
                return found
        return None
    return None if old == new else f"{where}: stored {old!r}, now {new!r}"


def check_resume_config(cfg: DictConfig, stored_file: Path) -> None:
    """Refuse to resume when the resolved model/objective/data config differs from the run dir's stored one
    (trainer, logging, hardware and callbacks may change), naming the first differing key."""
    if not stored_file.is_file():
        return
    stored = OmegaConf.to_container(OmegaConf.load(stored_file), resolve=False)
    now = OmegaConf.to_container(cfg, resolve=True)
    for key in RESUME_CHECKED:
        diff = _first_difference(stored.get(key), now.get(key), key)
        if diff:
            raise ConfigError(
                f"{diff} -- differs from the config of the run being resumed ({stored_file}); a resumed run "
                f"must keep {', '.join(RESUME_CHECKED)}. Start a new run dir, or use task.pretrained=<export "
                "dir> to start a different setup from these weights"
            )


def _wandb_resume_kwargs(cfg: DictConfig, output_dir: Path) -> dict[str, dict[str, Any]]:
    """``{logger entry: {id, resume}}`` for W&B loggers: the run id is stored in the run dir on first use, so a
    resumed run (same ``hydra.run.dir``) logs into the same W&B run."""
    extra: dict[str, dict[str, Any]] = {}
    for name, node in (cfg.get("logger") or {}).items():
        if node is None or not str(node.get("_target_", "")).endswith("WandbLogger"):
            continue
        id_file = output_dir / WANDB_ID_FILE
        if id_file.is_file():
            run_id = id_file.read_text().strip()
        else:
            import secrets

            run_id = str(node.get("id") or secrets.token_hex(6))  # W&B accepts any [a-z0-9] id
            if rank_zero_only.rank == 0:
                atomic_write(id_file, run_id + "\n")
        extra[str(name)] = {"id": run_id, "resume": "allow"}
    return extra


def _plain_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        out[key] = number if math.isfinite(number) else float("nan")
    return out


@rank_zero_only
def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=True) + "\n")


@rank_zero_only
def _save_config(cfg: DictConfig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, path, resolve=True)


def _tokenizer_follows_export(cfg: DictConfig) -> None:
    """With ``task.pretrained=<export dir>`` the data is read with the export's ``tokenizer/``, the one its
    weights were trained with: another tokenizer would feed the model other ids, silently (e.g. the
    ``make demo`` export's sentencepiece vs the cloze configs' BERT default)."""
    pretrained = cfg.task.get("pretrained")
    if not pretrained or "tokenizer" not in cfg.data:
        return
    from glm.checkpoint.io import TOKENIZER_DIR

    exported = Path(str(pretrained)).expanduser() / TOKENIZER_DIR
    if not exported.is_dir():  # a bare state-dict file, or an export written without its tokenizer
        return
    configured = cfg.data.tokenizer
    if isinstance(configured, str) and Path(configured).expanduser().resolve() == exported.resolve():
        return
    log.info("data.tokenizer: %s (task.pretrained's tokenizer; the config named %s)", exported,
             OmegaConf.to_container(configured) if OmegaConf.is_config(configured) else configured)
    with open_dict(cfg):
        cfg.data.tokenizer = str(exported)


def _vocab_follows_tokenizer(cfg: DictConfig, tokenizer: Any) -> None:
    """The model's vocabulary follows the tokenizer's padded size unless ``model.vocab_size`` is set.

    A preset's V is what its released tokenizer needs (glm-large + BERT: 30592), so with the matching
    tokenizer nothing changes; a small preset with another tokenizer (glm-tiny + BERT) grows its table.
    An explicit ``model.vocab_size`` is never changed (``check_tokenizer`` refuses one that is too small).
    """
    if tokenizer is None or "vocab_size" in cfg.model:
        return
    preset_v = GLMConfig.from_dict(OmegaConf.to_container(cfg.model, resolve=True)).vocab_size
    if int(tokenizer.vocab_size) != preset_v:
        log.info(
            "model.vocab_size: %d (the tokenizer's padded size; preset has %d)",
            tokenizer.vocab_size,
            preset_v,
        )
        with open_dict(cfg):
            cfg.model.vocab_size = int(tokenizer.vocab_size)


def _export(module: L.LightningModule, tokenizer: Any, cfg: DictConfig, out_dir: Path) -> None:
    """Write the final backbone as an export dir (weights, model_config.yaml, tokenizer/, run config), so
    ``task.pretrained=<run dir>/export`` starts another experiment from it. Gathers FSDP shards first."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from glm.checkpoint.io import export_model

    state = get_model_state_dict(
        module.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if module.trainer.is_global_zero:
        export_model(state, module.glm_config, out_dir, tokenizer=tokenizer, run_config=cfg)
        log.info("exported the backbone to %s", out_dir)


@task_wrapper
def run(cfg: DictConfig) -> dict[str, float]:
    """Run the stages of ``cfg.stages`` for one Hydra job; returns the final metrics (also in metrics.json)."""
    checked = validate(cfg, is_multirun=_is_multirun())
    _tokenizer_follows_export(cfg)  # before the resume check compares data.* with the stored config
    set_host_allocator(cfg.get("allocator", "system"))  # before the data and the model allocate anything
    output_dir = Path(cfg.paths.output_dir)
    resume_from = _resolve_ckpt_path(cfg.ckpt_path, output_dir) if "fit" in cfg.stages else None
    if resume_from is not None:
        check_resume_config(cfg, output_dir / CONFIG_FILE)
        log.info("resuming from %s", resume_from)
    _save_config(cfg, output_dir / CONFIG_FILE)
    L.seed_everything(int(cfg.seed), workers=True)

    extra: dict[str, Any] = {}
    if checked.objective is not None and _accepts(cfg.data._target_, "objective"):
        extra["objective"] = checked.objective
    log.info("instantiating data <%s>", cfg.data._target_)
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all", **extra)
    tokenizer = getattr(datamodule, "tokenizer", None)
    _vocab_follows_tokenizer(cfg, tokenizer)
    check_tokenizer(tokenizer, GLMConfig.from_dict(OmegaConf.to_container(cfg.model, resolve=True)))

    log.info("instantiating task <%s>", cfg.task._target_)
    module = hydra.utils.instantiate(cfg.task, _convert_="all")
    if resume_from is not None and getattr(module, "pretrained", None):
        # ckpt_path=last/auto with task.pretrained: the checkpoint holds the whole state, pretrained only
        # applies to the first start (explicit ckpt paths with task.pretrained are refused in validate)
        log.info(
            "resuming: task.pretrained=%s is not loaded (the checkpoint has the weights)", module.pretrained
        )
        module.pretrained = None
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"), extra=_wandb_resume_kwargs(cfg, output_dir))
    if (
        not loggers
    ):  # LearningRateMonitor refuses to run without a logger; train/lr is logged by the task anyway
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer_kwargs: dict[str, Any] = {"callbacks": callbacks, "logger": loggers or False}
    if checked.accumulate_grad_batches is not None:
        trainer_kwargs["accumulate_grad_batches"] = checked.accumulate_grad_batches
    log.info("instantiating trainer (accumulate_grad_batches=%s)", checked.accumulate_grad_batches)
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, _convert_="all", **trainer_kwargs)

    for lg in loggers:  # the resolved config, once per run, as plain values
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    metrics: dict[str, float] = {}
    fitted = False
    for stage in cfg.stages:
        if stage == "fit":
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
            fitted = True
            if cfg.get("export_dir") and getattr(module, "model", None) is not None:
                _export(module, tokenizer, cfg, Path(cfg.export_dir))
        elif stage in ("validate", "test", "predict"):
            ckpt = None
            if fitted:
                best = [
                    c.best_model_path
                    for c in trainer.checkpoint_callbacks
                    if getattr(c, "monitor", None) and getattr(c, "best_model_path", "")
                ]
                ckpt = best[0] if best else None
            elif cfg.ckpt_path:
                ckpt = _resolve_ckpt_path(cfg.ckpt_path, output_dir)
            getattr(trainer, stage)(module, datamodule=datamodule, ckpt_path=ckpt)
        metrics.update(_plain_metrics(trainer.callback_metrics))

    metrics["seed"] = int(cfg.seed)
    _write_json(output_dir / METRICS_FILE, metrics)
    log.info("metrics: %s", metrics)
    return metrics


def optimized_metric(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """The value a sweeper optimises (``cfg.optimized_metric``), or None when it was not logged."""
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics:
        log.warning("optimized_metric %r was not logged; logged: %s", name, sorted(metrics))
        return None
    return metrics[name]
