"""Verified checkpoints: the sha256 sidecar written with every torch file, checked on load; its two-phase
update across a crash; a failed write (ENOSPC) that keeps the previous file and says what happened."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import subprocess
from pathlib import Path

import pytest
import torch

import glm.utils.fs as fs
from glm.checkpoint.io import (
    AtomicCheckpointIO,
    atomic_save,
    export_model,
    load_export,
    safe_load,
    verify_manifest,
)
from glm.errors import CheckpointError, ConfigError
from glm.model import GLM, GLMConfig
from glm.run.resume import resolve_ckpt_path
from glm.utils.fs import atomic_write, check_digest, digest_path


def _ckpt(step: int, n: int = 4096) -> dict:
    g = torch.Generator().manual_seed(step)
    return {"global_step": step, "state_dict": {"w": torch.randn(n, generator=g)}}


def _recorded(path: Path) -> list[str]:
    return [line.split()[0] for line in digest_path(path).read_text().splitlines()]


def test_sidecar_is_sha256sum_of_the_bytes_and_checks_with_sha256sum(tmp_path: Path) -> None:
    path = atomic_save(_ckpt(1), tmp_path / "last.ckpt")
    want = hashlib.sha256(path.read_bytes()).hexdigest()  # independent: hash the file as it lies on disk
    assert digest_path(path).read_text() == f"{want}  last.ckpt\n"
    if os.path.exists("/usr/bin/sha256sum"):
        r = subprocess.run(
            ["sha256sum", "-c", "last.ckpt.sha256"], cwd=tmp_path, capture_output=True, text=True
        )
        assert r.returncode == 0 and "last.ckpt: OK" in r.stdout
    assert check_digest(path)[0] == "ok"


def test_same_size_corruption_in_the_middle_is_refused_naming_file_and_both_digests(tmp_path: Path) -> None:
    path = atomic_save(_ckpt(1, n=65536), tmp_path / "last.ckpt")
    good = _recorded(path)[0]
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 4096] = os.urandom(4096)  # garbage inside the tensor bytes: the zip still opens
    path.write_bytes(bytes(data))
    bad = hashlib.sha256(bytes(data)).hexdigest()
    assert torch.load(path, weights_only=True)["global_step"] == 1  # torch alone would accept it
    with pytest.raises(CheckpointError) as err:
        safe_load(path)
    msg = str(err.value)
    assert str(path) in msg and good in msg and bad in msg and "\n" not in msg


def test_file_without_sidecar_loads_with_one_warning(tmp_path: Path, caplog) -> None:
    path = tmp_path / "old.ckpt"
    torch.save(_ckpt(3), path)  # as written before digests existed
    with caplog.at_level(logging.WARNING, logger="glm.checkpoint.io"):
        assert safe_load(path, expect_digest=True)["global_step"] == 3
        assert safe_load(path, expect_digest=True)["global_step"] == 3
        assert safe_load(path)["global_step"] == 3  # a foreign file: no warning asked for
    warnings = [r for r in caplog.records if "unverified" in r.getMessage()]
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage()


def _crash_on_rename_of(target: Path, monkeypatch, after: bool) -> None:
    """Make the rename onto ``target`` raise (``after``: once it is done), as a kill at that point would."""
    real = os.replace

    def replace(src, dst):
        if Path(dst) == target:
            if after:
                real(src, dst)
            raise KeyboardInterrupt("killed")
        return real(src, dst)

    monkeypatch.setattr(fs.os, "replace", replace)


@pytest.mark.parametrize("after", [False, True], ids=["before-rename", "between-renames"])
def test_a_crash_while_replacing_leaves_a_file_that_checks(tmp_path: Path, monkeypatch, after: bool) -> None:
    path = atomic_save(_ckpt(1), tmp_path / "last.ckpt")
    old_bytes = path.read_bytes()
    _crash_on_rename_of(path, monkeypatch, after)
    with pytest.raises(KeyboardInterrupt):
        atomic_save(_ckpt(2), path)
    monkeypatch.undo()
    assert len(_recorded(path)) == 2  # the sidecar still names both: the old bytes and the new ones
    assert check_digest(path)[0] == "ok"
    assert safe_load(path)["global_step"] == (2 if after else 1)
    assert (path.read_bytes() == old_bytes) is not after
    atomic_save(_ckpt(3), path)  # the next save leaves one line again
    assert _recorded(path) == [hashlib.sha256(path.read_bytes()).hexdigest()]


def test_enospc_keeps_previous_checkpoint_removes_temp_and_says_what_and_how_much(
    tmp_path: Path, monkeypatch
) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint(_ckpt(1), path)
    before = path.read_bytes()
    real_fdopen = os.fdopen

    class FillsUp:  # a file on a disk that fills up part way through the write
        def __init__(self, f) -> None:
            self.f, self.n = f, 0

        def write(self, data) -> int:
            self.n += len(data)
            if self.n > 10_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.f.close()

    monkeypatch.setattr(fs.os, "fdopen", lambda fd, mode: FillsUp(real_fdopen(fd, mode)))
    big = _ckpt(2, n=1 << 18)  # 1 MiB of tensors
    with pytest.raises(CheckpointError) as err:
        io.save_checkpoint(big, path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: could not write the training checkpoint (global step 2)")
    assert "No space left on device" in msg and "needs about 1.0 MiB" in msg and "free there" in msg
    assert "previous file is unchanged" in msg and "\n" not in msg
    monkeypatch.undo()
    assert path.read_bytes() == before and check_digest(path)[0] == "ok"
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt", "last.ckpt.sha256"]


def test_real_full_filesystem(tmp_path: Path) -> None:
    """The same on a real 1 MiB tmpfs, where torch.save reports the failed write as an opaque RuntimeError."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root); the injected-ENOSPC test covers the logic")
    try:
        io = AtomicCheckpointIO()
        io.save_checkpoint(_ckpt(1, n=1024), mnt / "last.ckpt")
        with pytest.raises(CheckpointError, match="No space left on device"):
            io.save_checkpoint(_ckpt(2, n=1 << 18), mnt / "last.ckpt")
        assert safe_load(mnt / "last.ckpt")["global_step"] == 1
        assert sorted(p.name for p in mnt.iterdir()) == ["last.ckpt", "last.ckpt.sha256"]
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_remove_checkpoint_removes_the_sidecar_and_mode_follows_umask(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "step000002.ckpt"
    io.save_checkpoint(_ckpt(2), path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # readable by the group like any other file
    io.remove_checkpoint(path)
    assert list(tmp_path.iterdir()) == []


def test_text_writes_have_no_sidecar_unless_asked(tmp_path: Path) -> None:
    atomic_write(tmp_path / "metrics.json", "{}\n")
    assert not digest_path(tmp_path / "metrics.json").exists()


# ---- sharded checkpoints: a directory replaced as a whole, with a manifest ----
def _shard_dir(path: Path, step: int) -> Path:
    path.mkdir(parents=True)
    digests = {}
    for name in ("__0_0.distcp", "__1_0.distcp", ".metadata"):
        (path / name).write_bytes(f"{name} at step {step}".encode() * 100)
        digests[name] = hashlib.sha256((path / name).read_bytes()).hexdigest()
    fs.write_manifest(path, digests)
    return path


def test_replace_dir_and_a_crash_between_its_renames(tmp_path: Path, monkeypatch) -> None:
    last = _shard_dir(tmp_path / "last.ckpt", 1)
    fs.replace_dir(_shard_dir(tmp_path / ".last.ckpt.staging", 2), last)
    assert b"step 2" in (last / "__0_0.distcp").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert verify_manifest(last) is None

    real = os.rename
    calls = []

    def rename(src, dst):  # killed after the old dir moved aside, before the new one moved in
        calls.append(Path(dst).name)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(src, dst)

    monkeypatch.setattr(fs.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        fs.replace_dir(_shard_dir(tmp_path / ".last.ckpt.staging", 3), last)
    monkeypatch.undo()
    assert not last.exists() and calls == [".last.ckpt.old", "last.ckpt"]
    assert fs.restore_replaced_dir(last) is True  # what resume does first
    assert b"step 2" in (last / "__0_0.distcp").read_bytes()
    assert fs.restore_replaced_dir(last) is False


def test_sharded_checkpoint_with_a_changed_shard_is_refused_at_resume(tmp_path: Path) -> None:
    last = _shard_dir(tmp_path / "checkpoints" / "last.ckpt", 1)
    shard = last / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[10:14] = b"XXXX"
    shard.write_bytes(bytes(data))
    with pytest.raises(
        CheckpointError, match=r"corrupt sharded checkpoint: .*__1_0.distcp: sha256 [0-9a-f]{64}"
    ):
        verify_manifest(last)
    with pytest.raises(ConfigError, match="corrupt sharded checkpoint"):
        resolve_ckpt_path("last", tmp_path)  # before anything is built


def test_resume_refuses_a_corrupt_last_ckpt_naming_it(tmp_path: Path) -> None:
    path = atomic_save(_ckpt(1, n=65536) | {"loops": {}}, tmp_path / "checkpoints" / "last.ckpt")
    assert resolve_ckpt_path("last", tmp_path) == str(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one bit pattern flipped in one byte
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=rf"ckpt_path: {path}: corrupt: the file's sha256 is"):
        resolve_ckpt_path("last", tmp_path)


def test_export_carries_a_digest_and_a_changed_export_is_refused(tmp_path: Path) -> None:
    config = GLMConfig(
        num_layers=1, hidden_size=32, num_attention_heads=2, vocab_size=64, max_sequence_length=16
    )
    out = export_model(GLM(config), config, tmp_path / "export")
    weights = out / "model.pt"
    assert digest_path(weights).read_text().split()[0] == hashlib.sha256(weights.read_bytes()).hexdigest()
    load_export(out)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{weights}: corrupt"):
        load_export(out)
