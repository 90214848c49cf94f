"""Cloze finetuning with `data.pack=true`: a batch's candidate sequences packed into shared rows.

The reference everywhere is the padded `[B, C, L]` path (`collate_cloze`) and, independently of
`ClozeModule.score`, the scores recomputed here from the plain model's full logits; models run in float64 so
packed and padded agree to ~1e-12, far below any real layout mistake (a token seeing another sequence, a
wrong [sop] column, a score sent to the wrong choice moves scores by >1e-3 with these random weights).
Real SuperGLUE features (RTE: single-token; COPA, WSC, ReCoRD: multi-token with 2 to >2 candidates).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import data_root, need_data
from test_cloze_e2e import SMALL as E2E_SMALL

from glm.data.cloze import ClozeDataModule, collate_cloze, collate_cloze_packed
from glm.errors import ConfigError
from glm.tasks.cloze import PAD_SCORE, ClozeModule, cloze_loss, prompt_slots

# task -> (examples, seq_length): enough sequences to fill several rows, small enough to stay fast.
# ReCoRD candidates are ~300 tokens (10 for this example): rows of 640 hold two (positions still restart per
# sequence, below the model's 512).
TASKS = {"rte": (12, 256), "copa": (12, 256), "wsc": (8, 128), "record": (1, 640)}


@pytest.fixture(scope="module")
def bert():
    from glm.tokenizer import load_tokenizer

    return load_tokenizer({"kind": "bert", "path": str(need_data("tokenizers/bert-base-uncased"))})


def _features(task: str, tok, n: int, seq_length: int, **kwargs) -> tuple[ClozeDataModule, list]:
    dm = ClozeDataModule(task, tok, data_root(), seq_length=seq_length, max_train_examples=n, **kwargs)
    need_data(f"superglue/{dm.task.dirname}/train.jsonl")
    return dm, list(dm.load_split("train"))


def _module(task: str, tok, **kwargs) -> ClozeModule:
    torch.manual_seed(0)
    model = {
        "preset": "glm-tiny",
        "vocab_size": tok.vocab_size,
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
    }
    module = ClozeModule(model=model, optimizer={}, scheduler={}, task=task, **kwargs)
    module.configure_model()
    return module.double()


def _reference_scores(module: ClozeModule, batch: dict, length_penalty: float = 0.0) -> torch.Tensor:
    """`[B, C or K]` scores from the full logits of the plain model, one padded row at a time, summed slot by
    slot (single-token: the verbalizer logits at the row's sep, the [sop] slot)."""
    B, C, _ = batch["input_ids"].shape
    single = "verbalizer_ids" in batch
    out = torch.full((B, batch["verbalizer_ids"].shape[1] if single else C), PAD_SCORE, dtype=torch.float64)
    for b in range(B):
        for c in range(C):
            if not batch["choice_mask"][b, c]:
                continue
            sep = batch["sep"][b, c]
            logits = module.model(
                batch["input_ids"][b, c][None], batch["position_ids"][b, c][None], sep=sep[None]
            ).logits[0]
            if single:
                out[b] = logits[int(sep), batch["verbalizer_ids"][b]]
                continue
            slots = batch["loss_mask"][b, c].nonzero()[:, 0].tolist()
            lp = logits[slots].log_softmax(-1)  # full-vocabulary softmax, at the answer slots only
            total = sum(lp[j, batch["targets"][b, c, t]] for j, t in enumerate(slots))
            out[b, c] = total / len(slots) ** length_penalty if length_penalty > 0 else total
    return out


# ---------------------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["rte", "wsc"])
def test_packed_batch_holds_every_real_sequence_once(bert, task: str) -> None:
    n, seq_length = TASKS[task]
    dm, feats = _features(task, bert, n, seq_length)
    packed = collate_cloze_packed(feats, bert.eos_id, dm.seq_length)
    padded = collate_cloze(feats, bert.eos_id)
    seqs = [(b, c, s) for b, f in enumerate(feats) for c, s in enumerate(f.sequences)]
    assert packed["sample_bc"].tolist() == [[b, c] for b, c, _ in seqs]
    assert torch.equal(packed["choice_mask"], padded["choice_mask"])
    for key in ("label", "example_index"):
        assert torch.equal(packed[key], padded[key])
    assert packed["input_ids"].shape[1] <= dm.seq_length
    for i, (_, _, s) in enumerate(seqs):
        r, cols = (packed["sample_index"] == i).nonzero(as_tuple=True)
        assert len(cols) == len(s["input_ids"]) and (r == r[0]).all()
        assert packed["input_ids"][r[0], cols].tolist() == s["input_ids"].tolist()
        assert packed["position_ids"][r[0], :, cols].tolist() == s["position_ids"].tolist()
        assert (packed["sep"][r[0], cols] == int(cols[0]) + int(s["sep"])).all()
    if task == "rte":  # the [sop] slot of every sequence, read back through sop_index / sop_sample
        rows = torch.arange(packed["sop_index"].shape[0])[:, None].expand_as(packed["sop_index"])
        valid = packed["sop_sample"] >= 0
        assert sorted(packed["sop_sample"][valid].tolist()) == list(range(len(seqs)))
        assert (packed["input_ids"][rows[valid], packed["sop_index"][valid]] == bert.sop_id).all()
        assert torch.equal(packed["verbalizer_ids"], padded["verbalizer_ids"])
    else:  # WSC: padded choices (repeats of candidate 0) are not packed
        assert len(seqs) < padded["choice_mask"].numel()
        assert int(packed["loss_mask"].sum()) == sum(int(s["loss_mask"].sum()) for _, _, s in seqs)


def test_packing_removes_rows_and_padding_on_rte(bert) -> None:
    _, feats = _features("rte", bert, 16, 256)
    real = sum(len(s["input_ids"]) for f in feats for s in f.sequences)
    padded = collate_cloze(feats, bert.eos_id)  # [16, 1, longest]
    packed = collate_cloze_packed(feats, bert.eos_id, 256)
    rows, width = packed["input_ids"].shape
    assert int((packed["sample_index"] >= 0).sum()) == real
    pad_frac_padded = 1 - real / padded["input_ids"].numel()
    pad_frac_packed = 1 - real / (rows * width)
    # the first 16 RTE train examples: 1272 real tokens; 16 rows x 134 padded, 6 rows x 256 packed
    assert (real, tuple(padded["input_ids"].shape), (rows, width)) == (1272, (16, 1, 134), (6, 256))
    assert pad_frac_padded == pytest.approx(1 - 1272 / 2144) and pad_frac_packed == pytest.approx(
        1 - 1272 / 1536
    )
    assert pad_frac_packed < 0.18 and pad_frac_padded > 0.40
    fixed = collate_cloze_packed(feats, bert.eos_id, 256, pad_to_seq_length=True)
    assert fixed["input_ids"].shape == (6, 256)


def test_prompt_slots_restart_per_sequence() -> None:
    pm = torch.tensor([[0, 1, 1, 0, 1, 1, 0, 1, 0], [1, 0, 1, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    seg = torch.tensor([[1, 1, 1, 2, 2, 2, 3, 3, 0], [1, 1, 1, 1, 0, 0, 0, 0, 0]])
    assert prompt_slots(pm, seg).tolist() == [
        [-1, 0, 1, -1, 0, 1, -1, 0, -1],
        [0, -1, 1, -1, -1, -1, -1, -1, -1],
    ]
    assert prompt_slots(pm).tolist()[0] == [-1, 0, 1, -1, 2, 3, -1, 4, -1]  # unpacked: one sequence a row


# ---------------------------------------------------------------------------------------------------
# Scores and gradients, packed vs padded (float64)
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("task", "length_penalty"), [("rte", 0.0), ("copa", 0.0), ("wsc", 1.0), ("record", 0.0)]
)
def test_packed_scores_equal_padded_scores_float64(bert, task: str, length_penalty: float) -> None:
    n, seq_length = TASKS[task]
    dm, feats = _features(task, bert, n, seq_length)
    module = _module(task, bert, length_penalty=length_penalty)
    padded = collate_cloze(feats, bert.eos_id)
    packed = collate_cloze_packed(feats, bert.eos_id, dm.seq_length)
    assert packed["input_ids"].shape[0] < padded["choice_mask"].sum()  # really packed: fewer rows
    with torch.no_grad():
        s_pad, g_pad = module.score(padded)
        s_pack, g_pack = module.score(packed)
        reference = _reference_scores(module, padded, length_penalty)
    assert s_pack.dtype == torch.float64 and s_pack.shape == s_pad.shape == reference.shape
    torch.testing.assert_close(s_pad, reference, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s_pack, s_pad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g_pack, g_pad, rtol=1e-10, atol=1e-10)
    # distinct real scores (a swapped example or choice would show); padded choices at PAD_SCORE
    if "verbalizer_ids" in padded:
        assert s_pack.std() > 1e-3
    else:
        real = padded["choice_mask"]
        assert (s_pack[~real] == PAD_SCORE).all() and s_pack[real].std() > 1e-3
    if task == "record":
        assert padded["choice_mask"].sum(1).max() > 2


@pytest.mark.parametrize("task", ["rte", "wsc"])
def test_packed_training_gradients_equal_padded(bert, task: str) -> None:
    n, seq_length = TASKS[task]
    dm, feats = _features(task, bert, n, seq_length)
    grads, losses = [], []
    for collate in (
        lambda f: collate_cloze(f, bert.eos_id),
        lambda f: collate_cloze_packed(f, bert.eos_id, dm.seq_length),
    ):
        module = _module(task, bert, loss="mix")
        batch = collate(feats)
        scores, gen = module.score(batch)
        loss = cloze_loss(scores, batch["label"], "mix", gen)
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None]))
    assert grads[0].shape == grads[1].shape and grads[0].abs().max() > 1e-4
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("task", ["rte", "copa"])
def test_p_tuning_packed_equals_padded(bert, task: str) -> None:
    """Continuous prompts: slot j of every packed sequence gets prompt j, as in its own padded row; the
    scores and the prompt encoder's gradients agree."""
    n_prompt = 3
    _, feats = _features(task, bert, 8, 128, num_prompt_tokens=n_prompt)
    padded = collate_cloze(feats, bert.eos_id)
    packed = collate_cloze_packed(feats, bert.eos_id, 128)
    assert int(packed["prompt_mask"].sum()) == n_prompt * packed["sample_bc"].shape[0]
    slots = prompt_slots(packed["prompt_mask"], packed["segment_ids"])
    assert packed["input_ids"].shape[0] < packed["sample_bc"].shape[0]  # several sequences share a row
    for i in range(packed["sample_bc"].shape[0]):
        assert slots[packed["sample_index"] == i][
            packed["prompt_mask"][packed["sample_index"] == i]
        ].tolist() == [0, 1, 2]
    out = []
    for batch in (padded, packed):
        module = _module(task, bert, num_prompt_tokens=n_prompt, p_tuning={"enabled": True, "encoder": "mlp"})
        scores, gen = module.score(batch)
        cloze_loss(scores, batch["label"], "cross_entropy", gen).backward()
        g = torch.cat([p.grad.flatten() for p in module.prompt_encoder.parameters()])
        out.append((scores.detach(), g))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-10, atol=1e-10)
    assert out[0][1].abs().max() > 1e-6
    torch.testing.assert_close(out[1][1], out[0][1], rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------------------
# Config and end to end
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["true", 1, None])
def test_bad_pack_value_names_the_key(bad) -> None:
    with pytest.raises(ConfigError, match=r"data\.pack: expected true/false"):
        ClozeDataModule("rte", tokenizer=None, data_dir=".", pack=bad)


