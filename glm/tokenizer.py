"""GLM tokenizers: our own SentencePiece models, and the BERT / GPT-2 vocabularies of released GLMs.

Every tokenizer implements :class:`GLMTokenizer` (docs/contracts.md): special-token ids as
attributes (``pad_id == eos_id``), ``encode``/``decode`` without adding specials, and ``save(dir)``
so an exported checkpoint reloads with the exact same ids through :func:`load_tokenizer`.

Special tokens (one table, :data:`SPECIAL_TOKENS`; ids per family, spec §4.1):

=========  ======================  =============  ===================  ===============
name       string in text          sentencepiece  bert (uncased)       gpt2
=========  ======================  =============  ===================  ===============
eos = pad  ``<|endoftext|>``       0              0 (``[PAD]``)        50256
unk        ``[UNK]``               1              100                  50262
cls        ``[CLS]``               2              101                  50259
sep        ``[SEP]``               3              102                  50261
mask       ``[MASK]``              4              103                  50260
smask      ``[sMASK]``             5              30525 (task mask)    50264 (task mask)
gmask      ``[gMASK]``             6              30524 (task mask)    50263 (task mask)
sop        ``<|startofpiece|>``    7              30522                50257
eop        ``<|endofpiece|>``      8              30523                50258
dblock     ``[dBLOCK]``            9              30526 (see below)    50265
padded V                           pieces -> 128k 30592                50304
=========  ======================  =============  ===================  ===============

Decisions (where the spec is silent):

- ``task_mask=False`` (BERT/GPT-2) leaves gMASK/sMASK out of the vocabulary, as the original
  ``--task-mask`` flag does: their ids are reported as ``None`` (never a made-up int), their strings
  are ordinary text, and the following appended ids move down by two.
- ``decoder_mask`` (``[dBLOCK]``, original ``add_decoder_mask``) defaults to True so that every id of
  the contract is an int. It is appended after the task masks in the original order, which gives
  BERT 30526 (not listed in the spec table, derived from that order) and GPT-2 50265 (spec).
  Both fall inside the padding rows, so V is unchanged.
- ``num_text_tokens`` is the unpadded count of real ids (vocabulary + appended specials); ids in
  ``[num_text_tokens, vocab_size)`` are the dummy rows that pad V to a multiple of 128.
- Our SentencePiece models are trained without SentencePiece's dummy-prefix space, with the
  identity normaliser, byte fallback and whitespace kept, so ``decode(encode(t)) == t`` exactly
  (CR, tabs, runs of spaces and unseen characters included) and the ids of separately encoded
  pieces concatenate like the original pattern code expects (spec §7.1). For the same reason the
  SentencePiece ``[MASK]``/``[sMASK]``/``[gMASK]`` do *not* absorb the whitespace on their left, and
  whitespace-only text encodes to its whitespace tokens; the BERT and GPT-2 wrappers follow the
  original instead (whitespace-only -> ``[]``; GPT-2 masks absorb left whitespace).
- ``<|endoftext|>`` is a user-defined symbol of our SentencePiece models, so written in text it
  encodes to id 0 like the GPT-2 document separator. ``[UNK]`` written in text also encodes to 1.
- ``decode(..., skip_special_tokens=True)`` drops every special id (unk included) and padding rows;
  with ``False`` specials are written as their strings and padding rows are still dropped.

RoBERTa and Chinese GLM vocabularies are not available locally, so no wrapper exists for them yet;
their id layouts are in spec §4.1.
"""

from __future__ import annotations

import argparse
import glob as globlib
import json
import os
import shutil
import sys
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

META_FILE = "tokenizer.json"
SP_MODEL_FILE = "tokenizer.model"
META_FORMAT = "glm-lightning-tokenizer"
META_VERSION = 1
VOCAB_MULTIPLE = 128  # --make-vocab-size-divisible-by (spec §4.1)

