"""``python run.py`` on bad data and tokenizer inputs: exit 2, the error as the last line of stderr, no
traceback, nothing partial in the run dir or the caches (one subprocess per kind of mistake; the unit
tests of each case are in tests/data/test_tokenizer_errors.py and tests/data/test_bad_input.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import need_data, run_cli, write_corpus


def _pretrain(tmp_path: Path, *overrides: str):
    return run_cli(
        [
            "+experiment=pretrain_tiny",
            "logger=none",
            "trainer.max_steps=2",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={tmp_path / 'run'}",
            *overrides,
        ],
        tmp_path,
    )


def _assert_one_line_error(r, label: str, pattern: str, tmp_path: Path) -> str:
    """Exit 2, no traceback, the error once and last on stderr; no empty or temporary file left behind."""
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines and re.search(rf"^{label} error: {pattern}", lines[-1]), lines[-3:]
    assert len([line for line in lines if " error: " in line]) == 1, lines
    assert "Traceback" in (tmp_path / "run" / "FAILED").read_text()  # the traceback goes there only
    for root in (tmp_path / "run", tmp_path / "cache"):
        for path in root.rglob("*") if root.exists() else ():
            assert ".tmp" not in path.name, path
            assert not path.is_file() or path.stat().st_size > 0, path
    return lines[-1]


def test_non_utf8_corpus_while_training_the_tokenizer(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt")
    data = corpus.read_bytes()
    corpus.write_bytes(data[:100] + b"\xff" + data[100:])
    line = data[:100].count(b"\n") + 1
    column = 100 - (data.rfind(b"\n", 0, 100) + 1) + 1
    _assert_one_line_error(
        _pretrain(tmp_path, f"data.files=[{corpus}]"),
        "Input",
        rf".*corpus\.txt:{line}: not valid UTF-8 \(byte 0xff at column {column}, file offset 100: invalid start byte\)",
        tmp_path,
    )
    assert not list((tmp_path / "cache").rglob("tokenizer.model"))


def test_empty_tokenizer_dir(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt")
    (tmp_path / "tok").mkdir()
    _assert_one_line_error(
        _pretrain(tmp_path, f"data.files=[{corpus}]", f"data.tokenizer.path={tmp_path / 'tok'}"),
        "Input",
        r"data\.tokenizer\.path: .*tok: empty directory, no tokenizer files",
        tmp_path,
    )


def test_vocab_size_below_the_minimum_is_refused_before_training(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt")
    _assert_one_line_error(
        _pretrain(tmp_path, f"data.files=[{corpus}]", "data.tokenizer.train.vocab_size=10"),
        "Config",
        r"data\.tokenizer\.train\.vocab_size: 10 is too small; the minimum is 267",
        tmp_path,
    )
    assert not (tmp_path / "cache" / "tokenizers").exists()  # nothing was trained, not even a temp dir


def test_vocab_size_the_corpus_cannot_give_leaves_no_tokenizer(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt")
    _assert_one_line_error(
        _pretrain(tmp_path, f"data.files=[{corpus}]", "data.tokenizer.train.vocab_size=9000"),
        "Config",
        r"data\.tokenizer\.train\.vocab_size: 9000 is more pieces than .*corpus\.txt \(40 lines\) can give: "
        r"at most \d+",
        tmp_path,
    )
    assert list((tmp_path / "cache" / "tokenizers").iterdir()) == []  # its temp dir went too


def test_lambada_seq_length_too_short(tmp_path: Path) -> None:
    need_data("tokenizers/bert-base-uncased/vocab.txt")
    path = tmp_path / "lambada.jsonl"
    texts = ["the cat sat on the mat", "she opened the door and saw the garden"]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    r = run_cli(
        [
            "+experiment=lambada_zeroshot",
            "model=glm_tiny",
            "logger=none",
            f"data.path={path}",
            "data.seq_length=4",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        tmp_path,
    )
    _assert_one_line_error(
        r,
        "Config",
        r"data\.seq_length: 4 is too short for 2 of 2 LAMBADA examples of .*lambada\.jsonl \(the first at "
        r"line 1: a 1-token answer needs 5: .*\); data\.seq_length >= 5 fits every example$",
        tmp_path,
    )
