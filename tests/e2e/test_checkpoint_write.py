"""A checkpoint write that is killed, or hits a full disk, never costs the last good checkpoint — also
when the run dir and ``$TMPDIR`` are on different filesystems (a shared filesystem for the run, a local
``/tmp``), where Lightning's default save (temp file in ``$TMPDIR``, then a move) truncates ``last.ckpt``
and copies into it."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import need_data, run_cli
from test_resume import _assert_same_end

from glm.utils.fs import check_digest

STEPS, EVERY, KILL_AT = 6, 2, 4  # last.ckpt at 2; the save at 4 is killed half-written; resume from 2
COMMON = [
    "+experiment=ci_tiny",
    "logger=csv",
    f"trainer.max_steps={STEPS}",
    f"trainer.val_check_interval={STEPS}",
    "trainer.log_every_n_steps=1",
    f"callbacks.checkpoint.every_n_train_steps={EVERY}",
]


def _other_filesystem_tmpdir(tmp_path: Path) -> Path:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs a /dev/shm on another filesystem than the test's tmp dir")
    tmpdir = shm / f"glm-test-{os.getpid()}-{tmp_path.name}"
    tmpdir.mkdir()
    return tmpdir


def test_kill_during_checkpoint_write_across_filesystems_keeps_last_and_resumes_bit_identical(
    tmp_path: Path,
) -> None:
    need_data("gutenberg/11-0.txt")
    tmpdir = _other_filesystem_tmpdir(tmp_path)
    env = {"TMPDIR": str(tmpdir)}
    cache = f"paths.cache_dir={tmp_path / 'cache'}"
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    try:
        r = run_cli([*COMMON, cache, f"hydra.run.dir={full}"], tmp_path, env=env)
        assert r.returncode == 0, r.stderr[-4000:]
        kill = [
            "+callbacks.kill_in_save._target_=tests.e2e.scripts.slow_save.KillDuringSave",
            f"+callbacks.kill_in_save.step={KILL_AT}",
        ]
        r = run_cli([*COMMON, cache, f"hydra.run.dir={crashed}", *kill], tmp_path, env=env)
        assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-3000:])

        last = crashed / "checkpoints" / "last.ckpt"
        saved = torch.load(last, map_location="cpu", weights_only=True)  # the previous complete file ...
        assert saved["global_step"] == EVERY and "padding" not in saved
        assert check_digest(last)[0] == "ok"  # ... and its sidecar agrees
        leftovers = [p.name for p in last.parent.iterdir() if p.name.endswith(".tmp")]
        assert len(leftovers) == 1  # the killed write's temp file (SIGKILL allows no cleanup) ...

        r = run_cli([*COMMON, cache, f"hydra.run.dir={crashed}", "ckpt_path=last"], tmp_path, env=env)
        assert r.returncode == 0, r.stderr[-4000:]
        assert not [p for p in last.parent.iterdir() if p.name.endswith(".tmp")]  # ... removed on resume
        _assert_same_end(full, crashed, STEPS, resumed_at=EVERY)
    finally:
        for p in tmpdir.iterdir():
            p.unlink()
        tmpdir.rmdir()


def test_full_disk_during_a_save_is_one_line_exit_2_and_leaves_nothing_partial(tmp_path: Path) -> None:
    """The run dir on a 2 MiB tmpfs: config and log fit, the 3.4 MiB checkpoint does not."""
    need_data("gutenberg/11-0.txt")
    small = tmp_path / "small"
    small.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], capture_output=True
    )
    if mount.returncode:
        pytest.skip("cannot mount a tmpfs here (needs root); tests/checkpoint/test_digests.py injects ENOSPC")
    try:
        run = small / "run"
        r = run_cli(
            [
                "+experiment=ci_tiny",
                "logger=none",
                f"paths.cache_dir={tmp_path / 'cache'}",
                f"hydra.run.dir={run}",
            ],
            tmp_path,
        )
        assert r.returncode == 2, r.stderr[-3000:]
        assert "Traceback" not in r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith(f"Checkpoint error: {run / 'checkpoints'}/step000006.ckpt: could not write")
        assert "No space left on device" in last and "needs about" in last
        files = [p for p in run.rglob("*") if p.is_file()]
        assert not [p for p in files if p.stat().st_size == 0 or p.name.endswith(".tmp")]
        assert not list((run / "checkpoints").iterdir())
    finally:
        subprocess.run(["umount", str(small)], check=False)
