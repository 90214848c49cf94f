"""Safe checkpoint I/O and the export-directory contract.

Writing: every file goes to a temporary file in the target's own directory, is flushed and fsync'ed,
then moved over the target with `os.replace` (atomic on POSIX), so a crash never leaves a half-written
file at the target path; only a stray `.<name>.*.tmp` that the next successful write does not touch.
Each torch file gets a `<file>.sha256` sidecar with the sha256 of its bytes (`glm.utils.fs`). Training
checkpoints take the same path through :class:`AtomicCheckpointIO`, the Lightning plugin every run uses.

Reading: `torch.load(..., weights_only=True)` always (pickles that execute code are refused), with
`mmap=True` for zip-format files so a large checkpoint is paged in lazily instead of read into RAM.
A file whose bytes no longer match its sidecar is refused, naming both digests. Every failure becomes a
`CheckpointError` that names the file and says what is wrong with it.

Export directory (what `export_model` writes and `load_export` reads):

    DIR/model.pt             plain state dict {name: tensor} with the backbone's parameter names (docs/original-glm.md §12.1)
    DIR/model_config.yaml    the GLMConfig fields
    DIR/tokenizer/           `tok.save(DIR/tokenizer)` (optional)
    DIR/run_config.yaml      the resolved run config (optional)

Loading weights from any source into a model (`task.pretrained=PATH`) is `glm.checkpoint.pretrained`.
"""

from __future__ import annotations

import logging
import pickle
import re
import shutil
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import Tensor, nn

from glm.errors import CheckpointError, CheckpointWriteError
from glm.model import GLM, GLMConfig
from glm.tokenizer import load_tokenizer as load_tokenizer_dir
from glm.utils.fs import (
    DIGEST_SUFFIX,
    MANIFEST_FILE,
    atomic_write,
    check_digest,
    check_manifest,
    digest_path,
    remove_with_digest,
)
from glm.utils.inputs import read_text

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
CONFIG_FILE = "model_config.yaml"
TOKENIZER_DIR = "tokenizer"
RUN_CONFIG_FILE = "run_config.yaml"

# The key every GLM backbone state dict has; used to find where the backbone sits in a larger dict.
ANCHOR_KEY = "word_embeddings.weight"
POSITION_TABLES = ("transformer.position_embeddings.weight", "transformer.block_position_embeddings.weight")


def atomic_save(obj: Any, path: str | Path) -> Path:
    """`torch.save(obj)` to `path` atomically (zip format, so it can be loaded with `mmap=True`), with the
    sha256 of the bytes in `<path>.sha256`. A failed write (ENOSPC, EIO) is a `CheckpointError` naming the
    file, its size and the free space; `path` keeps its previous content."""
    path = Path(path)
    try:
        return atomic_write(path, lambda f: torch.save(obj, f), digest=True)
    except OSError as err:
        raise CheckpointWriteError(_write_failure(path, obj, err)) from None


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _write_failure(path: Path, obj: Any, err: OSError) -> str:
    what = "checkpoint"
    if isinstance(obj, Mapping) and "global_step" in obj:
        what = f"training checkpoint (global step {obj['global_step']})"
    try:
        free = f", {_size(shutil.disk_usage(path.parent).free)} free there"
    except OSError:
        free = ""
    kept = "the previous file is unchanged" if path.exists() else "nothing was written"
    return (
        f"{path}: could not write the {what}: {err.strerror or err}; it needs about "
        f"{_size(_tensor_bytes(obj))}{free}; {kept}"
    )


