"""RoBERTa BPE and GLM Chinese SentencePiece tokenizers (docs/original-glm.md §4.1, §4.2, §11).

The released files (RoBERTa's vocab.json/merges.txt, GLM's cog-pretrain.model) are not available
offline, so the tests build their own: a hand-written byte-level BPE in RoBERTa's id layout (its
encodings checked by hand against the merges) and a 2000-piece SentencePiece model trained in ~0.1 s.
The ids are checked against the original's rule relative to those files, and the original's real-size numbers
are checked on a generated 50265-entry vocab.json and by pure arithmetic for 50000 pieces.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import pytest

from glm.data.paths import need_shared_data
from glm.model.config import GLMConfig
from glm.tokenizer import (
    GLMChineseTokenizer,
    RobertaTokenizer,
    chinese_special_ids,
    load_tokenizer,
    pad_vocab_size,
)

NAMES = ("eos", "pad", "unk", "cls", "sep", "mask", "smask", "gmask", "sop", "eop", "dblock")


def _ids(tok) -> dict[str, int | None]:
    return {name: getattr(tok, f"{name}_id") for name in NAMES}


# ---------------------------------------------------------------------------------------------
# RoBERTa
# ---------------------------------------------------------------------------------------------
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("e", "n"), ("Ġ", "en")]


def _write_roberta(directory: Path, size: int | None = None) -> dict[str, int]:
    """vocab.json + merges.txt in RoBERTa's layout: <s> <pad> </s> <unk>, the 256 byte symbols, the
    merged tokens, fillers up to ``size`` entries when given, and <mask> last."""
    from tokenizers import pre_tokenizers

    tokens = ["<s>", "<pad>", "</s>", "<unk>"]
    tokens += sorted(pre_tokenizers.ByteLevel.alphabet()) + [a + b for a, b in MERGES]
    if size is not None:
        tokens += [f"filler{k}" for k in range(size - 1 - len(tokens))]
    tokens.append("<mask>")
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == len(tokens) == (size or len(tokens))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES)
    (directory / "merges.txt").write_text(merges, encoding="utf-8")
    return vocab


@pytest.fixture(scope="module")
def roberta_files(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    d = tmp_path_factory.mktemp("roberta")
    return d, _write_roberta(d)


@pytest.fixture(scope="module")
def roberta(roberta_files) -> RobertaTokenizer:
    d, _ = roberta_files
    return RobertaTokenizer(d / "vocab.json", d / "merges.txt")


def _roberta_rule(v: int, task_mask: bool = True) -> dict[str, int | None]:
    # docs/original-glm.md §4.1 relative to a vocabulary of v entries (<mask> last); dBLOCK after the task masks
    appended = v + 2 + (2 if task_mask else 0)
    return {
        "eos": 2,
        "pad": 2,
        "unk": 3,
        "cls": 0,
        "sep": 2,
        "mask": v - 1,
        "sop": v,
        "eop": v + 1,
        "gmask": v + 2 if task_mask else None,
        "smask": v + 3 if task_mask else None,
        "dblock": appended,
    }


def test_roberta_special_ids_follow_the_vocabulary(roberta, roberta_files):
    _, v = roberta_files
    assert _ids(roberta) == _roberta_rule(len(v))
    assert roberta.num_text_tokens == len(v) + 5 and roberta.vocab_size == pad_vocab_size(len(v) + 5)
    assert [roberta.id_to_piece(i) for i in (0, 2, 3, len(v) - 1, len(v), len(v) + 2)] == [
        "<s>",
        "</s>",
        "<unk>",
        "<mask>",
        "<|startofpiece|>",
        "[gMASK]",
    ]


def test_roberta_real_size_vocab_gives_the_spec_table(tmp_path):
    _write_roberta(tmp_path, size=50265)
    tok = RobertaTokenizer(tmp_path / "vocab.json", tmp_path / "merges.txt")
    expected = {"eos": 2, "pad": 2, "sep": 2, "cls": 0, "unk": 3, "mask": 50264}
    assert _ids(tok) == {
        **expected,
        "sop": 50265,
        "eop": 50266,
        "gmask": 50267,
        "smask": 50268,
        "dblock": 50269,
    }
    assert tok.vocab_size == 50304 == GLMConfig.from_name("glm-roberta-large").vocab_size
    # glm-roberta-large's finetuning config has no task masks (docs/original-glm.md §11): same sop/eop and V
    no_task = RobertaTokenizer(tmp_path / "vocab.json", tmp_path / "merges.txt", task_mask=False)
    assert (no_task.sop_id, no_task.eop_id, no_task.gmask_id, no_task.dblock_id) == (
        50265,
        50266,
        None,
        50267,
    )
    assert no_task.vocab_size == 50304


def test_roberta_encodings_match_the_merges(roberta, roberta_files):
    _, v = roberta_files
    mask = len(v) - 1
    # by hand from MERGES: " the" -> Ġ t h e -> Ġt he -> Ġthe; "the" has no "t h" merge
    assert roberta.encode(" the") == [v["Ġthe"]]
    assert roberta.encode("the") == [v["t"], v["he"]]
    assert roberta.encode("then") == [v["t"], v["he"], v["n"]]  # "h e" (rank 1) before "e n" (rank 3)
    # command labels written in text are the vocabulary's specials; masks absorb left whitespace
    assert roberta.encode("the [MASK] end") == [v["t"], v["he"], mask, v["Ġen"], v["d"]]
    assert roberta.encode("a  [gMASK]") == [v["a"], len(v) + 2]
    assert roberta.encode("a [sMASK]") == [v["a"], len(v) + 3]
    assert roberta.encode("a [CLS]") == [v["a"], v["Ġ"], 0]  # only the masks absorb whitespace
    assert roberta.encode("[CLS]a<|endoftext|>[SEP][UNK]") == [0, v["a"], 2, 2, 3]
    assert roberta.encode("<|startofpiece|>a<|endofpiece|>") == [len(v), v["a"], len(v) + 1]
    assert roberta.encode("<mask>") == [mask]  # the entry itself, as in the HF port
    assert roberta.encode("") == [] and roberta.encode(" \n\t ") == []
    texts = ["the [MASK] end", "", "  ", "a [CLS]", "<|endoftext|>"]
    assert roberta.encode_batch(texts) == [roberta.encode(t) for t in texts]


def test_roberta_decode(roberta):
    text = "Théo's  café, 日本 🐳\r\n"  # byte-level BPE: anything round-trips, byte by byte
    assert roberta.decode(roberta.encode(text)) == text
    ids = roberta.encode("[CLS]the [MASK] end<|endoftext|>")
    assert roberta.decode(ids) == "the end"
    assert roberta.decode(ids, skip_special_tokens=False) == "<s>the<mask> end</s>"


def test_roberta_save_load_round_trip(roberta, tmp_path):
    text = "[CLS] the [MASK] then <|startofpiece|> [sMASK]"
    saved = roberta.save(tmp_path / "r")
    assert sorted(p.name for p in saved.iterdir()) == ["merges.txt", "tokenizer.json", "vocab.json"]
    meta = json.loads((saved / "tokenizer.json").read_text())
    assert meta["kind"] == "roberta" and meta["special_ids"]["mask"] == roberta.mask_id
    for spec in (saved, {"kind": "roberta", "path": str(saved)}):
        tok = load_tokenizer(spec)
        assert isinstance(tok, RobertaTokenizer) and _ids(tok) == _ids(roberta)
        assert tok.encode(text) == roberta.encode(text)
    no_task = load_tokenizer(
        RobertaTokenizer(saved / "vocab.json", saved / "merges.txt", task_mask=False).save(tmp_path / "n")
    )
    assert no_task.gmask_id is None and no_task.encode("[gMASK]") != [roberta.gmask_id]
    meta["special_ids"]["sop"] += 1  # a changed vocabulary is caught on load
    (saved / "tokenizer.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="special_ids"):
        load_tokenizer(saved)
    with pytest.raises(ValueError, match="roberta tokenizer must be the dir"):
        load_tokenizer({"kind": "roberta", "path": str(saved / "vocab.json")})


def test_roberta_preset_matches_data_tokenizer(tmp_path):
    # model=glm_roberta_large + data.tokenizer={kind: roberta, path: DIR}: the datamodules hand the
    # DictConfig to load_tokenizer, and the pipeline keeps the preset's V when it equals the tokenizer's
    from omegaconf import OmegaConf

    from glm.run.validation import check_tokenizer

    _write_roberta(tmp_path / "roberta", size=50265)
    cfg = OmegaConf.create(
        {
            "model": {"preset": "glm-roberta-large"},
            "data": {"tokenizer": {"kind": "roberta", "path": str(tmp_path / "roberta"), "task_mask": False}},
        }
    )
    tok = load_tokenizer(cfg.data.tokenizer)
    assert isinstance(tok, RobertaTokenizer) and tok.gmask_id is None
    model = GLMConfig.from_dict(OmegaConf.to_container(cfg.model))
    assert model.vocab_size == tok.vocab_size == 50304
    check_tokenizer(tok, model)


# ---------------------------------------------------------------------------------------------
# GLM Chinese SentencePiece
# ---------------------------------------------------------------------------------------------
PIECES = 2000

# docs/original-glm.md §4.1 with N = 50000 pieces
LARGE_CHINESE = {
    "eos": 50000,
    "sep": 50001,
    "cls": 50002,
    "mask": 50003,
    "unk": 50004,
    "sop": 50006,
    "eop": 50007,
    "smask": 50008,
    "gmask": 50009,
    "dblock": 50010,
}
TEN_B_CHINESE = {**LARGE_CHINESE, "gmask": 50007, "smask": 50008, "dblock": 50009}


def test_chinese_id_tables_for_50000_pieces_are_the_spec():
    for fix, table, preset in (
        (True, LARGE_CHINESE, "glm-large-chinese"),
        (False, TEN_B_CHINESE, "glm-10b-chinese"),
    ):
        ids = chinese_special_ids(50000, fix_command_token=fix)
        assert ids == table
        assert pad_vocab_size(max(ids.values()) + 1) == 50048 == GLMConfig.from_name(preset).vocab_size
    # without task masks dBLOCK takes the next free id, which in the unfixed layout would be eop's
    assert chinese_special_ids(50000, True, task_mask=False) == {
        **LARGE_CHINESE,
        "gmask": None,
        "smask": None,
        "dblock": 50008,
    }
    assert chinese_special_ids(50000, False, task_mask=False, decoder_mask=False)["dblock"] is None
    with pytest.raises(ValueError, match="eop's id 50007"):
        chinese_special_ids(50000, False, task_mask=False)


@pytest.fixture(scope="module")
def chinese_model(tmp_path_factory) -> Path:
    """A plain SentencePiece BPE model (defaults: dummy prefix, <unk>=0 <s>=1 </s>=2) like a foreign
    release; whitespace runs are kept so that a mask absorbing the space on its left is observable."""
    import sentencepiece as spm

    book = need_shared_data("gutenberg/11-0.txt", "Alice (Gutenberg)")
    lines = book.read_text(encoding="utf-8-sig")[:300_000].splitlines()
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        vocab_size=PIECES,
        model_type="bpe",
        remove_extra_whitespaces=False,
        num_threads=2,
        minloglevel=2,
    )
    path = tmp_path_factory.mktemp("zh") / "cog-pretrain.model"
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture(scope="module")
def large_zh(chinese_model) -> GLMChineseTokenizer:
    return GLMChineseTokenizer(chinese_model, fix_command_token=True)


@pytest.fixture(scope="module")
def ten_b_zh(chinese_model) -> GLMChineseTokenizer:
    return GLMChineseTokenizer(chinese_model, fix_command_token=False)


def _shift(table: dict[str, int], n: int) -> dict[str, int | None]:
    out = {k: v - 50000 + n for k, v in table.items()}
    return {**out, "pad": out["eos"]}


def test_chinese_ids_follow_the_piece_count(large_zh, ten_b_zh):
    n = PIECES
    assert _ids(large_zh) == _shift(LARGE_CHINESE, n)
    assert _ids(ten_b_zh) == _shift(TEN_B_CHINESE, n)
    assert large_zh.num_text_tokens == n + 11 and ten_b_zh.num_text_tokens == n + 10
    assert large_zh.vocab_size == ten_b_zh.vocab_size == pad_vocab_size(n + 11) == 2048
    assert large_zh.id_to_piece(n + 3) == "[MASK]" and large_zh.id_to_piece(n + 5) == ""  # the unused id
    assert large_zh.id_to_piece(5) == large_zh._sp.id_to_piece(5)


def test_chinese_real_albert_model_appends_after_its_pieces():
    model = need_shared_data("tokenizers/albert-base-v2/spiece.model", "ALBERT sentencepiece model")
    tok = GLMChineseTokenizer(model, fix_command_token=True)
    assert (tok.eos_id, tok.gmask_id, tok.dblock_id, tok.vocab_size) == (30000, 30009, 30010, 30080)


def test_chinese_command_strings_and_whitespace(large_zh):
    tok, n = large_zh, PIECES
    sp = tok._sp
    # parts between command strings are encoded separately (each with the model's dummy prefix)
    assert tok.encode("Alice[MASK]went") == sp.encode("Alice") + [n + 3] + sp.encode("went")
    assert tok.encode("Alice [MASK] went") == sp.encode("Alice") + [n + 3] + sp.encode(" went")
    assert tok.encode("Alice   [gMASK]") == sp.encode("Alice") + [n + 9]
    assert tok.encode("Alice [sMASK]") == sp.encode("Alice") + [n + 8]
    assert tok.encode("Alice [CLS]") == sp.encode("Alice ") + [n + 2] != sp.encode("Alice") + [n + 2]
    assert tok.encode("[CLS]a[SEP]b<|endoftext|>[UNK]") == [
        n + 2,
        *sp.encode("a"),
        n + 1,
        *sp.encode("b"),
        n,
        n + 4,
    ]
    assert tok.encode("<|startofpiece|>x<|endofpiece|>[dBLOCK]") == [n + 6, *sp.encode("x"), n + 7, n + 10]
    assert tok.encode("") == [] and tok.encode(" \n ") == []
    texts = ["Alice was beginning", "", "  ", "a [MASK] b", "[gMASK]", "plain text again"]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    clone = pickle.loads(pickle.dumps(tok))  # DataLoader workers
    assert clone.encode_batch(texts) == tok.encode_batch(texts) and _ids(clone) == _ids(tok)


def test_chinese_decode(large_zh):
    tok, n = large_zh, PIECES
    assert (
        tok.decode(tok.encode("Alice was beginning to get very tired"))
        == "Alice was beginning to get very tired"
    )
    ids = tok.encode("[CLS]Alice [MASK]<|endoftext|>")
    assert tok.decode(ids) == "Alice"
    assert (
        tok.decode(ids, skip_special_tokens=False) == "[CLS] Alice [MASK] <|endoftext|>"
    )  # spaces, as the original
    assert tok.decode([n + 5, tok.vocab_size - 1]) == ""  # the unused id and a padding row


def test_ten_b_chinese_gmask_shares_eops_id(ten_b_zh):
    tok, n = ten_b_zh, PIECES
    sp = tok._sp
    assert tok.gmask_id == tok.eop_id == n + 7
    assert tok.encode("[gMASK]") == tok.encode("<|endofpiece|>") == [n + 7]
    # the string decides whitespace absorption: [gMASK] takes the space, <|endofpiece|> keeps it
    assert tok.encode("a [gMASK]") == sp.encode("a") + [n + 7]
    assert tok.encode("a <|endofpiece|>") == sp.encode("a ") + [n + 7]
    assert tok.decode([n + 7], skip_special_tokens=False) == "[gMASK]"  # documented: ambiguous id
    assert tok.decode(sp.encode("a") + [n + 7]) == "a"
    assert tok.id_to_piece(n + 9) == "[dBLOCK]" and tok.id_to_piece(n + 8) == "[sMASK]"


def test_chinese_without_task_mask(chinese_model):
    tok = GLMChineseTokenizer(chinese_model, fix_command_token=False, task_mask=False, decoder_mask=False)
    assert tok.gmask_id is None and tok.smask_id is None and tok.dblock_id is None
    assert tok.num_text_tokens == PIECES + 8
    assert PIECES + 7 not in tok.encode("a [gMASK]")  # plain text, not a command
    with pytest.raises(ValueError, match="eop's id"):
        GLMChineseTokenizer(chinese_model, fix_command_token=False, task_mask=False)


def test_chinese_save_load_round_trip(large_zh, ten_b_zh, chinese_model, tmp_path):
    text = "[CLS]Alice said [gMASK] <|startofpiece|> and [sMASK] then"
    for tok in (large_zh, ten_b_zh):
        saved = tok.save(tmp_path / f"zh{tok.fix_command_token}")
        assert sorted(p.name for p in saved.iterdir()) == ["tokenizer.json", "tokenizer.model"]
        meta = json.loads((saved / "tokenizer.json").read_text())
        assert meta["kind"] == "glm_chinese" and meta["fix_command_token"] is tok.fix_command_token
        loaded = load_tokenizer(saved)
        assert isinstance(loaded, GLMChineseTokenizer) and _ids(loaded) == _ids(tok)
        assert loaded.encode(text) == tok.encode(text)
    # the dict form takes the .model file or its dir (the released name cog-pretrain.model)
    for path in (chinese_model, chinese_model.parent):
        tok = load_tokenizer({"kind": "glm_chinese", "path": str(path), "fix_command_token": False})
        assert _ids(tok) == _ids(ten_b_zh)
    with pytest.raises(ValueError, match="needs 'fix_command_token' true or false"):
        load_tokenizer({"kind": "glm_chinese", "path": str(chinese_model)})
    with pytest.raises(FileNotFoundError, match="has none of"):
        load_tokenizer({"kind": "glm_chinese", "path": str(tmp_path), "fix_command_token": True})
    # a layout flag edited after saving no longer matches the recorded ids
    saved = tmp_path / "zhTrue"
    meta = json.loads((saved / "tokenizer.json").read_text())
    (saved / "tokenizer.json").write_text(json.dumps({**meta, "fix_command_token": False}))
    with pytest.raises(ValueError, match="special_ids"):
        load_tokenizer(saved)
    # the bare .model is not one of our sentencepiece models: refused with the reason
    with pytest.raises(ValueError, match="not trained with glm.tokenizer.train_sentencepiece.*'glm_chinese'"):
        load_tokenizer(saved / "tokenizer.model")
