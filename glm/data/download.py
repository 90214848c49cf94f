"""Download the public data sets into the data root, verified by sha256.

Every file has one entry in ``sources.toml`` (loaded by :mod:`glm.data.sources`): where it goes
under the data root, the repository commit it comes from, its size and its sha256, so the bytes are
reproducible and every download is checked.  The SuperGLUE zips of the benchmark's own site are *not* used: the files here
include partial FewGLUE splits that no official archive contains, and per-file pins keep one
mechanism for everything.

Usage::

    python -m glm.data list [--verify]            # registry, with present/missing under the root
    python -m glm.data download superglue lambada # names or groups (see GROUPS); `all` for everything
    python -m glm.data download gpt2 --root "$GLM_DATA_ROOT"   # or any dir: --root DIR
    python -m glm.data download all --mirror http://host:8000/   # same layout served elsewhere

A file is fetched to a temporary file beside its target, hashed while streaming, and moved into
place with an atomic rename only when the hash matches; on a mismatch the temporary file is
deleted and the error shows both hashes. Without network the error names the URL that failed and
the exact path (and sha256) where the file can be placed by hand.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path

from glm.data.paths import data_root
from glm.data.sources import GROUPS, REGISTRY, RemoteFile
from glm.errors import ChecksumError, DownloadError
from glm.utils.fs import sha256_file

MIRROR_ENV = "GLM_DATA_MIRROR"
_CHUNK = 1 << 20


def resolve(
    names: Iterable[str], registry: dict[str, tuple[RemoteFile, ...]] | None = None
) -> list[RemoteFile]:
    """Expand dataset names and groups (case-insensitive) into files, without duplicates."""
    registry = REGISTRY if registry is None else registry
    files: dict[str, RemoteFile] = {}
    for raw in names:
        name = raw.strip().lower()
        if name in registry:
            members: Sequence[str] = (name,)
        elif name in GROUPS:
            members = [m for m in GROUPS[name] if m in registry] if name != "all" else list(registry)
        else:
            known = ", ".join([*registry, *GROUPS])
            raise ValueError(f"unknown dataset {raw!r}; known names and groups: {known}")
        for member in members:
            for f in registry[member]:
                files.setdefault(f.target, f)
    return list(files.values())


def file_status(entry: RemoteFile, root: Path, verify: bool = False) -> str:
    """``ok`` | ``missing`` | ``not a file`` | ``wrong size`` | ``wrong sha256`` (hash: ``verify`` only)."""
    path = root / entry.target
    if path.exists() and not path.is_file():
        return "not a file"
    if not path.is_file():
        return "missing"
    if path.stat().st_size != entry.size:
        return "wrong size"
    if verify and sha256_file(path) != entry.sha256:
        return "wrong sha256"
    return "ok"


def source_url(entry: RemoteFile, mirror: str | None = None) -> str:
    """The URL to fetch: the registered one, or ``mirror/<target>`` for a mirror of the data root."""
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
    if not mirror:
        return entry.url
    return mirror.rstrip("/") + "/" + urllib.parse.quote(entry.target)


def _by_hand(entry: RemoteFile, dest: Path) -> str:
    return (
        f"To install it by hand, download it on a machine with network and place it at {dest} "
        f"({entry.size} bytes, sha256 {entry.sha256}); `python -m glm.data list --verify` checks it"
    )


def fetch(
    entry: RemoteFile,
    root: str | os.PathLike[str] | None = None,
    *,
    mirror: str | None = None,
    force: bool = False,
    timeout: float = 60.0,
    progress: bool = True,
) -> tuple[Path, bool]:
    """Make sure ``entry`` is present and correct under ``root``; return (path, downloaded?).

    An existing file with the right hash is kept. An existing file with another hash is an error
    unless ``force`` (then it is replaced). Raises :class:`DownloadError` / :class:`ChecksumError`.
    """
    root = Path(root) if root is not None else data_root()
    dest = root / entry.target
    if dest.exists() and not dest.is_file():
        raise DownloadError(f"{dest} exists but is not a regular file (a directory?); remove it first")
    if dest.is_file():
        actual = sha256_file(dest)
        if actual == entry.sha256:
            return dest, False
        if not force:
            raise DownloadError(
                f"{dest} exists but its sha256 is {actual}, not the registered {entry.sha256}; "
                "delete it or pass --force to replace it"
            )
    url = source_url(entry, mirror)
    created = [d for d in (dest.parent, *dest.parent.parents) if not d.exists()]  # deepest first
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    ok = False
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _stream(url, out, entry, dest, timeout=timeout, progress=progress)
        if digest != entry.sha256:
            raise ChecksumError(
                f"sha256 mismatch for {url}: expected {entry.sha256}, got {digest}; "
                f"the download was discarded and {dest} was not written"
            )
        os.replace(tmp, dest)  # atomic on one file system: readers never see a partial file
        ok = True
    finally:
        tmp.unlink(missing_ok=True)
        if not ok:  # no empty folders left behind (they would look like data that is there)
            for d in created:
                try:
                    d.rmdir()
                except OSError:  # not empty: another file arrived there
                    break
    return dest, True


def _stream(url: str, out, entry: RemoteFile, dest: Path, *, timeout: float, progress: bool) -> str:
    """Copy ``url`` into the open file ``out`` and return the sha256 of the bytes."""
    from tqdm.auto import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": "glm-lightning-data"})
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or entry.size)
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=entry.target, disable=not progress or None
            ) as bar:
                while chunk := response.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as err:
        raise DownloadError(f"HTTP {err.code} ({err.reason}) from {url}. {_by_hand(entry, dest)}") from err
    except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as err:
        # refused, DNS failure, timeout, reset, truncated response; disk errors propagate as they are
        reason = getattr(err, "reason", err)
        raise DownloadError(
            f"could not reach {url} ({reason}) -- is this machine offline? {_by_hand(entry, dest)}"
        ) from err
    return h.hexdigest()


def download(
    names: Iterable[str],
    root: str | os.PathLike[str] | None = None,
    *,
    mirror: str | None = None,
    force: bool = False,
    timeout: float = 60.0,
    progress: bool = True,
    registry: dict[str, tuple[RemoteFile, ...]] | None = None,
) -> list[Path]:
    """Fetch every file of ``names``; try them all, then raise one error listing every failure."""
    root = Path(root) if root is not None else data_root()
    paths: list[Path] = []
    failures: list[str] = []
    for entry in resolve(names, registry):
        try:
            path, fetched = fetch(entry, root, mirror=mirror, force=force, timeout=timeout, progress=progress)
        except DownloadError as err:
            failures.append(f"- {entry.target}: {err}")
            continue
        paths.append(path)
        if progress:
            print(f"{'downloaded' if fetched else 'present   '} {path}")
    if failures:
        raise DownloadError(
            f"{len(failures)} file(s) failed:\n"
            + "\n".join(failures)
            + f"\n{len(failures)} file(s) missing under {root}: place them as listed above, or point "
            "GLM_DATA_ROOT at a folder that has them (`python -m glm.data list` shows the layout)."
        )
    return paths


def listing(
    root: str | os.PathLike[str] | None = None,
    verify: bool = False,
    registry: dict[str, tuple[RemoteFile, ...]] | None = None,
) -> str:
    """The registry as text: one line per file with its status under ``root``."""
    root = Path(root) if root is not None else data_root()
    registry = REGISTRY if registry is None else registry
    lines = [f"data root: {root}"]
    for name, files in registry.items():
        group = next((g for g, members in GROUPS.items() if g != "all" and name in members), None)
        lines.append(f"{name}" + (f"  (group {group})" if group else ""))
        for f in files:
            lines.append(f"  {file_status(f, root, verify):<12} {f.target}  ({f.size:,} bytes)")
    return "\n".join(lines)