# --------------------------------------------------------------------------------------------------
# Safe loading
# --------------------------------------------------------------------------------------------------
def safe_load(
    path: str | Path,
    map_location: str | torch.device | None = "cpu",
    *,
    mmap: bool = True,
    safe_globals: Iterable[Any] = (),
    trust: bool = False,
    expect_digest: bool = False,
) -> Any:
    """`torch.load` with `weights_only=True` (and `mmap` for zip files); clear errors naming the file.

    `safe_globals` allow-lists extra harmless types (e.g. numpy arrays in RNG states of original
    checkpoints). `trust=True` turns `weights_only` off: only for files from a source you trust. The bytes
    are checked against `<path>.sha256` when it exists; `expect_digest`: a file of ours, so a missing
    sidecar is worth one warning (a checkpoint from before digests, or copied without it).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint (an interrupted write?)")
    verify_digest(path, expect_digest)
    # Only zip-format files (torch >= 1.6 default) can be memory-mapped; legacy files load normally.
    is_zip = zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location=map_location, weights_only=not trust, mmap=mmap and is_zip)
    except pickle.UnpicklingError as err:
        if not is_zip and not _looks_like_pickle(path):
            # random bytes also fail as "Weights only load failed"; that message would blame their content
            raise CheckpointError(
                f"{path}: not a torch checkpoint (neither the zip nor the legacy pickle format, {size} bytes)"
            ) from None
        if "Weights only load failed" in str(err):
            try:
                unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            except Exception:  # noqa: BLE001 - only used to improve the message
                unsafe = []
            raise CheckpointError(
                f"{path}: refused by torch.load(weights_only=True): it pickles objects other than tensors "
                f"and plain containers{f' ({unsafe[:6]})' if unsafe else ''}. If you trust the file, load it "
                "with trust=True (CLI: --trust-checkpoint)."
            ) from None
        raise CheckpointError(f"{path}: corrupt checkpoint ({size} bytes): {err}") from None
    except (RuntimeError, OSError, EOFError, KeyError, ValueError, IndexError) as err:
        kind = (
            "truncated or corrupt zip checkpoint"
            if is_zip or _looks_like_partial_zip(path)
            else ("not a torch checkpoint (neither the zip nor the legacy pickle format), or truncated")
        )
        raise CheckpointError(f"{path}: {kind} ({size} bytes): {type(err).__name__}: {err}") from None


_warned_unverified: set[str] = set()


def verify_digest(path: Path, expect_digest: bool = True) -> None:
    """Refuse `path` when its bytes differ from its `.sha256` sidecar (naming both digests); without a
    sidecar, warn once per file when `expect_digest`."""
    status, actual, recorded = check_digest(path)
    if status == "mismatch":
        raise CheckpointError(
            f"{path}: corrupt: the file's sha256 is {actual} but {digest_path(path).name} recorded "
            f"{recorded[0]} when it was written (changed on disk or in a copy since); use another "
            "checkpoint (or restore this one) rather than train from damaged state"
        )
    if status == "missing" and expect_digest and str(path) not in _warned_unverified:
        _warned_unverified.add(str(path))
        log.warning(
            "%s: no %s sidecar (written before digests, or copied without it): loaded unverified",
            path,
            DIGEST_SUFFIX,
        )


def verify_manifest(directory: Path) -> None:
    """Refuse a sharded checkpoint dir whose files differ from its ``SHA256SUMS`` (naming the first and
    counting the rest); without a manifest, warn once."""
    status, problems = check_manifest(directory)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"{directory}: corrupt sharded checkpoint: {problems[0]}{more}")
    if status == "missing" and str(directory) not in _warned_unverified:
        _warned_unverified.add(str(directory))
        log.warning("%s: no %s (written before digests): loaded unverified", directory, MANIFEST_FILE)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with a guarantee that holds on every local filesystem: every checkpoint
    (`last`, periodic, best-k, FSDP full-state files) is written to a temp file in its own directory,
    fsync'ed and renamed over the target, with its sha256 in `<file>.sha256`, and checked on load.

    Lightning's default goes through fsspec, which writes the temp file under `$TMPDIR` and moves it: across
    filesystems (a run dir on a shared filesystem) that move truncates the target and copies, so a kill or a
    full disk during it destroys the previous `last.ckpt`. Remote URLs (`s3://...`) keep Lightning's path.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if _is_url(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options")
        atomic_save(checkpoint, path)

    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable[..., Any] | str | torch.device | None = None,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        if _is_url(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        return safe_load(path, map_location, trust=weights_only is False, expect_digest=True)

    def remove_checkpoint(self, path: Any) -> None:
        if _is_url(path):
            return super().remove_checkpoint(path)
        remove_with_digest(path)


def _is_url(path: Any) -> bool:
    return "://" in str(path)


def _looks_like_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"  # the PROTO opcode every pickle since protocol 2 starts with


def _looks_like_partial_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"  # zip local-file magic without a readable central directory


def as_state_dict(obj: Any, path: Path, what: str = "state dict") -> dict[str, Tensor]:
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"{path}: expected a non-empty {what} (dict of tensors), got {type(obj).__name__}"
        )
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: {what} has non-tensor entries, e.g. {bad[:5]}")
    return dict(obj)


# --------------------------------------------------------------------------------------------------
# Export directory
# --------------------------------------------------------------------------------------------------
def expected_shapes(config: GLMConfig) -> dict[str, torch.Size]:
    """Parameter names and shapes of `GLM(config)`, built on the meta device (no memory, no compute)."""
    with torch.device("meta"):
        model = GLM(config)
    return {k: v.shape for k, v in model.state_dict().items()}


def check_state_dict(state_dict: Mapping[str, Tensor], config: GLMConfig, source: str) -> None:
    """Raise a `CheckpointError` unless `state_dict` has exactly the keys and shapes of `GLM(config)`."""
    want = expected_shapes(config)
    missing = sorted(set(want) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(want))
    wrong = [
        f"{k}: {tuple(state_dict[k].shape)} (config wants {tuple(want[k])})"
        for k in sorted(set(want) & set(state_dict))
        if state_dict[k].shape != want[k]
    ]
    problems = [
        f"missing keys {missing[:6]}{' ...' if len(missing) > 6 else ''}" if missing else "",
        f"unexpected keys {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}" if unexpected else "",
        f"wrong shapes: {'; '.join(wrong[:6])}" if wrong else "",
    ]
    problems = [p for p in problems if p]
    if problems:
        raise CheckpointError(
            f"{source}: weights do not match GLMConfig '{config.name}': " + " | ".join(problems)
        )


def _plain_state_dict(model_or_state_dict: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    if isinstance(model_or_state_dict, nn.Module):
        sd = model_or_state_dict.state_dict()
    else:
        sd = dict(model_or_state_dict)
    for k in sd:
        if "_orig_mod." in k:
            raise CheckpointError(
                f"state dict key {k!r} has a torch.compile '_orig_mod.' prefix; "
                "export the uncompiled module (compile blocks in place instead)"
            )
    # detach + cpu: no autograd history or device tensors in files; contiguous so views of a fused
    # tensor are not saved with their whole storage.
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def export_model(
    model_or_state_dict: nn.Module | Mapping[str, Tensor],
    config: GLMConfig,
    out_dir: str | Path,
    tokenizer: Any = None,
    run_config: Any = None,
) -> Path:
    """Write the export directory (see module docstring); the weights are checked against `config`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sd = _plain_state_dict(model_or_state_dict)
    check_state_dict(sd, config, source=f"export to {out_dir}")
    atomic_save(sd, out_dir / MODEL_FILE)
    import yaml  # comes with omegaconf

    atomic_write(out_dir / CONFIG_FILE, yaml.safe_dump(config.to_dict(), sort_keys=False))
    if tokenizer is not None:
        tokenizer.save(out_dir / TOKENIZER_DIR)
    if run_config is not None:
        atomic_write(out_dir / RUN_CONFIG_FILE, _run_config_yaml(run_config))
    return out_dir


