"""What every datamodule shares: the tokenizer from its config, the batch sizes, ``pack``, the seed, and the
training and evaluation loaders. The per-task modules (pretrain, cloze, seq2seq, lm_eval) only read and
collate.

The tokenizer config (``data.tokenizer``, one schema for every datamodule; :func:`resolve_tokenizer`):

- a path (str or ``os.PathLike``): a saved tokenizer dir (its ``tokenizer.json``) or a sentencepiece
  ``.model`` file, loaded with :func:`glm.tokenizer.load_tokenizer`;
- a mapping with ``path`` set: with ``kind`` (``sentencepiece | bert | gpt2 | roberta | glm_chinese``) the
  vocabulary file(s) of that family, plus its options (``task_mask``, ``decoder_mask``, ``lowercase``,
  ``fix_command_token``, ``model_file``, ``vocab_file``, ``merges_file``); without ``kind`` a saved dir or
  ``.model`` file as above. ``train`` and ``cache_dir`` are ignored when ``path`` is set, so that
  ``data.tokenizer.path=DIR`` on the command line overrides a trained default;
- a mapping with ``path`` null or absent and ``train: {vocab_size, model_type, max_bytes, ...}`` plus
  ``cache_dir``: a sentencepiece tokenizer trained once on the datamodule's training files (pretraining
  only) and cached under ``cache_dir/<model_type><vocab_size>-<settings hash>``;
- a tokenizer object (anything with ``encode``): used as is (tests, notebooks).

Every other form is a :class:`glm.errors.ConfigError` naming the key. The configs take the common ones from
the ``conf/tokenizer/`` group (``bert_uncased``, ``gpt2``, ``corpus_sentencepiece``): a data config lists
``/tokenizer@tokenizer: NAME`` in its defaults, and ``tokenizer@data.tokenizer=NAME`` picks another one on
the command line.

The seed (``data.seed``, ``${seed}`` in the configs) orders the training data: each epoch's permutation
comes from it (:class:`glm.data.sampling.EpochIndexSampler`), never from the process environment.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset, Sampler

from glm.data.packing import checked_pack_flag
from glm.data.sampling import ResumableDataLoader, eval_sampler, resumable_train_loader
from glm.errors import ConfigError, UserError
from glm.tokenizer import GLMTokenizer, ensure_tokenizer, load_tokenizer
from glm.tokenizer.training import check_training_settings

log = logging.getLogger(__name__)

__all__ = [
    "LOADER_OPTIONS",
    "TOKENIZER_KEYS",
    "TRAIN_KEYS",
    "GLMDataModule",
    "check_tokenizer_spec",
    "resolve_tokenizer",
]

# options of load_tokenizer's {kind, path} form (glm.tokenizer.loading)
LOADER_OPTIONS = (
    "task_mask",
    "decoder_mask",
    "lowercase",
    "fix_command_token",
    "model_file",
    "vocab_file",
    "merges_file",
)
TOKENIZER_KEYS = ("kind", "path", *LOADER_OPTIONS, "train", "cache_dir")
# settings of data.tokenizer.train (glm.tokenizer.training.train_sentencepiece's arguments)
TRAIN_KEYS = ("vocab_size", "model_type", "max_bytes", "num_threads", "character_coverage")
_TRAIN_DEFAULTS = {"vocab_size": 8000, "model_type": "bpe", "max_bytes": 200_000_000}


def check_tokenizer_spec(spec: Any, key: str = "data.tokenizer") -> None:
    """Refuse, naming the key, a ``train`` spec that no corpus can train with (unknown setting, vocab_size
    below the minimum, unknown model_type, bad max_bytes): cheap, no file read, so it can run at start-up.
    Specs with ``path`` set (``train`` is ignored then) and other forms pass."""
    if not (isinstance(spec, Mapping) or (hasattr(spec, "keys") and hasattr(spec, "get"))) or spec.get(
        "path"
    ):
        return
    train = spec.get("train")
    if not train:
        return
    if not (isinstance(train, Mapping) or hasattr(train, "keys")):
        raise ConfigError(f"{key}.train: expected a mapping of training settings, got {train!r}")
    unknown = sorted(set(train) - set(TRAIN_KEYS))
    if unknown:
        raise ConfigError(f"{key}.train: unknown key(s) {unknown}; allowed: {', '.join(TRAIN_KEYS)}")
    values = {**_TRAIN_DEFAULTS, **dict(train)}
    check_training_settings(values["vocab_size"], values["model_type"], values["max_bytes"], _train_keys(key))


def _train_keys(key: str) -> dict[str, str]:
    """The config keys the training errors name."""
    return {
        "files": "data.files",
        "cache_dir": f"{key}.cache_dir",
        **{name: f"{key}.train.{name}" for name in ("vocab_size", "model_type", "max_bytes")},
    }


def _load(spec: Any, key: str) -> Any:
    """:func:`load_tokenizer`, its errors prefixed with the config key the path came from."""
    try:
        return load_tokenizer(spec)
    except UserError as err:
        raise type(err)(f"{key}: {err}") from err


def resolve_tokenizer(
    spec: Any,
    train_files: Callable[[], Sequence[Path]] | None = None,
    key: str = "data.tokenizer",
    text_field: str = "text",
) -> Any:
    """The tokenizer named by ``spec`` (the schema of the module docstring). ``train_files`` gives the files
    a ``train`` spec trains on, called only for such a spec (None: the caller cannot train one), with their
    text in ``text_field`` for ``.jsonl`` files; ``key`` names the config key in errors."""
    if isinstance(spec, (str, os.PathLike)):
        return _load(spec, key)
    if isinstance(spec, Mapping) or (hasattr(spec, "keys") and hasattr(spec, "get")):  # dict / DictConfig
        return _from_mapping(dict(spec), train_files, key, text_field)
    if isinstance(spec, GLMTokenizer) or hasattr(spec, "encode"):
        return spec
    raise ConfigError(
        f"{key}: expected a tokenizer path or a mapping with `path` (and `kind`) or `train` + `cache_dir`, "
        f"got {spec!r}"
    )


def _from_mapping(
    spec: dict[str, Any], train_files: Callable[[], Sequence[Path]] | None, key: str, text_field: str = "text"
) -> Any:
    unknown = sorted(set(spec) - set(TOKENIZER_KEYS))
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {unknown}; allowed: {', '.join(TOKENIZER_KEYS)}")
    if spec.get("path"):
        options = {k: spec[k] for k in LOADER_OPTIONS if k in spec}
        if spec.get("kind"):
            return _load({"kind": spec["kind"], "path": spec["path"], **options}, f"{key}.path")
        if options:
            raise ConfigError(
                f"{key}.{sorted(options)[0]}: a loader option needs {key}.kind (the vocabulary family); "
                f"without it {key}.path must be a saved tokenizer dir or a .model file"
            )
        return _load(spec["path"], f"{key}.path")
    if spec.get("kind"):
        raise ConfigError(f"{key}.path: missing (the vocabulary file or dir of the {spec['kind']} tokenizer)")
    train = dict(spec.get("train") or {})
    if not train or not spec.get("cache_dir"):
        missing = "cache_dir" if train else "path"
        raise ConfigError(
            f"{key}.{missing}: give `path` (an existing tokenizer) or `train` + `cache_dir` (train one)"
        )
    if train_files is None:
        raise ConfigError(
            f"{key}.train: only pretraining data trains a tokenizer (on data.files); give {key}.path"
        )
    check_tokenizer_spec(spec, key)  # before the training files are even listed
    return _trained_tokenizer(train, Path(spec["cache_dir"]), train_files(), key, text_field)


def _trained_tokenizer(
    train: dict[str, Any],
    cache_dir: Path,
    files: Sequence[Path],
    key: str = "data.tokenizer",
    text_field: str = "text",
) -> Any:
    """A sentencepiece tokenizer trained on ``files`` once, cached under a name hashed from the settings
    (so other settings never meet the same dir)."""
    train = dict(train)
    if any(Path(p).suffix.lower() == ".jsonl" for p in files):  # what the jsonl records hold their text in
        train["text_field"] = text_field
    settings = json.dumps({"files": [str(p) for p in files], **train}, sort_keys=True)
    digest = hashlib.sha256(settings.encode()).hexdigest()[:12]
    out_dir = cache_dir / f"{train.get('model_type', 'bpe')}{train.get('vocab_size', 8000)}-{digest}"
    if not out_dir.is_dir():
        log.info("training a sentencepiece tokenizer on %d file(s) into %s (cached)", len(files), out_dir)
    # quiet: sentencepiece logs ~350 lines; keys: errors name data.files and data.tokenizer.train.*
    return ensure_tokenizer(out_dir, files, **{"quiet": True, **train, "keys": _train_keys(key)})


class GLMDataModule(L.LightningDataModule):
    """The shared part of the datamodules (see the module docstring).

    ``micro_batch_size`` is the per-device training batch; ``global_batch_size`` (default: the micro batch)
    must be a multiple of it (the pipeline derives gradient accumulation from the two);
    ``eval_batch_size`` defaults to the micro batch. ``pack`` is the ``data.pack`` switch, ``seed`` the run
    seed the training order follows. The tokenizer is resolved on first use (:attr:`tokenizer`).
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        micro_batch_size: int,
        global_batch_size: int | None = None,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pack: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        global_batch_size = global_batch_size or micro_batch_size
        if micro_batch_size < 1 or global_batch_size % micro_batch_size:
            raise ConfigError(
                f"data.global_batch_size ({global_batch_size}) must be a positive multiple of "
                f"data.micro_batch_size ({micro_batch_size})"
            )
        self.tokenizer_spec = tokenizer
        self._tokenizer: Any = None
        self.micro_batch_size = micro_batch_size
        self.global_batch_size = global_batch_size
        self.eval_batch_size = eval_batch_size or micro_batch_size
        self.num_workers = num_workers
        self.pack = checked_pack_flag(pack)
        self.seed = int(seed)

    # datamodules that can train their tokenizer (pretraining) set this and give tokenizer_train_files
    trains_tokenizer = False

    def tokenizer_train_files(self) -> Sequence[Path]:
        """The files a ``train`` tokenizer spec trains on (only with ``trains_tokenizer``)."""
        raise NotImplementedError

    tokenizer_text_field = "text"  # the field of those files' .jsonl records that holds the text

    @property
    def tokenizer(self) -> Any:
        """The tokenizer of ``data.tokenizer``, resolved (loaded or trained) on first use."""
        if self._tokenizer is None:
            files = self.tokenizer_train_files if self.trains_tokenizer else None
            self._tokenizer = resolve_tokenizer(
                self.tokenizer_spec, files, text_field=self.tokenizer_text_field
            )
        return self._tokenizer

    def train_loader(
        self,
        dataset: Dataset,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        *,
        epoch_offset: bool = False,
        tail: str = "pad",
        drop_last: bool = False,
    ) -> ResumableDataLoader:
        """This rank's share of each epoch's shuffle of ``dataset`` in micro batches, resumable mid-epoch
        (:func:`glm.data.sampling.resumable_train_loader`; the defaults are the finetuning ones)."""
        return resumable_train_loader(
            dataset,
            self,
            self.micro_batch_size,
            collate_fn,
            self.num_workers,
            seed=self.seed,
            epoch_offset=epoch_offset,
            tail=tail,
            drop_last=drop_last,
        )

    def eval_loader(
        self,
        dataset: Dataset,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        sampler: Sampler[int] | None = None,
    ) -> DataLoader:
        """An evaluation split in order, in eval batches; with several processes each rank gets its share
        (``sampler``, by default :func:`glm.data.sampling.eval_sampler`: padded with repeats that the task
        modules drop by ``example_index``)."""
        if sampler is None:
            sampler = eval_sampler(dataset, getattr(self, "trainer", None))  # type: ignore[arg-type]
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            shuffle=False,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_fn,
            drop_last=False,
        )
