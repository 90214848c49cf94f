"""Decoding tests: cached vs uncached, beam = greedy at 1 beam, beam = exhaustive search, processors on
constructed logits, sampling filters, padded batches, blank filling.

References are independent of `glm.generation`: `full_logprobs` re-runs the whole docs/original-glm.md §3(c) training
layout (`context + [sop] + seq[:-1]`, one forward, no cache) in float64, and the exhaustive search
enumerates every sequence up to length 3 with the docs/original-glm.md §9 scores.
"""

from __future__ import annotations

import itertools
import math
from typing import ClassVar

import pytest
import torch

from glm.generation import (
    GenerationConfig,
    apply_min_length,
    apply_no_repeat_ngram,
    banned_ngram_tokens,
    beam_search,
    generate,
    greedy_or_sample,
    top_k_top_p_filter,
)
from glm.model import GLM, GLMConfig, KVCache

V, PAD, SOP, EOP = 6, 0, 4, 5


def tiny_model(seed: int = 0, vocab: int = V) -> GLM:
    torch.manual_seed(seed)
    cfg = GLMConfig(
        num_layers=2,
        hidden_size=16,
        num_attention_heads=2,
        vocab_size=vocab,
        max_sequence_length=32,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    model = GLM(cfg).double().eval()
    with torch.no_grad():  # a flatter-than-init but non-uniform next-token distribution
        model.word_embeddings.weight.mul_(40.0)
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.add_(0.2 * torch.randn_like(p))
    return model


def cfg(**kw) -> GenerationConfig:
    return GenerationConfig(sop_id=SOP, eop_id=EOP, pad_id=PAD, **kw)


def layout(context: list[int], mask_pos: int, seq: list[int]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """docs/original-glm.md §3(c): Part A = context (positions 0..S-1, block 0); Part B = [sop] + seq at (mask_pos, 1..)."""
    S = len(context)
    ids = context + [SOP] + seq
    pos = list(range(S)) + [mask_pos] * (len(seq) + 1)
    blk = [0] * S + list(range(1, len(seq) + 2))
    return torch.tensor([ids]), torch.tensor([[pos, blk]]), S


@torch.no_grad()
def full_logprobs(model: GLM, context: list[int], mask_pos: int, seq: list[int]) -> torch.Tensor:
    """Log-probs `[len(seq) + 1, V]` of every Part-B slot, from one uncached forward."""
    ids, pos, S = layout(context, mask_pos, seq)
    return torch.log_softmax(model(ids, pos, sep=S).logits[0, S:].double(), -1)


def uncached_greedy(model: GLM, context: list[int], mask_pos: int, steps: int) -> list[int]:
    seq: list[int] = []
    for _ in range(steps):
        tok = int(full_logprobs(model, context, mask_pos, seq)[-1].argmax())
        if tok == EOP:
            break
        seq.append(tok)
    return seq


CONTEXTS = [[2, 1, 3, 3, 1], [1, 1, 2, 0, 3], [3, 2, 2, 1, 1]]


def test_cached_greedy_equals_uncached_token_for_token():
    model = tiny_model(1, vocab=11)
    ctx = torch.tensor([[2, 1, 3, 7, 1, 9], [1, 6, 2, 0, 3, 8]])
    out = greedy_or_sample(model, ctx, torch.tensor([1, 4]), cfg(max_new_tokens=12))
    for row in range(2):
        ref = uncached_greedy(model, ctx[row].tolist(), [1, 4][row], 12)
        assert out.sequences[row] == ref
        assert len(ref) >= 3  # the comparison covers several cached steps
        # the score is the sum of the chosen tokens' log-probs (+ the closing eop if any)
        lp = full_logprobs(model, ctx[row].tolist(), [1, 4][row], ref)
        chosen = ref + ([EOP] if len(ref) < 12 else [])
        expected = sum(float(lp[i, t]) for i, t in enumerate(chosen))
        assert out.scores[row] == pytest.approx(expected, abs=1e-9)


def test_cached_step_logits_equal_full_forward():
    model = tiny_model(2)
    from glm.generation import _Decoder

    context, seq = CONTEXTS[0], [3, 1, 2, 2]
    dec = _Decoder(model, torch.tensor([2]))
    step_logits = [
        dec.prefill(torch.tensor([context]), layout(context, 2, [])[1][:, :, :-1], torch.tensor([5]), SOP)
    ]
    for tok in seq:
        step_logits.append(dec.advance(torch.tensor([tok])))
    full = full_logprobs(model, context, 2, seq)
    cached = torch.log_softmax(torch.cat(step_logits), -1)
    torch.testing.assert_close(cached, full, atol=1e-12, rtol=0)


@pytest.mark.parametrize("length_penalty", [0.0, 0.6, 1.0])
def test_one_beam_equals_greedy(length_penalty):
    model = tiny_model(3, vocab=11)
    ctx = torch.tensor(CONTEXTS)
    for extra in ({}, {"min_new_tokens": 4, "no_repeat_ngram_size": 2}):
        c = cfg(max_new_tokens=10, length_penalty=length_penalty, **extra)
        greedy = greedy_or_sample(model, ctx, 1, c)
        beam = beam_search(model, ctx, 1, c.replace(num_beams=1))
        assert beam.sequences == greedy.sequences


def exhaustive(
    model: GLM, context: list[int], mask_pos: int, max_len: int, lp: float
) -> list[tuple[float, list[int]]]:
    """Every hypothesis reachable in `max_len` steps, scored as docs/original-glm.md §9: a sequence closed by eop scores
    `sum_logprob(seq + eop) / max(len(seq), 1) ** lp`; a sequence still open at `max_len` scores
    `sum_logprob(seq) / len(seq) ** lp`."""
    words = [t for t in range(V) if t != EOP]
    out = []
    for n in range(max_len + 1):
        for seq in itertools.product(words, repeat=n):
            seq = list(seq)
            lp_all = full_logprobs(model, context, mask_pos, seq)
            body = sum(float(lp_all[i, t]) for i, t in enumerate(seq))
            if n < max_len:
                out.append(((body + float(lp_all[n, EOP])) / max(n, 1) ** lp, seq))
            else:
                out.append((body / n**lp, seq))
    return sorted(out, key=lambda x: -x[0])


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 0.7])
def test_beam_search_equals_exhaustive_search(length_penalty):
    model = tiny_model(4)
    context, mask_pos, max_len = CONTEXTS[1], 1, 3
    ref = exhaustive(model, context, mask_pos, max_len, length_penalty)
    assert len(ref) == 1 + 5 + 25 + 125
    # enough beams that nothing is pruned: the kept hypotheses must be exactly the exhaustive ranking
    out = beam_search(
        model,
        torch.tensor([context]),
        mask_pos,
        cfg(max_new_tokens=max_len, num_beams=len(ref), length_penalty=length_penalty),
    )
    got = out.hypotheses[0]
    assert [s for _, s in got] == [s for _, s in ref]
    assert [sc for sc, _ in got] == pytest.approx([sc for sc, _ in ref], abs=1e-9)
    assert out.sequences[0] == ref[0][1]
    # a small beam on the same model: its answer is a real hypothesis with its exact exhaustive score
    small = beam_search(
        model,
        torch.tensor([context]),
        mask_pos,
        cfg(max_new_tokens=max_len, num_beams=3, length_penalty=length_penalty),
    )
    by_seq = {tuple(s): sc for sc, s in ref}
    assert small.scores[0] == pytest.approx(by_seq[tuple(small.sequences[0])], abs=1e-9)