def _run_config_yaml(run_config: Any) -> str:
    from omegaconf import OmegaConf

    if OmegaConf.is_config(run_config):
        return OmegaConf.to_yaml(run_config, resolve=True)
    return OmegaConf.to_yaml(OmegaConf.create(run_config))


def read_model_config(path: str | Path) -> GLMConfig:
    """An export's `model_config.yaml` as a `GLMConfig`; a bad file is a `CheckpointError` naming the file,
    the line and the field. Fields left out take GLMConfig's defaults (or the `preset`'s), with a warning."""
    import dataclasses

    import yaml  # comes with omegaconf

    path = Path(path)
    try:
        text = read_text(path, "model config")
    except (OSError, ValueError) as err:
        raise CheckpointError(str(err)) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise CheckpointError(f"{where}: not valid YAML ({getattr(err, 'problem', None) or err})") from None
    if values is None:
        raise CheckpointError(f"{path}: empty file; expected the GLMConfig fields ({CONFIG_FILE})")
    if not isinstance(values, dict):
        got = type(values).__name__
        raise CheckpointError(f"{path}:1: expected a mapping of GLMConfig fields, got {got}")
    lines: dict[str, int] = {}
    for key, _ in node.value if isinstance(node, yaml.MappingNode) else []:
        if str(key.value) in lines:  # YAML keeps the last silently
            line = key.start_mark.line + 1
            raise CheckpointError(f"{path}:{line}: field {key.value!r} repeats line {lines[str(key.value)]}")
        lines[str(key.value)] = key.start_mark.line + 1
    known = set(GLMConfig.field_names())
    unknown = [k for k in values if k not in known and k != "preset"]
    if unknown:
        line = lines.get(str(unknown[0]), 1)
        raise CheckpointError(f"{path}:{line}: unknown field {unknown[0]!r}; known: {sorted(known)}")
    try:
        config = GLMConfig.from_dict(values)
    except (TypeError, ValueError) as err:
        msg = str(err)
        # GLMConfig's checks name the field; place the message at that field's line
        hits = [(msg.find(k), k) for k in map(str, values) if re.search(rf"\b{re.escape(k)}\b", msg)]
        field_name = min(hits)[1] if hits else None
        where = f"{path}:{lines[field_name]}" if field_name in lines else str(path)
        located = f"{where}: field {field_name!r}: {msg}" if field_name else f"{where}: {msg}"
        raise CheckpointError(located) from None
    missing = sorted({f.name for f in dataclasses.fields(GLMConfig)} - set(values))
    if missing and "preset" not in values:
        log.warning("%s: fields %s missing; using GLMConfig defaults for them", path, missing)
    return config


