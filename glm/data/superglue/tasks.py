"""The eight SuperGLUE tasks as cloze problems: readers, patterns and verbalizers (docs/original-glm.md §7.1-§7.3).

A pattern returns two lists of parts (A and B). A part is `(content, shortenable)` where content is a
string (tokenized on its own), `MASK` (the blank) or `None` (a continuous-prompt slot for P-tuning).
The spec's patterns contain no `None` slots; with P-tuning on, `with_prompt_slots` inserts
`num_prompt_tokens` of them right before the blank (our choice, documented there).
"""

from __future__ import annotations

import logging
import random
import re
import string
from collections import defaultdict
from pathlib import Path
from typing import Any, ClassVar

from glm.data.superglue.examples import (
    ClozeExample,
    punctuation_standardization,
    read_jsonl,
    require,
    strip_final_punctuation,
)
from glm.errors import DataFormatError
from glm.utils.inputs import as_object

log = logging.getLogger(__name__)

__all__ = ["MASK", "TASKS", "Part", "SuperGLUETask", "get_task", "with_prompt_slots"]


class _Mask:
    """The blank of a pattern (encodes to the tokenizer's `[MASK]` id)."""

    def __repr__(self) -> str:
        return "MASK"


MASK = _Mask()
Part = tuple[Any, bool]  # (str | MASK | None, shortenable)
Parts = list[Part]


def S(text: str) -> Part:
    return (text, True)


def T(text: Any) -> Part:
    return (text, False)


def with_prompt_slots(parts_a: Parts, parts_b: Parts, num_prompt_tokens: int) -> tuple[Parts, Parts]:
    """Insert `num_prompt_tokens` continuous-prompt slots (`None`) right before the blank.

    Where the original places its prompt tokens is not in docs/original-glm.md; putting them next to the blank
    (as P-tuning's templates do) keeps every pattern string of docs/original-glm.md §7.2 intact around them.
    """
    if num_prompt_tokens <= 0:
        return parts_a, parts_b
    slots = [(None, False)] * num_prompt_tokens
    for parts in (parts_b, parts_a):  # the last blank wins, as mask_pos does
        for i in range(len(parts) - 1, -1, -1):
            if parts[i][0] is MASK:
                return (
                    (parts_a[:i] + slots + parts_a[i:], parts_b)
                    if parts is parts_a
                    else (parts_a, parts_b[:i] + slots + parts_b[i:])
                )
    raise ValueError("pattern has no blank")


