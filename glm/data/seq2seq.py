"""Seq2seq (summarisation) data: reading `.source/.target` line files or jsonl, the docs/original-glm.md §8.1 layout.

Layout (docs/original-glm.md §8.1, §3(c)), `S = src_seq_length`, `T = tgt_seq_length`:
```
Part A  [CLS] [MASK|sMASK] " Content:" " "+article ... <pad ...>      positions 0..S-1, block 0, sep = S
Part B  [sop] target[:-1] <pad ...>                                  positions mask_pos (= 1), blocks 1..T
target  " "+summary tokens + [eop], truncated to T (the eop may be cut), padded with pad; loss 1 on real
```
The article is truncated (from the right) to fit `S`; every truncation is counted and logged.
Padding inside Part A is visible to all tokens, as in the original (docs/original-glm.md §2): training and decoding
see the same layout.

Packing (`Seq2SeqDataModule(pack=True)`, `data.pack`). Because the Part-A padding is attended, dropping
it changes the function, so packing uses a different, *compact* layout; `pack` picks the layout:

- `pack=False` (default): the original padded layout above, one sample per row of `S + T`.
- `pack=True`: every sample compact (no padding anywhere), then each training batch packed into rows of
  `S + T` tokens with `glm.data.packing.pack_samples` (`segment_ids`, per-token `sep`, `sample_index`):
```
Part A  [CLS] [MASK|sMASK] " Content:" " "+article        a <= S tokens, positions 0..a-1, block 0, sep = a
Part B  [sop] target[:-1]                                  n = len(target) <= T, positions 1, blocks 1..n
```
  A packed batch computes exactly what the compact samples compute one by one (attention never crosses
  samples). Validation/test batches are not packed; they hold the compact sources right-padded to the
  batch's longest with a `context_mask`, so beam search decodes each source as if alone: the same
  function the model was trained on (with `pack=False` decoding sees the Part-A padding, as in training).
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glm.data.base import GLMDataModule
from glm.data.masking import pad_samples
from glm.data.packing import pack_samples
from glm.data.sampling import ResumableDataLoader
from glm.errors import ConfigError, DataFormatError
from glm.utils.inputs import SkipLog, check_file, jsonl_lines, parse_json_object, read_lines

log = logging.getLogger(__name__)

CONTENT_PROMPT = " Content:"
MASK_POS = 1  # the blank is the token right after [CLS]

# PTB-style escapes of the BERT-tokenised CNN/DM and Gigaword files (docs/original-glm.md §8.1: undone for those sets)
_PTB = {
    "-lrb-": "(",
    "-rrb-": ")",
    "-lsb-": "[",
    "-rsb-": "]",
    "-lcb-": "{",
    "-rcb-": "}",
    "``": '"',
    "''": '"',
    "<S_SEP>": "[SEP]",
}


def undo_ptb(text: str) -> str:
    """Undo PTB escapes (`-lrb-` -> `(`, two backquotes / quotes -> `"`) and `<S_SEP>` -> `[SEP]`."""
    return " ".join(_PTB.get(word, _PTB.get(word.lower(), word)) for word in text.split(" "))


@dataclass
class Seq2SeqExample:
    source: str
    target: str
    where: str  # "file:line", for messages


def read_examples(
    path: str | Path,
    fmt: str = "auto",
    source_field: str = "document",
    target_field: str = "summary",
    bad_rows: str = "raise",
    max_samples: int | None = None,
    stats: Counter | None = None,
) -> list[Seq2SeqExample]:
    """Read pairs from `{path}.source`/`{path}.target` (fmt `lines`) or a jsonl file (fmt `jsonl`).

    `path` is the split's stem for `lines` (e.g. `data/cnn_dm/val`) or the jsonl file. Bad rows (empty
    text, missing field, invalid JSON) raise `DataFormatError` naming file, line and field, or with
    `bad_rows="skip"` are skipped and counted in `stats["skipped"]` (logged). Mismatched line counts and
    non-UTF-8 bytes always raise. Reads at most `max_samples` good examples.
    """
    if bad_rows not in ("raise", "skip"):
        raise ValueError(f"bad_rows must be 'raise' or 'skip', got {bad_rows!r}")
    stats = stats if stats is not None else Counter()
    path = Path(path)
    if fmt == "auto":
        fmt = "jsonl" if path.suffix == ".jsonl" else "lines"
    rows: list[tuple[str | None, str | None, str, str]] = []  # source, target, where, problem-field
    if fmt == "lines":
        src_path, tgt_path = Path(f"{path}.source"), Path(f"{path}.target")
        for p in (src_path, tgt_path):
            check_file(p, "seq2seq data")
        src, tgt = read_lines(src_path, "seq2seq data"), read_lines(tgt_path, "seq2seq data")
        if len(src) != len(tgt):
            longer = src_path if len(src) > len(tgt) else tgt_path
            raise DataFormatError(
                f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: "
                f"{longer}:{min(len(src), len(tgt)) + 1} is the first line without a partner"
            )
        for i, (s, t) in enumerate(zip(src, tgt, strict=True), start=1):
            # "where" names the source file, or the target file when only the target line is bad
            rows.append((s, t, f"{tgt_path}:{i}" if s.strip() and not t.strip() else f"{src_path}:{i}", ""))
    elif fmt == "jsonl":
        for i, line in jsonl_lines(path, "seq2seq data"):
            where = f"{path}:{i}"
            if not line.strip():
                rows.append((None, None, where, "(empty line)"))
                continue
            try:
                rec = parse_json_object(line, where)
            except DataFormatError as err:  # a bad row like any other: raised or skipped below
                rows.append((None, None, where, f"({str(err).removeprefix(where + ': ')})"))
                continue
            missing = [f for f in (source_field, target_field) if f not in rec]
            if missing:
                rows.append((None, None, where, f"field {missing[0]!r} missing"))
                continue
            wrong = [f for f in (source_field, target_field) if not isinstance(rec[f], str)]
            if wrong:  # e.g. null: str(None) would silently become the text "None"
                rows.append(
                    (None, None, where, f"field {wrong[0]!r} is {type(rec[wrong[0]]).__name__}, not text")
                )
                continue
            rows.append((rec[source_field], rec[target_field], where, ""))
    else:
        raise ValueError(f"seq2seq data format must be 'lines', 'jsonl' or 'auto', got {fmt!r}")
    out: list[Seq2SeqExample] = []
    skips = SkipLog(str(path))
    for source, target, where, problem in rows:
        if not problem:
            if not source or not source.strip():
                problem = f"field {source_field!r} is empty" if fmt == "jsonl" else "empty source line"
            elif not target or not target.strip():
                problem = f"field {target_field!r} is empty" if fmt == "jsonl" else "empty target line"
        if problem:
            if bad_rows == "raise":
                raise DataFormatError(f"{where}: {problem} (set bad_rows=skip to skip such rows)")
            stats["skipped"] += 1
            skips.add(where, problem)
            continue
        out.append(Seq2SeqExample(source, target, where))
        if max_samples is not None and len(out) >= max_samples:
            break
    skips.report(log)
    if not out and max_samples != 0:
        raise DataFormatError(f"{path}: no usable examples ({len(rows)} rows, {skips.count} skipped as bad)")
    return out


@dataclass
class Seq2SeqSample:
    """One laid-out sample: `input_ids/targets/loss_mask [N]`, `position_ids [2, N]`, `sep`, `mask_pos`."""

    input_ids: np.ndarray
    targets: np.ndarray
    loss_mask: np.ndarray
    position_ids: np.ndarray
    sep: int
    mask_pos: int


def build_source(
    article_ids: list[int],
    prompt_ids: list[int],
    tok: Any,
    src_seq_length: int,
    task_mask: bool,
    stats: Counter | None = None,
    pad: bool = True,
) -> list[int]:
    """`[CLS] mask " Content:" article` truncated to `src_seq_length` and padded with pad (docs/original-glm.md §8.1);
    `pad=False`: not padded (the compact layout of `data.pack`)."""
    mask = tok.smask_id if task_mask else tok.mask_id
    head = [tok.cls_id, mask, *prompt_ids]
    room = src_seq_length - len(head)
    if room < 1:
        raise ValueError(
            f"src_seq_length={src_seq_length} leaves no room for the article after {len(head)} tokens"
        )
    if len(article_ids) > room and stats is not None:
        stats["truncated_source"] += 1
    ids = head + article_ids[:room]
    return ids + [tok.pad_id] * (src_seq_length - len(ids)) if pad else ids


def build_seq2seq_sample(
    source_ids: list[int],
    summary_ids: list[int] | None,
    tok: Any,
    tgt_seq_length: int,
    stats: Counter | None = None,
    pad: bool = True,
) -> Seq2SeqSample:
    """docs/original-glm.md §3(c): Part A = the source as given; Part B = `[sop] + target[:-1]` (none when `summary_ids` is
    None, the decoding input) with `target = summary + [eop]` truncated to `tgt_seq_length`, padded to it, or
    with `pad=False` only as long as the target (the compact layout of `data.pack`)."""
    S = len(source_ids)
    pos_a = np.stack([np.arange(S), np.zeros(S, np.int64)])
    if summary_ids is None:
        ids = np.asarray(source_ids, np.int64)
        return Seq2SeqSample(ids, ids.copy(), np.zeros(S, np.float32), pos_a, S, MASK_POS)
    target = [*summary_ids, tok.eop_id]
    if len(target) > tgt_seq_length:
        target = target[:tgt_seq_length]
        if stats is not None:
            stats["truncated_target"] += 1
    n = len(target)
    T = tgt_seq_length if pad else n
    part_b = [tok.sop_id, *target[:-1]] + [tok.pad_id] * (T - n)
    tgt_b = target + [tok.pad_id] * (T - n)
    ids = np.asarray(source_ids + part_b, np.int64)
    targets = np.asarray(source_ids + tgt_b, np.int64)
    loss = np.concatenate([np.zeros(S, np.float32), np.r_[np.ones(n), np.zeros(T - n)].astype(np.float32)])
    pos_b = np.stack([np.full(T, MASK_POS), np.arange(1, T + 1)])
    return Seq2SeqSample(ids, targets, loss, np.concatenate([pos_a, pos_b], axis=1), S, MASK_POS)


def collate_seq2seq(samples: list[Seq2SeqSample], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Stack equal-length samples (the layout pads to fixed lengths) into the batch dict of the contracts."""
    if not samples:
        raise ValueError("collate_seq2seq: empty batch")
    out = pad_samples(samples, max(len(s.input_ids) for s in samples), pad_id, target_pad=pad_id)
    out["mask_pos"] = torch.tensor([s.mask_pos for s in samples])
    return out


