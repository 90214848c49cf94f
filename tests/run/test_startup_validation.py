"""Start-up validation before any data is tokenised or any model is built (glm/run/validation.py,
glm/run/resume.py): lengths against the model's position tables, runs that would train 0 steps, every split
the stages read checked before training, a checkpoint of another architecture, and the run-level errors as
one stderr line (exit 2, no traceback)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import data_root, need_data, run_cli

from glm.data.cloze import ClozeDataModule, build_cloze_sequence
from glm.data.lm_eval import LMEvalDataModule, lambada_sample, perplexity_windows
from glm.data.masking import GLMMasker, MaskingConfig, SpecialIds
from glm.data.pretrain import PretrainDataModule
from glm.data.seq2seq import Seq2SeqDataModule, build_seq2seq_sample, build_source
from glm.errors import ConfigError, DataFormatError, NonFiniteLossError, UserError
from glm.run.validation import position_demands, validate

BERT = "tokenizer@data.tokenizer=bert_uncased"  # the shared BERT vocabulary: nothing to train


def _error(cfg) -> str:
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    return str(err.value)


# ---- lengths against the position tables -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("experiment", "overrides", "key", "largest"),
    [
        ("ci_tiny", ["data.seq_length=1024"], "data.seq_length=1024", 1023),
        ("ci_tiny", ["data.seq_length=514"], "data.seq_length=514", 513),
        ("ci_tiny", ["data.seq_length=600", "data.pack=true"], "data.seq_length=600", 599),
        ("superglue_rte", ["model=glm_tiny", "data.seq_length=600"], "data.seq_length=600", 598),
        ("lambada_zeroshot", ["data.seq_length=1024"], "data.seq_length=1024", 1022),
        ("wikitext_ppl", [], "data.seq_length=1024", 1022),
    ],
)
def test_lengths_beyond_the_position_table_are_refused(
    experiment: str, overrides: list[str], key: str, largest: int, compose_cfg
) -> None:
    message = _error(compose_cfg(experiment, ["logger=none", *overrides]))
    name, value = key.rsplit("=", 1)
    assert message.startswith(f"{name}: {value} gives ")
    assert f"position ids up to {largest}, but the model's position tables hold ids 0..512" in message
    assert "model preset glm-tiny, model.max_sequence_length=512" in message
    most = int(value) - (largest - 512)
    assert f"set {name} <= {most}, or model.max_sequence_length >= {largest}" in message


@pytest.mark.parametrize(
    ("experiment", "overrides"),
    [
        ("ci_tiny", ["data.seq_length=513"]),  # ids 0..512: the table's last row is P
        ("ci_tiny", ["data.seq_length=1024", "model.max_sequence_length=1023"]),
        ("ci_tiny", ["data.seq_length=4096", "model.position_encoding=rotary"]),  # no table to overflow
        ("superglue_rte", ["model=glm_tiny", "data.seq_length=514"]),
        ("xsum", ["data.src_seq_length=513", "data.tgt_seq_length=512"]),
        ("wikitext_ppl", ["model=glm_10b"]),  # P 1024
    ],
)
def test_lengths_within_the_position_table_pass(experiment: str, overrides: list[str], compose_cfg) -> None:
    validate(compose_cfg(experiment, ["logger=none", *overrides]))


@pytest.mark.parametrize(
    ("overrides", "raised"),
    [
        (["data.src_seq_length=1024"], 1023),
        (["data.src_seq_length=64", "data.tgt_seq_length=600"], 600),
        (["data.src_seq_length=64", "+task.generation.max_new_tokens=700"], 700),
        ([], 607),  # xsum's own src_seq_length 608 on glm-tiny (P 512)
    ],
)
def test_seq2seq_raises_the_position_tables_to_its_lengths(
    overrides: list[str], raised: int, compose_cfg
) -> None:
    """As the original's seq2seq finetuning raises --max-position-embeddings to --src-seq-length: the model
    the run builds (and stores in config.yaml) has P = the largest position id its lengths give."""
    checked = validate(compose_cfg("xsum", ["logger=none", *overrides]))
    assert checked.model_values["max_sequence_length"] == raised
    assert checked.model.max_sequence_length == checked.built.max_sequence_length == raised
    cfg = compose_cfg("xsum", ["logger=none", "model.max_sequence_length=2048", *overrides])
    assert validate(cfg).built.max_sequence_length == 2048  # long enough already: left alone


def test_an_exports_position_table_is_the_limit(compose_cfg, tmp_path: Path) -> None:
    """With task.pretrained=<export dir> the run builds the export's shape (GLMTaskModule), so its P is the
    limit, whatever the model group says."""
    export = tmp_path / "export"
    export.mkdir()
    (export / "model.pt").write_bytes(b"")  # the check reads model_config.yaml only
    (export / "model_config.yaml").write_text(
        yaml.safe_dump({"preset": "glm-tiny", "max_sequence_length": 128, "vocab_size": 30592})
    )
    cfg = compose_cfg("superglue_rte", ["logger=none", "model=glm_tiny", f"task.pretrained={export}"])
    message = _error(cfg)  # RTE's table length 256 -> ids up to 254
    assert message.startswith("data.seq_length: 256 gives cloze sequences position ids up to 254")
    assert "task.pretrained's model_config.yaml: glm-tiny, max_sequence_length=128" in message
    assert (
        "set data.seq_length <= 130, or model.max_sequence_length >= 254 (the export's tables are" in message
    )
    validate(
        compose_cfg("superglue_rte", ["logger=none", f"task.pretrained={export}", "data.seq_length=130"])
    )
    longer = ["logger=none", "model=glm_tiny", "model.max_sequence_length=256", f"task.pretrained={export}"]
    assert validate(compose_cfg("superglue_rte", longer)).built.max_sequence_length == 256  # tables extended


class _Tok:
    """The special ids the layouts need; text ids from 100 on."""

    cls_id, eos_id, pad_id, mask_id, smask_id, gmask_id, sop_id, eop_id = 2, 0, 0, 4, 5, 6, 7, 8

    def encode(self, text: str) -> list[int]:
        return [100 + len(w) for w in text.split()]


def _demand(data_cls, data: dict, task: dict | None = None) -> dict[str, int]:
    return {d.key: d.largest for d in position_demands(data_cls, data, task or {})}


def test_the_bounds_are_those_of_the_layouts() -> None:
    """Each bound equals the largest position id of samples built at that length by the real layout code
    (a bound too low would let the IndexError through, one too high would refuse runs that fit)."""
    tok = _Tok()
    # seq2seq: Part A 0..S-1, Part B at the mask position with blocks 1..T
    S, T = 40, 12
    sample = build_seq2seq_sample(build_source([101] * 100, [9], tok, S, False), [102] * 50, tok, T)
    want = _demand(Seq2SeqDataModule, {"src_seq_length": S, "tgt_seq_length": T})
    assert want == {"data.src_seq_length": S - 1, "data.tgt_seq_length": T}
    assert (int(sample.position_ids[0].max()), int(sample.position_ids[1].max())) == (S - 1, T)
    # LAMBADA: a one-token answer and a long context fill the length
    L = 48
    for uni in (False, True):
        s = lambada_sample([101] * 200, [103], tok, L, unidirectional=uni)
        largest = int(s.position_ids.max())
        assert largest <= _demand(LMEvalDataModule, {"kind": "lambada", "seq_length": L})["data.seq_length"]
    assert int(lambada_sample([101] * 200, [103], tok, L).position_ids.max()) == L - 2
    # perplexity windows, both overlap regimes
    for overlap, uni in ((16, False), (1, False), (16, True)):
        data = {"kind": "perplexity", "seq_length": L, "overlap": overlap, "unidirectional": uni}
        windows = perplexity_windows(list(range(100, 400)), tok, L, overlap, unidirectional=uni)
        assert (
            max(int(w.position_ids.max()) for w in windows)
            == _demand(LMEvalDataModule, data)["data.seq_length"]
        )
    # cloze: a single-token sequence of exactly seq_length tokens (truncation keeps every one <= L)
    ids = dict(cls_id=2, eos_id=0, mask_id=4, sop_id=7, eop_id=8, pad_id=0)
    seq = build_cloze_sequence([101] * (L - 4) + [4], None, **ids)
    assert len(seq["input_ids"]) == L
    assert (
        int(seq["position_ids"].max())
        == L - 2
        == _demand(ClozeDataModule, {"seq_length": L})["data.seq_length"]
    )
    multi = build_cloze_sequence([4], [101] * (L - 4), **ids)  # a long candidate: its blocks
    assert len(multi["input_ids"]) == L and int(multi["position_ids"].max()) == L - 3
    # pretraining: raw samples of L tokens under the token and the document (gMASK) objectives
    special = SpecialIds(cls=2, eos=0, pad=0, mask=4, smask=5, gmask=6, sop=7, eop=8, dblock=9)
    raw = np.array([2, *range(100, 100 + L - 2), 0])
    largest = 0
    for name in ("span", "document"):
        masker = GLMMasker(MaskingConfig.from_name(name), special, np.zeros(400, bool))
        for i in range(200):
            s = masker(raw, np.random.default_rng([7, i]))
            largest = max(largest, int(s.position_ids.max()))
    bound = _demand(PretrainDataModule, {"seq_length": L})["data.seq_length"]
    assert L - 3 <= largest <= bound == L - 1


# ---- runs that would train 0 steps -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "override", ["trainer.max_steps=0", "trainer.max_epochs=0", "trainer.limit_train_batches=0"]
)
def test_a_loop_limit_of_zero_with_fit_is_refused(override: str, compose_cfg) -> None:
    message = _error(compose_cfg("ci_tiny", ["logger=none", override]))
    key, value = override.split("=")
    assert message.startswith(f"{key}: {value} with fit in the stages trains 0 steps")
    validate(compose_cfg("ci_tiny", ["logger=none", override, "stages=[validate]"]))  # nothing to train


def _small_corpus(tmp_path: Path, paragraphs: int = 40) -> Path:
    path = tmp_path / "corpus.txt"
    text = "\n\n".join(
        f"Paragraph {i} tells a short story about the river and the old mill." for i in range(paragraphs)
    )
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (
            ["data.samples_per_epoch=3"],
            "data: 3 training sample(s) of <= 64 tokens per epoch make no batch of data.micro_batch_size=4 "
            "on 1 device(s) (an incomplete last batch is dropped), so the run would train 0 steps; lower "
            "data.seq_length or data.micro_batch_size",
        ),
        (
            ["data.samples_per_epoch=8", "trainer.limit_train_batches=0.1"],
            "trainer.limit_train_batches: 0.1 of the 2 training batches per epoch is less than one",
        ),
    ],
)
def test_too_little_training_data_is_refused_before_the_model(
    overrides: list[str], needle: str, compose_cfg, tmp_path: Path
) -> None:
    from glm.run.pipeline import run

    need_data("tokenizers/bert-base-uncased/vocab.txt")
    corpus = _small_corpus(tmp_path)
    cfg = compose_cfg("ci_tiny", ["logger=none", BERT, f"data.files=[{corpus}]", *overrides])
    with pytest.raises(ConfigError) as err:
        run(cfg)
    assert needle in str(err.value), str(err.value)
    run_dir = Path(cfg.paths.output_dir)
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "export").exists()


# ---- every split the stages read, before training --------------------------------------------------------
def _seq2seq_dir(tmp_path: Path, bad_test: bool) -> Path:
    root = tmp_path / "xsum"
    root.mkdir()
    rows = [
        {"id": str(i), "document": f"the mill by the river turned {i} times", "summary": "it turned"}
        for i in range(6)
    ]
    (root / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    test = rows[:2] + [{"id": "x", "document": "a document without its summary"}]
    (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    if not bad_test:
        (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    return root


XSUM_SMALL = [
    "logger=none",
    "data.src_seq_length=32",
    "data.tgt_seq_length=8",
    "data.bad_rows=raise",
    "trainer.max_steps=2",
]


def test_a_bad_test_file_fails_before_training(compose_cfg, tmp_path: Path) -> None:
    from glm.run.pipeline import run

    need_data("tokenizers/bert-base-uncased/vocab.txt")
    root = _seq2seq_dir(tmp_path, bad_test=True)
    cfg = compose_cfg("xsum", [*XSUM_SMALL, f"data.data_dir={root}"])
    with pytest.raises(DataFormatError, match=re.escape(f"{root / 'test.jsonl'}:3: field 'summary' missing")):
        run(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_a_test_stage_without_its_split_is_refused(compose_cfg) -> None:
    message = _error(compose_cfg("xsum", ["logger=none", "data.src_seq_length=64", "data.splits.test=null"]))
    assert message.startswith("data.splits.test: null, but stages include test")
    message = _error(
        compose_cfg("superglue_record", ["logger=none", "model=glm_tiny", "stages=[fit,predict]"])
    )
    assert message.startswith("stages: predict writes a submission for the record test split")


def test_cloze_reads_the_predict_split_before_training(compose_cfg, tmp_path: Path) -> None:
    from glm.run.pipeline import run

    need_data("superglue/COPA/train.jsonl")
    copa = tmp_path / "superglue" / "COPA"
    copa.mkdir(parents=True)
    for split in ("train", "val"):
        shutil.copy(data_root() / "superglue" / "COPA" / f"{split}.jsonl", copa / f"{split}.jsonl")
    lines = (data_root() / "superglue" / "COPA" / "test.jsonl").read_text().splitlines()[:3]
    lines[2] = lines[2].replace('"premise"', '"premiss"')
    (copa / "test.jsonl").write_text("\n".join(lines) + "\n")
    cfg = compose_cfg(
        "superglue_copa",
        [
            "logger=none",
            "model=glm_tiny",
            f"data.data_dir={tmp_path}",
            "data.max_train_examples=8",
            "trainer.max_steps=1",
        ],
    )
    with pytest.raises(UserError, match=re.escape(f"{copa / 'test.jsonl'}:3")):
        run(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


# ---- a checkpoint of another architecture ----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A real Lightning checkpoint of the ci_tiny model (glm-tiny, V 2048), written by trainer.save_checkpoint."""
    import lightning as L

    from glm.tasks.pretrain import PretrainModule

    module = PretrainModule(
        model={"preset": "glm-tiny", "hidden_dropout": 0.0, "attention_dropout": 0.0, "vocab_size": 2048},
        optimizer={"lr": 1e-3},
        scheduler={},
    )
    module.configure_model()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.strategy.connect(module)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return path


