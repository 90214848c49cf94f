"""Seq2seq packing (`data.pack=true`): the compact layout (docs/original-glm.md §8.1 without the padding), packed rows that
compute exactly what the compact samples compute one by one (loss and gradients, float64 model, against a
full-logits hand formula), fewer rows and less padding than the padded layout on real XSum pairs, the
`data.pack` check, and `run.py +experiment=xsum data.pack=true` end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import need_data, run_cli

from glm.data.seq2seq import (
    MASK_POS,
    Seq2SeqDataModule,
    Seq2SeqDataset,
    Seq2SeqExample,
    build_seq2seq_sample,
    build_source,
    collate_seq2seq,
    collate_seq2seq_packed,
)
from glm.errors import ConfigError
from glm.tasks.seq2seq import Seq2SeqModule

S, T = 96, 24  # glm-tiny holds 512 positions; short enough for fast float64 forwards
EPS = 0.1


@pytest.fixture(scope="module")
def bert():
    from glm.tokenizer import load_tokenizer

    return load_tokenizer({"kind": "bert", "path": str(need_data("tokenizers/bert-base-uncased"))})


@pytest.fixture(scope="module")
def xsum_examples() -> list[Seq2SeqExample]:
    """The first 64 good pairs of the shared XSum validation file (bad rows skipped, as the xsum config)."""
    from glm.data.seq2seq import read_examples

    return read_examples(need_data("xsum/validation.jsonl"), bad_rows="skip", max_samples=64)


def _module() -> Seq2SeqModule:
    torch.manual_seed(0)
    module = Seq2SeqModule(
        model={"preset": "glm-tiny", "vocab_size": 30592, "hidden_dropout": 0.0, "attention_dropout": 0.0},
        optimizer={},
        scheduler={},
        label_smoothing=EPS,
    )
    module.configure_model()
    module.model.double()
    module.log = lambda *a, **k: None  # no trainer attached
    return module


def _reference_sums(module: Seq2SeqModule, samples) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent reference: each compact sample alone (batch of 1, scalar sep, full logits, no index, no
    segment ids), docs/original-glm.md §8.2 written out in float64: per-sample `sum(loss_t)` over the target and its count."""
    sums, counts = [], []
    for s in samples:
        ids = torch.as_tensor(s.input_ids)[None]
        pos = torch.as_tensor(s.position_ids)[None]
        logits = module.model(ids, pos, sep=torch.tensor([s.sep])).logits[0].double()
        lp = torch.log_softmax(logits, -1)
        tgt = torch.as_tensor(s.targets)
        loss_t = (1 - EPS) * -lp.gather(-1, tgt[:, None])[:, 0] + EPS * -lp.mean(-1)
        mask = torch.as_tensor(s.loss_mask).double()
        sums.append((loss_t * mask).sum())
        counts.append(mask.sum())
    return torch.stack(sums), torch.stack(counts)


# --------------------------------------------------------------------------------------------------
# The compact layout, token by token (docs/original-glm.md §8.1 / §3(c) without the padding)
# --------------------------------------------------------------------------------------------------
def test_compact_layout_of_one_real_xsum_pair_token_by_token(bert, xsum_examples) -> None:
    ex = xsum_examples[0]
    article = bert.encode(" " + ex.source)
    summary = bert.encode(" " + ex.target)
    prompt = bert.encode(" Content:")
    assert len(prompt) == 2 and len(article) > S and 10 < len(summary) < T - 1  # cut source, whole target
    ds = Seq2SeqDataset([ex], bert, S, T, compact=True)
    s = ds[0]
    room = S - 2 - len(prompt)
    part_a = [bert.cls_id, bert.mask_id, *prompt, *article[:room]]  # [CLS] [MASK] " Content:" article
    target = [*summary, bert.eop_id]
    n, a = len(target), len(part_a)
    assert a == S and ds.stats["truncated_source"] == 1  # this article fills Part A: nothing to drop there
    assert s.input_ids.tolist() == part_a + [bert.sop_id, *summary]  # Part B = [sop] + target[:-1], no pad
    assert s.targets.tolist()[a:] == target
    assert s.loss_mask.tolist() == [0.0] * a + [1.0] * n
    assert s.position_ids[0].tolist() == list(range(a)) + [MASK_POS] * n  # Part B at the [MASK] (index 1)
    assert s.position_ids[1].tolist() == [0] * a + list(range(1, n + 1))
    assert s.sep == a and s.mask_pos == 1 == part_a.index(bert.mask_id)

    # a short article: Part A is shorter than S and carries no padding; the padded layout has both pads
    short = Seq2SeqExample(" ".join(ex.source.split()[:12]), ex.target, "short")
    c = Seq2SeqDataset([short], bert, S, T, compact=True)[0]
    p = Seq2SeqDataset([short], bert, S, T)[0]
    a = 2 + len(prompt) + len(bert.encode(" " + short.source))
    assert c.sep == a < S and len(c.input_ids) == a + n and bert.pad_id not in c.input_ids.tolist()
    assert p.sep == S and len(p.input_ids) == S + T and p.input_ids.tolist()[a:S] == [bert.pad_id] * (S - a)
    # compact = padded with both paddings cut out, Part-B positions and blocks unchanged
    keep = np.r_[np.arange(a), np.arange(S, S + n)]
    assert (
        c.input_ids.tolist() == p.input_ids[keep].tolist() and c.targets.tolist() == p.targets[keep].tolist()
    )
    assert c.position_ids[1].tolist() == p.position_ids[1, keep].tolist()
    assert c.position_ids[0, a:].tolist() == p.position_ids[0, S : S + n].tolist() == [1] * n