class SuperGLUETask:
    """One SuperGLUE task: how to read its files and turn an example into cloze inputs.

    The class attributes are the task table: `default_pattern`, `seq_length`, `main_metric`, `epochs` and
    `batch_size` are the per-task finetuning defaults (docs/original-glm.md §7.2-§7.3). The SuperGLUE
    experiments read them through the `${glm.superglue:TASK,FIELD}` resolver (glm/run/resolvers.py), and
    the datamodule falls back to `default_pattern` / `seq_length` when its config leaves them null.
    """

    name: ClassVar[str]
    dirname: ClassVar[str]
    labels: ClassVar[tuple[str, ...]]
    multi_token: ClassVar[bool] = False
    default_pattern: ClassVar[int] = 0
    pattern_ids: ClassVar[tuple[int, ...]] = (0,)
    seq_length: ClassVar[int] = 256
    standardize: ClassVar[bool] = True  # punctuation standardisation (all tasks but COPA)
    main_metric: ClassVar[str] = "val/acc"  # optimized_metric; higher is better for every task
    epochs: ClassVar[int]  # EPOCH_SINGLE of scripts/finetune_superglue.sh
    batch_size: ClassVar[int] = 16  # BATCH_SIZE of config_tasks/task_*.sh
    files: ClassVar[dict[str, str | None]] = {
        "train": "train.jsonl",
        "val": "val.jsonl",
        "test": "test.jsonl",
    }

    # ---- reading ----
    def path(self, data_dir: str | Path, split: str) -> Path | None:
        """`<data_dir>/superglue/<Task>/<file>`; None when the task has no file for the split."""
        if split not in self.files:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(self.files)}")
        name = self.files[split]
        return None if name is None else Path(data_dir) / "superglue" / self.dirname / name

    def read(self, path: Path, split: str) -> list[ClozeExample]:
        """All examples of one file (test files carry no labels)."""
        examples: list[ClozeExample] = []
        for lineno, rec in read_jsonl(path):
            examples.extend(self.examples_from_record(rec, f"{path}:{lineno}", split))
        return examples

    def examples_from_record(self, rec: dict[str, Any], where: str, split: str) -> list[ClozeExample]:
        raise NotImplementedError

    def text(self, value: str) -> str:
        return punctuation_standardization(value) if self.standardize else value

    def label_of(self, rec: dict[str, Any], where: str, split: str) -> int | None:
        """Class index of `rec["label"]`; required outside the test split, checked against the label set."""
        if "label" not in rec:
            if split == "test":
                return None
            raise DataFormatError(f"{where}: missing field 'label'")
        value = rec["label"]
        key = self.label_key(value)
        if key not in self.labels:
            raise DataFormatError(
                f"{where}: field 'label' = {value!r} is not in the label set {list(self.labels)}"
            )
        return self.labels.index(key)

    def label_key(self, value: Any) -> str:
        return str(value).lower() if isinstance(value, bool) else str(value)

    # ---- patterns ----
    def check_pattern(self, pattern_id: int) -> None:
        if pattern_id not in self.pattern_ids:
            raise ValueError(
                f"{self.name}: unknown pattern id {pattern_id}; known ids {list(self.pattern_ids)}"
            )

    def parts(self, ex: ClozeExample, pattern_id: int) -> tuple[Parts, Parts]:
        """Part lists A and B (docs/original-glm.md §7.2)."""
        raise NotImplementedError

    def verbalizers(self, pattern_id: int) -> list[str]:
        """Verbalizer string per label index (single-token tasks)."""
        raise NotImplementedError

    def candidate_inputs(self, ex: ClozeExample, pattern_id: int) -> list[tuple[Parts, Parts, str]]:
        """(parts A, parts B, answer text) per candidate of a multi-token task."""
        parts_a, parts_b = self.parts(ex, pattern_id)
        if not ex.candidates:
            raise DataFormatError(f"{ex.source}: empty candidate list")
        return [(parts_a, parts_b, " " + c) for c in ex.candidates]

    def predict(self, ex: ClozeExample, best: int) -> Any:
        """The submission label for the argmax candidate/class `best`."""
        return self.labels[best]


# ------------------------------------------------------------------------------------------------
class BoolQ(SuperGLUETask):
    name, dirname = "boolq", "BoolQ"
    labels = ("false", "true")
    default_pattern, pattern_ids = 4, (0, 1, 2, 3, 4, 5)
    epochs = 20

    def examples_from_record(self, rec, where, split):
        fields = {
            "passage": self.text(require(rec, "passage", where, str)),
            "question": self.text(require(rec, "question", where, str)),
        }
        label = self.label_of(rec, where, split)
        return [ClozeExample(f"{split}-{where}", where, fields, label, label, submit_idx=rec.get("idx"))]

    def parts(self, ex, pattern_id):
        self.check_pattern(pattern_id)
        passage, question = ex.fields["passage"], ex.fields["question"]
        if pattern_id < 2:
            return [S(passage), T(" Question:"), S(" " + question), T("? Answer:"), T(MASK), T(".")], []
        if pattern_id < 4:
            return [
                S(passage),
                T(" Based on the previous passage,"),
                S(" " + question),
                T("?"),
                T(MASK),
                T("."),
            ], []
        return [
            T("Based on the following passage"),
            S(" " + question),
            T("?"),
            T(MASK),
            T("."),
            S(" " + passage),
        ], []

    def verbalizers(self, pattern_id):
        return [" No", " Yes"] if pattern_id % 2 == 0 else [" false", " true"]


