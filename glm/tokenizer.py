"""GLM tokenizers: our SentencePiece models and the released GLMs' BERT/GPT-2/RoBERTa/Chinese vocabularies.

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

RoBERTa BPE (kind ``roberta``, glm-roberta-large) and GLM's Chinese SentencePiece (kind ``glm_chinese``,
``cog-pretrain.model``) put their specials as follows, with V the vocabulary entries / N the pieces (the
numbers are the released files': V = 50265, N = 50000):

=========  =====================================  =========================================================
name       roberta (entry in vocab.json)          glm_chinese: ``fix_command_token`` True / False
=========  =====================================  =========================================================
eos = pad  ``</s>`` 2 (also sep)                  N (50000)
unk        ``<unk>`` 3                            N+4 (50004)
cls        ``<s>`` 0                              N+2 (50002)
sep        ``</s>`` 2                             N+1 (50001)
mask       ``<mask>`` V-1 (50264)                 N+3 (50003)
sop / eop  V, V+1 (50265, 50266)                  N+6, N+7 (50006, 50007); N+5 is unused
gmask      V+2 (50267, task mask)                 N+9 (50009) / **N+7 (50007, = eop)**
smask      V+3 (50268, task mask)                 N+8 (50008) / N+8 (50008)
dblock     V+4 (50269; V+2 without task mask)     N+10 (50010) / N+9 (50009)
padded V   50304                                  50048 / 50048
=========  =====================================  =========================================================

- RoBERTa: ``[CLS]``, ``<|endoftext|>``, ``[SEP]``, ``[UNK]``, ``[MASK]`` in text encode to the entries
  above (text is respelled to ``<s>``, ``</s>``, ... first), so the entries written literally are
  specials too, as in the Hugging Face port; decoding writes the entries (``<mask>``), not the labels.
- glm_chinese: the model is used as released (its normaliser and dummy-prefix space); text is split at
  command strings and each part encoded separately, as the original did, so round trips are not exact;
  decoding with specials joins parts with single spaces as the original. The layout must be named
  (``fix_command_token``): GLM-Large-Chinese True, the original GLM-10B-Chinese False, where
  ``[gMASK]`` and ``<|endofpiece|>`` both encode to N+7 and N+7 decodes as ``[gMASK]`` (see
  :class:`GLMChineseTokenizer`); the Hugging Face GLM-10B-Chinese weights take True.
"""

from __future__ import annotations

import argparse
import glob as globlib
import json
import os
import re
import shutil
import sys
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glm.utils.fs import atomic_write
from glm.utils.inputs import check_file, load_json, missing_file_error, read_lines
from glm.errors import DataFormatError

