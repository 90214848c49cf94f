"""GLMTaskModule: the LightningModule every GLM task builds on.

It holds plain-container hyperparameters only (so checkpoints load with ``torch.load(weights_only=True)``),
builds the backbone in :meth:`configure_model` (idempotent; ``glm.distributed.prepare_model`` readies it for
whichever strategy runs it), optionally loads pretrained weights, stops at a non-finite loss, keeps every
rank's RNG state in checkpoints, and optimises with ``glm.tasks.optim`` (AdamW, decay / no-decay groups,
the original GLM learning-rate schedule).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from glm.checkpoint import load_pretrained_into
from glm.checkpoint.io import CONFIG_FILE, is_export_dir, read_model_config
from glm.compat import attached_trainer, estimated_stepping_batches
from glm.distributed import prepare_model
from glm.errors import NonFiniteLossError
from glm.model import GLM, GLMConfig
from glm.tasks.evaluation import all_gather_objects
from glm.tasks.optim import (
    adamw_with_schedule,
    clip_fused_gradients,
    normalize_optimizer,
    normalize_scheduler,
)
from glm.utils.rng import rng_states, set_rng_states

log = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    """OmegaConf containers -> dict/list (hparams must be plain so weights_only loading works)."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# GLMConfig fields that are training-time choices, not architecture: kept from the run when the
# architecture comes from an export dir (see GLMTaskModule._architecture_from_export)
RUN_FIELDS = frozenset(
    {
        "hidden_dropout",
        "attention_dropout",
        "attention",
        "softmax_in_fp32",
        "initializer_range",
        "embedding_grad_scale",
    }
)


def architecture_from_export(
    config: GLMConfig, pretrained: str | None, log_changes: bool = True, positions: int | None = None
) -> dict[str, Any] | None:
    """The model values a run with ``task.pretrained=<export dir>`` builds, or None when ``pretrained`` is not
    an export dir (the model group's config stands).

    Decision: the weights only fit the shape they were trained with, so every shape field (layers, widths,
    heads, V, positions, norm/MLP kind) comes from the export's ``model_config.yaml``; the run's
    training-time fields (`RUN_FIELDS`: dropouts, attention kernel, softmax precision, init range, embedding
    gradient scale) stay as the run's model group sets them. ``positions``: a ``model.max_sequence_length``
    the run asks for explicitly; longer than the export's, it grows the position tables (the original's
    ``load_pretrained`` extends them). Differences are logged (``log_changes``).
    Start-up validation calls this too, so its checks (position lengths, checkpoints) see the model the run
    will build.
    """
    if not pretrained or not is_export_dir(pretrained):
        return None
    exported = read_model_config(Path(pretrained) / CONFIG_FILE).to_dict()
    current = config.to_dict()
    merged = {k: (current[k] if k in RUN_FIELDS else v) for k, v in exported.items()}
    if positions is not None and positions > exported["max_sequence_length"]:
        merged["max_sequence_length"] = int(
            positions
        )  # loading extends the tables (docs/original-glm.md §1.1)
    changed = {k: (current.get(k), v) for k, v in merged.items() if k != "name" and current.get(k) != v}
    if changed and log_changes:
        log.info(
            "architecture from the export %s (run's model group -> export): %s",
            pretrained,
            ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in changed.items()),
        )
    return merged