def test_beam_search_batch_equals_items_alone():
    model = tiny_model(5, vocab=11)
    c = cfg(max_new_tokens=6, num_beams=3, length_penalty=1.0, no_repeat_ngram_size=2)
    batched = beam_search(model, torch.tensor(CONTEXTS), torch.tensor([1, 2, 3]), c)
    for i, ctx in enumerate(CONTEXTS):
        alone = beam_search(model, torch.tensor([ctx]), i + 1, c)
        assert batched.sequences[i] == alone.sequences[0]
        assert batched.scores[i] == pytest.approx(alone.scores[0], abs=1e-9)


def test_padded_contexts_with_context_mask_decode_as_alone():
    model = tiny_model(6, vocab=11)
    short, long = [2, 1, 3], [1, 6, 2, 9, 3, 8]
    ids = torch.tensor([short + [PAD] * 3, long])
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6])
    for c in (cfg(max_new_tokens=6), cfg(max_new_tokens=6, num_beams=2, length_penalty=1.0)):
        out = generate(model, ids, torch.tensor([1, 1]), c, sep=torch.tensor([3, 6]), context_mask=mask)
        for row, ctx in enumerate((short, long)):
            alone = generate(model, torch.tensor([ctx]), 1, c)
            assert out.sequences[row] == alone.sequences[0]


