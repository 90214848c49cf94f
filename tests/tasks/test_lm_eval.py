"""LM evaluation: LAMBADA layouts (bi/uni) and perplexity windows by hand (docs/original-glm.md §10), the perplexity
arithmetic, and the experiments on slices of the shared files (once the pipeline exists)."""

from __future__ import annotations

import math

import pytest

from glm.data.lm_eval import (
    blank_sample,
    lambada_sample,
    num_windows,
    perplexity,
    perplexity_windows,
    read_lambada,
    split_lambada,
    wikitext_detokenize,
)

CLS, MASK, GMASK, SOP, EOS = 2, 4, 6, 7, 0


class Ids:
    """The contract's special ids (docs/contracts.md); layouts below use plain ints as word ids."""

    pad_id = eos_id = 0
    cls_id, mask_id, smask_id, gmask_id, sop_id, eop_id = 2, 4, 5, 6, 7, 8


def test_split_lambada():
    assert split_lambada("he gave it to  Anna . then Anna") == ("he gave it to  Anna . then", "Anna")
    assert split_lambada("word") == ("", "word")


def test_lambada_bidirectional_layout_by_hand():
    ctx, ans = [11, 12, 13], [21, 22]
    s = lambada_sample(ctx, ans, Ids, seq_length=16)
    # [CLS] c1 c2 c3 [MASK] [eos] | [sop] a1 ; targets a1 a2 (no eop)
    assert s.input_ids.tolist() == [CLS, 11, 12, 13, MASK, EOS, SOP, 21]
    assert s.targets.tolist()[6:] == [21, 22]
    assert s.loss_mask.tolist() == [0] * 6 + [1, 1]
    assert s.position_ids.tolist() == [[0, 1, 2, 3, 4, 5, 4, 4], [0, 0, 0, 0, 0, 0, 1, 2]]
    assert s.sep == 6
    # too long: the context loses tokens on the LEFT so that 3 + ctx + k <= seq_length
    s = lambada_sample(ctx, ans, Ids, seq_length=7, task_mask=True)
    assert s.input_ids.tolist() == [CLS, 12, 13, GMASK, EOS, SOP, 21] and len(s) == 7


def test_lambada_unidirectional_layout_by_hand():
    s = lambada_sample([11, 12, 13], [21, 22], Ids, seq_length=16, unidirectional=True)
    # Part A = [CLS] t0 [mask] [eos]; Part B generates t1 t2 a1 a2; only the answer is scored
    assert s.input_ids.tolist() == [CLS, 11, MASK, EOS, SOP, 12, 13, 21]
    assert s.targets.tolist()[4:] == [12, 13, 21, 22]
    assert s.loss_mask.tolist() == [0, 0, 0, 0, 0, 0, 1, 1]
    assert s.position_ids.tolist() == [[0, 1, 2, 3, 2, 2, 2, 2], [0, 0, 0, 0, 1, 2, 3, 4]]
    assert s.sep == 4


@pytest.mark.parametrize(
    "n,seq,o,expected",
    [(10, 5, 2, 4), (11, 5, 2, 5), (4, 5, 2, 1), (3, 5, 2, 1), (1000, 512, 256, 3), (1024, 1025, 256, 1)],
)
def test_window_count(n, seq, o, expected):
    assert num_windows(n, seq - 1, o) == expected


@pytest.mark.parametrize("unidirectional", [False, True])
@pytest.mark.parametrize("n", [10, 11, 4, 23])
def test_perplexity_windows_score_every_token_but_the_first_once(n, unidirectional):
    tokens = list(range(100, 100 + n))
    wins = perplexity_windows(tokens, Ids, seq_length=5, overlap=2, unidirectional=unidirectional)
    assert len(wins) == num_windows(n, 4, 2)
    scored = [int(t) for w in wins for t, m in zip(w.targets, w.loss_mask, strict=True) if m]
    assert scored == tokens[1:]
    assert all(len(w) <= 5 + 1 for w in wins)


