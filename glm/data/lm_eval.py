"""Zero-shot language-model evaluation data: LAMBADA (docs/original-glm.md §10.1) and perplexity windows (docs/original-glm.md §10.2).

Both produce "scored samples": a GLM layout whose `loss_mask` marks the target slots to score. The task
module sums cross-entropy over them (perplexity) or checks that the argmax matches at every one (LAMBADA
accuracy), so one batch format serves both.

LAMBADA, bidirectional:  `[CLS] context [MASK|gMASK] [eos] | [sop] answer[:-1]`, targets = answer
                         (no eop), context truncated from the left to fit `seq_length`.
LAMBADA, unidirectional: `[CLS] t0 [mask] [eos] | [sop] (t1 .. + answer)[:-1]`, only the last k scored.
Perplexity window i:     `[CLS] prompt [mask] | [sop] text[:-1]` (no eos), targets = text; window i covers
                         tokens `[i*o, i*o + W)` with `W = seq_length - 1`; window 0 prompts with its first
                         token, later ones with their first `W - o` tokens and score the last `o`
                         (unidirectional: always one prompt token, still scoring only the last `o`).
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glm.data.base import GLMDataModule
from glm.data.masking import pad_samples
from glm.errors import ConfigError, DataFormatError
from glm.utils.inputs import jsonl_lines, parse_json_object, read_lines

log = logging.getLogger(__name__)


@dataclass
class ScoredSample:
    """`input_ids/targets/loss_mask [N]`, `position_ids [2, N]`, `sep` (Part-A length)."""

    input_ids: np.ndarray
    targets: np.ndarray
    loss_mask: np.ndarray
    position_ids: np.ndarray
    sep: int

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def blank_sample(
    part_a: list[int], mask_index: int, part_b_targets: list[int], num_scored: int, sop_id: int
) -> ScoredSample:
    """Part A (positions `0..n-1`, block 0) then Part B = `[sop] + targets[:-1]` at `(mask_index, 1..k)`;
    the last `num_scored` targets carry loss mask 1."""
    n, k = len(part_a), len(part_b_targets)
    if k == 0:
        raise ValueError("blank_sample: no target tokens")
    ids = np.asarray(part_a + [sop_id] + part_b_targets[:-1], np.int64)
    targets = np.asarray(part_a + part_b_targets, np.int64)
    loss = np.zeros(n + k, np.float32)
    loss[n + k - num_scored :] = 1.0
    pos = np.concatenate(
        [
            np.stack([np.arange(n), np.zeros(n, np.int64)]),
            np.stack([np.full(k, mask_index), np.arange(1, k + 1)]),
        ],
        axis=1,
    )
    return ScoredSample(ids, targets, loss, pos, n)


# --------------------------------------------------------------------------------------------------
# LAMBADA (docs/original-glm.md §10.1)
# --------------------------------------------------------------------------------------------------
def split_lambada(text: str) -> tuple[str, str]:
    """`(context, last word)`: last word = `text.split()[-1]`, context = text before its last occurrence."""
    words = text.split()
    if not words:
        raise ValueError("empty LAMBADA text")
    last = words[-1]
    return text[: text.rfind(last)].strip(), last


def lambada_sample(
    context_ids: list[int],
    answer_ids: list[int],
    tok: Any,
    seq_length: int,
    task_mask: bool = False,
    unidirectional: bool = False,
    stats: Counter | None = None,
) -> ScoredSample:
    """One LAMBADA layout; the context loses tokens on the left when the sample would exceed `seq_length`."""
    mask = tok.gmask_id if task_mask else tok.mask_id
    k = len(answer_ids)
    # bidirectional: [CLS] ctx [mask] [eos] + k Part-B slots; unidirectional: 4 Part-A tokens (t0 among
    # them) + the other context tokens + k in Part B: the same budget for the context either way
    room = seq_length - 3 - k
    if room < 1:
        raise ValueError(f"seq_length={seq_length} is too short for a {k}-token LAMBADA answer")
    if len(context_ids) > room:
        context_ids = context_ids[len(context_ids) - room :]
        if stats is not None:
            stats["truncated"] += 1
    if unidirectional:
        if not context_ids:
            raise ValueError("unidirectional LAMBADA needs at least one context token")
        part_a = [tok.cls_id, context_ids[0], mask, tok.eos_id]
        return blank_sample(part_a, 2, context_ids[1:] + answer_ids, k, tok.sop_id)
    part_a = [tok.cls_id, *context_ids, mask, tok.eos_id]
    return blank_sample(part_a, len(context_ids) + 1, answer_ids, k, tok.sop_id)


def read_lambada(
    path: str | Path, max_samples: int | None = None, field: str = "text"
) -> list[tuple[str, str]]:
    """`(context, last word)` per jsonl line; malformed lines raise naming file and line."""
    return [(c, w) for _, c, w in read_lambada_records(path, max_samples, field)]


def read_lambada_records(
    path: str | Path, max_samples: int | None = None, field: str = "text"
) -> list[tuple[int, str, str]]:
    """`(line number, context, last word)` per jsonl line (see :func:`read_lambada`)."""
    path = Path(path)
    out = []
    for i, line in jsonl_lines(path, "LAMBADA data"):
        where = f"{path}:{i}"
        if not line.strip():
            raise DataFormatError(f"{where}: empty line (expected a JSON object with {field!r})")
        rec = parse_json_object(line, where)
        if field not in rec:
            raise DataFormatError(f"{where}: field {field!r} missing")
        if not isinstance(rec[field], str) or not rec[field].strip():
            raise DataFormatError(f"{where}: field {field!r} must be non-empty text, got {rec[field]!r:.80}")
        out.append((i, *split_lambada(rec[field])))
        if max_samples is not None and len(out) >= max_samples:
            break
    if not out and max_samples != 0:
        raise DataFormatError(f"{path}: no LAMBADA records (empty file)")
    return out


# [CLS], one context token, [MASK] and [eos] in Part A, then one Part-B slot per answer token
LAMBADA_OVERHEAD = 4


def check_lambada_fits(answers: list[list[int]], lines: list[int], seq_length: int, path: str | Path) -> None:
    """A :class:`ConfigError` on ``data.seq_length`` when some example cannot hold its answer and one
    context token, with how many are too long and the smallest length that fits them all (dropping them
    would change what the accuracy is over)."""
    need = [len(a) + LAMBADA_OVERHEAD for a in answers]
    too_long = [k for k, n in enumerate(need) if n > seq_length]
    if too_long:
        first = too_long[0]
        raise ConfigError(
            f"data.seq_length: {seq_length} is too short for {len(too_long)} of {len(answers)} LAMBADA "
            f"examples of {path} (the first at line {lines[first]}: a {len(answers[first])}-token answer "
            f"needs {need[first]}: [CLS], a context token, the mask, [eos] and the answer); "
            f"data.seq_length >= {max(need)} fits every example"
        )


# --------------------------------------------------------------------------------------------------
# Perplexity windows (docs/original-glm.md §10.2)
# --------------------------------------------------------------------------------------------------
def num_windows(num_tokens: int, window: int, stride: int) -> int:
    """`ceil(max(len - W, 0) / o) + 1`."""
    return math.ceil(max(num_tokens - window, 0) / stride) + 1


def perplexity_windows(
    tokens: list[int],
    tok: Any,
    seq_length: int,
    overlap: int,
    task_mask: bool = False,
    unidirectional: bool = False,
) -> list[ScoredSample]:
    """The overlapping windows of one document; every token but the first is scored exactly once."""
    W, o = seq_length - 1, overlap
    if not 0 < o < W:
        raise ValueError(f"overlap must be in (0, seq_length - 1) = (0, {W}), got {o}")
    if len(tokens) < 2:
        raise ValueError("perplexity needs a document of at least 2 tokens")
    mask = tok.gmask_id if task_mask else tok.mask_id
    out = []
    for i in range(num_windows(len(tokens), W, o)):
        win = tokens[i * o : i * o + W]
        n_prompt = 1 if (i == 0 or unidirectional) else W - o
        prompt, text = win[:n_prompt], win[n_prompt:]
        scored = len(text) if i == 0 else len(win) - (W - o)
        part_a = [tok.cls_id, *prompt, mask]
        out.append(blank_sample(part_a, len(prompt) + 1, text, scored, tok.sop_id))
    return out


# WikiText tokenisation marks -> plain text (the detokenised file is one document, docs/original-glm.md §10.2): the original's
# `tasks/language_model/detokenizer.py::wikitext_detokenizer`, the same steps in the same order (the order
# matters: the quote rules run before the heading and newline rules). ("re", a, b) is a regex substitution.
_WIKI_STEPS: list[tuple[str, str, str]] = [
    ("str", "s '", "s'"),  # contractions
    ("re", r"/' [0-9]/", r"/'[0-9]/"),
    ("str", " @-@ ", "-"),  # number separators
    ("str", " @,@ ", ","),
    ("str", " @.@ ", "."),
    ("str", " : ", ": "),  # punctuation
    ("str", " ; ", "; "),
    ("str", " . ", ". "),
    ("str", " ! ", "! "),
    ("str", " ? ", "? "),
    ("str", " , ", ", "),
    ("re", r"\(\s*([^\)]*?)\s*\)", r"(\1)"),  # brackets and quotes hug their content
    ("re", r"\[\s*([^\]]*?)\s*\]", r"[\1]"),
    ("re", r"{\s*([^}]*?)\s*}", r"{\1}"),
    ("re", r'"\s*([^"]*?)\s*"', r'"\1"'),
    ("re", r"'\s*([^']*?)\s*'", r"'\1'"),
    ("str", "= = = =", "===="),  # headings
    ("str", "= = =", "==="),
    ("str", "= =", "=="),
    ("str", " \u00b0 ", "\u00b0"),  # degree sign
    ("str", " \n", "\n"),
    ("str", "\n ", "\n"),
    ("str", " N ", " 1 "),
    ("str", " 's", "'s"),
]


def wikitext_detokenize(text: str) -> str:
    """Undo WikiText's spacing conventions (number separators `@-@`, spaced punctuation, brackets, quotes)."""
    for kind, a, b in _WIKI_STEPS:
        text = re.sub(a, b, text) if kind == "re" else text.replace(a, b)
    return text


