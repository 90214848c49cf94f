"""Strategy factories referenced from ``conf/hardware`` (the only module that knows about strategies).

- ``ddp_strategy``: Lightning DDP, gloo on CPU and nccl on CUDA.
- ``fsdp_strategy``: Lightning ``ModelParallelStrategy`` (FSDP2): :func:`shard_model` applies
  ``fully_shard`` to every GLM block and then to the root inside ``GLMTaskModule.configure_model``. It works
  on CPU with gloo (stack notes R1), unlike Lightning's ``strategy='fsdp'``.
- ``deepspeed_strategy``: ZeRO stage 2/3, refused at start-up without CUDA (Lightning would only fail at
  ``fit``).
"""

from __future__ import annotations

from typing import Any

import torch

SUBPROCESS_STRATEGIES = ("ddp_strategy", "fsdp_strategy", "deepspeed_strategy")


class StrategyUnavailable(RuntimeError):
    """A strategy that cannot run on this machine (raised before anything is built)."""


def ddp_strategy(**kwargs: Any) -> Any:
    from lightning.pytorch.strategies import DDPStrategy

    kwargs.setdefault("process_group_backend", "nccl" if torch.cuda.is_available() else "gloo")
    return DDPStrategy(**kwargs)


def fsdp_strategy(
    data_parallel_size: int | str = "auto", tensor_parallel_size: int | str = 1, **kwargs: Any
) -> Any:
    from lightning.pytorch.strategies import ModelParallelStrategy

    if not torch.cuda.is_available():
        kwargs.setdefault("process_group_backend", "gloo")
    return ModelParallelStrategy(
        data_parallel_size=data_parallel_size, tensor_parallel_size=tensor_parallel_size, **kwargs
    )


def check_deepspeed_available() -> None:
    """Raise :class:`StrategyUnavailable` with the alternatives when DeepSpeed cannot run here."""
    if not torch.cuda.is_available():
        raise StrategyUnavailable(
            "hardware=deepspeed_stage2/deepspeed_stage3 needs CUDA GPUs, and this machine has none "
            "(Lightning's DeepSpeed strategy is CUDA-only). On CPU use hardware=[cpu,ddp] or "
            "hardware=[cpu,fsdp] with trainer.devices=N."
        )
    try:
        import deepspeed  # noqa: F401
    except ImportError as err:
        raise StrategyUnavailable(
            f"hardware=deepspeed_*: deepspeed is not installed ({err}); pip install -e '.[deepspeed]'"
        ) from None


def deepspeed_strategy(stage: int = 2, **kwargs: Any) -> Any:
    check_deepspeed_available()
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return DeepSpeedStrategy(stage=stage, **kwargs)


def shard_model(model: torch.nn.Module, mesh: Any) -> None:
    """FSDP2: ``fully_shard`` each transformer block, then the root (in place)."""
    from torch.distributed.fsdp import fully_shard

    dp_mesh = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
    for block in model.transformer.layers:
        fully_shard(block, mesh=dp_mesh)
    fully_shard(model, mesh=dp_mesh)
