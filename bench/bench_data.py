"""Data-side CPU benchmark: masking pipeline vs model speed, and sequence packing (padding, effective tokens/s).

    GLM_DATA_ROOT=../shared/data python bench/bench_data.py [--books 3] [--json OUT.json]

1. Masking: samples/s of the real pretraining pipeline in one process — `PretrainDataset.__getitem__`
   (docs/original-glm.md §5.1 raw sample from the corpus + `GLMMasker`) and `collate_pretrain` — on Gutenberg books tokenised
   with the BERT tokenizer (glm-base/large's), objective presets glm-base and glm-large, seq 512; against the
   training samples/s of the full 12-layer glm-base model (fp32, batch 1 x 512, measured in the same run).
2. Packing: padding fraction of SuperGLUE RTE train (pattern 0, seq 256, BERT tokenizer, the glm-large
   finetuning layout) and of corpus samples (glm-base objective at 512; glm-10b objective, whose
   short_seq_prob splits some samples into short pieces), each (a) padded to seq_length as the original code
   does, (b) padded to the batch's longest (our default collate), (c) packed with `glm.data.packing`.
   Effective tokens/s (non-padding tokens per second of training steps) packed vs padded-to-longest on the
   same samples (RTE: a random draw; corpus: the first samples in dataset order), with a 2-layer
   glm-base-shaped model, interleaved rounds, medians.

All rates are per CPU second of this process (`time.process_time`) with one intra-op thread
(`--threads 1`), as in bench_train.py: the shared 2-core machine's wall clock swings too much under other
users' load. Masking and the model are both single-threaded here, so their ratio is like for like. Masked corpus samples are longer than the raw 512
   tokens (one [sop] per span), so corpus rows hold the longest masked sample, rounded up to 64.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from glm.data.cloze import ClozeDataModule, collate_cloze, collate_cloze_packed
from glm.data.masking import GLMMasker, MaskingConfig, SpecialIds, sentence_end_from_tokenizer
from glm.data.packing import pack_samples, packing_stats
from glm.data.paths import require_data
from glm.data.pretrain import PretrainDataset, TokenizedCorpus, collate_pretrain, read_documents
from glm.data.seq2seq import Seq2SeqDataModule
from glm.model import GLM, GLMConfig
from glm.tasks.cloze import ClozeModule, cloze_loss
from glm.tasks.part_b import part_b_logits
from glm.tasks.pretrain import blank_infilling_loss
from glm.tasks.seq2seq import Seq2SeqModule
from glm.tokenizer import load_tokenizer

BOOKS = ["1342-0.txt", "84-0.txt", "11-0.txt", "1400-0.txt", "2701-0.txt"]


def corpus(tok, books: int) -> TokenizedCorpus:
    chunks, lengths = [], []
    for name in BOOKS[:books]:
        docs = [d for d in read_documents(require_data(f"gutenberg/{name}")) if d.strip()]
        for ids in tok.encode_batch(docs):
            if ids:
                chunks.append(np.asarray(ids, dtype=np.int64))
                lengths.append(len(ids))
    return TokenizedCorpus(np.concatenate(chunks), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))


def dataset(tok, corp: TokenizedCorpus, preset: str, seq: int, n: int) -> PretrainDataset:
    masker = GLMMasker(
        MaskingConfig.from_name(preset), SpecialIds.from_tokenizer(tok), sentence_end_from_tokenizer(tok)
    )
    return PretrainDataset(corp, np.arange(corp.num_documents), n, seq, 1234, "train", masker)


def masking_rate(ds: PretrainDataset, n: int, batch: int = 8) -> float:
    start = time.process_time()
    for i in range(0, n, batch):
        collate_pretrain([ds[k] for k in range(i, i + batch)])
    return n / (time.process_time() - start)


def train_step_fn(model: GLM):
    """One step as `PretrainModule` trains: the tied head at Part-B positions only (`part_b_logits`),
    `blank_infilling_loss`, torch's fused AdamW; packed batches carry their `segment_ids`."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)

    def step(batch: dict) -> None:
        opt.zero_grad(set_to_none=True)
        logits, targets, mask, _ = part_b_logits(model, batch)
        total, count = blank_infilling_loss(logits, targets, mask)
        (total / count.clamp_min(1)).backward()
        opt.step()

    return step


