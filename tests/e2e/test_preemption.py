"""Preemption: SIGTERM / SIGUSR1 / SIGINT mid-epoch save last.ckpt at the next optimizer-step boundary and stop
with exit 128+signum; resuming from it is bit-identical to a run that never stopped (docs/preemption.md)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import need_data, run_cli
from test_resume import _assert_same_end

from glm.callbacks import Preemption, resume_command, slurm_job_id

# 8 steps, validation only at the end, no periodic last.ckpt: a checkpoint at the signalled step can only be
# the preemption's
STEPS = 8
COMMON = [
    "+experiment=ci_tiny",
    "logger=[csv]",
    f"trainer.max_steps={STEPS}",
    f"trainer.val_check_interval={STEPS}",
    "trainer.log_every_n_steps=1",
    "callbacks.checkpoint.every_n_train_steps=1000",
]
SIG = "+callbacks.sig"  # the signal-injection callback (tests/e2e/scripts/preempt.py)


def _signal_at(batch: int, name: str, *extra: str) -> list[str]:
    return [
        f"{SIG}._target_=tests.e2e.scripts.preempt.SignalAtBatch",
        f"{SIG}.batch={batch}",
        f"{SIG}.signal={name}",
        *extra,
    ]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The tokenizer cache and one uninterrupted reference run, shared by the tests of this module."""
    need_data("gutenberg/11-0.txt")
    base = tmp_path_factory.mktemp("preempt")
    ns = SimpleNamespace(cache=f"paths.cache_dir={base / 'cache'}", base=base, refs={})

    def reference(*extra: str) -> Path:
        key = tuple(extra)
        if key not in ns.refs:
            run_dir = base / f"full{len(ns.refs)}"
            r = run_cli([*COMMON, ns.cache, *extra, f"hydra.run.dir={run_dir}"], base)
            assert r.returncode == 0, r.stderr[-4000:]
            ns.refs[key] = run_dir
        return ns.refs[key]

    ns.reference = reference
    return ns


