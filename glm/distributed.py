"""Strategy factories referenced from ``conf/hardware`` (the only module that knows about strategies).

- ``ddp_strategy``: Lightning DDP, gloo on CPU and nccl on CUDA.
- ``fsdp_strategy``: Lightning ``ModelParallelStrategy`` (FSDP2): :func:`shard_model` applies
  ``fully_shard`` to every GLM block and then to the root inside ``GLMTaskModule.configure_model``. It works
  on CPU with gloo (docs/lightning-hydra-notes.md R1), unlike Lightning's ``strategy='fsdp'``. The mixed-precision policy
  passed to ``fully_shard`` follows the ``hardware=bf16``/``fp16`` option (:func:`mixed_precision_policy`);
  checkpoints are sharded directories, turned into one export by ``python -m glm.checkpoint consolidate``.
- ``deepspeed_strategy``: ZeRO stage 2/3, refused at start-up without CUDA (Lightning would only fail at
  ``fit``).

:func:`prepare_model` is what a task module calls on its freshly built backbone (in ``configure_model``)
whatever the strategy: it initialises / loads the weights with every parameter whole (gathering ZeRO-3
partitions), applies activation checkpointing and per-block ``torch.compile``
(``task.activation_checkpointing``, ``task.compile``) to the blocks in place, so they work under every
strategy and never change state-dict keys, and then shards the model when the strategy gave a device mesh
(FSDP2).

Multi-node DDP/FSDP: the processes are created outside Lightning (it then spawns nothing) and Lightning
reads the standard environment. Checkpoints must go to a filesystem every node shares (``paths.output_dir``;
``$SHARED_DIR`` below).
With torchrun, on every node (``NODE_RANK`` = 0..N-1, ``MASTER_ADDR`` = node 0's address)::

    torchrun --nnodes=2 --nproc-per-node=8 --node-rank=$NODE_RANK \
        --master-addr=$MASTER_ADDR --master-port=29500 \
        run.py +experiment=pretrain_tiny hardware=[gpu,ddp,bf16] trainer.devices=8 trainer.num_nodes=2 \
        hydra.run.dir=$SHARED_DIR/runs/glm-pretrain

With SLURM (Lightning detects ``SLURM_*``; one task per GPU)::

    #SBATCH --nodes=2 --ntasks-per-node=8 --gpus-per-node=8
    srun python run.py +experiment=pretrain_tiny hardware=[gpu,ddp,bf16] trainer.devices=8 \
        trainer.num_nodes=2 hydra.run.dir=$SHARED_DIR/runs/glm-pretrain

Give ``hydra.run.dir`` explicitly so every process writes into the same run dir (a ``${now:...}`` dir
would differ between nodes). To resume after a crash or a requeue, repeat the command with
``ckpt_path=last``. A Hydra multirun (``-m``) may only combine with these external launchers or with one
device per job (see ``glm.run.validation.check_multirun_strategy``).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, ModelParallelStrategy, ParallelStrategy
from torch.utils.checkpoint import checkpoint

from glm.compat import attached_trainer, use_every_process_for_data_parallel
from glm.errors import StrategyUnavailable
from glm.model import GLM
from glm.utils.fs import replace_dir, sha256_file, write_manifest

SUBPROCESS_STRATEGIES = ("ddp_strategy", "fsdp_strategy", "deepspeed_strategy")


def ddp_strategy(**kwargs: Any) -> Any:
    from lightning.pytorch.strategies import DDPStrategy

    kwargs.setdefault("process_group_backend", "nccl" if torch.cuda.is_available() else "gloo")
    return DDPStrategy(**kwargs)


class WholeDirectoryCheckpoints(ParallelStrategy):
    """Strategy mixin for checkpoints that are directories every rank writes into (FSDP2 sharded, DeepSpeed):
    written whole. Every rank writes into a staging dir beside the target and hashes its own files, rank 0
    hashes the rest, writes ``SHA256SUMS`` and swaps the staging dir in (``glm.utils.fs.replace_dir``), so
    ``last.ckpt`` is never a mix of two steps; Lightning itself rewrites the directory in place."""

    def _writes_directory(self) -> bool:
        return True

    def _rank_file_pattern(self, rank: int) -> str:
        """A glob (relative to the checkpoint dir) matching the files ``rank`` wrote."""
        raise NotImplementedError

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        if not self._writes_directory() or "://" in str(filepath):
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        staging = path.with_name(f".{path.name}.staging")
        if self.is_global_zero and staging.exists():  # left by a write that was killed
            shutil.rmtree(staging)
        self.barrier("glm_ckpt_staging")
        super().save_checkpoint(checkpoint, staging, storage_options)
        self.barrier("glm_ckpt_written")
        rank = int(self.global_rank)
        mine = {
            f.relative_to(staging).as_posix(): sha256_file(f)
            for f in staging.glob(self._rank_file_pattern(rank))
        }
        digests: dict[str, str] = {}
        for part in _gather_objects(mine):
            digests.update(part)
        if self.is_global_zero:
            for f in sorted(staging.rglob("*")):  # metadata and anything no rank claimed
                name = f.relative_to(staging).as_posix()
                if f.is_file() and name not in digests:
                    digests[name] = sha256_file(f)
            write_manifest(staging, digests)
            replace_dir(staging, path)
        self.barrier("glm_ckpt_swapped")


def _gather_objects(obj: Any) -> list[Any]:
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


class FSDP2Strategy(WholeDirectoryCheckpoints, ModelParallelStrategy):
    """``ModelParallelStrategy`` whose ``data_parallel_size="auto"`` means "every process" (pure FSDP).

    Lightning's own "auto" is the number of nodes (it pairs with tensor parallelism inside a node), which
    with ``tensor_parallel_size=1`` does not multiply to the world size. Sharded checkpoints are written
    whole (:class:`WholeDirectoryCheckpoints`); full-state ones are files, through the CheckpointIO.
    """

    def setup_environment(self) -> None:
        use_every_process_for_data_parallel(self)
        super().setup_environment()

    def _writes_directory(self) -> bool:
        return bool(self._save_distributed_checkpoint)

    def _rank_file_pattern(self, rank: int) -> str:
        return f"__{rank}_*.distcp"  # torch.distributed.checkpoint's FileSystemWriter names


class GLMDeepSpeedStrategy(WholeDirectoryCheckpoints, DeepSpeedStrategy):
    """Lightning's ``DeepSpeedStrategy`` with its checkpoint directories written whole."""

    def _rank_file_pattern(self, rank: int) -> str:
        return f"**/zero_pp_rank_{rank}_*"  # ZeRO partitions; rank 0 hashes the model states and `latest`


