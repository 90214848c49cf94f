"""docs/original-glm.md §7.2, piece by piece: every pattern's parts (string, shortenable flag), verbalizers, label order,
default pattern id and sequence length, written out by hand from the original.

The pattern tests in test_cloze_data.py decode whole sequences, which cannot see how a pattern is cut into
pieces; the original tokenizes each piece on its own (docs/original-glm.md §7.1), so the cut changes the ids (e.g. `","`
then `' "'` is not the same token sequence as `', "'`). No data or tokenizer needed.
"""

from __future__ import annotations

import pytest

from glm.data.superglue import get_task
from glm.data.superglue.examples import ClozeExample
from glm.data.superglue.tasks import MASK

M = (MASK, False)


def S(text: str) -> tuple[str, bool]:
    return (text, True)


def T(text: str) -> tuple[str, bool]:
    return (text, False)


def ex(**fields: str) -> ClozeExample:
    return ClozeExample("g", "test", dict(fields))


def parts(task: str, example: ClozeExample, pattern: int) -> list:
    a, b = get_task(task).parts(example, pattern)
    return [a, b]


def test_task_constants():
    # (labels, default pattern id, seq length, multi-token, punctuation standardisation)
    want = {
        "boolq": (("false", "true"), 4, 256, False, True),
        "cb": (("entailment", "contradiction", "neutral"), 3, 256, False, True),
        "rte": (("entailment", "not_entailment"), 0, 256, False, True),
        "copa": (("0", "1"), 0, 256, True, False),
        "multirc": (("0", "1"), 0, 512, False, True),
        "record": ((), 0, 512, True, True),
        "wic": (("false", "true"), 1, 256, False, True),
        "wsc": (("False", "True"), 2, 128, True, True),
    }
    for name, (labels, pid, seq, multi, std) in want.items():
        t = get_task(name)
        assert (t.labels, t.default_pattern, t.seq_length, t.multi_token, t.standardize) == (
            labels,
            pid,
            seq,
            multi,
            std,
        ), name


def test_boolq():
    e = ex(passage="The passage.", question="is it so")
    p01 = [[S("The passage."), T(" Question:"), S(" is it so"), T("? Answer:"), M, T(".")], []]
    p23 = [[S("The passage."), T(" Based on the previous passage,"), S(" is it so"), T("?"), M, T(".")], []]
    p45 = [[T("Based on the following passage"), S(" is it so"), T("?"), M, T("."), S(" The passage.")], []]
    for pid, want in [(0, p01), (1, p01), (2, p23), (3, p23), (4, p45), (5, p45)]:
        assert parts("boolq", e, pid) == want, pid
    t = get_task("boolq")
    assert [t.verbalizers(p) for p in range(6)] == [[" No", " Yes"], [" false", " true"]] * 3


@pytest.mark.parametrize("task", ["cb", "rte"])
def test_cb_rte_patterns_0_to_3(task):
    # hyp = hypothesis with its trailing punctuation stripped
    e = ex(premise="A man sleeps.", hypothesis="He rests?!")
    assert parts(task, e, 0) == [
        [T('"'), S("He rests"), T('" ?')],
        [M, T(","), T(' "'), S("A man sleeps."), T('"')],
    ]
    assert parts(task, e, 1) == [[S("He rests"), T("?")], [M, T(","), S(" A man sleeps.")]]
    assert parts(task, e, 2) == [[T('"'), S("He rests"), T('" ?')], [M, T('. "'), S("A man sleeps."), T('"')]]
    assert parts(task, e, 3) == [[S("He rests"), T("?")], [M, T("."), S(" A man sleeps.")]]


def test_cb_rte_pattern_4_and_verbalizers():
    e = ex(premise="A man sleeps.", hypothesis="He rests.")
    # CB p4 keeps the whole hypothesis, RTE p4 uses the stripped one
    assert parts("cb", e, 4) == [
        [
            S("A man sleeps."),
            T(" question:"),
            S(" He rests."),
            T(" true, false or neither?"),
            T(" answer:"),
            M,
        ],
        [],
    ]
    assert parts("rte", e, 4) == [
        [S("A man sleeps."), T(" question:"), S(" He rests"), T(" True or False?"), T(" answer:"), M],
        [],
    ]
    cb, rte = get_task("cb"), get_task("rte")
    # label order entailment, contradiction, neutral / entailment, not_entailment
    assert [cb.verbalizers(p) for p in range(5)] == [[" Yes", " No", " Maybe"]] * 4 + [
        [" true", " false", " neither"]
    ]
    assert [rte.verbalizers(p) for p in range(5)] == [[" Yes", " No"]] * 4 + [[" true", " false"]]


