"""Training our SentencePiece models on text files, and the trained-once cache (:func:`ensure_tokenizer`)."""

from __future__ import annotations

import glob as globlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from glm.tokenizer.base import META_FILE, SP_MODEL_FILE, SPECIAL_TOKENS, read_meta, write_json
from glm.tokenizer.loading import load_tokenizer
from glm.tokenizer.sentencepiece import SentencePieceTokenizer


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
        raise ValueError(
            f"sentencepiece training failed (vocab_size={vocab_size}, model_type={model_type}, "
            f"{len(lines)} lines from {len(paths)} file(s)): {err}"
        ) from err
    (out_dir / "tokenizer.vocab").unlink(missing_ok=True)  # the model file holds the pieces
    tok = SentencePieceTokenizer(out_dir / SP_MODEL_FILE, num_threads=num_threads)
    meta = tok._meta(model_file=SP_MODEL_FILE)
    meta["trained_with"] = _training_settings(paths, vocab_size, model_type, max_bytes)
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
    cached = read_meta(out_dir).get("trained_with")
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
