"""Loading any tokenizer: a saved dir (its ``tokenizer.json``), a ``.model`` file or a ``{kind, path}`` dict."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from glm.errors import ConfigError, DataFormatError, MissingInputError, UserError
from glm.tokenizer.base import CHINESE_MODEL_FILE, META_FILE, SP_MODEL_FILE, GLMTokenizer, read_meta
from glm.tokenizer.chinese import GLMChineseTokenizer
from glm.tokenizer.huggingface import GPT2Tokenizer, RobertaTokenizer, WordPieceTokenizer
from glm.tokenizer.sentencepiece import SentencePieceTokenizer
from glm.utils.inputs import missing_file_error


def _build(
    kind: str, path: Path, options: dict[str, Any], where: str, error: type[UserError] = ConfigError
) -> GLMTokenizer:
    """A tokenizer of ``kind`` from ``path`` (a dir or the main file); ``where`` names the source and
    ``error`` is the class of its mistakes (a config's, or a ``tokenizer.json`` file's)."""
    flags = {k: options[k] for k in ("task_mask", "decoder_mask", "lowercase") if k in options}
    if kind == "sentencepiece":
        model = path / options.get("model_file", SP_MODEL_FILE) if path.is_dir() else path
        return SentencePieceTokenizer(model)
    if kind == "bert":
        vocab = path / options.get("vocab_file", "vocab.txt") if path.is_dir() else path
        return WordPieceTokenizer(vocab, **flags)
    if kind in ("gpt2", "roberta"):
        if not path.is_dir():
            raise error(
                f"{where}: 'path' of a {kind} tokenizer must be the dir with vocab.json and merges.txt"
            )
        flags.pop("lowercase", None)
        return (GPT2Tokenizer if kind == "gpt2" else RobertaTokenizer)(
            path / options.get("vocab_file", "vocab.json"),
            path / options.get("merges_file", "merges.txt"),
            **flags,
        )
    if kind == "glm_chinese":
        return _build_chinese(path, options, where, error)
    raise error(
        f"{where}: field 'kind' is {kind!r}; expected sentencepiece, bert, gpt2, roberta or glm_chinese"
    )


def _build_chinese(
    path: Path, options: dict[str, Any], where: str, error: type[UserError] = ConfigError
) -> GLMChineseTokenizer:
    # The layout cannot be guessed from the model file, and a wrong guess shifts gMASK silently.
    fix = options.get("fix_command_token")
    if fix is not True and fix is not False:
        raise error(
            f"{where}: a glm_chinese tokenizer needs 'fix_command_token' true or false (got {fix!r}): "
            "true for glm-large-chinese and the Hugging Face glm-10b-chinese, false for the original "
            "glm-10b-chinese checkpoint"
        )
    if path.is_dir():
        names = [options["model_file"]] if "model_file" in options else [SP_MODEL_FILE, CHINESE_MODEL_FILE]
        found = [path / n for n in names if (path / n).is_file()]
        if not found:
            raise MissingInputError(f"{where}: {path} has none of {names}")
        path = found[0]
    flags = {k: bool(options[k]) for k in ("task_mask", "decoder_mask") if k in options}
    return GLMChineseTokenizer(path, fix_command_token=fix, **flags)


def load_tokenizer(spec: str | os.PathLike[str] | dict[str, Any] | GLMTokenizer) -> GLMTokenizer:
    """A tokenizer from a saved dir (its ``tokenizer.json``), a ``.model`` file, or a dict.

    The dict form is ``{"kind": "sentencepiece" | "bert" | "gpt2" | "roberta" | "glm_chinese", "path": ...,
    **options}`` with options ``task_mask``/``decoder_mask`` (all but sentencepiece), ``lowercase`` (BERT)
    and ``fix_command_token`` (glm_chinese, required; its path is the ``.model`` file or its dir). A dir's recorded
    ids and sizes are checked against the rebuilt tokenizer, so a changed file is caught on load.
    """
    if isinstance(spec, GLMTokenizer):
        return spec
    if isinstance(spec, dict) or (hasattr(spec, "keys") and hasattr(spec, "get")):  # dict / DictConfig
        spec = dict(spec)
        for field in ("kind", "path"):
            if field not in spec:
                raise ConfigError(f"tokenizer spec {spec}: missing field {field!r}")
        path = Path(spec["path"]).expanduser()
        if not path.exists():
            raise missing_file_error(path, f"tokenizer spec {spec}: path {path} does not exist")
        return _build(str(spec["kind"]), path, spec, f"tokenizer spec {spec}")
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / META_FILE).is_file():
            raise MissingInputError(_no_meta(path))
        meta = read_meta(path)
        tok = _build(str(meta.get("kind")), path, meta, str(path / META_FILE), DataFormatError)
        for field, actual in (
            ("special_ids", dict(tok.special_ids)),
            ("vocab_size", tok.vocab_size),
            ("num_text_tokens", tok.num_text_tokens),
        ):
            if field in meta and meta[field] != actual:
                raise DataFormatError(
                    f"{path / META_FILE}: field {field!r} is {meta[field]}, but the files give {actual}"
                )
        return tok
    if path.suffix == ".model" and path.is_file():
        return SentencePieceTokenizer(path)
    if not path.exists():
        raise missing_file_error(path, f"tokenizer not found: {path}")
    raise DataFormatError(
        f"{path}: not a tokenizer; expected a tokenizer dir (with {META_FILE}) or a sentencepiece .model file"
    )


def _no_meta(path: Path) -> str:
    """Why the dir ``path`` is not a saved tokenizer, and what would load what it holds."""
    names = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
    fix = "save a tokenizer there with tok.save(dir), or pass {'kind': ..., 'path': ...}"
    if not names:
        return f"{path}: empty directory, no tokenizer files (no {META_FILE}); {fix}"
    if SP_MODEL_FILE in names:
        fix = f"give the model file itself ({path / SP_MODEL_FILE}), or {fix}"
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return f"{path}: no {META_FILE} (the directory holds {shown}); {fix}"