def test_datamodule_pack_uses_the_packed_collate(bert) -> None:
    dm, _ = _features("copa", bert, 8, 256)
    dm.pack = True
    dm.micro_batch_size = 8
    batch = next(iter(dm.train_dataloader()))
    assert "segment_ids" in batch and batch["input_ids"].shape[0] == 3  # 16 COPA sequences in 3 rows
    assert batch["choice_mask"].shape == (8, 2) and batch["sample_bc"].shape == (16, 2)


# the e2e suite's small run, without dropout so the packed and padded runs do the same arithmetic
SMALL = [*E2E_SMALL, "++model.hidden_dropout=0.0", "++model.attention_dropout=0.0", "stages=[fit,validate]"]


def test_superglue_rte_packed_end_to_end(compose_cfg, tmp_path: Path) -> None:
    """`python run.py +experiment=superglue_rte model=glm_tiny data.pack=true ...` trains, validates and writes
    its metrics; its validation scores match the same run unpacked (in-process; float32, same batches and
    steps, so agreement to ~1e-4 rather than float64's 1e-10)."""
    from conftest import run_cli

    from glm.run.pipeline import run

    need_data("superglue/RTE/train.jsonl")
    need_data("tokenizers/bert-base-uncased/vocab.txt")
    packed_dir = tmp_path / "packed"
    proc = run_cli(
        ["+experiment=superglue_rte", *SMALL, "data.pack=true", f"hydra.run.dir={packed_dir}"], tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = compose_cfg("superglue_rte", [*SMALL, "data.pack=false"])
    assert cfg.data.pack is False
    metrics = run(cfg)
    scores = {}
    for name, out in (("packed", packed_dir), ("padded", tmp_path / "run")):
        written = json.loads((out / "metrics.json").read_text())
        assert 0.0 <= written["val/acc"] <= 1.0 and written["train/loss"] > 0
        lines = [json.loads(x) for x in (out / "val_predictions.jsonl").read_text().splitlines()]
        assert len(lines) == 8
        scores[name] = torch.tensor([r["scores"] for r in lines])
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == pytest.approx(metrics, nan_ok=True)
    from omegaconf import OmegaConf

    assert OmegaConf.load(packed_dir / "config.yaml").data.pack is True  # the CLI run really packed
    torch.testing.assert_close(scores["packed"], scores["padded"], rtol=1e-4, atol=1e-4)


def test_bad_pack_value_is_a_config_error_at_start_up(compose_cfg) -> None:
    from glm.run.pipeline import run

    cfg = compose_cfg("superglue_rte", [*SMALL, "data.pack=maybe"])
    with pytest.raises(ConfigError, match=r"data\.pack"):
        run(cfg)