def model_samples_per_s(tok, seq: int, steps: int = 2) -> float:
    """Full glm-base (12 layers) training samples/s at batch 1 x seq (fp32)."""
    torch.manual_seed(0)
    cfg = GLMConfig.from_name(
        "glm-base", vocab_size=tok.vocab_size, hidden_dropout=0.0, attention_dropout=0.0
    )
    step = train_step_fn(GLM(cfg))
    g = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(0, cfg.vocab_size, (1, seq), generator=g),
        "targets": torch.randint(0, cfg.vocab_size, (1, seq), generator=g),
        "loss_mask": (torch.arange(seq) >= int(0.85 * seq)).float()[None],  # loss on Part B
        "position_ids": torch.zeros(1, 2, seq, dtype=torch.long),
        "sep": torch.tensor([int(0.85 * seq)]),
    }
    step(batch)  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.process_time()
        step(batch)
        times.append(time.process_time() - t0)
    return 1.0 / statistics.median(times)


def padded_batches(samples: list[dict], batch: int, pad_id: int) -> list[dict]:
    out = []
    for i in range(0, len(samples), batch):
        chunk = samples[i : i + batch]
        width = max(len(s["input_ids"]) for s in chunk)
        b = {
            "input_ids": torch.full((len(chunk), width), pad_id),
            "targets": torch.zeros(len(chunk), width, dtype=torch.long),
            "loss_mask": torch.zeros(len(chunk), width),
            "position_ids": torch.zeros(len(chunk), 2, width, dtype=torch.long),
            "sep": torch.tensor([int(s["sep"]) for s in chunk]),
        }
        for r, s in enumerate(chunk):
            n = len(s["input_ids"])
            b["input_ids"][r, :n] = torch.as_tensor(s["input_ids"])
            b["targets"][r, :n] = torch.as_tensor(s["targets"])
            b["loss_mask"][r, :n] = torch.as_tensor(s["loss_mask"]).float()
            b["position_ids"][r, :, :n] = torch.as_tensor(s["position_ids"])
        out.append(b)
    return out


def effective_tokens_per_s(
    samples: list[dict], seq: int, batch: int, pad_id: int, vocab: int, rounds: int
) -> dict:
    """Non-padding tokens/s of training steps over the same samples, padded-to-longest vs packed."""
    torch.manual_seed(0)
    cfg = GLMConfig.from_name(
        "glm-base", num_layers=2, vocab_size=vocab, hidden_dropout=0.0, attention_dropout=0.0
    )
    step = train_step_fn(GLM(cfg))
    real = sum(len(s["input_ids"]) for s in samples)
    unpacked = padded_batches(samples, batch, pad_id)
    packed = pack_samples(samples, seq, pad_id=pad_id)
    rows = packed["input_ids"].shape[0]
    packed_batches = [({k: v[i : i + batch] for k, v in packed.items()}) for i in range(0, rows, batch)]

    def run_unpacked() -> None:
        for b in unpacked:
            step(b)

    def run_packed() -> None:
        for b in packed_batches:
            step(b)

    times: dict[str, list[float]] = {"padded_to_longest": [], "packed": []}
    step(unpacked[0])  # warm-up (one step each)
    step(packed_batches[0])
    for _ in range(rounds):
        for name, fn in (("padded_to_longest", run_unpacked), ("packed", run_packed)):
            t0 = time.process_time()
            fn()
            times[name].append(time.process_time() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "samples": len(samples),
        "real_tokens": real,
        "unpacked_steps": len(unpacked),
        "packed_steps": len(packed_batches),
        "seconds": med,
        "effective_tokens_per_s": {k: real / v for k, v in med.items()},
        "packed_speedup": med["padded_to_longest"] / med["packed"],
    }


def interleaved_rates(
    runs: dict[str, tuple[Callable[[dict], None], list[dict]]], real: int, rounds: int
) -> dict:
    """Median CPU seconds of running each variant's batches (one warm-up step each, variants interleaved
    round by round) -> non-padding tokens/s of each and the packed/padded speedup."""
    for step, batches in runs.values():
        step(batches[0])
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for name, (step, batches) in runs.items():
            t0 = time.process_time()
            for b in batches:
                step(b)
            times[name].append(time.process_time() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "real_tokens": real,
        "slots": {k: sum(int(b["input_ids"].numel()) for b in runs[k][1]) for k in runs},
        "seconds": med,
        "effective_tokens_per_s": {k: real / v for k, v in med.items()},
        "packed_speedup": med["padded"] / med["packed"],
    }


def finetune_model(vocab: int) -> dict:
    """2-layer glm-base-shaped backbone, dropout 0 (the packed/padded comparison needs equal arithmetic)."""
    return {
        "preset": "glm-base",
        "num_layers": 2,
        "vocab_size": vocab,
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
    }


