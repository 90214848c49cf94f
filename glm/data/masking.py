"""GLM blank-infilling objectives: token spans, sentences, documents and their mixture.

Pure numpy: ids and a ``numpy.random.Generator`` in, one laid-out sample out. No torch at module level
(only :func:`pad_samples` imports it) and nothing from the model.

Layout (docs/original-glm.md §3(a)): ``[Part A | Part B]`` where Part A is the text with every masked span replaced by one
mask token, and Part B holds, for each span, ``[sop] + span`` with targets ``span + [eop]``. Part-A tokens
have positions ``0 .. sep-1`` and block 0; every Part-B token of a span has the position of that span's
mask token and block positions ``1, 2, ...`` (all 1 with ``block_position_encoding=False``).

Modes (``MaskedSample.mode``; the original's names in brackets):

- ``"token"`` [bert]: Poisson span lengths covering ``bert_ratio`` of the sample (docs/original-glm.md §5.3).
- ``"sentence"`` [sentence]: whole sentences covering ``gap_sentence_ratio`` (docs/original-glm.md §5.4).
- ``"document"`` [gpt]: one long blank, either the suffix ``[gMASK]`` form or a single span (docs/original-glm.md §5.5).

Deliberate deviations from the original (``blocklm_utils.py::ConstructBlockStrategy``), each for a reason:

- **One sample at a time, its own generator.** The original draws the mode (and the generation length G)
  once per batch from a generator seeded by a batch counter and the worker id, so layouts depend on the
  worker count. Here :class:`GLMMasker` handles one sample and draws mode and G from the generator it is
  given; build it with :func:`sample_rng` ``(seed, epoch, index)`` and the layout of sample ``index`` in
  ``epoch`` is fixed whatever the number of workers or the batch it lands in. Per-sample G means
  ``G ~ U{int(gpt_min_ratio * len), len - 2}`` with the sample's own length (the batch min/max of the
  original coincide with it for equal-length samples, the pretraining case).
- **Never an unmasked or dropped sample.** The original drops a token-mode sample whose spans do not all
  fit (common when a sample holds many short documents: each non-longest document takes at most 15% of
  itself, and the longest may lack room for the rest). Here the same span lengths are re-shuffled and
  placed again by the original rule (``PLACEMENT_TRIES`` times; a re-shuffle keeps the drawn length multiset,
  so span statistics are unchanged); if all fail, the spans are spread over the documents in proportion
  to their free room (:func:`_allocate_spread`, counted as "token_spread"; same placement rules, only the
  15%-per-document cap is dropped); if even that cannot place every span (a long span that fits no
  document), the attempt that placed the most tokens is used, counted as "token_partial". A sentence-mode
  sample without any sentence candidate falls back to token mode, a single document span that cannot be
  placed falls back to the suffix form. Every fallback is counted in ``GLMMasker.fallbacks`` and logged
  (warning the first time per kind and process). A sample with no maskable token at all raises ``ValueError``.
- **At least one token-level span.** The span budget is ``max(1, int(bert_ratio * len))`` (the original
  asks for ``int(...)``, which is 0, i.e. no blank, for samples shorter than 7 tokens).
- **Short-sequence splitting** changes the number of samples, so it is not part of ``__call__``: callers use
  :meth:`GLMMasker.maybe_split` (or :func:`split_short`) before masking each piece.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

__all__ = [
    "MODES",
    "PLACEMENT_TRIES",
    "PRESETS",
    "SENTENCE_END_CHARS",
    "GLMMasker",
    "MaskedSample",
    "MaskingConfig",
    "SpecialIds",
    "build_sentence_end",
    "collate_masked",
    "pad_samples",
    "default_loss_mask",
    "layout_spans",
    "layout_suffix",
    "place_spans",
    "sample_rng",
    "sentence_candidates",
    "sentence_end_from_tokenizer",
    "span_length_pmf",
    "split_short",
]

log = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("token", "sentence", "document")

# docs/original-glm.md §5.4: a token ends a sentence when its text contains any of these.
SENTENCE_END_CHARS: tuple[str, ...] = (".", "?", "!", ";", ":", "。", "？", "！", "；", "…", "\n")

# Re-shuffles of the span lengths tried before the partial-placement fallback (see module docstring).
PLACEMENT_TRIES = 4


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


def _check_prob(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"MaskingConfig.{name}: must be a probability in [0, 1], got {value!r}")


@dataclass
class MaskingConfig:
    """The pretraining objective (docs/original-glm.md §5.2-§5.7). Field names follow the original's arguments.

    The document/generation probability is the rest, ``1 - bert_prob - gap_sentence_prob``.
    Defaults are the original argparse defaults (docs/original-glm.md §5.7 first row).
    """

    bert_prob: float = 0.5  # token-level blanks
    gap_sentence_prob: float = 0.0  # sentence-level blanks
    gpt_min_ratio: float = 0.5  # document mode: G >= int(gpt_min_ratio * len)
    avg_block_length: float = 3.0  # Poisson lambda of token span lengths
    max_block_length: int = 40  # exclusive cap: lengths are 1 .. max_block_length - 1
    bert_ratio: float = 0.15  # token mode masks >= int(bert_ratio * len) tokens
    gap_sentence_ratio: float = 0.15  # sentence mode masks >= int(gap_sentence_ratio * len) tokens
    gpt_infill_prob: float = 0.5  # single-document samples take the suffix form with this probability
    shuffle_blocks: bool = True  # Part-B spans in random order (else text order)
    block_position_encoding: bool = True  # False: every Part-B token gets block id 1 (--no-block-position)
    task_mask: bool = False  # [sMASK]/[gMASK] for sentence/document blanks, else [MASK]
    block_mask_prob: float = 0.0  # token mode: Part-B inputs (not [sop]) -> [dBLOCK]
    short_seq_prob: float = 0.0  # probability of splitting a sample into short pieces (maybe_split)
    single_span_prob: float = 0.0  # token mode with exactly one span

    def __post_init__(self) -> None:
        for name in (
            "bert_prob",
            "gap_sentence_prob",
            "gpt_min_ratio",
            "gpt_infill_prob",
            "block_mask_prob",
            "short_seq_prob",
            "single_span_prob",
        ):
            _check_prob(name, getattr(self, name))
        for name in ("bert_ratio", "gap_sentence_ratio"):
            value = getattr(self, name)
            _check_prob(name, value)
            if value == 0:
                raise ValueError(
                    f"MaskingConfig.{name}: must be > 0 (a zero ratio masks nothing), got {value!r}"
                )
        if self.bert_prob + self.gap_sentence_prob > 1.0 + 1e-9:
            raise ValueError(
                f"MaskingConfig: bert_prob + gap_sentence_prob = {self.bert_prob + self.gap_sentence_prob:g} "
                "exceeds 1 (the document probability is the rest and cannot be negative)"
            )
        if isinstance(self.avg_block_length, bool) or not (
            isinstance(self.avg_block_length, (int, float)) and self.avg_block_length > 0
        ):
            raise ValueError(f"MaskingConfig.avg_block_length: must be > 0, got {self.avg_block_length!r}")
        if (
            isinstance(self.max_block_length, bool)
            or not isinstance(self.max_block_length, int)
            or (self.max_block_length < 2)
        ):
            raise ValueError(
                "MaskingConfig.max_block_length: must be an int >= 2 (exclusive cap; lengths are "
                f"1 .. max_block_length - 1), got {self.max_block_length!r}"
            )
        for name in ("shuffle_blocks", "block_position_encoding", "task_mask"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"MaskingConfig.{name}: must be true/false, got {getattr(self, name)!r}")

    @property
    def gpt_prob(self) -> float:
        """Probability of document mode (the rest of the mixture)."""
        return max(0.0, 1.0 - self.bert_prob - self.gap_sentence_prob)

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> MaskingConfig:
        """A named preset (see ``PRESETS``) with optional field overrides."""
        if name not in PRESETS:
            raise ValueError(f"MaskingConfig.from_name: unknown preset {name!r}; known: {', '.join(PRESETS)}")
        unknown = set(overrides) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"MaskingConfig.from_name({name!r}): unknown fields {sorted(unknown)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# docs/original-glm.md §5.7 (config/ds_block_*.sh). Unlisted fields keep the argparse defaults of MaskingConfig.
PRESETS: dict[str, dict[str, Any]] = {
    "glm-base": {"bert_prob": 1.0, "gap_sentence_prob": 0.0},
    "glm-large": {"bert_prob": 1.0, "gap_sentence_prob": 0.0},
    "glm-roberta": {"bert_prob": 1.0, "gap_sentence_prob": 0.0, "task_mask": True},
    "glm-10b": {
        "bert_prob": 0.5,
        "gap_sentence_prob": 0.3,
        "gpt_min_ratio": 0.25,
        "task_mask": True,
        "block_mask_prob": 0.1,
        "short_seq_prob": 0.02,
    },
    "glm-10b-longer": {
        "bert_prob": 0.4,
        "gap_sentence_prob": 0.3,
        "gpt_min_ratio": 0.25,
        "task_mask": True,
        "block_mask_prob": 0.1,
        "short_seq_prob": 0.5,
        "single_span_prob": 0.05,
    },
    "glm-large-chinese": {
        "bert_prob": 0.4,
        "gap_sentence_prob": 0.3,
        "gpt_min_ratio": 0.25,
        "task_mask": True,
        "block_mask_prob": 0.1,
        "short_seq_prob": 0.02,
    },
    # GLM-Doc / GLM-410M / GLM-515M ("Token+Doc"): the repository has no config (docs/original-glm.md §5.7, §13.1:
    # unconfirmed). Decision: the argparse defaults, 0.5 token + 0.5 document, gpt_min_ratio 0.5, no task
    # mask -- they match the paper's description of the objective and are what the code runs without flags.
    "glm-doc": {"bert_prob": 0.5, "gap_sentence_prob": 0.0, "gpt_min_ratio": 0.5},
    # Single-mode objectives (for ablations and the conf/objective group).
    "span": {"bert_prob": 1.0, "gap_sentence_prob": 0.0},
    "sentence": {"bert_prob": 0.0, "gap_sentence_prob": 1.0},
    "document": {"bert_prob": 0.0, "gap_sentence_prob": 0.0},
}


def span_length_pmf(avg_block_length: float, max_block_length: int) -> np.ndarray:
    """Probabilities of span lengths ``1 .. max_block_length - 1``: Poisson(λ) restricted and renormalised.

    Index ``i`` holds ``P(length = i + 1)``.
    """
    k = np.arange(1, max_block_length, dtype=np.float64)
    lam = float(avg_block_length)
    log_pmf = k * math.log(lam) - lam - np.array([math.lgamma(x + 1.0) for x in k])
    pmf = np.exp(log_pmf - log_pmf.max())  # rescaled before normalising: no underflow for large λ
    return pmf / pmf.sum()


# --------------------------------------------------------------------------------------------------
# Special ids, samples, sentence ends
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecialIds:
    """The special-token ids the masking needs (docs/original-glm.md §4)."""

    cls: int
    eos: int
    pad: int
    mask: int
    smask: int
    gmask: int
    sop: int
    eop: int
    dblock: int

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"SpecialIds.{name}: must be a non-negative int, got {value!r}")

    @classmethod
    def from_tokenizer(cls, tok: Any) -> SpecialIds:
        """Read ``tok.cls_id``, ``tok.eos_id``, ... (the GLMTokenizer attributes of docs/contracts.md)."""
        ids = {}
        for name in ("cls", "eos", "pad", "mask", "smask", "gmask", "sop", "eop", "dblock"):
            attr = f"{name}_id"
            if not hasattr(tok, attr):
                raise ValueError(f"SpecialIds.from_tokenizer: {type(tok).__name__} has no attribute {attr!r}")
            value = getattr(tok, attr)
            if value is None:  # e.g. BERT/GPT-2 vocabularies of models trained without task masks
                raise ValueError(
                    f"SpecialIds.from_tokenizer: {type(tok).__name__} has no {attr} (None); the GLM masking "
                    f"needs every special token: use a tokenizer family that defines [sMASK]/[gMASK]/[dBLOCK]"
                )
            ids[name] = int(value)
        return cls(**ids)


@dataclass
class MaskedSample:
    """One laid-out sample (length ``N = len(input_ids)``).

    ``input_ids``/``targets`` int64 [N], ``loss_mask`` float32 [N] (0 on Part A), ``position_ids`` int64
    [2, N] (row 0 positions, row 1 block positions), ``sep`` = Part-A length, ``mode`` in ``MODES``.
    """

    input_ids: np.ndarray
    targets: np.ndarray
    loss_mask: np.ndarray
    position_ids: np.ndarray
    sep: int
    mode: str

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def build_sentence_end(
    id_to_piece: Callable[[int], str], vocab_size: int, num_pieces: int | None = None
) -> np.ndarray:
    """Boolean table over the (padded) vocabulary: True where the token text ends a sentence (docs/original-glm.md §5.4).

    Only ids ``< num_pieces`` (default ``vocab_size``) are looked up; padding rows stay False.
    """
    n = vocab_size if num_pieces is None else num_pieces
    if not 0 <= n <= vocab_size:
        raise ValueError(f"build_sentence_end: num_pieces={n} must be within [0, vocab_size={vocab_size}]")
    table = np.zeros(vocab_size, dtype=bool)
    for i in range(n):
        piece = id_to_piece(i)
        table[i] = any(ch in piece for ch in SENTENCE_END_CHARS)
    return table


def sentence_end_from_tokenizer(tok: Any) -> np.ndarray:
    """:func:`build_sentence_end` over ``tok.id_to_piece`` for ids below ``tok.num_text_tokens``."""
    return build_sentence_end(
        tok.id_to_piece, int(tok.vocab_size), int(getattr(tok, "num_text_tokens", tok.vocab_size))
    )


def default_loss_mask(tokens: np.ndarray, cls_id: int) -> np.ndarray:
    """A raw sample's loss mask (docs/original-glm.md §5.1): 0 on every ``[CLS]``, 1 elsewhere.

    Decision: every ``[CLS]`` (not only the first) gets 0, because a ``[CLS]`` after an eos is implied by
    the eos and carries nothing to learn. Used only by the suffix form of document mode.
    """
    return (np.asarray(tokens) != cls_id).astype(np.float32)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of sample ``index`` in ``epoch``: ``np.random.default_rng([seed, epoch, index])``."""
    for name, value in (("seed", seed), ("epoch", epoch), ("index", index)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"sample_rng: {name} must be a non-negative int, got {value!r}")
    return np.random.default_rng([int(seed), int(epoch), int(index)])