def _resolve(cfg):
    from glm.run.resume import resolve_ckpt_path

    checked = validate(cfg)
    return resolve_ckpt_path(cfg.ckpt_path, Path(cfg.paths.output_dir), checked.built), checked


@pytest.mark.parametrize(
    ("overrides", "field", "stored", "now"),
    [
        (["model.num_layers=3"], "num_layers", "2", "3"),
        (["model=glm_small"], "num_layers", "2", "6"),
        (["model.hidden_size=128"], "hidden_size", "64", "128"),
        (["model.max_sequence_length=256"], "max_sequence_length", "512", "256"),
    ],
)
def test_a_checkpoint_of_another_architecture_is_refused_before_the_model(
    overrides, field: str, stored: str, now: str, tiny_ckpt: Path, compose_cfg
) -> None:
    cfg = compose_cfg("ci_tiny", ["logger=none", f"ckpt_path={tiny_ckpt}", *overrides])
    with pytest.raises(ConfigError) as err:
        _resolve(cfg)
    message = str(err.value)
    assert message.startswith(
        f"ckpt_path: {tiny_ckpt} was trained with model.{field}={stored} (model glm-tiny"
    )
    assert f"this run configures model.{field}={now}" in message
    assert f"set model.{field}={stored}" in message and "drop ckpt_path" in message