def test_perplexity_window_layout_by_hand():
    tokens = [100 + i for i in range(10)]  # W = 4, o = 2: windows [0,4) [2,6) [4,8) [6,10)
    w = perplexity_windows(tokens, Ids, seq_length=5, overlap=2)
    # window 0: prompt = first token, text = the other 3, all scored; no eos
    assert w[0].input_ids.tolist() == [CLS, 100, MASK, SOP, 101, 102]
    assert w[0].targets.tolist()[3:] == [101, 102, 103] and w[0].loss_mask.tolist() == [0, 0, 0, 1, 1, 1]
    assert w[0].position_ids.tolist() == [[0, 1, 2, 2, 2, 2], [0, 0, 0, 1, 2, 3]] and w[0].sep == 3
    # window 1 covers 102..105: prompt = first W - o = 2 tokens, text = last o = 2 tokens
    assert w[1].input_ids.tolist() == [CLS, 102, 103, MASK, SOP, 104]
    assert w[1].targets.tolist()[4:] == [104, 105] and w[1].loss_mask.tolist() == [0, 0, 0, 0, 1, 1]
    assert w[1].position_ids.tolist() == [[0, 1, 2, 3, 3, 3], [0, 0, 0, 0, 1, 2]]
    # unidirectional: one prompt token, the rest generated, only the last o scored
    u = perplexity_windows(tokens, Ids, seq_length=5, overlap=2, unidirectional=True, task_mask=True)
    assert u[1].input_ids.tolist() == [CLS, 102, GMASK, SOP, 103, 104]
    assert u[1].targets.tolist()[3:] == [103, 104, 105] and u[1].loss_mask.tolist() == [0, 0, 0, 0, 1, 1]


def test_perplexity_arithmetic_by_hand():
    # 5 tokens -> 4 scored; losses 1, 2, 0.5, 0.5 nats; 3 original words
    r = perplexity(4.0, num_tokens=5, num_original_words=3)
    assert r.avg_loss == 1.0 and r.ppl == pytest.approx(math.e)
    assert r.adjusted_ppl == pytest.approx(math.exp(1.0 * 4 / 2))
    assert perplexity(100.0, 2, 2).ppl == pytest.approx(math.exp(20))  # capped at exp(20)


def test_blank_sample_rejects_empty_target():
    with pytest.raises(ValueError, match="no target"):
        blank_sample([CLS, MASK], 1, [], 0, SOP)


def test_wikitext_detokenize():
    raw = " = Valkyria = \n The game 's 1 @,@ 000 @-@ page ( final ) guide , it said . \n"
    assert wikitext_detokenize(raw) == " = Valkyria =\nThe game's 1,000-page (final) guide, it said.\n"
    # the rest of the original's wikitext_detokenizer, by hand, one rule at a time
    assert wikitext_detokenize(" = = = Plot = = = \n") == " === Plot ===\n"
    assert wikitext_detokenize("the players ' union") == "the players' union"  # "s '" -> "s'"
    assert wikitext_detokenize("a { b } c") == "a {b} c"
    assert wikitext_detokenize("at 30 \u00b0 C") == "at 30\u00b0C"
    assert wikitext_detokenize("a ' quoted ' word") == "a 'quoted' word"
    # quotes pair up left to right over any text, as in the original: "s '" -> "s'" (twice here), then the
    # apostrophe of "players'" pairs with the one after "and" and both hug their content; the last is alone
    assert wikitext_detokenize("the players ' union and ' others ' .") == "the players'union and' others' ."


def test_real_lambada_file(tmp_path):
    from glm.data.paths import need_shared_data

    path = need_shared_data("lambada/lambada_test.jsonl", "LAMBADA test")
    pairs = read_lambada(path)
    assert len(pairs) == 5153
    assert all(ctx and word and " " not in word for ctx, word in pairs)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a b"}\n{"txt": "c"}\n')
    from glm.errors import DataFormatError

    with pytest.raises(DataFormatError, match=r"bad.jsonl:2: field 'text' missing"):
        read_lambada(bad)


def test_score_samples_against_hand_values():
    import torch

    from glm.tasks.lm_eval import score_samples

    logits = torch.log(
        torch.tensor(
            [
                [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4]],
                [[0.2, 0.5, 0.3], [0.5, 0.25, 0.25], [0.1, 0.1, 0.8]],
            ],
            dtype=torch.float64,
        )
    )
    targets = torch.tensor([[0, 1, 2], [1, 2, 2]])
    mask = torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    ce, count, correct = score_samples(logits, targets, mask)
    torch.testing.assert_close(
        ce,
        torch.tensor([-math.log(0.6) - math.log(0.4), -math.log(0.5) - math.log(0.25)], dtype=torch.float64),
    )
    assert count.tolist() == [2, 2]
    assert correct.tolist() == [True, False]  # row 1 slot 1: argmax 0 != target 2