def test_copa():
    cause = ex(premise="The man fell.", choice1="He slipped.", choice2="It rained!", question="cause")
    effect = ex(premise="The man fell.", choice1="He slipped.", choice2="It rained!", question="effect")
    head = [T('"'), T("he slipped"), T('" or "'), T("it rained"), T('"?')]
    # premise = " " + premise without its final punctuation (shortenable); choices lower-cased first letter
    assert parts("copa", cause, 0) == [head + [S(" The man fell"), T(" because"), M, T(".")], []]
    assert parts("copa", effect, 0) == [head + [S(" The man fell"), T(", so"), M, T(".")], []]
    assert parts("copa", cause, 1) == [
        [T("he slipped"), T(" or"), T(" it rained"), T("?"), S(" The man fell"), T(" because"), M, T(".")],
        [],
    ]
    copa = get_task("copa")
    for pid in (0, 1):
        assert [c[2] for c in copa.candidate_inputs(cause, pid)] == [" he slipped", " it rained"]
    # p2: one input per choice, the premise without its leading space, the connective is the answer
    p2 = copa.candidate_inputs(effect, 2)
    assert [([x[0] for x in a], b, ans) for a, b, ans in p2] == [
        (['"', "he slipped", '" or "', "it rained", '"?', "The man fell", MASK, " he slipped"], [], " so"),
        (['"', "he slipped", '" or "', "it rained", '"?', "The man fell", MASK, " it rained"], [], " so"),
    ]
    assert copa.candidate_inputs(cause, 2)[0][2] == " because"


def test_multirc():
    # passage and question: rstripped, final punctuation removed; only the passage is shortenable
    e = ex(passage="Some text.  ", question="Why is that?", answer="Because")
    P = S("Some text")
    assert parts("multirc", e, 0) == [
        [P, T("."), T(" Question:"), T(" Why is that?"), T(" Is it"), T(" Because"), T("?"), M, T(".")],
        [],
    ]
    assert parts("multirc", e, 1) == [
        [
            P,
            T("."),
            T(" Question:"),
            T(" Why is that"),
            T("?"),
            T(' Is the correct answer "'),
            T("Because"),
            T('"?'),
            M,
            T("."),
        ],
        [],
    ]
    assert parts("multirc", e, 2) == [
        [
            P,
            T(". Based on the previous passage,"),
            T(" Why is that"),
            T("?"),
            T(' Is "'),
            T("Because"),
            T('" a correct answer?'),
            M,
            T("."),
        ],
        [],
    ]
    assert parts("multirc", e, 3) == [[P, T(" Why is that"), T("- ["), M, T("]"), T("Because")], []]
    assert parts("multirc", e, 4) == [
        [P, T("."), T(" Question:"), T(" Why is that"), T("?"), T(" Because"), T("?"), M, T(".")],
        [],
    ]
    t = get_task("multirc")
    assert [t.verbalizers(p) for p in range(5)] == [[" No", " Yes"]] * 3 + [
        [" False", " True"],
        [" No", " Yes"],
    ]


def test_record():
    e = ex(passage="- A story.", query="Left side   @placeholder right side.")
    assert parts("record", e, 0) == [[S("- A story."), T(" Left side"), M, T(" right side.")], []]
    e.candidates = ["Bob", "Ann"]
    assert [c[2] for c in get_task("record").candidate_inputs(e, 0)] == [" Bob", " Ann"]


def test_wic():
    e = ex(word="bank", sentence1="River bank.", sentence2="Bank loan.")
    assert parts("wic", e, 0) == [
        [S('"River bank." / "Bank loan."'), T(' Similar sense of "bank"?'), M, T(".")],
        [],
    ]
    assert parts("wic", e, 1) == [
        [S("River bank."), S(" Bank loan."), T(" Does bank have the same meaning in both sentences?"), M],
        [],
    ]
    assert parts("wic", e, 2) == [
        [
            T("bank"),
            T(" ."),
            T(' Sense (1) (a) "'),
            S("River bank."),
            T('"'),
            T(" ("),
            M,
            T(') "'),
            T("Bank loan."),
            T('"'),
        ],
        [],
    ]
    t = get_task("wic")
    assert [t.verbalizers(p) for p in range(3)] == [[" No", " Yes"], [" No", " Yes"], ["2", "b"]]


def test_wsc():
    e = ex(text="Bo saw Al because *he* was there .", pronoun="he", span1="Bo")
    text = S("Bo saw Al because *he* was there .")
    assert parts("wsc", e, 0) == [[text, T(" The pronoun '*he*' refers to"), M, T(".")], []]
    assert parts("wsc", e, 1) == [
        [text, T(" In the previous sentence, the pronoun '*he*' refers to"), M, T(".")],
        [],
    ]
    assert parts("wsc", e, 2) == [
        [
            text,
            T(" Question: In the passage above, what does the pronoun '*he*' refer to?"),
            T(" Answer:"),
            M,
            T("."),
        ],
        [],
    ]
    e.candidates = ["Bo", "Al"]
    assert [c[2] for c in get_task("wsc").candidate_inputs(e, 2)] == [" Bo", " Al"]