# --------------------------------------------------------------------------------------------------
# Layouts (deterministic given spans)
# --------------------------------------------------------------------------------------------------


def layout_spans(
    tokens: np.ndarray,
    spans: np.ndarray | Sequence[tuple[int, int]],
    order: np.ndarray | Sequence[int] | None,
    *,
    mask_id: int,
    sop_id: int,
    eop_id: int,
    block_position_encoding: bool = True,
    mode: str = "token",
) -> MaskedSample:
    """Lay out ``tokens`` with the given blanks exactly as docs/original-glm.md §3(a).

    ``spans``: ``[k, 2]`` half-open ``(start, end)`` ranges in text order, non-empty and non-overlapping.
    ``order``: Part-B order as indices into ``spans`` (a permutation of ``range(k)``); ``None`` = text order.
    Part A targets are the Part-A inputs with loss mask 0; Part B has loss mask 1 on every slot.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    n = tokens.shape[0]
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    k = spans.shape[0]
    if k == 0:
        raise ValueError("layout_spans: at least one span is needed (an unmasked sample has no Part B)")
    starts, ends = spans[:, 0], spans[:, 1]
    if starts[0] < 0 or ends[-1] > n or np.any(ends <= starts) or np.any(starts[1:] < ends[:-1]):
        raise ValueError(
            f"layout_spans: spans must be non-empty, sorted, non-overlapping and within [0, {n}], got "
            f"{spans.tolist()}"
        )
    order = np.arange(k) if order is None else np.asarray(order, dtype=np.int64)
    if order.shape != (k,) or not np.array_equal(np.sort(order), np.arange(k)):
        raise ValueError(f"layout_spans: order must be a permutation of range({k}), got {order.tolist()}")
    lens = ends - starts

    # Part A keeps every token outside the spans plus each span's first slot, which becomes the mask.
    inner = np.zeros(n + 1, dtype=np.int64)
    inner[starts + 1] += 1
    inner[ends] -= 1
    keep = np.cumsum(inner[:n]) == 0
    a_index = np.flatnonzero(keep)
    sep = a_index.shape[0]
    a_ids = tokens[a_index]
    mask_pos = np.searchsorted(a_index, starts)  # Part-A slot of each span's mask token
    a_ids[mask_pos] = mask_id

    # Part B: block b = [sop] + span, targets span + [eop]; r = slot within its block.
    o_starts, o_lens = starts[order], lens[order]
    blen = o_lens + 1
    nb = int(blen.sum())
    blk = np.repeat(np.arange(k), blen)
    r = np.arange(nb) - np.repeat(np.cumsum(blen) - blen, blen)
    src = o_starts[blk] + r  # text index of the target at slot r (== span end at the [eop] slot)
    b_in = tokens[src - 1]  # r == 0 reads start - 1 (maybe index -1); overwritten by [sop] below
    b_in[r == 0] = sop_id
    b_tgt = tokens[np.minimum(src, n - 1)]
    b_tgt[r == o_lens[blk]] = eop_id

    input_ids = np.concatenate([a_ids, b_in])
    targets = np.concatenate([a_ids, b_tgt])
    loss_mask = np.concatenate([np.zeros(sep, np.float32), np.ones(nb, np.float32)])
    positions = np.concatenate([np.arange(sep, dtype=np.int64), mask_pos[order][blk]])
    blocks = np.concatenate(
        [np.zeros(sep, np.int64), r + 1 if block_position_encoding else np.ones(nb, np.int64)]
    )
    return MaskedSample(input_ids, targets, loss_mask, np.stack([positions, blocks]), int(sep), mode)


def layout_suffix(
    tokens: np.ndarray,
    gen_length: int,
    *,
    mask_id: int,
    sop_id: int,
    loss_mask: np.ndarray | None = None,
    cls_id: int | None = None,
    block_position_encoding: bool = True,
) -> MaskedSample:
    """Generation layout with suffix (docs/original-glm.md §5.5): ``source + [gMASK] | [sop] + target[:-1]``.

    ``S = len - gen_length``; targets ``source + [gMASK] + target`` (no ``[eop]``); ``sep = S + 1``;
    loss mask = the sample's loss mask on the ``gen_length`` target slots (default
    :func:`default_loss_mask` with ``cls_id``), 0 elsewhere.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    n = tokens.shape[0]
    g = int(gen_length)
    if not 1 <= g <= n - 1:
        raise ValueError(
            f"layout_suffix: gen_length must be within [1, {n - 1}] for a sample of {n}, got {g}"
        )
    if loss_mask is None:
        if cls_id is None:
            raise ValueError("layout_suffix: give loss_mask or cls_id")
        loss_mask = default_loss_mask(tokens, cls_id)
    loss_mask = np.asarray(loss_mask, dtype=np.float32)
    if loss_mask.shape != (n,):
        raise ValueError(f"layout_suffix: loss_mask shape {loss_mask.shape} != tokens shape {(n,)}")
    s = n - g
    head = np.concatenate([tokens[:s], [mask_id]])
    input_ids = np.concatenate([head, [sop_id], tokens[s:-1]])
    targets = np.concatenate([head, tokens[s:]])
    lm = np.concatenate([np.zeros(s + 1, np.float32), loss_mask[s:]])
    positions = np.concatenate([np.arange(s + 1, dtype=np.int64), np.full(g, s, np.int64)])
    blocks = np.zeros(s + 1 + g, np.int64)
    blocks[s + 1 :] = np.arange(1, g + 1) if block_position_encoding else 1
    return MaskedSample(input_ids, targets, lm, np.stack([positions, blocks]), s + 1, "document")


