"""Training our SentencePiece models on text files, and the trained-once cache (:func:`ensure_tokenizer`)."""

from __future__ import annotations

import glob as globlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from glm.errors import ConfigError, DataFormatError, MissingInputError, UserError
from glm.tokenizer.base import META_FILE, SP_MODEL_FILE, SPECIAL_TOKENS, read_meta, write_json
from glm.tokenizer.loading import load_tokenizer
from glm.tokenizer.sentencepiece import SentencePieceTokenizer
from glm.utils.inputs import decode_utf8, parse_json_object, refuse_nul, require


def _iter_training_lines(
    files: Sequence[Path], max_bytes: int | None, progress: bool, text_field: str = "text"
) -> Iterator[str]:
    """Lines of ``files`` as text: BOM removed, CRLF/CR -> LF, at most ``max_bytes`` in all. A ``.jsonl``
    file gives the lines of each record's ``text_field`` (what pretraining reads from it), not its JSON.

    The byte budget is shared evenly among the files (unused share rolls over), cut at a line end,
    so a capped run still sees every file. Bytes that are not UTF-8, or a NUL, raise a
    :class:`DataFormatError` naming the file, line, column and byte offset (as every reader does).
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
                    # decode_utf8 drops a BOM at the start of the line (the file's, or one left by cat)
                    line = decode_utf8(raw, path, lineno, used)
                    refuse_nul(line, path, lineno)
                    used += len(raw)
                    bar.update(len(raw))
                    if path.suffix.lower() == ".jsonl":
                        if line.strip():
                            where = f"{path}:{lineno}"
                            text = require(parse_json_object(line, where), text_field, where, str)
                            yield from text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
                        continue
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
        if not found and Path(item).is_dir():
            raise MissingInputError(f"tokenizer training input {item!r} is a directory; give files or a glob")
        if not found:
            raise MissingInputError(f"tokenizer training input {item!r} matches no file")
        files.extend(found)
    return sorted(dict.fromkeys(files))


def _training_settings(
    files: Sequence[Path], vocab_size: int, model_type: str, max_bytes: int | None, text_field: str = "text"
) -> dict:
    """What a trained model depends on (the cache key of :func:`ensure_tokenizer`)."""
    settings = {
        "vocab_size": vocab_size,
        "model_type": model_type,
        "max_bytes": max_bytes,
        "inputs": sorted([f.name, f.stat().st_size] for f in files),
    }
    if any(f.suffix.lower() == ".jsonl" for f in files):  # (txt-only caches keep their key)
        settings["text_field"] = text_field
    return settings


# The ids every GLM sentencepiece model holds before any piece learnt from the corpus: the 10 special
# tokens and the 256 byte-fallback pieces; each distinct character of the corpus then needs one more.
FIXED_PIECES = len(SPECIAL_TOKENS) + 256
MIN_VOCAB_SIZE = FIXED_PIECES + 1
MODEL_TYPES = ("bpe", "unigram")
# The config keys of the training settings, as errors name them (the Python API's argument names by
# default; the pipeline passes its own: data.files, data.tokenizer.train.vocab_size, ...).
DEFAULT_KEYS = {name: name for name in ("files", "vocab_size", "model_type", "max_bytes")}

_TOO_SMALL = re.compile(r"smaller than required_chars\. (\d+) vs (\d+)")
_TOO_LARGE = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")


def check_training_settings(
    vocab_size: Any, model_type: Any, max_bytes: Any, keys: Mapping[str, str] | None = None
) -> None:
    """A :class:`ConfigError` naming the key for settings no corpus can train with (checked before any
    text is read, so a config can be refused at start-up)."""
    keys = {**DEFAULT_KEYS, **(keys or {})}
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
        raise ConfigError(f"{keys['vocab_size']}: expected an int, got {vocab_size!r}")
    if vocab_size < MIN_VOCAB_SIZE:
        raise ConfigError(
            f"{keys['vocab_size']}: {vocab_size} is too small; the minimum is {MIN_VOCAB_SIZE}: the "
            f"{len(SPECIAL_TOKENS)} GLM special tokens and the 256 byte-fallback pieces take {FIXED_PIECES} "
            "ids and every distinct character of the corpus needs one more (8000 is the usual size)"
        )
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"{keys['model_type']}: must be 'bpe' or 'unigram', got {model_type!r}")
    if max_bytes is not None and (
        not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1
    ):
        raise ConfigError(f"{keys['max_bytes']}: expected a positive int or null (no cap), got {max_bytes!r}")


def _no_text_error(paths: Sequence[Path], max_bytes: int | None, key: str) -> DataFormatError:
    """Why there is nothing to train on, naming the file(s): empty, blank, or cut away by ``max_bytes``."""
    sizes = [p.stat().st_size for p in paths]
    if len(paths) == 1:
        what = "an empty file (0 bytes)" if sizes[0] == 0 else "only blank lines"
        where = f"{paths[0]}: {what}"
    else:
        where = f"{len(paths)} files ({paths[0]}, ...; {sum(sizes)} bytes in all) hold only blank lines"
    if max_bytes is not None and sum(sizes) > max_bytes:
        where += f" within the first {max_bytes} bytes (max_bytes)"
    return DataFormatError(f"{where}: no text to train a tokenizer on; {key} must name text files")


def _sentencepiece_error(
    err: RuntimeError, vocab_size: int, paths: Sequence[Path], num_lines: int, keys: Mapping[str, str]
) -> UserError | None:
    """The config error behind a sentencepiece training failure, when it is a vocabulary size the corpus
    cannot give (sentencepiece's message names neither the key nor the files)."""
    corpus = f"{paths[0]}" if len(paths) == 1 else f"{len(paths)} files ({paths[0]}, ...)"
    small = _TOO_SMALL.search(str(err))
    if small:
        need = int(small.group(2))
        return ConfigError(
            f"{keys['vocab_size']}: {vocab_size} is too small for {corpus}: it needs at least {need} "
            f"({FIXED_PIECES} special and byte-fallback pieces + {need - FIXED_PIECES} distinct characters)"
        )
    large = _TOO_LARGE.search(str(err))
    if large:
        most = int(large.group(2))
        return ConfigError(
            f"{keys['vocab_size']}: {vocab_size} is more pieces than {corpus} ({num_lines} lines) can give: "
            f"at most {most}; lower it or train on more text ({keys['files']}, {keys['max_bytes']})"
        )
    return None


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
    keys: Mapping[str, str] | None = None,
    text_field: str = "text",
) -> SentencePieceTokenizer:
    """Train a GLM SentencePiece model on text files; write ``out_dir/tokenizer.model`` + ``tokenizer.json``.

    ``files`` are paths or glob patterns (UTF-8 text, CRLF read as LF; ``.jsonl``: the ``text_field`` of
    each record). ``vocab_size`` counts
    every piece: the 10 specials and the 256 byte-fallback pieces included. ``max_bytes`` caps the
    text read (shared evenly across files). ``quiet`` silences sentencepiece's own log. ``keys`` maps
    the setting names (``files``, ``vocab_size``, ``model_type``, ``max_bytes``) to the config keys that
    errors name. Bad settings and files are refused before ``out_dir`` is created.
    """
    import sentencepiece as spm

    keys = {**DEFAULT_KEYS, **(keys or {})}
    check_training_settings(vocab_size, model_type, max_bytes, keys)
    paths = _expand_inputs(files)
    lines = [line for line in _iter_training_lines(paths, max_bytes, progress, text_field) if line]
    if not any(line.strip() for line in lines):
        raise _no_text_error(paths, max_bytes, keys["files"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    user_defined = [s for name, s in SPECIAL_TOKENS.items() if name != "unk"]
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_prefix=str(out_dir / "tokenizer"),
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            num_threads=num_threads,
            # exact round trip and composable pieces (docs/tokenizers.md; docs/lightning-hydra-notes.md R8)
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
        for name in ("tokenizer.model", "tokenizer.vocab"):  # never leave a half-written model behind
            (out_dir / name).unlink(missing_ok=True)
        known = _sentencepiece_error(err, vocab_size, paths, len(lines), keys)
        if known is not None:
            raise known from err
        raise ValueError(
            f"sentencepiece training failed (vocab_size={vocab_size}, model_type={model_type}, "
            f"{len(lines)} lines from {len(paths)} file(s)): {err}"
        ) from err
    (out_dir / "tokenizer.vocab").unlink(missing_ok=True)  # the model file holds the pieces
    tok = SentencePieceTokenizer(out_dir / SP_MODEL_FILE, num_threads=num_threads)
    meta = tok._meta(model_file=SP_MODEL_FILE)
    meta["trained_with"] = _training_settings(paths, vocab_size, model_type, max_bytes, text_field)
    write_json(out_dir / META_FILE, meta)  # written last: its presence marks a complete dir
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
    cap, input names and sizes) is an error rather than silently reused. Settings no corpus can train
    with are refused before anything is written (:func:`check_training_settings`).
    """
    out_dir = Path(out_dir)
    keys = {**DEFAULT_KEYS, **(train_kwargs.get("keys") or {})}
    check_training_settings(vocab_size, model_type, max_bytes, keys)
    paths = _expand_inputs(files)
    wanted = _training_settings(
        paths, vocab_size, model_type, max_bytes, train_kwargs.get("text_field", "text")
    )
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
    cached = read_meta(out_dir).get("trained_with")
    if cached != wanted:
        raise ConfigError(
            f"{keys.get('cache_dir', 'out_dir')}: the tokenizer cached in {out_dir} was trained with {cached}, "
            f"but {wanted} was asked (a training file changed?); delete {out_dir} to retrain"
        )
    assert isinstance(tok, SentencePieceTokenizer)
    return tok


def _train_into(
    paths: Sequence[Path], out_dir: Path, vocab_size: int, model_type: str, max_bytes: int | None, **kw: Any
) -> SentencePieceTokenizer:
    """The training step of :func:`ensure_tokenizer` (a seam for tests that count trainings)."""
    return train_sentencepiece(paths, out_dir, vocab_size, model_type, max_bytes, **kw)