# name -> command string, in the order of our SentencePiece ids 0..9 (docs/contracts.md).
SPECIAL_TOKENS: dict[str, str] = {
    "eos": "<|endoftext|>",
    "unk": "[UNK]",
    "cls": "[CLS]",
    "sep": "[SEP]",
    "mask": "[MASK]",
    "smask": "[sMASK]",
    "gmask": "[gMASK]",
    "sop": "<|startofpiece|>",
    "eop": "<|endofpiece|>",
    "dblock": "[dBLOCK]",
}
SPECIAL_NAMES: tuple[str, ...] = tuple(SPECIAL_TOKENS)
TASK_MASK_NAMES = ("gmask", "smask")
# Masks that swallow the whitespace on their left in the GPT-2/RoBERTa/Chinese tokenizers (spec §4.2).
LSTRIP_NAMES = frozenset({"mask", "smask", "gmask"})


@dataclass(frozen=True)
class _Family:
    """Where a vocabulary family keeps its specials (spec §4.1).

    ``in_vocab``: name -> entry already in the vocabulary file; ``appended``: names added after the
    vocabulary, in the original order (task masks and dBLOCK are dropped when disabled).
    """

    in_vocab: dict[str, str]
    appended: tuple[str, ...]
    lstrip: frozenset[str]