def fsdp_strategy(
    data_parallel_size: int | str = "auto", tensor_parallel_size: int | str = 1, **kwargs: Any
) -> Any:
    if not torch.cuda.is_available():
        kwargs.setdefault("process_group_backend", "gloo")
    return FSDP2Strategy(
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
    return GLMDeepSpeedStrategy(stage=stage, **kwargs)


def mixed_precision_policy(precision: str) -> Any:
    """The FSDP2 ``MixedPrecisionPolicy`` for a Lightning precision string, or None (parameters as stored).

    ``bf16-mixed`` / ``16-mixed``: parameters are cast to bf16 / fp16 for forward and backward
    (``param_dtype``), gradients are reduced in fp32 (``reduce_dtype``) and the sharded fp32 master
    weights are what the optimizer updates. ``*-true`` and ``32`` need no policy: the parameters already
    have the compute dtype.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy

    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(precision))
    if dtype is None:
        return None
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


def shard_model(model: torch.nn.Module, mesh: Any, mp_policy: Any = None) -> None:
    """FSDP2: ``fully_shard`` each transformer block, then the root (in place), with ``mp_policy``."""
    from torch.distributed.fsdp import fully_shard

    dp_mesh = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
    kwargs = {"mesh": dp_mesh}
    if mp_policy is not None:
        kwargs["mp_policy"] = mp_policy
    for block in model.transformer.layers:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)


@contextmanager
def zero3_full_parameters(model: torch.nn.Module) -> Iterator[bool]:
    """Yield True with every parameter gathered when DeepSpeed ZeRO-3 has partitioned ``model`` (its
    ``zero.Init`` partitions each submodule as soon as it is built, so an init or a weight load written
    for whole tensors would touch empty placeholders); rank 0's values are broadcast on exit. Otherwise
    yield False and do nothing. Gathers the whole model at once: fine up to what one device can hold."""
    params = list(model.parameters())
    if not any(hasattr(p, "ds_id") for p in params):
        yield False
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
        yield True


def checkpoint_blocks(model: GLM) -> None:
    """Recompute each block in the backward pass; patched per instance, so module names stay the same."""
    for block in model.transformer.layers:
        forward = block.forward

        def wrapped(*args: Any, _forward=forward, **kwargs: Any) -> Any:
            if torch.is_grad_enabled() and not kwargs.get("use_cache", False):
                return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
            return _forward(*args, **kwargs)

        block.forward = wrapped


def prepare_model(
    model: GLM,
    owner: L.LightningModule,
    load_weights: Callable[[GLM], None] | None = None,
    activation_checkpointing: bool = False,
    compile_blocks: bool = False,
) -> None:
    """Make a freshly built ``model`` ready for the strategy running ``owner`` (its LightningModule), in place.

    ``load_weights(model)`` runs with every parameter whole (under ZeRO-3, which partitioned each submodule
    before ``GLM.__init__`` ran its init, the parameters are gathered and initialised again first). Then
    activation checkpointing and per-block compilation, then FSDP2 sharding when the strategy gave
    ``owner`` a device mesh (``ModelParallelStrategy``), with the mixed-precision policy of the trainer's
    precision."""
    with zero3_full_parameters(model) as partitioned:
        if partitioned:
            model.reset_parameters()
        if load_weights is not None:
            load_weights(model)
    if activation_checkpointing:
        checkpoint_blocks(model)
    if compile_blocks:
        for block in model.transformer.layers:
            block.compile()  # in place: parameters keep their names (no `_orig_mod.` prefix)
    mesh = owner.device_mesh
    if mesh is not None:
        trainer = attached_trainer(owner)
        precision = str(trainer.precision) if trainer is not None else "32-true"
        shard_model(model, mesh, mp_policy=mixed_precision_policy(precision))
