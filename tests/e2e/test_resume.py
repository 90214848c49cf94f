"""Runs that survive crashes: SIGKILL mid-epoch + resume is bit-identical to an uninterrupted run (weights,
optimizer state, logged losses, W&B run id); resume safety checks; non-finite losses."""

from __future__ import annotations

import csv
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import need_data, run_cli

STEPS, EVERY, KILL_AT = 8, 3, 5  # checkpoints at 3 and 6; killed after step 5, i.e. between them
COMMON = [
    "+experiment=ci_tiny",
    "logger=[csv,wandb]",
    f"trainer.max_steps={STEPS}",
    f"trainer.val_check_interval={STEPS}",
    "trainer.log_every_n_steps=1",
    f"callbacks.checkpoint.every_n_train_steps={EVERY}",
]


def _losses(run_dir: Path) -> dict[int, str]:
    """step -> train/loss as written (exact text) from every metrics.csv of the run dir."""
    out: dict[int, str] = {}
    for path in sorted(run_dir.glob("csv/*/metrics.csv")):
        for row in csv.DictReader(path.open()):
            if row.get("train/loss"):
                step = int(row["step"])
                assert out.get(step, row["train/loss"]) == row["train/loss"], (path, step)
                out[step] = row["train/loss"]
    return out


def _assert_same_end(full: Path, resumed: Path, steps: int, resumed_at: int) -> None:
    """The resumed run's last.ckpt equals the uninterrupted run's bit for bit (weights, AdamW moments, the
    schedule) and every train/loss it logged is the uninterrupted run's, to the last printed digit."""
    a = torch.load(full / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == steps
    assert set(a["state_dict"]) == set(b["state_dict"])
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key  # bit-identical on CPU
    sa_all, sb_all = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert sa_all.keys() == sb_all.keys()
    for sa, sb in zip(sa_all.values(), sb_all.values(), strict=True):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"] == steps

    ref, got = _losses(full), _losses(resumed)
    assert sorted(ref) == list(range(steps))
    assert all(s in got for s in range(resumed_at, steps)), sorted(got)
    for step in got:
        assert got[step] == ref[step], (step, got[step], ref[step])


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path: Path) -> None:
    need_data("gutenberg/11-0.txt")
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    cache = f"paths.cache_dir={tmp_path / 'cache'}"
    full, crashed = tmp_path / "full", tmp_path / "crashed"

    r = run_cli([*COMMON, cache, f"hydra.run.dir={full}"], tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    kill = [
        "+callbacks.crash._target_=tests.e2e.scripts.crash.KillAtStep",
        f"+callbacks.crash.step={KILL_AT}",
    ]
    r = run_cli([*COMMON, cache, f"hydra.run.dir={crashed}", *kill], tmp_path, env=env)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-3000:])
    last = crashed / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["global_step"] == EVERY  # the newest periodic checkpoint, 2 steps before the kill
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches_done"] == EVERY

    r = run_cli([*COMMON, cache, f"hydra.run.dir={crashed}", "ckpt_path=last"], tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    log = (crashed / "run.log").read_text()
    assert "resuming from" in log and f"continues epoch 0 after {EVERY} batches" in log

    _assert_same_end(full, crashed, STEPS, EVERY)

    # W&B: one id per run dir, reused by the resumed process (two offline run dirs, same id)
    run_id = (crashed / "wandb_run_id").read_text().strip()
    assert run_id and run_id != (full / "wandb_run_id").read_text().strip()
    offline = sorted(p.name for p in (crashed / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(name.endswith(f"-{run_id}") for name in offline), offline


# Finetuning: glm-tiny keeps its dropout of 0.1, so the resumed run also needs the restored RNG state to
# match. 8 steps over two epochs, last.ckpt every 2 steps, killed after step 5 (inside epoch 0 for both):
# cloze 22 RTE examples in batches of 4 = 6 batches an epoch, seq2seq 14 XSum pairs = 4 batches (the last
# one short in both).
FT_STEPS, FT_EVERY, FT_KILL_AT = 8, 2, 3
FT_COMMON = [
    "model=glm_tiny",
    "logger=[csv]",
    "stages=[fit]",
    "callbacks.progress=null",
    "trainer.enable_model_summary=false",
    f"trainer.max_steps={FT_STEPS}",
    "trainer.log_every_n_steps=1",
    f"callbacks.checkpoint.every_n_train_steps={FT_EVERY}",
    "data.micro_batch_size=4",
    "data.global_batch_size=4",
    "data.eval_batch_size=4",
]
FINETUNE = {
    "cloze": (
        "superglue/RTE/train.jsonl",
        22,
        [
            "+experiment=superglue_rte",
            "data.max_train_examples=22",
            "data.max_eval_examples=4",
            "data.seq_length=128",
        ],
    ),
    "seq2seq": (
        "xsum/validation.jsonl",
        14,
        ["+experiment=xsum", "data.max_samples.train=14", "data.src_seq_length=64", "data.tgt_seq_length=16"],
    ),
}


@pytest.mark.slow  # three subprocess runs: 40-50 s each task at load 2, cloze 108 s at load 5-6 (2 cores)
@pytest.mark.parametrize("task", sorted(FINETUNE))
def test_finetune_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path: Path, task: str) -> None:
    """The same promise for finetuning: killed inside epoch 0, resumed from the step-2 checkpoint, the run
    finishes epoch 0 (its short last batch included) and goes into epoch 1 exactly as a run that never
    stopped."""
    data_file, n_train, overrides = FINETUNE[task]
    need_data(data_file)
    args = [*overrides, *FT_COMMON]
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    r = run_cli([*args, f"hydra.run.dir={full}"], tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    kill = [
        "+callbacks.crash._target_=tests.e2e.scripts.crash.KillAtStep",
        f"+callbacks.crash.step={FT_KILL_AT}",
    ]
    r = run_cli([*args, f"hydra.run.dir={crashed}", *kill], tmp_path)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-3000:])
    saved = torch.load(crashed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    resume_at = FT_KILL_AT - FT_KILL_AT % FT_EVERY
    assert saved["global_step"] == resume_at
    state = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert state["batches_done"] == resume_at and state["epoch"] == 0 and state["num_samples"] == n_train

    r = run_cli([*args, f"hydra.run.dir={crashed}", "ckpt_path=last"], tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    assert f"continues epoch 0 after {resume_at} batches" in (crashed / "run.log").read_text()
    _assert_same_end(full, crashed, FT_STEPS, resume_at)


@pytest.mark.slow  # three 2-process runs, ~25 s each at load 2
def test_two_process_cloze_resumed_mid_epoch_is_bit_identical(tmp_path: Path) -> None:
    """2-process DDP (gloo, CPU), dropout on: 21 examples padded to 22 = 11 per rank, 6 batches of 2 per
    rank. A run stopped after step 2 (mid-epoch; last.ckpt written there) and resumed to step 5 ends bit for
    bit where an uninterrupted 5-step run does: each rank continues its share of the epoch and gets its own
    RNG state back. The schedule length is pinned, since the stopped run has a different max_steps."""
    need_data("superglue/RTE/train.jsonl")
    args = [
        *FINETUNE["cloze"][2],
        *FT_COMMON,
        "hardware=[cpu,ddp]",
        "trainer.devices=2",
        "data.max_train_examples=21",
        "data.micro_batch_size=2",
        "data.eval_batch_size=2",
        "+task.scheduler.total_steps=5",
    ]
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    for extra in (
        [f"hydra.run.dir={full}", "trainer.max_steps=5"],
        [f"hydra.run.dir={stopped}", "trainer.max_steps=2"],
        [f"hydra.run.dir={stopped}", "trainer.max_steps=5", "ckpt_path=last"],
    ):
        r = run_cli([*args, *extra], tmp_path)
        assert r.returncode == 0, r.stderr[-4000:]
    log = (stopped / "run.log").read_text()
    assert log.count("continues epoch 0 after 2 batches") == 2, log[-3000:]  # both ranks
    saved = torch.load(stopped / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert len(saved["glm_rng_states_by_rank"]) == 2
    _assert_same_end(full, stopped, 5, 2)


def _refusal(cfg, tmp_path: Path) -> str:
    from glm.errors import ConfigError
    from glm.run.pipeline import run

    with pytest.raises(ConfigError) as err:
        run(cfg)
    return str(err.value)


def _fake_run_dir(cfg, run_dir: Path, checkpoint: bytes | None = None) -> Path:
    """A run dir as a previous run leaves it: its resolved config.yaml and checkpoints/last.ckpt."""
    from omegaconf import OmegaConf

    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True, exist_ok=True)
    if checkpoint is None:
        torch.save({"state_dict": {}, "loops": {}, "global_step": 3}, last)
    else:
        last.write_bytes(checkpoint)
    return last


def test_resume_refuses_a_changed_model_objective_or_data(compose_cfg, tmp_path: Path) -> None:
    from glm.run.resume import check_resume_config

    old = compose_cfg("ci_tiny", ["logger=none"])
    _fake_run_dir(old, tmp_path / "run")
    for override, expected in [
        ("+model.hidden_size=128", "model.hidden_size: not in the stored config, now 128"),
        ("objective.preset=glm-base", "objective.preset: stored 'glm-doc', now 'glm-base'"),
        ("data.seq_length=128", "data.seq_length: stored 64, now 128"),
    ]:
        cfg = compose_cfg("ci_tiny", ["logger=none", "ckpt_path=last", override])
        msg = _refusal(cfg, tmp_path)
        assert msg.startswith(expected) and "run being resumed" in msg, msg
    # trainer / logging / callbacks may change when resuming
    cfg = compose_cfg(
        "ci_tiny", ["logger=csv", "trainer.max_steps=50", "callbacks.checkpoint.every_n_train_steps=7"]
    )
    check_resume_config(cfg, tmp_path / "run" / "config.yaml")


def test_resumed_run_builds_the_config_it_stored(tmp_path: Path) -> None:
    """config.yaml is the config as built (the vocabulary the tokenizer fixed, no None placeholders); a resumed
    run builds the same one, and a vocabulary that differs is refused once the tokenizer is known."""
    import yaml

    need_data("gutenberg/11-0.txt")
    run_dir = tmp_path / "run"
    common = [
        "+experiment=ci_tiny",
        "logger=none",
        "trainer.val_check_interval=2",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run_dir}",
    ]
    r = run_cli([*common, "trainer.max_steps=2"], tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    model = {"preset": "glm-tiny", "hidden_dropout": 0.0, "attention_dropout": 0.0, "vocab_size": 2048}
    assert stored["model"] == stored["task"]["model"] == model
    assert stored["objective"] == {"preset": "glm-doc"}

    r = run_cli([*common, "trainer.max_steps=4", "ckpt_path=last"], tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "resuming from" in (run_dir / "run.log").read_text()
    resumed = yaml.safe_load((run_dir / "config.yaml").read_text())
    for key in ("model", "objective", "data", "task"):
        assert resumed[key] == stored[key], key
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4

    r = run_cli([*common, "trainer.max_steps=6", "ckpt_path=last", "model.vocab_size=4096"], tmp_path)
    assert r.returncode == 2 and "Config error: model.vocab_size: stored 2048, now 4096" in r.stderr, r.stderr
    # a stored vocabulary the tokenizer no longer gives: refused after the tokenizer is loaded
    stored["model"]["vocab_size"] = 4096
    (run_dir / "config.yaml").write_text(yaml.safe_dump(stored))
    r = run_cli([*common, "trainer.max_steps=6", "ckpt_path=last"], tmp_path)
    assert r.returncode == 2 and "Config error: model.vocab_size: stored 4096, now 2048" in r.stderr, r.stderr
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4


def test_pretrained_and_explicit_ckpt_path_are_exclusive(compose_cfg, tmp_path: Path) -> None:
    from glm.errors import ConfigError
    from glm.run.validation import validate

    ckpt = tmp_path / "x.ckpt"
    torch.save({"state_dict": {}, "loops": {}}, ckpt)
    cfg = compose_cfg("ci_tiny", ["logger=none", f"task.pretrained={tmp_path}", f"ckpt_path={ckpt}"])
    with pytest.raises(ConfigError, match=r"task.pretrained .* and ckpt_path .* cannot be combined"):
        validate(cfg)
    # ckpt_path=last goes with pretrained: first start from the weights, a restart resumes the run
    validate(compose_cfg("ci_tiny", ["logger=none", f"task.pretrained={tmp_path}", "ckpt_path=last"]))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_checkpoint_is_named(compose_cfg, tmp_path: Path, damage: str) -> None:
    import io

    buf = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "loops": {}}, buf)
    data = {
        "truncated": buf.getvalue()[: len(buf.getvalue()) // 2],
        "garbage": b"not a checkpoint" * 10,
        "empty": b"",
    }
    cfg = compose_cfg("ci_tiny", ["logger=none", "ckpt_path=last"])
    last = _fake_run_dir(cfg, tmp_path / "run", checkpoint=data[damage])
    msg = _refusal(cfg, tmp_path)
    assert msg.startswith(f"ckpt_path: {last}:"), msg
    kinds = {
        "truncated": ("truncated or corrupt zip checkpoint",),
        "garbage": (
            "not a torch checkpoint",
            "corrupt checkpoint",
            "refused by torch.load(weights_only=True)",
        ),
        "empty": ("empty file (0 bytes)",),
    }[damage]
    assert any(kind in msg for kind in kinds), msg


# ---- non-finite losses --------------------------------------------------------------------------------
class _Blowup(L.Callback):
    """Makes the loss of one batch infinite (the weights stay finite), as an fp16 overflow would."""

    def __init__(self, batch_idx: int) -> None:
        self.batch_idx = batch_idx

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        pl_module.blow_up = batch_idx == self.batch_idx


def _module_and_data():
    from dist_train import MODEL, make_sample
    from torch.utils.data import DataLoader

    from glm.tasks.pretrain import PretrainModule

    class Module(PretrainModule):
        blow_up = False

        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * float("inf") if self.blow_up else loss

    data = DataLoader([make_sample(i) for i in range(16)], batch_size=2)
    return Module(model=MODEL, optimizer={"lr": 1e-3}), data


def _trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=5,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def test_nan_loss_stops_naming_step_and_batch() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "scripts"))
    from glm.errors import NonFiniteLossError

    L.seed_everything(0, verbose=False)
    module, data = _module_and_data()
    trainer = _trainer(callbacks=[_Blowup(batch_idx=3)])
    with pytest.raises(
        NonFiniteLossError, match=r"non-finite training loss \(inf\) at global step 3, batch index 3"
    ):
        trainer.fit(module, data)
    # stopped before the optimizer could apply a non-finite update
    assert trainer.global_step == 3
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_fp16_scaler_skips_are_counted_not_fatal() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "scripts"))
    from lightning.pytorch.plugins.precision import MixedPrecision

    L.seed_everything(0, verbose=False)
    module, data = _module_and_data()
    logged: list[float] = []

    class Grab(L.Callback):  # callbacks run before the module's own on_train_batch_end: read one batch later
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx > 0:
                logged.append(float(trainer.callback_metrics["train/skipped_steps"]))

        def on_train_end(self, trainer, pl_module) -> None:
            logged.append(float(trainer.callback_metrics["train/skipped_steps"]))

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    trainer = _trainer(
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)], callbacks=[_Blowup(2), Grab()]
    )
    trainer.fit(module, data)
    assert module.skipped_steps == 1
    assert logged == [0.0, 0.0, 1.0, 1.0, 1.0], logged  # batch 2 overflowed; the run went on
    assert scaler.get_scale() < 2.0**8  # the overflow halved the scale
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_resumable_loader_continues_the_epoch_order_and_refuses_a_new_layout() -> None:
    from glm.data.pretrain import EpochIndexSampler, ResumableDataLoader

    def loader(world: int = 1, batch: int = 2, done: int = 0) -> ResumableDataLoader:
        sampler = EpochIndexSampler(20, seed=5, shuffle=True, rank=0, world_size=world)
        sampler.set_epoch(1)
        return ResumableDataLoader(list(range(40)), batch_size=batch, sampler=sampler, progress=lambda: done)

    whole = [b.tolist() for b in loader()]
    state = loader(done=3).state_dict()
    assert state["batches_done"] == 3 and state["epoch"] == 1
    resumed = loader()
    resumed.load_state_dict(state)
    assert [b.tolist() for b in resumed] == whole[3:]  # the rest of epoch 1, indices 20..39
    assert [b.tolist() for b in resumed] == whole  # the next pass is whole again
    at_end = loader()
    at_end.load_state_dict({**state, "batches_done": len(whole)})  # saved on the last batch: next epoch whole
    assert [b.tolist() for b in at_end] == whole
    for changed, field in ((loader(world=2), "world_size=1"), (loader(batch=4), "batch_size=2")):
        with pytest.raises(ValueError, match=f"train dataloader {field}"):
            changed.load_state_dict(state)


