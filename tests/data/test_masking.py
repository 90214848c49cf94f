"""Tests for glm/data/masking.py: exact layouts (docs/original-glm.md §3(a), §5.5), invariants per mode, statistics on real
text, determinism per (seed, epoch, index), config checks and collation."""

from __future__ import annotations

import itertools
import math
import re
import time
from collections import Counter

import numpy as np
import pytest
import torch

from glm.data.masking import (
    PRESETS,
    GLMMasker,
    MaskedSample,
    MaskingConfig,
    SpecialIds,
    _allocate,  # the docs/original-glm.md §5.3 placement, checked on a hand case
    build_sentence_end,
    collate_masked,
    layout_spans,
    layout_suffix,
    place_spans,
    sample_rng,
    sentence_candidates,
    span_length_pmf,
    split_short,
)
from glm.data.paths import need_shared_data

# Ids of our sentencepiece tokenizer (docs/contracts.md): 0 eos=pad, 2 [CLS], 4 [MASK], 5 [sMASK],
# 6 [gMASK], 7 sop, 8 eop, 9 [dBLOCK]; text pieces from 10 on.
EOS, CLS, MASK, SMASK, GMASK, SOP, EOP, DBLOCK = 0, 2, 4, 5, 6, 7, 8, 9
IDS = SpecialIds(
    cls=CLS, eos=EOS, pad=EOS, mask=MASK, smask=SMASK, gmask=GMASK, sop=SOP, eop=EOP, dblock=DBLOCK
)
SPECIAL_PIECES = [
    "<|endoftext|>",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "[sMASK]",
    "[gMASK]",
    "<|startofpiece|>",
    "<|endofpiece|>",
    "[dBLOCK]",
]
SEQ = 512
BOOKS = ("1342-0.txt", "11-0.txt", "84-0.txt", "98-0.txt")


# --------------------------------------------------------------------------------------------------
# A deterministic stand-in tokenizer: whitespace words -> ids (so no test depends on sentencepiece)
# --------------------------------------------------------------------------------------------------


class WordTokenizer:
    def __init__(self) -> None:
        self.pieces = list(SPECIAL_PIECES)
        self.index: dict[str, int] = {}

    def encode(self, text: str) -> list[int]:
        out = []
        for word in text.split():
            i = self.index.get(word)
            if i is None:
                i = self.index[word] = len(self.pieces)
                self.pieces.append(word)
            out.append(i)
        return out

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def id_to_piece(self, i: int) -> str:
        return self.pieces[i]


def pack(paragraphs: list[np.ndarray], first: int, seq: int = SEQ) -> np.ndarray:
    """docs/original-glm.md §5.1 framing: ``[CLS] doc [eos]`` segments from paragraph ``first`` on, the last one cut."""
    out: list[int] = []
    p = first
    while seq - len(out) >= 3:
        para = paragraphs[p % len(paragraphs)]
        room = seq - len(out)
        if len(para) + 2 <= room:
            out += [CLS, *para.tolist(), EOS]
        else:
            out += [CLS, *para[: room - 1].tolist()]  # an over-long document is cut: no eos
        p += 1
    return np.array(out, np.int64)


@pytest.fixture(scope="module")
def corpus():
    tok = WordTokenizer()
    paragraphs = []
    for name in BOOKS:
        text = need_shared_data(f"gutenberg/{name}", "Project Gutenberg book").read_text(encoding="utf-8-sig")
        for para in re.split(r"(?:\r?\n[ \t]*){2,}", text):
            ids = tok.encode(para)
            if ids:
                paragraphs.append(np.array(ids, np.int64))
    sentence_end = build_sentence_end(tok.id_to_piece, tok.vocab_size)
    return tok, paragraphs, sentence_end