def cloze_packing(tok, task: str, batch: int, batches: int, rounds: int) -> dict:
    """`data.pack` for cloze finetuning through the real code: padding of the whole train split batched as
    training batches it (the default collate pads to the batch's longest sequence; packed rows of
    seq_length), and effective tokens/s of `ClozeModule.score` + loss + backward + AdamW on the first
    `batches` batches, padded vs packed."""
    dm = ClozeDataModule(task, tok, require_data("superglue").parent)
    feats = list(dm.load_split("train"))
    chunks = [feats[i : i + batch] for i in range(0, len(feats), batch)]

    def real_of(cs: list) -> int:
        return sum(len(s["input_ids"]) for c in cs for f in c for s in f.sequences)

    collate = {
        "padded": lambda c: collate_cloze(c, tok.pad_id),
        "packed": lambda c: collate_cloze_packed(c, tok.pad_id, dm.seq_length),
    }
    real = real_of(chunks)
    padding = {}
    for name, fn in collate.items():
        rows = slots = 0
        for c in chunks:
            ids = fn(c)["input_ids"]
            rows, slots = rows + ids.shape[0] * (ids.shape[1] if ids.dim() == 3 else 1), slots + ids.numel()
        padding[name] = {"rows": rows, "padding_fraction": 1.0 - real / slots}
    torch.manual_seed(0)
    module = ClozeModule(model=finetune_model(tok.vocab_size), optimizer={}, scheduler={}, task=task)
    module.configure_model()
    opt = torch.optim.AdamW(module.parameters(), lr=1e-5, fused=True)

    def step(b: dict) -> None:
        opt.zero_grad(set_to_none=True)
        scores, gen = module.score(b)
        cloze_loss(scores, b["label"], "cross_entropy", gen).backward()
        opt.step()

    timed = chunks[:batches]
    runs = {k: (step, [fn(c) for c in timed]) for k, fn in collate.items()}
    return {
        "task": task,
        "seq_length": dm.seq_length,
        "batch": batch,
        "examples": len(feats),
        "padding": padding,
        "timed_batches": len(timed),
        **interleaved_rates(runs, real_of(timed), rounds),
    }


def seq2seq_packing(tok, samples: int, batch: int, batches: int, rounds: int) -> dict:
    """`data.pack` for seq2seq through Seq2SeqDataModule / Seq2SeqModule.training_step on XSum pairs (S=608,
    T=60, the xsum experiment's layout): the padded layout vs compact samples packed into rows of S+T."""
    loaders = {}
    for name, pack in (("padded", False), ("packed", True)):
        dm = Seq2SeqDataModule(
            str(require_data("xsum")),
            tok,
            {"train": "validation.jsonl"},
            format="jsonl",
            bad_rows="skip",
            src_seq_length=608,
            tgt_seq_length=60,
            micro_batch_size=batch,
            max_samples={"train": samples},
            pack=pack,
        )
        dm.setup("fit")
        torch.manual_seed(0)  # the same shuffled order of samples for both
        loaders[name] = list(dm.train_dataloader())

    def real(b: dict) -> int:  # non-padding tokens: Part A without its padding + the target slots
        if "segment_ids" in b:
            return int((b["segment_ids"] > 0).sum())
        return int((b["input_ids"][:, :608] != tok.pad_id).sum() + b["loss_mask"].sum())

    total = sum(real(b) for b in loaders["padded"])
    assert total == sum(real(b) for b in loaders["packed"]), "padded and packed hold different samples"
    padding = {
        k: {
            "rows": sum(b["input_ids"].shape[0] for b in v),
            "padding_fraction": 1.0 - total / sum(b["input_ids"].numel() for b in v),
        }
        for k, v in loaders.items()
    }
    torch.manual_seed(0)
    module = Seq2SeqModule(
        model={**finetune_model(tok.vocab_size), "max_sequence_length": 1024}, optimizer={}, scheduler={}
    )
    module.configure_model()
    module.log = lambda *a, **k: None  # no trainer attached
    opt = torch.optim.AdamW(module.parameters(), lr=1e-5, fused=True)

    def step(b: dict) -> None:
        opt.zero_grad(set_to_none=True)
        module.training_step(b, 0).backward()
        opt.step()

    runs = {k: (step, v[:batches]) for k, v in loaders.items()}
    return {
        "samples": samples,
        "batch": batch,
        "padding": padding,
        "timed_batches": batches,
        **interleaved_rates(runs, sum(real(b) for b in loaders["padded"][:batches]), rounds),
    }