class CB(SuperGLUETask):
    name, dirname = "cb", "CB"
    labels = ("entailment", "contradiction", "neutral")
    default_pattern, pattern_ids = 3, (0, 1, 2, 3, 4)
    main_metric = "val/f1"
    epochs = 50

    def examples_from_record(self, rec, where, split):
        fields = {
            "premise": self.text(require(rec, "premise", where, str)),
            "hypothesis": self.text(require(rec, "hypothesis", where, str)),
        }
        label = self.label_of(rec, where, split)
        return [ClozeExample(f"{split}-{where}", where, fields, label, label, submit_idx=rec.get("idx"))]

    def parts(self, ex, pattern_id):
        self.check_pattern(pattern_id)
        premise, hypothesis = ex.fields["premise"], ex.fields["hypothesis"]
        hyp = strip_final_punctuation(hypothesis)
        if pattern_id == 0:
            return [T('"'), S(hyp), T('" ?')], [T(MASK), T(","), T(' "'), S(premise), T('"')]
        if pattern_id == 1:
            return [S(hyp), T("?")], [T(MASK), T(","), S(" " + premise)]
        if pattern_id == 2:
            return [T('"'), S(hyp), T('" ?')], [T(MASK), T('. "'), S(premise), T('"')]
        if pattern_id == 3:
            return [S(hyp), T("?")], [T(MASK), T("."), S(" " + premise)]
        return self.parts_p4(premise, hypothesis, hyp), []

    def parts_p4(self, premise: str, hypothesis: str, hyp: str) -> Parts:
        return [
            S(premise),
            T(" question:"),
            S(" " + hypothesis),
            T(" true, false or neither?"),
            T(" answer:"),
            T(MASK),
        ]

    def verbalizers(self, pattern_id):
        if pattern_id == 4:
            return [" true", " false", " neither"]
        return [" Yes", " No", " Maybe"]


class RTE(CB):
    name, dirname = "rte", "RTE"
    labels = ("entailment", "not_entailment")
    default_pattern, pattern_ids = 0, (0, 1, 2, 3, 4)
    main_metric = "val/acc"
    epochs = 50

    def parts_p4(self, premise, hypothesis, hyp):
        return [S(premise), T(" question:"), S(" " + hyp), T(" True or False?"), T(" answer:"), T(MASK)]

    def verbalizers(self, pattern_id):
        return [" true", " false"] if pattern_id == 4 else [" Yes", " No"]


