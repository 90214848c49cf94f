"""GLM's Chinese SentencePiece model (``cog-pretrain.model``: glm-large-chinese, glm-10b-chinese)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from glm.tokenizer.base import (
    LSTRIP_NAMES,
    META_FILE,
    SP_MODEL_FILE,
    SPECIAL_NAMES,
    SPECIAL_TOKENS,
    copy_into,
    write_json,
)
from glm.tokenizer.sentencepiece import SentencePieceTokenizer


def chinese_special_ids(
    num_pieces: int, fix_command_token: bool, task_mask: bool = True, decoder_mask: bool = True
) -> dict[str, int | None]:
    """Special ids of the GLM Chinese tokenizer for a model of ``num_pieces`` pieces (docs/original-glm.md §4.1).

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
    (docs/original-glm.md §4.2). Characters the model lacks become the model's own unknown piece, as in the original;
    ``unk_id`` (N+4) is what ``[UNK]`` written in text gives.

    ``fix_command_token`` picks the layout (:func:`chinese_special_ids`): True for GLM-Large-Chinese,
    False for the original GLM-10B-Chinese checkpoint, where gMASK and eop share id N+7: both strings
    encode to it, and decoding it with ``skip_special_tokens=False`` writes ``[gMASK]`` (the original's
    id -> command map keeps the later-registered gMASK), so a decoded eop reads as ``[gMASK]``. The Hugging
    Face conversion of GLM-10B-Chinese copied row N+7 into N+9 (docs/original-glm.md §4.1): its weights take the fixed
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
        if (
            not text.strip()
        ):  # original GLM: empty or whitespace-only text has no tokens (docs/original-glm.md §4.2)
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
                plain, self._sp.encode([texts[k] for k in plain], num_threads=self._num_threads), strict=True
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
        copy_into(self.model_file, directory, SP_MODEL_FILE)
        meta = self._meta(
            model_file=SP_MODEL_FILE,
            fix_command_token=self.fix_command_token,
            task_mask=self.task_mask,
            decoder_mask=self.decoder_mask,
        )
        write_json(directory / META_FILE, meta)
        return directory
