"""The datamodule base (glm/data/base.py): the seed argument orders training data, one tokenizer schema whose
errors name the key, the batch sizes, the loaders, and `example_index` in every evaluation batch."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from glm.data.base import GLMDataModule, resolve_tokenizer
from glm.data.cloze import ClozeDataModule
from glm.data.lm_eval import LMEvalDataModule
from glm.data.paths import need_shared_data
from glm.data.seq2seq import Seq2SeqDataModule
from glm.errors import ConfigError
from glm.tokenizer import WordPieceTokenizer


class WordTok:
    """Whitespace words with the contract's special ids (docs/contracts.md); word ids from 20 in first-use order."""

    pad_id = eos_id = 0
    unk_id, cls_id, sep_id, mask_id, smask_id, gmask_id, sop_id, eop_id, dblock_id = range(1, 10)

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def encode(self, text: str) -> list[int]:
        return [self.vocab.setdefault(w, 20 + len(self.vocab)) for w in text.split()]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]


def _expected_shares(n: int, seed: int, epoch: int, world: int, batch: int) -> list[list[list[int]]]:
    """Per rank, the batches of a finetuning epoch written out from the sampler's rules (the order the run
    seed gave through PL_GLOBAL_SEED before): permutation of default_rng([seed, 3, epoch]), padded with its
    own head to a multiple of the world size, every world-th index to a rank, cut into batches."""
    perm = list(np.random.default_rng([seed, 3, epoch]).permutation(n))
    per_rank = -(-n // world)
    padded = (perm * world)[: per_rank * world]
    out = []
    for rank in range(world):
        mine = [int(i) for i in padded[rank::world]]
        out.append([mine[k : k + batch] for k in range(0, len(mine), batch)])
    return out


def _trainer(world: int = 1, rank: int = 0) -> SimpleNamespace:
    return SimpleNamespace(world_size=world, global_rank=rank)


# ---------------------------------------------------------------------------------------------------------
# seed
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("world", [1, 2])
def test_seed_argument_orders_the_training_loader(world: int, monkeypatch) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "99")  # no longer read: the order follows the argument only
    dm = GLMDataModule(WordTok(), micro_batch_size=3, seed=7)
    for rank in range(world):
        dm.trainer = _trainer(world, rank)
        loader = dm.train_loader(list(range(10)))
        for epoch in (0, 1):
            loader.sampler.set_epoch(epoch)
            got = [b.tolist() for b in loader]
            assert got == _expected_shares(10, 7, epoch, world, 3)[rank]
    assert dm.train_loader(list(range(10))).sampler.seed == 7
    other = GLMDataModule(WordTok(), micro_batch_size=3, seed=8)
    assert [b.tolist() for b in other.train_loader(list(range(10)))] != [
        b.tolist() for b in dm.train_loader(list(range(10)))
    ]


def _seq2seq_files(tmp_path: Path, n: int) -> None:
    (tmp_path / "tr.source").write_text("".join(f"doc{i} text\n" for i in range(n)))
    (tmp_path / "tr.target").write_text("".join(f"sum{i}\n" for i in range(n)))


def test_seq2seq_training_order_follows_the_seed(tmp_path: Path) -> None:
    """A real datamodule: the article of each training row (its `docN` word) comes in the seed's order."""
    _seq2seq_files(tmp_path, 7)
    tok = WordTok()
    dm = Seq2SeqDataModule(
        str(tmp_path),
        tok,
        splits={"train": "tr"},
        src_seq_length=8,
        tgt_seq_length=3,
        micro_batch_size=2,
        seed=3,
    )
    dm.setup("fit")
    inverse = {v: k for k, v in tok.vocab.items()}
    # [CLS] [MASK] "Content:" docN ...: position 3 holds the article's first word
    got = [[int(inverse[int(row[3])][3:]) for row in b["input_ids"]] for b in dm.train_dataloader()]
    assert got == _expected_shares(7, 3, 0, 1, 2)[0]


def test_cloze_training_order_follows_the_seed() -> None:
    need_shared_data("superglue/RTE/train.jsonl", "RTE training set")
    bert = {"kind": "bert", "path": str(need_shared_data("tokenizers/bert-base-uncased", "BERT vocab"))}
    dm = ClozeDataModule(
        "rte",
        bert,
        need_shared_data("superglue").parent,
        seq_length=128,
        max_train_examples=11,
        micro_batch_size=4,
        seed=5,
    )
    got = [b["example_index"].tolist() for b in dm.train_dataloader()]
    assert got == _expected_shares(11, 5, 0, 1, 4)[0]


# ---------------------------------------------------------------------------------------------------------
# batch sizes and loaders
# ---------------------------------------------------------------------------------------------------------
def test_batch_sizes_default_to_the_micro_batch_and_must_divide() -> None:
    dm = GLMDataModule(WordTok(), micro_batch_size=4)
    assert (dm.global_batch_size, dm.eval_batch_size, dm.seed, dm.pack) == (4, 4, 0, False)
    dm = GLMDataModule(WordTok(), micro_batch_size=4, global_batch_size=12, eval_batch_size=5)
    assert (dm.global_batch_size, dm.eval_batch_size) == (12, 5)
    with pytest.raises(ValueError, match=r"data\.global_batch_size \(10\) must be a positive multiple"):
        GLMDataModule(WordTok(), micro_batch_size=4, global_batch_size=10)
    with pytest.raises(ConfigError, match=r"data\.pack"):
        GLMDataModule(WordTok(), micro_batch_size=4, pack="yes")