def test_compact_layout_by_hand_with_a_cut_target() -> None:
    class Tok:  # the ids of the contract (docs/contracts.md); words are their own ids
        pad_id, cls_id, mask_id, smask_id, sop_id, eop_id = 0, 2, 4, 5, 7, 8

    src = build_source([30, 31], [20], Tok(), src_seq_length=8, task_mask=True, pad=False)
    assert src == [2, 5, 20, 30, 31]  # [CLS] [sMASK] Content: a b, no padding to 8
    s = build_seq2seq_sample(src, [40, 41, 42], Tok(), tgt_seq_length=3, pad=False)
    # target = x y z [eop] cut to T = 3 (the eop is lost, docs/original-glm.md §8.1): Part B = [sop] x y
    assert s.input_ids.tolist() == [2, 5, 20, 30, 31, 7, 40, 41]
    assert s.targets.tolist()[5:] == [40, 41, 42] and s.loss_mask.tolist() == [0] * 5 + [1] * 3
    assert s.position_ids.tolist() == [[0, 1, 2, 3, 4, 1, 1, 1], [0, 0, 0, 0, 0, 1, 2, 3]]
    assert s.sep == 5


# --------------------------------------------------------------------------------------------------
# Packed == compact one by one (float64)
# --------------------------------------------------------------------------------------------------
def test_packed_loss_and_gradients_equal_the_compact_samples_alone(bert, xsum_examples) -> None:
    from glm.data.packing import per_sample_sum

    exs = list(xsum_examples[:6])
    # shorter articles so that several samples share a row (real ones fill S: one per row, nothing to pack)
    exs += [
        Seq2SeqExample(" ".join(e.source.split()[:k]), e.target, "cut")
        for e, k in zip(exs, (8, 20, 35), strict=False)
    ]
    samples = Seq2SeqDataset(exs, bert, S, T, compact=True).samples
    batch = collate_seq2seq_packed(samples, S + T, bert.pad_id)
    R = batch["input_ids"].shape[0]
    assert len(samples) > R and int(batch["segment_ids"].max()) >= 2  # rows are shared
    assert batch["sep"].shape == (R, S + T) and batch["input_ids"].shape == (R, S + T)
    module = _module()
    ref_sums, ref_counts = _reference_sums(module, samples)
    assert (ref_counts >= 10).all() and (ref_sums / ref_counts > 5.0).all()  # real losses, ~ln V per token

    per_tok, mask, index = module.part_b_losses(batch)
    owner = torch.gather(batch["sample_index"], 1, index)
    sums = per_sample_sum(per_tok * mask, owner, len(samples))
    counts = per_sample_sum(mask, owner, len(samples))
    assert counts.tolist() == ref_counts.tolist()
    torch.testing.assert_close(sums, ref_sums, rtol=1e-9, atol=0)
    # the head is projected at Part B only: as many slots per row as that row's largest target total
    assert index.shape[1] == int(batch["loss_mask"].sum(1).max()) < (S + T) // 2

    # training_step: the token-weighted mean; its gradients equal the reference's for every parameter
    params = [p for p in module.model.parameters() if p.requires_grad]
    loss = module.training_step(batch, 0)
    ref_loss = _reference_sums(module, samples)[0].sum() / ref_counts.sum()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=0)
    g_packed = torch.autograd.grad(loss, params)
    g_ref = torch.autograd.grad(ref_loss, params)
    for name_p, a, b in zip(
        (n for n, p in module.model.named_parameters() if p.requires_grad), g_packed, g_ref, strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12, msg=name_p)
    assert sum(float(g.abs().sum()) for g in g_ref) > 1.0

    # the padded layout is another function (Part-A padding is attended): packing could not reproduce it
    padded = collate_seq2seq(Seq2SeqDataset(exs, bert, S, T).samples, bert.pad_id)
    with torch.no_grad():
        assert abs(float(module.training_step(padded, 0)) - float(ref_loss)) > 1e-4