@dataclass
class PerplexityResult:
    avg_loss: float
    ppl: float
    adjusted_ppl: float
    num_tokens: int
    num_original_words: int


def perplexity(total_loss: float, num_tokens: int, num_original_words: int) -> PerplexityResult:
    """docs/original-glm.md §10.2: `avg = total / (num_tokens - 1)`, `ppl = exp(min(20, avg))`; the adjusted ppl uses
    `avg * (num_tokens - 1) / (num_original_words - 1)` (per whitespace word of the raw file)."""
    avg = total_loss / (num_tokens - 1)
    adjusted = avg * (num_tokens - 1) / (num_original_words - 1)
    return PerplexityResult(
        avg, math.exp(min(20.0, avg)), math.exp(min(20.0, adjusted)), num_tokens, num_original_words
    )


def collate_scored(samples: list[ScoredSample], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sample (pad token, target 0, loss 0, positions 0: docs/original-glm.md §5.6)."""
    if not samples:
        raise ValueError("collate_scored: empty batch")
    return pad_samples(samples, max(len(s) for s in samples), pad_id)


def collate_indexed(items: list[tuple[int, ScoredSample]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """`collate_scored` of `(sample index, sample)` pairs plus `example_index [B]` (the sample's place in the
    split)."""
    out = collate_scored([s for _, s in items], pad_id)
    out["example_index"] = torch.tensor([i for i, _ in items], dtype=torch.long)
    return out


class LMEvalDataModule(GLMDataModule):
    """Evaluation-only data for `kind` = `lambada` (jsonl with `text`) or `perplexity` (a text file, one
    document; `wikitext=True` detokenises it first). `max_samples` slices LAMBADA; a perplexity slice is
    taken with `max_lines` (the windows of a document are never cut, so the token counts stay exact). The samples are served as the `test` (and `validate`)
    loader; `num_original_words` / `num_tokens` are exposed for the adjusted perplexity. Batches carry
    `example_index` (each sample's place in the list); with several processes each rank gets its share
    (`GLMDataModule.eval_loader`). Evaluation batches hold `micro_batch_size` samples."""

    def __init__(
        self,
        path: str,
        tokenizer: Any,
        kind: str = "lambada",
        seq_length: int = 512,
        overlap: int = 256,
        task_mask: bool = False,
        unidirectional: bool = False,
        wikitext: bool = False,
        micro_batch_size: int = 8,
        num_workers: int = 0,
        max_samples: int | None = None,
        max_lines: int | None = None,
        global_batch_size: int | None = None,
    ) -> None:
        if kind not in ("lambada", "perplexity"):
            raise ConfigError(f"data.kind: must be 'lambada' or 'perplexity', got {kind!r}")
        if kind == "perplexity" and not 0 < overlap < seq_length - 1:
            raise ConfigError(
                f"data.overlap: must be in (0, data.seq_length - 1) = (0, {seq_length - 1}), got {overlap}"
            )
        super().__init__(
            tokenizer,
            micro_batch_size=micro_batch_size,
            global_batch_size=global_batch_size,
            num_workers=num_workers,
        )
        self.path, self.kind, self.seq_length, self.overlap = Path(path), kind, seq_length, overlap
        self.task_mask, self.unidirectional, self.wikitext = task_mask, unidirectional, wikitext
        self.max_samples, self.max_lines = max_samples, max_lines
        self.samples: list[ScoredSample] | None = None
        self.stats: Counter = Counter()
        self.num_tokens = 0
        self.num_original_words = 0

    def setup(self, stage: str | None = None) -> None:
        if self.samples is not None:
            return
        tok = self.tokenizer
        if self.kind == "lambada":
            records = read_lambada_records(self.path, self.max_samples)
            contexts = tok.encode_batch([c for _, c, _ in records])
            answers = tok.encode_batch([" " + w for _, _, w in records])
            check_lambada_fits(answers, [i for i, _, _ in records], self.seq_length, self.path)
            if self.unidirectional:  # the unidirectional layout puts the first context token in Part A
                for (i, _, _), c in zip(records, contexts, strict=True):
                    if not c:
                        raise DataFormatError(
                            f"{self.path}:{i}: field 'text' is a single word; unidirectional LAMBADA "
                            "needs a context before the last word"
                        )
            self.samples = [
                lambada_sample(c, a, tok, self.seq_length, self.task_mask, self.unidirectional, self.stats)
                for c, a in zip(contexts, answers, strict=True)
            ]
        else:
            lines = read_lines(self.path, "perplexity data")
            if self.max_lines is not None:
                lines = lines[: self.max_lines]
            raw = "\n".join(lines)
            self.num_original_words = len(raw.split())
            text = wikitext_detokenize(raw) if self.wikitext else raw
            tokens = tok.encode(text)
            if len(tokens) < 2:
                raise DataFormatError(
                    f"{self.path}: perplexity needs a document of at least 2 tokens, "
                    f"got {len(tokens)} (max_lines={self.max_lines})"
                )
            self.num_tokens = len(tokens)
            self.samples = perplexity_windows(
                tokens, tok, self.seq_length, self.overlap, self.task_mask, self.unidirectional
            )
        log.info("%s: %d samples from %s %s", self.kind, len(self.samples), self.path, dict(self.stats))

    def _loader(self) -> torch.utils.data.DataLoader:
        self.setup()
        indexed = list(enumerate(self.samples))
        return self.eval_loader(indexed, functools.partial(collate_indexed, pad_id=self.tokenizer.pad_id))

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader()

    def test_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader()
