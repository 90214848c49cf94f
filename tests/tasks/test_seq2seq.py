"""Seq2seq data and task: the docs/original-glm.md §8.1 / §3(c) layout by hand, file reading errors, label smoothing,
ROUGE post-processing, and (once the pipeline exists) an end-to-end XSum run on the shared files."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from glm.data.seq2seq import (
    build_seq2seq_sample,
    build_source,
    collate_seq2seq,
    read_examples,
    undo_ptb,
)
from glm.errors import DataFormatError


class WordTok:
    """A whitespace word tokenizer with the contract's special ids (docs/contracts.md), for hand layouts.

    Words get ids 20, 21, ... in order of first use; `" Content:"` is the single word `Content:`.
    """

    pad_id = eos_id = 0
    unk_id, cls_id, sep_id, mask_id, smask_id, gmask_id, sop_id, eop_id, dblock_id = range(1, 10)
    _special = {"[MASK]": 4, "[sMASK]": 5, "[gMASK]": 6}

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def encode(self, text: str) -> list[int]:
        return [self._special.get(w) or self.vocab.setdefault(w, 20 + len(self.vocab)) for w in text.split()]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        inv = {v: k for k, v in self.vocab.items()}
        return " ".join(inv[i] for i in ids if i in inv)


def test_source_and_target_layout_by_hand():
    tok = WordTok()
    C, a, b, c, d = tok.encode("Content: a b c d")
    x, y = tok.encode("x y")
    stats = Counter()
    src = build_source([a, b, c, d], [C], tok, src_seq_length=5, task_mask=False, stats=stats)
    # [CLS] [MASK] " Content:" then the article cut to the 2 remaining slots
    assert src == [2, 4, C, a, b]
    assert stats["truncated_source"] == 1
    src = build_source([a], [C], tok, src_seq_length=6, task_mask=True)
    assert src == [2, 5, C, a, 0, 0]  # [sMASK] with task masks; padded with pad to S
    s = build_seq2seq_sample(src, [x, y], tok, tgt_seq_length=5)
    #                      Part A (S = 6)          | Part B: [sop] x y [pad pad]
    assert s.input_ids.tolist() == [2, 5, C, a, 0, 0, 7, x, y, 0, 0]
    assert s.targets.tolist()[6:] == [x, y, 8, 0, 0]  # target = summary + [eop], padded
    assert s.loss_mask.tolist() == [0] * 6 + [1, 1, 1, 0, 0]
    assert s.position_ids.tolist() == [[0, 1, 2, 3, 4, 5, 1, 1, 1, 1, 1], [0] * 6 + [1, 2, 3, 4, 5]]
    assert s.sep == 6 and s.mask_pos == 1
    # a target longer than T loses its tail, eop included (docs/original-glm.md §8.1)
    stats = Counter()
    s = build_seq2seq_sample(src, [x, y, x], tok, tgt_seq_length=3, stats=stats)
    assert s.input_ids.tolist()[6:] == [7, x, y] and s.targets.tolist()[6:] == [x, y, x]
    assert s.loss_mask.tolist()[6:] == [1, 1, 1] and stats["truncated_target"] == 1
    # decoding input: Part A only
    s = build_seq2seq_sample(src, None, tok, tgt_seq_length=3)
    assert s.input_ids.tolist() == src and s.loss_mask.sum() == 0
    batch = collate_seq2seq(
        [build_seq2seq_sample(src, [x], tok, 3), build_seq2seq_sample(src, [y, y], tok, 3)]
    )
    assert batch["input_ids"].shape == (2, 9) and batch["sep"].tolist() == [6, 6]
    assert batch["mask_pos"].tolist() == [1, 1] and batch["loss_mask"].sum().item() == 2 + 3


def test_undo_ptb():
    assert undo_ptb("he said `` hi '' -lrb- loudly -rrb- <S_SEP> ok") == 'he said " hi " ( loudly ) [SEP] ok'


def write(path, data: bytes | str):
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def test_line_files_and_their_errors(tmp_path):
    write(tmp_path / "val.source", "doc one\ndoc two\n")
    write(tmp_path / "val.target", "sum one\nsum two\n")
    ex = read_examples(tmp_path / "val")
    assert [(e.source, e.target) for e in ex] == [("doc one", "sum one"), ("doc two", "sum two")]
    write(tmp_path / "bad.source", "doc one\ndoc two\ndoc three\n")
    write(tmp_path / "bad.target", "sum one\nsum two\n")
    with pytest.raises(DataFormatError, match=r"bad.source has 3 lines but .*bad.target has 2"):
        read_examples(tmp_path / "bad")
    write(tmp_path / "empty.source", "doc one\ndoc two\n")
    write(tmp_path / "empty.target", "sum one\n   \n")
    with pytest.raises(DataFormatError, match=r"empty.target:2: empty target line"):
        read_examples(tmp_path / "empty")
    stats = Counter()
    assert len(read_examples(tmp_path / "empty", bad_rows="skip", stats=stats)) == 1 and stats["skipped"] == 1
    write(tmp_path / "bin.source", b"ok\nbad \xff byte\n")
    write(tmp_path / "bin.target", "a\nb\n")
    with pytest.raises(DataFormatError, match=r"bin.source:2: not valid UTF-8"):
        read_examples(tmp_path / "bin")


def test_jsonl_fields_and_errors(tmp_path):
    rows = [{"document": "d1", "summary": "s1"}, {"document": "d2"}, {"document": "d3", "summary": "s3"}]
    p = write(tmp_path / "x.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataFormatError, match=r"x.jsonl:2: field 'summary' missing"):
        read_examples(p)
    stats = Counter()
    ex = read_examples(p, bad_rows="skip", stats=stats)
    assert [e.source for e in ex] == ["d1", "d3"] and stats["skipped"] == 1
    assert [e.where for e in ex] == [f"{p}:1", f"{p}:3"]
    p = write(tmp_path / "y.jsonl", '{"src": "a", "tgt": "b"}\n{not json\n')
    with pytest.raises(DataFormatError, match=r"y.jsonl:2: \(malformed JSON"):
        read_examples(p, source_field="src", target_field="tgt")
    assert read_examples(p, source_field="src", target_field="tgt", max_samples=1)[0].target == "b"


def test_real_xsum_files_read(shared_xsum):
    ex = read_examples(shared_xsum / "test.jsonl", max_samples=5)
    assert len(ex) == 5 and all(e.source.strip() and e.target.strip() for e in ex)
    # the shared validation file has one record with an empty document (line 220): named, or counted
    with pytest.raises(DataFormatError, match=r"validation.jsonl:220: field 'document' is empty"):
        read_examples(shared_xsum / "validation.jsonl")
    stats = Counter()
    assert len(read_examples(shared_xsum / "validation.jsonl", bad_rows="skip", stats=stats)) == 999
    assert stats["skipped"] == 1


@pytest.fixture
def shared_xsum():
    from glm.data.paths import need_shared_data

    return need_shared_data("xsum/test.jsonl", "XSum test").parent


# --------------------------------------------------------------------------------------------------
# Loss and ROUGE
# --------------------------------------------------------------------------------------------------
def test_label_smoothed_loss_matches_float64_hand_formula():
    import torch

    from glm.tasks.seq2seq import label_smoothed_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 7, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 7, (2, 4), generator=g)
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.float32)
    eps, total, n = 0.1, 0.0, 0
    for b in range(2):
        for t in range(4):
            if mask[b, t]:
                logp = logits[b, t] - torch.logsumexp(logits[b, t], 0)
                total += (1 - eps) * -logp[targets[b, t]].item() + eps * (-logp).mean().item()
                n += 1
    assert label_smoothed_loss(logits, targets, mask, eps).item() == pytest.approx(total / n, rel=1e-6)


def test_rouge_sentences_postprocess_and_scores():
    from glm.tasks.seq2seq import RougeMetric, postprocess_prediction, split_sentences

    # docs/original-glm.md §8.3: sentences come from [SEP] only; a text without it is one sentence
    assert split_sentences("One two. Three four! Five") == ["One two. Three four! Five"]
    assert split_sentences("a b [SEP] c d. e f") == ["a b", "c d. e f"]
    # so the <= 4 words filter sees the whole summary: "He died. He was 90." (5 words) is kept whole, and
    # "He died." alone would be dropped
    rouge = RougeMetric()
    assert rouge(["He died. He was 90."], ["He died. He was 90."]) == pytest.approx(
        {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    )
    assert rouge(["He died."], ["He died."]) == pytest.approx({"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0})
    kept = postprocess_prediction(
        ["too short here", "the cat sat on the mat", "the cat sat on a mat", "dogs run in the park"]
    )
    assert kept == ["the cat sat on the mat", "dogs run in the park"]  # 5/6 words overlap -> removed
    # docs/original-glm.md §8.3: overlap with the earlier sentences together. C shares 2/5 words with A and 2/5 with B but
    # 4/5 = 0.8 > 0.7 with A and B: removed. E's words {alpha, zeta, lambda, mu}: 3/4 = 0.75 seen only
    # because the removed C brought "lambda" (the original's history keeps every earlier sentence): removed.
    # F: {alpha, pi, xi, omicron}: 1/4 -> kept; the short "tiny pi xi" is dropped first and adds nothing
    # (counted, it would make F 3/4 = 0.75 and remove it).
    a, b = "alpha beta gamma delta epsilon", "zeta eta theta iota kappa"
    c, e, f = "Alpha beta zeta eta lambda", "alpha zeta lambda mu lambda", "alpha pi xi omicron omicron"
    assert postprocess_prediction([a, "tiny pi xi", b, c, e, f]) == [a, b, f]
    rouge = RougeMetric(postprocess=False)
    same = rouge(["the cat sat on the mat ."], ["the cat sat on the mat ."])
    assert same == pytest.approx({"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0})
    # hand count: pred "the cat ran" vs ref "the cat sat down": unigram P = 2/3, R = 2/4 -> F = 4/7
    part = rouge(["the cat ran"], ["the cat sat down"])
    assert part["rouge1"] == pytest.approx(4 / 7) and part["rouge2"] == pytest.approx(
        2 * (1 / 2 * 1 / 3) / (1 / 2 + 1 / 3)
    )


def test_datamodule_null_split_means_no_loop_and_unknown_stage_is_named(tmp_path):
    from glm.data.seq2seq import Seq2SeqDataModule

    write(tmp_path / "tr.source", "doc one\n")
    write(tmp_path / "tr.target", "sum one\n")
    dm = Seq2SeqDataModule(
        str(tmp_path),
        WordTok(),
        splits={"train": "tr", "val": None, "test": "tr"},
        src_seq_length=8,
        tgt_seq_length=4,
    )
    assert dm.val_dataloader() == []  # Lightning skips validation for an empty list
    assert next(iter(dm.test_dataloader()))["example_index"].tolist() == [0]
    with pytest.raises(ValueError, match=r"data.splits: unknown stage\(s\) \['dev'\]"):
        Seq2SeqDataModule(str(tmp_path), WordTok(), splits={"train": "tr", "dev": "tr"})


# --------------------------------------------------------------------------------------------------
# Bad input (issue 4): named file + line + field, or a counted and logged skip; truncation counted
# --------------------------------------------------------------------------------------------------
def test_empty_source_line_is_named_or_skipped_with_a_logged_count(tmp_path, caplog):
    write(tmp_path / "v.source", "doc one\n\ndoc three\n")
    write(tmp_path / "v.target", "sum one\nsum two\nsum three\n")
    with pytest.raises(DataFormatError, match=r"v.source:2: empty source line \(set bad_rows=skip"):
        read_examples(tmp_path / "v")
    stats = Counter()
    with caplog.at_level("WARNING", logger="glm.data.seq2seq"):
        ex = read_examples(tmp_path / "v", bad_rows="skip", stats=stats)
    assert [e.where for e in ex] == [f"{tmp_path / 'v.source'}:1", f"{tmp_path / 'v.source'}:3"]
    assert stats["skipped"] == 1 and "skipped 1 bad rows" in caplog.text


def test_jsonl_non_utf8_null_field_empty_line_and_bom(tmp_path):
    p = write(
        tmp_path / "a.jsonl", b'{"document": "d", "summary": "s"}\n{"document": "caf\xe9", "summary": "s"}\n'
    )
    with pytest.raises(DataFormatError, match=r"a.jsonl:2: not valid UTF-8"):
        read_examples(p)
    # null must not become the text "None"
    p = write(tmp_path / "b.jsonl", '{"document": "d", "summary": null}\n')
    with pytest.raises(DataFormatError, match=r"b.jsonl:1: field 'summary' is NoneType, not text"):
        read_examples(p)
    p = write(
        tmp_path / "c.jsonl", '{"document": "d", "summary": "s"}\n\n{"document": "e", "summary": "t"}\n'
    )
    with pytest.raises(DataFormatError, match=r"c.jsonl:2: \(empty line\)"):
        read_examples(p)
    stats = Counter()
    assert [e.source for e in read_examples(p, bad_rows="skip", stats=stats)] == ["d", "e"]
    assert stats["skipped"] == 1
    # a UTF-8 byte-order mark and CRLF line ends are read as plain text
    p = write(tmp_path / "d.jsonl", b'\xef\xbb\xbf{"document": "d", "summary": "s"}\r\n')
    assert [(e.source, e.target) for e in read_examples(p)] == [("d", "s")]


def test_dataset_truncates_over_long_inputs_and_counts_them(caplog):
    from glm.data.seq2seq import Seq2SeqDataset, Seq2SeqExample

    examples = [
        Seq2SeqExample("a b c d e f", "x", "f:1"),
        Seq2SeqExample("a", "x y z w", "f:2"),
        Seq2SeqExample("a b c d e f g", "x y z w", "f:3"),
        Seq2SeqExample("a b", "x", "f:4"),
    ]
    with caplog.at_level("INFO", logger="glm.data.seq2seq"):
        ds = Seq2SeqDataset(examples, WordTok(), src_seq_length=6, tgt_seq_length=3)
    # Part A: [CLS] [MASK] Content: + 3 article words; target: summary + eop must fit 3 slots
    assert ds.stats == Counter({"truncated_source": 2, "truncated_target": 2})
    assert "'truncated_source': 2" in caplog.text and "'truncated_target': 2" in caplog.text
    assert all(len(s.input_ids) == 6 + 3 for s in ds.samples)  # every sample has the fixed S + T length
    assert ds.references == ["x", "x y z w", "x y z w", "x"]  # ROUGE is scored against the full summary


def test_training_set_is_split_between_ranks(tmp_path):
    from types import SimpleNamespace

    from glm.data.seq2seq import Seq2SeqDataModule

    write(tmp_path / "tr.source", "".join(f"doc {i}\n" for i in range(10)))
    write(tmp_path / "tr.target", "".join(f"sum {i}\n" for i in range(10)))
    seen = []
    for rank in (0, 1):
        tok = WordTok()
        dm = Seq2SeqDataModule(
            str(tmp_path), tok, splits={"train": "tr"}, src_seq_length=6, tgt_seq_length=4, micro_batch_size=2
        )
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        dm.setup("fit")
        inv = {v: k for k, v in tok.vocab.items()}
        rows = [b for batch in dm.train_dataloader() for b in batch["input_ids"].tolist()]
        seen.append(
            sorted(inv[r[4]] for r in rows)
        )  # the article's number token: [CLS] [MASK] Content: doc N
    assert len(seen[0]) == len(seen[1]) == 5
    assert sorted(seen[0] + seen[1]) == sorted(str(i) for i in range(10))  # disjoint halves cover the set


def test_training_loader_resumes_mid_epoch(tmp_path):
    """The seq2seq training loader is the shared resumable one (glm.data.sampling): seeded by the run seed,
    its checkpointed state makes a fresh loader yield exactly the rest of the epoch."""
    from types import SimpleNamespace

    from glm.data.sampling import ResumableDataLoader
    from glm.data.seq2seq import Seq2SeqDataModule

    write(tmp_path / "tr.source", "".join(f"doc {i}\n" for i in range(7)))
    write(tmp_path / "tr.target", "".join(f"sum {i}\n" for i in range(7)))

    def loader(done: int) -> ResumableDataLoader:
        dm = Seq2SeqDataModule(
            str(tmp_path),
            WordTok(),
            splits={"train": "tr"},
            src_seq_length=6,
            tgt_seq_length=4,
            micro_batch_size=2,
            seed=3,
        )
        progress = SimpleNamespace(current=SimpleNamespace(processed=done))
        dm.trainer = SimpleNamespace(
            world_size=1,
            global_rank=0,
            fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)),
        )
        dm.setup("fit")
        out = dm.train_dataloader()
        assert isinstance(out, ResumableDataLoader) and out.sampler.seed == 3
        out.sampler.set_epoch(1)
        return out

    whole = [b["input_ids"].tolist() for b in loader(0)]
    assert len(whole) == 4 and len(whole[-1]) == 1  # 7 samples: 3 batches of 2 and a short one
    resumed = loader(0)
    resumed.load_state_dict(loader(2).state_dict())
    assert [b["input_ids"].tolist() for b in resumed] == whole[2:]


def test_training_loss_projects_only_part_b_and_equals_the_full_loss():
    """training_step computes the V-sized head only from the shortest Part A on; the loss is the docs/original-glm.md §8.2
    label-smoothed loss over the full logits (Part A has loss mask 0)."""
    import torch

    from glm.tasks.seq2seq import Seq2SeqModule, label_smoothed_loss

    torch.manual_seed(0)
    module = Seq2SeqModule(
        model={"preset": "glm-tiny", "hidden_dropout": 0.0, "attention_dropout": 0.0},
        optimizer={},
        scheduler={},
    )
    module.configure_model()
    module.log = lambda *a, **k: None  # no trainer attached
    B, L, V = 3, 20, module.glm_config.vocab_size
    g = torch.Generator().manual_seed(1)
    sep = torch.tensor([12, 9, 15])
    loss_mask = (torch.arange(L)[None] >= sep[:, None]).float()
    batch = {
        "input_ids": torch.randint(10, V, (B, L), generator=g),
        "position_ids": torch.randint(0, 20, (B, 2, L), generator=g),
        "sep": sep,
        "targets": torch.randint(10, V, (B, L), generator=g),
        "loss_mask": loss_mask,
    }
    loss = module.training_step(batch, 0)
    full = module.model(batch["input_ids"], batch["position_ids"], sep=sep).logits
    expected = label_smoothed_loss(full, batch["targets"], loss_mask, 0.1)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