# --------------------------------------------------------------------------------------------------
# The datamodule: fewer rows and less padding, same samples per batch, decoding inputs
# --------------------------------------------------------------------------------------------------
def _loader_batches(dm: Seq2SeqDataModule) -> list[dict[str, torch.Tensor]]:
    torch.manual_seed(123)  # the RandomSampler's shuffle: the same order packed and padded
    return list(dm.train_dataloader())


def test_datamodule_packs_the_same_batches_into_fewer_rows(bert, tmp_path) -> None:
    src = need_data("xsum/validation.jsonl")
    kw = {
        "splits": {"train": src.name, "test": src.name},
        "format": "jsonl",
        "bad_rows": "skip",
        "max_samples": {"train": 64, "test": 5},
        "micro_batch_size": 16,
    }
    # the xsum experiment's lengths: S = 608, T = 60
    dms = {p: Seq2SeqDataModule(str(src.parent), bert, pack=p, **kw) for p in (False, True)}
    for dm in dms.values():
        dm.setup("fit")
    padded, packed = _loader_batches(dms[False]), _loader_batches(dms[True])
    assert len(padded) == len(packed) == 4  # 64 samples, micro batch 16: the sampler is unchanged
    L = 608 + 60
    for a, b in zip(padded, packed, strict=True):
        assert b["input_ids"].shape[1] == L == a["input_ids"].shape[1]
        # the same 16 samples in each batch, identified by their target sequences
        got = sorted(
            tuple(b["targets"][(b["sample_index"] == i) & (b["loss_mask"] > 0)].tolist()) for i in range(16)
        )
        want = sorted(tuple(a["targets"][r][a["loss_mask"][r] > 0].tolist()) for r in range(16))
        assert got == want
    # real tokens: each sample's source and target (its compact length), counted on the dataset itself
    real = sum(len(s.input_ids) for s in dms[True].datasets["train:True"].samples)
    assert real == sum(int((b["segment_ids"] > 0).sum()) for b in packed)
    rows_padded = sum(a["input_ids"].shape[0] for a in padded)
    rows_packed = sum(b["input_ids"].shape[0] for b in packed)
    assert rows_padded == 64
    # measured on these 64 pairs in the run seed's (unset: 0) epoch order: a sample is 334 real tokens on
    # average, half of a 668-token row
    assert real == 21_401 and rows_packed == 34
    assert 1 - real / (rows_padded * L) == pytest.approx(0.4994, abs=1e-4)  # padding fraction, padded
    assert 1 - real / (rows_packed * L) == pytest.approx(0.0577, abs=1e-4)  # padding fraction, packed

    # decoding inputs: unpacked compact sources, their right padding marked by context_mask
    dm = dms[True]
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    lengths = [len(s.input_ids) for s in dm.datasets["test:False"].samples]
    assert batch["sep"].tolist() == lengths and batch["context_mask"].sum(1).tolist() == lengths
    assert "context_mask" not in next(iter(dms[False].test_dataloader()))


def test_bad_pack_value_names_data_pack(tmp_path) -> None:
    for bad in ("yes", 1, None):
        with pytest.raises(ConfigError, match=r"data\.pack: expected true/false"):
            Seq2SeqDataModule(str(tmp_path), object(), splits={"train": "x"}, pack=bad)


# --------------------------------------------------------------------------------------------------
# run.py end to end
# --------------------------------------------------------------------------------------------------
def test_xsum_experiment_with_pack_end_to_end(tmp_path: Path) -> None:
    need_data("xsum/test.jsonl")
    need_data("xsum/validation.jsonl")
    need_data("tokenizers/bert-base-uncased/vocab.txt")
    run_dir = tmp_path / "run"
    r = run_cli(
        [
            "+experiment=xsum",
            "model=glm_tiny",
            "data.pack=true",
            f"hydra.run.dir={run_dir}",
            "data.max_samples.train=8",
            "data.max_samples.test=4",
            # glm-tiny holds 512 positions: shorter than XSum's 608 + 60 (the truncation is counted)
            "data.src_seq_length=96",
            "data.tgt_seq_length=24",
            "trainer.max_steps=2",
            "callbacks.progress=null",
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (run_dir / "FAILED").exists()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("test/rouge1", "test/rouge2", "test/rougeL", "train/loss"):
        assert key in metrics and math.isfinite(metrics[key]), key
    # a random glm-tiny over the BERT vocabulary sits near ln V = 10.3 (label smoothing adds a little)
    assert 8.0 < metrics["train/loss"] < 12.0, metrics["train/loss"]
    assert (
        "data.pack: compact training samples packed into rows of 120 tokens"
        in (run_dir / "run.log").read_text()
    )
    hyps = (run_dir / "test.jsonl.hyps").read_text(encoding="utf-8").splitlines()
    assert len(hyps) == 4 and all(h.strip() for h in hyps)
