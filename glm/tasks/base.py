"""GLMTaskModule: the LightningModule every GLM task builds on.

It holds plain-container hyperparameters only (so checkpoints load with ``torch.load(weights_only=True)``),
builds the backbone in :meth:`configure_model` (idempotent; FSDP2 shards it there when the strategy gives a
device mesh), optionally loads pretrained weights, and sets up AdamW with decay / no-decay groups and the
original GLM learning-rate schedule (spec §5.8, ``learning_rates.py::AnnealingLR``).

Decision (spec §5.8 leaves it unconfirmed whether the DeepSpeed "Adam" of the original configs decays
weights inside the Adam update or decoupled from it): decoupled decay, ``torch.optim.AdamW``, the
behaviour of apex ``FusedAdam`` in the original's non-DeepSpeed path.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from glm.model import GLM, GLMConfig
from glm.tasks.evaluation import all_gather_objects
from glm.errors import NonFiniteLossError

log = logging.getLogger(__name__)

# Allowed keys of the optimizer / scheduler dicts, with their types (checked at start-up, before any work).
OPTIMIZER_KEYS: dict[str, tuple[type, ...]] = {
    "lr": (float, int),
    "betas": (list, tuple),
    "eps": (float, int),
    "weight_decay": (float, int),
    "fused": (bool, type(None)),
}
SCHEDULER_KEYS: dict[str, tuple[type, ...]] = {
    "warmup_ratio": (float, int),
    "decay_style": (str,),
    "min_lr_ratio": (float, int),
    "decay_ratio": (float, int),
    "total_steps": (int, type(None)),
}
# Names of the original GLM arguments (--warmup, --lr-decay-style, --lr-decay-ratio) accepted as aliases.
SCHEDULER_ALIASES = {
    "warmup": "warmup_ratio",
    "decay": "decay_style",
    "lr_decay_style": "decay_style",
    "lr_decay_ratio": "min_lr_ratio",
}
DECAY_STYLES = ("cosine", "linear", "constant")
OPTIMIZER_DEFAULTS: dict[str, Any] = {
    "lr": 1e-4,
    "betas": (0.9, 0.98),
    "eps": 1e-6,
    "weight_decay": 0.1,
    "fused": None,
}
# Decision: a finetuning schedule decays to 0 unless told otherwise (min_lr_ratio 0); pretraining configs
# set the spec's 5% / 10% explicitly.
SCHEDULER_DEFAULTS: dict[str, Any] = {
    "warmup_ratio": 0.0,
    "decay_style": "linear",
    "min_lr_ratio": 0.0,
    "decay_ratio": 1.0,
    "total_steps": None,
}


def _is_number(value: Any, types: tuple[type, ...]) -> bool:
    return not isinstance(value, bool) or bool in types


def normalize_optimizer(optimizer: Mapping[str, Any] | None, where: str = "task.optimizer") -> dict[str, Any]:
    """Defaults + ``optimizer``, with every key and type checked; errors name ``where.key``."""
    out = dict(OPTIMIZER_DEFAULTS)
    for key, value in dict(optimizer or {}).items():
        if key not in OPTIMIZER_KEYS:
            raise ValueError(f"{where}.{key}: unknown key; allowed: {sorted(OPTIMIZER_KEYS)}")
        if not isinstance(value, OPTIMIZER_KEYS[key]) or not _is_number(value, OPTIMIZER_KEYS[key]):
            raise ValueError(
                f"{where}.{key}: expected {'/'.join(t.__name__ for t in OPTIMIZER_KEYS[key])}, got {value!r}"
            )
        out[key] = value
    if len(out["betas"]) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in out["betas"]):
        raise ValueError(f"{where}.betas: expected two numbers in [0, 1), got {out['betas']!r}")
    out["betas"] = [float(b) for b in out["betas"]]
    for key in ("lr", "eps", "weight_decay"):
        if out[key] < 0:
            raise ValueError(f"{where}.{key}: must be >= 0, got {out[key]!r}")
    return out


def normalize_scheduler(scheduler: Mapping[str, Any] | None, where: str = "task.scheduler") -> dict[str, Any]:
    """Defaults + ``scheduler`` (aliases resolved), with every key and type checked."""
    out = dict(SCHEDULER_DEFAULTS)
    for key, value in dict(scheduler or {}).items():
        name = SCHEDULER_ALIASES.get(key, key)
        if name not in SCHEDULER_KEYS:
            raise ValueError(
                f"{where}.{key}: unknown key; allowed: {sorted(SCHEDULER_KEYS)} "
                f"(aliases {sorted(SCHEDULER_ALIASES)})"
            )
        if not isinstance(value, SCHEDULER_KEYS[name]) or not _is_number(value, SCHEDULER_KEYS[name]):
            raise ValueError(
                f"{where}.{key}: expected {'/'.join(t.__name__ for t in SCHEDULER_KEYS[name])}, got {value!r}"
            )
        out[name] = value
    if out["decay_style"] not in DECAY_STYLES:
        raise ValueError(
            f"{where}.decay_style: must be one of {list(DECAY_STYLES)}, got {out['decay_style']!r}"
        )
    for key in ("warmup_ratio", "min_lr_ratio"):
        if not 0.0 <= out[key] <= 1.0:
            raise ValueError(f"{where}.{key}: must be in [0, 1], got {out[key]!r}")
    if not 0.0 < out["decay_ratio"] <= 1.0:
        raise ValueError(f"{where}.decay_ratio: must be in (0, 1], got {out['decay_ratio']!r}")
    return out


def annealing_lr_factor(
    step: int, warmup_steps: float, decay_steps: int, style: str, min_ratio: float
) -> float:
    """lr(step) / lr0 of the original ``AnnealingLR`` (spec §5.8); ``step`` counts finished optimizer steps.

    Warmup ``lr0 * t / w`` for ``t <= w`` (so the first update runs at lr 0 when there is warmup, as the
    original scheduler starts at iteration 0), then with ``r = min(1, (t - w) / (D - w))``:
    cosine ``rho + (1 - rho) * (1 + cos(pi r)) / 2``, linear ``1 - (1 - rho) * r``, constant 1.
    Decision: the linear form is clamped at ``r = 1`` like the cosine one, so steps past ``D`` stay at rho.
    """
    if warmup_steps > 0 and step <= warmup_steps:
        return step / warmup_steps
    if style == "constant":
        return 1.0
    span = decay_steps - warmup_steps
    r = 1.0 if span <= 0 else min(1.0, (step - warmup_steps) / span)
    if style == "cosine":
        return min_ratio + (1.0 - min_ratio) * (1.0 + math.cos(math.pi * r)) / 2.0
    if style == "linear":
        return 1.0 - (1.0 - min_ratio) * r
    raise ValueError(f"unknown decay style {style!r}; expected one of {list(DECAY_STYLES)}")


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: every bias and every LayerNorm weight without decay, the rest with it (spec §5.8).

    Embedding tables keep weight decay (the original only exempts biases and LayerNorm parameters).
    Tied or shared parameters appear once.
    """
    no_decay: set[int] = set()
    for mod in module.modules():
        if isinstance(mod, nn.LayerNorm):
            no_decay.update(id(p) for p in mod.parameters(recurse=False))
    decay_params, plain_params, seen = [], [], set()
    for name, p in module.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if id(p) in no_decay or name.endswith("bias"):
            plain_params.append(p)
        else:
            decay_params.append(p)
    groups = [
        {"params": decay_params, "weight_decay": float(weight_decay)},
        {"params": plain_params, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def _plain(value: Any) -> Any:
    """OmegaConf containers -> dict/list (hparams must be plain so weights_only loading works)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
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

class GLMTaskModule(L.LightningModule):
    """Base of the GLM task modules (pretraining, cloze, seq2seq, LM evaluation).

    ``model`` is the model config group (``preset`` + GLMConfig overrides), ``optimizer`` and ``scheduler``
    are dicts (keys in ``OPTIMIZER_KEYS`` / ``SCHEDULER_KEYS``), ``pretrained`` an export dir or state-dict
    file loaded into the backbone after it is built. ``compile`` compiles each block in place and
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
        """When `pretrained` is an export dir, its `model_config.yaml` fixes the architecture.

        Decision: the weights only fit the shape they were trained with, so every shape field (layers,
        widths, heads, V, positions, norm/MLP kind) comes from the export; the run's training-time
        fields (`RUN_FIELDS`: dropouts, attention kernel, softmax precision, init range, embedding
        gradient scale) stay as the run's model group sets them. Differences are logged, and the
        effective config replaces `hparams["model"]` so a checkpoint of this run rebuilds the same model.
        """
        if not self.pretrained:
            return
        from glm.checkpoint.io import CONFIG_FILE, is_export_dir, read_model_config

        if not is_export_dir(self.pretrained):
            return
        exported = read_model_config(Path(self.pretrained) / CONFIG_FILE).to_dict()
        current = self.glm_config.to_dict()
        merged = {k: (current[k] if k in RUN_FIELDS else v) for k, v in exported.items()}
        changed = {k: (current.get(k), v) for k, v in merged.items() if k != "name" and current.get(k) != v}
        if changed:
            log.info(
                "architecture from the export %s (run's model group -> export): %s",
                self.pretrained,
                ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in changed.items()),
            )
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
        from glm.distributed import zero3_full_parameters

        model = GLM(self.glm_config)
        with zero3_full_parameters(model) as partitioned:
            if partitioned:  # ZeRO-3 partitioned each submodule before GLM.__init__ ran its init
                model.reset_parameters()
            if self.pretrained:
                from glm.checkpoint import load_pretrained_into

                load_pretrained_into(model, self.pretrained)
        if self.activation_checkpointing:
            _checkpoint_blocks(model)
        if self.compile_blocks:
            for block in model.transformer.layers:
                block.compile()  # in place: parameters keep their names (no `_orig_mod.` prefix)
        mesh = getattr(self, "_device_mesh", None)  # set by ModelParallelStrategy
        if mesh is not None:  # ModelParallelStrategy (FSDP2)
            from glm.distributed import mixed_precision_policy, shard_model

            precision = str(self.trainer.precision) if self._trainer is not None else "32-true"
            shard_model(model, mesh, mp_policy=mixed_precision_policy(precision))
        self.model = model

    # ---- run safety: non-finite losses, skipped fp16 steps, RNG state in checkpoints ----
    def _grad_scaler(self) -> Any:
        plugin = getattr(self.trainer, "precision_plugin", None) if self._trainer is not None else None
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
        if self._trainer is not None and self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            step = self.trainer.global_step if self._trainer is not None else -1
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
        trainer = self._trainer
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
        fit_loop = self.trainer.fit_loop
        built_before = fit_loop._combined_loader is not None
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        if not built_before:
            # The estimate makes Lightning build (and start iterating) the train loader now, inside
            # configure_optimizers, i.e. before a resumed checkpoint's loop state is restored; the fit loop
            # then keeps that loader and never applies the saved loader state (mid-epoch position). Dropping
            # it makes the fit loop build the loader again after the restore. Pinned by tests/test_resume.py.
            fit_loop._combined_loader = None
        return steps

    def configure_optimizers(self) -> dict[str, Any]:
        opt = self.optimizer_config
        params = param_groups(self, opt["weight_decay"])
        fused = opt["fused"]
        if fused is None:  # the fused kernel wherever torch has it for these parameters
            fused = fused_adamw_supported([p for g in params for p in g["params"]])
            # fp16: the GradScaler must unscale before clipping, which a fused AdamW does only inside step()
            trainer = self._trainer
            if trainer is not None and str(trainer.precision) == "16-mixed" and trainer.gradient_clip_val:
                fused = False
        optimizer = torch.optim.AdamW(
            params,
            lr=float(opt["lr"]),
            betas=tuple(opt["betas"]),
            eps=float(opt["eps"]),
            fused=bool(fused),  # explicit False: newer torch may pick the fused kernel itself on CUDA
        )
        sch = self.scheduler_config
        decay_steps = max(1, round(sch["decay_ratio"] * self.total_steps()))
        warmup_steps = sch["warmup_ratio"] * decay_steps

        def factor(step: int) -> float:
            return annealing_lr_factor(
                step, warmup_steps, decay_steps, sch["decay_style"], sch["min_lr_ratio"]
            )

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Lightning's mixed-precision plugin refuses to clip for a fused AdamW even under bf16, where no
        scaler is involved and clipping before ``step()`` is exactly right: clip directly then."""
        fused = getattr(optimizer, "_step_supports_amp_scaling", False)
        if fused and gradient_clip_val and str(self.trainer.precision) != "16-mixed":
            params = [p for group in optimizer.param_groups for p in group["params"]]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)


def part_b_index(loss_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions with loss (Part B) of each row, left-aligned and padded with position 0: a ``[B, K]``
    index for ``GLM.forward(logits_index=)`` and its ``[B, K]`` validity mask; K = the largest Part B."""
    has_loss = loss_mask > 0
    k = max(1, int(has_loss.sum(1).max()))
    order = torch.argsort((~has_loss).to(torch.int8), dim=1, stable=True)[:, :k]
    valid = torch.gather(has_loss, 1, order)
    return torch.where(valid, order, torch.zeros_like(order)), valid


def part_b_logits(model: GLM, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Run ``model`` on a padded or packed batch with the tied head projected at the loss positions only:
    ``(logits [B, K, V], targets [B, K], loss mask [B, K], index [B, K])`` (see :func:`part_b_index`)."""
    index, valid = part_b_index(batch["loss_mask"])
    logits = model(
        batch["input_ids"],
        batch["position_ids"],
        sep=batch["sep"],  # per token [B, L] in packed batches (data.pack), with segment_ids
        segment_ids=batch.get("segment_ids"),
        logits_index=index,
    ).logits
    mask = torch.gather(batch["loss_mask"], 1, index) * valid
    return logits, torch.gather(batch["targets"], 1, index), mask, index


def fused_adamw_supported(params: list[torch.Tensor]) -> bool:
    """True when torch's fused AdamW kernel takes every parameter: CUDA tensors (sharded or not) and plain
    CPU tensors. On CPU the glm-base step at 2 x 512 is ~3% faster than with the per-parameter loop
    (bench/README.md; the optimizer's share grows as the batch shrinks); sharded CPU parameters (FSDP2 DTensors on gloo) keep the loop, which is tested."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        DTensor = ()
    return bool(params) and all(
        p.is_cuda or (p.device.type == "cpu" and not isinstance(p, DTensor)) for p in params
    )




def rng_states() -> dict[str, Any]:
    """Python, numpy and torch (CPU, and CUDA when present) RNG states as plain, weights_only-loadable values."""
    import random

    import numpy as np

    np_state = np.random.get_state()
    out: dict[str, Any] = {
        "python": _plain_python_state(random.getstate()),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def _plain_python_state(state: tuple) -> list:
    version, internal, gauss = state
    return [int(version), torch.tensor(internal, dtype=torch.int64), gauss]


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Inverse of :func:`rng_states`."""
    import random

    import numpy as np

    version, internal, gauss = states["python"]
    random.setstate((int(version), tuple(int(x) for x in internal.tolist()), gauss))
    n = states["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


def _checkpoint_blocks(model: GLM) -> None:
    """Recompute each block in the backward pass; patched per instance, so module names stay the same."""
    from torch.utils.checkpoint import checkpoint

    for block in model.transformer.layers:
        forward = block.forward

        def wrapped(*args: Any, _forward=forward, **kwargs: Any) -> Any:
            if torch.is_grad_enabled() and not kwargs.get("use_cache", False):
                return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
            return _forward(*args, **kwargs)

        block.forward = wrapped