def test_eval_loader_is_in_order_and_shared_between_ranks() -> None:
    dm = GLMDataModule(WordTok(), micro_batch_size=8, eval_batch_size=2)
    assert [b.tolist() for b in dm.eval_loader(list(range(5)))] == [[0, 1], [2, 3], [4]]
    shares = []
    for rank in (0, 1):
        dm.trainer = _trainer(2, rank)
        shares.append([i for b in dm.eval_loader(list(range(5))) for i in b.tolist()])
    assert shares == [[0, 2, 4], [1, 3, 0]]  # padded with the head: both ranks run the same steps


# ---------------------------------------------------------------------------------------------------------
# example_index in every evaluation batch
# ---------------------------------------------------------------------------------------------------------
def _check_index(batch: dict[str, torch.Tensor], expected: list[int]) -> None:
    assert "index" not in batch and "example_idx" not in batch
    assert batch["example_index"].dtype == torch.long and batch["example_index"].tolist() == expected


def test_every_evaluation_batch_carries_example_index(tmp_path: Path) -> None:
    _seq2seq_files(tmp_path, 3)
    s2s = Seq2SeqDataModule(
        str(tmp_path),
        WordTok(),
        splits={"train": "tr", "test": "tr"},
        src_seq_length=8,
        tgt_seq_length=3,
        micro_batch_size=2,
        eval_batch_size=2,
    )
    _check_index(next(iter(s2s.test_dataloader())), [0, 1])
    lambada = tmp_path / "lambada.jsonl"
    lambada.write_text(
        "".join(json.dumps({"text": f"some context number {i} end{i}"}) + "\n" for i in range(3))
    )
    lm = LMEvalDataModule(str(lambada), WordTok(), seq_length=16, micro_batch_size=2)
    _check_index(next(iter(lm.test_dataloader())), [0, 1])

    need_shared_data("superglue/COPA/val.jsonl", "COPA validation set")
    bert = {"kind": "bert", "path": str(need_shared_data("tokenizers/bert-base-uncased", "BERT vocab"))}
    root = need_shared_data("superglue").parent
    for pack in (False, True):
        cloze = ClozeDataModule("copa", bert, root, max_eval_examples=3, eval_batch_size=3, pack=pack)
        _check_index(next(iter(cloze.val_dataloader())), [0, 1, 2])


# ---------------------------------------------------------------------------------------------------------
# the tokenizer schema
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bert_dir() -> Path:
    return need_shared_data("tokenizers/bert-base-uncased", "BERT vocab")


def test_every_accepted_tokenizer_form(bert_dir: Path, tmp_path: Path) -> None:
    by_kind = resolve_tokenizer({"kind": "bert", "path": str(bert_dir)})
    assert isinstance(by_kind, WordPieceTokenizer) and by_kind.vocab_size == 30592
    saved = by_kind.save(tmp_path / "saved")
    forms = [
        str(saved),  # a saved dir (what the pipeline writes for task.pretrained)
        saved,  # a PathLike
        {"path": str(saved)},  # the pretraining form with a path
        {"path": str(saved), "train": {"vocab_size": 300}, "cache_dir": str(tmp_path / "c")},  # path wins
        OmegaConf.create({"kind": "bert", "path": str(bert_dir), "task_mask": True}),  # a DictConfig
    ]
    for spec in forms:
        tok = resolve_tokenizer(spec)
        assert tok.special_ids == by_kind.special_ids and tok.encode("a [MASK] b") == by_kind.encode(
            "a [MASK] b"
        )
    assert not (tmp_path / "c").exists()  # nothing was trained
    no_task = resolve_tokenizer({"kind": "bert", "path": str(bert_dir), "task_mask": False})
    assert no_task.gmask_id is None and no_task.num_text_tokens == by_kind.num_text_tokens - 2
    fake = WordTok()
    assert resolve_tokenizer(fake) is fake  # a tokenizer object is used as is
    dm = GLMDataModule({"kind": "bert", "path": str(bert_dir)}, micro_batch_size=1)
    assert dm.tokenizer is dm.tokenizer and dm.tokenizer.vocab_size == 30592  # resolved once, on first use


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"kind": "bert", "path": "x", "lowercaes": True},
            r"data\.tokenizer: unknown key\(s\) \['lowercaes'\]",
        ),
        (
            {"path": "x", "task_mask": False},
            r"data\.tokenizer\.task_mask: a loader option needs data\.tokenizer\.kind",
        ),
        ({"kind": "bert"}, r"data\.tokenizer\.path: missing"),
        ({"train": {"vocab_size": 300}}, r"data\.tokenizer\.cache_dir: give `path`"),
        ({"path": None}, r"data\.tokenizer\.path: give `path`"),
        ({"train": {"vocab_size": 300}, "cache_dir": "c"}, r"data\.tokenizer\.train: only pretraining data"),
        (12, r"data\.tokenizer: expected a tokenizer path or a mapping"),
    ],
)
def test_tokenizer_schema_errors_name_the_key(spec, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_tokenizer(spec)


def test_a_finetuning_datamodule_refuses_a_train_spec(tmp_path: Path) -> None:
    _seq2seq_files(tmp_path, 2)
    spec = {"path": None, "train": {"vocab_size": 300}, "cache_dir": str(tmp_path / "cache")}
    dm = Seq2SeqDataModule(str(tmp_path), spec, splits={"train": "tr"}, micro_batch_size=1)
    with pytest.raises(
        ConfigError, match=r"data\.tokenizer\.train: only pretraining data trains a tokenizer"
    ):
        dm.setup("fit")
    assert not (tmp_path / "cache").exists()