META_FILE = "tokenizer.json"
SP_MODEL_FILE = "tokenizer.model"
META_FORMAT = "glm-lightning-tokenizer"
META_VERSION = 1
CHINESE_MODEL_FILE = "cog-pretrain.model"  # the released name (chinese_sentencepiece/)
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
    # Command strings whose vocabulary entry is spelled differently (RoBERTa: "[MASK]" is "<mask>"):
    # text is respelled before encoding, because an added token cannot share an existing id.
    aliases: dict[str, str] = field(default_factory=dict)


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
    # GPT-2 byte-level BPE with RoBERTa's (fairseq) ids: the specials are its own <s>/</s>/<unk>/<mask>.
    "roberta": _Family(
        in_vocab={"cls": "<s>", "eos": "</s>", "sep": "</s>", "unk": "<unk>", "mask": "<mask>"},
        appended=("sop", "eop", "gmask", "smask", "dblock"),
        lstrip=LSTRIP_NAMES,
        aliases={
            "[CLS]": "<s>",
            "<|endoftext|>": "</s>",
            "[SEP]": "</s>",
            "[UNK]": "<unk>",
            "[MASK]": "<mask>",
        },
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
    atomic_write(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def _copy_into(src: Path, directory: Path, name: str) -> None:
    dest = directory / name
    if dest.exists() and dest.resolve() == src.resolve():
        return
    with open(src, "rb") as source:
        atomic_write(dest, lambda f: shutil.copyfileobj(source, f))


# =================================================================================================
# SentencePiece (our own models)
# =================================================================================================
class SentencePieceTokenizer(GLMTokenizer):
    """A SentencePiece model trained by :func:`train_sentencepiece` (fixed special ids 0..9)."""

    kind = "sentencepiece"

    def __init__(self, model_file: str | os.PathLike[str], num_threads: int = 2) -> None:
        import sentencepiece as spm

        self.model_file = check_file(model_file, "sentencepiece model")
        if self.model_file.stat().st_size == 0:
            raise DataFormatError(f"{self.model_file}: empty file, not a sentencepiece model")
        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(self.model_file))
        except (RuntimeError, OSError) as err:  # sentencepiece's own parse errors name no file
            raise DataFormatError(f"{self.model_file}: not a sentencepiece model ({err})") from None
        self._num_threads = num_threads
        self._init_ids()

    def _init_ids(self) -> None:
        sp = self._sp
        self.num_text_tokens = sp.get_piece_size()
        self.special_ids = {name: i for i, name in enumerate(SPECIAL_NAMES)}
        for name, i in self.special_ids.items():
            piece = sp.id_to_piece(i) if i < self.num_text_tokens else None
            if piece != SPECIAL_TOKENS[name]:
                raise DataFormatError(
                    f"{self.model_file}: id {i} is {piece!r}, expected {SPECIAL_TOKENS[name]!r}; this model "
                    "was not trained with glm.tokenizer.train_sentencepiece (fixed GLM special ids); GLM's "
                    "Chinese cog-pretrain.model loads as {'kind': 'glm_chinese', 'path': ..., "
                    "'fix_command_token': ...}"
                )
        if not sp.is_unknown(self.unk_id):
            raise DataFormatError(f"{self.model_file}: id {self.unk_id} is not the unknown piece")

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
                raise DataFormatError(f"{source}: vocabulary has no {entry!r} entry (the {name} token)")
            ids[name] = i
        appended = [
            n
            for n in fam.appended
            if (task_mask or n not in TASK_MASK_NAMES) and (decoder_mask or n != "dblock")
        ]
        base = tok.get_vocab_size(with_added_tokens=False)
        for k, name in enumerate(appended):
            if tok.token_to_id(SPECIAL_TOKENS[name]) is not None:
                raise DataFormatError(f"{source}: {SPECIAL_TOKENS[name]!r} is already in the vocabulary")
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


# The vocabulary files are read here rather than by `tokenizers`' own `from_file`, whose errors name
# neither the file nor the line (and which would read a BOM into the first token).
def read_wordpiece_vocab(path: Path) -> dict[str, int]:
    """BERT ``vocab.txt``: token -> id, the id being the 0-based line. A blank line or a repeated token
    inside the file would shift or lose ids, so both are errors naming the line; trailing blank lines go."""
    lines = read_lines(path, "BERT vocab file")
    while lines and not lines[-1].strip():
        lines.pop()
    vocab: dict[str, int] = {}
    for i, line in enumerate(lines):
        token = line.rstrip()
        if not token:
            raise DataFormatError(f"{path}:{i + 1}: empty token (token ids are line numbers)")
        if token in vocab:
            raise DataFormatError(f"{path}:{i + 1}: token {token!r} repeats line {vocab[token] + 1}")
        vocab[token] = i
    if not vocab:
        raise DataFormatError(f"{path}: empty vocabulary")
    return vocab


def read_bpe_vocab(path: Path) -> dict[str, int]:
    """GPT-2 ``vocab.json``: a JSON object token -> id whose ids are exactly 0..n-1."""
    vocab = load_json(path, "GPT-2 vocab.json")
    if not isinstance(vocab, dict) or not vocab:
        got = type(vocab).__name__
        raise DataFormatError(f"{path}: expected a non-empty JSON object token -> id, got {got}")
    bad = next(((k, v) for k, v in vocab.items() if type(v) is not int), None)
    if bad is not None:
        raise DataFormatError(f"{path}: field {bad[0]!r} must be an integer id, got {bad[1]!r:.40}")
    ids = sorted(vocab.values())
    if ids != list(range(len(ids))):
        gap = next((i for i, v in enumerate(ids) if v != i), len(ids))
        raise DataFormatError(
            f"{path}: ids must be 0..{len(ids) - 1} once each; id {gap} is missing or repeated"
        )
    return vocab


def read_bpe_merges(path: Path, vocab: dict[str, int]) -> list[tuple[str, str]]:
    """GPT-2 ``merges.txt``: one ``left right`` pair per line (a ``#version`` header and blank lines
    skipped); both parts and their concatenation must be vocabulary tokens."""
    merges: list[tuple[str, str]] = []
    for n, line in enumerate(read_lines(path, "GPT-2 merges.txt"), start=1):
        if (n == 1 and line.startswith("#version")) or not line.strip():
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise DataFormatError(f"{path}:{n}: expected two tokens separated by a space, got {line!r:.80}")
        for token in (*parts, parts[0] + parts[1]):
            if token not in vocab:
                raise DataFormatError(f"{path}:{n}: token {token!r} of merge {line!r} is not in vocab.json")
        merges.append((parts[0], parts[1]))
    if not merges:
        raise DataFormatError(f"{path}: no merge rules")
    return merges


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

        self.vocab_file = check_file(vocab_file, "BERT vocab file")
        self.lowercase = lowercase
        vocab = read_wordpiece_vocab(self.vocab_file)
        tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
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

        self.vocab_json = check_file(vocab_json, "GPT-2 tokenizer file")
        self.merges_txt = check_file(merges_txt, "GPT-2 tokenizer file")
        vocab = read_bpe_vocab(self.vocab_json)
        tok = Tokenizer(models.BPE(vocab, read_bpe_merges(self.merges_txt, vocab)))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        super().__init__(tok, self.kind, str(self.vocab_json), task_mask, decoder_mask)

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


class RobertaTokenizer(GPT2Tokenizer):
    """RoBERTa byte-level BPE (vocab.json with 50265 entries + merges.txt) with GLM specials (spec §4.1).

    The vocabulary's own ``<s>``/``</s>``/``<unk>``/``<mask>`` are ENC/eos=pad=sep/unk/MASK; sop, eop,
    then the task masks and dBLOCK are appended after the last entry. The GLM command strings
    (``[CLS]``, ``<|endoftext|>``, ``[SEP]``, ``[UNK]``, ``[MASK]``) written in text encode to those
    ids, as do the entries themselves (``<mask>`` ...), like the Hugging Face port's tokenizer.
    """

    kind = "roberta"
    _aliases = _FAMILIES["roberta"].aliases
    _alias_re = re.compile("|".join(re.escape(a) for a in sorted(_aliases, key=len, reverse=True)))

    def _respell(self, text: str) -> str:
        return self._alias_re.sub(lambda m: self._aliases[m.group()], text)

    def encode(self, text: str) -> list[int]:
        return super().encode(self._respell(text))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return super().encode_batch([self._respell(t) for t in texts])


# =================================================================================================
# GLM Chinese SentencePiece (cog-pretrain.model: glm-large-chinese, glm-10b-chinese)
# =================================================================================================
def chinese_special_ids(
    num_pieces: int, fix_command_token: bool, task_mask: bool = True, decoder_mask: bool = True
) -> dict[str, int | None]:
    """Special ids of the GLM Chinese tokenizer for a model of ``num_pieces`` pieces (spec §4.1).

    All specials come after the pieces: eos=pad N, sep N+1, ENC N+2, MASK N+3, unk N+4, (N+5 unused),
    sop N+6, eop N+7. Then ``fix_command_token=True`` (GLM-Large-Chinese) continues after eop: sMASK
    N+8, gMASK N+9, dBLOCK N+10; ``False`` (GLM-10B-Chinese) continues *at* eop's id, the original's
    counter being one short: gMASK N+7 (= eop), sMASK N+8, dBLOCK N+9, kept because its weights use it.
    Without task masks dBLOCK takes the next slot (N+8 fixed; N+7 = eop unfixed, refused).
    """
    n = num_pieces
    ids: dict[str, int | None] = dict.fromkeys(SPECIAL_NAMES)
    ids.update(eos=n, sep=n + 1, cls=n + 2, mask=n + 3, unk=n + 4, sop=n + 6, eop=n + 7)
    # The original's next-free counter is N+5 after the first five, +3 (fixed) or +2 after sop/eop.
    nxt = n + 5 + (3 if fix_command_token else 2)
    if task_mask:
        first, second = ("smask", "gmask") if fix_command_token else ("gmask", "smask")
        ids[first], ids[second] = nxt, nxt + 1
        nxt += 2
    if decoder_mask:
        if nxt == ids["eop"]:  # only unfixed without task masks: dBLOCK would replace blocks by eop
            raise ValueError(
                "glm_chinese tokenizer: with fix_command_token=False and task_mask=False, [dBLOCK] would get "
                f"eop's id {nxt}; set decoder_mask=False or fix_command_token=True"
            )
        ids["dblock"] = nxt
    return ids


class GLMChineseTokenizer(SentencePieceTokenizer):
    """GLM's Chinese SentencePiece model (``cog-pretrain.model``) with the specials appended after its pieces.

    The model is used as is (its own normaliser and dummy-prefix space), like the original: text is
    split at command strings, each part encoded separately and the command ids put between; ``[MASK]``,
    ``[sMASK]`` and ``[gMASK]`` absorb the whitespace on their left, whitespace-only text gives ``[]``
    (spec §4.2). Characters the model lacks become the model's own unknown piece, as in the original;
    ``unk_id`` (N+4) is what ``[UNK]`` written in text gives.

    ``fix_command_token`` picks the layout (:func:`chinese_special_ids`): True for GLM-Large-Chinese,
    False for the original GLM-10B-Chinese checkpoint, where gMASK and eop share id N+7: both strings
    encode to it, and decoding it with ``skip_special_tokens=False`` writes ``[gMASK]`` (the original's
    id -> command map keeps the later-registered gMASK), so a decoded eop reads as ``[gMASK]``. The Hugging
    Face conversion of GLM-10B-Chinese copied row N+7 into N+9 (spec §4.1): its weights take the fixed
    layout's gMASK/sMASK, i.e. ``fix_command_token=True``.
    """

    kind = "glm_chinese"

    def __init__(
        self,
        model_file: str | os.PathLike[str],
        *,
        fix_command_token: bool,
        task_mask: bool = True,
        decoder_mask: bool = True,
        num_threads: int = 2,
    ) -> None:
        self.fix_command_token = bool(fix_command_token)
        self.task_mask = bool(task_mask)
        self.decoder_mask = bool(decoder_mask)
        super().__init__(model_file, num_threads=num_threads)  # loads the model, then calls _init_ids

    def _init_ids(self) -> None:
        n = self._sp.get_piece_size()
        self.special_ids = chinese_special_ids(n, self.fix_command_token, self.task_mask, self.decoder_mask)
        present = {k: v for k, v in self.special_ids.items() if v is not None}
        self.num_text_tokens = max(present.values()) + 1  # the unused N+5 stays a real, empty id
        # id -> command string; gmask comes after eop so the 10B layout's N+7 reads "[gMASK]" (class doc)
        order = ("eos", "sep", "cls", "mask", "unk", "sop", "eop", "gmask", "smask", "dblock")
        self._id_to_string = {present[k]: SPECIAL_TOKENS[k] for k in order if k in present}
        self._string_to_id = {SPECIAL_TOKENS[k]: i for k, i in present.items()}
        # by string, not id: the 10B layout's "<|endofpiece|>" shares gMASK's id but keeps its whitespace
        self._lstrip_strings = frozenset(SPECIAL_TOKENS[k] for k in LSTRIP_NAMES if k in present)
        strings = sorted(self._string_to_id, key=len, reverse=True)
        self._command_re = re.compile("|".join(re.escape(s) for s in strings))

    def encode(self, text: str) -> list[int]:
        if not text.strip():  # original GLM: empty or whitespace-only text has no tokens (spec §4.2)
            return []
        out: list[int] = []
        start = 0
        for m in self._command_re.finditer(text):
            part = text[start : m.start()]
            if m.group() in self._lstrip_strings:
                part = part.rstrip()
            if part:
                out.extend(self._sp.encode(part))
            out.append(self._string_to_id[m.group()])
            start = m.end()
        if text[start:]:
            out.extend(self._sp.encode(text[start:]))
        return out

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        texts = list(texts)
        out: list[list[int]] = [[] for _ in texts]
        plain = [k for k, t in enumerate(texts) if t.strip() and not self._command_re.search(t)]
        if plain:  # the common case in one multi-threaded call
            for k, ids in zip(
                plain, self._sp.encode([texts[k] for k in plain], num_threads=self._num_threads)
            ):
                out[k] = ids
        done = set(plain)
        for k, t in enumerate(texts):
            if k not in done:
                out[k] = self.encode(t)
        return out

    def _decode_real(self, ids: list[int], skip_special_tokens: bool) -> str:
        # Runs of pieces are decoded by the model; command ids are written as their strings, joined
        # by spaces as the original did (the model drops each run's leading dummy-prefix space).
        n = self._sp.get_piece_size()
        parts: list[str] = []
        run: list[int] = []
        for i in ids:
            if i < n:
                run.append(i)
                continue
            if run:
                parts.append(self._sp.decode(run))
                run = []
            if i in self._id_to_string and not skip_special_tokens:
                parts.append(self._id_to_string[i])
        if run:
            parts.append(self._sp.decode(run))
        return " ".join(p for p in parts if p)

    def _piece(self, i: int) -> str:
        if i < self._sp.get_piece_size():
            return self._sp.id_to_piece(i)
        return self._id_to_string.get(i, "")  # the unused N+5 has no entry

    def save(self, directory: str | os.PathLike[str]) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _copy_into(self.model_file, directory, SP_MODEL_FILE)
        meta = self._meta(
            model_file=SP_MODEL_FILE,
            fix_command_token=self.fix_command_token,
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
    meta = load_json(path, "tokenizer metadata")
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        what = f"field 'format' != {META_FORMAT!r}"
        raise DataFormatError(f"{path}: not a glm-lightning tokenizer file ({what})")
    if meta.get("version") != META_VERSION:
        raise DataFormatError(
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
    if kind in ("gpt2", "roberta"):
        if not path.is_dir():
            raise ValueError(
                f"{where}: 'path' of a {kind} tokenizer must be the dir with vocab.json and merges.txt"
            )
        flags.pop("lowercase", None)
        return (GPT2Tokenizer if kind == "gpt2" else RobertaTokenizer)(
            path / options.get("vocab_file", "vocab.json"),
            path / options.get("merges_file", "merges.txt"),
            **flags,
        )
    if kind == "glm_chinese":
        return _build_chinese(path, options, where)
    raise ValueError(
        f"{where}: field 'kind' is {kind!r}; expected sentencepiece, bert, gpt2, roberta or glm_chinese"
    )


def _build_chinese(path: Path, options: dict[str, Any], where: str) -> GLMChineseTokenizer:
    # The layout cannot be guessed from the model file, and a wrong guess shifts gMASK silently.
    fix = options.get("fix_command_token")
    if fix is not True and fix is not False:
        raise ValueError(
            f"{where}: a glm_chinese tokenizer needs 'fix_command_token' true or false (got {fix!r}): "
            "true for glm-large-chinese and the Hugging Face glm-10b-chinese, false for the original "
            "glm-10b-chinese checkpoint"
        )
    if path.is_dir():
        names = [options["model_file"]] if "model_file" in options else [SP_MODEL_FILE, CHINESE_MODEL_FILE]
        found = [path / n for n in names if (path / n).is_file()]
        if not found:
            raise FileNotFoundError(f"{where}: {path} has none of {names}")
        path = found[0]
    flags = {k: bool(options[k]) for k in ("task_mask", "decoder_mask") if k in options}
    return GLMChineseTokenizer(path, fix_command_token=fix, **flags)


def load_tokenizer(spec: str | os.PathLike[str] | dict[str, Any] | GLMTokenizer) -> GLMTokenizer:
    """A tokenizer from a saved dir (its ``tokenizer.json``), a ``.model`` file, or a dict.

    The dict form is ``{"kind": "sentencepiece" | "bert" | "gpt2" | "roberta" | "glm_chinese", "path": ...,
    **options}`` with options ``task_mask``/``decoder_mask`` (all but sentencepiece), ``lowercase`` (BERT)
    and ``fix_command_token`` (glm_chinese, required; its path is the ``.model`` file or its dir). A dir's recorded
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
            raise missing_file_error(path, f"tokenizer spec {spec}: path {path} does not exist")
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
                raise DataFormatError(
                    f"{path / META_FILE}: field {field!r} is {meta[field]}, but the files give {actual}"
                )
        return tok
    if path.suffix == ".model" and path.is_file():
        return SentencePieceTokenizer(path)
    if not path.exists():
        raise missing_file_error(path, f"tokenizer not found: {path}")
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