# --------------------------------------------------------------------------------------------------
# Constructed logits: a scripted "model" with the backbone's call signature and a real KVCache
# --------------------------------------------------------------------------------------------------
class Scripted:
    """Returns the same logits row for every query (`logits_fn(step)` by block position); counts calls."""

    def __init__(self, logits_fn, vocab: int = 8) -> None:
        self.logits_fn, self.vocab, self.calls = logits_fn, vocab, 0

    def __call__(self, input_ids, position_ids, sep=None, attention_mask=None, cache=None, use_cache=False):
        self.calls += 1
        B, L = input_ids.shape
        step = int(position_ids[0, 1, -1])  # block position of the last slot: 1 for [sop]
        logits = torch.as_tensor(self.logits_fn(step), dtype=torch.float64).expand(B, L, self.vocab)
        kv = torch.zeros(B, 1, (cache.length if cache else 0) + L, 1)
        from types import SimpleNamespace

        return SimpleNamespace(logits=logits, cache=KVCache([kv], [kv]))


def test_banned_ngram_tokens_hand_cases():
    assert banned_ngram_tokens([1, 2, 3, 1, 2], 3) == {3}
    assert banned_ngram_tokens([1, 2, 3, 1, 2], 2) == {3}
    assert banned_ngram_tokens([1, 2, 1, 3, 1], 2) == {2, 3}
    assert banned_ngram_tokens([1, 2, 3, 1, 2], 1) == {1, 2, 3}
    assert banned_ngram_tokens([1, 2], 3) == set()
    scores = torch.zeros(2, 5)
    apply_no_repeat_ngram(scores, [[1, 2, 1], [3]], 2)
    assert torch.isinf(scores[0, 2]) and torch.isinf(scores).sum() == 1
    apply_min_length(scores, 1, 2, (4,))
    assert torch.isinf(scores[:, 4]).all()
    scores = torch.zeros(1, 5)
    apply_min_length(scores, 2, 2, (4,))
    assert not torch.isinf(scores).any()


def test_no_repeat_ngram_and_min_length_on_constructed_logits():
    # preference order 3 > 2 > 1 > eop(5) > others, every step
    prefs = torch.tensor([-9.0, 1.0, 2.0, 3.0, -9.0, 0.5, -9.0, -9.0])
    model = Scripted(lambda step: prefs)
    c = GenerationConfig(sop_id=4, eop_id=5, pad_id=0, max_new_tokens=7, no_repeat_ngram_size=2)
    # hand trace: 3, 3 (no bigram yet), then (3,3) is banned -> 2, then 3, then (3,3),(3,2) banned -> 1,
    # then 3; now (3,3),(3,2),(3,1) are all banned after a 3, so eop (the next preference) ends it
    assert greedy_or_sample(model, torch.zeros(1, 2, dtype=torch.long), 1, c).sequences[0] == [
        3,
        3,
        2,
        3,
        1,
        3,
    ]
    assert beam_search(model, torch.zeros(1, 2, dtype=torch.long), 1, c.replace(num_beams=1)).sequences[
        0
    ] == [3, 3, 2, 3, 1, 3]
    # eop is preferred at every step: without min length nothing is generated, with it exactly min tokens
    eop_first = torch.tensor([-9.0, 1.0, 2.0, 3.0, -9.0, 9.0, -9.0, -9.0])
    model = Scripted(lambda step: eop_first)
    c = GenerationConfig(sop_id=4, eop_id=5, pad_id=0, max_new_tokens=9)
    assert greedy_or_sample(model, torch.zeros(1, 2, dtype=torch.long), 1, c).sequences[0] == []
    out = greedy_or_sample(model, torch.zeros(1, 2, dtype=torch.long), 1, c.replace(min_new_tokens=4))
    assert out.sequences[0] == [3, 3, 3, 3]
    out = beam_search(model, torch.zeros(1, 2, dtype=torch.long), 1, c.replace(min_new_tokens=4, num_beams=2))
    assert len(out.sequences[0]) == 4


def test_beam_early_stop_rule_on_constructed_logits():
    # eop dominates: step 0 closes [] (beam 0), step 1 closes two one-token hypotheses -> 2 kept and the best
    # live beam cannot beat the worst -> done after 2 model calls (prefill + one step) out of 20 allowed.
    row = torch.log_softmax(
        torch.tensor([-9.0, 1.0, 2.0, 3.0, -9.0, 6.0, -9.0, -9.0], dtype=torch.float64), -1
    )
    model = Scripted(lambda step: row)
    out = beam_search(
        model,
        torch.zeros(1, 2, dtype=torch.long),
        1,
        GenerationConfig(sop_id=4, eop_id=5, pad_id=0, max_new_tokens=20, num_beams=2),
    )
    assert model.calls == 2
    assert out.sequences[0] == []
    assert out.scores[0] == pytest.approx(float(row[5]))
    assert [s for _, s in out.hypotheses[0]] == [[], [3]]
    assert out.hypotheses[0][1][0] == pytest.approx(float(row[3] + row[5]))