def test_the_same_architecture_passes_and_the_vocabulary_is_checked_once_known(
    tiny_ckpt: Path, compose_cfg
) -> None:
    from glm.run.resume import check_checkpoint, check_checkpoint_architecture

    cfg = compose_cfg(
        "ci_tiny", ["logger=none", f"ckpt_path={tiny_ckpt}", "model.attention=eager"]
    )  # a run field
    path, checked = _resolve(cfg)
    assert path == str(tiny_ckpt)
    ckpt = check_checkpoint(tiny_ckpt)
    check_checkpoint_architecture(
        ckpt, path, checked.built_model({**checked.model_values, "vocab_size": 2048})
    )
    with pytest.raises(ConfigError, match=r"model.vocab_size=2048 .* configures model.vocab_size=30592"):
        check_checkpoint_architecture(
            ckpt, path, checked.built_model({**checked.model_values, "vocab_size": 30592})
        )


def test_without_hyperparameters_the_weights_shapes_decide(
    tiny_ckpt: Path, tmp_path: Path, compose_cfg
) -> None:
    import torch

    from glm.run.resume import check_checkpoint_architecture

    ckpt = dict(torch.load(tiny_ckpt, weights_only=True))
    del ckpt["hyper_parameters"]
    cfg = compose_cfg("ci_tiny", ["logger=none", "model.hidden_size=128"])
    with pytest.raises(ConfigError) as err:
        check_checkpoint_architecture(ckpt, tiny_ckpt, validate(cfg).built, vocab_known=False)
    assert "holds weights of another architecture than this run's model (preset glm-tiny)" in str(err.value)
    assert (
        "transformer.block_position_embeddings.weight: stored shape (513, 64), configured (513, 128)"
        in str(err.value)
    )


