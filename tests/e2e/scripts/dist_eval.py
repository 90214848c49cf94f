"""Evaluate one glm-tiny on small slices of the real data with one Trainer of N processes; used by
tests/e2e/test_distributed_eval.py in a subprocess (Lightning's DDP re-runs the launching command, so it must
not be pytest).

    python tests/e2e/scripts/dist_eval.py --weights FILE --devices N [--strategy ddp|fsdp] --out DIR

FILE is a backbone state dict (`train_weights` writes one: a few steps on the XSum pairs, so that decoding
gives real words and ROUGE is not 0); every module loads it, so every rank and every run has the same model.

Slices (odd sizes, so that a 2-process split is padded with a repeated example): 7 XSum pairs (validate
and test: beam-search decoding + ROUGE, hyps/refs files), 9 LAMBADA lines, the perplexity windows of the
first 12 WikiText-2 lines, 11 RTE examples (validate: acc/loss + val_predictions.jsonl; predict: the
submission file) and 11 MultiRC answer options (f1a / em grouped by question). The loaders are the
datamodules' own, with `use_distributed_sampler=False` as in the run config.

Writes to DIR (rank 0): ``result.json`` (world size, the logged metrics per run, the number of examples
each rank evaluated per run, a checksum of the weights) and the task files under ``DIR/<run>/``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch

from glm.data.cloze import ClozeDataModule
from glm.data.lm_eval import LMEvalDataModule
from glm.data.paths import data_root
from glm.data.seq2seq import Seq2SeqDataModule
from glm.distributed import ddp_strategy, fsdp_strategy
from glm.tasks.cloze import ClozeModule
from glm.tasks.lm_eval import LMEvalModule
from glm.tasks.seq2seq import Seq2SeqModule

N_XSUM, N_LAMBADA, N_PPL_LINES, N_RTE, N_MULTIRC = 7, 9, 12, 11, 11
OPTIM = {"lr": 1e-4}
SCHED = {"warmup_ratio": 0.0}


def _model(vocab_size: int) -> dict[str, Any]:
    return {"preset": "glm-tiny", "vocab_size": vocab_size, "hidden_dropout": 0.0, "attention_dropout": 0.0}


class CountExamples(L.Callback):
    """How many examples this rank evaluated (repeats included), per stage."""

    def __init__(self) -> None:
        self.count = 0

    def _add(self, batch: dict[str, torch.Tensor]) -> None:
        self.count += int(batch["example_index"].numel())

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._add(batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._add(batch)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._add(batch)


def _checksum(module: L.LightningModule) -> float:
    """Sum of the weights (FSDP2: of the full tensors, gathered on every rank in the same order)."""
    with torch.no_grad():
        full = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in module.model.parameters()]
        return float(sum(t.double().sum() for t in full))


def _xsum(root: Path, tok: Any, **kwargs: Any) -> Seq2SeqDataModule:
    return Seq2SeqDataModule(
        str(root / "xsum"),
        tok,
        format="jsonl",
        src_seq_length=64,
        tgt_seq_length=8,
        bad_rows="skip",
        **kwargs,
    )


def train_weights(path: Path, steps: int = 8) -> None:
    """A few AdamW steps of glm-tiny on the 7 XSum pairs (one process, plain torch), saved to `path`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: a second thread makes each step ~5x slower, not faster
    try:
        _train(path, steps)
    finally:
        torch.set_num_threads(threads)