def test_beam_done_check_uses_the_best_candidate_eop_included():
    # The original's BeamSearchScorer.process calls is_done(next_scores.max(), cur_len): the best of all
    # 2 * beams candidates, an [eop] one included. Hand trace, 2 beams, length penalty 1, tokens 3 and 2:
    # step 0: p(3)=.6 p(eop)=.3 p(2)=.1 -> live [3], [2]; eop ranked 2nd closes [] at log .3.
    # step 1: p(eop)=.6 p(3)=.35 p(2)=.05 -> ranks: eop after [3] (closes [3], log .6 + log .6), [3, 3],
    #   eop after [2] (rank 3: ignored), [3, 2]. Kept: [3] = -1.022, [] = -1.204 (worst).
    #   Best candidate = the closed [3] at -1.022 > worst: not done. (The best *live* beam [3, 3] at
    #   -1.561 < worst would have stopped here and returned [3].)
    # step 2+: p(eop)=.9 p(3)=.05 p(2)=.05 -> eop after [3, 3] closes it at (log .6 + log .35 + log .9) / 2
    #   = -0.833, the new best; step 3 then finds nothing above the worst kept (-1.022) and stops.
    def probs(step: int) -> torch.Tensor:
        p = {1: {3: 0.6, 5: 0.3, 2: 0.1}, 2: {5: 0.6, 3: 0.35, 2: 0.05}}.get(step, {5: 0.9, 3: 0.05, 2: 0.05})
        return torch.log(torch.tensor([p.get(t, 0.0) for t in range(8)], dtype=torch.float64))

    model = Scripted(probs)
    out = beam_search(
        model,
        torch.zeros(1, 2, dtype=torch.long),
        1,
        GenerationConfig(sop_id=4, eop_id=5, pad_id=0, max_new_tokens=20, num_beams=2, length_penalty=1.0),
    )
    assert out.sequences[0] == [3, 3]
    assert out.scores[0] == pytest.approx((math.log(0.6) + math.log(0.35) + math.log(0.9)) / 2)
    assert [s for _, s in out.hypotheses[0]] == [[3, 3], [3]]
    assert model.calls == 4  # prefill ([sop]) + steps 1, 2, 3


def test_top_k_top_p_filter_hand_case():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = ~torch.isinf(top_k_top_p_filter(logits, top_p=0.7))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.7, 0.8 crosses it: kept; rest dropped
    kept = ~torch.isinf(top_k_top_p_filter(logits, top_k=3))
    assert kept.tolist() == [[True, True, True, False]]
    kept = ~torch.isinf(top_k_top_p_filter(logits, top_k=3, top_p=0.4))
    assert kept.tolist() == [[True, False, False, False]]


def test_sampling_is_seeded_and_matches_tempered_distribution():
    logits = torch.tensor([-9.0, 1.0, 2.0, 0.0, -30.0, -30.0, -30.0, -30.0])
    model = Scripted(lambda step: logits)
    n = 4000
    c = GenerationConfig(
        sop_id=4, eop_id=5, pad_id=0, max_new_tokens=1, do_sample=True, temperature=2.0, top_k=3, seed=123
    )
    ctx = torch.zeros(n, 1, dtype=torch.long)
    first = [s[0] for s in generate(model, ctx, 0, c).sequences]
    assert first == [s[0] for s in generate(model, ctx, 0, c).sequences]  # same seed, same samples
    p = torch.softmax(torch.tensor([1.0, 2.0, 0.0]) / 2.0, 0)  # top-3 of the tempered logits
    freq = torch.tensor([first.count(t) for t in (1, 2, 3)], dtype=torch.float64) / n
    assert set(first) <= {1, 2, 3}
    torch.testing.assert_close(freq, p.double(), atol=4 * math.sqrt(0.25 / n), rtol=0)
    # top_k=1 sampling is greedy
    greedy = generate(model, ctx[:3], 0, c.replace(top_k=1))
    assert all(s == [2] for s in greedy.sequences)


