"""SuperGLUE examples: the record type, jsonl reading with located errors, text clean-up."""

from __future__ import annotations

import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glm.errors import DataFormatError
from glm.utils.inputs import check_file, iter_jsonl, require

__all__ = [
    "ClozeExample",
    "punctuation_standardization",
    "read_jsonl",
    "require",
    "strip_final_punctuation",
]


@dataclass
class ClozeExample:
    """One cloze example as the patterns see it.

    `fields` holds the task's (already cleaned) text fields. `label` is the gold class index into the
    task's label list (None when unknown: test sets, ReCoRD). `target` is the index the training loss
    aims at: the class (single-token tasks) or the gold candidate (multi-token tasks); None = no loss
    (test, WSC `False` examples, ReCoRD queries whose gold is not among the entities).
    `candidates` are the answer strings of multi-token tasks (before the pattern adds its leading space).
    `submit_idx` is what the SuperGLUE submission file calls the item; `group` joins the examples that
    one question produced (MultiRC answers of one question, ReCoRD gold answers of one query).
    """

    guid: str
    source: str  # "path:line", for error messages
    fields: dict[str, Any]
    label: int | None = None
    target: int | None = None
    candidates: list[str] | None = None
    answers: list[str] | None = None  # ReCoRD gold strings (evaluation takes the max over them)
    submit_idx: Any = None
    group: Any = None
    meta: dict[str, Any] = field(default_factory=dict)


# curly quotes and the en dash (docs/original-glm.md §7.1 `punctuation_standardization`)
_PUNCT_MAP = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'", "\u2013": "-"})


def punctuation_standardization(text: str) -> str:
    """Curly quotes -> straight quotes, en dash -> '-' (applied to every task except COPA)."""
    return text.translate(_PUNCT_MAP)


def strip_final_punctuation(text: str) -> str:
    """Drop trailing punctuation characters (the original's "final punctuation removed")."""
    return text.rstrip(string.punctuation)


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (1-based line number, record); a malformed line or an empty file raises `DataFormatError` naming
    the file and line. Two records with the same top-level `idx` are an error too: the submission file
    and the per-question metric groups are keyed by it."""
    seen: dict[Any, int] = {}
    hint = " (is GLM_DATA_ROOT / paths.data_dir set?)"
    check_file(path, "SuperGLUE file", hint)
    for lineno, record in iter_jsonl(path, "SuperGLUE"):
        if "idx" in record:
            idx = require(record, "idx", f"{path}:{lineno}", int)
            if idx in seen:
                raise DataFormatError(f"{path}:{lineno}: field 'idx' = {idx} repeats line {seen[idx]}")
            seen[idx] = lineno
        yield lineno, record