def real_samples(paragraphs, count: int, seq: int = SEQ) -> list[np.ndarray]:
    stride = max(1, len(paragraphs) // count) if count < len(paragraphs) else 1
    return [pack(paragraphs, i * stride + i // len(paragraphs), seq) for i in range(count)]


# --------------------------------------------------------------------------------------------------
# An independent checker of the span layout (reads only the laid-out arrays)
# --------------------------------------------------------------------------------------------------


def check_span_layout(tokens: np.ndarray, s: MaskedSample, mask_id: int, block_positions: bool = True):
    """Assert every docs/original-glm.md §3(a) invariant; return the masked spans as (start, end) in text order."""
    n_out = len(s)
    assert s.input_ids.shape == s.targets.shape == s.loss_mask.shape == (n_out,)
    assert s.position_ids.shape == (2, n_out)
    assert (
        s.input_ids.dtype == np.int64 and s.position_ids.dtype == np.int64 and s.loss_mask.dtype == np.float32
    )
    sep = s.sep
    a = s.input_ids[:sep]
    pos, blk = s.position_ids
    # Part A: positions 0..sep-1, block 0, targets = inputs, no loss.
    np.testing.assert_array_equal(pos[:sep], np.arange(sep))
    assert not blk[:sep].any() and not s.loss_mask[:sep].any()
    np.testing.assert_array_equal(s.targets[:sep], a)
    # Part B: blocks start at [sop] slots.
    b_in, b_tg = s.input_ids[sep:], s.targets[sep:]
    assert b_in.size and b_in[0] == SOP
    assert (s.loss_mask[sep:] == 1).all()
    begins = np.flatnonzero(b_in == SOP)
    mask_slots = np.flatnonzero(a == mask_id)
    assert len(begins) == len(mask_slots), "one Part-B block per mask token"
    fill = {}
    for lo, hi in zip(begins, [*begins[1:], len(b_in)], strict=True):
        p = pos[sep + lo : sep + hi]
        assert (p == p[0]).all() and a[p[0]] == mask_id, "Part-B positions = the mask's Part-A position"
        expect_blk = np.arange(1, hi - lo + 1) if block_positions else np.ones(hi - lo)
        np.testing.assert_array_equal(blk[sep + lo : sep + hi], expect_blk)
        tg, inp = b_tg[lo:hi], b_in[lo:hi]
        assert tg[-1] == EOP and EOP not in tg[:-1] and hi - lo >= 2
        shifted = inp[1:] != DBLOCK  # [dBLOCK] replaces inputs, never targets
        np.testing.assert_array_equal(inp[1:][shifted], tg[:-1][shifted])
        assert int(p[0]) not in fill, "each mask gets exactly one block"
        fill[int(p[0])] = tg[:-1]
    # Filling each mask with its block's targets gives back the text: every masked token appears as a
    # target exactly once, and Part A is the text minus the spans.
    rebuilt, spans = [], []
    for slot, tok_id in enumerate(a):
        if slot in fill:
            spans.append((len(rebuilt), len(rebuilt) + len(fill[slot])))
            rebuilt.extend(fill[slot].tolist())
        else:
            rebuilt.append(int(tok_id))
    np.testing.assert_array_equal(np.array(rebuilt), tokens)
    assert n_out == len(tokens) + 2 * len(spans)
    assert sep == len(tokens) - sum(e - b for b, e in spans) + len(spans)
    return spans


def check_token_spans(tokens: np.ndarray, spans) -> None:
    for b, e in spans:
        assert not np.isin(tokens[b:e], [CLS, EOS]).any(), "token spans never cover [CLS] or eos"
        assert e <= len(tokens) - 1, "the final token is never masked"
    for (_, e0), (b1, _) in itertools.pairwise(spans):
        assert b1 >= e0 + 1, "at least one unmasked token between spans"


def check_suffix(tokens: np.ndarray, s: MaskedSample, mask_id: int, loss_mask: np.ndarray) -> int:
    n = len(tokens)
    g = len(s) - s.sep
    src = n - g
    assert s.sep == src + 1 and len(s) == n + 1
    np.testing.assert_array_equal(s.input_ids, np.r_[tokens[:src], mask_id, SOP, tokens[src:-1]])
    np.testing.assert_array_equal(s.targets, np.r_[tokens[:src], mask_id, tokens[src:]])
    np.testing.assert_array_equal(s.position_ids[0], np.r_[np.arange(src + 1), np.full(g, src)])
    np.testing.assert_array_equal(s.position_ids[1], np.r_[np.zeros(src + 1), np.arange(1, g + 1)])
    np.testing.assert_array_equal(s.loss_mask, np.r_[np.zeros(src + 1), loss_mask[src:]])
    return g


# --------------------------------------------------------------------------------------------------
# Exact layouts
# --------------------------------------------------------------------------------------------------


def test_spec_worked_example_exactly():
    # docs/original-glm.md §3(a): [CLS] x1..x8 [eos], spans x2 x3 and x6, Part B = second span first.
    x = {i: 100 + i for i in range(1, 9)}
    tokens = np.array([CLS, *x.values(), EOS])
    s = layout_spans(tokens, [(2, 4), (6, 7)], [1, 0], mask_id=MASK, sop_id=SOP, eop_id=EOP)
    part_a = [CLS, x[1], MASK, x[4], x[5], MASK, x[7], x[8], EOS]
    np.testing.assert_array_equal(s.input_ids, part_a + [SOP, x[6], SOP, x[2], x[3]])
    np.testing.assert_array_equal(s.targets, part_a + [x[6], EOP, x[2], x[3], EOP])
    np.testing.assert_array_equal(s.position_ids[0], [0, 1, 2, 3, 4, 5, 6, 7, 8, 5, 5, 2, 2, 2])
    np.testing.assert_array_equal(s.position_ids[1], [0] * 9 + [1, 2, 1, 2, 3])
    np.testing.assert_array_equal(s.loss_mask, [0] * 9 + [1] * 5)
    assert s.sep == 9 and s.mode == "token"
    # --no-block-position: every Part-B token gets block id 1 (docs/original-glm.md §1.1); nothing else changes.
    flat = layout_spans(
        tokens, [(2, 4), (6, 7)], [1, 0], mask_id=MASK, sop_id=SOP, eop_id=EOP, block_position_encoding=False
    )
    np.testing.assert_array_equal(flat.position_ids[1], [0] * 9 + [1] * 5)
    np.testing.assert_array_equal(flat.position_ids[0], s.position_ids[0])


def test_layout_rejects_bad_spans():
    tokens = np.arange(10, 20)
    for spans, order in [
        ([], None),
        ([(3, 5), (4, 6)], None),
        ([(5, 5)], None),
        ([(8, 11)], None),
        ([(1, 2), (4, 5)], [0, 0]),
    ]:
        with pytest.raises(ValueError, match="layout_spans"):
            layout_spans(tokens, spans, order, mask_id=MASK, sop_id=SOP, eop_id=EOP)


def test_suffix_layout_hand_example():
    # docs/original-glm.md §5.5 with S = 3, G = 3: [CLS] a b [gMASK] | [sop] c d, targets ... [gMASK] c d e, sep = S + 1.
    a, b, c, d, e = 11, 12, 13, 14, 15
    tokens = np.array([CLS, a, b, c, d, e])
    s = layout_suffix(tokens, 3, mask_id=GMASK, sop_id=SOP, cls_id=CLS)
    np.testing.assert_array_equal(s.input_ids, [CLS, a, b, GMASK, SOP, c, d])
    np.testing.assert_array_equal(s.targets, [CLS, a, b, GMASK, c, d, e])
    np.testing.assert_array_equal(s.position_ids, [[0, 1, 2, 3, 3, 3, 3], [0, 0, 0, 0, 1, 2, 3]])
    np.testing.assert_array_equal(s.loss_mask, [0, 0, 0, 0, 1, 1, 1])
    assert s.sep == 4 and s.mode == "document"
    # A [CLS] inside the target (next document) gets the sample's loss mask 0 there.
    tokens2 = np.array([CLS, a, EOS, CLS, d, e])
    s2 = layout_suffix(tokens2, 3, mask_id=GMASK, sop_id=SOP, cls_id=CLS, block_position_encoding=False)
    np.testing.assert_array_equal(s2.loss_mask, [0, 0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(s2.position_ids[1], [0, 0, 0, 0, 1, 1, 1])


def test_offset_formula_hand_example_and_exhaustive():
    # docs/original-glm.md §5.3: start_j = s0 + offset_j + l_1 + ... + l_{j-1} + (j - 1)
    np.testing.assert_array_equal(place_spans([2, 3], 1, [0, 0]), [[1, 3], [4, 7]])
    # 5+1=6; 5+2+2+1=10; 5+4+(2+1)+2=14
    np.testing.assert_array_equal(place_spans([2, 1, 1], 5, [1, 2, 4]), [[6, 8], [10, 11], [14, 15]])
    # For D = 9 and lengths (2, 1, 3): the sorted offset multisets map one-to-one onto all placements
    # inside the document, in list order, with at least one free token between spans.
    lengths, s0, doc = [2, 1, 3], 4, 9
    hi = doc - sum(lengths) - len(lengths) + 1
    got = {
        tuple(map(tuple, place_spans(lengths, s0, o)))
        for o in itertools.combinations_with_replacement(range(hi + 1), len(lengths))
    }
    want = set()
    for starts in itertools.product(range(s0, s0 + doc), repeat=3):
        sp = tuple((b, b + n) for b, n in zip(starts, lengths, strict=True))
        if sp[-1][1] <= s0 + doc and all(sp[j + 1][0] >= sp[j][1] + 1 for j in range(2)):
            want.add(sp)
    assert got == want and len(got) == math.comb(hi + 3, 3)


def test_span_length_pmf_by_hand():
    # docs/original-glm.md §5.3: Poisson(3) restricted to 1 .. max_block_length - 1 and renormalised.
    # Cap 4 (lengths 1..3): weights 3^k / k! = 3, 4.5, 4.5 -> / 12.
    np.testing.assert_allclose(span_length_pmf(3.0, 4), [0.25, 0.375, 0.375], rtol=1e-12)
    # Default cap 40: 39 lengths; the mass above 39 is ~1e-29, so P(1) = 3 / (e^3 - 1).
    pmf = span_length_pmf(3.0, 40)
    assert pmf.shape == (39,) and pmf.sum() == pytest.approx(1.0, abs=1e-12)
    assert pmf[0] == pytest.approx(3 / (math.e**3 - 1), rel=1e-12)
    assert pmf[1] / pmf[0] == pytest.approx(1.5) and pmf[2] / pmf[1] == pytest.approx(1.0)


def test_lengths_drawn_until_the_budget_is_reached():
    # docs/original-glm.md §5.3: draw until the sum reaches the budget; only the last draw may overshoot.
    masker = GLMMasker(MaskingConfig.from_name("span"), IDS, np.zeros(300, bool))
    for i in range(300):
        lengths = masker._draw_lengths(76, sample_rng(9, 0, i), single=False)
        assert lengths[:-1].sum() < 76 <= lengths.sum() and lengths.min() >= 1 and lengths.max() <= 39


def test_allocation_hand_case_shortest_first_and_offset_range():
    # Two documents (docs/original-glm.md §5.3): A = 7 maskable tokens at 1..7, B = 20 at 10..29. Lengths in list order
    # [1, 2, 3]. A (shorter) first: budget int(0.15 * 7) = 1 -> takes [1]; 1 + 2 > 1 stops it. B (longest)
    # takes the rest while m + k - 1 <= 20: [2, 3]. Offsets: A from {0..7-1-1+1} = {0..6};
    # B: two sorted draws from {0..20-5-2+1} = {0..14}, span 1 at 10 + o1, span 2 at 10 + o2 + 2 + 1.
    lengths = np.array([1, 2, 3])
    a_off, b_off = Counter(), set()
    for i in range(3000):
        spans = _allocate(lengths, np.array([1, 10]), np.array([7, 20]), 0.15, sample_rng(5, 0, i))
        (a0, a1), (b0, b1), (c0, c1) = spans.tolist()
        assert a1 - a0 == 1 and 1 <= a0 <= 7
        assert (b1 - b0, c1 - c0) == (2, 3)
        o1, o2 = b0 - 10, c0 - 10 - 3
        assert 0 <= o1 <= o2 <= 14
        a_off[a0 - 1] += 1
        b_off.add((o1, o2))
    # every offset value is drawn, the upper end included, about uniformly
    assert sorted(a_off) == list(range(7)) and min(a_off.values()) > 3000 / 7 * 0.8
    assert len(b_off) == math.comb(15 + 1, 2)  # all sorted pairs from {0..14}


def test_sentence_candidates_hand_example():
    se = np.zeros(64, bool)
    dot, q = 20, 21
    se[[dot, q]] = True
    a, b, c, d, e = 30, 31, 32, 33, 34
    #            0   1  2  3    4  5    6   7  8  9
    tokens = [CLS, a, b, dot, c, EOS, CLS, d, q, e]
    # "a b ."; "c" closed by eos (no candidate); "[CLS] d ?" (the next document's [CLS] included); "e" (tail)
    np.testing.assert_array_equal(
        sentence_candidates(np.array(tokens), se, CLS, EOS), [[1, 4], [6, 9], [9, 10]]
    )
    # Ending with eos: no tail candidate; an unterminated sentence before the eos is never a candidate.
    np.testing.assert_array_equal(
        sentence_candidates(np.array([CLS, a, dot, b, EOS]), se, CLS, EOS), [[1, 3]]
    )


def test_allocation_shortest_document_gets_at_most_its_share():
    # Two documents: 19 maskable tokens (1..19) and 60 maskable tokens (22..81, the final token excluded).
    tokens = np.r_[CLS, np.arange(100, 119), EOS, CLS, np.arange(200, 261)]
    masker = GLMMasker(MaskingConfig.from_name("span"), IDS, np.zeros(300, bool))
    for i in range(300):
        s = masker.mask_tokens(tokens, sample_rng(3, 0, i))
        spans = check_span_layout(tokens, s, MASK)
        check_token_spans(tokens, spans)
        in_short = sum(e - b for b, e in spans if e <= 20)
        assert in_short <= int(0.15 * 19)
        assert sum(e - b for b, e in spans) >= int(0.15 * len(tokens))
    assert not masker.fallbacks


# --------------------------------------------------------------------------------------------------
# Invariants per mode on random and real samples
# --------------------------------------------------------------------------------------------------


def _synthetic(rng: np.random.Generator, vocab: int = 300) -> np.ndarray:
    """1-4 documents of 1-150 words with sentence ends (ids 10-14), the last maybe cut."""
    out = []
    for _ in range(rng.integers(1, 5)):
        doc = rng.integers(15, vocab, rng.integers(1, 150))
        doc[rng.random(doc.size) < 0.08] = 10
        out += [CLS, *doc.tolist(), EOS]
    if rng.random() < 0.5 and len(out) > 3:
        out = out[: rng.integers(3, len(out))]
    return np.array(out, np.int64)


@pytest.mark.parametrize("task_mask", [False, True])
@pytest.mark.parametrize("block_positions", [True, False])
def test_invariants_every_mode_on_random_samples(task_mask, block_positions):
    se = np.zeros(300, bool)
    se[10:15] = True
    cfg = MaskingConfig.from_name(
        "glm-10b", task_mask=task_mask, block_position_encoding=block_positions, single_span_prob=0.1
    )
    masker = GLMMasker(cfg, IDS, se)
    smask, gmask = (SMASK, GMASK) if task_mask else (MASK, MASK)
    gen = np.random.default_rng(123)
    seen = Counter()
    for i in range(600):
        tokens = _synthetic(gen)
        s = masker(tokens, sample_rng(7, 0, i))
        if s.mode == "token":
            check_token_spans(tokens, check_span_layout(tokens, s, MASK, block_positions))
            seen["token"] += 1
        elif s.mode == "sentence":
            spans = check_span_layout(tokens, s, smask, block_positions)
            cand = {tuple(c) for c in sentence_candidates(tokens, se, CLS, EOS).tolist()}
            assert set(spans) <= cand, "sentence blanks are whole candidate sentences"
            assert sum(e - b for b, e in spans) >= min(int(0.15 * len(tokens)), sum(e - b for b, e in cand))
            seen["sentence"] += 1
        elif s.input_ids[s.sep :].tolist().count(SOP) == 1 and EOP in s.targets[s.sep :]:
            ((b, e),) = check_span_layout(tokens, s, gmask, block_positions)
            check_token_spans(tokens, [(b, e)])
            assert not (tokens[:-1] == EOS).any(), "the single-span form is for single-document samples"
            seen["document-span"] += 1
        else:
            assert s.mode == "document"
            if block_positions:
                check_suffix(tokens, s, gmask, (tokens != CLS).astype(np.float32))
            seen["document-suffix"] += 1
        if s.mode == "token":
            assert MASK in s.input_ids[: s.sep] and SMASK not in s.input_ids and GMASK not in s.input_ids
    assert min(seen.values()) >= 20 and len(seen) == 4, seen


def test_token_mode_edge_cases():
    masker = GLMMasker(MaskingConfig.from_name("span"), IDS, np.zeros(300, bool))
    tiny = np.array([CLS, 50, EOS])  # one maskable token: int(0.15 * 3) = 0, still one span
    s = masker.mask_tokens(tiny, sample_rng(0, 0, 0))
    np.testing.assert_array_equal(s.input_ids, [CLS, MASK, EOS, SOP, 50])
    np.testing.assert_array_equal(s.targets, [CLS, MASK, EOS, 50, EOP])
    assert check_span_layout(tiny, s, MASK) == [(1, 2)]
    with pytest.raises(ValueError, match="no maskable token"):
        masker.mask_tokens(np.array([CLS, EOS, CLS, 50]), sample_rng(0, 0, 0))
    with pytest.raises(ValueError, match="at least 3 tokens"):
        masker(np.array([CLS, 50]), sample_rng(0, 0, 0))
    with pytest.raises(ValueError, match=r"within \[0, 300\)"):
        masker(np.array([CLS, 50, 300]), sample_rng(0, 0, 0))
    with pytest.raises(ValueError, match="1-D integer"):
        masker(np.array([2.0, 3.0, 4.0]), sample_rng(0, 0, 0))
    # Spans that cannot all be placed (many tiny documents): partial placement, counted, never unmasked.
    crowded = np.array([CLS, 50, EOS] * 40 + [CLS, 51, 52, 53, EOS])
    masker = GLMMasker(MaskingConfig.from_name("span"), IDS, np.zeros(300, bool))
    for i in range(20):
        s = masker.mask_tokens(crowded, sample_rng(0, 0, i))
        check_token_spans(crowded, check_span_layout(crowded, s, MASK))
    assert masker.fallbacks["token_partial"] == 20


def test_many_short_documents_use_the_spread_fallback():
    # 20 documents of 12 maskable tokens (at most int(0.15 * 12) = 1 masked token each under the original
    # rule) and one of 14: the ~44 masked tokens cannot go to the longest, so they are spread.
    docs = [[CLS, *range(20 + 12 * j, 32 + 12 * j), EOS] for j in range(20)]
    tokens = np.array([t for doc in docs for t in doc] + [CLS, *range(270, 284), EOS])
    masker = GLMMasker(MaskingConfig.from_name("span"), IDS, np.zeros(300, bool))
    for i in range(50):
        s = masker.mask_tokens(tokens, sample_rng(4, 0, i))
        spans = check_span_layout(tokens, s, MASK)
        check_token_spans(tokens, spans)
        assert sum(e - b for b, e in spans) >= int(0.15 * len(tokens))
    assert masker.fallbacks == Counter({"token_spread": 50})


def test_sentence_mode_without_sentences_falls_back_to_tokens():
    masker = GLMMasker(MaskingConfig.from_name("sentence"), IDS, np.zeros(300, bool))
    tokens = np.r_[CLS, np.arange(100, 140), EOS]  # one unterminated sentence before the eos: no candidate
    s = masker(tokens, sample_rng(0, 0, 0))
    assert s.mode == "token" and masker.fallbacks["sentence_to_token"] == 1
    check_token_spans(tokens, check_span_layout(tokens, s, MASK))


def test_dblock_replacement_rate():
    cfg = MaskingConfig.from_name("span", block_mask_prob=0.1)
    masker = GLMMasker(cfg, IDS, np.zeros(300, bool))
    gen = np.random.default_rng(5)
    hits = total = 0
    for i in range(400):
        tokens = np.r_[CLS, gen.integers(15, 300, 400), EOS]
        s = masker(tokens, sample_rng(1, 0, i))
        check_span_layout(tokens, s, MASK)  # targets untouched, [sop] never replaced
        b_in = s.input_ids[s.sep :]
        hits += int((b_in == DBLOCK).sum())
        total += int((b_in != SOP).sum())
    # ~24k Bernoulli(0.1) trials: sd 0.0019, bound at about 4 sd.
    assert abs(hits / total - 0.1) < 0.008
    # Only token mode replaces Part-B inputs (docs/original-glm.md §5.3).
    doc = GLMMasker(MaskingConfig.from_name("document", block_mask_prob=0.5), IDS, np.zeros(300, bool))
    assert all(
        DBLOCK not in doc(np.r_[CLS, gen.integers(15, 300, 100), EOS], sample_rng(1, 0, i)).input_ids
        for i in range(50)
    )


def test_real_text_layouts(corpus):
    _, paragraphs, sentence_end = corpus
    masker = GLMMasker(MaskingConfig.from_name("glm-10b"), IDS, sentence_end)
    for i, tokens in enumerate(real_samples(paragraphs, 300)):
        s = masker(tokens, sample_rng(11, 0, i))
        if s.mode == "token":
            check_token_spans(tokens, check_span_layout(tokens, s, MASK))
        elif s.mode == "sentence":
            for b, e in check_span_layout(tokens, s, SMASK):
                assert EOS not in tokens[b:e] and (sentence_end[tokens[e - 1]] or e == len(tokens))
                assert CLS not in tokens[b + 1 : e] and (tokens[b] != CLS or tokens[b - 1] == EOS)
        else:
            check_suffix(tokens, s, GMASK, (tokens != CLS).astype(np.float32))  # multi-document: suffix
    # Paragraph-sized documents sometimes need the spread fallback, never a partial placement.
    assert set(masker.fallbacks) <= {"token_spread"} and masker.fallbacks["token_spread"] < 30


# --------------------------------------------------------------------------------------------------
# Statistics on real text
# --------------------------------------------------------------------------------------------------


def truncated_poisson_mean(lam: float, cap: int) -> float:
    pmf = [lam**k * math.exp(-lam) / math.factorial(k) for k in range(1, cap)]
    return sum(k * p for k, p in zip(range(1, cap), pmf, strict=True)) / sum(pmf)


def test_truncated_poisson_mean_reference():
    # lambda 3, lengths 1..39: the tail above 39 is negligible, so the mean is 3 / (1 - e^-3).
    assert truncated_poisson_mean(3.0, 40) == pytest.approx(3 / (1 - math.exp(-3)), rel=1e-12)


@pytest.fixture(scope="module")
def mixture_run(corpus):
    """20k real 512-token samples through the GLM-10B mixture (0.5 token / 0.3 sentence / 0.2 document)."""
    _, paragraphs, sentence_end = corpus
    samples = real_samples(paragraphs, 4000)
    masker = GLMMasker(MaskingConfig.from_name("glm-10b"), IDS, sentence_end)
    out = [
        (samples[i % len(samples)], masker(samples[i % len(samples)], sample_rng(2024, 0, i)))
        for i in range(20_000)
    ]
    return masker, out


def test_mode_frequencies(mixture_run):
    masker, out = mixture_run
    freq = Counter(s.mode for _, s in out)
    assert set(masker.fallbacks) <= {"token_spread"}, masker.fallbacks  # no partial or mode fallback
    # 20k draws: sd <= 0.0036, so 0.01 is about 3 sd.
    for mode, p in (("token", 0.5), ("sentence", 0.3), ("document", 0.2)):
        assert abs(freq[mode] / len(out) - p) < 0.01, (mode, freq)


def test_token_statistics(mixture_run):
    _, out = mixture_run
    lengths, masked, total = [], 0, 0
    for tokens, s in out:
        if s.mode != "token":
            continue
        begins = np.flatnonzero(s.input_ids[s.sep :] == SOP)
        span_lengths = np.diff(np.r_[begins, len(s) - s.sep]) - 1
        lengths.append(span_lengths)
        n = len(tokens)
        assert span_lengths.sum() >= int(0.15 * n), "the masked total reaches int(0.15 * len)"
        masked += int(span_lengths.sum())
        total += n
    lengths = np.concatenate(lengths)
    assert masked / total >= 0.15
    expected = truncated_poisson_mean(3.0, 40)
    # Pooled over ~10k samples (~250k spans); Wald's identity makes total/count unbiased under the
    # stop-when-the-budget-is-reached rule.
    assert abs(lengths.mean() / expected - 1) < 0.01, (lengths.mean(), expected)
    assert lengths.min() >= 1 and lengths.max() <= 39
    pmf = np.array([3.0**k / math.factorial(k) for k in range(1, 40)])
    pmf /= pmf.sum()
    hist = np.bincount(lengths, minlength=40)[1:] / lengths.size
    assert np.abs(hist - pmf).max() < 0.005


def test_sentence_and_document_statistics(mixture_run):
    _, out = mixture_run
    gens = []
    for tokens, s in out:
        n = len(tokens)
        if s.mode == "sentence":
            masked = (len(s) - s.sep) - int((s.input_ids[s.sep :] == SOP).sum())
            assert masked >= int(0.15 * n)
        elif s.mode == "document":
            g = len(s) - s.sep
            assert int(0.25 * n) <= g <= n - 2
            gens.append((g - int(0.25 * n)) / (n - 2 - int(0.25 * n)))
    # G ~ U{int(0.25 n), n - 2}: the rescaled draws have mean 1/2 and variance ~1/12.
    gens = np.array(gens)
    assert abs(gens.mean() - 0.5) < 0.02 and abs(gens.var() - 1 / 12) < 0.01


def test_infill_share_on_single_document_samples(corpus):
    _, paragraphs, sentence_end = corpus
    words = np.concatenate(paragraphs[:3000])
    masker = GLMMasker(MaskingConfig.from_name("document"), IDS, sentence_end)
    forms = Counter()
    for i in range(2000):
        start = (i * 97) % (len(words) - SEQ)
        tokens = np.r_[CLS, words[start : start + SEQ - 1]]  # one cut document: no eos
        s = masker(tokens, sample_rng(5, 1, i))
        if EOP in s.targets:
            ((b, e),) = check_span_layout(tokens, s, MASK)
            check_token_spans(tokens, [(b, e)])
            forms["span"] += 1
        else:
            check_suffix(tokens, s, MASK, (tokens != CLS).astype(np.float32))
            forms["suffix"] += 1
    assert abs(forms["suffix"] / 2000 - 0.5) < 0.045  # gpt_infill_prob 0.5; sd 0.011


# --------------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------------


def _same(a: MaskedSample, b: MaskedSample) -> bool:
    return (
        a.sep == b.sep
        and a.mode == b.mode
        and np.array_equal(a.input_ids, b.input_ids)
        and np.array_equal(a.targets, b.targets)
        and np.array_equal(a.loss_mask, b.loss_mask)
        and np.array_equal(a.position_ids, b.position_ids)
    )


def test_determinism_independent_of_workers(corpus):
    _, paragraphs, sentence_end = corpus
    samples = real_samples(paragraphs, 90)
    cfg = MaskingConfig.from_name("glm-10b-longer")

    def run(indices, epoch=0):
        masker = GLMMasker(cfg, IDS, sentence_end)  # a fresh masker per simulated worker
        return {i: masker(samples[i], sample_rng(17, epoch, i)) for i in indices}

    one = run(range(90))
    three = {}
    for w in range(3):  # 3 workers, strided indices, each worker in reverse order
        three.update(run(list(range(w, 90, 3))[::-1]))
    chunks = {}
    for lo in (60, 0, 30):  # contiguous chunks in another order
        chunks.update(run(range(lo, lo + 30)))
    assert all(_same(one[i], three[i]) and _same(one[i], chunks[i]) for i in range(90))
    assert len({s.mode for s in one.values()}) == 3
    other = run(range(90), epoch=1)
    assert sum(_same(one[i], other[i]) for i in range(90)) == 0, "a new epoch gives new layouts"


def test_sample_rng_rejects_bad_keys():
    assert sample_rng(1, 2, 3).integers(1 << 30) == np.random.default_rng([1, 2, 3]).integers(1 << 30)
    with pytest.raises(ValueError, match="epoch"):
        sample_rng(1, -1, 0)


# --------------------------------------------------------------------------------------------------
# Short-sequence splitting
# --------------------------------------------------------------------------------------------------


def test_split_short_pieces_are_sentence_aligned(corpus):
    _, paragraphs, sentence_end = corpus
    tokens = pack(paragraphs, 500)
    body = tokens[1:]
    for i in range(40):
        rng = sample_rng(0, 0, i)
        t = int(np.random.default_rng([0, 0, i]).integers(32, SEQ - 1))
        pieces = split_short(tokens, rng, SEQ, sentence_end, CLS, EOS)
        assert len(pieces) == (SEQ - 1) // t
        for p in pieces:
            assert p[0] == CLS and t // 2 + 1 <= len(p) <= t + 1
            # each piece is a contiguous window of the body
            start = next(
                k for k in range(len(body) - len(p) + 2) if np.array_equal(body[k : k + len(p) - 1], p[1:])
            )
            assert start == 0 or sentence_end[body[start - 1]] or body[start - 1] == EOS
            assert body[start] != EOS
    cfg = MaskingConfig.from_name("glm-10b", short_seq_prob=1.0)
    masker = GLMMasker(cfg, IDS, sentence_end)
    pieces = masker.maybe_split(tokens, sample_rng(0, 0, 0), SEQ)
    assert len(pieces) >= 1 and all(masker(p, sample_rng(0, 0, j)).sep > 0 for j, p in enumerate(pieces))
    assert (
        len(
            GLMMasker(MaskingConfig.from_name("glm-10b", short_seq_prob=0.0), IDS, sentence_end).maybe_split(
                tokens, sample_rng(0, 0, 0), SEQ
            )
        )
        == 1
    )


# --------------------------------------------------------------------------------------------------
# Config, special ids, collation, speed
# --------------------------------------------------------------------------------------------------


def test_presets_match_spec_table():
    rows = {  # docs/original-glm.md §5.7: bert, gap, gpt_min_ratio, task mask, block_mask, short_seq, single_span
        "glm-base": (1.0, 0.0, False, 0.0, 0.0, 0.0),
        "glm-large": (1.0, 0.0, False, 0.0, 0.0, 0.0),
        "glm-roberta": (1.0, 0.0, True, 0.0, 0.0, 0.0),
        "glm-10b": (0.5, 0.3, True, 0.1, 0.02, 0.0),
        "glm-10b-longer": (0.4, 0.3, True, 0.1, 0.5, 0.05),
        "glm-large-chinese": (0.4, 0.3, True, 0.1, 0.02, 0.0),
        "glm-doc": (0.5, 0.0, False, 0.0, 0.0, 0.0),
    }
    for name, (bert, gap, task, block, short, single) in rows.items():
        c = MaskingConfig.from_name(name)
        assert (
            c.bert_prob,
            c.gap_sentence_prob,
            c.task_mask,
            c.block_mask_prob,
            c.short_seq_prob,
            c.single_span_prob,
        ) == (bert, gap, task, block, short, single), name
        assert (
            c.avg_block_length,
            c.max_block_length,
            c.bert_ratio,
            c.gap_sentence_ratio,
            c.gpt_infill_prob,
            c.shuffle_blocks,
            c.block_position_encoding,
        ) == (3, 40, 0.15, 0.15, 0.5, True, True)
    assert MaskingConfig.from_name("glm-10b").gpt_min_ratio == 0.25
    assert MaskingConfig.from_name("glm-10b").gpt_prob == pytest.approx(0.2)
    assert MaskingConfig.from_name("document").gpt_prob == 1.0
    assert {"span", "sentence", "document"} <= set(PRESETS)


@pytest.mark.parametrize(
    "fields, error, message",
    [
        ({"bert_prob": 0.8, "gap_sentence_prob": 0.3}, ValueError, "exceeds 1"),
        ({"bert_prob": 1.5}, ValueError, "bert_prob"),
        ({"max_block_length": 1}, ValueError, "max_block_length"),
        ({"avg_block_length": 0}, ValueError, "avg_block_length"),
        ({"bert_ratio": 0.0}, ValueError, "bert_ratio"),
        ({"task_mask": "yes"}, TypeError, "task_mask"),
    ],
)
def test_config_validation(fields, error, message):
    with pytest.raises(error, match=message):
        MaskingConfig(**fields)


def test_from_name_errors_and_special_ids():
    with pytest.raises(ValueError, match="unknown preset 'glm-xl'"):
        MaskingConfig.from_name("glm-xl")
    with pytest.raises(ValueError, match="unknown fields"):
        MaskingConfig.from_name("span", bert_rate=0.2)

    class Tok:
        cls_id, eos_id, pad_id, mask_id, smask_id, gmask_id, sop_id, eop_id, dblock_id = (
            2,
            0,
            0,
            4,
            5,
            6,
            7,
            8,
            9,
        )

    assert SpecialIds.from_tokenizer(Tok()) == IDS
    Tok.gmask_id = None  # a vocabulary without task masks names the missing token, no int(None) crash
    with pytest.raises(ValueError, match="no gmask_id"):
        SpecialIds.from_tokenizer(Tok())
    Tok.gmask_id = 6
    del Tok.dblock_id
    with pytest.raises(ValueError, match="dblock_id"):
        SpecialIds.from_tokenizer(Tok())


def test_collate_pads_per_spec():
    x = np.array([CLS, 101, 102, 103, 104, 105, 106, 107, 108, EOS])
    s1 = layout_spans(x, [(2, 4), (6, 7)], [1, 0], mask_id=MASK, sop_id=SOP, eop_id=EOP)
    s2 = layout_suffix(x[:6], 2, mask_id=GMASK, sop_id=SOP, cls_id=CLS)
    batch = collate_masked([s1, s2], pad_to_multiple_of=8)
    assert batch["input_ids"].shape == (2, 16) and batch["position_ids"].shape == (2, 2, 16)
    assert batch["input_ids"].dtype == batch["targets"].dtype == batch["sep"].dtype == torch.long
    assert batch["loss_mask"].dtype == torch.float32 and batch["position_ids"].dtype == torch.long
    assert batch["sep"].tolist() == [9, 5]
    assert batch["input_ids"][1].tolist() == [CLS, 101, 102, 103, GMASK, SOP, 104] + [0] * 9
    assert batch["targets"][1].tolist() == [CLS, 101, 102, 103, GMASK, 104, 105] + [0] * 9
    assert batch["loss_mask"][1].tolist() == [0, 0, 0, 0, 0, 1, 1] + [0] * 9
    assert batch["position_ids"][1].tolist() == [[0, 1, 2, 3, 4, 4, 4] + [0] * 9, [0] * 5 + [1, 2] + [0] * 9]
    assert (
        batch["input_ids"][0, :14].tolist() == s1.input_ids.tolist() and not batch["input_ids"][0, 14:].any()
    )
    assert collate_masked([s1, s2])["input_ids"].shape == (2, 14)
    with pytest.raises(ValueError, match="empty batch"):
        collate_masked([])


def test_masking_is_fast(corpus):
    # Thousands of 512-token samples per second are expected; the bound leaves ~10x headroom for a
    # loaded 2-core machine and is still far above what a CPU (or one GPU) training step consumes.
    _, paragraphs, sentence_end = corpus
    samples = real_samples(paragraphs, 200)
    masker = GLMMasker(MaskingConfig.from_name("glm-10b"), IDS, sentence_end)
    t0 = time.perf_counter()
    for i in range(1000):
        masker(samples[i % 200], sample_rng(0, 0, i))
    assert time.perf_counter() - t0 < 2.0