class COPA(SuperGLUETask):
    name, dirname = "copa", "COPA"
    labels = ("0", "1")
    multi_token = True
    default_pattern, pattern_ids = 0, (0, 1, 2)
    standardize = False
    epochs = 50

    def label_key(self, value):
        return str(int(value)) if isinstance(value, int) and not isinstance(value, bool) else repr(value)

    def examples_from_record(self, rec, where, split):
        fields = {k: require(rec, k, where, str) for k in ("premise", "choice1", "choice2", "question")}
        if fields["question"] not in ("cause", "effect"):
            raise DataFormatError(
                f"{where}: field 'question' = {fields['question']!r} must be 'cause' or 'effect'"
            )
        label = self.label_of(rec, where, split)
        ex = ClozeExample(
            f"{split}-{where}",
            where,
            fields,
            label,
            label,
            candidates=[fields["choice1"], fields["choice2"]],
            submit_idx=rec.get("idx"),
        )
        if split != "train":
            return [ex]
        # docs/original-glm.md §7.2: the training set is doubled with mirrored examples (choices swapped, label flipped)
        mirrored = dict(fields, choice1=fields["choice2"], choice2=fields["choice1"])
        flip = None if label is None else 1 - label
        return [
            ex,
            ClozeExample(
                f"{split}-{where}-mirror",
                where,
                mirrored,
                flip,
                flip,
                candidates=[mirrored["choice1"], mirrored["choice2"]],
                submit_idx=rec.get("idx"),
                meta={"mirrored": True},
            ),
        ]

    @staticmethod
    def _choice(text: str) -> str:
        text = strip_final_punctuation(text.strip())
        return text[:1].lower() + text[1:]

    def _pieces(self, ex):
        f = ex.fields
        premise = strip_final_punctuation(f["premise"].rstrip())
        return premise, self._choice(f["choice1"]), self._choice(f["choice2"])

    def parts(self, ex, pattern_id):
        self.check_pattern(pattern_id)
        premise, c1, c2 = self._pieces(ex)
        joiner = " because" if ex.fields["question"] == "cause" else ", so"
        if pattern_id == 0:
            return [
                T('"'),
                T(c1),
                T('" or "'),
                T(c2),
                T('"?'),
                S(" " + premise),
                T(joiner),
                T(MASK),
                T("."),
            ], []
        if pattern_id == 1:
            return [T(c1), T(" or"), T(" " + c2), T("?"), S(" " + premise), T(joiner), T(MASK), T(".")], []
        raise ValueError("COPA pattern 2 builds one input per choice; use candidate_inputs")

    def candidate_inputs(self, ex, pattern_id):
        self.check_pattern(pattern_id)
        premise, c1, c2 = self._pieces(ex)
        if pattern_id in (0, 1):
            parts_a, parts_b = self.parts(ex, pattern_id)
            return [(parts_a, parts_b, " " + c1), (parts_a, parts_b, " " + c2)]
        # p2: the connective is the answer, scored once per choice placed after the blank
        answer = " because" if ex.fields["question"] == "cause" else " so"
        return [
            ([T('"'), T(c1), T('" or "'), T(c2), T('"?'), S(premise), T(MASK), T(" " + c)], [], answer)
            for c in (c1, c2)
        ]

    def predict(self, ex, best):
        return best


class MultiRC(SuperGLUETask):
    name, dirname = "multirc", "MultiRC"
    labels = ("0", "1")
    default_pattern, pattern_ids = 0, (0, 1, 2, 3, 4)
    seq_length = 512
    main_metric = "val/f1a"
    epochs, batch_size = 15, 64

    def label_key(self, value):
        return str(int(value)) if isinstance(value, int) and not isinstance(value, bool) else repr(value)

    def examples_from_record(self, rec, where, split):
        pidx = rec.get("idx")
        passage = require(rec, "passage", where, dict)
        text = self.text(require(passage, "passage.text", where, str))
        questions = require(passage, "passage.questions", where, list)
        out = []
        for qi, q in enumerate(questions):
            qwhere = f"{where} (passage.questions[{qi}])"
            as_object(q, f"passage.questions[{qi}]", where)
            question = self.text(require(q, "question", qwhere, str))
            answers = require(q, "answers", qwhere, list)
            if not answers:
                raise DataFormatError(f"{qwhere}: empty candidate list (field 'answers')")
            for ai, a in enumerate(answers):
                awhere = f"{where} (passage.questions[{qi}].answers[{ai}])"
                as_object(a, f"passage.questions[{qi}].answers[{ai}]", where)
                answer = self.text(require(a, "text", awhere, str))
                label = self.label_of(a, awhere, split)
                fields = {"passage": text, "question": question, "answer": answer}
                submit = {"paragraph": pidx, "question": q.get("idx", qi), "answer": a.get("idx", ai)}
                out.append(
                    ClozeExample(
                        f"{split}-{where}-{qi}-{ai}",
                        awhere,
                        fields,
                        label,
                        label,
                        submit_idx=submit,
                        group=(pidx, q.get("idx", qi)),
                    )
                )
        return out

    def parts(self, ex, pattern_id):
        self.check_pattern(pattern_id)
        passage = strip_final_punctuation(ex.fields["passage"].rstrip())
        question = strip_final_punctuation(ex.fields["question"].rstrip())
        answer = ex.fields["answer"]
        if pattern_id == 0:
            return [
                S(passage),
                T("."),
                T(" Question:"),
                T(" " + question + "?"),
                T(" Is it"),
                T(" " + answer),
                T("?"),
                T(MASK),
                T("."),
            ], []
        if pattern_id == 1:
            return [
                S(passage),
                T("."),
                T(" Question:"),
                T(" " + question),
                T("?"),
                T(' Is the correct answer "'),
                T(answer),
                T('"?'),
                T(MASK),
                T("."),
            ], []
        if pattern_id == 2:
            return [
                S(passage),
                T(". Based on the previous passage,"),
                T(" " + question),
                T("?"),
                T(' Is "'),
                T(answer),
                T('" a correct answer?'),
                T(MASK),
                T("."),
            ], []
        if pattern_id == 3:
            return [S(passage), T(" " + question), T("- ["), T(MASK), T("]"), T(answer)], []
        return [
            S(passage),
            T("."),
            T(" Question:"),
            T(" " + question),
            T("?"),
            T(" " + answer),
            T("?"),
            T(MASK),
            T("."),
        ], []

    def verbalizers(self, pattern_id):
        return [" False", " True"] if pattern_id == 3 else [" No", " Yes"]

    def predict(self, ex, best):
        return best


