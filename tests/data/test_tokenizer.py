"""Tokenizers: GLM special ids (contracts.md, docs/original-glm.md §4.1), exact round trips, caching, BERT/GPT-2.

The SentencePiece model is trained once per module (vocab 600 on 300 KB of two Gutenberg books,
~0.2 s). BERT/GPT-2 expectations are looked up by hand in the vocabulary files, not in the library.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

import glm.tokenizer.training as training
from glm.data.paths import need_shared_data
from glm.errors import DataFormatError
from glm.tokenizer import (
    GPT2Tokenizer,
    SentencePieceTokenizer,
    WordPieceTokenizer,
    ensure_tokenizer,
    load_tokenizer,
    pad_vocab_size,
    train_sentencepiece,
)
from glm.tokenizer.cli import main

SP_IDS = {
    "eos": 0,
    "pad": 0,
    "unk": 1,
    "cls": 2,
    "sep": 3,
    "mask": 4,
    "smask": 5,
    "gmask": 6,
    "sop": 7,
    "eop": 8,
    "dblock": 9,
}
SP_STRINGS = [
    "<|endoftext|>",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "[sMASK]",
    "[gMASK]",
    "<|startofpiece|>",
    "<|endofpiece|>",
    "[dBLOCK]",
]
# docs/original-glm.md §4.1 (BERT with task mask; dBLOCK by the original append order, see docs/tokenizers.md)
BERT_IDS = {
    "eos": 0,
    "pad": 0,
    "unk": 100,
    "cls": 101,
    "sep": 102,
    "mask": 103,
    "sop": 30522,
    "eop": 30523,
    "gmask": 30524,
    "smask": 30525,
    "dblock": 30526,
}
GPT2_IDS = {
    "eos": 50256,
    "pad": 50256,
    "sop": 50257,
    "eop": 50258,
    "cls": 50259,
    "mask": 50260,
    "sep": 50261,
    "unk": 50262,
    "gmask": 50263,
    "smask": 50264,
    "dblock": 50265,
}
VOCAB = 600


def _books() -> list[Path]:
    return [
        need_shared_data("gutenberg/11-0.txt", "Alice (Gutenberg)"),
        need_shared_data("gutenberg/84-0.txt", "Frankenstein (Gutenberg)"),
    ]


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sp") / "tok"
    train_sentencepiece(_books(), out, vocab_size=VOCAB, max_bytes=300_000, quiet=True, progress=False)
    return out


@pytest.fixture(scope="module")
def sp(sp_dir) -> SentencePieceTokenizer:
    return SentencePieceTokenizer(sp_dir / "tokenizer.model")


@pytest.fixture(scope="module")
def bert() -> WordPieceTokenizer:
    return WordPieceTokenizer(need_shared_data("tokenizers/bert-base-uncased/vocab.txt", "BERT vocab"))


@pytest.fixture(scope="module")
def gpt2() -> GPT2Tokenizer:
    d = need_shared_data("tokenizers/gpt2", "GPT-2 vocab")
    return GPT2Tokenizer(d / "vocab.json", d / "merges.txt")


def _ids(tok) -> dict[str, int | None]:
    return {name: getattr(tok, f"{name}_id") for name in SP_IDS}


# ---------------------------------------------------------------------------------------------
# SentencePiece
# ---------------------------------------------------------------------------------------------
def test_sp_special_ids_and_pieces(sp):
    assert _ids(sp) == SP_IDS
    assert [sp.id_to_piece(i) for i in range(10)] == SP_STRINGS
    assert sp.num_text_tokens == VOCAB
    assert sp.vocab_size == 640  # 600 pieces padded up to a multiple of 128


def test_pad_vocab_size_rule():
    # docs/original-glm.md §4.1: BERT 30522+4 -> 30592, GPT-2 50257+9 -> 50304; contracts: 8000 -> 8064
    assert [pad_vocab_size(n) for n in (1, 128, 129, 8000, 30526, 50266)] == [
        128,
        128,
        256,
        8064,
        30592,
        50304,
    ]


def test_sp_training_reads_crlf_and_bom_as_plain_text(sp):
    # The books are CRLF with a BOM: no learned piece may carry a CR or the BOM.
    pieces = [sp.id_to_piece(i) for i in range(sp.num_text_tokens)]
    assert not [p for p in pieces if "\r" in p or "\ufeff" in p]
    assert "<0x0D>" in pieces  # CR still encodes (byte fallback), see the round-trip test


ODD_TEXTS = [
    "  two leading spaces, then\ttabs\t\tand trailing   ",
    "naïve café — “curly quotes” and ‘single’, 日本語, emoji 🐳, Ωμέγα",
    "line one\r\nline two\r\n\r\nafter a blank CRLF line\rold-mac CR",
    " ",
    "\n\n\n",
    "a",
]


def test_sp_round_trip_is_exact_on_real_and_odd_text(sp):
    raw = _books()[1].read_bytes()[:40_000].decode("utf-8", errors="ignore")  # BOM + CRLF kept
    for text in [raw, *ODD_TEXTS]:
        ids = sp.encode(text)
        assert sp.decode(ids) == text
        assert sp.decode(ids, skip_special_tokens=False) == text
    # pieces are learned, not just characters: with only ~330 merges English already needs about
    # one id per two bytes (a character-level model would need one per byte)
    assert len(sp.encode(raw)) < 0.6 * len(raw.encode("utf-8"))


def test_sp_special_strings_in_text_are_single_ids(sp):
    for i, s in enumerate(SP_STRINGS):
        ids = sp.encode(f"The{s}cat")
        assert ids == sp.encode("The") + [i] + sp.encode("cat"), s
        assert ids.count(i) == 1
        assert sp.decode(ids, skip_special_tokens=False) == f"The{s}cat"
        assert sp.decode(ids) == "Thecat"  # specials (unk included) skipped
    assert sp.encode("[MASK]") == [4]
    # no whitespace absorption: the space before the mask stays a token of its own
    assert sp.encode("a [MASK]") == sp.encode("a ") + [4]


def test_sp_empty_batch_and_pickle(sp):
    assert sp.encode("") == []
    texts = ["", "Alice was beginning to get very tired", "x[UNK]y", "[gMASK] go", *ODD_TEXTS]
    assert sp.encode_batch(texts) == [sp.encode(t) for t in texts]
    clone = pickle.loads(pickle.dumps(sp))  # DataLoader workers
    assert clone.encode_batch(texts) == sp.encode_batch(texts)


def test_sp_decode_accepts_arrays_drops_padding_and_rejects_out_of_range(sp):
    ids = sp.encode("Down the Rabbit-Hole")
    assert sp.decode(np.array(ids)) == "Down the Rabbit-Hole"
    assert sp.decode(ids + [sp.vocab_size - 1]) == "Down the Rabbit-Hole"  # a padding row
    assert sp.id_to_piece(sp.vocab_size - 1) == ""
    with pytest.raises(ValueError, match="outside"):
        sp.decode([sp.vocab_size])
    with pytest.raises(ValueError, match="outside"):
        sp.id_to_piece(-1)


def test_sp_save_and_load_give_identical_ids(sp, sp_dir, tmp_path):
    text = _books()[0].read_text(encoding="utf-8-sig")[:5000] + " [sMASK] <|endofpiece|>"
    expected = sp.encode(text)
    saved = sp.save(tmp_path / "export")
    meta = json.loads((saved / "tokenizer.json").read_text())
    assert meta["kind"] == "sentencepiece" and meta["vocab_size"] == 640 and meta["special_ids"]["mask"] == 4
    for spec in (saved, saved / "tokenizer.model", {"kind": "sentencepiece", "path": str(saved)}, sp_dir):
        tok = load_tokenizer(spec)
        assert isinstance(tok, SentencePieceTokenizer)
        assert tok.encode(text) == expected and _ids(tok) == SP_IDS


def test_load_rejects_edited_metadata_and_foreign_models(sp, tmp_path):
    saved = sp.save(tmp_path / "export")
    meta = json.loads((saved / "tokenizer.json").read_text())
    meta["special_ids"]["mask"] = 5
    (saved / "tokenizer.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="special_ids"):
        load_tokenizer(saved)
    (saved / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"tokenizer\.json:1: malformed JSON"):
        load_tokenizer(saved)
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    # ALBERT's model has its own special ids: refused with the reason
    albert = need_shared_data("tokenizers/albert-base-v2/spiece.model", "ALBERT sentencepiece model")
    with pytest.raises(ValueError, match="not trained with glm.tokenizer.train_sentencepiece"):
        load_tokenizer(albert)
    with pytest.raises(ValueError, match="'kind' is 'wordpiece'"):
        load_tokenizer({"kind": "wordpiece", "path": str(saved)})


def test_ensure_tokenizer_trains_once_then_reuses(tmp_path, monkeypatch):
    calls = []
    real = training._train_into

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "_train_into", counting)
    out = tmp_path / "cache" / "tok"
    books = _books()[:1]
    kw = {"vocab_size": 500, "max_bytes": 100_000, "quiet": True, "progress": False}
    first = ensure_tokenizer(out, books, **kw)
    mtime = (out / "tokenizer.model").stat().st_mtime_ns
    second = ensure_tokenizer(out, books, **kw)
    assert len(calls) == 1
    assert (out / "tokenizer.model").stat().st_mtime_ns == mtime
    assert second.encode("Alice said [MASK].") == first.encode("Alice said [MASK].")
    assert sorted(p.name for p in out.parent.iterdir()) == ["tok"]  # no temp dir left behind
    with pytest.raises(ValueError, match="trained with"):
        ensure_tokenizer(out, books, **{**kw, "vocab_size": 520})
    assert len(calls) == 1


def test_train_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="matches no file"):
        train_sentencepiece([str(tmp_path / "*.txt")], tmp_path / "o", progress=False)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\n\xff\xfe broken\n")
    with pytest.raises(ValueError, match=r"bad\.txt:2: not valid UTF-8"):
        train_sentencepiece([bad], tmp_path / "o", progress=False)


def test_cli_train_and_encode(tmp_path, capsys):
    book = _books()[0]
    out = tmp_path / "cli"
    rc = main(
        [
            "train",
            "--input",
            str(book.parent / "11-*.txt"),
            "--out",
            str(out),
            "--vocab-size",
            "500",
            "--max-bytes",
            "100000",
        ]
    )
    assert rc == 0 and (out / "tokenizer.model").is_file() and (out / "tokenizer.json").is_file()
    assert load_tokenizer(out).num_text_tokens == 500
    capsys.readouterr()
    assert main(["encode", "--tokenizer", str(out), "a[MASK]"]) == 0
    assert "4]" in capsys.readouterr().out
    assert main(["train", "--input", str(tmp_path / "none*.txt"), "--out", str(out)]) == 1
    assert "matches no file" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# BERT WordPiece
# ---------------------------------------------------------------------------------------------
def _bert_vocab() -> list[str]:
    path = need_shared_data("tokenizers/bert-base-uncased/vocab.txt", "BERT vocab")
    return path.read_text(encoding="utf-8").split("\n")


def test_bert_special_ids_match_spec(bert):
    assert _ids(bert) == BERT_IDS
    assert bert.num_text_tokens == 30527 and bert.vocab_size == 30592
    assert [bert.id_to_piece(i) for i in (0, 100, 101, 102, 103, 30522, 30524)] == [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "<|startofpiece|>",
        "[gMASK]",
    ]


def test_bert_without_task_mask_has_no_gmask(tmp_path):
    vocab = need_shared_data("tokenizers/bert-base-uncased/vocab.txt", "BERT vocab")
    tok = WordPieceTokenizer(vocab, task_mask=False)
    assert tok.gmask_id is None and tok.smask_id is None
    assert (tok.sop_id, tok.eop_id, tok.dblock_id, tok.vocab_size) == (30522, 30523, 30524, 30592)
    ids = tok.encode("a [gMASK] b")
    assert len(ids) > 3 and not any(i >= 30522 for i in ids)  # plain text, not a command token
    loaded = load_tokenizer(tok.save(tmp_path / "b"))
    assert loaded.gmask_id is None and loaded.encode("a [gMASK] b") == ids


def test_bert_encodings_match_vocab_lookup(bert):
    v = _bert_vocab()
    assert bert.encode("hello world") == [v.index("hello"), v.index("world")] == [7592, 2088]
    # lowercasing, accent stripping, punctuation split and WordPiece continuation pieces
    assert bert.encode("Résumé, don't!") == [v.index(w) for w in ("resume", ",", "don", "'", "t", "!")]
    assert bert.encode("unaffable") == [v.index(w) for w in ("una", "##ffa", "##ble")]
    assert bert.encode("the [MASK] sat [sMASK]") == [v.index("the"), 103, v.index("sat"), 30525]
    assert bert.encode("   ") == [] and bert.encode("") == []
    assert bert.decode(bert.encode("the [MASK] sat")) == "the sat"


# ---------------------------------------------------------------------------------------------
# GPT-2 BPE
# ---------------------------------------------------------------------------------------------
def _gpt2_vocab() -> dict[str, int]:
    path = need_shared_data("tokenizers/gpt2/vocab.json", "GPT-2 vocab")
    return json.loads(path.read_text(encoding="utf-8"))


def test_gpt2_special_ids_match_spec(gpt2):
    assert _ids(gpt2) == GPT2_IDS
    assert gpt2.num_text_tokens == 50266 and gpt2.vocab_size == 50304


def test_gpt2_encodings_match_vocab_lookup(gpt2):
    v = _gpt2_vocab()
    assert gpt2.encode("hello world") == [v["hello"], v["\u0120world"]] == [31373, 995]
    assert gpt2.encode("Hello world") == [15496, 995]
    # masks absorb the whitespace on their left (docs/original-glm.md §4.2); other specials do not
    assert gpt2.encode("a  [MASK] b") == [v["a"], 50260, v["\u0120b"]]
    assert gpt2.encode("a [gMASK]") == [v["a"], 50263]
    assert gpt2.encode("a [CLS]") == [v["a"], v["\u0120"], 50259]
    assert gpt2.encode("end<|endoftext|>") == [v["end"], 50256]
    assert gpt2.encode(" \n ") == []


def test_gpt2_round_trip_on_real_text(gpt2):
    path = need_shared_data("lambada/lambada_test.jsonl", "LAMBADA test")
    texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()[:50]]
    texts += [t for t in ODD_TEXTS if t.strip()]
    encoded = gpt2.encode_batch(texts)
    assert encoded == [gpt2.encode(t) for t in texts]
    assert [gpt2.decode(ids) for ids in encoded] == texts  # byte-level BPE is lossless


def test_gpt2_save_load_and_dict_spec(gpt2, tmp_path):
    text = "The [MASK] of the <|startofpiece|> story [sMASK]"
    saved = gpt2.save(tmp_path / "g")
    assert sorted(p.name for p in saved.iterdir()) == ["merges.txt", "tokenizer.json", "vocab.json"]
    for spec in (saved, {"kind": "gpt2", "path": str(saved)}):
        tok = load_tokenizer(spec)
        assert (
            isinstance(tok, GPT2Tokenizer) and tok.encode(text) == gpt2.encode(text) and _ids(tok) == GPT2_IDS
        )
    no_task = load_tokenizer({"kind": "gpt2", "path": str(saved), "task_mask": False})
    assert no_task.gmask_id is None and no_task.dblock_id == 50263
    shutil.rmtree(saved)


def test_a_jsonl_corpus_trains_on_its_text_field_not_on_the_json(tmp_path: Path) -> None:
    """The same texts as .jsonl records (with other fields beside them) and as a .txt file train the same
    tokenizer: the records' keys, quotes and other fields never reach the training text."""
    from glm.tokenizer.training import train_sentencepiece

    texts = [
        f"the {w} cat sat on the {w} mat number {i}\nand then it slept"
        for i, w in enumerate(["red", "big", "old"] * 40)
    ]
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"id": i, "body": t, "meta": "zqzqzq xjxjxj"}) + "\n" for i, t in enumerate(texts))
    )
    txt = tmp_path / "corpus.txt"
    txt.write_text("".join(t + "\n" for t in texts))
    a = train_sentencepiece(
        [jsonl], tmp_path / "a", vocab_size=320, text_field="body", progress=False, quiet=True
    )
    b = train_sentencepiece([txt], tmp_path / "b", vocab_size=320, progress=False, quiet=True)
    pieces_a = [a.id_to_piece(i) for i in range(a.num_text_tokens)]
    assert pieces_a == [b.id_to_piece(i) for i in range(b.num_text_tokens)]
    assert not any(p in "".join(pieces_a) for p in ('"body"', "zqzq", "xjxj", "meta"))
    with pytest.raises(DataFormatError, match=r"corpus.jsonl:1: .*'text'"):
        train_sentencepiece([jsonl], tmp_path / "c", vocab_size=320, progress=False, quiet=True)