# --------------------------------------------------------------------------------------------------
# Span placement (docs/original-glm.md §5.3)
# --------------------------------------------------------------------------------------------------


def place_spans(lengths: np.ndarray, doc_start: int, offsets: np.ndarray) -> np.ndarray:
    """docs/original-glm.md §5.3 offset formula: span ``j`` starts at ``doc_start + offsets_j + sum(l_1..l_{j-1}) + j - 1``.

    ``offsets`` must be sorted, each in ``{0, ..., D - sum(lengths) - k + 1}``; the result ``[k, 2]`` keeps at
    least one unmasked token between consecutive spans and stays inside ``[doc_start, doc_start + D)``.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    k = lengths.shape[0]
    return _place_grouped(
        lengths, np.zeros(k, np.int64), np.full(k, doc_start, np.int64), np.asarray(offsets, dtype=np.int64)
    )


def _place_grouped(
    lengths: np.ndarray, group: np.ndarray, doc_start: np.ndarray, offsets: np.ndarray
) -> np.ndarray:
    """:func:`place_spans` for several documents at once (per span: its group id, run of equal ids per
    document; the document start; the offset, sorted within the group)."""
    k = lengths.shape[0]
    first = np.flatnonzero(np.concatenate([[True], group[1:] != group[:-1]]))
    sizes = np.diff(np.append(first, k))
    before = np.cumsum(lengths) - lengths
    before -= np.repeat(before[first], sizes)  # lengths of the earlier spans of the same document
    rank = np.arange(k) - np.repeat(first, sizes)  # j - 1: one free token after each earlier span
    starts = doc_start + offsets + before + rank
    return np.stack([starts, starts + lengths], axis=1)


def _documents(tokens: np.ndarray, cls_id: int, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Maximal runs of maskable positions (not [CLS], not eos, not the final token): starts, lengths."""
    eligible = (tokens != cls_id) & (tokens != eos_id)
    eligible[-1] = False
    edges = np.diff(eligible.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    run_starts = np.flatnonzero(edges == 1)
    run_ends = np.flatnonzero(edges == -1)
    return run_starts, run_ends - run_starts


def _allocate(
    lengths: np.ndarray, doc_starts: np.ndarray, doc_lens: np.ndarray, ratio: float, rng: np.random.Generator
) -> np.ndarray:
    """Place ``lengths`` (already in list order) over documents, shortest first (docs/original-glm.md §5.3).

    Each non-longest document takes the longest prefix of the remaining list with total
    ``<= int(ratio * D)``; the longest takes the longest prefix that fits (``m + k - 1 <= D``). Returns the
    placed spans ``[p, 2]`` sorted by start (``p < len(lengths)`` when not all fit).
    """
    # Python ints: the lists are short (tens of spans, a few documents) and numpy calls cost more here.
    todo = lengths.tolist()
    n = len(todo)
    sizes = doc_lens.tolist()
    by_len = sorted(range(len(sizes)), key=sizes.__getitem__)  # stable: ties keep text order
    groups = []  # (document, number of spans, their total)
    i = 0
    for rank, d in enumerate(by_len):
        if i == n:
            break
        longest = rank == len(by_len) - 1
        cap = sizes[d] if longest else int(ratio * sizes[d])
        m = k = 0
        # longest: m + k - 1 <= D after adding (room for the gaps); others: m <= int(ratio * D)
        while i + k < n and m + todo[i + k] + (k if longest else 0) <= cap:
            m += todo[i + k]
            k += 1
        if k:
            groups.append((d, k, m))
            i += k
    if not groups:
        return np.zeros((0, 2), np.int64)
    docs = np.array([g[0] for g in groups], np.int64)
    counts = np.array([g[1] for g in groups], np.int64)
    group = np.repeat(np.arange(len(groups)), counts)
    hi = doc_lens[docs] - np.array([g[2] for g in groups], np.int64) - counts + 1  # largest offset
    # One uniform draw per span, floor-scaled to {0, ..., hi} of its document, sorted within the document.
    offsets = (rng.random(i) * (hi[group] + 1)).astype(np.int64)
    offsets = offsets[np.lexsort((offsets, group))]
    spans = _place_grouped(lengths[:i], group, doc_starts[docs][group], offsets)
    return spans[np.argsort(spans[:, 0], kind="stable")]


def _allocate_spread(
    lengths: np.ndarray, doc_starts: np.ndarray, doc_lens: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Fallback allocation: longest span first, each into the document with the largest free fraction.

    A document holding lengths with total ``m`` in ``k`` spans fits iff ``m + k - 1 <= D`` (the offset
    rule's condition). Spans are then placed per document by :func:`place_spans` in a random order.
    Returns the placed spans sorted by start (fewer than ``len(lengths)`` if some length fits nowhere).
    """
    sizes = doc_lens.tolist()
    nd = len(sizes)
    used = [0] * nd  # masked tokens + gaps already needed (m + k)
    assigned: list[list[int]] = [[] for _ in range(nd)]
    for length in sorted(lengths.tolist(), reverse=True):
        best, best_free = -1, -1.0
        for d in range(nd):
            # after adding it: m + k - 1 = used + length <= D
            if used[d] + length <= sizes[d] and (sizes[d] - used[d]) / sizes[d] > best_free:
                best, best_free = d, (sizes[d] - used[d]) / sizes[d]
        if best >= 0:
            assigned[best].append(length)
            used[best] += length + 1
    placed = []
    for d in range(nd):
        if not assigned[d]:
            continue
        chosen = rng.permutation(np.array(assigned[d], np.int64))
        hi = int(doc_lens[d]) - int(chosen.sum()) - chosen.shape[0] + 1
        placed.append(
            place_spans(chosen, int(doc_starts[d]), np.sort(rng.integers(0, hi + 1, size=chosen.shape[0])))
        )
    if not placed:
        return np.zeros((0, 2), np.int64)
    spans = np.concatenate(placed)
    return spans[np.argsort(spans[:, 0], kind="stable")]


def sentence_candidates(tokens: np.ndarray, sentence_end: np.ndarray, cls_id: int, eos_id: int) -> np.ndarray:
    """docs/original-glm.md §5.4 sentence candidates ``[c, 2]`` (half-open, text order).

    Ranges end at (and include) each sentence-end token, starting after the leading ``[CLS]``; an eos
    closes a range without making it a candidate; a final unterminated range is a candidate. A ``[CLS]``
    after an eos belongs to the next document's first sentence.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    n = tokens.shape[0]
    first = 1 if n and tokens[0] == cls_id else 0
    is_eos = tokens == eos_id
    stops = np.flatnonzero((sentence_end[tokens] | is_eos)[first:]) + first
    starts = np.concatenate([[first], stops[:-1] + 1])
    keep = ~is_eos[stops]
    cand = np.stack([starts[keep], stops[keep] + 1], axis=1)
    tail = int(stops[-1]) + 1 if stops.shape[0] else first
    if tail < n:
        cand = np.concatenate([cand, [[tail, n]]])
    return cand.astype(np.int64)


# --------------------------------------------------------------------------------------------------
# Short-sequence splitting (docs/original-glm.md §5.2 step 1)
# --------------------------------------------------------------------------------------------------


def split_short(
    tokens: np.ndarray,
    rng: np.random.Generator,
    seq_length: int,
    sentence_end: np.ndarray,
    cls_id: int,
    eos_id: int,
    min_length: int = 32,
) -> list[np.ndarray]:
    """Split one ``[CLS] ...`` sample into ``(seq_length - 1) // T`` pieces of about ``T`` tokens.

    ``T ~ U{min_length, seq_length - 2}``. Each piece is a random window of the sample without its leading
    ``[CLS]``, whose start moves back to the nearest sentence start (after a sentence end or an eos, not on
    an eos) and whose end moves back to the last sentence end inside the window, unless that leaves fewer
    than ``T // 2`` tokens; then ``[CLS]`` is prepended. Windows may overlap (as in the original).
    A sample no longer than ``T`` is returned once (the original repeats it ``(seq_length - 1) // T`` times).
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    if seq_length - 2 < min_length:
        raise ValueError(f"split_short: seq_length={seq_length} leaves no piece length >= {min_length}")
    t = int(rng.integers(min_length, seq_length - 1))  # U{min_length, seq_length - 2}
    count = (seq_length - 1) // t
    body = tokens[1:] if tokens.shape[0] and tokens[0] == cls_id else tokens
    if t >= body.shape[0]:
        return [np.concatenate([[cls_id], body])]
    is_eos = body == eos_id
    boundary_after = sentence_end[body] | is_eos  # a sentence starts right after these
    valid_start = np.concatenate([[True], boundary_after[:-1]]) & ~is_eos
    valid_start[0] = True
    start_ok = np.flatnonzero(valid_start)
    end_ok = np.flatnonzero(boundary_after) + 1  # exclusive ends that close a sentence
    pieces = []
    for draw in rng.integers(0, body.shape[0] - t, size=count):
        start = int(start_ok[np.searchsorted(start_ok, draw, side="right") - 1])
        stop = start + t
        j = np.searchsorted(end_ok, stop, side="right") - 1
        if j >= 0 and end_ok[j] > start and end_ok[j] - start >= t // 2:
            stop = int(end_ok[j])
        pieces.append(np.concatenate([[cls_id], body[start:stop]]))
    return pieces


# --------------------------------------------------------------------------------------------------
# The masker
# --------------------------------------------------------------------------------------------------


class GLMMasker:
    """Turns one raw sample (``[CLS] doc [eos] ([CLS] doc [eos])*``, maybe cut) into a :class:`MaskedSample`.

    ``sentence_end`` is a boolean table over the vocabulary (:func:`sentence_end_from_tokenizer`); token
    ids must be below its length. The mode (and G in document mode) is drawn from the ``rng`` given to
    each call, so the result depends only on the tokens and the generator state.
    """

    def __init__(self, config: MaskingConfig, special_ids: SpecialIds, sentence_end: np.ndarray) -> None:
        if not isinstance(config, MaskingConfig):
            raise TypeError(f"GLMMasker: config must be a MaskingConfig, got {type(config).__name__}")
        sentence_end = np.asarray(sentence_end)
        if sentence_end.ndim != 1 or sentence_end.dtype != bool:
            raise ValueError(
                f"GLMMasker: sentence_end must be a 1-D bool array, got {sentence_end.dtype} "
                f"shape {sentence_end.shape}"
            )
        self.config = config
        self.ids = special_ids
        self.sentence_end = sentence_end
        self.vocab_size = sentence_end.shape[0]
        top = max(asdict(special_ids).values())
        if top >= self.vocab_size:
            raise ValueError(f"GLMMasker: special id {top} >= len(sentence_end) = {self.vocab_size}")
        pmf = span_length_pmf(config.avg_block_length, config.max_block_length)
        self._cdf = np.cumsum(pmf)
        self._cdf[-1] = 1.0  # u < 1 always maps to a valid length
        self._mean_length = float(np.dot(pmf, np.arange(1, pmf.shape[0] + 1)))
        t = config.task_mask
        self.sentence_mask_id = special_ids.smask if t else special_ids.mask
        self.document_mask_id = special_ids.gmask if t else special_ids.mask
        self.fallbacks: Counter[str] = Counter()

    # -- public entry points --------------------------------------------------------------------------

    def __call__(
        self, tokens: np.ndarray, rng: np.random.Generator, loss_mask: np.ndarray | None = None
    ) -> MaskedSample:
        """Mask one sample with a mode drawn from ``rng`` (docs/original-glm.md §5.2 steps 2-3, per sample)."""
        tokens = self._check_tokens(tokens)
        cfg = self.config
        if cfg.single_span_prob > 0 and rng.random() < cfg.single_span_prob:
            return self.mask_tokens(tokens, rng, single_span=True)
        u = rng.random()
        if u < cfg.bert_prob:
            return self.mask_tokens(tokens, rng)
        if u < cfg.bert_prob + cfg.gap_sentence_prob:
            return self.mask_sentences(tokens, rng)
        return self.mask_document(tokens, rng, loss_mask)

    def maybe_split(self, tokens: np.ndarray, rng: np.random.Generator, seq_length: int) -> list[np.ndarray]:
        """With probability ``short_seq_prob`` :func:`split_short`, else ``[tokens]``; mask each piece."""
        if self.config.short_seq_prob > 0 and rng.random() < self.config.short_seq_prob:
            return split_short(tokens, rng, seq_length, self.sentence_end, self.ids.cls, self.ids.eos)
        return [np.asarray(tokens)]

    def mask_tokens(
        self, tokens: np.ndarray, rng: np.random.Generator, single_span: bool = False
    ) -> MaskedSample:
        """Token-level blanks (docs/original-glm.md §5.3); ``single_span`` draws exactly one span length."""
        tokens = self._check_tokens(tokens)
        n = tokens.shape[0]
        doc_starts, doc_lens = _documents(tokens, self.ids.cls, self.ids.eos)
        if doc_lens.sum() == 0:
            raise ValueError(
                f"GLMMasker: sample of {n} tokens has no maskable token (every token is [CLS], eos or the "
                "final token); filter such samples before masking"
            )
        lengths = self._draw_lengths(
            1 if single_span else max(1, int(self.config.bert_ratio * n)), rng, single_span
        )
        best = None
        for _ in range(PLACEMENT_TRIES):
            lengths = rng.permutation(lengths)
            spans = _allocate(lengths, doc_starts, doc_lens, self.config.bert_ratio, rng)
            if spans.shape[0] == lengths.shape[0]:
                best = spans
                break
            if best is None or _covered(spans) > _covered(best):
                best = spans
        if best.shape[0] < lengths.shape[0]:
            # Many short documents can leave the longest one too little room under the original rule.
            spans = _allocate_spread(lengths, doc_starts, doc_lens, rng)
            if spans.shape[0] == lengths.shape[0]:
                self._fallback(
                    "token_spread",
                    f"{lengths.shape[0]} spans spread over {doc_lens.shape[0]} documents in a sample of {n}",
                )
                best = spans
            elif _covered(spans) > _covered(best):
                best = spans
        if best.shape[0] < lengths.shape[0]:
            if best.shape[0] == 0:
                # Not one drawn length fits anywhere: one span as long as the longest document allows.
                d = int(np.argmax(doc_lens))
                length = min(int(lengths.min()), int(doc_lens[d]))
                off = int(rng.integers(0, doc_lens[d] - length + 1))
                best = np.array([[doc_starts[d] + off, doc_starts[d] + off + length]], np.int64)
            self._fallback(
                "token_partial",
                f"placed {best.shape[0]} span(s) of {_covered(best)} tokens instead "
                f"of the {lengths.shape[0]} drawn ({int(lengths.sum())} tokens) in a "
                f"sample of {n}",
            )
        sample = layout_spans(
            tokens,
            best,
            self._order(best.shape[0], rng),
            mask_id=self.ids.mask,
            sop_id=self.ids.sop,
            eop_id=self.ids.eop,
            block_position_encoding=self.config.block_position_encoding,
            mode="token",
        )
        if self.config.block_mask_prob > 0:
            self._dblock(sample, rng)
        return sample

    def mask_sentences(self, tokens: np.ndarray, rng: np.random.Generator) -> MaskedSample:
        """Sentence-level blanks (docs/original-glm.md §5.4); a sample without any sentence candidate uses token mode."""
        tokens = self._check_tokens(tokens)
        n = tokens.shape[0]
        cand = sentence_candidates(tokens, self.sentence_end, self.ids.cls, self.ids.eos)
        if cand.shape[0] == 0:
            self._fallback("sentence_to_token", f"no sentence candidate in a sample of {n} tokens")
            return self.mask_tokens(tokens, rng)
        cand = cand[rng.permutation(cand.shape[0])]
        total = np.cumsum(cand[:, 1] - cand[:, 0])
        goal = int(self.config.gap_sentence_ratio * n)
        # Whole sentences until the total reaches the goal; at least one.
        take = min(int(np.searchsorted(total, goal, side="left")) + 1, cand.shape[0])
        spans = cand[:take]
        spans = spans[np.argsort(spans[:, 0], kind="stable")]
        return layout_spans(
            tokens,
            spans,
            self._order(take, rng),
            mask_id=self.sentence_mask_id,
            sop_id=self.ids.sop,
            eop_id=self.ids.eop,
            block_position_encoding=self.config.block_position_encoding,
            mode="sentence",
        )

    def mask_document(
        self,
        tokens: np.ndarray,
        rng: np.random.Generator,
        loss_mask: np.ndarray | None = None,
        gen_length: int | None = None,
    ) -> MaskedSample:
        """Document-level blank (docs/original-glm.md §5.5): ``G ~ U{int(gpt_min_ratio * len), len - 2}`` unless given."""
        tokens = self._check_tokens(tokens)
        n = tokens.shape[0]
        hi = n - 2
        if gen_length is None:
            lo = min(max(1, int(self.config.gpt_min_ratio * n)), hi)
            g = int(rng.integers(lo, hi + 1))
        else:
            g = int(gen_length)
            if not 1 <= g <= hi:
                raise ValueError(f"GLMMasker.mask_document: gen_length must be within [1, {hi}], got {g}")
        multiple_docs = bool(np.any(tokens[:-1] == self.ids.eos))
        if not multiple_docs and rng.random() >= self.config.gpt_infill_prob:
            doc_starts, doc_lens = _documents(tokens, self.ids.cls, self.ids.eos)
            spans = _allocate(np.array([g], np.int64), doc_starts, doc_lens, self.config.bert_ratio, rng)
            if spans.shape[0] == 1:
                return layout_spans(
                    tokens,
                    spans,
                    None,
                    mask_id=self.document_mask_id,
                    sop_id=self.ids.sop,
                    eop_id=self.ids.eop,
                    block_position_encoding=self.config.block_position_encoding,
                    mode="document",
                )
            self._fallback("document_span_to_suffix", f"a span of {g} does not fit a sample of {n} tokens")
        if loss_mask is not None:
            loss_mask = np.asarray(loss_mask, dtype=np.float32)
            if loss_mask.shape != tokens.shape:
                raise ValueError(
                    f"GLMMasker: loss_mask shape {loss_mask.shape} != tokens shape {tokens.shape}"
                )
        return layout_suffix(
            tokens,
            g,
            mask_id=self.document_mask_id,
            sop_id=self.ids.sop,
            loss_mask=loss_mask,
            cls_id=self.ids.cls,
            block_position_encoding=self.config.block_position_encoding,
        )

    # -- helpers ----------------------------------------------------------------------------------------

    def _check_tokens(self, tokens: np.ndarray) -> np.ndarray:
        arr = np.asarray(tokens)
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(
                f"GLMMasker: tokens must be a 1-D integer array, got dtype {arr.dtype} shape {arr.shape}"
            )
        if arr.shape[0] < 3:
            raise ValueError(
                f"GLMMasker: a sample needs at least 3 tokens ([CLS] x [eos]), got {arr.shape[0]}"
            )
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= self.vocab_size:
            raise ValueError(
                f"GLMMasker: token ids must be within [0, {self.vocab_size}) (len(sentence_end)), "
                f"got min {lo} max {hi}"
            )
        return arr.astype(np.int64, copy=False)

    def _draw_lengths(self, goal: int, rng: np.random.Generator, single: bool) -> np.ndarray:
        """i.i.d. truncated-Poisson lengths until their sum reaches ``goal`` (the last may overshoot)."""
        if single:
            return np.searchsorted(self._cdf, rng.random(1), side="right") + 1
        chunks, total = [], 0
        batch = int(goal / self._mean_length * 1.25) + 4  # usually one round
        while True:
            draw = np.searchsorted(self._cdf, rng.random(batch), side="right") + 1
            running = np.cumsum(draw) + total
            hit = int(np.searchsorted(running, goal, side="left"))
            if hit < batch:
                chunks.append(draw[: hit + 1])
                return np.concatenate(chunks).astype(np.int64)
            chunks.append(draw)
            total = int(running[-1])

    def _order(self, k: int, rng: np.random.Generator) -> np.ndarray:
        return rng.permutation(k) if self.config.shuffle_blocks else np.arange(k)

    def _dblock(self, sample: MaskedSample, rng: np.random.Generator) -> None:
        """Replace Part-B inputs except [sop] by [dBLOCK] with ``block_mask_prob`` (targets unchanged)."""
        part_b = sample.input_ids[sample.sep :]
        hit = (rng.random(part_b.shape[0]) < self.config.block_mask_prob) & (part_b != self.ids.sop)
        part_b[hit] = self.ids.dblock

    def _fallback(self, kind: str, detail: str) -> None:
        self.fallbacks[kind] += 1
        if self.fallbacks[kind] == 1:
            log.warning(
                "GLMMasker fallback %s: %s (counted in GLMMasker.fallbacks; further cases logged at "
                "debug level)",
                kind,
                detail,
            )
        else:
            log.debug("GLMMasker fallback %s: %s", kind, detail)


def _covered(spans: np.ndarray) -> int:
    return int((spans[:, 1] - spans[:, 0]).sum()) if spans.shape[0] else 0


# --------------------------------------------------------------------------------------------------
# Collation (docs/original-glm.md §5.6)
# --------------------------------------------------------------------------------------------------


def collate_masked(
    samples: Sequence[MaskedSample], pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad a list of samples into the batch dict of docs/contracts.md.

    Padding: id 0, target 0, loss mask 0, positions/blocks 0 (docs/original-glm.md §5.6). The length is the longest sample,
    rounded up to ``pad_to_multiple_of`` when given.
    """
    if not samples:
        raise ValueError("collate_masked: empty batch")
    if pad_to_multiple_of is not None and (not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1):
        raise ValueError(
            f"collate_masked: pad_to_multiple_of must be a positive int, got {pad_to_multiple_of!r}"
        )
    width = max(len(s) for s in samples)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    return pad_samples(samples, width)


def pad_samples(
    samples: Sequence[Any], width: int, pad_id: int = 0, target_pad: int = 0
) -> dict[str, torch.Tensor]:
    """Right-pad samples (``input_ids``, ``targets``, ``loss_mask``, ``position_ids [2, n]``, ``sep``) to
    ``width``: ids with ``pad_id``, targets with ``target_pad``, loss mask and positions with 0
    (docs/original-glm.md §5.6). The padded batch every layout without packing uses."""
    import torch

    b = len(samples)
    ids = np.full((b, width), pad_id, np.int64)
    tgt = np.full((b, width), target_pad, np.int64)
    lm = np.zeros((b, width), np.float32)
    pos = np.zeros((b, 2, width), np.int64)
    sep = np.zeros(b, np.int64)
    for i, s in enumerate(samples):
        n = len(s.input_ids)
        ids[i, :n] = s.input_ids
        tgt[i, :n] = s.targets
        lm[i, :n] = s.loss_mask
        pos[i, :, :n] = s.position_ids
        sep[i] = s.sep
    return {
        "input_ids": torch.from_numpy(ids),
        "targets": torch.from_numpy(tgt),
        "loss_mask": torch.from_numpy(lm),
        "position_ids": torch.from_numpy(pos),
        "sep": torch.from_numpy(sep),
    }
