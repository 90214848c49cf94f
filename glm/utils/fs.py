"""Atomic file writes, and sha256 digests beside the files a restart depends on.

``atomic_write`` is the one way the project writes a file a reader or a restart may depend on. With
``digest=True`` it also records the sha256 of the bytes in a sidecar ``<file>.sha256`` (``sha256sum``
format, so ``sha256sum -c last.ckpt.sha256`` checks it by hand) that :func:`check_digest` compares on load.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Literal

__all__ = [
    "DIGEST_SUFFIX",
    "MANIFEST_FILE",
    "atomic_write",
    "check_digest",
    "check_manifest",
    "digest_path",
    "remove_with_digest",
    "replace_dir",
    "restore_replaced_dir",
    "sha256_file",
    "write_manifest",
]

DIGEST_SUFFIX = ".sha256"
MANIFEST_FILE = "SHA256SUMS"  # a directory's digests (sharded checkpoints), sha256sum format
_CHUNK = 8 << 20
# (path, inode, size, mtime_ns) of files whose digest matched: resume checks a checkpoint before anything is
# built and Lightning loads it later; the second check need not read the file again
_verified: set[tuple[str, int, int, int]] = set()
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform/filesystem, hence best effort.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _HashingWriter:
    """A binary file that hashes what goes through it (so a digest costs no second read of the file)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.hash = hashlib.sha256()
        self.written = 0
        self.error: OSError | None = None  # torch.save reports a failed write as an opaque RuntimeError

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.hash.update(data)
        try:
            n = self._f.write(data)
        except OSError as err:
            self.error = err
            raise
        self.written += len(data)
        return n

    def flush(self) -> None:
        self._f.flush()

    def fileno(self) -> int:
        return self._f.fileno()


def digest_path(path: str | os.PathLike[str]) -> Path:
    """The sidecar holding ``path``'s sha256."""
    path = Path(path)
    return path.with_name(path.name + DIGEST_SUFFIX)


def _digest_text(digests: list[str], name: str) -> str:
    return "".join(f"{d}  {name}\n" for d in digests)


def _recorded_digests(path: Path) -> list[str] | None:
    """The digests in ``path``'s sidecar (None: no sidecar). Two lines only while a replacement is under way:
    the new file's and the old file's, so a crash between the two renames leaves a file that still checks."""
    side = digest_path(path)
    try:
        text = side.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return None
    return [line.split()[0].lower() for line in text.splitlines() if line.strip()]


def _replace_with(tmp_name: str, path: Path, digest: str | None) -> None:
    if digest is None:
        os.replace(tmp_name, path)
        return
    side = digest_path(path)
    old = [d for d in (_recorded_digests(path) or []) if d != digest][:1] if path.exists() else []
    if old:  # phase 1: the sidecar accepts the old bytes and the new ones
        atomic_write(side, _digest_text([digest, *old], path.name))
    os.replace(tmp_name, path)
    # phase 2: only the new bytes. Without an old digest a crash just before this leaves the new file
    # without a sidecar: it loads with a warning, never refused.
    atomic_write(side, _digest_text([digest], path.name))


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes | str | Callable[[IO[bytes]], None],
    *,
    digest: bool = False,
) -> Path:
    """Write ``data`` (bytes, text as UTF-8, or a function writing to a binary file) to ``path`` atomically.

    The bytes go to a temporary file in ``path``'s own directory (so the final rename never crosses a
    filesystem), which is flushed and fsync'ed, then ``os.replace``d onto ``path``, and the directory is
    fsync'ed. Readers see the old file or the new one, never a partial one; if writing fails, the temporary
    file is removed and ``path`` is left as it was. ``digest=True``: also record the bytes' sha256 in
    ``<path>.sha256``, hashed as they are written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    f: _HashingWriter | None = None
    try:
        # mkstemp creates 0600; a replaced file keeps its mode, a new one gets what open() would give it
        os.fchmod(fd, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as raw:
            f = _HashingWriter(raw)
            if callable(data):
                data(f)  # type: ignore[arg-type]  # file-like: write/flush/fileno
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(raw.fileno())
        _replace_with(tmp_name, path, f.hash.hexdigest() if digest else None)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if f is not None and f.error is not None and f.error is not err:
            raise f.error from None  # the OSError (ENOSPC, EIO) a writer function wrapped
        raise
    _fsync_dir(path.parent)
    return path


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes, read in 8 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def check_digest(path: str | os.PathLike[str]) -> tuple[Literal["ok", "missing", "mismatch"], str, list[str]]:
    """Compare ``path``'s bytes with its sidecar: ``("ok" | "missing" | "mismatch", actual, recorded)``
    (``actual`` is empty when there is no sidecar: nothing was read)."""
    path = Path(path)
    recorded = _recorded_digests(path)
    if recorded is None:
        return "missing", "", []
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key in _verified:
        return "ok", recorded[0], recorded
    actual = sha256_file(path)
    if actual in recorded:
        _verified.add(key)
        return "ok", actual, recorded
    return "mismatch", actual, recorded


def remove_with_digest(path: str | os.PathLike[str]) -> None:
    """Delete a file (or a directory: a sharded checkpoint) and its digest sidecar (either may be absent)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    digest_path(path).unlink(missing_ok=True)