def test_lm_eval_module_has_no_optimizer_and_refuses_fit():
    import inspect

    from glm.tasks.lm_eval import LMEvalModule

    params = inspect.signature(LMEvalModule).parameters
    assert "optimizer" not in params and "scheduler" not in params
    module = LMEvalModule(model={"preset": "glm-tiny"})
    with pytest.raises(RuntimeError, match=r"only evaluates.*stages=\[test\]"):
        module.setup("fit")
    module.setup("test")  # evaluation stages are fine


def test_seq2seq_configs_use_canonical_scheduler_keys(compose_cfg):
    from conftest import CONF
    from omegaconf import OmegaConf

    from glm.tasks.optim import SCHEDULER_KEYS, normalize_scheduler

    for name in ("xsum", "cnn_dm", "gigaword"):  # the composed values (the experiments share a base)
        sch = OmegaConf.to_container(compose_cfg(name, ["logger=none"]).task.scheduler, resolve=True)
        assert set(sch) <= set(SCHEDULER_KEYS), name  # no alias (warmup/decay) spellings
        assert normalize_scheduler(dict(sch)) == normalize_scheduler(
            {"warmup_ratio": 0.06, "decay_style": "linear"}
        )
    assert set(OmegaConf.load(CONF / "task" / "seq2seq.yaml").scheduler) <= set(SCHEDULER_KEYS)
    assert "optimizer" not in OmegaConf.load(CONF / "task" / "lm_eval.yaml")


# --------------------------------------------------------------------------------------------------
# The experiments on slices of the real files, in-process through glm.run.pipeline.run (random glm-tiny)
# --------------------------------------------------------------------------------------------------
def _run_experiment(compose_cfg, tmp_path, name: str, overrides: list[str]) -> dict:
    import json

    from glm.run.pipeline import run

    cfg = compose_cfg(name, ["model=glm_tiny", "logger=none", "callbacks.progress=null", *overrides])
    returned = run(cfg)
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk == pytest.approx(returned)
    return on_disk


@pytest.mark.parametrize("experiment", ["lambada_zeroshot", "lambada_uni"])
def test_lambada_experiment_on_the_real_file(experiment, compose_cfg, tmp_path):
    from glm.data.paths import need_shared_data

    need_shared_data("lambada/lambada_test.jsonl", "LAMBADA test")
    need_shared_data("tokenizers/bert-base-uncased/vocab.txt", "BERT vocabulary")
    m = _run_experiment(compose_cfg, tmp_path, experiment, ["data.max_samples=12", "data.micro_batch_size=6"])
    assert m["test/num_samples"] == 12
    assert 0.0 <= m["test/acc"] <= 1.0
    # a random glm-tiny (init std 0.02) has near-uniform predictions: CE per answer token ~ ln V, V = 30592
    assert m["test/loss"] == pytest.approx(math.log(30592), abs=0.1)


def test_wikitext_perplexity_experiment_on_the_real_file(compose_cfg, tmp_path):
    from glm.data.paths import need_shared_data

    path = need_shared_data("wikitext-2/wiki.test.tokens", "WikiText-2 test")
    need_shared_data("tokenizers/bert-base-uncased/vocab.txt", "BERT vocabulary")
    m = _run_experiment(
        compose_cfg, tmp_path, "wikitext_ppl", ["data.max_lines=12", "data.seq_length=128", "data.overlap=32"]
    )
    # the token count of the slice, recomputed from the file; every token but the first is scored once
    from glm.tokenizer import load_tokenizer

    raw = "\n".join(path.read_text(encoding="utf-8").split("\n")[:12])
    tok = load_tokenizer({"kind": "bert", "path": str(path.parents[1] / "tokenizers" / "bert-base-uncased")})
    n = len(tok.encode(wikitext_detokenize(raw)))
    words = len(raw.split())
    assert m["test/num_tokens"] == n and n > 300  # several windows of W = 127
    assert m["test/loss"] == pytest.approx(math.log(30592), abs=0.1)
    assert m["test/ppl"] == pytest.approx(math.exp(m["test/loss"]), rel=1e-9)
    assert m["test/adjusted_ppl"] == pytest.approx(math.exp(m["test/loss"] * (n - 1) / (words - 1)), rel=1e-9)