def collate_seq2seq_packed(
    samples: list[Seq2SeqSample], seq_length: int, pad_id: int = 0
) -> dict[str, torch.Tensor]:
    """Pack a batch of compact samples into as few rows of `seq_length` (= S + T) as hold them: the fields of
    `glm.data.packing.pack_samples` (per-token `sep [R, L]`, `segment_ids`, `sample_index`)."""
    return pack_samples(samples, seq_length, pad_id)  # an empty batch is refused there


class Seq2SeqDataset(torch.utils.data.Dataset):
    """Tokenised, laid-out examples; `train=False` yields the decoding input (Part A only) plus the index
    of the example, whose reference text the task module reads from `examples`. `compact=True`: the unpadded
    layout of `data.pack` (module docstring)."""

    def __init__(
        self,
        examples: list[Seq2SeqExample],
        tok: Any,
        src_seq_length: int,
        tgt_seq_length: int,
        task_mask: bool = False,
        detokenize: str = "none",
        train: bool = True,
        compact: bool = False,
    ) -> None:
        if detokenize not in ("none", "ptb"):
            raise ValueError(f"detokenize must be 'none' or 'ptb', got {detokenize!r}")
        self.examples, self.tok, self.train = examples, tok, train
        self.stats: Counter = Counter()
        fix = undo_ptb if detokenize == "ptb" else (lambda s: s)
        prompt = tok.encode(CONTENT_PROMPT)
        articles = tok.encode_batch([" " + fix(e.source) for e in examples])
        summaries = (
            tok.encode_batch([" " + fix(e.target) for e in examples]) if train else [None] * len(examples)
        )
        self.references = [fix(e.target) for e in examples]
        self.samples = [
            build_seq2seq_sample(
                build_source(a, prompt, tok, src_seq_length, task_mask, self.stats, pad=not compact),
                s,
                tok,
                tgt_seq_length,
                self.stats,
                pad=not compact,
            )
            for a, s in zip(articles, summaries, strict=True)
        ]
        if self.stats:
            log.info("seq2seq: %d examples, %s", len(examples), dict(self.stats))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Seq2SeqSample:
        return self.samples[i]


