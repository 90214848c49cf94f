"""The download registry: what `sources.toml` beside this file lists, as `RemoteFile` records.

Kept apart from the downloader so that the data-root helpers (`glm.data.paths`) can name the download
command for a missing file without importing the download machinery.
"""

from __future__ import annotations

import os
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SOURCES_FILE = Path(__file__).with_name("sources.toml")


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file: ``target`` is relative to the data root (POSIX separators)."""

    target: str
    url: str
    size: int
    sha256: str


def _github_file(target: str, size: int, sha256: str, repo: str, commit: str, path: str) -> RemoteFile:
    url = f"https://raw.githubusercontent.com/{repo}/{commit}/{urllib.parse.quote(path)}"
    return RemoteFile(target=target, url=url, size=size, sha256=sha256)


def _load(path: Path) -> tuple[dict[str, tuple[RemoteFile, ...]], dict[str, tuple[str, ...]]]:
    table = tomllib.loads(path.read_text(encoding="utf-8"))
    groups = {name: tuple(members) for name, members in table.pop("groups", {}).items()}
    registry = {name: tuple(_github_file(**entry) for entry in entries) for name, entries in table.items()}
    groups["all"] = tuple(registry)
    return registry, groups


# Dataset name -> its files; group name -> dataset names.
REGISTRY, GROUPS = _load(SOURCES_FILE)


def dataset_for(relpath: str | os.PathLike[str]) -> str | None:
    """The registry name whose files include ``relpath`` (relative to the data root) or, for a
    folder such as ``tokenizers/gpt2``, lie under it; None if no single data set does."""
    rel = Path(relpath).as_posix().rstrip("/")
    for name, files in REGISTRY.items():
        if any(f.target == rel for f in files):
            return name
    under = {name for name, files in REGISTRY.items() if any(f.target.startswith(rel + "/") for f in files)}
    return under.pop() if len(under) == 1 else None