# ---- directories (sharded checkpoints): a manifest of digests, replaced as a whole ----
def write_manifest(directory: str | os.PathLike[str], digests: dict[str, str]) -> Path:
    """``<directory>/SHA256SUMS`` naming every file of ``digests`` (relative names), atomically."""
    return atomic_write(Path(directory) / MANIFEST_FILE, _digest_lines(digests))


def _digest_lines(digests: dict[str, str]) -> str:
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(digests.items()))


def check_manifest(directory: str | os.PathLike[str]) -> tuple[Literal["ok", "missing"], list[str]]:
    """``("ok", [])``, ``("missing", [])`` (no manifest) or ``("ok", problems)`` where each problem names a
    file that is absent or whose sha256 differs (with both digests)."""
    directory = Path(directory)
    try:
        lines = (directory / MANIFEST_FILE).read_text(encoding="ascii", errors="replace").splitlines()
    except FileNotFoundError:
        return "missing", []
    problems = []
    for line in lines:
        if not line.strip():
            continue
        recorded, _, name = line.partition("  ")
        file = directory / name
        if not file.is_file():
            problems.append(f"{file}: listed in {MANIFEST_FILE} but missing")
            continue
        actual = sha256_file(file)
        if actual != recorded.strip().lower():
            problems.append(f"{file}: sha256 {actual}, {MANIFEST_FILE} recorded {recorded.strip()}")
    return "ok", problems


def _aside(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def replace_dir(new: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Put the complete directory ``new`` (a sibling of ``path``) at ``path``. A rename cannot replace a
    non-empty directory, so the old one first moves aside to ``.<name>.old``: at every instant either
    ``path`` is complete, or it is absent and ``.<name>.old`` is, which :func:`restore_replaced_dir` puts
    back."""
    new, path = Path(new), Path(path)
    aside = _aside(path)
    if aside.exists():
        shutil.rmtree(aside)
    if path.exists():
        os.rename(path, aside)
    os.rename(new, path)
    _fsync_dir(path.parent)
    shutil.rmtree(aside, ignore_errors=True)


def restore_replaced_dir(path: str | os.PathLike[str]) -> bool:
    """After a crash inside :func:`replace_dir` (``path`` absent, ``.<name>.old`` present): move the old
    directory back. True when something was restored."""
    path = Path(path)
    aside = _aside(path)
    if path.exists() or not aside.is_dir():
        return False
    os.rename(aside, path)
    _fsync_dir(path.parent)
    return True