class ReCoRD(SuperGLUETask):
    """ReCoRD. The shared data holds only FewGLUE's train.jsonl and dev32.jsonl (32 passages each, both
    drawn from the official train set); dev32 serves as the validation split and there is no test file."""

    name, dirname = "record", "ReCoRD"
    labels = ()
    multi_token = True
    seq_length = 512
    main_metric = "val/f1"
    epochs, batch_size = 5, 64
    files: ClassVar[dict[str, str | None]] = {"train": "train.jsonl", "val": "dev32.jsonl", "test": None}
    max_train_negatives = 9
    shuffle_seed = 42

    def read(self, path, split):
        # one shuffler per file, consumed in file order (the original's random.Random(42))
        self._shuffler = random.Random(self.shuffle_seed)
        return super().read(path, split)

    def examples_from_record(self, rec, where, split):
        passage = require(rec, "passage", where, dict)
        raw = require(passage, "passage.text", where, str)
        spans = require(passage, "passage.entities", where, list)
        entities = set()
        for i, e in enumerate(spans):
            start = require(e, f"passage.entities[{i}].start", where, int)
            end = require(e, f"passage.entities[{i}].end", where, int)  # inclusive end (ReCoRD convention)
            if not 0 <= start <= end < len(raw):  # a slice would clip or wrap silently
                raise DataFormatError(
                    f"{where}: field 'passage.entities[{i}]' = [{start}, {end}] is not a span of the "
                    f"{len(raw)}-character passage text (0 <= start <= end < length)"
                )
            entities.add(self.text(raw[start : end + 1]))
        entities.discard("")
        if not entities:
            raise DataFormatError(f"{where}: empty candidate list (field 'passage.entities')")
        entities = sorted(entities)
        text = self.text(raw).replace("@highlight\n", "- ")
        out = []
        for qi, qa in enumerate(require(rec, "qas", where, list)):
            qwhere = f"{where} (qas[{qi}])"
            as_object(qa, f"qas[{qi}]", where)
            query = self.text(require(qa, "query", qwhere, str))
            if "@placeholder" not in query:
                raise DataFormatError(f"{qwhere}: field 'query' has no '@placeholder'")
            answers_field = qa.get("answers")
            if answers_field is None and split != "test":
                raise DataFormatError(f"{qwhere}: missing field 'answers'")
            if answers_field is not None:
                require(qa, "answers", qwhere, list)
            answers = enumerate(answers_field or [])
            golds = sorted({self.text(require(a, f"answers[{ai}].text", qwhere, str)) for ai, a in answers})
            fields = {"passage": text, "query": query}
            qidx = qa.get("idx", qi)
            if split == "train":
                for g in golds:
                    # a fresh sorted list per gold answer (the original rebuilds it before each shuffle)
                    negatives = [e for e in entities if e not in golds]
                    if len(negatives) > self.max_train_negatives:
                        self._shuffler.shuffle(negatives)
                    cands = [g] + negatives[: self.max_train_negatives]
                    out.append(
                        ClozeExample(
                            f"{split}-{where}-{qi}-{g}",
                            qwhere,
                            fields,
                            None,
                            0,
                            cands,
                            golds,
                            submit_idx=qidx,
                            group=qidx,
                        )
                    )
            else:
                target = next((entities.index(g) for g in golds if g in entities), None)
                out.append(
                    ClozeExample(
                        f"{split}-{where}-{qi}",
                        qwhere,
                        fields,
                        None,
                        target,
                        list(entities),
                        golds,
                        submit_idx=qidx,
                        group=qidx,
                    )
                )
        return out

    def parts(self, ex, pattern_id):
        self.check_pattern(pattern_id)
        left, right = ex.fields["query"].split("@placeholder", 1)
        return [S(ex.fields["passage"]), T(" " + left.rstrip()), T(MASK), T(right)], []

    def predict(self, ex, best):
        return ex.candidates[best]


