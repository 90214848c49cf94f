"""GPU checks of the Lightning path (issue 5): bf16 / fp16 training steps and FSDP2 on one GPU.

    python bench/gpu_lightning.py [--preset glm-large] [--steps 30] [--json OUT.json]

Runs ``PretrainModule`` under ``lightning.Trainer`` on real GLM masking layouts (``GLMMasker`` on random
token documents; no tokenizer or Hydra needed, so it runs on a bare GPU image with torch + lightning) for
each (strategy, precision) pair, and reports tokens/s, the first and last losses, and for FSDP2 a checkpoint
round trip: the full state dict gathered after training reloaded into a fresh single-device model gives the
same logits. Numbers are wall-clock tokens/s over the steps after a warm-up, synchronised at the ends.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from glm.callbacks import MFUMonitor  # noqa: E402
from glm.data.masking import GLMMasker, MaskingConfig, SpecialIds, collate_masked, sample_rng  # noqa: E402
from glm.model import GLM, GLMConfig  # noqa: E402
from glm.tasks.pretrain import PretrainModule, blank_infilling_loss  # noqa: E402

SPECIAL = dict(pad=0, eos=0, cls=2, mask=4, smask=5, gmask=6, sop=7, eop=8, dblock=9)


class MaskedRandomDocs(Dataset):
    """Random documents of 200-2000 tokens masked by the glm-large objective; sample i is fixed by i."""

    def __init__(self, n: int, seq_length: int, vocab: int) -> None:
        self.n, self.seq_length, self.vocab = n, seq_length, vocab
        ids = SpecialIds(**SPECIAL)
        sentence_end = np.zeros(vocab, dtype=bool)
        sentence_end[10:20] = True
        self.masker = GLMMasker(MaskingConfig.from_name("glm-large"), ids, sentence_end)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        rng = sample_rng(0, 0, i)
        # [CLS] doc [eos], 94% of L: token-level blanks add one [sop] per span (~5%), so samples stay <= L
        body = rng.integers(10, self.vocab, size=int(self.seq_length * 0.94) - 2)
        tokens = np.concatenate([[SPECIAL["cls"]], body, [SPECIAL["eos"]]]).astype(np.int64)
        return self.masker(tokens, rng)


class CompiledLossPretrain(PretrainModule):
    """PretrainModule whose training loss (fp32 CE over V logits, all positions) is one compiled kernel:
    no fp32 copy of the [B*S, V] logits is materialised (what a fused cross-entropy would give; measured
    before the module projected the head at Part B only)."""

    _loss = staticmethod(torch.compile(blank_infilling_loss))

    def training_step(self, batch, batch_idx):
        loss_sum, count = self._loss(self(batch), batch["targets"], batch["loss_mask"])
        loss = loss_sum / count.clamp_min(1.0)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss


def run_one(args, strategy_name: str, precision: str) -> dict:
    torch.manual_seed(0)
    model_cfg = {"preset": args.preset, "hidden_dropout": 0.0, "attention_dropout": 0.0}
    cls = CompiledLossPretrain if args.compile_loss else PretrainModule
    module = cls(
        model=model_cfg,
        optimizer={"lr": 1e-4},
        scheduler={"warmup_ratio": 0.1, "decay_style": "cosine", "total_steps": args.steps},
        compile=args.compile,
    )
    data = MaskedRandomDocs(
        args.steps * args.batch, args.seq_length, GLMConfig.from_name(args.preset).vocab_size
    )
    loader = DataLoader(data, batch_size=args.batch, collate_fn=collate_masked, num_workers=4)
    if strategy_name == "fsdp":
        from glm.distributed import fsdp_strategy

        strategy = fsdp_strategy(data_parallel_size=1)
    elif strategy_name.startswith("ds"):
        from glm.distributed import deepspeed_strategy

        strategy = deepspeed_strategy(stage=int(strategy_name[2:]))
    else:
        strategy = "auto"
    times: list[float] = []
    losses: list[float] = []

    class Clock(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter())
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=1,
        strategy=strategy,
        precision=precision,
        max_steps=args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Clock(), MFUMonitor(every_n_steps=10)],
        gradient_clip_val=1.0 if strategy_name == "auto" else None,
    )
    trainer.fit(module, loader)
    warm = 10 if args.compile else 5
    tokens = args.batch * args.seq_length * (len(times) - 1 - warm)
    tok_s = tokens / (times[-1] - times[warm])
    flops = GLMConfig.from_name(args.preset).flops_per_token(args.seq_length) * tok_s
    out = {
        "strategy": strategy_name,
        "batch": args.batch,
        "compile": args.compile,
        "compile_loss": args.compile_loss,
        "precision": precision,
        "tokens_per_s": round(tok_s),
        "tflops": round(flops / 1e12, 1),
        "loss_first5": round(sum(losses[:5]) / 5, 3),
        "loss_last5": round(sum(losses[-5:]) / 5, 3),
        "losses_first5": [round(x, 3) for x in losses[:5]],
        "finite": all(np.isfinite(losses)),
        "callback_mfu": round(float(trainer.callback_metrics.get("perf/mfu", float("nan"))), 3),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if torch.cuda.is_available()
        else None,
    }
    full = None
    if strategy_name == "fsdp":  # gather the full state dict, reload on one device, compare logits
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(
            module.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    elif strategy_name.startswith("ds"):  # sharded ZeRO checkpoint -> export dir via our consolidate command
        from glm.checkpoint.consolidate import consolidate
        from glm.checkpoint.io import load_export

        ckpt_dir = Path(args.work_dir) / f"{strategy_name}.ckpt"
        trainer.save_checkpoint(ckpt_dir)
        trainer.strategy.barrier()
        export = consolidate(ckpt_dir, Path(args.work_dir) / f"{strategy_name}_export")
        _, full, _ = load_export(export, load_tokenizer=False)
        out["consolidated_bytes"] = sum(v.numel() * v.element_size() for v in full.values())
    if full is not None:
        batch = collate_masked([data[i] for i in range(4)])
        # after fit Lightning's teardown moved the module to the CPU, except ZeRO-3's partitioned parameters
        device = (
            trainer.strategy.root_device if strategy_name == "ds3" else next(module.model.parameters()).device
        )
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.no_grad():
            logits = module.model(batch["input_ids"], batch["position_ids"], sep=batch["sep"]).logits
            sharded, sharded_dtype = logits.float(), logits.dtype
            plain = GLM(module.glm_config).to(device=device, dtype=sharded_dtype)
            plain.load_state_dict(full)
            ref = plain(batch["input_ids"], batch["position_ids"], sep=batch["sep"]).logits.float()
        out["reload_logits_rel_err"] = float((sharded - ref).norm() / ref.norm())
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="glm-large")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-length", type=int, default=512)
    parser.add_argument("--runs", default="auto:bf16-mixed,auto:16-mixed,auto:32-true,fsdp:bf16-mixed")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--work-dir", default="outputs/gpu_checks", help="checkpoints of the ds runs")
    parser.add_argument("--compile-loss", action="store_true", help="compile the training loss too")
    parser.add_argument("--compile", action="store_true", help="per-block torch.compile (task.compile=true)")
    parser.add_argument("--accelerator", default="cuda", help="cpu only to smoke-test the script")
    args = parser.parse_args()
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    results = []
    for item in args.runs.split(","):
        strategy, precision = item.split(":")
        results.append(run_one(args, strategy, precision))
        print(json.dumps(results[-1]), flush=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"\n{args.preset} S={args.seq_length} B={args.batch} on {device}")
    for r in results:
        print(
            f"{r['strategy']:5s} {r['precision']:10s} {r['tokens_per_s']:>8d} tok/s {r['tflops']:6.1f} TFLOP/s "
            f"loss {r['loss_first5']:.3f} -> {r['loss_last5']:.3f} mem {r['peak_mem_gib']} GiB"
            + (f" reload rel err {r['reload_logits_rel_err']:.2e}" if "reload_logits_rel_err" in r else "")
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
