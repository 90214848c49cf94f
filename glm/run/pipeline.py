"""``run(cfg)``: validate (the checkpoint too) -> seed -> datamodule (tokenizer; every split the stages read,
enough training data) -> task module -> callbacks/loggers -> trainer -> stages -> ``metrics.json``. It and
glm.run.instantiate are the only callers of ``hydra.utils.instantiate``.

Validation resolves what the config leaves open (the tokenizer, the objective, the gradient accumulation);
the vocabulary follows the datamodule's tokenizer. These are passed to instantiation explicitly, and
``<run dir>/config.yaml`` is the config as built with them. Resuming (``ckpt_path=last``): see glm.run.resume;
the loop, optimizer, scheduler, RNG and train-loader position come from the checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from glm.checkpoint.io import AtomicCheckpointIO, export_model
from glm.run.instantiate import instantiate_group
from glm.run.resume import (
    check_checkpoint,
    check_checkpoint_architecture,
    check_resume_config,
    resolve_ckpt_path,
    wandb_resume_kwargs,
)
from glm.run.sweep import is_multirun
from glm.run.validation import check_data_at_start_up, validate, vocab_follows_tokenizer
from glm.run.wrappers import task_wrapper
from glm.utils.allocator import set_host_allocator
from glm.utils.fs import atomic_write

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"


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
def _write_outputs(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text)


def _export(module: L.LightningModule, tokenizer: Any, run_cfg: DictConfig, out_dir: Path) -> None:
    """Write the final backbone as an export dir (weights, model_config.yaml, tokenizer/, run config), so
    ``task.pretrained=<run dir>/export`` starts another experiment from it. Gathers FSDP shards first."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(module.model, options=options)
    if module.trainer.is_global_zero:
        export_model(state, module.glm_config, out_dir, tokenizer=tokenizer, run_config=run_cfg)
        log.info("exported the backbone to %s", out_dir)


def _best_checkpoint(trainer: L.Trainer) -> str | None:
    best = [
        c.best_model_path
        for c in trainer.checkpoint_callbacks
        if getattr(c, "monitor", None) and getattr(c, "best_model_path", "")
    ]
    return best[0] if best else None


def _callbacks_and_loggers(cfg: DictConfig, output_dir: Path) -> tuple[list[Any], list[Any]]:
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"), extra=wandb_resume_kwargs(cfg, output_dir))
    if not loggers:  # LearningRateMonitor refuses to run without a logger; the task logs train/lr anyway
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return callbacks, loggers


def route_lightning_logs() -> None:
    """Lightning's loggers print to stderr through handlers of their own; send their records to Hydra's
    logging instead (the console on stdout and the run's ``run.log``), so stderr holds warnings and the
    one-line error of a failed run, and the log file has Lightning's messages too."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True


def _plugins(cfg: DictConfig) -> list[Any]:
    """``trainer.plugins`` plus :class:`AtomicCheckpointIO` (atomic, digested checkpoints on every local
    filesystem) unless the config brings its own checkpoint I/O."""
    given = list(hydra.utils.instantiate(cfg.trainer.get("plugins") or [], _convert_="all"))
    if not any(isinstance(p, CheckpointIO) for p in given):
        given.append(AtomicCheckpointIO())
    return given


@task_wrapper
def run(cfg: DictConfig) -> dict[str, float]:
    """Run the stages of ``cfg.stages`` for one Hydra job; returns the final metrics (also in metrics.json)."""
    route_lightning_logs()
    checked = validate(cfg, is_multirun=is_multirun())
    set_host_allocator(cfg.get("allocator", "system"))  # before the data and the model allocate anything
    output_dir = Path(cfg.paths.output_dir)
    # the checkpoint is opened and its architecture checked before anything is built (vocabulary: below)
    given_ckpt = resolve_ckpt_path(cfg.ckpt_path, output_dir, checked.built)
    resume_from = given_ckpt if "fit" in cfg.stages else None
    if resume_from is not None:  # before anything is built; the vocabulary once the tokenizer is known
        check_resume_config(checked.run_config(cfg), output_dir / CONFIG_FILE, ("model.vocab_size",))
    L.seed_everything(int(cfg.seed), workers=True)

    log.info("instantiating data <%s>", cfg.data._target_)
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all", **checked.data_inputs())
    tokenizer = getattr(datamodule, "tokenizer", None)
    model_values = vocab_follows_tokenizer(checked.model_values, tokenizer)
    run_cfg = checked.run_config(cfg, model_values)
    if resume_from is not None:
        check_resume_config(run_cfg, output_dir / CONFIG_FILE)
        log.info("resuming from %s", resume_from)
    if given_ckpt is not None:  # the vocabulary, now that the tokenizer has fixed it
        ckpt = check_checkpoint(Path(given_ckpt))
        check_checkpoint_architecture(ckpt, given_ckpt, checked.built_model(model_values))
    _write_outputs(output_dir / CONFIG_FILE, OmegaConf.to_yaml(run_cfg))
    # every split the stages read, read now (a bad test file fails before training), and enough training data
    check_data_at_start_up(
        datamodule, list(cfg.stages), checked.world_size, cfg.trainer.get("limit_train_batches")
    )

    log.info("instantiating task <%s>", cfg.task._target_)
    module = hydra.utils.instantiate(run_cfg.task, _convert_="all", model=run_cfg.model)
    if resume_from is not None and getattr(module, "pretrained", None):
        # ckpt_path=last/auto with task.pretrained: the checkpoint holds the whole state, pretrained only
        # applies to the first start (explicit ckpt paths with task.pretrained are refused in validate)
        log.info("resuming: task.pretrained=%s is not loaded (the checkpoint has it)", module.pretrained)
        module.pretrained = None
    callbacks, loggers = _callbacks_and_loggers(cfg, output_dir)
    trainer_kwargs: dict[str, Any] = {
        "callbacks": callbacks,
        "logger": loggers or False,
        "plugins": _plugins(cfg),
    }
    if checked.accumulate_grad_batches is not None:
        trainer_kwargs["accumulate_grad_batches"] = checked.accumulate_grad_batches
    log.info("instantiating trainer (accumulate_grad_batches=%s)", checked.accumulate_grad_batches)
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, _convert_="all", **trainer_kwargs)
    for lg in loggers:  # the config as built, once per run, as plain values
        lg.log_hyperparams(OmegaConf.to_container(run_cfg))

    metrics: dict[str, float] = {}
    fitted = False
    for stage in cfg.stages:
        if stage == "fit":
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
            fitted = True
            if cfg.get("export_dir") and getattr(module, "model", None) is not None:
                _export(module, tokenizer, run_cfg, Path(cfg.export_dir))
        else:  # validate / test / predict: the best checkpoint of this fit, else ckpt_path, else the weights
            ckpt = _best_checkpoint(trainer) if fitted else given_ckpt
            getattr(trainer, stage)(module, datamodule=datamodule, ckpt_path=ckpt)
        metrics.update(_plain_metrics(trainer.callback_metrics))

    metrics["seed"] = int(cfg.seed)
    _write_outputs(output_dir / METRICS_FILE, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    log.info("metrics: %s", metrics)
    return metrics