class WordTok:
    """Whitespace words -> ids 10.. (first use); the contract's special ids; `[MASK]` etc. are one id."""

    pad_id = eos_id = 0
    unk_id, cls_id, sep_id, mask_id, smask_id, gmask_id, sop_id, eop_id, dblock_id = range(1, 10)
    _special: ClassVar[dict[str, int]] = {"[MASK]": 4, "[sMASK]": 5, "[gMASK]": 6}

    def __init__(self, words: str) -> None:
        self.vocab = {w: 10 + i for i, w in enumerate(words.split())}
        self.inv = {v: k for k, v in self.vocab.items()}

    def encode(self, text: str) -> list[int]:
        return [self._special.get(w) or self.vocab[w] for w in text.split()]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(" " + self.inv[i] for i in ids if i in self.inv)


def test_fill_blanks_left_to_right_equals_uncached_reference():
    from glm.generation import build_blank_context, fill_blanks

    tok = WordTok("a b c d e f g h i j k l m n o p q r s t")
    model = tiny_model(11, vocab=30)
    with torch.no_grad():  # undo the embedding boost: otherwise every slot predicts its own input ([sop])
        model.word_embeddings.weight.div_(40.0)
        model.transformer.final_layernorm.bias.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    text = "a [MASK] b c [sMASK] d"
    out = fill_blanks(model, tok, text, GenerationConfig(max_new_tokens=4))
    context = build_blank_context(tok.encode(text), tok)
    assert context == [2, 10, 4, 11, 12, 5, 13, 0]  # [CLS] text [eos]
    # reference: every step re-runs context + all Part-B spans so far in one uncached forward (sep = context)
    ids, pos, blk, blanks = list(context), list(range(len(context))), [0] * len(context), []
    for m in (2, 5):
        ids.append(tok.sop_id), pos.append(m), blk.append(1)
        seq: list[int] = []
        for step in range(4):
            with torch.no_grad():
                logits = model(torch.tensor([ids]), torch.tensor([[pos, blk]]), sep=len(context)).logits[
                    0, -1
                ]
            t = int(logits.argmax())
            if t in (tok.eop_id, tok.eos_id):
                break
            seq.append(t)
            if step < 3:
                ids.append(t), pos.append(m), blk.append(step + 2)
        blanks.append(seq)
        if len(seq) == 4:  # the cache keeps [sop] + every generated token of a blank
            ids.append(seq[-1]), pos.append(m), blk.append(5)
    assert out.blank_ids == blanks
    assert len(blanks[0]) >= 2 and len(blanks[1]) >= 2  # several cached steps per blank are compared
    assert out.text == " a" + tok.decode(blanks[0]) + " b c" + tok.decode(blanks[1]) + " d"
    # no mask in the text: [gMASK] is appended and the context has no eos after it
    assert build_blank_context(tok.encode("a b"), tok) == [2, 10, 11, 6]
    assert build_blank_context(tok.encode("a b"), tok, task_mask=False) == [2, 10, 11, 4, 0]


class _EndsAfter(torch.nn.Module):
    """The model, with eop made the clear favourite from the `after`-th forward pass on, so that a batch
    finishes early; counts forward passes."""

    def __init__(self, model: GLM, after: int) -> None:
        super().__init__()
        self.inner, self.after, self.calls = model, after, 0

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        self.calls += 1
        if self.calls > self.after:
            out.logits[..., EOP] += 100.0
        return out


@pytest.mark.parametrize("num_beams", [1, 3])
def test_may_stop_keeps_stepping_without_changing_the_results(num_beams):
    """Under sharded parameters every process must run as many forward passes as the others: a `may_stop`
    that says "not yet" makes a finished batch keep stepping to max_new_tokens, with the same output."""
    c = cfg(max_new_tokens=8, num_beams=num_beams, length_penalty=1.0)
    early = _EndsAfter(tiny_model(5, vocab=11), after=3)
    ref = generate(early, torch.tensor(CONTEXTS), torch.tensor([1, 2, 3]), c)
    assert early.calls < 8  # the batch finished before max_new_tokens ...
    asked: list[bool] = []
    lockstep = _EndsAfter(tiny_model(5, vocab=11), after=3)
    out = generate(
        lockstep,
        torch.tensor(CONTEXTS),
        torch.tensor([1, 2, 3]),
        c,
        may_stop=lambda finished: asked.append(finished) or False,
    )
    assert lockstep.calls == 8 and asked[-1] is True  # ... and kept stepping: prefill + 7 advances
    assert out.sequences == ref.sequences and out.scores == ref.scores