def _collate_with_index(
    batch: list[tuple[int, Seq2SeqSample]], pad_id: int, context_mask: bool = False
) -> dict[str, torch.Tensor]:
    """Decoding batches; `context_mask` (compact sources of different lengths, right-padded here): 1 on each
    row's source, so that the padding is hidden and every row decodes as if alone."""
    out = collate_seq2seq([s for _, s in batch], pad_id)
    out["example_index"] = torch.tensor([i for i, _ in batch], dtype=torch.long)
    if context_mask:
        lengths = torch.tensor([len(s.input_ids) for _, s in batch])
        out["context_mask"] = (torch.arange(out["input_ids"].shape[1])[None] < lengths[:, None]).long()
    return out


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, ds: Seq2SeqDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[int, Seq2SeqSample]:
        return i, self.ds[i]


class Seq2SeqDataModule(GLMDataModule):
    """Summarisation data: `splits` maps stage (train/val/test) to a file stem (lines) or jsonl file name
    under `data_dir` (a null split has no loop); `max_samples` optionally slices each stage. Validation/test
    batches carry Part A only plus `example_index` into `references(stage)` (they are decoded and scored with ROUGE,
    no teacher-forced loss). The training loader shuffles per epoch from the run seed, gives each rank its
    share (the run config sets `use_distributed_sampler: false`) and resumes mid-epoch
    (`GLMDataModule.train_loader`); each evaluation split is shared between ranks too
    (`GLMDataModule.eval_loader`: every rank decodes its share; the module gathers the results by
    `example_index`).

    `pack` (`data.pack`): False = the original padded layout; True = compact (unpadded) samples, each
    training batch of `micro_batch_size` samples packed into rows of `src_seq_length + tgt_seq_length`
    (fewer rows, same samples and sampler), and compact decoding inputs with a `context_mask`."""

    def __init__(
        self,
        data_dir: str,
        tokenizer: Any,
        splits: dict[str, str],
        format: str = "auto",
        source_field: str = "document",
        target_field: str = "summary",
        src_seq_length: int = 608,
        tgt_seq_length: int = 60,
        task_mask: bool = False,
        detokenize: str = "none",
        micro_batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        max_samples: dict[str, int | None] | None = None,
        bad_rows: str = "raise",
        global_batch_size: int | None = None,
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
        unknown = sorted(set(splits) - {"train", "val", "test"})
        if unknown:
            raise ValueError(f"data.splits: unknown stage(s) {unknown}; allowed: train, val, test")
        # a null split (e.g. `val: null`) means the stage has no data: no validation loop, no test
        self.data_dir, self.format = Path(data_dir), format
        self.splits = {stage: name for stage, name in splits.items() if name}
        self.fields = (source_field, target_field)
        self.src_seq_length, self.tgt_seq_length = src_seq_length, tgt_seq_length
        self.task_mask, self.detokenize, self.bad_rows = task_mask, detokenize, bad_rows
        self.max_samples = dict(max_samples or {})
        self.datasets: dict[str, Seq2SeqDataset] = {}

    def _path(self, stage: str) -> Path:
        if stage not in self.splits:
            raise KeyError(f"seq2seq data: no split configured for stage {stage!r} (splits: {self.splits})")
        return self.data_dir / self.splits[stage]

    def _load(self, stage: str, train: bool) -> Seq2SeqDataset:
        key = f"{stage}:{train}"
        if key not in self.datasets:
            examples = read_examples(
                self._path(stage),
                self.format,
                *self.fields,
                bad_rows=self.bad_rows,
                max_samples=self.max_samples.get(stage),
            )
            self.datasets[key] = Seq2SeqDataset(
                examples,
                self.tokenizer,
                self.src_seq_length,
                self.tgt_seq_length,
                self.task_mask,
                self.detokenize,
                train,
                compact=self.pack,
            )
        return self.datasets[key]

    def setup(self, stage: str | None = None) -> None:
        """Read and tokenise the splits the stage's loaders read (cached), so the pipeline, calling this for
        every stage of a run before it trains, finds a bad test file before training rather than after."""
        if stage in (None, "fit"):
            self._load("train", True)
        if stage in (None, "fit", "validate") and "val" in self.splits:
            self._load("val", False)
        if stage == "test" and "test" not in self.splits:
            raise ConfigError(
                "stages: test decodes data.splits.test, which is null; set it or leave test out"
            )
        if stage in (None, "test") and "test" in self.splits:
            self._load("test", False)

    def references(self, stage: str) -> list[str]:
        return self._load(stage, False).references

    def _train_collate(self) -> functools.partial:
        pad = self.tokenizer.pad_id
        if self.pack:
            log.info(
                "data.pack: compact training samples packed into rows of %d tokens",
                self.src_seq_length + self.tgt_seq_length,
            )
            return functools.partial(
                collate_seq2seq_packed, seq_length=self.src_seq_length + self.tgt_seq_length, pad_id=pad
            )
        return functools.partial(collate_seq2seq, pad_id=pad)

    def _eval_loader(self, ds: Seq2SeqDataset) -> torch.utils.data.DataLoader:
        collate = functools.partial(_collate_with_index, pad_id=self.tokenizer.pad_id, context_mask=self.pack)
        return self.eval_loader(_Indexed(ds), collate)

    def train_dataloader(self) -> ResumableDataLoader:
        return self.train_loader(self._load("train", True), self._train_collate())

    def val_dataloader(self) -> torch.utils.data.DataLoader | list:
        if "val" not in self.splits:  # Lightning skips the validation loop for an empty list
            return []
        return self._eval_loader(self._load("val", False))

    def test_dataloader(self) -> torch.utils.data.DataLoader:
        return self._eval_loader(self._load("test", False))