class GLMTaskModule(L.LightningModule):
    """Base of the GLM task modules (pretraining, cloze, seq2seq, LM evaluation).

    ``model`` is the model config group (``preset`` + GLMConfig overrides), ``optimizer`` and ``scheduler``
    are dicts (keys in ``glm.tasks.optim.OPTIMIZER_KEYS`` / ``SCHEDULER_KEYS``), ``pretrained`` an export
    dir or state-dict file loaded into the backbone after it is built. ``compile`` compiles each block in place and
    ``activation_checkpointing`` recomputes each block in the backward pass; neither changes state-dict keys.
    Subclasses add their own plain-valued keyword arguments; all are saved as hyperparameters.
    """

    def __init__(
        self,
        model: dict,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
        pretrained: str | None = None,
        compile: bool = False,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        for key, value in list(self.hparams.items()):
            self.hparams[key] = _plain(value)
        self.glm_config = GLMConfig.from_dict(_plain(model))
        self.optimizer_config = normalize_optimizer(_plain(optimizer))
        self.scheduler_config = normalize_scheduler(_plain(scheduler))
        self.pretrained = pretrained
        self._architecture_from_export()
        self.compile_blocks = bool(compile)
        self.activation_checkpointing = bool(activation_checkpointing)
        self.model: GLM | None = None
        self.skipped_steps = 0  # optimizer steps the fp16 grad scaler skipped (inf/nan gradients)

    # ---- model ----
    def _architecture_from_export(self) -> None:
        """When `pretrained` is an export dir, its `model_config.yaml` fixes the architecture
        (:func:`architecture_from_export`); the effective config replaces `hparams["model"]` so a
        checkpoint of this run rebuilds the same model."""
        requested = (self.hparams["model"] or {}).get("max_sequence_length")
        merged = architecture_from_export(self.glm_config, self.pretrained, positions=requested)
        if merged is None:
            return
        self.glm_config = GLMConfig.from_dict(merged)
        self.hparams["model"] = merged

    def configure_model(self) -> None:
        """Build the backbone once (Lightning may call this for every stage in one process)."""
        if self.model is not None:
            return
        # trainer.validate/test call this under inference mode: build ordinary tensors so a later fit works
        with torch.inference_mode(False):
            self._build_model()

    def _build_model(self) -> None:
        model = GLM(self.glm_config)
        pretrained = self.pretrained
        prepare_model(
            model,
            self,
            load_weights=(lambda m: load_pretrained_into(m, pretrained)) if pretrained else None,
            activation_checkpointing=self.activation_checkpointing,
            compile_blocks=self.compile_blocks,
        )
        self.model = model

    # ---- run safety: non-finite losses, skipped fp16 steps, RNG state in checkpoints ----
    def _grad_scaler(self) -> Any:
        trainer = attached_trainer(self)
        plugin = getattr(trainer, "precision_plugin", None) if trainer is not None else None
        return getattr(plugin, "scaler", None)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._batch_idx = batch_idx
        scaler = self._grad_scaler()
        self._scale_before = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else None

    def on_before_backward(self, loss: torch.Tensor) -> None:
        """Stop at the first non-finite loss, naming the step and batch (all ranks stop together).

        Under a gradient scaler (fp16) a non-finite value is the scaler's business: it skips the step and
        lowers the scale; those steps are counted in ``train/skipped_steps`` instead.
        """
        if self._grad_scaler() is not None:
            return
        bad = not bool(torch.isfinite(loss.detach()).all())
        trainer = attached_trainer(self)
        if trainer is not None and trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            step = trainer.global_step if trainer is not None else -1
            raise NonFiniteLossError(
                f"non-finite training loss ({float(loss.detach().float())}) at global step {step}, batch index "
                f"{getattr(self, '_batch_idx', -1)} of epoch {self.current_epoch}; lower task.optimizer.lr, "
                "check the data, or use hardware=bf16 / gradient clipping"
            )

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        scaler = self._grad_scaler()
        if getattr(self, "_scale_before", None) is None or scaler is None:
            return
        if float(scaler.get_scale()) < self._scale_before:  # the scaler found inf/nan grads and skipped
            self.skipped_steps += 1
        self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the RNG states of every rank and the skip count. The ranks are seeded alike but stop drawing
        alike once their batches differ in shape (dropout on batches padded to their longest example), so
        each rank gets its own state back on resume. Lightning calls this on every rank (the gather is a
        collective); ``glm_rng_states`` (this rank's, i.e. rank 0's in the file) stays for older readers."""
        states = rng_states()
        checkpoint["glm_rng_states"] = states
        by_rank = all_gather_objects(self, states)
        if len(by_rank) > 1:
            checkpoint["glm_rng_states_by_rank"] = by_rank
        checkpoint["glm_skipped_steps"] = int(self.skipped_steps)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        by_rank = checkpoint.get("glm_rng_states_by_rank")
        trainer = attached_trainer(self)
        rank, world = (int(trainer.global_rank), int(trainer.world_size)) if trainer is not None else (0, 1)
        if by_rank is not None and len(by_rank) == world:
            set_rng_states(by_rank[rank])
        elif "glm_rng_states" in checkpoint:  # one process, or a changed world size: rank 0's state
            set_rng_states(checkpoint["glm_rng_states"])
        self.skipped_steps = int(checkpoint.get("glm_skipped_steps", 0))

    # ---- optimisation ----
    def total_steps(self) -> int:
        """Optimizer steps of the whole run: ``scheduler.total_steps`` or the trainer's estimate."""
        if self.scheduler_config["total_steps"]:
            return int(self.scheduler_config["total_steps"])
        return estimated_stepping_batches(self.trainer)

    def configure_optimizers(self) -> dict[str, Any]:
        trainer = attached_trainer(self)
        return adamw_with_schedule(
            self,
            self.optimizer_config,
            self.scheduler_config,
            self.total_steps,
            precision=str(trainer.precision) if trainer is not None else "32-true",
            gradient_clip_val=trainer.gradient_clip_val if trainer is not None else None,
        )

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        precision = str(self.trainer.precision)
        if not clip_fused_gradients(optimizer, precision, gradient_clip_val, gradient_clip_algorithm):
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
