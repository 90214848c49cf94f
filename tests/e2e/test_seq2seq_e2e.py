"""Seq2seq end to end on the shared XSum files: `run.py +experiment=xsum` (finetune on a slice of
validation.jsonl, beam-decode a slice of test.jsonl) writes hyps/refs, ROUGE in metrics.json and a W&B
table; and a tiny model overfit on 16 pairs reproduces them through the toolkit's beam search."""

from __future__ import annotations

import json
import math
from pathlib import Path

from conftest import need_data, run_cli

N_TRAIN, N_TEST = 8, 4


def _first_records(path: Path, n: int) -> list[dict]:
    out = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if rec["document"].strip() and rec["summary"].strip():
                out.append(rec)
            if len(out) == n:
                break
    return out


def test_xsum_experiment_end_to_end(tmp_path: Path) -> None:
    test_file = need_data("xsum/test.jsonl")
    need_data("xsum/validation.jsonl")
    need_data("tokenizers/bert-base-uncased/vocab.txt")
    run_dir = tmp_path / "run"
    r = run_cli(
        [
            "+experiment=xsum",
            "model=glm_tiny",
            "logger=wandb",
            f"hydra.run.dir={run_dir}",
            f"data.max_samples.train={N_TRAIN}",
            f"data.max_samples.test={N_TEST}",
            # glm-tiny holds 512 positions: shorter than XSum's 608 + 60 (the truncation is counted)
            "data.src_seq_length=96",
            "data.tgt_seq_length=24",
            "trainer.max_steps=2",
            "callbacks.progress=null",
        ],
        tmp_path,
        env={"WANDB_MODE": "offline"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (run_dir / "FAILED").exists()

    # one line per test example, the references are the first N_TEST summaries of test.jsonl in order
    hyps = (run_dir / "test.jsonl.hyps").read_text(encoding="utf-8").split("\n")
    refs = (run_dir / "test.jsonl.refs").read_text(encoding="utf-8").split("\n")
    assert hyps[-1] == "" and refs[-1] == ""  # newline-terminated
    assert len(hyps) - 1 == len(refs) - 1 == N_TEST
    assert refs[:-1] == [rec["summary"].replace("\n", " ") for rec in _first_records(test_file, N_TEST)]
    assert all(h.strip() for h in hyps[:-1])  # min length 10 forces a non-empty summary

    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("test/rouge1", "test/rouge2", "test/rougeL", "train/loss"):
        assert key in metrics and math.isfinite(metrics[key]), key
        assert 0.0 <= metrics[key] <= (1.0 if key.startswith("test/") else 20.0), key
    # glm-tiny grew its table to the BERT tokenizer's padded vocabulary; 2 optimizer steps were taken
    assert "model.vocab_size: 30592" in (run_dir / "run.log").read_text()
    assert (run_dir / "export" / "model_config.yaml").is_file()
    # the counted skip of the known bad record is not reached in the first 8 lines; truncation is counted
    assert "truncated_source" in (run_dir / "run.log").read_text()

    # the W&B run (offline) holds the table of sample summaries: columns and the first rows
    tables = list(run_dir.glob("wandb/offline-run-*/files/media/table/test/samples_*.table.json"))
    assert len(tables) == 1, sorted(p.name for p in run_dir.rglob("*"))[:50]
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["reference", "prediction"]
    assert [row[0] for row in table["data"]] == refs[:-1]
    assert [row[1] for row in table["data"]] == hyps[:-1]


def test_tiny_model_overfits_16_xsum_pairs_and_beam_search_reproduces_them(tmp_path: Path) -> None:
    """The whole loop: layout, label-smoothed loss, beam search with the KV cache, eop/pad removal,
    detokenisation and ROUGE. 16 real XSum pairs (sources cut to 40 words, summaries to 10 so that
    summary + eop fits the target length and the model learns to stop), a 1024-piece sentencepiece
    tokenizer trained on 300 XSum records (the BERT vocabulary makes every step 25x slower), glm-tiny."""
    import lightning as L
    import torch
    from rouge_score import rouge_scorer

    from glm.data.seq2seq import Seq2SeqDataModule
    from glm.tasks.seq2seq import Seq2SeqModule
    from glm.tokenizer import train_sentencepiece

    test_file = need_data("xsum/test.jsonl")
    records = _first_records(test_file, 300)
    pairs = [
        {"document": " ".join(r["document"].split()[:40]), "summary": " ".join(r["summary"].split()[:10])}
        for r in records[:16]
    ]
    data = tmp_path / "data"
    data.mkdir()
    (data / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    (data / "corpus.txt").write_text(
        "\n".join(r[k] for r in records for k in ("document", "summary")), "utf-8"
    )
    tok = train_sentencepiece(
        [data / "corpus.txt"], tmp_path / "tok", vocab_size=1024, progress=False, quiet=True
    )

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one thread avoids oversubscription (10x slower steps)
    try:
        L.seed_everything(0)
        dm = Seq2SeqDataModule(
            str(data),
            tok,
            splits={"train": "pairs.jsonl", "test": "pairs.jsonl"},
            format="jsonl",
            src_seq_length=64,
            tgt_seq_length=40,
            micro_batch_size=16,
            eval_batch_size=16,
        )
        module = Seq2SeqModule(
            model={
                "preset": "glm-tiny",
                "vocab_size": tok.vocab_size,
                "hidden_dropout": 0.0,
                "attention_dropout": 0.0,
            },
            optimizer={"lr": 5e-3, "weight_decay": 0.0},
            scheduler={"warmup_ratio": 0.05, "decay_style": "cosine", "min_lr_ratio": 0.1},
            generation={"num_beams": 4, "length_penalty": 1.0, "no_repeat_ngram_size": 3},
            label_smoothing=0.1,
            output_dir=str(tmp_path / "out"),
        )
        kwargs = dict(
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
            gradient_clip_val=1.0,
        )
        L.Trainer(**kwargs).test(module, datamodule=dm, verbose=False)  # before training: a random model
        untrained = (tmp_path / "out" / "test.jsonl.hyps").read_text(encoding="utf-8").splitlines()
        trainer = L.Trainer(max_steps=150, **kwargs)
        trainer.fit(module, datamodule=dm)
        final_loss = float(trainer.callback_metrics["train/loss"])
        trainer.test(module, datamodule=dm, verbose=False)
    finally:
        torch.set_num_threads(threads)

    assert dm.datasets["train:True"].stats["truncated_target"] == 0  # every target keeps its eop
    assert final_loss < 1.5  # label smoothing 0.1 keeps it above ~0.8
    hyps = (tmp_path / "out" / "test.jsonl.hyps").read_text(encoding="utf-8").splitlines()
    refs = [p["summary"] for p in pairs]
    assert (tmp_path / "out" / "test.jsonl.refs").read_text(encoding="utf-8").splitlines() == refs
    logged = float(trainer.callback_metrics["test/rougeL"])
    assert logged >= 0.9, list(zip(hyps, refs, strict=True))
    # independent recomputation with rouge_score alone (no sentence post-processing): the same verdict
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    direct = sum(scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs, strict=True)) / len(refs)
    assert direct >= 0.9
    assert sum(h == r for h, r in zip(hyps, refs, strict=True)) >= 12  # most summaries come back verbatim
    before = sum(scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(untrained, refs, strict=True)) / len(
        refs
    )
    assert before < 0.2  # the score is learnt, not an artefact of decoding or scoring
