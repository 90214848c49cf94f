"""Pretraining pieces against independent references: the docs/original-glm.md §5.8 schedule at hand-picked steps, the
decay/no-decay groups, the loss, data determinism across worker counts, the memmap cache, and a short real
run whose validation loss must fall clearly."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import need_data
from torch import nn

from glm.data.pretrain import (
    EpochIndexSampler,
    PretrainDataModule,
    build_raw_sample,
    read_documents,
    tokenize_corpus,
)
from glm.tasks.optim import annealing_lr_factor, normalize_scheduler, param_groups
from glm.tasks.pretrain import PretrainModule, blank_infilling_loss

# ---------------------------------------------------------------------------------------------------------
# Schedule (docs/original-glm.md §5.8): warmup over warmup * decay_iters, then cosine / linear to rho.
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "style", "expected"),
    [
        # D = 100, w = 10, rho = 0.1, hand-computed
        (0, "cosine", 0.0),
        (5, "cosine", 0.5),
        (10, "cosine", 1.0),
        (55, "cosine", 0.1 + 0.9 * (1 + math.cos(math.pi * 0.5)) / 2),  # r = 45/90 -> 0.55
        (100, "cosine", 0.1),
        (150, "cosine", 0.1),  # r clamped at 1
        (55, "linear", 1 - 0.9 * 45 / 90),  # 0.55
        (100, "linear", 0.1),
        (40, "constant", 1.0),
    ],
)
def test_annealing_lr_at_hand_picked_steps(step: int, style: str, expected: float) -> None:
    assert annealing_lr_factor(step, 10, 100, style, 0.1) == pytest.approx(expected, abs=1e-12)


def test_cosine_midpoint_value() -> None:
    assert annealing_lr_factor(55, 10, 100, "cosine", 0.1) == pytest.approx(0.55, abs=1e-12)


def test_scheduler_aliases_and_errors() -> None:
    assert normalize_scheduler({"warmup": 0.1, "decay": "linear"})["warmup_ratio"] == 0.1
    with pytest.raises(ValueError, match="task.scheduler.warmup_steps"):
        normalize_scheduler({"warmup_steps": 10})
    with pytest.raises(ValueError, match="decay_style"):
        normalize_scheduler({"decay_style": "exponential"})


def _tiny_module(**scheduler) -> PretrainModule:
    module = PretrainModule(
        model={"preset": "glm-tiny", "vocab_size": 256, "num_layers": 1},
        optimizer={"lr": 1e-3, "weight_decay": 0.1},
        scheduler={
            "warmup_ratio": 0.1,
            "decay_style": "cosine",
            "min_lr_ratio": 0.1,
            "total_steps": 100,
            **scheduler,
        },
    )
    module.configure_model()
    return module


def test_lambda_lr_follows_the_formula_per_optimizer_step() -> None:
    module = _tiny_module()
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    seen = []
    for _ in range(101):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ref = [1e-3 * annealing_lr_factor(t, 10, 100, "cosine", 0.1) for t in range(101)]
    np.testing.assert_allclose(seen, ref, rtol=1e-12, atol=1e-15)
    assert seen[10] == pytest.approx(1e-3) and seen[100] == pytest.approx(1e-4)


def test_configure_model_is_idempotent() -> None:
    module = _tiny_module()
    first = module.model
    module.configure_model()
    assert module.model is first


# ---------------------------------------------------------------------------------------------------------
# Decay groups: biases and LayerNorm weights without decay (docs/original-glm.md §5.8).
# ---------------------------------------------------------------------------------------------------------


def test_decay_groups_by_name_and_type() -> None:
    module = _tiny_module()
    groups = param_groups(module, 0.1)
    names = {id(p): n for n, p in module.named_parameters()}
    decay = {names[id(p)] for p in groups[0]["params"]}
    plain = {names[id(p)] for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert "model.word_embeddings.weight" in decay
    assert "model.transformer.layers.0.attention.query_key_value.weight" in decay
    assert "model.transformer.layers.0.attention.query_key_value.bias" in plain
    assert "model.transformer.layers.0.input_layernorm.weight" in plain
    assert "model.transformer.final_layernorm.weight" in plain
    assert not decay & plain
    assert decay | plain == set(names.values())  # every parameter exactly once
    for name in decay:
        assert not name.endswith("bias") and "layernorm" not in name


def test_decay_groups_on_a_hand_built_module() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Embedding(5, 4))
    groups = param_groups(net, 0.5)
    assert [tuple(p.shape) for p in groups[0]["params"]] == [(4, 3), (5, 4)]
    assert [tuple(p.shape) for p in groups[1]["params"]] == [(4,), (4,), (4,)]


# ---------------------------------------------------------------------------------------------------------
# Loss: sum(ce * loss_mask) / sum(loss_mask) over all V logits, checked against a float64 recomputation.
# ---------------------------------------------------------------------------------------------------------


def test_blank_infilling_loss_matches_float64_reference() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    targets = torch.randint(0, 7, (2, 5), generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]], dtype=torch.float32)
    total, count = blank_infilling_loss(logits, targets, mask)
    lp = torch.log_softmax(logits.double(), -1).gather(-1, targets[..., None])[..., 0]
    ref = -(lp * mask.double()).sum() / mask.sum()
    assert count.item() == 5
    assert (total / count).item() == pytest.approx(ref.item(), rel=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Data: documents, raw samples, sampler, determinism, cache.
# ---------------------------------------------------------------------------------------------------------


def test_read_documents_paragraphs_and_jsonl_errors(tmp_path: Path) -> None:
    txt = tmp_path / "a.txt"
    txt.write_text("First line\nwrapped here.\r\n\r\nSecond para.\n\n\n")
    assert read_documents(txt) == ["First line wrapped here.", "Second para.", ""]
    assert read_documents(txt, "file") == ["First line\nwrapped here.\n\nSecond para."]
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(ValueError, match=r"b.jsonl:2: missing field 'text'"):
        read_documents(bad)
    bad.write_text('{"text": "ok"}\n\n{oops\n')
    with pytest.raises(ValueError, match=r"b.jsonl:3: malformed JSON"):
        read_documents(bad)


def test_raw_sample_layout() -> None:
    """Hand-made corpus: doc 0 = [10, 11], doc 1 = 20..29 with a sentence end at 24 (docs/original-glm.md §5.1 rules)."""
    from glm.data.pretrain import TokenizedCorpus

    tokens = np.array([10, 11] + list(range(20, 30)), dtype=np.uint16)
    corpus = TokenizedCorpus(tokens, np.array([0, 2, 12]))
    sentence_end = np.zeros(64, dtype=bool)
    sentence_end[24] = True
    cls, eos = 2, 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        s = build_raw_sample(corpus, np.array([0, 1]), np.cumsum([2, 10]), 9, rng, sentence_end, cls, eos)
        assert len(s) <= 9 and s[0] == cls
        # segments: [CLS] doc [eos], or a final cut piece [CLS] piece without eos
        starts = np.flatnonzero(s == cls)
        for a, b in zip(starts, [*starts[1:], len(s)], strict=True):
            seg = s[a + 1 : b]
            if seg[-1] == eos:
                assert seg[:-1].tolist() in ([10, 11], list(range(20, 30)))
            else:  # cut: a contiguous run of doc 1 ending at the sentence end 24 when it contains it
                run = seg.tolist()
                assert run == list(range(run[0], run[0] + len(run)))
                if 24 in run:
                    assert run[-1] == 24


def test_sampler_covers_each_epoch_and_shards() -> None:
    full = list(EpochIndexSampler(10, seed=3))
    assert sorted(full) == list(range(10))
    s = EpochIndexSampler(10, seed=3)
    s.set_epoch(2)
    assert sorted(s) == list(range(20, 30)) and list(s) != [i + 20 for i in full]
    shards = [list(EpochIndexSampler(10, seed=3, rank=r, world_size=3)) for r in range(3)]
    assert all(len(x) == 3 for x in shards)
    merged = [i for shard in shards for i in shard]
    assert len(set(merged)) == 9 and set(merged) <= set(full)


@pytest.fixture(scope="module")
def corpus_cfg(tmp_path_factory) -> dict:
    need_data("gutenberg/11-0.txt")
    from glm.data.paths import data_root

    cache = tmp_path_factory.mktemp("cache")
    return {
        "files": [str(data_root() / "gutenberg/11-0.txt")],
        "tokenizer": {
            "train": {"vocab_size": 2000, "model_type": "bpe", "max_bytes": 2_000_000},
            "cache_dir": str(cache / "tok"),
        },
        "seq_length": 64,
        "global_batch_size": 4,
        "micro_batch_size": 4,
        "cache_dir": str(cache / "corpus"),
        "seed": 7,
        "objective": {"preset": "glm-doc"},
        "progress": False,
        "max_val_samples": 8,
    }


def _batches(dm: PretrainDataModule, epoch: int, n: int) -> list[dict]:
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def test_same_batches_with_0_and_2_workers(corpus_cfg) -> None:
    dm0 = PretrainDataModule(**corpus_cfg, num_workers=0)
    dm2 = PretrainDataModule(**corpus_cfg, num_workers=2)
    dm0.setup("fit")
    dm2.setup("fit")
    for epoch in (0, 1):
        a, b = _batches(dm0, epoch, 3), _batches(dm2, epoch, 3)
        for x, y in zip(a, b, strict=True):
            assert x.keys() == y.keys()
            for key in x:
                assert torch.equal(x[key], y[key]), (epoch, key)
    e0, e1 = _batches(dm0, 0, 1)[0], _batches(dm0, 1, 1)[0]
    assert not torch.equal(e0["input_ids"], e1["input_ids"])  # the epoch reaches the dataset
    # a masked sample of index i in epoch e depends only on (seed, e, i)
    n = len(dm0.train_set)
    assert _same(dm0.train_set[5], dm2.train_set[5]) and _same(dm0.train_set[n + 5], dm2.train_set[n + 5])
    assert not _same(dm0.train_set[5], dm0.train_set[n + 5])
    # batches are well formed: Part B holds the loss, positions stay below seq_length
    batch = e0
    assert batch["input_ids"].shape[0] == 4 and batch["position_ids"].shape[1] == 2
    assert batch["position_ids"][:, 0].max() < 64
    for row in range(4):
        sep = int(batch["sep"][row])
        assert batch["loss_mask"][row, :sep].sum() == 0 and batch["loss_mask"][row, sep:].sum() > 0


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(x.input_ids, y.input_ids) and x.sep == y.sep for x, y in zip(a, b, strict=True)
    )


def test_validation_set_is_fixed_and_disjoint(corpus_cfg) -> None:
    dm = PretrainDataModule(**corpus_cfg)
    dm.setup("fit")
    assert not set(dm.train_set.docs.tolist()) & set(dm.val_set.docs.tolist())
    v = dm.val_set
    assert _same(v[0], v[len(v)])  # fixed epoch 0: same masks every epoch


def test_memmap_cache_reused(tmp_path: Path, monkeypatch) -> None:
    from glm.data import pretrain as mod
    from glm.tokenizer import ensure_tokenizer

    alice = need_data("gutenberg/11-0.txt")
    tok = ensure_tokenizer(tmp_path / "tok", [alice], vocab_size=500, model_type="bpe", max_bytes=100_000)
    src = tmp_path / "book.txt"
    src.write_text("One. Two three.\n\nFour five six.\n\n" * 50)
    calls = []
    real = mod._tokenize_into
    monkeypatch.setattr(mod, "_tokenize_into", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    first = tokenize_corpus([src], tok, tmp_path / "cache", progress=False)
    second = tokenize_corpus([src], tok, tmp_path / "cache", progress=False)
    assert len(calls) == 1 and first.path == second.path
    assert isinstance(second.tokens, np.memmap) and second.tokens.dtype == np.uint16
    assert first.num_documents == 100
    assert second.document(1).tolist() == tok.encode("Four five six.")
    src.write_text(src.read_text() + "Seven.\n")  # size/mtime change -> a new cache
    third = tokenize_corpus([src], tok, tmp_path / "cache", progress=False)
    assert len(calls) == 2 and third.path != first.path and third.num_documents == 101


# ---------------------------------------------------------------------------------------------------------
# Learning: validation loss must fall clearly on real text.
# ---------------------------------------------------------------------------------------------------------


def _val_loss(trainer, module, dm) -> float:
    return float(trainer.validate(module, datamodule=dm, verbose=False)[0]["val/loss"])


def test_short_pretraining_lowers_val_loss(corpus_cfg, tmp_path: Path) -> None:
    """glm-tiny on one book, 60 steps: val loss starts near ln V and drops by more than 1 nat."""
    import lightning as L

    L.seed_everything(0)
    dm = PretrainDataModule(**{**corpus_cfg, "global_batch_size": 8, "micro_batch_size": 8})
    module = PretrainModule(
        model={"preset": "glm-tiny", "vocab_size": 2048, "hidden_dropout": 0.0, "attention_dropout": 0.0},
        optimizer={"lr": 3e-3},
        scheduler={"warmup_ratio": 0.05, "decay_style": "cosine"},
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=60,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        limit_val_batches=2,
        val_check_interval=60,
        default_root_dir=tmp_path,
    )
    before = _val_loss(trainer, module, dm)
    assert abs(before - math.log(2048)) < 0.5  # an untrained tied head is near uniform over V
    trainer.fit(module, datamodule=dm)
    after = _val_loss(trainer, module, dm)
    assert after < before - 1.0, (before, after)


@pytest.mark.slow
def test_pretrain_tiny_val_loss_falls(tmp_path: Path) -> None:
    """The demo experiment itself for 120 steps on all Gutenberg books (about two CPU minutes)."""
    need_data("gutenberg/2600-0.txt")
    import csv

    from conftest import run_cli

    run_dir = tmp_path / "run"
    r = run_cli(
        [
            "+experiment=pretrain_tiny",
            "logger=csv",
            "trainer.max_steps=120",
            "trainer.val_check_interval=40",
            "callbacks.progress=null",
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    rows = list(csv.DictReader(next((run_dir / "csv").rglob("metrics.csv")).open()))
    val = [float(row["val/loss"]) for row in rows if row.get("val/loss")]
    assert len(val) == 3
    # an untrained model sits at ln V = 9.0 (checked in test_ci_tiny_end_to_end's analogue); most of the drop
    # happens in the first 40 steps, then it keeps falling at every evaluation
    assert val[-1] < math.log(8064) - 2.0, val
    assert val[0] > val[1] > val[2], val


def test_part_b_projection_gives_the_full_logits_loss_and_gradients() -> None:
    """The training loss projects the tied head at Part-B positions only; it must equal the loss over the
    full logits (float64 model), with a row without any loss and rows of different Part-B sizes."""
    from glm.tasks.part_b import part_b_index

    torch.manual_seed(0)
    module = PretrainModule(model={"preset": "glm-tiny", "hidden_dropout": 0.0, "attention_dropout": 0.0})
    module.configure_model()
    module.model.double()
    B, L, V = 3, 16, module.glm_config.vocab_size
    g = torch.Generator().manual_seed(3)
    loss_mask = torch.zeros(B, L)
    loss_mask[0, 10:] = 1.0
    loss_mask[1, [4, 7, 15]] = 1.0  # not contiguous, not at the end
    batch = {
        "input_ids": torch.randint(10, V, (B, L), generator=g),
        "position_ids": torch.randint(0, 16, (B, 2, L), generator=g),
        "sep": torch.tensor([10, 4, L]),
        "targets": torch.randint(10, V, (B, L), generator=g),
        "loss_mask": loss_mask,
    }
    index, valid = part_b_index(loss_mask)
    assert index.tolist()[1][:3] == [4, 7, 15] and valid.sum(1).tolist() == [6, 3, 0]
    fast = module.part_b_loss(batch)
    full = blank_infilling_loss(module(batch), batch["targets"], loss_mask)
    assert fast[1].item() == full[1].item() == 9.0
    # blank_infilling_loss works in fp32 whatever the logits' dtype: fp32 agreement
    torch.testing.assert_close(fast[0].double(), full[0].double(), rtol=1e-6, atol=0)
    w = module.model.word_embeddings.weight
    g_fast = torch.autograd.grad(fast[0], w)[0]
    g_full = torch.autograd.grad(blank_infilling_loss(module(batch), batch["targets"], loss_mask)[0], w)[0]
    torch.testing.assert_close(g_fast, g_full, rtol=1e-5, atol=1e-7)


def test_packed_pretraining_batch_gives_the_unpacked_loss_and_gradients() -> None:
    """data.pack: the same masked samples packed into shared rows give the same token-weighted loss and
    parameter gradients as padded one per row (float64 model); samples of different lengths, some sharing."""
    from glm.data.masking import MaskedSample
    from glm.data.pretrain import collate_pretrain

    torch.manual_seed(0)
    module = PretrainModule(model={"preset": "glm-tiny", "hidden_dropout": 0.0, "attention_dropout": 0.0})
    module.configure_model()
    module.model.double()
    rng = np.random.default_rng(5)
    items = []
    for n, sep in [(14, 9), (5, 3), (6, 2), (9, 9), (3, 1)]:  # one without Part B, several that fit together
        lm = (np.arange(n) >= sep).astype(np.float32)
        pos = np.stack([np.minimum(np.arange(n), sep), np.maximum(np.arange(n) - sep + 1, 0)])
        ids = rng.integers(10, 8000, n)
        items.append([MaskedSample(ids, rng.integers(10, 8000, n), lm, pos, sep, "span")])
    padded = collate_pretrain(items)
    packed = collate_pretrain(items, pack=True)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]  # rows were shared
    assert packed["input_ids"].shape[1] == 14 and int(packed["segment_ids"].max()) >= 2
    assert packed["loss_mask"].sum() == padded["loss_mask"].sum()
    w = module.model.word_embeddings.weight
    results = []
    for batch in (padded, packed):
        loss_sum, count = module.part_b_loss(batch)
        results.append((loss_sum.double(), count, torch.autograd.grad(loss_sum, w)[0]))
    (a_sum, a_n, a_g), (b_sum, b_n, b_g) = results
    assert a_n.item() == b_n.item() == 5 + 2 + 4 + 0 + 2
    torch.testing.assert_close(a_sum, b_sum, rtol=1e-6, atol=0)  # the loss itself is computed in fp32
    torch.testing.assert_close(a_g, b_g, rtol=1e-5, atol=1e-7)


def test_corpus_tokenizer_training_is_quiet(tmp_path: Path, capfd, caplog) -> None:
    """sentencepiece's C++ trainer logs ~350 lines to stderr unless told not to; the run logs one line."""
    from glm.data.base import resolve_tokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"Sentence number {i} about cats, dogs and GLM.\n\n" for i in range(300)))
    spec = {"train": {"vocab_size": 300, "max_bytes": 100_000}, "cache_dir": str(tmp_path / "cache")}
    with caplog.at_level("INFO"):
        tok = resolve_tokenizer(spec, lambda: [corpus])
    assert tok.vocab_size >= 300 and "training a sentencepiece tokenizer" in caplog.text
    assert "trainer_interface" not in capfd.readouterr().err
