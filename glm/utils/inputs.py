"""Reading input files with located errors: the one place that opens data, tokenizer and config files.

The standard every reader follows: bad input gets a `DataFormatError` whose message names the file, the
1-based line and the field (``path:line: field 'x' ...``), or it is skipped, counted and logged once with
the first offending ``path:line`` (`SkipLog`); never a silent drop, never a bare `UnicodeDecodeError`,
`json.JSONDecodeError`, `KeyError` or `TypeError` from deep inside. A UTF-8 byte-order mark and CRLF line
endings are accepted everywhere; a NUL byte in a text file is refused (it means a binary or UTF-16 file).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from glm.errors import DataFormatError, MissingInputError

__all__ = [
    "SkipLog",
    "as_object",
    "check_file",
    "decode_utf8",
    "iter_jsonl",
    "json_key_line",
    "jsonl_lines",
    "load_json",
    "missing_file_error",
    "parse_json_object",
    "read_lines",
    "read_text",
    "refuse_nul",
    "require",
    "set_missing_file_error",
]


MissingFileError = Callable[[Path, str], MissingInputError]
_missing_file_error: MissingFileError = lambda path, problem: MissingInputError(problem)  # noqa: E731


def set_missing_file_error(factory: MissingFileError) -> None:
    """Install how a missing file is reported: ``glm.data.paths`` adds the download command for files under
    the data root (this module knows nothing of data sets)."""
    global _missing_file_error
    _missing_file_error = factory


def missing_file_error(path: str | os.PathLike[str], problem: str) -> MissingInputError:
    """The error for a missing ``path``: ``problem``, with whatever the installed factory adds."""
    return _missing_file_error(Path(path), problem)


def check_file(path: str | os.PathLike[str], what: str, hint: str = "") -> Path:
    """`path` as a `Path` if it is a readable regular file; else an error naming it and `what` it is."""
    path = Path(path)
    if not path.exists():  # under the data root the message also says how to download it
        raise missing_file_error(path, f"{what}: {path} does not exist{hint}")
    if path.is_dir():
        raise MissingInputError(f"{what}: {path} is a directory, expected a file")
    if not path.is_file():
        raise MissingInputError(f"{what}: {path} is not a regular file")
    if not os.access(path, os.R_OK):
        raise MissingInputError(f"{what}: {path} is not readable (permission denied)")
    return path


def decode_utf8(
    data: bytes, path: str | os.PathLike[str], first_line: int = 1, start_offset: int | None = None
) -> str:
    """`data` as text, a leading byte-order mark dropped; invalid bytes raise naming the line, the column
    and the byte offset in the file.

    `first_line` is the line number of `data`'s first byte (for one line of a streamed file) and
    `start_offset` its offset in the file (default: 0 when `first_line` is 1, else unknown and not shown).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = first_line + data.count(b"\n", 0, err.start)
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        if start_offset is None and first_line == 1:
            start_offset = 0
        offset = "" if start_offset is None else f", file offset {start_offset + err.start}"
        raise DataFormatError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{data[err.start]:02x} at column {column}{offset}: "
            f"{err.reason}); re-encode the file as UTF-8"
        ) from None
    return text.removeprefix("\ufeff")


def _refuse_nul(text: str, path: str | os.PathLike[str], first_line: int = 1) -> None:
    i = text.find("\x00")
    if i >= 0:
        line = first_line + text.count("\n", 0, i)
        raise DataFormatError(f"{path}:{line}: NUL byte in a text file (a binary or UTF-16 file?)")


def refuse_nul(text: str, path: str | os.PathLike[str], first_line: int = 1) -> None:
    """A `DataFormatError` naming the line if decoded `text` (starting at `first_line`) holds a NUL."""
    _refuse_nul(text, path, first_line)


def read_text(path: str | os.PathLike[str], what: str) -> str:
    """The whole UTF-8 text of a file, BOM dropped, CRLF turned into LF; bad bytes raise naming the line."""
    path = check_file(path, what)
    text = decode_utf8(path.read_bytes(), path).replace("\r\n", "\n")
    _refuse_nul(text, path)
    return text


def read_lines(path: str | os.PathLike[str], what: str) -> list[str]:
    """The lines of a UTF-8 text file without their endings (see `read_text`); `\\n` alone splits lines,
    so a U+2028 or a lone CR inside a line never shifts the line numbers of a paired file."""
    lines = read_text(path, what).split("\n")
    if lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start another
    return lines