_FAMILIES: dict[str, _Family] = {
    "bert": _Family(
        in_vocab={"eos": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
        appended=("sop", "eop", "gmask", "smask", "dblock"),
        lstrip=frozenset(),  # BERT's pre-tokenizer drops whitespace anyway
    ),
    "gpt2": _Family(
        in_vocab={"eos": "<|endoftext|>"},
        appended=("sop", "eop", "cls", "mask", "sep", "unk", "gmask", "smask", "dblock"),
        lstrip=LSTRIP_NAMES,
    ),
}


def pad_vocab_size(n: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """``n`` rounded up to a multiple of ``multiple`` (the padded embedding size V)."""
    return -(-n // multiple) * multiple


class GLMTokenizer(ABC):
    """The tokenizer interface every package codes against (docs/contracts.md).

    Subclasses set ``kind``, ``special_ids`` (name -> id or None when absent) and
    ``num_text_tokens``; everything else derives from them.
    """

    kind: str
    special_ids: dict[str, int | None]
    num_text_tokens: int

    # --- sizes and ids -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Padded size V (a multiple of 128): what ``GLMConfig.vocab_size`` must be at least."""
        return pad_vocab_size(self.num_text_tokens)

    @property
    def eos_id(self) -> int:
        return self._id("eos")

    @property
    def pad_id(self) -> int:
        return self._id("eos")  # pad == eos in every GLM tokenizer

    @property
    def unk_id(self) -> int:
        return self._id("unk")

    @property
    def cls_id(self) -> int:
        return self._id("cls")

    @property
    def sep_id(self) -> int:
        return self._id("sep")

    @property
    def mask_id(self) -> int:
        return self._id("mask")

    @property
    def smask_id(self) -> int | None:
        return self.special_ids.get("smask")

    @property
    def gmask_id(self) -> int | None:
        return self.special_ids.get("gmask")

    @property
    def sop_id(self) -> int:
        return self._id("sop")

    @property
    def eop_id(self) -> int:
        return self._id("eop")

    @property
    def dblock_id(self) -> int | None:
        return self.special_ids.get("dblock")

    def _id(self, name: str) -> int:
        value = self.special_ids.get(name)
        if value is None:  # only task masks / dBLOCK may be absent; the rest always exist
            raise AttributeError(f"{type(self).__name__} has no {name} token")
        return value

    @property
    def all_special_ids(self) -> frozenset[int]:
        """Ids of every present special token."""
        return frozenset(i for i in self.special_ids.values() if i is not None)

    # --- text <-> ids --------------------------------------------------------------------------
    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without added specials; command strings in the text become one id."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``[self.encode(t) for t in texts]``, possibly faster."""
        return [self.encode(t) for t in texts]

    @abstractmethod
    def _decode_real(self, ids: list[int], skip_special_tokens: bool) -> str:
        """Decode ids that are all real (< num_text_tokens)."""

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids`` (list, numpy array or tensor). Padding rows decode to nothing."""
        ids = self._check_ids(ids)
        specials = self.all_special_ids
        if skip_special_tokens:
            ids = [i for i in ids if i not in specials]
        return self._decode_real([i for i in ids if i < self.num_text_tokens], skip_special_tokens)

    @abstractmethod
    def _piece(self, i: int) -> str:
        """Vocabulary entry of a real id."""

    def id_to_piece(self, i: int) -> str:
        """Vocabulary entry of id ``i`` (with the family's space marker: ``▁``, ``Ġ`` or ``##``).

        Padding rows (``num_text_tokens <= i < vocab_size``) have no entry and give ``""``.
        """
        (i,) = self._check_ids([i])
        return self._piece(i) if i < self.num_text_tokens else ""

    def _check_ids(self, ids: Iterable[int]) -> list[int]:
        if hasattr(ids, "tolist"):  # numpy / torch
            ids = ids.tolist()
        out = [int(i) for i in ids]
        bad = [i for i in out if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id(s) {bad[:5]} outside [0, {self.vocab_size}) for {self!r}")
        return out

    # --- persistence ---------------------------------------------------------------------------
    @abstractmethod
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the vocabulary file(s) and ``tokenizer.json`` into ``directory``; return it."""

    def _meta(self, **files_and_options: Any) -> dict[str, Any]:
        return {
            "format": META_FORMAT,
            "version": META_VERSION,
            "kind": self.kind,
            **files_and_options,
            "num_text_tokens": self.num_text_tokens,
            "vocab_size": self.vocab_size,
            "special_ids": dict(self.special_ids),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(V={self.vocab_size}, real={self.num_text_tokens})"


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _copy_into(src: Path, directory: Path, name: str) -> None:
    dest = directory / name
    if dest.exists() and dest.resolve() == src.resolve():
        return
    tmp = directory / f".{name}.tmp-{os.getpid()}"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


# =================================================================================================
# SentencePiece (our own models)
# =================================================================================================
class SentencePieceTokenizer(GLMTokenizer):
    """A SentencePiece model trained by :func:`train_sentencepiece` (fixed special ids 0..9)."""

    kind = "sentencepiece"

    def __init__(self, model_file: str | os.PathLike[str], num_threads: int = 2) -> None:
        import sentencepiece as spm

        self.model_file = Path(model_file)
        if not self.model_file.is_file():
            raise _missing(self.model_file, f"sentencepiece model not found: {self.model_file}")
        self._sp = spm.SentencePieceProcessor(model_file=str(self.model_file))
        self._num_threads = num_threads
        self._init_ids()

    def _init_ids(self) -> None:
        sp = self._sp
        self.num_text_tokens = sp.get_piece_size()
        self.special_ids = {name: i for i, name in enumerate(SPECIAL_NAMES)}
        for name, i in self.special_ids.items():
            piece = sp.id_to_piece(i) if i < self.num_text_tokens else None
            if piece != SPECIAL_TOKENS[name]:
                raise ValueError(
                    f"{self.model_file}: id {i} is {piece!r}, expected {SPECIAL_TOKENS[name]!r}; this model "
                    "was not trained with glm.tokenizer.train_sentencepiece (fixed GLM special ids)"
                )
        if not sp.is_unknown(self.unk_id):
            raise ValueError(f"{self.model_file}: id {self.unk_id} is not the unknown piece")

    def __getstate__(self) -> dict[str, Any]:
        # SentencePieceProcessor is not reliably picklable: ship the model bytes (DataLoader workers).
        state = self.__dict__.copy()
        state["_sp"] = self._sp.serialized_model_proto()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        import sentencepiece as spm

        proto = state.pop("_sp")
        self.__dict__.update(state)
        self._sp = spm.SentencePieceProcessor(model_proto=proto)

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        unk = SPECIAL_TOKENS["unk"]
        if unk not in text:
            return self._sp.encode(text)
        # The unknown piece is not a user-defined symbol, so "[UNK]" in text is split out by hand
        # (exact, because there is no dummy-prefix space to re-add per part).
        out: list[int] = []
        for k, part in enumerate(text.split(unk)):
            if k:
                out.append(self.unk_id)
            if part:
                out.extend(self._sp.encode(part))
        return out

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        texts = list(texts)
        plain = [k for k, t in enumerate(texts) if t and SPECIAL_TOKENS["unk"] not in t]
        out: list[list[int]] = [[] for _ in texts]
        if plain:
            encoded = self._sp.encode([texts[k] for k in plain], num_threads=self._num_threads)
            for k, ids in zip(plain, encoded):
                out[k] = ids
        for k, t in enumerate(texts):
            if t and SPECIAL_TOKENS["unk"] in t:
                out[k] = self.encode(t)
        return out

    def _decode_real(self, ids: list[int], skip_special_tokens: bool) -> str:
        # The unknown piece decodes to its surface "[UNK]" (set at training time).
        return self._sp.decode(ids)

    def _piece(self, i: int) -> str:
        return self._sp.id_to_piece(i)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _copy_into(self.model_file, directory, SP_MODEL_FILE)
        meta = self._meta(model_file=SP_MODEL_FILE)
        old = _read_meta(directory) if (directory / META_FILE).is_file() else {}
        if "trained_with" in old:  # keep the cache key of ensure_tokenizer when saving in place
            meta["trained_with"] = old["trained_with"]
        _write_json_atomic(directory / META_FILE, meta)
        return directory


def _iter_training_lines(files: Sequence[Path], max_bytes: int | None, progress: bool) -> Iterator[str]:
    """Lines of ``files`` as text: BOM removed, CRLF/CR -> LF, at most ``max_bytes`` in all.

    The byte budget is shared evenly among the files (unused share rolls over), cut at a line end,
    so a capped run still sees every file.
    """
    from tqdm.auto import tqdm

    sizes = [f.stat().st_size for f in files]
    total = sum(sizes) if max_bytes is None else min(sum(sizes), max_bytes)
    remaining = max_bytes
    with tqdm(
        total=total, unit="B", unit_scale=True, desc="reading text", disable=not progress or None
    ) as bar:
        for k, path in enumerate(files):
            budget = None if remaining is None else remaining // (len(files) - k)
            used = 0
            with open(path, "rb") as fh:
                for lineno, raw in enumerate(fh, 1):
                    if budget is not None and used + len(raw) > budget:
                        break
                    used += len(raw)
                    bar.update(len(raw))
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as err:
                        raise ValueError(
                            f"{path}:{lineno}: not valid UTF-8 ({err.reason} at byte {err.start})"
                        ) from err
                    if lineno == 1:
                        line = line.removeprefix("\ufeff")
                    line = line.rstrip("\n").rstrip("\r")
                    # A lone CR inside a line (old Mac endings) is a line break too.
                    yield from line.split("\r") if "\r" in line else (line,)
            if remaining is not None:
                remaining -= used


def _expand_inputs(inputs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Paths and glob patterns -> sorted unique existing files; error naming any empty pattern."""
    files: list[Path] = []
    for item in inputs:
        item = os.fspath(item)
        matches = sorted(globlib.glob(item, recursive=True)) if globlib.has_magic(item) else [item]
        found = [Path(m) for m in matches if Path(m).is_file()]
        if not found:
            raise FileNotFoundError(f"tokenizer training input {item!r} matches no file")
        files.extend(found)
    return sorted(dict.fromkeys(files))


def _training_settings(
    files: Sequence[Path], vocab_size: int, model_type: str, max_bytes: int | None
) -> dict:
    """What a trained model depends on (the cache key of :func:`ensure_tokenizer`)."""
    return {
        "vocab_size": vocab_size,
        "model_type": model_type,
        "max_bytes": max_bytes,
        "inputs": sorted([f.name, f.stat().st_size] for f in files),
    }


def train_sentencepiece(
    files: Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    vocab_size: int = 8000,
    model_type: str = "bpe",
    max_bytes: int | None = 200_000_000,
    num_threads: int = 2,
    character_coverage: float = 1.0,
    progress: bool = True,
    quiet: bool = False,
) -> SentencePieceTokenizer:
    """Train a GLM SentencePiece model on text files; write ``out_dir/tokenizer.model`` + ``tokenizer.json``.

    ``files`` are paths or glob patterns (UTF-8 text; CRLF is read as LF). ``vocab_size`` counts
    every piece: the 10 specials and the 256 byte-fallback pieces included. ``max_bytes`` caps the
    text read (shared evenly across files). ``quiet`` silences sentencepiece's own log.
    """
    import sentencepiece as spm

    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
    paths = _expand_inputs(files)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [line for line in _iter_training_lines(paths, max_bytes, progress) if line]
    if not lines:
        raise ValueError(f"no text to train on in {[str(p) for p in paths]}")
    user_defined = [s for name, s in SPECIAL_TOKENS.items() if name != "unk"]
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_prefix=str(out_dir / "tokenizer"),
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            num_threads=num_threads,
            # exact round trip (stack-notes R8) and composable pieces: see the module docstring
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            byte_fallback=True,
            # specials: unk at 1; the others user-defined so that, written in text, they are one id;
            # sentencepiece places them in the free ids 0, 2, 3, ... in this order
            unk_id=1,
            unk_piece=SPECIAL_TOKENS["unk"],
            unk_surface=SPECIAL_TOKENS["unk"],
            bos_id=-1,
            eos_id=-1,
            pad_id=-1,
            user_defined_symbols=user_defined,
            max_sentence_length=1 << 16,  # long paragraphs are kept, not dropped
            minloglevel=2 if quiet else 0,
        )
    except RuntimeError as err:
        raise ValueError(
            f"sentencepiece training failed (vocab_size={vocab_size}, model_type={model_type}, "
            f"{len(lines)} lines from {len(paths)} file(s)): {err}"
        ) from err
    (out_dir / "tokenizer.vocab").unlink(missing_ok=True)  # the model file holds the pieces
    tok = SentencePieceTokenizer(out_dir / SP_MODEL_FILE, num_threads=num_threads)
    meta = tok._meta(model_file=SP_MODEL_FILE)
    meta["trained_with"] = _training_settings(paths, vocab_size, model_type, max_bytes)
    _write_json_atomic(out_dir / META_FILE, meta)  # written last: its presence marks a complete dir
    return tok


def ensure_tokenizer(
    out_dir: str | os.PathLike[str],
    files: Iterable[str | os.PathLike[str]],
    vocab_size: int = 8000,
    model_type: str = "bpe",
    max_bytes: int | None = 200_000_000,
    **train_kwargs: Any,
) -> SentencePieceTokenizer:
    """Load the tokenizer cached in ``out_dir``, training it first if the dir has none.

    Training goes to a temporary sibling dir that is renamed into place, so concurrent callers and
    interrupted runs never leave a half-written tokenizer; if another process wins the race, its
    result is used. A cached tokenizer trained with other settings (vocab size, model type, byte
    cap, input names and sizes) is an error rather than silently reused.
    """
    out_dir = Path(out_dir)
    paths = _expand_inputs(files)
    wanted = _training_settings(paths, vocab_size, model_type, max_bytes)
    if not (out_dir / META_FILE).is_file():
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
        try:
            _train_into(paths, tmp, vocab_size, model_type, max_bytes, **train_kwargs)
            try:
                os.rename(tmp, out_dir)  # atomic; works when out_dir is absent or an empty dir
            except OSError:
                if not (out_dir / META_FILE).is_file():  # out_dir holds other files: move ours in
                    os.replace(tmp / SP_MODEL_FILE, out_dir / SP_MODEL_FILE)
                    os.replace(tmp / META_FILE, out_dir / META_FILE)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    tok = load_tokenizer(out_dir)
    cached = _read_meta(out_dir).get("trained_with")
    if cached != wanted:
        raise ValueError(
            f"{out_dir / META_FILE}: cached tokenizer was trained with {cached}, but {wanted} was asked; "
            "delete the directory to retrain or point to another one"
        )
    assert isinstance(tok, SentencePieceTokenizer)
    return tok


def _train_into(
    paths: Sequence[Path], out_dir: Path, vocab_size: int, model_type: str, max_bytes: int | None, **kw: Any
) -> SentencePieceTokenizer:
    """The training step of :func:`ensure_tokenizer` (a seam for tests that count trainings)."""
    return train_sentencepiece(paths, out_dir, vocab_size, model_type, max_bytes, **kw)


# =================================================================================================
# BERT WordPiece and GPT-2 byte-level BPE (Hugging Face `tokenizers`)
# =================================================================================================
class _HFTokenizer(GLMTokenizer):
    """Common part of the wrappers over a ``tokenizers.Tokenizer`` with GLM specials."""

    def __init__(self, tok: Any, family: str, source: str, task_mask: bool, decoder_mask: bool) -> None:
        from tokenizers import AddedToken

        self._tok = tok
        self.task_mask = task_mask
        self.decoder_mask = decoder_mask
        fam = _FAMILIES[family]
        ids: dict[str, int | None] = dict.fromkeys(SPECIAL_NAMES)
        for name, entry in fam.in_vocab.items():
            i = tok.token_to_id(entry)
            if i is None:
                raise ValueError(f"{source}: vocabulary has no {entry!r} entry (needed as the {name} token)")
            ids[name] = i
        appended = [
            n
            for n in fam.appended
            if (task_mask or n not in TASK_MASK_NAMES) and (decoder_mask or n != "dblock")
        ]
        base = tok.get_vocab_size(with_added_tokens=False)
        for k, name in enumerate(appended):
            if tok.token_to_id(SPECIAL_TOKENS[name]) is not None:
                raise ValueError(f"{source}: {SPECIAL_TOKENS[name]!r} is already in the vocabulary")
            ids[name] = base + k
        # Register every special (existing entries keep their ids) so each is one token in text.
        names = list(fam.in_vocab) + appended
        strings = [fam.in_vocab.get(n, SPECIAL_TOKENS[n]) for n in names]
        tok.add_special_tokens(
            [
                AddedToken(s, special=True, normalized=False, lstrip=n in fam.lstrip)
                for n, s in zip(names, strings)
            ]
        )
        for name, s in zip(names, strings):
            if tok.token_to_id(s) != ids[name]:  # guards against a library change in id assignment
                raise RuntimeError(f"{source}: {s!r} got id {tok.token_to_id(s)}, expected {ids[name]}")
        self.special_ids = ids
        self.num_text_tokens = base + len(appended)

    def encode(self, text: str) -> list[int]:
        if not text.strip():  # original GLM: empty or whitespace-only text has no tokens (spec §4.2)
            return []
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        texts = list(texts)
        encs = self._tok.encode_batch(texts, add_special_tokens=False)
        return [e.ids if t.strip() else [] for t, e in zip(texts, encs)]

    def _decode_real(self, ids: list[int], skip_special_tokens: bool) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def _piece(self, i: int) -> str:
        return self._tok.id_to_token(i)


class WordPieceTokenizer(_HFTokenizer):
    """BERT WordPiece (``bert-base-uncased`` vocab.txt) with GLM specials (spec §4.1)."""

    kind = "bert"

    def __init__(
        self,
        vocab_file: str | os.PathLike[str],
        task_mask: bool = True,
        decoder_mask: bool = True,
        lowercase: bool = True,
    ) -> None:
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

        self.vocab_file = Path(vocab_file)
        if not self.vocab_file.is_file():
            raise _missing(self.vocab_file, f"BERT vocab file not found: {self.vocab_file}")
        self.lowercase = lowercase
        tok = Tokenizer(
            models.WordPiece.from_file(str(self.vocab_file), unk_token="[UNK]", max_input_chars_per_word=100)
        )
        # Same pipeline as the BERT basic tokenizer the original used: clean text, split CJK chars,
        # lowercase + strip accents (uncased), split on whitespace and punctuation.
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        super().__init__(tok, "bert", str(self.vocab_file), task_mask, decoder_mask)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _copy_into(self.vocab_file, directory, "vocab.txt")
        meta = self._meta(
            vocab_file="vocab.txt",
            task_mask=self.task_mask,
            decoder_mask=self.decoder_mask,
            lowercase=self.lowercase,
        )
        _write_json_atomic(directory / META_FILE, meta)
        return directory


class GPT2Tokenizer(_HFTokenizer):
    """GPT-2 byte-level BPE (vocab.json + merges.txt) with GLM specials (spec §4.1, GLM-2B/10B)."""

    kind = "gpt2"

    def __init__(
        self,
        vocab_json: str | os.PathLike[str],
        merges_txt: str | os.PathLike[str],
        task_mask: bool = True,
        decoder_mask: bool = True,
    ) -> None:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        self.vocab_json, self.merges_txt = Path(vocab_json), Path(merges_txt)
        for f in (self.vocab_json, self.merges_txt):
            if not f.is_file():
                raise _missing(f, f"GPT-2 tokenizer file not found: {f}")
        tok = Tokenizer(models.BPE.from_file(str(self.vocab_json), str(self.merges_txt)))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        super().__init__(tok, "gpt2", str(self.vocab_json), task_mask, decoder_mask)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _copy_into(self.vocab_json, directory, "vocab.json")
        _copy_into(self.merges_txt, directory, "merges.txt")
        meta = self._meta(
            vocab_file="vocab.json",
            merges_file="merges.txt",
            task_mask=self.task_mask,
            decoder_mask=self.decoder_mask,
        )
        _write_json_atomic(directory / META_FILE, meta)
        return directory


# =================================================================================================
# Loading
# =================================================================================================
def _read_meta(directory: Path) -> dict[str, Any]:
    path = directory / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise ValueError(f"{path}: not a glm-lightning tokenizer file (field 'format' != {META_FORMAT!r})")
    if meta.get("version") != META_VERSION:
        raise ValueError(
            f"{path}: field 'version' is {meta.get('version')!r}; this code reads {META_VERSION}"
        )
    return meta


def _build(kind: str, path: Path, options: dict[str, Any], where: str) -> GLMTokenizer:
    """A tokenizer of ``kind`` from ``path`` (a dir or the main file); ``where`` names the source."""
    flags = {k: options[k] for k in ("task_mask", "decoder_mask", "lowercase") if k in options}
    if kind == "sentencepiece":
        model = path / options.get("model_file", SP_MODEL_FILE) if path.is_dir() else path
        return SentencePieceTokenizer(model)
    if kind == "bert":
        vocab = path / options.get("vocab_file", "vocab.txt") if path.is_dir() else path
        return WordPieceTokenizer(vocab, **flags)
    if kind == "gpt2":
        if not path.is_dir():
            raise ValueError(
                f"{where}: 'path' of a gpt2 tokenizer must be the dir with vocab.json and merges.txt"
            )
        flags.pop("lowercase", None)
        return GPT2Tokenizer(
            path / options.get("vocab_file", "vocab.json"),
            path / options.get("merges_file", "merges.txt"),
            **flags,
        )
    raise ValueError(f"{where}: field 'kind' is {kind!r}; expected sentencepiece, bert or gpt2")


def _missing(path: str | os.PathLike[str], problem: str) -> FileNotFoundError:
    """A missing tokenizer file: the data layer's error (one line from run.py, with how to get it)."""
    from glm.data.paths import missing_data  # lazily: glm.data imports this module

    return missing_data(path, problem)


def load_tokenizer(spec: str | os.PathLike[str] | dict[str, Any] | GLMTokenizer) -> GLMTokenizer:
    """A tokenizer from a saved dir (its ``tokenizer.json``), a ``.model`` file, or a dict.

    The dict form is ``{"kind": "sentencepiece" | "bert" | "gpt2", "path": ..., **options}`` with
    options ``task_mask``/``decoder_mask`` (BERT, GPT-2) and ``lowercase`` (BERT). A dir's recorded
    ids and sizes are checked against the rebuilt tokenizer, so a changed file is caught on load.
    """
    if isinstance(spec, GLMTokenizer):
        return spec
    if isinstance(spec, dict) or (hasattr(spec, "keys") and hasattr(spec, "get")):  # dict / DictConfig
        spec = dict(spec)
        for field in ("kind", "path"):
            if field not in spec:
                raise ValueError(f"tokenizer spec {spec}: missing field {field!r}")
        path = Path(spec["path"]).expanduser()
        if not path.exists():
            raise _missing(path, f"tokenizer spec {spec}: path {path} does not exist")
        return _build(str(spec["kind"]), path, spec, f"tokenizer spec {spec}")
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / META_FILE).is_file():
            raise FileNotFoundError(
                f"{path}: no {META_FILE}; save a tokenizer there with tok.save(dir), or pass "
                "{'kind': ..., 'path': ...}"
            )
        meta = _read_meta(path)
        tok = _build(str(meta.get("kind")), path, meta, str(path / META_FILE))
        for field, actual in (
            ("special_ids", dict(tok.special_ids)),
            ("vocab_size", tok.vocab_size),
            ("num_text_tokens", tok.num_text_tokens),
        ):
            if field in meta and meta[field] != actual:
                raise ValueError(
                    f"{path / META_FILE}: field {field!r} is {meta[field]}, but the files give {actual}"
                )
        return tok
    if path.suffix == ".model" and path.is_file():
        return SentencePieceTokenizer(path)
    if not path.exists():
        raise _missing(path, f"tokenizer not found: {path}")
    raise ValueError(f"{path}: expected a tokenizer dir (with {META_FILE}) or a sentencepiece .model file")


# =================================================================================================
# CLI: python -m glm.tokenizer train|encode
# =================================================================================================
def main(argv: list[str] | None = None) -> int:
    """``train`` a SentencePiece tokenizer, or ``encode`` text with any tokenizer (for inspection)."""
    parser = argparse.ArgumentParser(prog="python -m glm.tokenizer", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train a GLM sentencepiece tokenizer on text files")
    p_train.add_argument(
        "--input", nargs="+", required=True, metavar="GLOB", help="text files or glob patterns"
    )
    p_train.add_argument("--out", required=True, help="output dir (tokenizer.model + tokenizer.json)")
    p_train.add_argument("--vocab-size", type=int, default=8000)
    p_train.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe")
    p_train.add_argument("--max-bytes", type=int, default=200_000_000, help="cap on text read (0: no cap)")
    p_train.add_argument("--threads", type=int, default=2)
    p_enc = sub.add_parser("encode", help="print ids and pieces of TEXT")
    p_enc.add_argument("--tokenizer", required=True, help="tokenizer dir or .model file")
    p_enc.add_argument("text")
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            tok = train_sentencepiece(
                args.input,
                args.out,
                args.vocab_size,
                args.model_type,
                args.max_bytes or None,
                num_threads=args.threads,
            )
            print(
                f"wrote {Path(args.out) / SP_MODEL_FILE} ({tok.num_text_tokens} pieces, V={tok.vocab_size})"
            )
        else:
            tok = load_tokenizer(args.tokenizer)
            ids = tok.encode(args.text)
            print(ids)
            print([tok.id_to_piece(i) for i in ids])
        return 0
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
