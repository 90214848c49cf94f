"""Bad tokenizer inputs and settings: each one a located `UserError` (file, line, key), nothing on disk.

Called directly (no run.py): `train_sentencepiece` / `ensure_tokenizer` with the config keys the pipeline
passes, and `glm.data.base.resolve_tokenizer` / `check_tokenizer_spec` as the datamodules use them. The
subprocess checks of the same mistakes are in tests/run/test_cli_errors_data.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import write_corpus

import glm.tokenizer.training as training
from glm.data.base import check_tokenizer_spec, resolve_tokenizer
from glm.errors import ConfigError, DataFormatError, MissingInputError
from glm.tokenizer import SP_MODEL_FILE, train_sentencepiece
from glm.tokenizer.training import FIXED_PIECES, MIN_VOCAB_SIZE


def _spec(tmp_path: Path, **train) -> dict:
    return {"path": None, "train": {"max_bytes": 100_000, **train}, "cache_dir": str(tmp_path / "cache")}


def _resolve(tmp_path: Path, files: list[Path], **train):
    return resolve_tokenizer(_spec(tmp_path, **train), lambda: files)


def _files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if sentencepiece training is reached (the check must come first)."""

    def refuse(*args, **kwargs):
        raise AssertionError("training was reached")

    monkeypatch.setattr(training, "_train_into", refuse)


