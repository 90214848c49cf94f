"""Malformed input files, built from small snippets of the real shared data, through every reader.

The standard (glm.utils.inputs): an error naming the file, the 1-based line and the field, or a counted,
logged skip; a BOM and CRLF simply work. Each test asserts the located message, so it fails if the
check were removed. The readers are called directly (no training), except one `run.py` check that bad
input ends in one line, not a traceback.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import need_data, run_cli

from glm.errors import DataFormatError, MissingInputError

BOM = b"\xef\xbb\xbf"


def _head(rel: str, n: int) -> list[bytes]:
    """The first `n` lines of a shared data file (each with its newline)."""
    with need_data(rel).open("rb") as f:
        return [f.readline() for _ in range(n)]


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _jsonl(records: list[Any]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def _set(record: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A deep copy of `record` with `a.b.0.c` set to `value`."""
    out = json.loads(json.dumps(record))
    node: Any = out
    *parents, last = dotted.split(".")
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    node[int(last) if isinstance(node, list) else last] = value
    return out


# ------------------------------------------------------------------------------------------------
# SuperGLUE: every task's reader (glm.data.superglue.tasks), nested fields included
# ------------------------------------------------------------------------------------------------
SG_FILES = {
    "boolq": "BoolQ/val.jsonl",
    "cb": "CB/val.jsonl",
    "copa": "COPA/val.jsonl",
    "multirc": "MultiRC/val.jsonl",
    "record": "ReCoRD/dev32.jsonl",
    "rte": "RTE/val.jsonl",
    "wic": "WiC/val.jsonl",
    "wsc": "WSC/val.jsonl",
}


def _sg(task: str, tmp_path: Path, data: bytes) -> list:
    from glm.data.superglue import get_task

    return get_task(task).read(_write(tmp_path / Path(SG_FILES[task]).name, data), "val")


