"""Cloze scoring and losses against independent recomputations (docs/original-glm.md §7.1)."""

from __future__ import annotations

import math
import os

import pytest
import torch

from glm.data.cloze import ClozeDataModule, collate_cloze
from glm.data.download import resolve
from glm.data.paths import data_root
from glm.model import GLM, GLMConfig
from glm.tasks.cloze import PAD_SCORE, cloze_loss, multi_token_scores, single_token_scores
from glm.tokenizer import load_tokenizer

ROOT = data_root()


@pytest.fixture(scope="module")
def bert():
    path = ROOT / "tokenizers" / "bert-base-uncased"
    if not all((ROOT / f.target).is_file() for f in resolve(["superglue", "bert-base-uncased"])):
        msg = f"shared SuperGLUE data / BERT vocab missing under {ROOT} (set GLM_DATA_ROOT)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return load_tokenizer({"kind": "bert", "path": str(path)})


@pytest.fixture(scope="module")
def tiny_glm():
    torch.manual_seed(0)
    model = GLM(GLMConfig.from_name("glm-tiny", vocab_size=30592))
    return model.eval()


def _flat(batch):
    B, C, L = batch["input_ids"].shape
    return (
        batch["input_ids"].reshape(B * C, L),
        batch["position_ids"].reshape(B * C, 2, L),
        batch["sep"].reshape(B * C),
    )


def test_single_token_score_is_the_logit_at_sop(bert, tiny_glm):
    feats = ClozeDataModule("cb", bert, ROOT, max_eval_examples=3).load_split("val").features
    batch = collate_cloze(feats, bert.eos_id)
    ids, pos, sep = _flat(batch)
    with torch.no_grad():
        logits = tiny_glm(ids, pos, sep=sep).logits
    scores = single_token_scores(logits, sep, batch["verbalizer_ids"])
    yes, no, maybe = bert.encode(" Yes")[0], bert.encode(" No")[0], bert.encode(" Maybe")[0]
    for b in range(3):
        s = int(sep[b])
        assert ids[b, s] == bert.sop_id
        expected = torch.stack([logits[b, s, yes], logits[b, s, no], logits[b, s, maybe]])
        assert torch.equal(scores[b], expected)


def test_module_single_token_scores_project_only_the_sop_slot(bert, tiny_glm):
    """ClozeModule.score computes the head at the [sop] slot only; scores and generative log-probs equal
    those read from the full logits."""
    from glm.tasks.cloze import ClozeModule

    module = ClozeModule(
        model={"preset": "glm-tiny", "vocab_size": 30592}, optimizer={}, scheduler={}, task="cb"
    )
    module.model = tiny_glm
    feats = ClozeDataModule("cb", bert, ROOT, max_eval_examples=4).load_split("val").features
    batch = collate_cloze(feats, bert.eos_id)
    ids, pos, sep = _flat(batch)
    with torch.no_grad():
        scores, gen = module.score(batch)
        full = tiny_glm(ids, pos, sep=sep).logits
    expected = single_token_scores(full, sep, batch["verbalizer_ids"])
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    rows = torch.arange(len(sep))
    expected_gen = full[rows, sep].float().log_softmax(-1).gather(1, batch["verbalizer_ids"])
    torch.testing.assert_close(gen, expected_gen, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_multi_token_score_equals_token_by_token_float64(bert, tiny_glm, length_penalty):
    feats = ClozeDataModule("copa", bert, ROOT, max_eval_examples=2).load_split("val").features
    batch = collate_cloze(feats, bert.eos_id)
    ids, pos, sep = _flat(batch)
    model = tiny_glm.double()
    try:
        with torch.no_grad():
            logits = model(ids, pos, sep=sep).logits
            batched = multi_token_scores(
                logits,
                batch["targets"].reshape(ids.shape),
                batch["loss_mask"].reshape(ids.shape),
                length_penalty,
            )
            # reference: each candidate scored one target token at a time, each with its own plain forward
            # pass over Part A + [sop] + the answer tokens so far
            for r in range(ids.size(0)):
                s = int(sep[r])
                n = int(batch["loss_mask"].reshape(ids.shape)[r].sum())
                total = 0.0
                for j in range(n):
                    prefix = ids[r, : s + j + 1][None]
                    out = model(prefix, pos[r, :, : s + j + 1][None], sep=torch.tensor([s])).logits[0, -1]
                    target = int(batch["targets"].reshape(ids.shape)[r, s + j])
                    total += float(torch.log_softmax(out, -1)[target])
                if length_penalty > 0:
                    total /= n**length_penalty
                assert math.isclose(float(batched[r]), total, rel_tol=1e-10, abs_tol=1e-10)
    finally:
        tiny_glm.float()


def test_multi_token_score_float32_matches_float64(bert, tiny_glm):
    feats = ClozeDataModule("wsc", bert, ROOT, max_eval_examples=2).load_split("val").features
    batch = collate_cloze(feats, bert.eos_id)
    ids, pos, sep = _flat(batch)
    t, m = batch["targets"].reshape(ids.shape), batch["loss_mask"].reshape(ids.shape)
    with torch.no_grad():
        s32 = multi_token_scores(tiny_glm(ids, pos, sep=sep).logits, t, m)
        s64 = multi_token_scores(tiny_glm.double()(ids, pos, sep=sep).logits, t, m)
    tiny_glm.float()
    torch.testing.assert_close(s32.double(), s64, rtol=1e-5, atol=1e-4)


def test_padding_to_seq_length_does_not_change_scores(bert, tiny_glm):
    feats = ClozeDataModule("copa", bert, ROOT, max_eval_examples=2).load_split("val").features
    out = []
    for pad_to in (None, 256):
        batch = collate_cloze(feats, bert.eos_id, pad_to=pad_to)
        ids, pos, sep = _flat(batch)
        with torch.no_grad():
            logits = tiny_glm(ids, pos, sep=sep).logits
        out.append(
            multi_token_scores(
                logits, batch["targets"].reshape(ids.shape), batch["loss_mask"].reshape(ids.shape)
            )
        )
    torch.testing.assert_close(out[0], out[1], rtol=1e-5, atol=1e-5)


def test_losses_hand_computed():
    scores = torch.tensor([[1.0, 2.0], [3.0, PAD_SCORE]])
    label = torch.tensor([1, 0])
    ce = (math.log(1 + math.exp(-1.0)) + 0.0) / 2  # row 1: the padded choice has probability e^-10003 ~ 0
    assert math.isclose(float(cloze_loss(scores, label, "cross_entropy")), ce, rel_tol=1e-6)
    assert math.isclose(float(cloze_loss(scores, label, "generative")), -(2.0 + 3.0) / 2, rel_tol=1e-6)
    assert math.isclose(float(cloze_loss(scores, label, "mix")), ce - 2.5, rel_tol=1e-6)
    # rows without a target (-100) are ignored
    assert math.isclose(
        float(cloze_loss(scores, torch.tensor([1, -100]))), math.log(1 + math.exp(-1.0)), rel_tol=1e-6
    )
    with pytest.raises(ValueError, match="unknown loss"):
        cloze_loss(scores, label, "hinge2")