class WiC(SuperGLUETask):
    name, dirname = "wic", "WiC"
    labels = ("false", "true")
    default_pattern, pattern_ids = 1, (0, 1, 2)
    epochs = 30

    def examples_from_record(self, rec, where, split):
        fields = {k: self.text(require(rec, k, where, str)) for k in ("word", "sentence1", "sentence2")}
        label = self.label_of(rec, where, split)
        return [ClozeExample(f"{split}-{where}", where, fields, label, label, submit_idx=rec.get("idx"))]

    def parts(self, ex, pattern_id):
        self.check_pattern(pattern_id)
        w, s1, s2 = ex.fields["word"], ex.fields["sentence1"], ex.fields["sentence2"]
        if pattern_id == 0:
            return [
                S('"' + s1 + '" / "' + s2 + '"'),
                T(' Similar sense of "' + w + '"?'),
                T(MASK),
                T("."),
            ], []
        if pattern_id == 1:
            return [
                S(s1),
                S(" " + s2),
                T(" Does " + w + " have the same meaning in both sentences?"),
                T(MASK),
            ], []
        return [
            T(w),
            T(" ."),
            T(' Sense (1) (a) "'),
            S(s1),
            T('"'),
            T(" ("),
            T(MASK),
            T(') "'),
            T(s2),
            T('"'),
        ], []

    def verbalizers(self, pattern_id):
        return ["2", "b"] if pattern_id == 2 else [" No", " Yes"]


_PRONOUNS = {
    "i",
    "me",
    "my",
    "mine",
    "you",
    "your",
    "yours",
    "he",
    "him",
    "his",
    "she",
    "her",
    "hers",
    "it",
    "its",
    "we",
    "us",
    "our",
    "ours",
    "they",
    "them",
    "their",
    "theirs",
    "himself",
    "herself",
    "itself",
    "themselves",
    "this",
    "that",
    "these",
    "those",
    "who",
    "whom",
    "which",
    "what",
    "one",
}
_DETERMINERS = {"the", "a", "an", "his", "her", "their", "its", "my", "our", "your"}
_TITLES = {"Mr", "Mrs", "Ms", "Dr", "St", "Prof"}
_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*")