def _train(path: Path, steps: int) -> None:
    from glm.tasks.seq2seq import masked_mean

    root = data_root()
    tok = {"kind": "bert", "path": str(root / "tokenizers" / "bert-base-uncased")}
    dm = _xsum(
        root, tok, splits={"train": "test.jsonl"}, max_samples={"train": N_XSUM}, micro_batch_size=N_XSUM
    )
    dm.setup("fit")
    torch.manual_seed(0)
    module = Seq2SeqModule(model=_model(dm.tokenizer.vocab_size), optimizer=OPTIM, scheduler=SCHED)
    module.configure_model()
    opt = torch.optim.AdamW(module.model.parameters(), lr=1e-2)
    batch = next(iter(dm.train_dataloader()))
    for _ in range(steps):
        per_tok, mask, _ = module.part_b_losses(batch)
        loss = masked_mean(per_tok, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(module.model.state_dict(), path)


def evaluate(weights: Path, out: Path, devices: int = 1, strategy_name: str = "ddp") -> dict[str, Any]:
    """Every run of the module docstring; returns what rank 0 writes to `out/result.json`. With
    `devices=1` it may run in the calling process (no process group is started)."""
    root = data_root()
    tok = {"kind": "bert", "path": str(root / "tokenizers" / "bert-base-uncased")}
    counter = CountExamples()
    if devices == 1:
        strategy: Any = "auto"
    else:
        strategy = ddp_strategy() if strategy_name == "ddp" else fsdp_strategy()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,  # as conf/trainer/default.yaml: the datamodules shard evaluation
        callbacks=[counter],
    )
    metrics: dict[str, dict[str, float]] = {}
    counts: dict[str, list[int]] = {}
    checksums: dict[str, float] = {}

    def run(name: str, stage: str, module: L.LightningModule, dm: L.LightningDataModule) -> None:
        counter.count = 0
        if stage == "predict":  # writes the submission file; predict_step returns nothing
            trainer.predict(module, datamodule=dm, return_predictions=False)
        else:
            result = getattr(trainer, stage)(module, datamodule=dm, verbose=False)
            metrics[name] = {k: float(v) for k, v in result[0].items()}
        per_rank = trainer.strategy.all_gather(torch.tensor(counter.count)).view(-1)
        counts[name] = [int(c) for c in per_rank]
        checksums[name] = _checksum(module)

    # seq2seq: beam search (2 beams) over 7 pairs, validate (val/rouge*) and test (files)
    xsum = _xsum(
        root,
        tok,
        splits={"val": "test.jsonl", "test": "test.jsonl"},
        eval_batch_size=2,
        max_samples={"val": N_XSUM, "test": N_XSUM},
    )

    def s2s(**generation: Any) -> Seq2SeqModule:
        return Seq2SeqModule(
            model=_model(xsum.tokenizer.vocab_size),
            optimizer=OPTIM,
            scheduler=SCHED,
            pretrained=str(weights),
            generation={"min_new_tokens": 2, "max_new_tokens": 7, "no_repeat_ngram_size": 1, **generation},
            output_dir=str(out / "xsum"),
        )

    run("xsum_val", "validate", s2s(), xsum)  # greedy
    run("xsum_test", "test", s2s(num_beams=2), xsum)  # beam search; writes test.jsonl.hyps / .refs

    lambada = LMEvalDataModule(
        str(root / "lambada" / "lambada_test.jsonl"),
        tok,
        kind="lambada",
        seq_length=128,
        micro_batch_size=2,
        max_samples=N_LAMBADA,
    )
    lm_model = _model(lambada.tokenizer.vocab_size)
    run("lambada", "test", LMEvalModule(model=lm_model, pretrained=str(weights)), lambada)
    ppl = LMEvalDataModule(
        str(root / "wikitext-2" / "wiki.test.tokens"),
        tok,
        kind="perplexity",
        seq_length=64,
        overlap=16,
        wikitext=True,
        micro_batch_size=2,
        max_lines=N_PPL_LINES,
    )
    run("ppl", "validate", LMEvalModule(model=lm_model, pretrained=str(weights)), ppl)

    for task, n in (("rte", N_RTE), ("multirc", N_MULTIRC)):
        dm = ClozeDataModule(
            task, tok, root, seq_length=96, eval_batch_size=2, max_eval_examples=n, max_train_examples=2
        )

        def cloze(dm: ClozeDataModule = dm, task: str = task) -> ClozeModule:
            return ClozeModule(
                model=_model(dm.tokenizer.vocab_size),
                optimizer=OPTIM,
                scheduler=SCHED,
                task=task,
                pretrained=str(weights),
                output_dir=str(out / task),
            )

        run(f"{task}_val", "validate", cloze(), dm)
        if task == "rte":
            run(f"{task}_predict", "predict", cloze(), dm)

    result = {
        "world_size": trainer.world_size,
        "metrics": metrics,
        "counts": counts,
        "checksums": checksums,
        "pid": os.getpid(),
    }
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--weights", required=True)
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--strategy", choices=("ddp", "fsdp"), default="ddp")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)  # as Lightning sets per rank under DDP: the 1-process run is not oversubscribed
    evaluate(Path(args.weights), Path(args.out), args.devices, args.strategy)


if __name__ == "__main__":
    main()
