"""SuperGLUE examples: the record type, jsonl reading with located errors, text clean-up."""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glm.data.paths import missing_data

__all__ = [
    "ClozeExample",
    "DataError",
    "punctuation_standardization",
    "read_jsonl",
    "require",
    "strip_final_punctuation",
]


class DataError(ValueError):
    """A bad input record; the message names the file, the line and the field."""


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


# curly quotes and the en dash (spec §7.1 `punctuation_standardization`)
_PUNCT_MAP = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'", "\u2013": "-"})


def punctuation_standardization(text: str) -> str:
    """Curly quotes -> straight quotes, en dash -> '-' (applied to every task except COPA)."""
    return text.translate(_PUNCT_MAP)


def strip_final_punctuation(text: str) -> str:
    """Drop trailing punctuation characters (the spec's "final punctuation removed")."""
    return text.rstrip(string.punctuation)


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (1-based line number, record); a malformed line raises `DataError` naming file and line."""
    if not path.is_file():
        raise missing_data(path, f"SuperGLUE file not found: {path}")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record


def require(record: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...] | None = None) -> Any:
    """`record[key]`, or a `DataError` naming `where` (path:line) and the (dotted) field."""
    name = key.rsplit(".", 1)[-1]
    if name not in record:
        raise DataError(f"{where}: missing field {key!r}")
    value = record[name]
    if kind is not None and not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{where}: field {key!r} must be {expected}, got {type(value).__name__} {value!r}")
    return value