def _norm(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def wsc_heuristic_noun_phrases(text: str) -> list[str]:
    """Noun-phrase guesses from raw text: `determiner + next word`, and runs of capitalised words.

    A capitalised run counts only when it does not start a sentence (titles such as "Mr." do not end a
    sentence) and is not a pronoun. Order = first occurrence.
    """
    words = text.split()
    found: list[str] = []
    run: list[str] = []
    for i, raw in enumerate(words + [""]):
        w = raw.strip(string.punctuation + "\"'")
        prev = words[i - 1] if i > 0 else ""
        sentence_start = i == 0 or (
            prev.endswith((".", "!", "?", '."', '!"', '?"')) and prev.rstrip(".") not in _TITLES
        )
        capital = bool(w) and w[0].isupper() and w.isalpha() and w.lower() not in _PRONOUNS
        if capital and (run or not sentence_start) and not (run and run[-1] != words[i - 1].strip("\"'")):
            run.append(w)
            continue
        if run:
            found.append(" ".join(run))
            run = [w] if capital and not sentence_start else []
        elif capital and not sentence_start:
            run = [w]
        if w.lower() in _DETERMINERS and i + 1 < len(words):
            nxt = words[i + 1].strip(string.punctuation + "\"'")
            if nxt.isalpha() and nxt.lower() not in _PRONOUNS and nxt.lower() not in _DETERMINERS:
                found.append(f"{w} {nxt}" if not sentence_start else f"{w.lower()} {nxt}")
    return found


class WSC(SuperGLUETask):
    """WSC with negative candidates.

    The spec's setting (`--wsc-negative`) reads a `WSC-negative` variant whose records carry a
    `candidates` list; the shared data is plain SuperGLUE WSC. When a record has a `candidates` field it
    is used as the original does: exact duplicates dropped (first occurrence kept), nothing else removed.
    Otherwise the negatives of an example are, in this order, deduplicated
    case-insensitively and excluding the example's own span1 (and any phrase sharing its last word) and
    its pronoun:
      1. the `span1_text` of every other record of the same file with the same text (annotated noun
         phrases of that very sentence; this is what makes a `False` example's true referent a
         candidate, so validation is meaningful), then
      2. `wsc_heuristic_noun_phrases(text)`: determiner + next word and non-initial capitalised words.
    Training keeps only `True` examples (label index 0 = span1); more than 9 negatives are split into
    groups of 9 (span1 + 9 = 10 candidates, the last group filled from the start of the list): the
    original splits its `candidates` list, which holds the negatives only (docs/original-glm.md §7.2).
    Prediction: `True` iff candidate 0 (span1) scores highest. An example with no negative at all is
    kept (its prediction is always `True`) and counted in the log.
    """

    name, dirname = "wsc", "WSC"
    labels = ("False", "True")
    multi_token = True
    default_pattern, pattern_ids = 2, (0, 1, 2)
    seq_length = 128
    epochs = 50
    max_train_negatives = 9  # negatives per training example (span1 comes on top)

    def label_key(self, value):
        return str(value) if isinstance(value, bool) else repr(value)

    def read(self, path, split):
        rows = []
        by_text: dict[str, list[str]] = defaultdict(list)
        for lineno, rec in read_jsonl(path):
            where = f"{path}:{lineno}"
            text = self.text(require(rec, "text", where, str))
            target = require(rec, "target", where, dict)
            span1 = self.text(require(target, "target.span1_text", where, str))
            rows.append((where, rec, text, target, span1))
            by_text[text].append(span1)
        examples, no_negatives, unrepaired = [], 0, 0
        for where, rec, text, target, span1 in rows:
            pronoun = self.text(require(target, "target.span2_text", where, str))
            index = require(target, "target.span2_index", where, int)
            words = text.split()
            index, ok = self._repair(words, pronoun, index)
            unrepaired += not ok
            if not 0 <= index < len(words):
                raise DataFormatError(
                    f"{where}: field 'target.span2_index' = {index} is outside the text's {len(words)} words"
                )
            if words[index] != pronoun and words[index].startswith(pronoun):
                # as the original: a word that only starts with the pronoun ('him,"') is split in two and
                # the pronoun alone is marked ('*him* ,"')
                words[index : index + 1] = [pronoun, words[index][len(pronoun) :]]
            words[index] = "*" + words[index] + "*"
            label = self.label_of(rec, where, split)
            if "candidates" in rec:
                raw = [
                    self.text(c if isinstance(c, str) else require(c, f"candidates[{ci}].text", where, str))
                    for ci, c in enumerate(require(rec, "candidates", where, list))
                ]
                negatives = list(dict.fromkeys(raw))  # exact duplicates only, order kept
            else:
                raw = [s for s in by_text[text]] + wsc_heuristic_noun_phrases(text)
                negatives = self._dedup(raw, span1, pronoun)
            no_negatives += not negatives
            fields = {"text": " ".join(words), "pronoun": pronoun, "span1": span1}
            base = {"fields": fields, "label": label, "submit_idx": rec.get("idx"), "source": where}
            if split != "train":
                examples.append(
                    ClozeExample(
                        f"{split}-{where}",
                        target=0 if label == 1 else None,
                        candidates=[span1] + negatives,
                        **base,
                    )
                )
                continue
            if label != 1:  # training uses the positive examples only (docs/original-glm.md §7.2)
                continue
            k = self.max_train_negatives
            groups = [negatives[i : i + k] for i in range(0, len(negatives), k)] or [[]]
            if len(groups) > 1 and len(groups[-1]) < k:
                groups[-1] = (groups[-1] + negatives)[:k]
            for gi, g in enumerate(groups):
                examples.append(
                    ClozeExample(f"{split}-{where}-{gi}", target=0, candidates=[span1] + g, **base)
                )
        if no_negatives:
            log.info("%s: %d examples have no negative candidate (always predicted True)", path, no_negatives)
        if unrepaired:
            log.warning(
                "%s: %d examples whose span2_index does not match span2_text even at +-1", path, unrepaired
            )
        return examples

    @staticmethod
    def _repair(words: list[str], pronoun: str, index: int) -> tuple[int, bool]:
        """Fix span2_index by +-1 when the words there do not spell span2_text (docs/original-glm.md §7.2)."""
        want = [_norm(w) for w in pronoun.split()]

        def matches(i: int) -> bool:
            return i >= 0 and [_norm(w) for w in words[i : i + len(want)]] == want

        if matches(index):
            return index, True
        for off in (-1, 1):
            if matches(index + off):
                return index + off, True
        return index, False

    @staticmethod
    def _dedup(raw: list[str], span1: str, pronoun: str) -> list[str]:
        seen = {_norm(span1), _norm(pronoun)}
        head = _norm(span1).split()[-1:] if _norm(span1) else []
        out = []
        for c in raw:
            n = _norm(c)
            if not n or n.split()[-1:] == head or any(n in s for s in seen):
                continue  # a duplicate, a part of an earlier phrase, or the same head noun as span1
            seen.add(n)
            out.append(c)
        return out

    def parts(self, ex, pattern_id):
        self.check_pattern(pattern_id)
        text, pronoun = ex.fields["text"], ex.fields["pronoun"]
        if pattern_id == 0:
            return [S(text), T(" The pronoun '*" + pronoun + "*' refers to"), T(MASK), T(".")], []
        if pattern_id == 1:
            return [
                S(text),
                T(" In the previous sentence, the pronoun '*" + pronoun + "*' refers to"),
                T(MASK),
                T("."),
            ], []
        return [
            S(text),
            T(" Question: In the passage above, what does the pronoun '*" + pronoun + "*' refer to?"),
            T(" Answer:"),
            T(MASK),
            T("."),
        ], []

    def predict(self, ex, best):
        return self.labels[1] if best == 0 else self.labels[0]


TASKS: dict[str, SuperGLUETask] = {t.name: t() for t in (BoolQ, CB, COPA, MultiRC, ReCoRD, RTE, WiC, WSC)}


def get_task(name: str) -> SuperGLUETask:
    """The task object for `name` (case-insensitive: boolq, cb, copa, multirc, record, rte, wic, wsc)."""
    key = name.lower()
    if key not in TASKS:
        raise ValueError(f"unknown SuperGLUE task {name!r}; known: {sorted(TASKS)}")
    return TASKS[key]
