"""Train a tiny GLM for a few steps on synthetic blank-infilling batches under one strategy; used by
tests/e2e/test_distributed.py in a subprocess (Lightning's DDP re-runs the launching command, so it must not be
pytest).

    python tests/e2e/scripts/dist_train.py --strategy single|ddp|fsdp --devices N --out DIR
        [--steps 4] [--global-batch 4] [--precision 32-true] [--act-ckpt] [--compile] [--save-ckpt]

Writes to DIR (rank 0): ``weights.pt`` (full backbone state dict), ``result.json`` (per-rank losses, the
dtype and type the first block's qkv weight had inside forward, the world size), ``logits.pt`` (the trained
model's logits on a fixed probe batch) and with ``--save-ckpt`` ``ckpt`` (a Lightning checkpoint: a file for
single/ddp, a sharded directory for fsdp).

Every sample has the same number of loss tokens, so the mean of the per-rank token means that DDP/FSDP
average equals the token mean over the global batch that a single process computes.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from glm.data.pretrain import EpochIndexSampler
from glm.distributed import ddp_strategy, fsdp_strategy
from glm.tasks.pretrain import PretrainModule

V, SEQ, PART_A, N_SAMPLES = 128, 24, 12, 64
MODEL = {"preset": "glm-tiny", "vocab_size": V, "hidden_dropout": 0.0, "attention_dropout": 0.0}


def make_sample(i: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + i)
    ids = torch.randint(10, V, (SEQ,), generator=g)
    targets = torch.randint(10, V, (SEQ,), generator=g)
    loss_mask = torch.zeros(SEQ)
    loss_mask[PART_A:] = 1.0  # Part B: the same count in every sample
    pos = torch.stack(
        [torch.arange(SEQ), torch.cat([torch.zeros(PART_A), torch.arange(1, SEQ - PART_A + 1)])]
    )
    return {
        "input_ids": ids,
        "targets": targets,
        "loss_mask": loss_mask,
        "position_ids": pos.long(),
        "sep": torch.tensor(PART_A),
    }


class Synthetic(Dataset):
    def __len__(self) -> int:
        return N_SAMPLES

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        return make_sample(int(k) % N_SAMPLES)  # EpochIndexSampler yields epoch * N + i


class Data(L.LightningDataModule):
    def __init__(self, global_batch: int) -> None:
        super().__init__()
        self.global_batch = global_batch

    def train_dataloader(self) -> DataLoader:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        sampler = EpochIndexSampler(N_SAMPLES, seed=7, shuffle=True, rank=rank, world_size=world)
        return DataLoader(Synthetic(), batch_size=self.global_batch // world, sampler=sampler, drop_last=True)


class Record(L.Callback):
    """Per-step losses, and what the first block's qkv weight looked like inside forward."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.forward_weight: dict[str, str] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        qkv = pl_module.model.transformer.layers[0].attention.query_key_value

        def hook(module: torch.nn.Module, args: tuple) -> None:
            if not self.forward_weight:
                w = module.weight
                self.forward_weight = {"dtype": str(w.dtype), "type": type(w).__name__}

        qkv.register_forward_pre_hook(hook)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--strategy", choices=("single", "ddp", "fsdp"), required=True)
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--global-batch", type=int, default=4)
    p.add_argument("--precision", default="32-true")
    p.add_argument("--act-ckpt", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--save-ckpt", action="store_true")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    out = Path(args.out)

    L.seed_everything(0)
    strategy = {"single": "auto", "ddp": ddp_strategy(), "fsdp": fsdp_strategy()}[args.strategy]
    module = PretrainModule(
        model=MODEL,
        optimizer={"lr": 3e-3, "weight_decay": 0.1},
        scheduler={"warmup_ratio": 0.25, "decay_style": "cosine", "min_lr_ratio": 0.1},
        compile=args.compile,
        activation_checkpointing=args.act_ckpt,
    )
    record = Record()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy=strategy,
        precision=args.precision,
        max_steps=args.steps,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[record],
    )
    trainer.fit(module, datamodule=Data(args.global_batch))

    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    # every rank takes part in gathering FSDP shards and in the sharded forward; rank 0 writes
    state = get_model_state_dict(
        module.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    probe = {
        k: torch.stack([make_sample(N_SAMPLES + j)[k] for j in range(2)])
        for k in ("input_ids", "position_ids", "sep")
    }
    module.model.eval()
    with torch.no_grad():
        logits = module.model(probe["input_ids"], probe["position_ids"], sep=probe["sep"]).logits.float()
    losses = torch.tensor(record.losses, dtype=torch.float64)
    if trainer.world_size > 1:
        gathered = trainer.strategy.all_gather(losses)
        per_rank = gathered.tolist()
    else:
        per_rank = [losses.tolist()]
    if args.save_ckpt:
        trainer.save_checkpoint(out / "ckpt")
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.clone() for k, v in state.items()}, out / "weights.pt")
        torch.save(logits, out / "logits.pt")
        result = {
            "world_size": trainer.world_size,
            "losses": per_rank,
            "forward_weight": record.forward_weight,
            "global_step": trainer.global_step,
            "pid": os.getpid(),
        }
        (out / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