# ------------------------------------------------------------------------------------------------
# the corpus a tokenizer is trained on
# ------------------------------------------------------------------------------------------------
def test_empty_corpus_names_the_file_and_key_and_writes_nothing(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(
        DataFormatError, match=rf"^{re.escape(str(empty))}: an empty file \(0 bytes\): .*data\.files"
    ):
        _resolve(tmp_path, [empty])
    assert _files_under(tmp_path / "cache") == []
    # the Python API names its own argument, and creates no output dir
    with pytest.raises(DataFormatError, match=r"empty\.txt: an empty file \(0 bytes\).*; files must name"):
        train_sentencepiece([empty], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_blank_corpus_is_not_reported_as_a_vocabulary_size(tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_bytes(b"\n\n   \n\t\r\n\n")
    with pytest.raises(DataFormatError, match=r"blank\.txt: only blank lines: no text to train") as err:
        _resolve(tmp_path, [blank])
    assert "Vocabulary size" not in str(err.value)
    # several files, all blank: the count and the first one are named
    other = tmp_path / "other.txt"
    other.write_bytes(b"\n")
    with pytest.raises(
        DataFormatError, match=rf"2 files \({re.escape(str(blank))}, \.\.\.; 11 bytes in all\)"
    ):
        train_sentencepiece([blank, other], tmp_path / "out", progress=False)
    assert _files_under(tmp_path / "cache") == [] and not (tmp_path / "out").exists()


def test_max_bytes_that_cuts_away_all_text_is_named(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(b"\n" * 10 + b"text comes late\n")
    with pytest.raises(
        DataFormatError, match=r"c\.txt: only blank lines within the first 10 bytes \(max_bytes\)"
    ):
        train_sentencepiece([corpus], tmp_path / "out", max_bytes=10, progress=False)


def test_non_utf8_corpus_while_training_names_file_line_column_and_offset(tmp_path):
    bad = write_corpus(tmp_path / "bad.txt", 3)
    lines = bad.read_bytes().split(b"\n")
    offset = len(lines[0]) + 1 + len(lines[1]) + 1 + 6  # line 3, column 7
    lines[2] = lines[2][:6] + b"\xe9" + lines[2][6:]  # a Latin-1 e-acute
    bad.write_bytes(b"\n".join(lines))
    want = rf"bad\.txt:3: not valid UTF-8 \(byte 0xe9 at column 7, file offset {offset}: invalid continuation"
    with pytest.raises(DataFormatError, match=want):
        _resolve(tmp_path, [bad])
    assert _files_under(tmp_path / "cache") == []
    # the reader of an existing tokenizer's corpus gives the same located message
    from glm.utils.inputs import read_text

    with pytest.raises(DataFormatError, match=want):
        read_text(bad, "pretraining corpus")
    # a NUL (a UTF-16 or binary file) is refused with its line too
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"fine\nalso fine\nbad\x00line\n")
    with pytest.raises(DataFormatError, match=r"nul\.txt:3: NUL byte in a text file"):
        train_sentencepiece([nul], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_corpus_path_that_is_a_directory(tmp_path):
    (tmp_path / "books").mkdir()
    with pytest.raises(MissingInputError, match=r"'.*books' is a directory; give files or a glob"):
        train_sentencepiece([tmp_path / "books"], tmp_path / "out", progress=False)
    with pytest.raises(MissingInputError, match=r"'.*\*\.txt' matches no file"):
        train_sentencepiece([str(tmp_path / "books" / "*.txt")], tmp_path / "out", progress=False)


# ------------------------------------------------------------------------------------------------
# training settings
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("train", "message"),
    [
        (
            {"vocab_size": 10},
            rf"data\.tokenizer\.train\.vocab_size: 10 is too small; the minimum is {MIN_VOCAB_SIZE}",
        ),
        ({"vocab_size": "8k"}, r"data\.tokenizer\.train\.vocab_size: expected an int, got '8k'"),
        ({"model_type": "wordpiece"}, r"data\.tokenizer\.train\.model_type: must be 'bpe' or 'unigram'"),
        ({"max_bytes": 0}, r"data\.tokenizer\.train\.max_bytes: expected a positive int or null"),
        ({"vocabsize": 300}, r"data\.tokenizer\.train: unknown key\(s\) \['vocabsize'\]"),
    ],
)
def test_bad_training_settings_are_refused_before_training(tmp_path, no_training, train, message):
    corpus = write_corpus(tmp_path / "c.txt")
    spec = _spec(tmp_path, **train)
    with pytest.raises(ConfigError, match=message):
        check_tokenizer_spec(spec)  # the start-up check: no file is read
    with pytest.raises(ConfigError, match=message):
        resolve_tokenizer(spec, lambda: [corpus])
    assert not (tmp_path / "cache").exists()


def test_minimum_vocab_size_is_the_fixed_pieces_plus_one_per_character(tmp_path):
    assert (FIXED_PIECES, MIN_VOCAB_SIZE) == (266, 267)  # 10 specials + 256 byte pieces
    corpus = write_corpus(tmp_path / "c.txt")
    chars = len(set(corpus.read_text().replace("\n", "")))  # 16 letters, space, full stop
    need = FIXED_PIECES + chars
    with pytest.raises(
        ConfigError,
        match=rf"vocab_size: {need - 1} is too small for .*c\.txt: it needs at least {need} \(266 special and byte-fallback pieces \+ {chars} distinct characters\)",
    ):
        _resolve(tmp_path, [corpus], vocab_size=need - 1)
    assert _files_under(tmp_path / "cache") == []  # no half-written model in the cache
    tok = _resolve(tmp_path, [corpus], vocab_size=need)  # the minimum it named trains
    assert tok.num_text_tokens == need


def test_vocab_size_larger_than_the_corpus_gives_names_the_largest(tmp_path):
    corpus = write_corpus(tmp_path / "c.txt")
    with pytest.raises(
        ConfigError,
        match=r"data\.tokenizer\.train\.vocab_size: 9000 is more pieces than .*c\.txt \(\d+ lines\) can give: at most (\d+)",
    ) as err:
        _resolve(tmp_path, [corpus], vocab_size=9000)
    assert _files_under(tmp_path / "cache") == []
    most = int(re.search(r"at most (\d+)", str(err.value)).group(1))
    assert MIN_VOCAB_SIZE < most < 9000
    assert _resolve(tmp_path, [corpus], vocab_size=most).num_text_tokens == most  # the number is right


# ------------------------------------------------------------------------------------------------
# an existing tokenizer: data.tokenizer.path
# ------------------------------------------------------------------------------------------------
def test_empty_tokenizer_dir_names_the_key_and_the_dir(tmp_path):
    empty = tmp_path / "tok"
    empty.mkdir()
    want = rf"^data\.tokenizer\.path: {re.escape(str(empty))}: empty directory, no tokenizer files \(no tokenizer\.json\)"
    with pytest.raises(MissingInputError, match=want):
        resolve_tokenizer({"path": str(empty), "train": {"vocab_size": 8000}, "cache_dir": "unused"})
    with pytest.raises(MissingInputError, match=r"^data\.tokenizer: .*: empty directory"):
        resolve_tokenizer(str(empty))
    # a dir holding a model but no tokenizer.json: says what would load it
    (empty / SP_MODEL_FILE).write_bytes(b"x")
    with pytest.raises(MissingInputError, match=r"holds tokenizer\.model\); give the model file itself"):
        resolve_tokenizer({"path": str(empty)})


def test_garbage_model_and_non_tokenizer_file(tmp_path):
    garbage = tmp_path / "bad.model"
    garbage.write_bytes(b"not a model\x00\x01")
    with pytest.raises(
        DataFormatError, match=r"^data\.tokenizer\.path: .*bad\.model: not a sentencepiece model"
    ):
        resolve_tokenizer({"path": str(garbage)})
    (tmp_path / "zero.model").write_bytes(b"")
    with pytest.raises(DataFormatError, match=r"zero\.model: empty file, not a sentencepiece model"):
        resolve_tokenizer({"path": str(tmp_path / "zero.model")})
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    with pytest.raises(DataFormatError, match=r"^data\.tokenizer\.path: .*notes\.txt: not a tokenizer"):
        resolve_tokenizer({"path": str(text)})
    with pytest.raises(ConfigError, match=r"^data\.tokenizer\.path: .*field 'kind' is 'wordpiece'"):
        resolve_tokenizer({"kind": "wordpiece", "path": str(text)})