def test_position_ids_beyond_the_model_are_refused_naming_the_key(compose_cfg, tmp_path):
    from glm.data.paths import need_shared_data
    from glm.run.pipeline import run

    need_shared_data("wikitext-2/wiki.test.tokens", "WikiText-2 test")
    cfg = compose_cfg(
        "wikitext_ppl", ["model=glm_tiny", "logger=none", "callbacks.progress=null", "data.max_lines=30"]
    )
    # seq_length 1024 (docs/original-glm.md §10.2, zero_wikitext.sh) does not fit glm-tiny's 512 positions
    with pytest.raises(
        ValueError, match=r"data.seq_length: .*position ids up to 1022.*max_sequence_length=512"
    ):
        run(cfg)


class WordIds(Ids):
    """`Ids` plus a whitespace tokenizer (words -> 100, 101, ... by first use) for datamodule tests."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def encode(self, text: str) -> list[int]:
        return [self.vocab.setdefault(w, 100 + len(self.vocab)) for w in text.split()]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]


def test_lm_eval_bad_input_named_and_truncation_counted(tmp_path):
    from collections import Counter

    from glm.data.lm_eval import LMEvalDataModule
    from glm.errors import DataFormatError

    p = tmp_path / "l.jsonl"
    p.write_text('{"text": "one two three"}\n\n')
    with pytest.raises(DataFormatError, match=r"l.jsonl:2: empty line"):
        read_lambada(p)
    p.write_bytes(b'{"text": "one two"}\n{"text": "caf\xe9 au lait"}\n')
    with pytest.raises(DataFormatError, match=r"l.jsonl:2: not valid UTF-8"):
        read_lambada(p)
    # contexts longer than seq_length - 3 - k lose tokens on the left, and each one is counted
    p.write_text('{"text": "a b c d e f g"}\n{"text": "a b"}\n{"text": "a b c d e f g h i"}\n')
    dm = LMEvalDataModule(str(p), WordIds(), kind="lambada", seq_length=7)
    dm.setup("test")
    assert dm.stats == Counter({"truncated": 2}) and max(len(s) for s in dm.samples) == 7
    # perplexity: non-UTF-8 bytes and a document too short to score, both naming the file
    t = tmp_path / "doc.txt"
    t.write_bytes(b"fine line\nbad \xff\n")
    with pytest.raises(DataFormatError, match=r"doc.txt:2: not valid UTF-8"):
        LMEvalDataModule(str(t), WordIds(), kind="perplexity", seq_length=8, overlap=2).setup("test")
    t.write_text("word\n")
    with pytest.raises(
        DataFormatError, match=r"doc.txt: perplexity needs a document of at least 2 tokens, got 1"
    ):
        LMEvalDataModule(str(t), WordIds(), kind="perplexity", seq_length=8, overlap=2).setup("test")


def test_lambada_on_a_pretraining_export_takes_its_architecture_and_tokenizer(compose_cfg, tmp_path):
    """`task.pretrained=<export>` with another model group (glm-base) and the experiment's data tokenizer
    (BERT): the export's model_config.yaml and tokenizer/ win, so the 2-step ci_tiny model is evaluated
    on its own 2000-piece vocabulary (near-uniform loss ln V_export, not ln 30592)."""
    import shutil

    import yaml

    from glm.data.paths import need_shared_data
    from glm.run.pipeline import run

    need_shared_data("gutenberg/11-0.txt", "Gutenberg book")
    need_shared_data("lambada/lambada_test.jsonl", "LAMBADA test")
    run(compose_cfg("ci_tiny", ["logger=none", "trainer.max_steps=2", "trainer.val_check_interval=2"]))
    export = tmp_path / "export"
    shutil.move(tmp_path / "run" / "export", export)
    shutil.rmtree(tmp_path / "run")
    exported = yaml.safe_load((export / "model_config.yaml").read_text())

    cfg = compose_cfg(
        "lambada_zeroshot",
        [
            "model=glm_base",
            "logger=none",
            "callbacks.progress=null",
            f"task.pretrained={export}",
            "data.max_samples=6",
            "data.micro_batch_size=6",
        ],
    )
    assert cfg.model.preset == "glm-base" and cfg.data.tokenizer.kind == "bert"  # what the config alone says
    m = run(cfg)
    assert m["test/num_samples"] == 6
    assert exported["vocab_size"] < 3000
    assert m["test/loss"] == pytest.approx(math.log(exported["vocab_size"]), abs=0.3)
    stored = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert stored["data"]["tokenizer"] == str(export / "tokenizer")