def stats_dict(lengths, seq: int, batch: int) -> dict:
    return {
        k: {"rows": v.rows, "padding_fraction": v.padding_fraction}
        for k, v in packing_stats(lengths, seq, batch).items()
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--books", type=int, default=3, help="Gutenberg books to tokenise (of 5)")
    p.add_argument("--mask-samples", type=int, default=200)
    p.add_argument(
        "--rte-samples", type=int, default=16, help="RTE samples in the effective-tokens/s measurement"
    )
    p.add_argument("--corpus-samples", type=int, default=8, help="corpus samples in that measurement")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument(
        "--finetune-batches", type=int, default=4, help="batches timed in the finetuning packing runs"
    )
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tok = load_tokenizer({"kind": "bert", "path": str(require_data("tokenizers/bert-base-uncased"))})
    t0 = time.perf_counter()
    corp = corpus(tok, args.books)
    print(
        f"corpus: {args.books} Gutenberg books, {corp.num_documents} paragraphs, {len(corp.tokens)} BERT tokens "
        f"(tokenised in {time.perf_counter() - t0:.1f}s); torch {torch.__version__}, {torch.get_num_threads()} "
        "threads",
        flush=True,
    )
    res: dict = {"masking_samples_per_s": {}}
    for preset in ("glm-base", "glm-large"):
        ds = dataset(tok, corp, preset, 512, args.mask_samples)
        masking_rate(ds, 16)  # warm-up
        res["masking_samples_per_s"][preset] = masking_rate(ds, args.mask_samples)
        print(
            f"masking pipeline ({preset} objective, seq 512): {res['masking_samples_per_s'][preset]:.0f} samples/s",
            flush=True,
        )
    res["model_train_samples_per_s"] = model_samples_per_s(tok, 512)
    res["masking_vs_model"] = {
        k: v / res["model_train_samples_per_s"] for k, v in res["masking_samples_per_s"].items()
    }
    print(
        f"glm-base (12 layers) training: {res['model_train_samples_per_s']:.3f} samples/s -> masking is "
        + ", ".join(f"{v:.0f}x ({k})" for k, v in res["masking_vs_model"].items())
        + " faster (target >= 20x)",
        flush=True,
    )

    # ---- packing: padding fractions ----
    dm = ClozeDataModule("rte", tok, require_data("superglue").parent, seq_length=256)
    rte = [f.sequences[0] for f in dm.load_split("train")]
    corpus_sets = {}
    for preset in ("glm-base", "glm-10b"):
        ds = dataset(tok, corp, preset, 512, 400)
        corpus_sets[preset] = [vars(s) for i in range(len(ds)) for s in ds[i]]
    # masked corpus samples are longer than the raw 512 (Part B adds one [sop] per span): rows hold the longest
    row = {k: -(-max(len(s["input_ids"]) for s in v) // 64) * 64 for k, v in corpus_sets.items()}
    res["padding"] = {
        "rte_train_seq256_batch16": stats_dict([len(s["input_ids"]) for s in rte], 256, 16),
        **{
            f"corpus_{k}_row{row[k]}_batch8": stats_dict([len(s["input_ids"]) for s in v], row[k], 8)
            for k, v in corpus_sets.items()
        },
    }
    for name, st in res["padding"].items():
        print(
            f"padding {name:28s}: "
            + ", ".join(f"{k} {100 * v['padding_fraction']:.1f}% ({v['rows']} rows)" for k, v in st.items()),
            flush=True,
        )
    # ---- packing: effective tokens/s ----
    rng = np.random.default_rng(0)
    rte_pick = [rte[i] for i in rng.choice(len(rte), args.rte_samples, replace=False)]
    natural = corpus_sets["glm-10b"][
        : args.corpus_samples
    ]  # in dataset order: the mixture's natural share of short pieces
    res["effective_tokens_per_s"] = {
        "rte_train_seq256": effective_tokens_per_s(
            rte_pick, 256, 16, tok.pad_id, tok.vocab_size, args.rounds
        ),
        f"corpus_glm10b_row{row['glm-10b']}": effective_tokens_per_s(
            natural, row["glm-10b"], 8, tok.pad_id, tok.vocab_size, args.rounds
        ),
    }
    for name, r in res["effective_tokens_per_s"].items():
        e = r["effective_tokens_per_s"]
        print(
            f"effective tokens/s {name}: padded-to-longest {e['padded_to_longest']:.0f}, packed {e['packed']:.0f} "
            f"({r['packed_speedup']:.2f}x; {r['unpacked_steps']} vs {r['packed_steps']} steps)",
            flush=True,
        )
    # ---- packing for finetuning, through the datamodules and task modules (data.pack) ----
    res["finetuning_packing"] = {
        "cloze_rte": cloze_packing(tok, "rte", 16, args.finetune_batches, args.rounds),
        "seq2seq_xsum": seq2seq_packing(tok, 256, 16, args.finetune_batches, args.rounds),
    }
    for name, r in res["finetuning_packing"].items():
        e = r["effective_tokens_per_s"]
        print(
            f"finetuning {name} (batch {r['batch']}): padding "
            + ", ".join(
                f"{k} {100 * v['padding_fraction']:.1f}% ({v['rows']} rows)" for k, v in r["padding"].items()
            )
            + f"; effective tokens/s padded {e['padded']:.0f}, packed {e['packed']:.0f} ({r['packed_speedup']:.2f}x, "
            f"{r['timed_batches']} batches)",
            flush=True,
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