def is_export_dir(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / MODEL_FILE).is_file() and (path / CONFIG_FILE).is_file()


def load_export(
    directory: str | Path, map_location: str | torch.device | None = "cpu", *, load_tokenizer: bool = True
) -> tuple[GLMConfig, dict[str, Tensor], Any]:
    """Read an export directory: `(GLMConfig, state_dict, tokenizer or None)`; weights checked vs config."""
    directory = Path(directory)
    for name in (MODEL_FILE, CONFIG_FILE):
        if not (directory / name).is_file():
            raise CheckpointError(
                f"{directory}: not an export directory (no {name}); expected "
                f"{MODEL_FILE} + {CONFIG_FILE} [+ {TOKENIZER_DIR}/, {RUN_CONFIG_FILE}]"
            )
    config = read_model_config(directory / CONFIG_FILE)
    model_file = directory / MODEL_FILE
    sd = as_state_dict(safe_load(model_file, map_location, expect_digest=True), model_file)
    check_state_dict(sd, config, source=str(directory / MODEL_FILE))
    tokenizer = None
    if load_tokenizer and (directory / TOKENIZER_DIR).exists():
        tokenizer = load_tokenizer_dir(directory / TOKENIZER_DIR)
    return config, sd, tokenizer


def backbone_prefix(keys: Iterable[str], source: str) -> str:
    """The prefix under which a GLM backbone's keys sit (e.g. '' / 'model.' / 'glm.' / 'module.model.')."""
    prefixes = sorted(k[: -len(ANCHOR_KEY)] for k in keys if k.endswith(ANCHOR_KEY))
    if not prefixes:
        raise CheckpointError(f"{source}: no GLM backbone found (no key ending in {ANCHOR_KEY!r})")
    if len(prefixes) > 1:
        raise CheckpointError(f"{source}: several GLM backbones found, under prefixes {prefixes}")
    return prefixes[0]


_BACKBONE_RE = re.compile(
    r"^(word_embeddings\.weight|transformer\.(position_embeddings|block_position_embeddings)\.weight"
    r"|transformer\.final_layernorm\.(weight|bias)|transformer\.layers\.\d+\..+)$"
)


def is_backbone_key(name: str) -> bool:
    """Whether `name` (without prefix) is a parameter of the GLM backbone (docs/original-glm.md §12.1 names)."""
    return bool(_BACKBONE_RE.match(name))


__all__ = [
    "AtomicCheckpointIO",
    "CONFIG_FILE",
    "MODEL_FILE",
    "RUN_CONFIG_FILE",
    "TOKENIZER_DIR",
    "atomic_save",
    "check_state_dict",
    "expected_shapes",
    "export_model",
    "is_backbone_key",
    "is_export_dir",
    "load_export",
    "read_model_config",
    "safe_load",
    "verify_digest",
    "verify_manifest",
]