@pytest.mark.parametrize("task", sorted(SG_FILES))
def test_superglue_file_level_defects(task: str, tmp_path: Path) -> None:
    lines = _head(f"superglue/{SG_FILES[task]}", 2)
    name = re.escape(Path(SG_FILES[task]).name)
    clean = len(_sg(task, tmp_path, b"".join(lines)))
    # a BOM and CRLF line endings change nothing; blank lines are passed over
    assert len(_sg(task, tmp_path, BOM + b"".join(lines).replace(b"\n", b"\r\n") + b"\n\n")) == clean
    bad_bytes = lines[0] + lines[1][:12] + b"\xff" + lines[1][12:]
    with pytest.raises(DataFormatError, match=rf"{name}:2: not valid UTF-8 \(byte 0xff at column 13"):
        _sg(task, tmp_path, bad_bytes)
    with pytest.raises(DataFormatError, match=rf"{name}:2: malformed JSON"):
        _sg(task, tmp_path, lines[0] + lines[1][: len(lines[1]) // 2])  # truncated last line
    for value, kind in (("[1, 2]", "list"), ("7", "number"), ('"text"', "string"), ("null", "null")):
        with pytest.raises(DataFormatError, match=rf"{name}:2: expected a JSON object, got {kind}"):
            _sg(task, tmp_path, lines[0] + value.encode() + b"\n")
    with pytest.raises(DataFormatError, match=rf"{name}:2: field 'idx' = \d+ repeats line 1"):
        _sg(task, tmp_path, lines[0] + lines[0])
    rec = json.loads(lines[1])
    with pytest.raises(DataFormatError, match=rf"{name}:2: field 'idx' must be int, got str"):
        _sg(task, tmp_path, lines[0] + _jsonl([_set(rec, "idx", "3")]))
    for empty in (b"", b"\n \n"):
        with pytest.raises(DataFormatError, match=rf"{name}: no JSON records"):
            _sg(task, tmp_path, empty)
    from glm.data.superglue import get_task

    as_dir = tmp_path / "as_dir" / Path(SG_FILES[task]).name
    as_dir.mkdir(parents=True)
    with pytest.raises(MissingInputError, match="is a directory"):
        get_task(task).read(as_dir, "val")


# (task, dotted field to set on the second record, value, the message's literal text after "file:2")
SG_FIELD_CASES = [
    ("boolq", "passage", None, ": field 'passage' must be str, got NoneType"),
    ("boolq", "label", [1], ": field 'label' = [1] is not in the label set"),
    ("cb", "hypothesis", 3, ": field 'hypothesis' must be str, got int"),
    ("copa", "label", True, ": field 'label' = True is not in the label set"),
    ("copa", "question", "why", ": field 'question' = 'why' must be 'cause' or 'effect'"),
    ("rte", "premise", ["a"], ": field 'premise' must be str, got list"),
    ("wic", "word", {"w": 1}, ": field 'word' must be str, got dict"),
    ("wsc", "target", None, ": field 'target' must be dict, got NoneType"),
    ("wsc", "target.span2_index", "3", ": field 'target.span2_index' must be int, got str"),
    ("wsc", "target.span2_index", True, ": field 'target.span2_index' must be int, got bool"),
    ("wsc", "candidates", 5, ": field 'candidates' must be list, got int"),
    ("wsc", "candidates", [None], ": field 'candidates[0]' must be an object, got null"),
    ("multirc", "passage.questions", {"q": 1}, ": field 'passage.questions' must be list, got dict"),
    ("multirc", "passage.questions", [5], ": field 'passage.questions[0]' must be an object, got number"),
    ("multirc", "passage.questions.0.answers", [None], ": field 'passage.questions[0].answers[0]' must be"),
    ("multirc", "passage.questions.0.answers.0.label", [1], " (passage.questions[0].answers[0]): field 'lab"),
    ("record", "passage", None, ": field 'passage' must be dict, got NoneType"),
    ("record", "passage.entities", [5], ": field 'passage.entities[0]' must be an object, got number"),
    ("record", "passage.entities", [{"start": 0, "end": 10**6}], ": field 'passage.entities[0]' = [0, 10000"),
    ("record", "passage.entities", [{"start": -3, "end": 2}], ": field 'passage.entities[0]' = [-3, 2] is"),
    ("record", "passage.entities", [{"start": True, "end": 2}], ": field 'passage.entities[0].start' must"),
    ("record", "qas", [5], ": field 'qas[0]' must be an object, got number"),
    ("record", "qas.0.answers", "Bo", " (qas[0]): field 'answers' must be list, got str"),
    ("record", "qas.0.answers", [5], " (qas[0]): field 'answers[0]' must be an object"),
    ("record", "qas.0.answers", [{"text": None}], " (qas[0]): field 'answers[0].text' must be str"),
]


@pytest.mark.parametrize(("task", "field", "value", "expected"), SG_FIELD_CASES)
def test_superglue_field_defects_name_file_line_field(task, field, value, expected, tmp_path: Path) -> None:
    lines = _head(f"superglue/{SG_FILES[task]}", 2)
    bad = _jsonl([_set(json.loads(lines[1]), field, value)])
    with pytest.raises(DataFormatError, match=re.escape(f"{Path(SG_FILES[task]).name}:2{expected}")):
        _sg(task, tmp_path, lines[0] + bad)


# ------------------------------------------------------------------------------------------------
# Pretraining corpus (.txt and .jsonl with data.text_field)
# ------------------------------------------------------------------------------------------------
def test_pretrain_corpus_defects(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from glm.data.pretrain import expand_files, read_documents, tokenize_corpus
    from glm.tokenizer import WordPieceTokenizer

    book = b"".join(_head("gutenberg/11-0.txt", 40))  # starts with a BOM, CRLF line endings
    txt = _write(tmp_path / "book.txt", book)
    plain = _write(tmp_path / "lf.txt", book[3:].replace(b"\r\n", b"\n"))
    assert read_documents(txt) == read_documents(plain)
    _write(txt, book[:300] + b"\xe9" + book[300:])  # a latin-1 byte
    with pytest.raises(DataFormatError, match=r"book\.txt:\d+: not valid UTF-8 \(byte 0xe9"):
        read_documents(txt)
    _write(txt, "ok\nline two\n".encode("utf-16-le"))
    with pytest.raises(DataFormatError, match=r"book\.txt:1: NUL byte in a text file"):
        read_documents(txt)
    docs = [{"text": "A first document."}, {"text": "A second one."}]
    jl = _write(tmp_path / "c.jsonl", BOM + _jsonl(docs).replace(b"\n", b"\r\n"))
    assert read_documents(jl) == ["A first document.", "A second one."]
    for value, got in (([1], "list"), (None, "NoneType"), (5, "int")):
        _write(jl, _jsonl([docs[0], {"text": value}]))
        with pytest.raises(DataFormatError, match=rf"c\.jsonl:2: field 'text' must be str, got {got}"):
            read_documents(jl)
    _write(jl, _jsonl(docs) + b"[1]\n")
    with pytest.raises(DataFormatError, match=r"c\.jsonl:3: expected a JSON object, got list"):
        read_documents(jl)
    _write(jl, _jsonl(docs[:1]) + b'{"body": "x"}\n')
    with pytest.raises(DataFormatError, match=r"c\.jsonl:2: missing field 'text'"):
        read_documents(jl, text_field="text")
    with pytest.raises(MissingInputError, match="is a directory"):
        expand_files([str(tmp_path)])
    # a record without text is dropped: counted and logged once with its file:line
    _write(jl, _jsonl([docs[0], {"text": "  "}, docs[1], {"text": ""}]))
    tok = WordPieceTokenizer(need_data("tokenizers/bert-base-uncased/vocab.txt"))
    with caplog.at_level(logging.WARNING, logger="glm.data.pretrain"):
        corpus = tokenize_corpus([jl], tok, tmp_path / "cache", progress=False)
    assert corpus.num_documents == 2
    assert re.search(r"skipped 2 empty documents \(the first: .*c\.jsonl:2: field 'text' is", caplog.text)


# ------------------------------------------------------------------------------------------------
# LAMBADA, WikiText (perplexity), generate's input
# ------------------------------------------------------------------------------------------------
def test_lambada_defects(tmp_path: Path) -> None:
    from glm.data.lm_eval import read_lambada

    lines = _head("lambada/lambada_test.jsonl", 2)
    p = _write(tmp_path / "l.jsonl", BOM + b"".join(lines).replace(b"\n", b"\r\n"))
    assert len(read_lambada(p)) == 2
    for data, match in (
        (lines[0] + b'["text"]\n', r"l\.jsonl:2: expected a JSON object, got list"),
        (lines[0] + b'{"text": 5}\n', r"l\.jsonl:2: field 'text' must be non-empty text, got 5"),
        (lines[0] + b'{"txt": "a b"}\n', r"l\.jsonl:2: field 'text' missing"),
        (lines[0] + lines[1][:20], r"l\.jsonl:2: malformed JSON"),
        (lines[0] + b'{"text": "caf\xe9"}\n', r"l\.jsonl:2: not valid UTF-8"),
        (b"", r"l\.jsonl: no LAMBADA records"),
    ):
        _write(p, data)
        with pytest.raises(DataFormatError, match=match):
            read_lambada(p)


def test_pretrain_corpus_without_usable_documents(tmp_path: Path) -> None:
    # with an existing tokenizer (data.tokenizer.path): nothing to tokenise, or too little to split
    from glm.data.pretrain import PretrainDataModule, tokenize_corpus
    from glm.errors import ConfigError
    from glm.tokenizer import WordPieceTokenizer

    tok = WordPieceTokenizer(need_data("tokenizers/bert-base-uncased/vocab.txt"))
    blank = _write(tmp_path / "blank.txt", b"\n \n\r\n\t\n")
    with pytest.raises(
        DataFormatError,
        match=r"blank\.txt: no document with any text \(empty or blank lines only, 7 bytes\); data\.files",
    ):
        tokenize_corpus([blank], tok, tmp_path / "cache", progress=False)
    empty = _write(tmp_path / "empty.txt", b"")
    with pytest.raises(DataFormatError, match=r"2 files \(.*blank\.txt, \.\.\.\): no document with any text"):
        tokenize_corpus([blank, empty], tok, tmp_path / "cache", progress=False)
    assert [p for p in (tmp_path / "cache").rglob("*")] == []  # no half-written cache entry
    one = _write(tmp_path / "one.txt", "A single paragraph,\nwrapped over two lines.\n")
    dm = PretrainDataModule([str(one)], tok, seq_length=32, cache_dir=str(tmp_path / "cache"), progress=False)
    with pytest.raises(
        DataFormatError,
        match=r"one\.txt: 1 document\(s\) cannot be split into train and val \(data\.val_fraction=0\.02\)",
    ):
        dm.setup()
    csv = _write(tmp_path / "corpus.csv", "a,b\n")
    dm = PretrainDataModule([str(one), str(csv)], tok, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(
        DataFormatError, match=r"corpus\.csv: unsupported corpus file type '\.csv' \(data\.files\)"
    ):
        dm.tokenizer_train_files()  # before any tokenizer is trained on it
    with pytest.raises(ConfigError, match=r"data\.seq_length: must be >= 8, got 4"):
        PretrainDataModule([str(one)], tok, seq_length=4)
    with pytest.raises(ConfigError, match=r"data\.document_split: must be 'paragraph' or 'file', got 'line'"):
        PretrainDataModule([str(one)], tok, document_split="line")


class _Chars:
    """A character-level tokenizer with the special ids the LAMBADA layouts use."""

    pad_id = eos_id = 0
    cls_id, mask_id, gmask_id, sop_id = 1, 2, 3, 4

    def encode(self, text: str) -> list[int]:
        return [5 + ord(c) % 50 for c in text]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]


def test_lambada_seq_length_too_short_says_how_many_and_the_minimum(tmp_path: Path) -> None:
    from glm.data.lm_eval import LMEvalDataModule
    from glm.errors import ConfigError

    # answers (" " + last word, one token per character): 4, 7 and 3 tokens; the longest needs 7 + 4
    p = _write(
        tmp_path / "l.jsonl",
        _jsonl([{"text": "the cat sat on a mat"}, {"text": "he read a letter"}, {"text": "so ran"}]),
    )
    for seq_length, too_long, line in ((4, 3, 1), (8, 1, 2), (10, 1, 2)):
        dm = LMEvalDataModule(str(p), _Chars(), seq_length=seq_length)
        with pytest.raises(
            ConfigError,
            match=rf"^data\.seq_length: {seq_length} is too short for {too_long} of 3 LAMBADA examples of .*l\.jsonl \(the first at line {line}: .*data\.seq_length >= 11 fits every example$",
        ):
            dm.setup()
    dm = LMEvalDataModule(str(p), _Chars(), seq_length=11)  # the length it named fits them all
    dm.setup()
    assert [len(s) for s in dm.samples] == [11, 11, 9]  # contexts cut from the left, answers whole
    # unidirectional: a one-word text has no context token for Part A
    _write(p, _jsonl([{"text": "the cat sat"}, {"text": "alone"}]))
    with pytest.raises(DataFormatError, match=r"l\.jsonl:2: field 'text' is a single word; unidirectional"):
        LMEvalDataModule(str(p), _Chars(), seq_length=32, unidirectional=True).setup()
    with pytest.raises(
        ConfigError, match=r"data\.overlap: must be in \(0, data\.seq_length - 1\) = \(0, 7\), got 7"
    ):
        LMEvalDataModule(str(p), _Chars(), kind="perplexity", seq_length=8, overlap=7)
    with pytest.raises(ConfigError, match=r"data\.kind: must be 'lambada' or 'perplexity', got 'cloze'"):
        LMEvalDataModule(str(p), _Chars(), kind="cloze")


class _Words:
    """The least a tokenizer needs here (the files fail before anything is encoded)."""

    pad_id = 0

    def encode(self, text: str) -> list[int]:
        return list(range(len(text.split())))


def test_wikitext_and_generate_input_defects(tmp_path: Path) -> None:
    from glm.data.lm_eval import LMEvalDataModule
    from glm.generate import read_input

    text = b"".join(_head("wikitext-2/wiki.valid.tokens", 6))
    p = _write(tmp_path / "wiki.tokens", text[:100] + b"\x00" + text[100:])
    line = text[:100].count(b"\n") + 1
    with pytest.raises(DataFormatError, match=rf"wiki\.tokens:{line}: NUL byte"):
        LMEvalDataModule(str(p), tokenizer=_Words(), kind="perplexity", seq_length=64, overlap=32).setup()
    with pytest.raises(MissingInputError, match=r"perplexity data: .* is a directory"):
        LMEvalDataModule(str(tmp_path), tokenizer=_Words(), kind="perplexity").setup()
    assert read_input(str(_write(tmp_path / "in.txt", BOM + b"a [MASK] b\r\nc\r\n"))) == ["a [MASK] b", "c"]
    with pytest.raises(SystemExit, match=r"in\.txt:2: not valid UTF-8"):
        read_input(str(_write(tmp_path / "in.txt", b"ok\n\xff\n")))
    with pytest.raises(SystemExit, match="is a directory"):
        read_input(str(tmp_path))


# ------------------------------------------------------------------------------------------------
# XSum: jsonl and .source/.target line files
# ------------------------------------------------------------------------------------------------
def test_xsum_defects(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from glm.data.seq2seq import read_examples

    lines = _head("xsum/validation.jsonl", 3)
    p = _write(tmp_path / "x.jsonl", BOM + b"".join(lines).replace(b"\n", b"\r\n"))
    assert len(read_examples(p)) == 3
    _write(p, lines[0] + b"[1]\n" + lines[2])
    with pytest.raises(DataFormatError, match=r"x\.jsonl:2: \(expected a JSON object, got list\)"):
        read_examples(p)
    rec = json.loads(lines[1])
    _write(p, lines[0] + _jsonl([_set(rec, "summary", ["s"])]) + lines[2])
    with pytest.raises(DataFormatError, match=r"x\.jsonl:2: field 'summary' is list, not text"):
        read_examples(p)
    with caplog.at_level(logging.WARNING, logger="glm.data.seq2seq"):
        assert len(read_examples(p, bad_rows="skip")) == 2
    assert re.search(r"skipped 1 bad rows \(the first: .*x\.jsonl:2: field 'summary' is list", caplog.text)
    _write(p, b"\n")
    with pytest.raises(DataFormatError, match=r"x\.jsonl: no usable examples"):
        read_examples(p, bad_rows="skip")
    # paired line files
    _write(tmp_path / "v.source", b"first article\nsecond article\nthird\n")
    _write(tmp_path / "v.target", b"one\ntwo\n")
    with pytest.raises(DataFormatError, match=r"v\.source:3 is the first line without a partner"):
        read_examples(tmp_path / "v", "lines")
    _write(tmp_path / "v.target", b"one\ntw\x00o\nthree\n")
    with pytest.raises(DataFormatError, match=r"v\.target:2: NUL byte"):
        read_examples(tmp_path / "v", "lines")
    _write(tmp_path / "v.target", BOM + b"one\r\ntwo\r\nthree\r\n")
    assert [e.target for e in read_examples(tmp_path / "v", "lines")] == ["one", "two", "three"]


# ------------------------------------------------------------------------------------------------
# Tokenizer files: BERT vocab.txt, GPT-2 vocab.json + merges.txt, sentencepiece .model
# ------------------------------------------------------------------------------------------------
def test_bert_vocab_defects(tmp_path: Path) -> None:
    from glm.tokenizer import WordPieceTokenizer

    vocab = need_data("tokenizers/bert-base-uncased/vocab.txt").read_bytes()
    lines = vocab.split(b"\n")
    clean = WordPieceTokenizer(_write(tmp_path / "vocab.txt", vocab))
    bom = WordPieceTokenizer(_write(tmp_path / "bom" / "vocab.txt", BOM + vocab.replace(b"\n", b"\r\n")))
    assert bom.special_ids == clean.special_ids and bom.encode("hello world") == clean.encode("hello world")
    for data, match in (
        (b"\n".join(lines[:500] + [b"caf\xe9"] + lines[500:]), r"vocab\.txt:501: not valid UTF-8"),
        (b"\n".join(lines[:500] + [b""] + lines[500:]), r"vocab\.txt:501: empty token"),
        (b"\n".join(lines[:29999] + [b"the"] + lines[29999:]), r"vocab\.txt:30000: token 'the' repeats line"),
        (b"", r"vocab\.txt: empty vocabulary"),
    ):
        with pytest.raises(DataFormatError, match=match):
            WordPieceTokenizer(_write(tmp_path / "vocab.txt", data))


def test_gpt2_files_defects(tmp_path: Path) -> None:
    from glm.tokenizer import GPT2Tokenizer

    vocab = need_data("tokenizers/gpt2/vocab.json").read_bytes()
    merges = need_data("tokenizers/gpt2/merges.txt").read_bytes()
    m = merges.split(b"\n")  # line 1 is the "#version" header

    def build(v: bytes = vocab, mg: bytes = merges) -> GPT2Tokenizer:
        return GPT2Tokenizer(_write(tmp_path / "vocab.json", v), _write(tmp_path / "merges.txt", mg))

    for v, match in (
        (b'["a", "b"]', r"vocab\.json: expected a non-empty JSON object token -> id, got list"),
        (vocab[: len(vocab) // 2], r"vocab\.json:1: malformed JSON"),
        (vocab.replace(b'"!": 0', b'"!": "0"', 1), r"vocab\.json: field '!' must be an integer id"),
        (vocab.replace(b'"!": 0', b'"!": 1', 1), r"vocab\.json: ids must be 0\.\.\d+ once each; id 0"),
        (b"", r"vocab\.json: empty file"),
    ):
        with pytest.raises(DataFormatError, match=match):
            build(v=v)
    for mg, match in (
        (b"\n".join(m[:10] + [b"onlyone"] + m[10:]), r"merges\.txt:11: expected two tokens separated by"),
        (b"\n".join(m[:10] + [b"a b c"] + m[10:]), r"merges\.txt:11: expected two tokens"),
        (b"\n".join(m[:10] + [b"zzqq xxyy"] + m[10:]), r"merges\.txt:11: token 'zzqq' of merge 'zzqq xxyy'"),
        (b"\n".join(m[:10] + [b"\xff x"] + m[10:]), r"merges\.txt:11: not valid UTF-8"),
        (m[0] + b"\n", r"merges\.txt: no merge rules"),
    ):
        with pytest.raises(DataFormatError, match=match):
            build(mg=mg)
    # a BOM on the header line and CRLF endings still give the same merges (BPE built once: ~1 s)
    assert build(mg=BOM + merges.replace(b"\n", b"\r\n")).encode(" hello there") == [23748, 612]


def test_sentencepiece_and_tokenizer_json_defects(tmp_path: Path) -> None:
    from glm.tokenizer import SentencePieceTokenizer, load_tokenizer

    model = need_data("tokenizers/albert-base-v2/spiece.model").read_bytes()
    for data, match in ((b"", r"bad\.model: empty file"), (model[:1000], r"bad\.model: not a sentencepiece")):
        with pytest.raises(DataFormatError, match=match):
            SentencePieceTokenizer(_write(tmp_path / "bad.model", data))
    _write(tmp_path / "tok" / "tokenizer.json", b"\xff{}")
    with pytest.raises(DataFormatError, match=r"tokenizer\.json:1: not valid UTF-8"):
        load_tokenizer(tmp_path / "tok")


# ------------------------------------------------------------------------------------------------
# Checkpoint inputs: export model_config.yaml, original tracker file, HF config.json, .pt files
# ------------------------------------------------------------------------------------------------
def test_model_config_yaml_defects(tmp_path: Path) -> None:
    import yaml

    from glm.checkpoint.io import load_export, read_model_config
    from glm.errors import CheckpointError
    from glm.model import GLMConfig

    good = yaml.safe_dump(GLMConfig.from_name("glm-tiny").to_dict(), sort_keys=False)
    lines = good.splitlines(keepends=True)
    line_of = {ln.split(":")[0]: i for i, ln in enumerate(lines, start=1)}
    p = _write(tmp_path / "model_config.yaml", good)
    assert read_model_config(p) == GLMConfig.from_name("glm-tiny")
    hs = line_of["hidden_size"]
    for data, match in (
        (good + "hiden_size: 64\n", rf":{len(lines) + 1}: unknown field 'hiden_size'"),
        (good.replace("hidden_size: 64", "hidden_size: abc"), rf":{hs}: field 'hidden_size': .*positive int"),
        (good.replace("mlp: gelu", "mlp: [gelu]"), rf":{line_of['mlp']}: field 'mlp'"),
        (good + "hidden_size: 32\n", rf":{len(lines) + 1}: field 'hidden_size' repeats line {hs}"),
        ("a: [\n", r":2: not valid YAML"),
        ("- 1\n- 2\n", r":1: expected a mapping of GLMConfig fields, got list"),
        ("", r": empty file"),
        (good.encode()[:30] + b"\xff" + good.encode()[30:], rf":{good[:30].count(chr(10)) + 1}: not valid"),
    ):
        _write(p, data)
        with pytest.raises(CheckpointError, match=r"model_config\.yaml" + match):
            read_model_config(p)
    # through load_export, before the weights are touched
    _write(tmp_path / "model.pt", b"")
    _write(p, good + "foo: 1\n")
    with pytest.raises(CheckpointError, match=r"model_config\.yaml:\d+: unknown field 'foo'"):
        load_export(tmp_path)


def test_checkpoint_tracker_hf_config_and_pt_defects(tmp_path: Path) -> None:
    from glm.checkpoint.convert_hf import load_hf
    from glm.checkpoint.convert_original import original_shard_files
    from glm.checkpoint.io import safe_load
    from glm.errors import CheckpointError

    root = tmp_path / "orig"
    shard = _write(root / "release" / "mp_rank_00_model_states.pt", b"")
    tracker = root / "latest_checkpointed_iteration.txt"
    _write(tracker, BOM + b"release\r\n")
    assert original_shard_files(root) == [shard]
    for data, match in (
        (b"release\nextra\n", r"iteration\.txt:2: unexpected second line 'extra'"),
        (b"../release\n", r"iteration\.txt:1: tag '\.\./release' is not a directory name"),
        (b"\xff\xfe", r"iteration\.txt:1: not valid UTF-8"),
        (b"\n\n", r"iteration\.txt: empty"),
    ):
        _write(tracker, data)
        with pytest.raises(CheckpointError, match=match):
            original_shard_files(root)
    hf = tmp_path / "hf"
    config = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "max_sequence_length": 64}
    cases = (("hidden_size", "abc", "'abc'"), ("num_layers", [2], r"\[2\]"), ("vocab_size", True, "True"))
    for key, value, got in cases:
        text = json.dumps({**config, key: value}, indent=2)
        line = text[: text.index(f'"{key}"')].count("\n") + 1
        _write(hf / "config.json", text)
        msg = rf"config\.json:{line}: field '{key}' must be int, got {got}"
        with pytest.raises(CheckpointError, match=msg):
            load_hf(hf)
    _write(hf / "config.json", b"[1]")
    with pytest.raises(CheckpointError, match=r"config\.json: expected a JSON object"):
        load_hf(hf)
    junk = _write(tmp_path / "junk.pt", b"not a checkpoint at all " * 10)
    with pytest.raises(CheckpointError, match=r"junk\.pt: not a torch checkpoint"):
        safe_load(junk)


def test_download_status_of_a_directory(tmp_path: Path) -> None:
    from glm.data.download import REGISTRY, fetch, file_status
    from glm.errors import DownloadError

    entry = REGISTRY["lambada"][0]
    (tmp_path / entry.target).mkdir(parents=True)
    assert file_status(entry, tmp_path) == "not a file"
    with pytest.raises(DownloadError, match="not a regular file"):
        fetch(entry, tmp_path, progress=False)


# ------------------------------------------------------------------------------------------------
# End to end: run.py reports bad input in one line (exit 2), the traceback only in the FAILED marker
# ------------------------------------------------------------------------------------------------
def test_run_py_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "tokenizers").mkdir(parents=True)
    bert_dir = need_data("tokenizers/bert-base-uncased/vocab.txt").parent
    (root / "tokenizers" / "bert-base-uncased").symlink_to(bert_dir)
    for split, n in (("train", 8), ("val", 2), ("test", 2)):
        lines = _head(f"superglue/RTE/{split}.jsonl", n)
        if split == "val":
            lines[1] = lines[1][:30] + b"\xe9" + lines[1][30:]
        _write(root / "superglue" / "RTE" / f"{split}.jsonl", b"".join(lines))
    r = run_cli(
        [
            "+experiment=superglue_rte",
            "model=glm_tiny",
            "logger=none",
            "trainer.max_epochs=1",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        tmp_path,
        env={"GLM_DATA_ROOT": str(root)},
    )
    assert r.returncode == 2, r.stderr[-3000:]
    assert re.search(r"Input error: .*RTE/val\.jsonl:2: not valid UTF-8 \(byte 0xe9 at column 31", r.stderr)
    assert "Traceback" not in r.stderr and "Traceback" in (tmp_path / "run" / "FAILED").read_text()
