"""Data root resolution and the sha256-pinned downloader, against a local HTTP server (never the network)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import re
import socket
import threading
from pathlib import Path

import pytest

from glm.data import __main__ as cli
from glm.data import download as dl
from glm.data import sources
from glm.data.paths import data_root, need_shared_data, require_data
from glm.data.sources import RemoteFile
from glm.errors import ChecksumError, DownloadError


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def server(tmp_path):
    """Serve a folder of generated files on 127.0.0.1; yields (base_url, folder)."""
    folder = tmp_path / "served"
    folder.mkdir()
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=folder)
    )
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", folder
    httpd.shutdown()
    httpd.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on exit: connections are refused


def _publish(folder: Path, rel: str, data: bytes) -> tuple[int, str]:
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return len(data), hashlib.sha256(data).hexdigest()


def _toy_registry(base: str, folder: Path) -> dict[str, tuple[RemoteFile, ...]]:
    a = b"line one\r\nline two\r\n" * 1000
    b = bytes(range(256)) * 5000  # 1.28 MB: more than one read chunk
    files = []
    for rel, data in (("toy/a.txt", a), ("toy/sub/b.bin", b)):
        size, sha = _publish(folder, rel, data)
        files.append(RemoteFile(rel, f"{base}/{rel}", size, sha))
    return {"toy": tuple(files)}


def _leftovers(root: Path) -> list[str]:
    return [p.name for p in root.rglob("*") if p.name.endswith(".part")]


# ---------------------------------------------------------------------------------------------
# download
# ---------------------------------------------------------------------------------------------
def test_download_success_verifies_and_is_idempotent(server, tmp_path):
    base, folder = server
    reg = _toy_registry(base, folder)
    root = tmp_path / "root"
    paths = dl.download(["toy"], root, registry=reg, progress=False)
    assert [p.relative_to(root).as_posix() for p in paths] == ["toy/a.txt", "toy/sub/b.bin"]
    for f in reg["toy"]:
        assert (root / f.target).read_bytes() == (folder / f.target).read_bytes()
    assert _leftovers(root) == []
    mtime = (root / "toy/a.txt").stat().st_mtime_ns
    path, fetched = dl.fetch(reg["toy"][0], root, progress=False)
    assert not fetched and path.stat().st_mtime_ns == mtime  # present and correct: not fetched again
    assert dl.file_status(reg["toy"][1], root, verify=True) == "ok"


def test_sha_mismatch_discards_the_download(server, tmp_path):
    base, folder = server
    good = _toy_registry(base, folder)["toy"][0]
    wrong = "0" * 64
    root = tmp_path / "root"
    with pytest.raises(ChecksumError) as err:
        dl.fetch(RemoteFile(good.target, good.url, good.size, wrong), root, progress=False)
    msg = str(err.value)
    assert f"expected {wrong}, got {good.sha256}" in msg and good.url in msg
    assert not (root / good.target).exists() and _leftovers(root) == []


def test_existing_file_with_other_content_needs_force(server, tmp_path):
    base, folder = server
    entry = _toy_registry(base, folder)["toy"][0]
    root = tmp_path / "root"
    (root / "toy").mkdir(parents=True)
    (root / entry.target).write_bytes(b"stale")
    with pytest.raises(DownloadError, match="pass --force"):
        dl.fetch(entry, root, progress=False)
    assert (root / entry.target).read_bytes() == b"stale"
    assert dl.file_status(entry, root) == "wrong size"
    _, fetched = dl.fetch(entry, root, force=True, progress=False)
    assert fetched and dl.sha256_file(root / entry.target) == entry.sha256


def test_offline_message_names_url_and_where_to_put_the_file(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/toy/a.txt"
    entry = RemoteFile("toy/a.txt", url, 12, "ab" * 32)
    root = tmp_path / "root"
    with pytest.raises(DownloadError) as err:
        dl.fetch(entry, root, timeout=5, progress=False)
    msg = str(err.value)
    assert f"could not reach {url}" in msg and "offline" in msg
    assert f"place it at {root / 'toy' / 'a.txt'}" in msg and "ab" * 32 in msg
    assert not (root / entry.target).exists() and _leftovers(root) == []
    assert not (root / "toy").exists()  # no empty folder that looks like data


def test_http_error_and_all_failures_reported_together(server, tmp_path):
    base, folder = server
    reg = _toy_registry(base, folder)
    missing = RemoteFile("toy/gone.txt", f"{base}/toy/gone.txt", 1, "cd" * 32)
    reg = {"toy": (*reg["toy"], missing)}
    root = tmp_path / "root"
    with pytest.raises(DownloadError) as err:
        dl.download(["toy"], root, registry=reg, progress=False)
    msg = str(err.value)
    assert msg.startswith("1 file(s) failed") and f"HTTP 404 (File not found) from {missing.url}" in msg
    assert msg.splitlines()[-1].startswith(f"1 file(s) missing under {root}") and "GLM_DATA_ROOT" in msg
    assert (root / "toy/a.txt").is_file() and (root / "toy/sub/b.bin").is_file()  # the others still came


def test_mirror_replaces_the_registered_host(server, tmp_path, monkeypatch):
    base, folder = server
    reg = _toy_registry(base, folder)
    dead = f"http://127.0.0.1:{_closed_port()}"
    unreachable = {
        "toy": tuple(RemoteFile(f.target, f"{dead}/{f.target}", f.size, f.sha256) for f in reg["toy"])
    }
    root = tmp_path / "root"
    dl.download(["toy"], root, registry=unreachable, mirror=base + "/", progress=False)
    assert dl.sha256_file(root / "toy/sub/b.bin") == reg["toy"][1].sha256
    monkeypatch.setenv(dl.MIRROR_ENV, base)
    assert dl.source_url(unreachable["toy"][0]) == f"{base}/toy/a.txt"


def test_cli_download_list_and_errors(server, tmp_path, monkeypatch, capsys):
    base, folder = server
    monkeypatch.setattr(dl, "REGISTRY", _toy_registry(base, folder))
    root = tmp_path / "root"
    assert cli.main(["list", "--root", str(root)]) == 0
    assert re.search(r"missing\s+toy/a\.txt", capsys.readouterr().out)
    assert cli.main(["download", "toy", "--root", str(root)]) == 0
    assert cli.main(["list", "--root", str(root), "--verify"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"ok\s+toy/a\.txt", out) and re.search(r"ok\s+toy/sub/b\.bin", out)
    assert cli.main(["download", "nonsense", "--root", str(root)]) == 1
    assert "unknown dataset 'nonsense'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# the real registry
# ---------------------------------------------------------------------------------------------
def test_registry_groups_and_names():
    assert len(dl.resolve(["all"])) == 42
    superglue = dl.resolve(["superglue"])
    assert len(superglue) == 24 and all(f.target.startswith("superglue/") for f in superglue)
    assert len(dl.resolve(["superglue", "BoolQ", "boolq"])) == 24  # case-insensitive, no duplicates
    assert {f.target for f in dl.resolve(["tokenizers"])} == {
        "tokenizers/bert-base-uncased/vocab.txt",
        "tokenizers/gpt2/vocab.json",
        "tokenizers/gpt2/merges.txt",
        "tokenizers/albert-base-v2/spiece.model",
    }
    assert (
        sources.dataset_for("lambada/lambada_test.jsonl") == "lambada"
        and sources.dataset_for("nope.txt") is None
    )
    # a folder names the one data set under it, so a missing-folder message says what to download
    assert sources.dataset_for("tokenizers/gpt2") == "gpt2" and sources.dataset_for("tokenizers") is None
    for f in dl.resolve(["all"]):  # every file pinned to a commit of its source repository
        assert re.fullmatch(r"https://raw\.githubusercontent\.com/[^/]+/[^/]+/[0-9a-f]{40}/\S+", f.url), f.url
        assert re.fullmatch(r"[0-9a-f]{64}", f.sha256)


def test_registry_matches_the_shared_data_files():
    """Sizes and sha256 in the registry equal those of the real files (SOURCES.md's copies)."""
    for f in dl.resolve(["all"]):
        path = need_shared_data(f.target)
        assert path.stat().st_size == f.size, f.target
        assert dl.sha256_file(path) == f.sha256, f.target


# ---------------------------------------------------------------------------------------------
# data root
# ---------------------------------------------------------------------------------------------
def test_data_root_env_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv("GLM_DATA_ROOT", str(tmp_path))
    assert data_root() == tmp_path
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GLM_DATA_ROOT", "rel")
    assert data_root() == tmp_path / "rel"
    monkeypatch.delenv("GLM_DATA_ROOT")
    checkout = Path(__file__).resolve().parents[2]  # tests run from the source checkout
    assert data_root() == checkout / "data"


def test_require_data_message_says_what_where_and_how(monkeypatch, tmp_path):
    monkeypatch.setenv("GLM_DATA_ROOT", str(tmp_path))
    (tmp_path / "x.txt").write_text("x")
    assert require_data("x.txt") == tmp_path / "x.txt"
    with pytest.raises(FileNotFoundError) as err:
        require_data("gutenberg/11-0.txt", "Alice")
    msg = str(err.value)
    assert "Alice (gutenberg/11-0.txt)" in msg and str(tmp_path) in msg
    assert "python -m glm.data download gutenberg" in msg and "GLM_DATA_ROOT" in msg
    with pytest.raises(FileNotFoundError, match="by hand"):
        require_data("not/registered.bin")


def test_need_shared_data_fails_in_ci_and_skips_elsewhere(monkeypatch, tmp_path):
    monkeypatch.setenv("GLM_DATA_ROOT", str(tmp_path))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true and shared data is missing"):
        need_shared_data("lambada/lambada_test.jsonl")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="missing data file"):
        need_shared_data("lambada/lambada_test.jsonl")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        need_shared_data("lambada/lambada_test.jsonl")
    assert os.environ["GLM_DATA_ROOT"] == str(tmp_path)