def test_each_rank_gets_its_own_rng_state_back() -> None:
    """Ranks stop drawing alike once their batches differ in shape (dropout on padded batches), so the
    checkpoint keeps every rank's RNG state and each rank restores its own (measured: 2-process DDP cloze
    resumed mid-epoch is bit-identical only with this); a changed world size falls back to rank 0's."""
    from types import SimpleNamespace

    from glm.tasks.base import GLMTaskModule
    from glm.utils.rng import rng_states

    def draws(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return torch.rand(4)

    torch.manual_seed(1)
    rank0 = rng_states()
    torch.manual_seed(2)
    rank1 = rng_states()
    ckpt = {"glm_rng_states": rank0, "glm_rng_states_by_rank": [rank0, rank1]}
    for rank, world, seed in ((1, 2, 2), (0, 2, 1), (1, 3, 1), (0, 1, 1)):
        module = SimpleNamespace(
            _trainer=SimpleNamespace(global_rank=rank, world_size=world), skipped_steps=0
        )
        GLMTaskModule.on_load_checkpoint(module, ckpt)
        assert torch.equal(torch.rand(4), draws(seed)), (rank, world)
    # a single process stores no per-rank list (no collective outside a process group)
    module = SimpleNamespace(skipped_steps=0)
    saved: dict = {}
    GLMTaskModule.on_save_checkpoint(module, saved)
    assert "glm_rng_states" in saved and "glm_rng_states_by_rank" not in saved