def _check_stopped(
    r: subprocess.CompletedProcess, run_dir: Path, name: str, step: int, ranks: int = 1
) -> str:
    """Exit 128+signum, one ``Preempted:`` line per rank (no traceback), FAILED saying so, a last.ckpt at
    ``step`` and nothing else saved; returns the resume command."""
    signum = getattr(signal, name)
    assert r.returncode == 128 + signum, (r.returncode, r.stderr[-4000:])
    assert "Traceback" not in r.stderr, r.stderr[-4000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    head = f"preempted by {name} at step {step}; checkpoint {last}; "
    lines = [line for line in r.stderr.splitlines() if line.startswith("Preempted: ")]
    assert len(lines) == ranks and set(lines) == {lines[0]}, r.stderr[-3000:]
    assert lines[0].startswith(f"Preempted: {head}"), r.stderr[-3000:]
    failed = (run_dir / "FAILED").read_text().splitlines()
    assert failed[0] == lines[0].removeprefix("Preempted: ") and len(failed) == 1, failed
    command = failed[0].split("resume with: ", 1)[1]
    assert command.startswith("python run.py +experiment=ci_tiny")
    assert command.endswith(f"hydra.run.dir={run_dir} ckpt_path=last"), command
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt", "last.ckpt.sha256"]
    assert not list(run_dir.rglob("hpc_ckpt_*"))
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["global_step"] == step  # the signalled step, not a periodic one (every 1000)
    return command


def _resume_args(command: str) -> list[str]:
    """The printed resume command's overrides, less the signal injection (it would stop the run again)."""
    words = shlex.split(command)
    assert words[:2] == ["python", "run.py"], words
    return [w for w in words[2:] if not w.startswith(f"{SIG}.")]


def test_sigterm_mid_epoch_saves_at_the_step_and_resumes_bit_identically(shared, tmp_path: Path) -> None:
    """SIGTERM during step 5 (micro-batch 4): last.ckpt at step 5, exit 143; the printed resume command
    finishes the run exactly as the uninterrupted one (weights, AdamW moments, schedule, every loss)."""
    full = shared.reference()
    run_dir = tmp_path / "run"
    r = run_cli([*COMMON, shared.cache, f"hydra.run.dir={run_dir}", *_signal_at(4, "SIGTERM")], tmp_path)
    command = _check_stopped(r, run_dir, "SIGTERM", 5)
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches_done"] == 5

    r = run_cli(_resume_args(command), tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "continues epoch 0 after 5 batches" in (run_dir / "run.log").read_text()
    assert not (run_dir / "FAILED").exists()
    _assert_same_end(full, run_dir, STEPS, 5)


@pytest.mark.slow  # two runs (~15 s each on 2 busy cores)
def test_sigint_saves_and_exits_130(shared, tmp_path: Path) -> None:
    full = shared.reference()
    run_dir = tmp_path / "run"
    r = run_cli([*COMMON, shared.cache, f"hydra.run.dir={run_dir}", *_signal_at(2, "SIGINT")], tmp_path)
    command = _check_stopped(r, run_dir, "SIGINT", 3)
    assert "Ctrl-C: saving a checkpoint at the end of this step" in r.stderr
    r = run_cli(_resume_args(command), tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    _assert_same_end(full, run_dir, STEPS, 3)


@pytest.mark.slow  # two runs
def test_signal_in_the_last_validation_stops_after_the_fit(shared, tmp_path: Path) -> None:
    """No step boundary follows the final validation: the fit completes (its best-k and final last.ckpt),
    then the run stops with exit 143 naming step 8; resuming runs only what is left and succeeds."""
    full = shared.reference()
    run_dir = tmp_path / "run"
    args = [*COMMON, shared.cache, f"hydra.run.dir={run_dir}"]
    r = run_cli([*args, *_signal_at(0, "SIGTERM", f"{SIG}.during=val")], tmp_path)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert r.returncode == 143, (r.returncode, r.stderr[-4000:])
    assert f"Preempted: preempted by SIGTERM at step {STEPS}; checkpoint {last}; " in r.stderr
    assert sorted(p.name for p in last.parent.iterdir() if p.suffix == ".ckpt") == [
        "last.ckpt",
        f"step{STEPS:06d}.ckpt",
    ]
    assert not (run_dir / "metrics.json").exists()
    r = run_cli([*args, "ckpt_path=last"], tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    assert (run_dir / "metrics.json").exists() and not (run_dir / "FAILED").exists()
    _assert_same_end(full, run_dir, STEPS, STEPS)


@pytest.mark.slow  # two runs
def test_callbacks_none_keeps_preemption_and_saves_where_ckpt_path_last_looks(shared, tmp_path: Path) -> None:
    """callbacks=none has no RunCheckpoint: the checkpoint goes to <run dir>/checkpoints/last.ckpt through
    trainer.save_checkpoint, and ckpt_path=last continues from it."""
    run_dir = tmp_path / "run"
    common = [a for a in COMMON if not a.startswith("callbacks.checkpoint.")]
    args = [*common, shared.cache, "callbacks=none", f"hydra.run.dir={run_dir}"]
    r = run_cli([*args, *_signal_at(2, "SIGTERM")], tmp_path)
    _check_stopped(r, run_dir, "SIGTERM", 3)
    r = run_cli([*args, "ckpt_path=last"], tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "continues epoch 0 after 3 batches" in (run_dir / "run.log").read_text()


@pytest.mark.slow
def test_without_the_preemption_callback_sigterm_still_exits_143(shared, tmp_path: Path) -> None:
    """callbacks.preemption=null leaves SIGTERM to Lightning, whose stop is a SystemExit with code 0: run.py
    still tells a scheduler it was stopped (and that nothing was saved at that step)."""
    run_dir = tmp_path / "run"
    args = [*COMMON, shared.cache, "callbacks.preemption=null", f"hydra.run.dir={run_dir}"]
    r = run_cli([*args, *_signal_at(2, "SIGTERM")], tmp_path)
    assert r.returncode == 143, (r.returncode, r.stderr[-3000:])
    assert r.stderr.strip().splitlines()[-1].startswith("Preempted: SIGTERM, handled by Lightning")
    assert not (run_dir / "metrics.json").exists()


def _fake_scontrol(tmp_path: Path, rc: int = 0) -> tuple[dict[str, str], Path]:
    """A ``scontrol`` first on PATH that writes its arguments to a file (and exits ``rc``)."""
    bin_dir, record = tmp_path / "bin", tmp_path / "scontrol.args"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {shlex.quote(str(record))}\nexit {rc}\n')
    script.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, record


@pytest.mark.slow  # two runs
def test_sigusr1_under_slurm_requeues_and_the_same_command_resumes(shared, tmp_path: Path) -> None:
    """SLURM's time-limit warning (``--signal=USR1@90``): last.ckpt, ``scontrol requeue <job id>``, exit
    138; the requeued job runs the very same command (with ``ckpt_path=auto``) and ends bit-identically."""
    full = shared.reference()
    run_dir = tmp_path / "run"
    env, record = _fake_scontrol(tmp_path)
    env["SLURM_JOB_ID"] = "4242"
    command = [*COMMON, shared.cache, f"hydra.run.dir={run_dir}", "ckpt_path=auto"]
    r = run_cli([*command, *_signal_at(3, "SIGUSR1")], tmp_path, env=env)
    _check_stopped(r, run_dir, "SIGUSR1", 4)
    assert record.read_text() == "requeue 4242\n"
    assert "requeued SLURM job 4242" in (run_dir / "FAILED").read_text()

    r = run_cli(command, tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "continues epoch 0 after 4 batches" in (run_dir / "run.log").read_text()
    assert record.read_text() == "requeue 4242\n"  # a run that ends normally requeues nothing
    _assert_same_end(full, run_dir, STEPS, 4)


@pytest.mark.slow  # three runs
def test_gradient_accumulation_saves_at_the_end_of_the_signalled_step(shared, tmp_path: Path) -> None:
    """Accumulate 2: the signal in micro-batch 4 (the first of step 3) is honoured when step 3 has stepped,
    after micro-batch 5: global_step 3, 6 micro-batches done; the resumed run is bit-identical."""
    accumulate = [
        "data.global_batch_size=8",
        f"trainer.max_steps={STEPS // 2}",
        f"trainer.val_check_interval={STEPS}",
    ]
    full = shared.reference(*accumulate)
    run_dir = tmp_path / "run"
    args = [*COMMON, shared.cache, *accumulate, f"hydra.run.dir={run_dir}"]
    r = run_cli([*args, *_signal_at(4, "SIGTERM")], tmp_path)
    _check_stopped(r, run_dir, "SIGTERM", 3)
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches_done"] == 6
    r = run_cli([*args, "ckpt_path=last"], tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    _assert_same_end(full, run_dir, STEPS // 2, 3)


@pytest.mark.slow  # one 2-process run, ~25 s
def test_two_processes_stop_at_the_same_step_when_one_rank_is_signalled(shared, tmp_path: Path) -> None:
    """DDP (gloo): only rank 1 gets SIGUSR1, in micro-batch 2; the reduction at the step boundary stops both
    ranks after step 3, with one last.ckpt there, and both exit 138."""
    run_dir = tmp_path / "run"
    args = [
        *COMMON,
        shared.cache,
        "hardware=[cpu,ddp]",
        "trainer.devices=2",
        "data.global_batch_size=8",
        f"hydra.run.dir={run_dir}",
    ]
    r = run_cli([*args, *_signal_at(2, "SIGUSR1", f"+{SIG[1:]}.rank=1")], tmp_path)
    _check_stopped(r, run_dir, "SIGUSR1", 3, ranks=2)  # the child rank's stderr is the same stream
    log = (run_dir / "run.log").read_text()
    assert log.count("SIGUSR1 received: saving a checkpoint at step 3") == 2, log[-3000:]


# ---- in-process: handlers, requeue, SLURM ----


def _fake_trainer(**kw: object) -> SimpleNamespace:
    killed: list[int] = []
    launcher = SimpleNamespace(kill=killed.append)
    base = {
        "global_step": 0,
        "world_size": 1,
        "is_global_zero": True,
        "strategy": SimpleNamespace(launcher=launcher),
    }
    return SimpleNamespace(killed=killed, **{**base, **kw})


def test_handlers_are_replaced_while_training_and_restored_after() -> None:
    """The signals only set a flag; SIGTERM is forwarded to the launched processes, SIGINT is not; a second
    Ctrl-C raises KeyboardInterrupt at once; teardown puts the previous handlers back."""
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    callback, trainer = Preemption(), _fake_trainer()
    callback.on_train_start(trainer, None)
    try:
        assert all(signal.getsignal(s) == callback._on_signal for s in before)
        signal.raise_signal(signal.SIGTERM)
        assert callback._pending == signal.SIGTERM and trainer.killed == [signal.SIGTERM]
        signal.raise_signal(signal.SIGTERM)  # a repeat (the scheduler signalling the group) changes nothing
        assert trainer.killed == [signal.SIGTERM]
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        callback._pending = None
        signal.raise_signal(signal.SIGINT)  # a first Ctrl-C: a flag, not forwarded
        assert callback._pending == signal.SIGINT and trainer.killed == [signal.SIGTERM]
    finally:
        callback.teardown(trainer, None, "fit")
    assert {s: signal.getsignal(s) for s in before} == before


def test_resume_command_and_slurm_job_id() -> None:
    overrides = ["+experiment=ci_tiny", "logger=[csv,wandb]", "ckpt_path=auto", "task.optimizer.lr=1e-3"]
    assert resume_command("outputs/runs/a b", overrides) == (
        "python run.py +experiment=ci_tiny 'logger=[csv,wandb]' task.optimizer.lr=1e-3 "
        "'hydra.run.dir=outputs/runs/a b' ckpt_path=last"
    )
    assert resume_command("r", None) == "python run.py <the same overrides> hydra.run.dir=r ckpt_path=last"
    assert slurm_job_id({"SLURM_JOB_ID": "90"}) == "90"
    assert (
        slurm_job_id({"SLURM_JOB_ID": "91", "SLURM_ARRAY_JOB_ID": "90", "SLURM_ARRAY_TASK_ID": "3"}) == "90_3"
    )
    assert slurm_job_id({}) is None
    with pytest.raises(ValueError, match="callbacks.preemption.signals: 'SIGKILL'"):
        Preemption(signals=["SIGTERM", "SIGKILL"])


def test_requeue_calls_scontrol_on_rank_zero_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env, record = _fake_scontrol(tmp_path)
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setenv("SLURM_JOB_ID", "91")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "90")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    auto, always = Preemption(), Preemption(requeue=True)
    assert auto._requeue(_fake_trainer(), signal.SIGTERM) is None  # default: SIGUSR1 only
    assert not record.exists()
    assert auto._requeue(_fake_trainer(is_global_zero=False), signal.SIGUSR1) is None
    assert not record.exists()  # other ranks do not call it
    assert auto._requeue(_fake_trainer(), signal.SIGUSR1) == "90_3"
    assert always._requeue(_fake_trainer(), signal.SIGTERM) == "90_3"
    assert record.read_text() == "requeue 90_3\nrequeue 90_3\n"
    assert Preemption(requeue=False)._requeue(_fake_trainer(), signal.SIGUSR1) is None
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID")
    monkeypatch.delenv("SLURM_JOB_ID")
    assert always._requeue(_fake_trainer(), signal.SIGUSR1) is None  # not under SLURM


def test_failing_scontrol_is_reported_not_claimed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    env, record = _fake_scontrol(tmp_path, rc=1)
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    assert Preemption()._requeue(_fake_trainer(), signal.SIGUSR1) is None
    assert record.read_text() == "requeue 77\n"
    assert "scontrol requeue 77 failed (1)" in caplog.text


def test_lightning_slurm_auto_requeue_is_turned_off() -> None:
    """Under SLURM Lightning's own handler would save hpc_ckpt_*.ckpt mid-step and requeue too."""
    import lightning as L
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    environment = SLURMEnvironment()
    assert environment.auto_requeue
    trainer = L.Trainer(
        accelerator="cpu", devices=1, plugins=[environment], logger=False, enable_progress_bar=False
    )
    Preemption().setup(trainer, None, "fit")
    assert environment.auto_requeue is False


def test_task_wrapper_records_a_preemption_as_its_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """FAILED holds the message (no traceback), the log one line, W&B the exit code 128+signum."""
    from omegaconf import OmegaConf

    import glm.run.wrappers as wrappers
    from glm.errors import Preempted

    codes: list[int] = []
    monkeypatch.setattr(wrappers, "finish_wandb", codes.append)
    message = "preempted by SIGUSR1 at step 7; checkpoint c/last.ckpt; resume with: python run.py x"

    def stopped(cfg: object) -> None:
        raise Preempted(message, signal.SIGUSR1, 7)

    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path)}})
    with pytest.raises(Preempted) as err:
        wrappers.task_wrapper(stopped)(cfg)
    assert err.value.exit_code == 138 and codes == [138]
    assert (tmp_path / wrappers.FAILED_MARKER).read_text() == message + "\n"
    assert [r.getMessage() for r in caplog.records if r.name == wrappers.__name__] == [message]
