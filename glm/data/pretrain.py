"""Pretraining data: corpus files -> cached token memmap -> raw samples (docs/original-glm.md §5.1) -> masked batches.

Decisions (documented here because docs/original-glm.md leaves them open):

- Documents. A ``.txt`` file is split into paragraphs at blank lines (``document_split="paragraph"``) or
  taken whole (``"file"``). Inside a paragraph, single line breaks are joined with a space: Project
  Gutenberg text is hard-wrapped at ~70 columns, and a newline ends a sentence for the sentence objective
  (docs/original-glm.md §5.4), so keeping them would turn every printed line into a "sentence". A ``.jsonl`` file holds one
  document per line in ``text_field``; a line that is not JSON or lacks the field is an error naming the
  file and line; empty documents are skipped and counted in the log.
- Cache. All documents are tokenised once into ``tokens.npy`` (uint16 when V <= 65536, else uint32) plus
  ``offsets.npy`` (int64 document boundaries), written to a temporary dir renamed into place and opened
  with ``mmap_mode="r"``. The cache key hashes the file paths, sizes and mtimes, the split options and the
  tokenizer's piece table, so a changed file or tokenizer makes a new cache and an unchanged one is reused.
- Train/validation split. Documents are permuted with ``default_rng([seed, 1])``; the first
  ``val_fraction`` of them (at least one) are validation documents. Validation samples are masked with
  epoch 0 always, so ``val/loss`` is comparable across epochs.
- Raw samples (docs/original-glm.md §5.1). Sample ``i`` of a split is built from ``default_rng([seed, 2, split, i])``:
  ``[CLS] doc [eos]`` segments, documents drawn with probability proportional to their length, until
  ``seq_length`` is reached. A document longer than the room left is cut at a random start moved forward
  to just after a sentence end (searching at most ``seq_length // 2`` tokens) and right-stripped at its
  last sentence end (unless that would drop more than half of it); a cut segment gets no eos (its
  document did not end). The masked layout of sample
  ``i`` in epoch ``e`` uses ``sample_rng(seed, e, i)`` (docs/contracts.md), so a batch depends only on
  (seed, epoch, indices), whatever the number of workers.
- Epochs reach the dataset through the index: :class:`glm.data.sampling.EpochIndexSampler` yields
  ``epoch * N + i`` and shards by rank itself (``use_distributed_sampler: false``), dropping the tail that
  does not divide evenly, so worker processes need no shared state.
- Mid-epoch resume: the training loader is a :class:`glm.data.sampling.ResumableDataLoader` (shared with the
  finetuning datamodules, :mod:`glm.data.sampling` has the rules; :class:`glm.data.base.GLMDataModule`
  builds it).
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from glm.data.base import GLMDataModule
from glm.data.masking import (
    GLMMasker,
    MaskedSample,
    MaskingConfig,
    SpecialIds,
    collate_masked,
    default_loss_mask,
    sample_rng,
    sentence_end_from_tokenizer,
)
from glm.data.packing import pack_samples
from glm.data.paths import missing_data
from glm.data.sampling import EpochIndexSampler, ResumableDataLoader, rank_world
from glm.errors import ConfigError, DataFormatError, MissingInputError
from glm.utils.inputs import SkipLog, iter_jsonl, read_text, require

log = logging.getLogger(__name__)

CACHE_VERSION = 1
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n+")
_LINE_BREAK = re.compile(r"[ \t]*\n[ \t]*")
SPLITS = {"train": 0, "val": 1}


# ---------------------------------------------------------------------------------------------------
# Reading documents
# ---------------------------------------------------------------------------------------------------


def expand_files(files: Sequence[str | os.PathLike[str]] | str) -> list[Path]:
    """Files and globs -> sorted unique existing paths; a pattern matching nothing is an error."""
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    out: list[Path] = []
    for pattern in files:
        pattern = os.fspath(pattern)
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if Path(m).is_file()]
        if not matches and Path(pattern).is_dir():
            raise MissingInputError(f"data.files: {pattern!r} is a directory; give files or a glob")
        if not matches:
            raise missing_data(pattern, f"data.files: {pattern!r} matches no file")
        out.extend(Path(m).absolute() for m in matches)
    seen: set[Path] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


CORPUS_SUFFIXES = (".txt", ".text", "", ".jsonl")


def check_corpus_type(path: Path) -> None:
    """A :class:`DataFormatError` for a file the corpus reader cannot take (checked when the files are
    listed, so before a tokenizer is trained on them)."""
    if path.suffix.lower() not in CORPUS_SUFFIXES:
        raise DataFormatError(
            f"{path}: unsupported corpus file type {path.suffix!r} (data.files); use .txt or .jsonl"
        )


def read_documents(
    path: Path, document_split: str = "paragraph", text_field: str = "text", skips: SkipLog | None = None
) -> list[str]:
    """The documents of one ``.txt`` or ``.jsonl`` file (see the module docstring for the rules).

    With ``skips``, a jsonl record whose text is blank is left out and recorded there (file:line).
    """
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        docs = []
        for line_no, row in iter_jsonl(path, "pretraining corpus", allow_empty=True):
            where = f"{path}:{line_no}"
            text = require(row, text_field, where, str)  # the field named by data.text_field
            if skips is not None and not text.strip():
                skips.add(where, f"field {text_field!r} is blank")
                continue
            docs.append(text)
        return docs
    check_corpus_type(path)
    text = read_text(path, "pretraining corpus").replace("\r", "\n")
    if document_split == "file":
        return [text.strip()]
    if document_split != "paragraph":
        raise ConfigError(f"data.document_split: must be 'paragraph' or 'file', got {document_split!r}")
    return [_LINE_BREAK.sub(" ", p.strip()) for p in _PARAGRAPH_BREAK.split(text)]


def tokenizer_fingerprint(tok: Any) -> str:
    """A hash of the tokenizer's class, sizes and piece table (changes whenever encodings can change)."""
    h = hashlib.sha256(
        f"{type(tok).__name__}|{tok.vocab_size}|{getattr(tok, 'num_text_tokens', '')}".encode()
    )
    n = int(getattr(tok, "num_text_tokens", tok.vocab_size))
    for i in range(n):
        h.update(tok.id_to_piece(i).encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


def corpus_cache_key(
    files: Sequence[Path], tok_fingerprint: str, document_split: str, text_field: str
) -> str:
    """Cache key of a tokenised corpus: file paths, sizes, mtimes, split options, tokenizer."""
    entries = []
    for p in files:
        st = p.stat()
        entries.append([str(p), st.st_size, st.st_mtime_ns])
    blob = json.dumps(
        {
            "v": CACHE_VERSION,
            "files": entries,
            "tok": tok_fingerprint,
            "split": document_split,
            "field": text_field,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclass
class TokenizedCorpus:
    """Documents as one flat token array and ``offsets`` (document ``d`` = ``tokens[offsets[d]:offsets[d+1]]``)."""

    tokens: np.ndarray
    offsets: np.ndarray
    path: Path | None = None  # the cache dir, when memory-mapped

    @property
    def num_documents(self) -> int:
        return int(self.offsets.shape[0] - 1)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def document(self, d: int) -> np.ndarray:
        return self.tokens[self.offsets[d] : self.offsets[d + 1]]


def tokenize_corpus(
    files: Sequence[Path],
    tok: Any,
    cache_dir: str | os.PathLike[str],
    document_split: str = "paragraph",
    text_field: str = "text",
    progress: bool = True,
) -> TokenizedCorpus:
    """Tokenise ``files`` once into ``cache_dir/<key>/{tokens,offsets}.npy``; later calls memory-map it."""
    key = corpus_cache_key(files, tokenizer_fingerprint(tok), document_split, text_field)
    out = Path(cache_dir) / key
    if not (out / "offsets.npy").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=out.parent))
        try:
            _tokenize_into(files, tok, tmp, document_split, text_field, progress)
            try:
                os.rename(tmp, out)  # atomic; a concurrent writer that won leaves its complete copy
            except OSError:
                if not (out / "offsets.npy").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        log.info("reusing tokenised corpus cache %s", out)
    tokens = np.load(out / "tokens.npy", mmap_mode="r")
    offsets = np.load(out / "offsets.npy")
    return TokenizedCorpus(tokens, offsets, out)


def _tokenize_into(
    files: Sequence[Path], tok: Any, out: Path, document_split: str, text_field: str, progress: bool
) -> None:
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
    chunks: list[np.ndarray] = []
    lengths: list[int] = []
    skipped = 0
    # jsonl records without text and documents that encode to no token are dropped: counted and logged
    # once; empty paragraphs of a .txt file (runs of blank lines) hold nothing and are only counted
    skips = SkipLog("corpus", "empty documents")
    total_bytes = sum(p.stat().st_size for p in files)
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenising corpus", disable=not progress)
    for path in files:
        docs = read_documents(path, document_split, text_field, skips)
        kept = [d for d in docs if d.strip()]
        skipped += len(docs) - len(kept)
        for start in range(0, len(kept), 4096):
            for k, ids in enumerate(tok.encode_batch(kept[start : start + 4096]), start):
                if not ids:
                    skips.add(f"{path} (document {k})", "encodes to no token")
                    continue
                chunks.append(np.asarray(ids, dtype=dtype))
                lengths.append(len(ids))
        bar.update(path.stat().st_size)
    bar.close()
    skips.report(log)
    skipped += skips.count
    if skipped:
        log.info("corpus: skipped %d empty documents", skipped)
    if not lengths:
        where = f"{files[0]}" if len(files) == 1 else f"{len(files)} files ({files[0]}, ...)"
        raise DataFormatError(
            f"{where}: no document with any text (empty or blank lines only, {total_bytes} bytes); "
            "data.files must name text (.txt) or jsonl files with text"
        )
    np.save(out / "tokens.npy", np.concatenate(chunks))
    np.save(out / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    (out / "meta.json").write_text(
        json.dumps(
            {
                "files": [str(p) for p in files],
                "documents": len(lengths),
                "tokens": int(sum(lengths)),
                "skipped_empty": skipped,
            }
        )
    )


# ---------------------------------------------------------------------------------------------------
# Raw samples and the dataset
# ---------------------------------------------------------------------------------------------------


def build_raw_sample(
    corpus: TokenizedCorpus,
    docs: np.ndarray,
    cum_lengths: np.ndarray,
    seq_length: int,
    rng: np.random.Generator,
    sentence_end: np.ndarray,
    cls_id: int,
    eos_id: int,
) -> np.ndarray:
    """One raw sample (docs/original-glm.md §5.1) from the documents ``docs`` (ids into ``corpus``) with cumulative lengths.

    Returns int64 tokens of length ``<= seq_length``: ``[CLS] doc [eos]`` segments; see the module docstring.
    """
    out: list[np.ndarray] = []
    used = 0
    total = int(cum_lengths[-1])
    while seq_length - used >= 3:  # room for [CLS], one token and [eos]
        d = int(docs[int(np.searchsorted(cum_lengths, rng.integers(total), side="right"))])
        doc = np.asarray(corpus.document(d), dtype=np.int64)
        room = seq_length - used - 2
        if doc.shape[0] <= room:
            out.append(np.concatenate([[cls_id], doc, [eos_id]]))
            used += doc.shape[0] + 2
            continue
        room += 1  # a cut segment has no eos
        start = int(rng.integers(0, doc.shape[0] - room + 1))
        window = sentence_end[doc[start : start + seq_length // 2]]
        if window.any():  # start just after the first sentence end, if one is near
            moved = start + int(np.argmax(window)) + 1
            if moved < doc.shape[0]:
                start = moved
        piece = doc[start : start + room]
        ends = np.flatnonzero(sentence_end[piece])
        if ends.size and ends[-1] + 1 >= piece.shape[0] // 2:  # never strip away more than half the piece
            piece = piece[: ends[-1] + 1]
        out.append(np.concatenate([[cls_id], piece]))
        used += piece.shape[0] + 1
        break
    return np.concatenate(out)


class PretrainDataset(Dataset):
    """Index ``k = epoch * N + i`` -> masked sample(s) of raw sample ``i`` in ``epoch`` (see module docstring).

    Returns a list of :class:`MaskedSample` (several when the objective's ``short_seq_prob`` splits a sample).
    The memory map is reopened lazily in each worker instead of being pickled.
    """

    def __init__(
        self,
        corpus: TokenizedCorpus,
        docs: np.ndarray,
        num_samples: int,
        seq_length: int,
        seed: int,
        split: str,
        masker: GLMMasker,
        fixed_epoch: int | None = None,
    ) -> None:
        if len(docs) == 0:
            raise ValueError(f"{split} split has no documents")
        self.corpus, self.docs = corpus, np.asarray(docs, dtype=np.int64)
        self.cum_lengths = np.cumsum(corpus.lengths()[self.docs])
        self.num_samples, self.seq_length, self.seed = int(num_samples), int(seq_length), int(seed)
        self.split, self.masker, self.fixed_epoch = split, masker, fixed_epoch

    def __len__(self) -> int:
        return self.num_samples

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.corpus.path is not None:  # workers reopen the memmap instead of copying it
            state["corpus"] = TokenizedCorpus(None, self.corpus.offsets, self.corpus.path)  # type: ignore[arg-type]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.corpus.tokens is None:
            self.corpus.tokens = np.load(self.corpus.path / "tokens.npy", mmap_mode="r")

    def raw_sample(self, i: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 2, SPLITS[self.split], int(i)])
        ids = self.masker.ids
        return build_raw_sample(
            self.corpus,
            self.docs,
            self.cum_lengths,
            self.seq_length,
            rng,
            self.masker.sentence_end,
            ids.cls,
            ids.eos,
        )

    def __getitem__(self, k: int) -> list[MaskedSample]:
        epoch, i = divmod(int(k), self.num_samples)
        if self.fixed_epoch is not None:
            epoch = self.fixed_epoch
        tokens = self.raw_sample(i)
        rng = sample_rng(self.seed, epoch, i)
        out = []
        for piece in self.masker.maybe_split(tokens, rng, self.seq_length):
            out.append(self.masker(piece, rng, default_loss_mask(piece, self.masker.ids.cls)))
        return out


def collate_pretrain(items: Sequence[list[MaskedSample]], pack: bool = False) -> dict[str, torch.Tensor]:
    """Flatten the per-index lists and pad with :func:`collate_masked` (docs/original-glm.md §5.6), or with ``pack`` put the
    samples of this batch into as few rows as hold them (:func:`glm.data.packing.pack_samples`, rows as long
    as the longest sample; ``segment_ids`` and per-token ``sep`` keep every sample's attention to itself).
    Packing happens inside one batch, so batch boundaries, and with them exact resume, do not move."""
    samples = [s for item in items for s in item]
    if not pack:
        return collate_masked(samples)
    batch = pack_samples(samples, max(len(s) for s in samples))
    batch.pop("sample_index")  # the loss is a token-weighted mean: no per-sample reduction needed
    return batch


# ---------------------------------------------------------------------------------------------------
# The data module
# ---------------------------------------------------------------------------------------------------


class PretrainDataModule(GLMDataModule):
    """Pretraining batches from text/jsonl corpora (see the module docstring for every rule).

    ``objective`` is the masking config (a :class:`MaskingConfig` or a dict with optional ``preset``), handed
    over by the pipeline from the ``objective`` group. ``micro_batch_size`` is the per-device batch; the
    pipeline derives gradient accumulation from ``global_batch_size``. ``tokenizer`` may ask for a
    sentencepiece tokenizer trained on ``files`` (``train`` + ``cache_dir``, :mod:`glm.data.base`).
    """

    trains_tokenizer = True

    def __init__(
        self,
        files: Sequence[str] | str,
        tokenizer: dict[str, Any] | None = None,
        seq_length: int = 512,
        global_batch_size: int = 32,
        micro_batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.02,
        max_val_samples: int | None = 256,
        samples_per_epoch: int | None = None,
        cache_dir: str = "outputs/cache/corpus",
        text_field: str = "text",
        document_split: str = "paragraph",
        seed: int = 1234,
        objective: MaskingConfig | dict[str, Any] | None = None,
        progress: bool = True,
        pack: bool = False,
    ) -> None:
        if seq_length < 8:
            raise ConfigError(f"data.seq_length: must be >= 8, got {seq_length}")
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction: must be in (0, 1), got {val_fraction}")
        if document_split not in ("paragraph", "file"):
            raise ConfigError(f"data.document_split: must be 'paragraph' or 'file', got {document_split!r}")
        super().__init__(
            tokenizer,
            micro_batch_size=micro_batch_size,
            global_batch_size=global_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            pack=pack,
            seed=seed,
        )
        self.files_spec, self.seq_length = files, seq_length
        self.val_fraction, self.max_val_samples = val_fraction, max_val_samples
        self.samples_per_epoch, self.cache_dir = samples_per_epoch, cache_dir
        self.text_field, self.document_split, self.progress = text_field, document_split, progress
        self.tokenizer_text_field = text_field
        self.objective = _masking_config(objective)
        self._files: list[Path] | None = None
        self.train_set: PretrainDataset | None = None
        self.val_set: PretrainDataset | None = None

    @property
    def files(self) -> list[Path]:
        if self._files is None:
            files = expand_files(self.files_spec)
            for path in files:
                check_corpus_type(path)
            self._files = files
        return self._files

    def tokenizer_train_files(self) -> list[Path]:
        return self.files

    def prepare_data(self) -> None:
        # Rank 0 only: train the tokenizer and tokenise the corpus into the cache; setup() then memory-maps it.
        tokenize_corpus(
            self.files, self.tokenizer, self.cache_dir, self.document_split, self.text_field, self.progress
        )

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        tok = self.tokenizer
        corpus = tokenize_corpus(
            self.files, tok, self.cache_dir, self.document_split, self.text_field, self.progress
        )
        masker = GLMMasker(self.objective, SpecialIds.from_tokenizer(tok), sentence_end_from_tokenizer(tok))
        perm = np.random.default_rng([self.seed, 1]).permutation(corpus.num_documents)
        n_val = max(1, round(self.val_fraction * corpus.num_documents))
        if n_val >= corpus.num_documents:
            files = self.files
            where = f"{files[0]}" if len(files) == 1 else f"{len(files)} files ({files[0]}, ...)"
            raise DataFormatError(
                f"{where}: {corpus.num_documents} document(s) cannot be split into train and val "
                f"(data.val_fraction={self.val_fraction}); give more documents in data.files (a .txt "
                "file's documents are its blank-line separated paragraphs)"
            )
        val_docs, train_docs = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        lengths = corpus.lengths()
        n_train = self.samples_per_epoch or max(
            1, math.ceil(int(lengths[train_docs].sum()) / self.seq_length)
        )
        n_val_samples = max(1, math.ceil(int(lengths[val_docs].sum()) / self.seq_length))
        if self.max_val_samples:
            n_val_samples = min(n_val_samples, int(self.max_val_samples))
        self.train_set = PretrainDataset(
            corpus, train_docs, n_train, self.seq_length, self.seed, "train", masker
        )
        self.val_set = PretrainDataset(
            corpus, val_docs, n_val_samples, self.seq_length, self.seed, "val", masker, fixed_epoch=0
        )
        log.info(
            "pretraining data: %d documents (%d val), %d tokens, %d train / %d val samples of <= %d tokens",
            corpus.num_documents,
            n_val,
            int(lengths.sum()),
            n_train,
            n_val_samples,
            self.seq_length,
        )

    def _collate(self) -> functools.partial:
        return functools.partial(collate_pretrain, pack=self.pack)

    def train_dataloader(self) -> ResumableDataLoader:
        assert self.train_set is not None, "call setup() first"
        # index epoch * N + i (a sample is masked anew each epoch); the uneven tail is dropped
        return self.train_loader(
            self.train_set, self._collate(), epoch_offset=True, tail="drop", drop_last=True
        )

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "call setup() first"
        # in order, the uneven tail dropped under several processes (not padded: val/loss is a mean)
        rank, world = rank_world(getattr(self, "trainer", None))
        sampler = EpochIndexSampler(len(self.val_set), self.seed, shuffle=False, rank=rank, world_size=world)
        return self.eval_loader(self.val_set, self._collate(), sampler=sampler)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


def _masking_config(objective: MaskingConfig | dict[str, Any] | None) -> MaskingConfig:
    if isinstance(objective, MaskingConfig):
        return objective
    values = dict(objective or {})
    preset = values.pop("preset", None)
    try:
        return MaskingConfig.from_name(preset, **values) if preset else MaskingConfig(**values)
    except TypeError as err:
        raise ConfigError(f"objective: {err}") from None
