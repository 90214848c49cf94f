"""Our SentencePiece models: fixed special ids 0..9, exact round trips (docs/tokenizers.md)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from glm.errors import DataFormatError
from glm.tokenizer.base import (
    META_FILE,
    SP_MODEL_FILE,
    SPECIAL_NAMES,
    SPECIAL_TOKENS,
    GLMTokenizer,
    copy_into,
    read_meta,
    write_json,
)
from glm.utils.inputs import check_file


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
            for k, ids in zip(plain, encoded, strict=True):
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
        copy_into(self.model_file, directory, SP_MODEL_FILE)
        meta = self._meta(model_file=SP_MODEL_FILE)
        old = read_meta(directory) if (directory / META_FILE).is_file() else {}
        if "trained_with" in old:  # keep the cache key of ensure_tokenizer when saving in place
            meta["trained_with"] = old["trained_with"]
        write_json(directory / META_FILE, meta)
        return directory
