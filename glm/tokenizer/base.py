"""The tokenizer interface (:class:`GLMTokenizer`), the special-token table and the saved-dir metadata.

Every tokenizer family (sentencepiece, BERT, GPT-2, RoBERTa, Chinese) derives its ids from
:data:`SPECIAL_TOKENS`; docs/tokenizers.md has the id tables and the decisions behind them.
"""

from __future__ import annotations

import json
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from glm.errors import DataFormatError
from glm.utils.fs import atomic_write
from glm.utils.inputs import load_json

META_FILE = "tokenizer.json"
SP_MODEL_FILE = "tokenizer.model"
META_FORMAT = "glm-lightning-tokenizer"
META_VERSION = 1
CHINESE_MODEL_FILE = "cog-pretrain.model"  # the released name (chinese_sentencepiece/)
VOCAB_MULTIPLE = 128  # --make-vocab-size-divisible-by (docs/original-glm.md §4.1)

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
# Masks that swallow the whitespace on their left in the GPT-2/RoBERTa/Chinese tokenizers (docs/original-glm.md §4.2).
LSTRIP_NAMES = frozenset({"mask", "smask", "gmask"})


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


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (the ``tokenizer.json`` of a saved dir)."""
    atomic_write(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def copy_into(src: Path, directory: Path, name: str) -> None:
    """Copy ``src`` to ``directory/name`` atomically; nothing to do when it is that file already."""
    dest = directory / name
    if dest.exists() and dest.resolve() == src.resolve():
        return
    with open(src, "rb") as source:
        atomic_write(dest, lambda f: shutil.copyfileobj(source, f))


def read_meta(directory: Path) -> dict[str, Any]:
    """The checked ``tokenizer.json`` of a saved tokenizer dir."""
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
