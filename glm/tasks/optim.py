"""Optimizer, learning-rate schedule and parameter groups of every GLM task (`GLMTaskModule` calls these).

AdamW with decay / no-decay groups and the original GLM learning-rate schedule (docs/original-glm.md §5.8,
``learning_rates.py::AnnealingLR``), stepped once per optimizer step.

Decision (docs/original-glm.md §5.8 leaves it unconfirmed whether the DeepSpeed "Adam" of the original configs decays
weights inside the Adam update or decoupled from it): decoupled decay, ``torch.optim.AdamW``, the
behaviour of apex ``FusedAdam`` in the original's non-DeepSpeed path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

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
# set the original's 5% / 10% explicitly.
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
    """lr(step) / lr0 of the original ``AnnealingLR`` (docs/original-glm.md §5.8); ``step`` counts finished optimizer steps.

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
    """AdamW groups: every bias and every LayerNorm weight without decay, the rest with it (docs/original-glm.md §5.8).

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


def adamw_with_schedule(
    module: nn.Module,
    optimizer: Mapping[str, Any],
    scheduler: Mapping[str, Any],
    total_steps: Callable[[], int],
    precision: str,
    gradient_clip_val: float | None,
) -> dict[str, Any]:
    """``configure_optimizers``' answer: AdamW over :func:`param_groups` of ``module`` and the
    :func:`annealing_lr_factor` schedule as a per-step ``LambdaLR``.

    ``optimizer`` / ``scheduler`` are normalized dicts (:func:`normalize_optimizer`,
    :func:`normalize_scheduler`); ``total_steps`` is called once, after the optimizer is built.
    """
    params = param_groups(module, optimizer["weight_decay"])
    fused = optimizer["fused"]
    if fused is None:  # the fused kernel wherever torch has it for these parameters
        fused = fused_adamw_supported([p for g in params for p in g["params"]])
        # fp16: the GradScaler must unscale before clipping, which a fused AdamW does only inside step()
        if str(precision) == "16-mixed" and gradient_clip_val:
            fused = False
    adamw = torch.optim.AdamW(
        params,
        lr=float(optimizer["lr"]),
        betas=tuple(optimizer["betas"]),
        eps=float(optimizer["eps"]),
        fused=bool(fused),  # explicit False: newer torch may pick the fused kernel itself on CUDA
    )
    decay_steps = max(1, round(scheduler["decay_ratio"] * total_steps()))
    warmup_steps = scheduler["warmup_ratio"] * decay_steps

    def factor(step: int) -> float:
        return annealing_lr_factor(
            step, warmup_steps, decay_steps, scheduler["decay_style"], scheduler["min_lr_ratio"]
        )

    schedule = torch.optim.lr_scheduler.LambdaLR(adamw, factor)
    return {"optimizer": adamw, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def clip_fused_gradients(
    optimizer: torch.optim.Optimizer,
    precision: str,
    gradient_clip_val: float | None,
    gradient_clip_algorithm: str | None,
) -> bool:
    """Clip here and return True where Lightning would refuse to: its mixed-precision plugin rejects
    clipping for a fused AdamW even under bf16, where no scaler is involved and clipping before ``step()``
    is exactly right. False: nothing done, Lightning's own clipping applies (fp16 keeps its refusal, as
    its scaler unscales inside the fused ``step()`` only)."""
    fused = getattr(optimizer, "_step_supports_amp_scaling", False)
    if not (fused and gradient_clip_val and str(precision) != "16-mixed"):
        return False
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if gradient_clip_algorithm == "value":
        torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
    else:
        torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
    return True
