"""Sequence packing: hand-checked layouts, bin packing, and packed == unpacked per-sample losses through the
real GLM forward on real SuperGLUE RTE cloze features and on real-corpus pretraining samples (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from glm.data.packing import pack_bins, pack_samples, packing_stats, per_sample_sum
from glm.model import GLM, GLMConfig


def _sample(ids, sep, targets=None, loss=None, pos=None, blocks=None) -> dict:
    n = len(ids)
    return {
        "input_ids": np.asarray(ids),
        "sep": sep,
        "targets": np.asarray(targets if targets is not None else [0] * n),
        "loss_mask": np.asarray(loss if loss is not None else [0] * n),
        "position_ids": np.stack(
            [
                np.asarray(pos if pos is not None else range(n)),
                np.asarray(blocks if blocks is not None else [0] * n),
            ]
        ),
    }


# ---------------------------------------------------------------------------------------------------
# Layout and bin packing, by hand
# ---------------------------------------------------------------------------------------------------
def test_hand_built_layout() -> None:
    a = _sample([11, 12, 13], sep=2, targets=[0, 0, 7], loss=[0, 0, 1], pos=[0, 1, 1], blocks=[0, 0, 1])
    b = _sample([21, 22], sep=1, targets=[0, 5], loss=[0, 1], pos=[0, 0], blocks=[0, 1])
    c = _sample([31, 32, 33, 34], sep=4)
    # first fit decreasing at L=6: c (4) opens row 0, a (3) does not fit there -> row 1, b (2) fills row 0
    out = pack_samples([a, b, c], seq_length=6, pad_id=99)
    assert out["input_ids"].tolist() == [[21, 22, 31, 32, 33, 34], [11, 12, 13, 99, 99, 99]]
    assert out["segment_ids"].tolist() == [[1, 1, 2, 2, 2, 2], [1, 1, 1, 0, 0, 0]]
    assert out["sample_index"].tolist() == [[1, 1, 2, 2, 2, 2], [0, 0, 0, -1, -1, -1]]
    # per-token Part-A end as a row index: b ends at 0+1, c at 2+4; a at 2; padding 0
    assert out["sep"].tolist() == [[1, 1, 6, 6, 6, 6], [2, 2, 2, 0, 0, 0]]
    assert out["position_ids"][:, 0].tolist() == [[0, 0, 0, 1, 2, 3], [0, 1, 1, 0, 0, 0]]
    assert out["position_ids"][:, 1].tolist() == [[0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0]]
    assert out["targets"].tolist() == [[0, 5, 0, 0, 0, 0], [0, 0, 7, 0, 0, 0]]
    assert out["loss_mask"].tolist() == [[0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0]]
    assert out["loss_mask"].dtype == torch.float32 and out["input_ids"].dtype == torch.long


def test_bins_first_fit_decreasing_and_sequential() -> None:
    lengths = [5, 4, 3, 3, 2, 2, 1]
    # 5,4 -> row 0 (1 left); 3,3,2,2 -> row 1 (full); 1 -> row 0 (full)
    assert pack_bins(lengths, 10) == [[0, 1, 6], [2, 3, 4, 5]]
    # next fit in input order: 5+4 | 3+3+2+2 = 10 | 1
    assert pack_bins(lengths, 10, order="sequential") == [[0, 1], [2, 3, 4, 5], [6]]
    with pytest.raises(ValueError, match="sample 2 has length 11"):
        pack_bins([3, 4, 11], 10)
    with pytest.raises(ValueError, match="order must be one of"):
        pack_bins([3], 10, order="best")


def test_padding_stats_by_hand() -> None:
    stats = packing_stats([3, 5, 2, 6], seq_length=8, batch_size=2)
    assert stats["pad_to_seq_length"].padding_fraction == pytest.approx(1 - 16 / 32)
    assert stats["pad_to_longest"].padding_fraction == pytest.approx(1 - 16 / (2 * 5 + 2 * 6))
    assert stats["packed"].rows == 2 and stats["packed"].padding_fraction == pytest.approx(0.0)


def test_bad_samples_name_index_and_field() -> None:
    good = _sample([1, 2, 3], sep=1)
    with pytest.raises(ValueError, match="sample 1 has 3 tokens, more than seq_length=2"):
        pack_samples([_sample([1], 1), good], seq_length=2)
    bad = dict(good, loss_mask=np.zeros(2))
    with pytest.raises(ValueError, match="sample 1 field 'loss_mask' has shape"):
        pack_samples([good, bad], seq_length=8)
    with pytest.raises(ValueError, match="sample 0 field 'sep' must be an int in \\[0, 3\\]"):
        pack_samples([dict(good, sep=4)], seq_length=8)
    with pytest.raises(ValueError, match="sample 0 has no field 'targets'"):
        pack_samples([{k: v for k, v in good.items() if k != "targets"}], seq_length=8)


def _check_invariants(samples, out, seq_length: int) -> None:
    rows = out["input_ids"].shape[0]
    assert out["input_ids"].shape == (rows, seq_length)
    owner, seg = out["sample_index"], out["segment_ids"]
    for r in range(rows):
        s = seg[r]
        real = s > 0
        # real tokens first, then padding; segments 1..k contiguous and increasing
        assert not (real[1:] & ~real[:-1]).any()
        k = int(s.max())
        assert torch.equal(torch.unique_consecutive(s[real]), torch.arange(1, k + 1))
    for i, smp in enumerate(samples):
        where = owner == i
        r = int(where.nonzero()[0, 0])
        cols = where[r].nonzero()[:, 0]
        assert int(where.sum()) == len(smp["input_ids"]) == len(cols)
        assert torch.equal(cols, torch.arange(int(cols[0]), int(cols[0]) + len(cols)))  # one contiguous run
        assert out["input_ids"][r, cols].tolist() == list(map(int, smp["input_ids"]))
        assert out["position_ids"][r, :, cols].tolist() == np.asarray(smp["position_ids"]).tolist()
        assert (out["sep"][r, cols] == int(cols[0]) + int(smp["sep"])).all()
    assert float(out["loss_mask"].sum()) == pytest.approx(sum(float(np.sum(s["loss_mask"])) for s in samples))


# ---------------------------------------------------------------------------------------------------
# Packed == unpacked through the real forward
# ---------------------------------------------------------------------------------------------------
def _model(vocab: int, max_len: int) -> GLM:
    torch.manual_seed(0)
    cfg = GLMConfig(
        num_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        vocab_size=vocab,
        max_sequence_length=max_len,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        attention="sdpa",
    )
    return GLM(cfg).double().eval()


def _compact_vocab(samples: list[dict], pad_id: int) -> tuple[list[dict], int, int]:
    """Relabel the token ids that occur (inputs and targets) as 0..K-1, a bijection: a random model over K
    rows instead of the 30k-row BERT table keeps float64 logits small; the layouts are untouched."""
    used = np.unique(
        np.concatenate([[pad_id]] + [np.concatenate([s["input_ids"], s["targets"]]) for s in samples])
    )
    remap = {int(t): i for i, t in enumerate(used)}
    out = [
        dict(
            s,
            input_ids=np.array([remap[int(t)] for t in s["input_ids"]]),
            targets=np.array([remap[int(t)] for t in s["targets"]]),
        )
        for s in samples
    ]
    return out, len(used), remap[pad_id]


def _token_nll(model: GLM, batch: dict, **kwargs) -> torch.Tensor:
    logits = model(batch["input_ids"], batch["position_ids"], sep=batch["sep"], **kwargs).logits
    nll = F.cross_entropy(logits.transpose(1, 2), batch["targets"], reduction="none")
    return nll * batch["loss_mask"].double()


def _unpacked_losses(model: GLM, samples: list[dict], pad_id: int, batch_size: int = 8) -> torch.Tensor:
    """Reference: right-padded batches of `batch_size` samples with a per-sample sep `[B]` (no packing)."""
    losses = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        width = max(len(s["input_ids"]) for s in chunk)
        batch = {
            "input_ids": torch.full((len(chunk), width), pad_id),
            "targets": torch.zeros(len(chunk), width, dtype=torch.long),
            "loss_mask": torch.zeros(len(chunk), width),
            "position_ids": torch.zeros(len(chunk), 2, width, dtype=torch.long),
            "sep": torch.tensor([int(s["sep"]) for s in chunk]),
        }
        for b, s in enumerate(chunk):
            n = len(s["input_ids"])
            batch["input_ids"][b, :n] = torch.as_tensor(s["input_ids"])
            batch["targets"][b, :n] = torch.as_tensor(s["targets"])
            batch["loss_mask"][b, :n] = torch.as_tensor(s["loss_mask"]).float()
            batch["position_ids"][b, :, :n] = torch.as_tensor(s["position_ids"])
        losses.append(_token_nll(model, batch).sum(-1))
    return torch.cat(losses)


def _packed_losses(
    model: GLM, samples: list[dict], seq_length: int, pad_id: int
) -> tuple[torch.Tensor, dict]:
    out = pack_samples(samples, seq_length, pad_id=pad_id)
    nll = _token_nll(model, out, segment_ids=out["segment_ids"])
    return per_sample_sum(nll, out["sample_index"], len(samples)), out


@pytest.fixture(scope="module")
def bert():
    from conftest import need_data

    from glm.tokenizer import load_tokenizer

    return load_tokenizer({"kind": "bert", "path": str(need_data("tokenizers/bert-base-uncased"))})


def test_rte_cloze_features_packed_equal_unpacked(bert) -> None:
    from conftest import need_data

    from glm.data.cloze import ClozeDataModule

    need_data("superglue/RTE/train.jsonl")
    dm = ClozeDataModule(
        "rte", bert, need_data("superglue").parent, seq_length=256, max_train_examples=24, multi_token=True
    )  # candidates with answers: a loss on every Part B
    samples = [seq for f in dm.load_split("train") for seq in f.sequences]
    assert len(samples) == 48 and all(float(s["loss_mask"].sum()) >= 2 for s in samples)
    samples, vocab, pad_id = _compact_vocab(samples, bert.pad_id)
    model = _model(vocab, 256)
    with torch.no_grad():
        reference = _unpacked_losses(model, samples, pad_id)
        packed, out = _packed_losses(model, samples, 256, pad_id)
    _check_invariants(samples, out, 256)
    assert out["input_ids"].shape[0] < len(samples) // 2  # RTE rows are short: several per packed row
    torch.testing.assert_close(packed, reference, rtol=1e-10, atol=1e-10)
    assert (reference > 1.0).all()  # real losses (random model, ~log V per target token), not zeros


def test_corpus_pretraining_samples_packed_equal_unpacked(bert) -> None:
    from conftest import need_data

    from glm.data.masking import GLMMasker, MaskingConfig, SpecialIds, sample_rng, sentence_end_from_tokenizer

    text = need_data("gutenberg/1342-0.txt").read_text(encoding="utf-8")[20_000:60_000]
    tokens = np.asarray(bert.encode(text), dtype=np.int64)
    # token-level and document-level blanks (glm-doc mixture) on short pieces of varying length
    masker = GLMMasker(
        MaskingConfig.from_name("glm-doc"), SpecialIds.from_tokenizer(bert), sentence_end_from_tokenizer(bert)
    )
    rng = np.random.default_rng(0)
    samples = []
    start = 0
    for i in range(40):
        n = int(rng.integers(16, 120))
        piece = np.concatenate([[bert.cls_id], tokens[start : start + n], [bert.eos_id]])
        start += n
        s = masker(piece, sample_rng(7, 0, i))
        samples.append(
            {
                "input_ids": s.input_ids,
                "targets": s.targets,
                "loss_mask": s.loss_mask,
                "position_ids": s.position_ids,
                "sep": s.sep,
            }
        )
    assert {int(np.sum(s["position_ids"][1] > 0) > 0) for s in samples} == {1}  # every sample has a Part B
    samples, vocab, pad_id = _compact_vocab(samples, bert.pad_id)
    model = _model(vocab, 256)
    with torch.no_grad():
        reference = _unpacked_losses(model, samples, pad_id)
        packed, out = _packed_losses(model, samples, 256, pad_id)
    _check_invariants(samples, out, 256)
    torch.testing.assert_close(packed, reference, rtol=1e-10, atol=1e-10)
    assert (reference > 1.0).all()


def test_gradients_match_packed_and_unpacked() -> None:
    """Training on a packed batch gives the same parameter gradients as on the unpacked one (float64)."""
    g = np.random.default_rng(3)
    samples = []
    for n, sep in ((9, 5), (6, 2), (12, 8), (4, 1), (7, 7)):
        ids = g.integers(1, 50, n)
        pos = np.concatenate([np.arange(sep), np.full(n - sep, max(sep - 1, 0))])
        blocks = np.concatenate([np.zeros(sep, np.int64), np.arange(1, n - sep + 1)])
        loss = (np.arange(n) >= sep).astype(np.float32)
        samples.append(_sample(ids, sep, targets=g.integers(1, 50, n), loss=loss, pos=pos, blocks=blocks))
    samples[-1]["loss_mask"][-1] = 1.0  # the all-Part-A sample still carries one loss token
    grads = []
    for packed in (False, True):
        model = _model(64, 32)
        model.zero_grad()
        if packed:
            loss = _packed_losses(model, samples, 20, 0)[0].sum()
        else:
            loss = _unpacked_losses(model, samples, 0, batch_size=3).sum()
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-9, atol=1e-12)