# ---- the NaN stop is a user error -----------------------------------------------------------------------
def test_non_finite_loss_is_a_training_user_error() -> None:
    err = NonFiniteLossError("non-finite training loss (nan) at global step 2, batch index 2 of epoch 0")
    assert isinstance(err, UserError) and isinstance(err, FloatingPointError) and err.label == "Training"


# ---- the CLI: one line on stderr, exit 2, no traceback, no empty files -----------------------------------
def _one_line_failure(result, run_dir: Path, prefix: str) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(prefix), result.stderr[-3000:]
    empty = [p for p in run_dir.rglob("*") if p.is_file() and p.stat().st_size == 0]
    assert not empty, empty
    return last


def test_cli_pretraining_seq_length_beyond_positions(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    r = run_cli(
        ["+experiment=ci_tiny", "logger=none", "data.seq_length=1024", f"hydra.run.dir={run_dir}"], tmp_path
    )
    last = _one_line_failure(
        r, run_dir, "Config error: data.seq_length: 1024 gives pretraining samples position ids up to 1023"
    )
    assert "model preset glm-tiny, model.max_sequence_length=512" in last


def test_cli_bad_test_split_fails_before_training(tmp_path: Path) -> None:
    need_data("tokenizers/bert-base-uncased/vocab.txt")
    root = _seq2seq_dir(tmp_path, bad_test=True)
    run_dir = tmp_path / "run"
    r = run_cli(
        ["+experiment=xsum", *XSUM_SMALL, f"data.data_dir={root}", f"hydra.run.dir={run_dir}"], tmp_path
    )
    _one_line_failure(r, run_dir, f"Input error: {root / 'test.jsonl'}:3: field 'summary' missing")
    assert not (run_dir / "checkpoints").exists()


def test_cli_checkpoint_of_another_architecture(tiny_ckpt: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    r = run_cli(
        [
            "+experiment=ci_tiny",
            "logger=none",
            f"ckpt_path={tiny_ckpt}",
            "model=glm_small",
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
    )
    _one_line_failure(r, run_dir, f"Config error: ckpt_path: {tiny_ckpt} was trained with model.num_layers=2")
    assert not (run_dir / "checkpoints").exists()


def test_cli_nan_stop(tmp_path: Path) -> None:
    """lr 1e30 makes ci_tiny's loss NaN within three steps: one line naming step and batch, exit 2."""
    need_data("gutenberg/11-0.txt")
    run_dir = tmp_path / "run"
    r = run_cli(
        [
            "+experiment=ci_tiny",
            "logger=none",
            "task.optimizer.lr=1e30",
            f"hydra.run.dir={run_dir}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        tmp_path,
    )
    last = _one_line_failure(r, run_dir, "Training error: non-finite training loss (nan) at global step ")
    assert re.search(r"at global step \d+, batch index \d+ of epoch 0; lower task.optimizer.lr", last), last
    assert "NonFiniteLossError" in (run_dir / "FAILED").read_text()  # the traceback is kept there
    assert not (run_dir / "metrics.json").exists()


# ---- a mid-epoch checkpoint resumed with another data layout --------------------------------------------
def test_a_mid_epoch_resume_with_another_layout_is_a_config_error() -> None:
    """Raised inside Lightning's fit (the loader's state is restored there); a ConfigError, so run.py prints
    one line naming the keys behind the field."""
    from glm.data.sampling import EpochIndexSampler, ResumableDataLoader

    loader = ResumableDataLoader(list(range(40)), batch_size=4, sampler=EpochIndexSampler(40, seed=1))
    saved = {**loader.state_dict(), "num_samples": 20, "batches_done": 3}
    with pytest.raises(ConfigError) as err:
        loader.load_state_dict(saved)
    assert "train dataloader num_samples=20, this run has num_samples=40 (set by the data config: " in str(
        err.value
    )
    assert "data.seq_length" in str(err.value)


def test_an_evaluation_stage_checks_its_checkpoint_before_the_data(tiny_ckpt: Path, compose_cfg) -> None:
    """stages=[validate] with ckpt_path: the same refusal, from run() before the datamodule is built."""
    from glm.run.pipeline import run

    cfg = compose_cfg(
        "ci_tiny", ["logger=none", "stages=[validate]", f"ckpt_path={tiny_ckpt}", "model.num_layers=4"]
    )
    with pytest.raises(
        ConfigError, match=r"was trained with model.num_layers=2 .* configures model.num_layers=4"
    ):
        run(cfg)
    assert not (Path(cfg.paths.output_dir) / "config.yaml").exists()  # nothing was built
