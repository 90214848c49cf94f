"""SuperGLUE cloze data: exact pattern strings on real examples, docs/original-glm.md §3(b) layout, §7.1 truncation, errors."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from glm.data.cloze import ClozeDataModule, ClozeEncoder, build_cloze_sequence, collate_cloze, truncate_parts
from glm.data.download import resolve
from glm.data.paths import data_root
from glm.data.superglue import get_task
from glm.data.superglue.tasks import RTE
from glm.errors import DataFormatError
from glm.tokenizer import load_tokenizer

ROOT = data_root()


def _need_data() -> None:
    missing = [f.target for f in resolve(["superglue", "tokenizers"]) if not (ROOT / f.target).is_file()]
    if missing:  # files, not folders: a failed download attempt may leave empty folders behind
        msg = f"SuperGLUE data / tokenizers missing under {ROOT}, e.g. {missing[0]} (set GLM_DATA_ROOT)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="module")
def gpt2():
    _need_data()  # byte-level BPE: decoding gives back the exact pattern string, spaces included
    return load_tokenizer({"kind": "gpt2", "path": str(ROOT / "tokenizers" / "gpt2")})


@pytest.fixture(scope="module")
def bert():
    _need_data()
    return load_tokenizer({"kind": "bert", "path": str(ROOT / "tokenizers" / "bert-base-uncased")})


def raw(dirname: str, split: str, line: int = 0) -> dict:
    with open(ROOT / "superglue" / dirname / split, encoding="utf-8") as f:
        for i, text in enumerate(f):
            if i == line:
                return json.loads(text)
    raise IndexError(line)


def part_a(tok, seq) -> str:
    """The pattern text between [CLS] and eos, after checking those two."""
    ids, sep = seq["input_ids"].tolist(), int(seq["sep"])
    assert ids[0] == tok.cls_id and ids[sep - 1] == tok.eos_id
    return tok.decode(ids[1 : sep - 1], skip_special_tokens=False)


def first_val_feature(task, tok, pattern, seq_length=1024, split="val"):
    dm = ClozeDataModule(
        task, tok, ROOT, pattern_id=pattern, seq_length=seq_length, max_eval_examples=1, max_train_examples=1
    )
    ds = dm.load_split(split)
    assert dm.truncated[split] == 0
    return ds[0], dm.examples(split)[0]


def expected_patterns() -> dict[str, dict[int, list[str]]]:
    """Hand-written expected Part-A text per task and pattern for the first validation example."""
    bq = raw("BoolQ", "val.jsonl")
    P, Q = bq["passage"], bq["question"]
    cb = raw("CB", "val.jsonl")
    cp, ch = cb["premise"], cb["hypothesis"]
    assert ch == "Valence was helping"
    rte = raw("RTE", "val.jsonl")
    rp, rh = rte["premise"], "Christopher Reeve had an accident"  # hypothesis without its final "."
    assert rte["hypothesis"] == rh + "."
    mr = raw("MultiRC", "val.jsonl")["passage"]
    mp = mr["text"].rstrip()
    assert mp.endswith(".")
    mp = mp[:-1]
    mq = "Would the mass of a baseball affect how much force you have to use to pick it up"
    assert mr["questions"][0]["question"] == mq + "?" and mr["questions"][0]["answers"][0]["text"] == "No"
    wic = raw("WiC", "val.jsonl")
    s1, s2 = wic["sentence1"], wic["sentence2"]
    wsc = raw("WSC", "val.jsonl")
    wt = wsc["text"]
    assert wt.endswith("away from him .")
    wt = wt[: -len("him .")] + "*him* ."
    copa_a = '"the toilet filled with water" or "water flowed from the spout"?'
    return {
        "boolq": {
            0: [f"{P} Question: {Q}? Answer:[MASK]."],
            1: [f"{P} Question: {Q}? Answer:[MASK]."],
            2: [f"{P} Based on the previous passage, {Q}?[MASK]."],
            3: [f"{P} Based on the previous passage, {Q}?[MASK]."],
            4: [f"Based on the following passage {Q}?[MASK]. {P}"],
            5: [f"Based on the following passage {Q}?[MASK]. {P}"],
        },
        "cb": {
            0: [f'"{ch}" ?[MASK], "{cp}"'],
            1: [f"{ch}?[MASK], {cp}"],
            2: [f'"{ch}" ?[MASK]. "{cp}"'],
            3: [f"{ch}?[MASK]. {cp}"],
            4: [f"{cp} question: {ch} true, false or neither? answer:[MASK]"],
        },
        "rte": {
            0: [f'"{rh}" ?[MASK], "{rp}"'],
            1: [f"{rh}?[MASK], {rp}"],
            2: [f'"{rh}" ?[MASK]. "{rp}"'],
            3: [f"{rh}?[MASK]. {rp}"],
            4: [f"{rp} question: {rh} True or False? answer:[MASK]"],
        },
        "copa": {
            0: [copa_a + " The man turned on the faucet, so[MASK]."] * 2,
            1: [
                (
                    "the toilet filled with water or water flowed from the spout? The man turned on the faucet, "
                    "so[MASK]."
                )
            ]
            * 2,
            2: [
                copa_a + "The man turned on the faucet[MASK] the toilet filled with water",
                copa_a + "The man turned on the faucet[MASK] water flowed from the spout",
            ],
        },
        "multirc": {
            0: [f"{mp}. Question: {mq}? Is it No?[MASK]."],
            1: [f'{mp}. Question: {mq}? Is the correct answer "No"?[MASK].'],
            2: [f'{mp}. Based on the previous passage, {mq}? Is "No" a correct answer?[MASK].'],
            3: [f"{mp} {mq}- [[MASK]]No"],
            4: [f"{mp}. Question: {mq}? No?[MASK]."],
        },
        "wic": {
            0: [f'"{s1}" / "{s2}" Similar sense of "class"?[MASK].'],
            1: [f"{s1} {s2} Does class have the same meaning in both sentences?[MASK]"],
            2: [f'class . Sense (1) (a) "{s1}" ([MASK]) "{s2}"'],
        },
        "wsc": {
            0: [f"{wt} The pronoun '*him*' refers to[MASK]."],
            1: [f"{wt} In the previous sentence, the pronoun '*him*' refers to[MASK]."],
            2: [
                f"{wt} Question: In the passage above, what does the pronoun '*him*' refer to? Answer:[MASK]."
            ],
        },
    }


CASES = [
    (t, p)
    for t, ps in {"boolq": 6, "cb": 5, "rte": 5, "copa": 3, "multirc": 5, "wic": 3, "wsc": 3}.items()
    for p in range(ps)
]


@pytest.mark.parametrize(("task", "pattern"), CASES)
def test_pattern_strings_exact(gpt2, task, pattern):
    expected = expected_patterns()[task][pattern]
    feat, _ex = first_val_feature(task, gpt2, pattern)
    got = [part_a(gpt2, s) for s in feat.sequences]
    if task == "wsc":  # one sequence per candidate, all with the same Part A
        assert got == expected * len(feat.sequences)
    else:
        assert got == expected


def test_record_pattern_and_candidates(gpt2):
    rec = raw("ReCoRD", "dev32.jsonl")
    text = rec["passage"]["text"].replace("@highlight\n", "- ")
    query = rec["qas"][0]["query"]
    left, right = query.split("@placeholder")
    feat, ex = first_val_feature("record", gpt2, 0)
    ents = sorted({rec["passage"]["text"][e["start"] : e["end"] + 1] for e in rec["passage"]["entities"]})
    assert ex.candidates == ents and ex.answers == ["Benazir Bhutto", "Bhutto"]
    assert feat.target == ents.index("Benazir Bhutto") and len(feat.sequences) == len(ents)
    for seq, ent in zip(feat.sequences, ents, strict=True):
        assert part_a(gpt2, seq) == f"{text} {left.rstrip()}[MASK]{right}"
        sep = int(seq["sep"])
        assert gpt2.decode(seq["input_ids"][sep + 1 :].tolist()) == " " + ent
        assert seq["targets"][-1] == gpt2.eop_id


def test_record_training_candidates(gpt2):
    task = get_task("record")
    examples = task.read(task.path(ROOT, "train"), "train")
    first = raw("ReCoRD", "train.jsonl")
    golds = sorted({a["text"] for a in first["qas"][0]["answers"]})
    assert golds == ["Olimpija Ljubljana"]
    ex = examples[0]
    ents = {first["passage"]["text"][e["start"] : e["end"] + 1] for e in first["passage"]["entities"]}
    assert ex.candidates[0] == "Olimpija Ljubljana" and ex.target == 0
    assert len(ex.candidates) == min(10, len(ents))
    assert set(ex.candidates[1:]) <= ents - set(golds) and len(set(ex.candidates)) == len(ex.candidates)
    assert examples == task.read(task.path(ROOT, "train"), "train")  # the Random(42) shuffle is reproducible


def test_record_training_negatives_reshuffled_from_sorted_per_gold(tmp_path):
    # docs/original-glm.md §7.2: per gold answer, [gold] + 9 of the other entities, a random.Random(42) shuffle of the sorted
    # non-answer list when it is longer than 9. The list is rebuilt sorted for each gold (as the original),
    # so the second gold's shuffle starts from the sorted list again, not from the first gold's order.
    names = ["Al", "Bo", *[f"E{i:02d}" for i in range(11)]]  # entities, sorted; Al and Bo are gold
    text = " ".join(names)
    spans, pos = [], 0
    for n in names:
        spans.append({"start": pos, "end": pos + len(n) - 1})
        pos += len(n) + 1
    rec = {
        "passage": {"text": text, "entities": spans},
        "qas": [{"query": "@placeholder won", "answers": [{"text": "Bo"}, {"text": "Al"}]}],
    }
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(rec) + "\n", encoding="utf-8")
    rng, want = random.Random(42), []
    for gold in ("Al", "Bo"):  # golds in sorted order
        others = sorted(names[2:])
        rng.shuffle(others)
        want.append([gold, *others[:9]])
    task = get_task("record")
    assert [e.candidates for e in task.read(path, "train")] == want


def test_layout_single_token_bert(bert):
    feat, _ex = first_val_feature("rte", bert, 0, seq_length=256)
    (seq,) = feat.sequences
    ids, sep = seq["input_ids"], int(seq["sep"])
    assert len(ids) == sep + 1 and ids[sep] == bert.sop_id
    mask_pos = max(i for i in range(sep) if ids[i] == bert.mask_id)
    np.testing.assert_array_equal(seq["position_ids"][0], list(range(sep)) + [mask_pos])
    np.testing.assert_array_equal(seq["position_ids"][1], [0] * sep + [1])
    assert seq["loss_mask"].sum() == 0
    assert ids[sep - 1] == bert.eos_id == 0  # BERT's eos is [PAD] (docs/original-glm.md §4.1)
    # RTE p0 verbalizers: entailment -> " Yes", not_entailment -> " No"
    assert feat.verbalizer_ids == [bert.encode(" Yes")[0], bert.encode(" No")[0]] == [2748, 2053]
    assert (
        bert.decode(ids[1 : sep - 1].tolist(), skip_special_tokens=False)
        == '" christopher reeve had an accident "? [MASK], " dana reeve, the widow of the actor christopher reeve, '
        'has died of lung cancer at age 44, according to the christopher reeve foundation. "'
    )


def test_layout_multi_token_copa(bert):
    feat, ex = first_val_feature("copa", bert, 0, seq_length=256)
    assert ex.label == 1 and feat.target == 1
    for seq, cand in zip(
        feat.sequences, [" the toilet filled with water", " water flowed from the spout"], strict=True
    ):
        ans = bert.encode(cand)
        sep, k = int(seq["sep"]), len(ans)
        mask_pos = int(np.flatnonzero(seq["input_ids"][:sep] == bert.mask_id)[-1])
        assert seq["input_ids"][sep:].tolist() == [bert.sop_id, *ans]
        assert seq["targets"][sep:].tolist() == [*ans, bert.eop_id]
        assert seq["loss_mask"].tolist() == [0] * sep + [1] * (k + 1)
        assert seq["position_ids"][0, sep:].tolist() == [mask_pos] * (k + 1)
        assert seq["position_ids"][1].tolist() == [0] * sep + list(range(1, k + 2))


def test_spec_worked_example_layout():
    # docs/original-glm.md §3(b): [CLS] a b [M] c [eos] | [sop] y1 y2 ; positions 0..5 | 3 3 3 ; blocks 0.. | 1 2 3 ; sep 6
    CLS, EOS, M, SOP, EOP = 101, 0, 103, 500, 501
    s = build_cloze_sequence(
        [11, 12, M, 13], [21, 22], cls_id=CLS, eos_id=EOS, mask_id=M, sop_id=SOP, eop_id=EOP, pad_id=EOS
    )
    assert s["input_ids"].tolist() == [CLS, 11, 12, M, 13, EOS, SOP, 21, 22]
    assert s["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 3, 3, 3], [0, 0, 0, 0, 0, 0, 1, 2, 3]]
    assert s["targets"].tolist()[6:] == [21, 22, EOP] and s["loss_mask"].tolist() == [0] * 6 + [1] * 3
    assert int(s["sep"]) == 6
    # the last [MASK] is the blank
    s2 = build_cloze_sequence(
        [M, 11, M], None, cls_id=CLS, eos_id=EOS, mask_id=M, sop_id=SOP, eop_id=EOP, pad_id=0
    )
    assert s2["position_ids"][:, -1].tolist() == [3, 1]


def test_truncation_hand_case():
    a = [[[1, 2, 3, 4, 5], True], [[9], False]]
    b = [[[6, 7, 8], True]]
    # 2 specials + 6 + 3 + 1 ([sop]) = 12 > 9: A (5 > 3) loses 5, A (4 > 3) loses 4, tie -> B loses 8
    assert truncate_parts(a, b, 0, 9) == 3
    assert a == [[[1, 2, 3], True], [[9], False]] and b == [[[6, 7], True]]
    # with an answer of 3 (+[eop] = 4 slots): 2 + 4 + 2 + 4 = 12 > 10; A 3 > 2 -> A loses 3; tie -> B loses 7
    assert truncate_parts(a, b, 4, 10) == 2
    assert a == [[[1, 2], True], [[9], False]] and b == [[[6], True]]
    with pytest.raises(ValueError, match="nothing shortenable"):
        truncate_parts([[[1], False]], [], 0, 3)


def test_truncation_counted_and_within_length(bert, caplog):
    dm = ClozeDataModule("boolq", bert, ROOT, seq_length=64, max_eval_examples=8)
    with caplog.at_level("INFO"):
        ds = dm.load_split("val")
    assert dm.truncated["val"] == 8 and "8 truncated" in caplog.text
    for f in ds.features:
        assert len(f.sequences[0]["input_ids"]) == 64  # truncation fills exactly up to the limit


def test_copa_mirroring_and_multirc_and_wsc_splits():
    _need_data()
    copa = get_task("copa")
    train = copa.read(copa.path(ROOT, "train"), "train")
    assert len(train) == 800
    a, b = train[0], train[1]
    assert (a.fields["choice1"], a.fields["choice2"]) == (b.fields["choice2"], b.fields["choice1"])
    assert a.label == 1 - b.label
    mrc = get_task("multirc")
    val = mrc.read(mrc.path(ROOT, "val"), "val")
    assert len(val) == 4848 and len({e.group for e in val}) == 953
    wsc = get_task("wsc")
    wtrain = wsc.read(wsc.path(ROOT, "train"), "train")
    assert all(e.label == 1 and e.target == 0 and len(e.candidates) <= 10 for e in wtrain)
    wval = wsc.read(wsc.path(ROOT, "val"), "val")
    assert len(wval) == 104
    # the val example "Mark ... Pete" style: a False example lists the annotated true referent as a negative
    first = wval[0]
    assert (
        first.label == 0 and first.candidates[0] == "anyone" and "the government official" in first.candidates
    )


def test_wsc_negative_candidates_grouped_by_nine(tmp_path):
    # docs/original-glm.md §7.2 (WSC-negative records): the `candidates` list is deduplicated exactly (first occurrence
    # kept, nothing else dropped), and in training a list longer than 9 is split into groups of 9, the last
    # group filled from the start of the list; span1 is candidate 0 of every group.
    names = [f"n{i}" for i in range(1, 12)]  # 11 distinct negatives
    cands = (
        [{"text": c} for c in names[:3]] + [{"text": "n2"}, {"text": "Bo"}] + [{"text": c} for c in names[3:]]
    )
    rec = {
        "text": "Bo saw Al because he was there .",
        "label": True,
        "target": {"span1_text": "Bo", "span2_text": "he", "span2_index": 3},
        "candidates": cands,
    }
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(rec) + "\n", encoding="utf-8")
    wsc = get_task("wsc")
    got = [e.candidates for e in wsc.read(path, "train")]
    # deduplicated negatives: n1 n2 n3 Bo n4 .. n11 (12; the second n2 dropped, "Bo" kept as the original
    # does); groups of 9: the first 9, then the last 3 filled with the first 6
    negs = ["n1", "n2", "n3", "Bo", "n4", "n5", "n6", "n7", "n8", "n9", "n10", "n11"]
    assert got == [["Bo", *negs[:9]], ["Bo", "n9", "n10", "n11", *negs[:6]]]
    # evaluation keeps the whole deduplicated list after span1
    assert [e.candidates for e in wsc.read(path, "val")] == [["Bo", *negs]]


def test_wsc_pronoun_glued_to_punctuation_is_split_off_and_marked(tmp_path):
    # docs/original-glm.md §7.2: the word at span2_index is wrapped as *word*; the original splits a word that only starts
    # with the pronoun (three training records have 'him,"'), so the marked text reads '*him* ,"'.
    rec = {
        "text": 'They paid for him," he said .',
        "label": True,
        "target": {"span1_text": "They", "span2_text": "him", "span2_index": 3},
    }
    path = tmp_path / "val.jsonl"
    path.write_text(json.dumps(rec) + "\n", encoding="utf-8")
    (ex,) = get_task("wsc").read(path, "val")
    assert ex.fields["text"] == 'They paid for *him* ," he said .'


def test_collate_pads_candidates_and_length(bert):
    dm = ClozeDataModule("wsc", bert, ROOT, max_eval_examples=4)
    feats = dm.load_split("val").features
    batch = collate_cloze(feats, bert.eos_id)
    C = max(len(f.sequences) for f in feats)
    assert batch["input_ids"].shape[:2] == (4, C)
    for b, f in enumerate(feats):
        n = len(f.sequences)
        assert batch["choice_mask"][b].tolist() == [True] * n + [False] * (C - n)
        for c in range(n, C):  # padding candidates repeat candidate 0
            assert torch.equal(batch["input_ids"][b, c], batch["input_ids"][b, 0])
    full = collate_cloze(feats, bert.eos_id, pad_to=128)
    assert full["input_ids"].shape[-1] == 128
    L = batch["input_ids"].shape[-1]
    assert (full["input_ids"][..., L:] == bert.eos_id).all() and (full["position_ids"][..., L:] == 0).all()
    assert (full["loss_mask"][..., L:] == 0).all() and (full["targets"][..., L:] == 0).all()


# ---- bad input ----
def _write(tmp_path: Path, task_dir: str, split: str, lines: list[str]) -> None:
    d = tmp_path / "superglue" / task_dir
    d.mkdir(parents=True, exist_ok=True)
    (d / split).write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (
            ['{"premise": "a", "hypothesis": "b", "label": "entailment"}', '{"premise": "a", "hyp'],
            r"val\.jsonl:2: malformed JSON",
        ),
        (['{"premise": "a", "label": "entailment"}'], r"val\.jsonl:1: missing field 'hypothesis'"),
        (
            ['{"premise": "a", "hypothesis": "b", "label": "maybe"}'],
            r"val\.jsonl:1: field 'label' = 'maybe' is not in the label set",
        ),
        (
            ['{"premise": "a", "hypothesis": 3, "label": "entailment"}'],
            r"val\.jsonl:1: field 'hypothesis' must be str",
        ),
    ],
)
def test_bad_input_names_file_line_field(bert, tmp_path, lines, match):
    _write(tmp_path, "RTE", "val.jsonl", lines)
    with pytest.raises(DataFormatError, match=match):
        ClozeDataModule("rte", bert, tmp_path).load_split("val")


_MRC_Q = {"question": "Who?", "answers": [{"text": "Bo", "label": 1}, {"text": "Al"}]}
_WSC = {
    "text": "Bo saw Al because he was there .",
    "label": True,
    "target": {"span1_text": "Bo", "span2_text": "he", "span2_index": 40},
}


@pytest.mark.parametrize(
    ("task", "task_dir", "lines", "match"),
    [
        # a nested record: the message points into the structure
        (
            "multirc",
            "MultiRC",
            [json.dumps({"idx": 0, "passage": {"text": "t.", "questions": [_MRC_Q]}})],
            r"val\.jsonl:1 \(passage\.questions\[0\]\.answers\[1\]\): missing field 'label'",
        ),
        (
            "multirc",
            "MultiRC",
            [json.dumps({"idx": 0, "passage": {"questions": []}})],
            r"val\.jsonl:1: missing field 'passage\.text'",
        ),
        (
            "copa",
            "COPA",
            ['{"premise": "p", "choice1": "a", "choice2": "b", "question": "why", "label": 0}'],
            r"val\.jsonl:1: field 'question' = 'why' must be 'cause' or 'effect'",
        ),
        (
            "copa",
            "COPA",
            ['{"premise": "p", "choice1": "a", "choice2": "b", "question": "cause", "label": 2}'],
            r"val\.jsonl:1: field 'label' = 2 is not in the label set",
        ),
        (
            "boolq",
            "BoolQ",
            ['{"passage": "p", "question": "q", "label": "yes"}'],
            r"val\.jsonl:1: field 'label' = 'yes' is not in the label set",
        ),
        ("wsc", "WSC", [json.dumps(_WSC)], r"val\.jsonl:1: field 'target\.span2_index' = 40 is outside"),
        (
            "record",
            "ReCoRD",
            [
                json.dumps(
                    {
                        "passage": {"text": "Bo met Al.", "entities": [{"start": 0, "end": 1}]},
                        "qas": [{"query": "no placeholder", "answers": [{"text": "Bo"}]}],
                    }
                )
            ],
            r"dev32\.jsonl:1 \(qas\[0\]\): field 'query' has no '@placeholder'",
        ),
    ],
)
def test_bad_input_other_tasks(bert, tmp_path, task, task_dir, lines, match):
    _write(tmp_path, task_dir, "dev32.jsonl" if task == "record" else "val.jsonl", lines)
    with pytest.raises(DataFormatError, match=match):
        ClozeDataModule(task, bert, tmp_path).load_split("val")


def test_labels_required_outside_test_split_only(bert, tmp_path):
    line = '{"idx": 7, "premise": "a", "hypothesis": "b"}'
    _write(tmp_path, "RTE", "val.jsonl", [line])
    with pytest.raises(DataFormatError, match=r"val\.jsonl:1: missing field 'label'"):
        ClozeDataModule("rte", bert, tmp_path).load_split("val")
    _write(tmp_path, "RTE", "test.jsonl", [line])
    dm = ClozeDataModule("rte", bert, tmp_path)
    assert dm.load_split("test").features[0].target == -100 and dm.examples("test")[0].submit_idx == 7


def test_example_that_cannot_fit_names_its_line(bert, tmp_path):
    # nothing shortenable can make a COPA pattern (choices are fixed parts) fit 8 tokens
    _write(
        tmp_path,
        "COPA",
        "val.jsonl",
        [
            '{"premise": "p", "choice1": "a long first choice", "choice2": "b", "question": "cause", "label": 0}'
        ],
    )
    with pytest.raises(DataFormatError, match=r"val\.jsonl:1: cannot fit the copa pattern 0"):
        ClozeDataModule("copa", bert, tmp_path, seq_length=8).load_split("val")


def test_empty_candidates_error(bert, tmp_path):
    rec = {
        "passage": {"text": "Hello world", "entities": []},
        "qas": [{"query": "x @placeholder", "answers": []}],
    }
    _write(tmp_path, "ReCoRD", "dev32.jsonl", [json.dumps(rec)])
    with pytest.raises(
        DataFormatError, match=r"dev32\.jsonl:1: empty candidate list \(field 'passage.entities'\)"
    ):
        ClozeDataModule("record", bert, tmp_path).load_split("val")
    q = {"question": "q?", "answers": []}
    _write(
        tmp_path,
        "MultiRC",
        "val.jsonl",
        [json.dumps({"idx": 0, "passage": {"text": "t.", "questions": [q]}})],
    )
    with pytest.raises(
        DataFormatError, match=r"val\.jsonl:1 \(passage.questions\[0\]\): empty candidate list"
    ):
        ClozeDataModule("multirc", bert, tmp_path).load_split("val")


def test_multi_token_verbalizer_rejected(bert):
    class BadRTE(RTE):
        def verbalizers(self, pattern_id):
            return [" entailment", " No"]

    with pytest.raises(DataFormatError, match=r"verbalizer ' entailment' of label 'entailment' is 3 tokens"):
        ClozeEncoder(BadRTE(), bert, 0, 256)


def test_unknown_pattern_id(bert):
    with pytest.raises(ValueError, match="unknown pattern id 7"):
        ClozeDataModule("copa", bert, ROOT, pattern_id=7)


def test_training_split_is_shared_between_ranks(bert):
    """Under N processes each rank trains on a disjoint share of the epoch's shuffle (padded with repeats
    so the ranks run the same number of steps), not on the same batches as the others."""
    from types import SimpleNamespace

    _need_data()
    dm = ClozeDataModule("rte", bert, ROOT, seq_length=128, max_train_examples=11, micro_batch_size=4, seed=7)
    seen = []
    for rank in (0, 1):
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        seen.append([i for b in dm.train_dataloader() for i in b["example_index"].tolist()])
    assert [len(s) for s in seen] == [6, 6]
    assert len(set(seen[0]) & set(seen[1])) == 1  # the one repeat that pads 11 to 12
    assert set(seen[0]) | set(seen[1]) == set(range(11))
    assert seen[0] != sorted(seen[0]) or seen[1] != sorted(seen[1])  # shuffled
    dm.trainer = SimpleNamespace(world_size=1, global_rank=0)
    assert sorted(i for b in dm.train_dataloader() for i in b["example_index"].tolist()) == list(range(11))


def test_training_loader_resumes_mid_epoch(bert):
    """The cloze training loader is the shared resumable one (glm.data.sampling): a fresh loader given the
    checkpointed state yields exactly the rest of the epoch, on each rank."""
    from types import SimpleNamespace

    from glm.data.sampling import ResumableDataLoader

    _need_data()
    dm = ClozeDataModule("rte", bert, ROOT, seq_length=128, max_train_examples=11, micro_batch_size=2, seed=7)

    def batches(loader) -> list[list[int]]:
        return [b["example_index"].tolist() for b in loader]

    for rank in (0, 1):
        progress = SimpleNamespace(current=SimpleNamespace(processed=2))
        fit_loop = SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress))
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank, fit_loop=fit_loop)
        loader = dm.train_dataloader()
        assert isinstance(loader, ResumableDataLoader) and loader.sampler.seed == 7
        whole = batches(loader)
        assert [len(b) for b in whole] == [2, 2, 2]  # 6 of the padded 12 per rank
        state = loader.state_dict()
        resumed = dm.train_dataloader()
        resumed.load_state_dict(state)
        assert batches(resumed) == whole[2:]
