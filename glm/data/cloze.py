"""Cloze finetuning data: pattern parts -> token ids -> the GLM cloze layout (docs/original-glm.md §3(b), §7.1), batches.

One example becomes C sequences (C = 1 for single-token tasks, one per candidate for multi-token
tasks), each laid out as

    Part A = [CLS] + pattern tokens (one or more [MASK]; the last one is the blank) + eos, block 0,
             positions 0..n-1, sep = n
    Part B = [sop]                     at (mask_pos, block 1)             single-token
           = [sop] a1..ak              at (mask_pos, blocks 1..k+1),
             targets a1..ak [eop], loss mask 1                            multi-token

Batches are dicts of tensors shaped `[B, C, ...]` (the task module flattens them to `[B*C, ...]`):
`input_ids`, `targets`, `loss_mask` (float), `position_ids [B, C, 2, L]`, `sep [B, C]`, `choice_mask [B, C]`
(False = padding candidate, a repeat of candidate 0), `label [B]` (loss target; -100 = none),
`example_index [B]` (index into `datamodule.examples(split)`), `prompt_mask [B, C, L]` (continuous-prompt
slots; only with P-tuning) and, for single-token scoring, `verbalizer_ids [B, K]`.

Padding uses the eos id with position 0, block 0, target 0, loss mask 0 (docs/original-glm.md §3(b)). By default a
batch is padded to its longest sequence rather than to the full sequence length: trailing padding is
invisible to every real token under the sep mask, so scores are identical (`pad_to_seq_length=True`
restores the original tensors exactly).

Packed batches (`ClozeDataModule(pack=True)`, `collate_cloze_packed`): the real candidate sequences of a
batch (padding candidates are dropped) share `[R, L]` rows via `glm.data.packing.pack_samples`:
`input_ids, targets, loss_mask, position_ids [R, 2, L], sep [R, L]` (per token), `segment_ids [R, L]`,
`sample_index [R, L]` (-1 on padding), `prompt_mask [R, L]` (P-tuning; slot numbering restarts per
sequence, see `glm.tasks.cloze.prompt_slots`), `sample_bc [N, 2]` (example b and choice c of packed sample
n), and for single-token scoring `sop_index [R, K]` / `sop_sample [R, K]` (the [sop] columns of each row,
left-aligned, 0 / -1 past the row's samples: the `logits_index` of the head). `label`, `example_index`,
`choice_mask [B, C]` and `verbalizer_ids` are as unpacked, so scores come back as the same `[B, C]`.
Decision (row length): rows are filled up to the data's `seq_length` (the bound every encoded sequence
already meets), then cut to the fullest row (`pad_to_seq_length=True` keeps them `seq_length` wide).
Pretraining packs into rows of the batch's longest sample, but its samples are near `seq_length`;
cloze candidates are short and alike (COPA: 32 sequences of <= 54 tokens), so rows of the longest
sequence would hold one sequence each and save nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from glm.data.base import GLMDataModule
from glm.data.packing import pack_bins, pack_samples
from glm.data.superglue.examples import ClozeExample
from glm.data.superglue.tasks import MASK, SuperGLUETask, get_task, with_prompt_slots
from glm.errors import ConfigError, DataFormatError

log = logging.getLogger(__name__)

__all__ = [
    "IGNORE_INDEX",
    "ClozeDataModule",
    "ClozeDataset",
    "ClozeEncoder",
    "ClozeFeature",
    "build_cloze_sequence",
    "collate_cloze",
    "collate_cloze_packed",
    "truncate_parts",
]

IGNORE_INDEX = -100
_PROMPT = -1  # placeholder id of a continuous-prompt slot until the layout replaces it


def truncate_parts(parts_a: list[list], parts_b: list[list], answer_len: int, max_length: int) -> int:
    """Shorten shortenable parts in place until the sequence fits (docs/original-glm.md §7.1); return tokens removed.

    Parts are `[ids, shortenable]` lists. Total length = [CLS] + A + B + eos + (answer_len, or 1 for the
    lone [sop] when there is no answer). Each step drops the last token of the last non-empty
    shortenable part of the side with more shortenable tokens (ties go to B).
    """

    def shortenable(parts: list[list]) -> int:
        return sum(len(ids) for ids, s in parts if s)

    total = 2 + sum(len(ids) for ids, _ in parts_a) + sum(len(ids) for ids, _ in parts_b) + (answer_len or 1)
    removed = 0
    while total - removed > max_length:
        la, lb = shortenable(parts_a), shortenable(parts_b)
        if la == 0 and lb == 0:
            raise ValueError(
                f"the fixed parts need {total - removed} tokens, more than the sequence length "
                f"{max_length}, and nothing shortenable is left"
            )
        side = parts_a if la > lb else parts_b
        for ids, s in reversed(side):
            if s and ids:
                ids.pop()
                break
        removed += 1
    return removed


def build_cloze_sequence(
    ids_a: Sequence[int],
    answer: Sequence[int] | None,
    *,
    cls_id: int,
    eos_id: int,
    mask_id: int,
    sop_id: int,
    eop_id: int,
    pad_id: int,
) -> dict[str, np.ndarray]:
    """Lay out one cloze sequence (unpadded) per docs/original-glm.md §3(b).

    `ids_a`: the pattern tokens (Part A without [CLS]/eos; `-1` marks a continuous-prompt slot).
    `answer`: candidate ids `a1..ak` (multi-token) or None (single-token: Part B is the lone [sop]).
    Returns int64 arrays `input_ids, targets, loss_mask, position_ids [2, L], prompt_mask` and `sep`.
    """
    part_a = [cls_id, *ids_a, eos_id]
    sep = len(part_a)
    mask_positions = [i for i, t in enumerate(part_a) if t == mask_id]
    if not mask_positions:
        raise ValueError("the pattern produced no [MASK] token in Part A")
    mask_pos = mask_positions[-1]
    answer = list(answer) if answer is not None else []
    part_b = [sop_id, *answer]
    n_b = len(part_b)
    input_ids = np.array(part_a + part_b, dtype=np.int64)
    prompt_mask = input_ids == _PROMPT
    input_ids[prompt_mask] = pad_id
    positions = np.concatenate([np.arange(sep), np.full(n_b, mask_pos)])
    blocks = np.concatenate([np.zeros(sep, dtype=np.int64), np.arange(1, n_b + 1)])
    targets = np.zeros(sep + n_b, dtype=np.int64)
    loss_mask = np.zeros(sep + n_b, dtype=np.int64)
    if answer:
        targets[sep:] = [*answer, eop_id]
        loss_mask[sep:] = 1
    return {
        "input_ids": input_ids,
        "targets": targets,
        "loss_mask": loss_mask,
        "position_ids": np.stack([positions, blocks]).astype(np.int64),
        "prompt_mask": prompt_mask,
        "sep": np.int64(sep),
    }


@dataclass
class ClozeFeature:
    """The encoded sequences of one example (one per candidate) plus what the loss and metrics need."""

    sequences: list[dict[str, np.ndarray]]
    target: int  # loss target (class or candidate index); IGNORE_INDEX = none
    example_index: int  # the example's place in its split
    verbalizer_ids: list[int] | None = None  # single-token scoring


class ClozeEncoder:
    """Turns `ClozeExample`s of one task/pattern into `ClozeFeature`s with a given tokenizer."""

    def __init__(
        self,
        task: SuperGLUETask,
        tokenizer: Any,
        pattern_id: int,
        seq_length: int,
        num_prompt_tokens: int = 0,
        multi_token: bool = False,
    ) -> None:
        task.check_pattern(pattern_id)
        self.task, self.tok, self.pattern_id, self.seq_length = task, tokenizer, pattern_id, seq_length
        self.num_prompt_tokens = num_prompt_tokens
        # single-token tasks can also be scored as multi-token candidates (the original --multi-token)
        self.multi_token = task.multi_token or multi_token
        self.num_truncated = 0  # examples that lost tokens
        self._cache: dict[str, list[int]] = {}
        self.verbalizer_ids: list[int] | None = None
        if not self.multi_token:
            self.verbalizer_ids = []
            for label, v in zip(task.labels, task.verbalizers(pattern_id), strict=True):
                ids = self.encode(v)
                if len(ids) != 1:
                    pieces = [tokenizer.id_to_piece(i) for i in ids]
                    raise DataFormatError(
                        f"{task.name} pattern {pattern_id}: verbalizer {v!r} of label {label!r} is "
                        f"{len(ids)} tokens {pieces} with this tokenizer; a single-token task needs "
                        f"one token (or set data.multi_token=true)"
                    )
                self.verbalizer_ids.append(ids[0])

    def encode(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = list(self.tok.encode(text))
        return self._cache[text]

    def _ids(self, parts) -> list[list]:
        out = []
        for content, shortenable in parts:
            if content is MASK:
                out.append([[self.tok.mask_id], False])
            elif content is None:
                out.append([[_PROMPT], False])
            else:
                out.append([list(self.encode(content)), shortenable])
        return out

    def _sequence(self, ex: ClozeExample, parts_a, parts_b, answer: str | None) -> tuple[dict, bool]:
        parts_a, parts_b = with_prompt_slots(parts_a, parts_b, self.num_prompt_tokens)
        ids_a, ids_b = self._ids(parts_a), self._ids(parts_b)
        answer_ids = None if answer is None else self.encode(answer)
        if answer_ids is not None and not answer_ids:
            raise DataFormatError(f"{ex.source}: candidate {answer!r} encodes to no tokens")
        try:
            removed = truncate_parts(
                ids_a, ids_b, 0 if answer_ids is None else len(answer_ids) + 1, self.seq_length
            )
        except ValueError as e:
            raise DataFormatError(
                f"{ex.source}: cannot fit the {self.task.name} pattern {self.pattern_id}: {e}"
            ) from None
        tokens = [t for ids, _ in ids_a + ids_b for t in ids]
        tok = self.tok
        seq = build_cloze_sequence(
            tokens,
            answer_ids,
            cls_id=tok.cls_id,
            eos_id=tok.eos_id,
            mask_id=tok.mask_id,
            sop_id=tok.sop_id,
            eop_id=tok.eop_id,
            pad_id=tok.eos_id,
        )
        return seq, removed > 0

    def __call__(self, ex: ClozeExample, example_index: int) -> ClozeFeature:
        target = IGNORE_INDEX if ex.target is None else ex.target
        if not self.multi_token:
            parts_a, parts_b = self.task.parts(ex, self.pattern_id)
            seq, cut = self._sequence(ex, parts_a, parts_b, None)
            self.num_truncated += cut
            return ClozeFeature([seq], target, example_index, self.verbalizer_ids)
        if self.task.multi_token:
            inputs = self.task.candidate_inputs(ex, self.pattern_id)
        else:
            parts_a, parts_b = self.task.parts(ex, self.pattern_id)
            inputs = [(parts_a, parts_b, v) for v in self.task.verbalizers(self.pattern_id)]
        if not inputs:
            raise DataFormatError(f"{ex.source}: empty candidate list")
        seqs, any_cut = [], False
        for parts_a, parts_b, answer in inputs:
            seq, cut = self._sequence(ex, parts_a, parts_b, answer)
            seqs.append(seq)
            any_cut |= cut
        self.num_truncated += any_cut
        return ClozeFeature(seqs, target, example_index)


class ClozeDataset(Dataset):
    """Encoded features of one split."""

    def __init__(self, features: list[ClozeFeature]) -> None:
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> ClozeFeature:
        return self.features[i]


def collate_cloze(
    features: Sequence[ClozeFeature], pad_id: int, pad_to: int | None = None
) -> dict[str, torch.Tensor]:
    """Stack features into `[B, C, L]` tensors (see the module docstring).

    Missing candidates repeat candidate 0 and get `choice_mask` False. `pad_to` fixes L (else the
    longest sequence in the batch).
    """
    B = len(features)
    C = max(len(f.sequences) for f in features)
    longest = max(len(s["input_ids"]) for f in features for s in f.sequences)
    L = longest if pad_to is None else pad_to
    if longest > L:
        raise ValueError(f"a sequence of {longest} tokens does not fit pad_to={pad_to}")
    input_ids = torch.full((B, C, L), pad_id, dtype=torch.long)
    targets = torch.zeros((B, C, L), dtype=torch.long)
    loss_mask = torch.zeros((B, C, L), dtype=torch.float)
    position_ids = torch.zeros((B, C, 2, L), dtype=torch.long)
    prompt_mask = torch.zeros((B, C, L), dtype=torch.bool)
    sep = torch.zeros((B, C), dtype=torch.long)
    choice_mask = torch.zeros((B, C), dtype=torch.bool)
    for b, f in enumerate(features):
        for c in range(C):
            s = f.sequences[c] if c < len(f.sequences) else f.sequences[0]
            n = len(s["input_ids"])
            input_ids[b, c, :n] = torch.from_numpy(s["input_ids"])
            targets[b, c, :n] = torch.from_numpy(s["targets"])
            loss_mask[b, c, :n] = torch.from_numpy(s["loss_mask"]).float()
            position_ids[b, c, :, :n] = torch.from_numpy(s["position_ids"])
            prompt_mask[b, c, :n] = torch.from_numpy(s["prompt_mask"])
            sep[b, c] = int(s["sep"])
            choice_mask[b, c] = c < len(f.sequences)
    batch = {
        "input_ids": input_ids,
        "targets": targets,
        "loss_mask": loss_mask,
        "position_ids": position_ids,
        "sep": sep,
        "choice_mask": choice_mask,
        "label": torch.tensor([f.target for f in features], dtype=torch.long),
        "example_index": torch.tensor([f.example_index for f in features], dtype=torch.long),
    }
    if prompt_mask.any():
        batch["prompt_mask"] = prompt_mask
    if features[0].verbalizer_ids is not None:
        batch["verbalizer_ids"] = torch.tensor([f.verbalizer_ids for f in features], dtype=torch.long)
    return batch


def collate_cloze_packed(
    features: Sequence[ClozeFeature], pad_id: int, seq_length: int, pad_to_seq_length: bool = False
) -> dict[str, torch.Tensor]:
    """Pack the real candidate sequences of `features` into shared rows (see the module docstring).

    Rows hold up to `seq_length` tokens (first-fit decreasing) and are cut to the fullest row, unless
    `pad_to_seq_length` keeps them exactly `seq_length` wide.
    """
    B = len(features)
    C = max(len(f.sequences) for f in features)
    samples = [s for f in features for s in f.sequences]
    bc = [(b, c) for b, f in enumerate(features) for c in range(len(f.sequences))]
    lengths = [len(s["input_ids"]) for s in samples]
    bins = pack_bins(lengths, seq_length)
    L = seq_length if pad_to_seq_length else max(sum(lengths[i] for i in b) for b in bins)
    batch = pack_samples(samples, L, pad_id=pad_id, bins=bins)
    R, N = len(bins), len(samples)
    single = features[0].verbalizer_ids is not None
    prompt_mask = torch.zeros((R, L), dtype=torch.bool)
    # the [sop] columns of each row, left-aligned: the head's logits_index for single-token scoring
    K = max(len(m) for m in bins)
    sop_index = torch.zeros((R, K), dtype=torch.long)
    sop_sample = torch.full((R, K), -1, dtype=torch.long)
    for r, members in enumerate(bins):
        offset = 0  # pack_samples lays a row's samples back to back in bin order
        for k, i in enumerate(members):
            n = lengths[i]
            prompt_mask[r, offset : offset + n] = torch.from_numpy(samples[i]["prompt_mask"])
            sop_index[r, k], sop_sample[r, k] = offset + int(samples[i]["sep"]), i
            offset += n
    batch["loss_mask"] = batch["loss_mask"].float()
    batch["sample_bc"] = torch.tensor(bc, dtype=torch.long).view(N, 2)
    choice_mask = torch.zeros((B, C), dtype=torch.bool)
    choice_mask[batch["sample_bc"][:, 0], batch["sample_bc"][:, 1]] = True
    batch["choice_mask"] = choice_mask
    batch["label"] = torch.tensor([f.target for f in features], dtype=torch.long)
    batch["example_index"] = torch.tensor([f.example_index for f in features], dtype=torch.long)
    if prompt_mask.any():
        batch["prompt_mask"] = prompt_mask
    if single:
        batch["verbalizer_ids"] = torch.tensor([f.verbalizer_ids for f in features], dtype=torch.long)
        batch["sop_index"], batch["sop_sample"] = sop_index, sop_sample
    return batch


class ClozeDataModule(GLMDataModule):
    """SuperGLUE cloze data for one task: `<data_dir>/superglue/<Task>/{train,val,test}.jsonl`.

    `pattern_id` and `seq_length` default to the original's task config (docs/original-glm.md §7.2/§7.3). `max_*_examples` keep
    the first N examples of a split (tiny runs and tests). Examples longer than `seq_length` are
    truncated per docs/original-glm.md §7.1; their number is logged per split. `pack` packs each batch's candidate
    sequences into shared rows (`collate_cloze_packed`; the same scores, fewer padding tokens). The
    training loader shuffles per epoch from `seed`, gives each rank its share and resumes mid-epoch
    (`GLMDataModule.train_loader`); under several processes the val/test/predict loaders give each rank
    its share (`GLMDataModule.eval_loader`).
    """

    def __init__(
        self,
        task: str,
        tokenizer: Any,
        data_dir: str | Path,
        pattern_id: int | None = None,
        seq_length: int | None = None,
        micro_batch_size: int = 16,
        global_batch_size: int | None = None,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        max_train_examples: int | None = None,
        max_eval_examples: int | None = None,
        num_prompt_tokens: int = 0,
        multi_token: bool = False,
        pad_to_seq_length: bool = False,
        pack: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(
            tokenizer,
            micro_batch_size=micro_batch_size,
            global_batch_size=global_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            pack=pack,
            seed=seed,
        )
        self.task = get_task(task)
        self.pattern_id = self.task.default_pattern if pattern_id is None else int(pattern_id)
        self.task.check_pattern(self.pattern_id)
        self.seq_length = int(seq_length or self.task.seq_length)
        self.data_dir = Path(data_dir)
        self.max_train_examples, self.max_eval_examples = max_train_examples, max_eval_examples
        self.num_prompt_tokens, self.multi_token = num_prompt_tokens, multi_token
        self.pad_to_seq_length = pad_to_seq_length
        self._examples: dict[str, list[ClozeExample]] = {}
        self._datasets: dict[str, ClozeDataset] = {}
        self.truncated: dict[str, int] = {}

    @property
    def scoring(self) -> str:
        """'single' (verbalizer logit at [sop]) or 'multi' (candidate log-likelihood)."""
        return "multi" if (self.task.multi_token or self.multi_token) else "single"

    def encoder(self) -> ClozeEncoder:
        return ClozeEncoder(
            self.task,
            self.tokenizer,
            self.pattern_id,
            self.seq_length,
            self.num_prompt_tokens,
            self.multi_token,
        )

    def has_split(self, split: str) -> bool:
        path = self.task.path(self.data_dir, split)
        return path is not None and path.is_file()

    def load_split(self, split: str) -> ClozeDataset:
        """Read and encode one split (cached)."""
        if split in self._datasets:
            return self._datasets[split]
        path = self.task.path(self.data_dir, split)
        if path is None:
            raise FileNotFoundError(f"{self.task.name} has no {split} file in this data layout")
        examples = self.task.read(path, split)
        limit = self.max_train_examples if split == "train" else self.max_eval_examples
        if limit is not None:
            examples = examples[: int(limit)]
        encoder = self.encoder()
        features = [encoder(ex, i) for i, ex in enumerate(examples)]
        self.truncated[split] = encoder.num_truncated
        log.info(
            "%s/%s: %d examples from %s, %d truncated to seq_length %d (pattern %d)",
            self.task.name,
            split,
            len(examples),
            path,
            encoder.num_truncated,
            self.seq_length,
            self.pattern_id,
        )
        self._examples[split] = examples
        self._datasets[split] = ClozeDataset(features)
        return self._datasets[split]

    def examples(self, split: str) -> list[ClozeExample]:
        self.load_split(split)
        return self._examples[split]

    def setup(self, stage: str | None = None) -> None:
        """Read and encode exactly the splits the stage's loaders read (the test loop scores the val split,
        predict the test file), so the pipeline, calling this for every stage of a run before it trains,
        finds a bad or missing file of any of them first. ``None``: every split there is."""
        if stage in (None, "fit"):
            self.load_split("train")
        if stage in (None, "fit", "validate", "test"):
            self.load_split("val")
        if stage == "predict" or (stage is None and self.has_split("test")):
            if self.task.path(self.data_dir, "test") is None:
                raise ConfigError(
                    f"stages: predict writes a submission for the {self.task.name} test split, but this data "
                    "layout has no test file for it; leave predict out of stages"
                )
            self.load_split("test")

    def _collate(self) -> _Collate:
        pad_to = self.seq_length if self.pad_to_seq_length else None
        return _Collate(self.tokenizer.eos_id, pad_to, self.seq_length if self.pack else None)

    def train_dataloader(self) -> DataLoader:
        return self.train_loader(self.load_split("train"), self._collate())

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader(self.load_split("val"), self._collate())

    def test_dataloader(self) -> DataLoader:
        return self.eval_loader(self.load_split("val"), self._collate())

    def predict_dataloader(self) -> DataLoader:
        return self.eval_loader(self.load_split("test"), self._collate())


class _Collate:
    """Picklable collate function (DataLoader workers)."""

    def __init__(self, pad_id: int, pad_to: int | None, pack_length: int | None = None) -> None:
        self.pad_id, self.pad_to, self.pack_length = pad_id, pad_to, pack_length

    def __call__(self, features: Sequence[ClozeFeature]) -> dict[str, torch.Tensor]:
        if self.pack_length is not None:  # data.pack: rows of up to seq_length tokens
            return collate_cloze_packed(features, self.pad_id, self.pack_length, self.pad_to is not None)
        return collate_cloze(features, self.pad_id, self.pad_to)