def jsonl_lines(path: str | os.PathLike[str], what: str) -> Iterator[tuple[int, str]]:
    """`(1-based line number, text)` of each line of a jsonl file, streamed, endings and BOM removed."""
    path = check_file(path, what)
    offset = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            # decode_utf8 drops a BOM; one at the start of a later line (files joined with cat) goes too
            yield lineno, decode_utf8(raw, path, lineno, offset).rstrip("\r\n")
            offset += len(raw)


def parse_json_object(line: str, where: str) -> dict[str, Any]:
    """One jsonl line as a dict; invalid JSON or another JSON type raises naming `where` (path:line)."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{where}: malformed JSON ({err.msg} at column {err.colno})") from None
    except RecursionError:
        raise DataFormatError(f"{where}: malformed JSON (nested too deeply)") from None
    if not isinstance(value, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {_json_type(value)}")
    return value


def iter_jsonl(
    path: str | os.PathLike[str], what: str, allow_empty: bool = False
) -> Iterator[tuple[int, dict[str, Any]]]:
    """`(line number, record)` per non-blank line of a jsonl file (blank lines hold nothing and are passed
    over). A line that is not a JSON object raises naming file and line; so does a file without any
    record, unless `allow_empty`."""
    count = 0
    for lineno, line in jsonl_lines(path, what):
        if not line.strip():
            continue
        count += 1
        yield lineno, parse_json_object(line, f"{path}:{lineno}")
    if not count and not allow_empty:
        raise DataFormatError(f"{path}: no JSON records ({what} file is empty or blank)")


def load_json(path: str | os.PathLike[str], what: str) -> Any:
    """A whole JSON file (BOM accepted); invalid bytes or JSON raise naming the file, line and column."""
    path = check_file(path, what)
    text = decode_utf8(path.read_bytes(), path)
    if not text.strip():
        raise DataFormatError(f"{path}: empty file, expected JSON ({what})")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataFormatError(
            f"{path}:{err.lineno}: malformed JSON ({err.msg} at column {err.colno})"
        ) from None


def json_key_line(text: str, key: str) -> int | None:
    """The 1-based line where `"key":` first appears in a JSON text (to place a field error), if any."""
    i = text.find(json.dumps(key) + ":")
    if i < 0:
        i = text.find(json.dumps(key) + " :")
    return None if i < 0 else text.count("\n", 0, i) + 1


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def as_object(value: Any, key: str, where: str) -> dict[str, Any]:
    """`value` if it is a JSON object, else a `DataFormatError` naming `where` and the field `key`."""
    if not isinstance(value, dict):
        got = f"{_json_type(value)} {value!r:.80}"
        raise DataFormatError(f"{where}: field {key!r} must be an object, got {got}")
    return value


def require(record: Any, key: str, where: str, kind: type | tuple[type, ...] | None = None) -> Any:
    """`record[last part of key]`, or a `DataFormatError` naming `where` (path:line) and the dotted `key`.

    `record` not being a JSON object is reported against the parent of `key` (e.g. `passage.questions[0]`);
    `kind=int` refuses booleans (JSON `true` is not an index).
    """
    name = key.rsplit(".", 1)[-1]
    as_object(record, key.rsplit(".", 1)[0] if "." in key else "(record)", where)
    if name not in record:
        raise DataFormatError(f"{where}: missing field {key!r}")
    value = record[name]
    kinds: tuple[type, ...] = kind if isinstance(kind, tuple) else (kind,) if kind is not None else ()
    if kind is not None and (not isinstance(value, kind) or (isinstance(value, bool) and bool not in kinds)):
        expected = " or ".join(k.__name__ for k in kinds)
        raise DataFormatError(
            f"{where}: field {key!r} must be {expected}, got {type(value).__name__} {value!r:.80}"
        )
    return value


class SkipLog:
    """Records that a reader drops: counted, and logged once with the first one's place and reason."""

    def __init__(self, what: str, noun: str = "bad rows") -> None:
        self.what, self.noun = what, noun
        self.count = 0
        self.first: str | None = None

    def add(self, where: str, reason: str) -> None:
        self.count += 1
        if self.first is None:
            self.first = f"{where}: {reason}"

    def report(self, logger: logging.Logger) -> None:
        if self.count:
            logger.warning("%s: skipped %d %s (the first: %s)", self.what, self.count, self.noun, self.first)
