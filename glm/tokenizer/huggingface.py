"""The released GLMs' Hugging Face vocabularies: BERT WordPiece, GPT-2 and RoBERTa byte-level BPE.

The ``tokenizers`` library does the splitting; the vocabulary files are read and checked here, and the
GLM specials are placed per family (:data:`FAMILIES`, docs/tokenizers.md).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glm.errors import DataFormatError
from glm.tokenizer.base import (
    LSTRIP_NAMES,
    META_FILE,
    SPECIAL_NAMES,
    SPECIAL_TOKENS,
    TASK_MASK_NAMES,
    GLMTokenizer,
    copy_into,
    write_json,
)
from glm.utils.inputs import check_file, load_json, read_lines


@dataclass(frozen=True)
class Family:
    """Where a vocabulary family keeps its specials (docs/original-glm.md §4.1).

    ``in_vocab``: name -> entry already in the vocabulary file; ``appended``: names added after the
    vocabulary, in the original order (task masks and dBLOCK are dropped when disabled).
    """

    in_vocab: dict[str, str]
    appended: tuple[str, ...]
    lstrip: frozenset[str]
    # Command strings whose vocabulary entry is spelled differently (RoBERTa: "[MASK]" is "<mask>"):
    # text is respelled before encoding, because an added token cannot share an existing id.
    aliases: dict[str, str] = field(default_factory=dict)


FAMILIES: dict[str, Family] = {
    "bert": Family(
        in_vocab={"eos": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
        appended=("sop", "eop", "gmask", "smask", "dblock"),
        lstrip=frozenset(),  # BERT's pre-tokenizer drops whitespace anyway
    ),
    "gpt2": Family(
        in_vocab={"eos": "<|endoftext|>"},
        appended=("sop", "eop", "cls", "mask", "sep", "unk", "gmask", "smask", "dblock"),
        lstrip=LSTRIP_NAMES,
    ),
    # GPT-2 byte-level BPE with RoBERTa's (fairseq) ids: the specials are its own <s>/</s>/<unk>/<mask>.
    "roberta": Family(
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


class _HFTokenizer(GLMTokenizer):
    """Common part of the wrappers over a ``tokenizers.Tokenizer`` with GLM specials."""

    def __init__(self, tok: Any, family: str, source: str, task_mask: bool, decoder_mask: bool) -> None:
        from tokenizers import AddedToken

        self._tok = tok
        self.task_mask = task_mask
        self.decoder_mask = decoder_mask
        fam = FAMILIES[family]
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
                for n, s in zip(names, strings, strict=True)
            ]
        )
        for name, s in zip(names, strings, strict=True):
            if tok.token_to_id(s) != ids[name]:  # guards against a library change in id assignment
                raise RuntimeError(f"{source}: {s!r} got id {tok.token_to_id(s)}, expected {ids[name]}")
        self.special_ids = ids
        self.num_text_tokens = base + len(appended)

    def encode(self, text: str) -> list[int]:
        if (
            not text.strip()
        ):  # original GLM: empty or whitespace-only text has no tokens (docs/original-glm.md §4.2)
            return []
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        texts = list(texts)
        encs = self._tok.encode_batch(texts, add_special_tokens=False)
        return [e.ids if t.strip() else [] for t, e in zip(texts, encs, strict=True)]

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
    """BERT WordPiece (``bert-base-uncased`` vocab.txt) with GLM specials (docs/original-glm.md §4.1)."""

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
        copy_into(self.vocab_file, directory, "vocab.txt")
        meta = self._meta(
            vocab_file="vocab.txt",
            task_mask=self.task_mask,
            decoder_mask=self.decoder_mask,
            lowercase=self.lowercase,
        )
        write_json(directory / META_FILE, meta)
        return directory


class GPT2Tokenizer(_HFTokenizer):
    """GPT-2 byte-level BPE (vocab.json + merges.txt) with GLM specials (docs/original-glm.md §4.1, GLM-2B/10B)."""

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
        copy_into(self.vocab_json, directory, "vocab.json")
        copy_into(self.merges_txt, directory, "merges.txt")
        meta = self._meta(
            vocab_file="vocab.json",
            merges_file="merges.txt",
            task_mask=self.task_mask,
            decoder_mask=self.decoder_mask,
        )
        write_json(directory / META_FILE, meta)
        return directory


class RobertaTokenizer(GPT2Tokenizer):
    """RoBERTa byte-level BPE (vocab.json with 50265 entries + merges.txt) with GLM specials (docs/original-glm.md §4.1).

    The vocabulary's own ``<s>``/``</s>``/``<unk>``/``<mask>`` are ENC/eos=pad=sep/unk/MASK; sop, eop,
    then the task masks and dBLOCK are appended after the last entry. The GLM command strings
    (``[CLS]``, ``<|endoftext|>``, ``[SEP]``, ``[UNK]``, ``[MASK]``) written in text encode to those
    ids, as do the entries themselves (``<mask>`` ...), like the Hugging Face port's tokenizer.
    """

    kind = "roberta"
    _aliases = FAMILIES["roberta"].aliases
    _alias_re = re.compile("|".join(re.escape(a) for a in sorted(_aliases, key=len, reverse=True)))

    def _respell(self, text: str) -> str:
        return self._alias_re.sub(lambda m: self._aliases[m.group()], text)

    def encode(self, text: str) -> list[int]:
        return super().encode(self._respell(text))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return super().encode_batch([self._respell(t) for t in texts])
