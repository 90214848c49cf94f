"""Interactive blank filling, like the original `generate_samples.py` (docs/original-glm.md §3(d)).

    python -m glm.generate ckpt=EXPORT_DIR                       # prompt on the terminal, empty line quits
    python -m glm.generate ckpt=EXPORT_DIR input=FILE            # one text per line, one filled line each
    python -m glm.generate ckpt=DIR num_beams=4 max_new_tokens=64 task_mask=false tokenizer=TOK_DIR
    python -m glm.generate ckpt=DIR do_sample=true top_p=0.9 temperature=0.8 seed=1

Text may contain several `[MASK]`/`[sMASK]`/`[gMASK]`; each is filled left to right in its own Part-B
span; a text without a mask gets `[gMASK]` (or `[MASK]` with `task_mask=false`) appended. `ckpt` is an
export directory (weights + model_config.yaml [+ tokenizer/]); `tokenizer=` overrides its tokenizer.
Other `key=value` pairs are `glm.generation.GenerationConfig` fields.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import torch

from glm.checkpoint.io import load_export
from glm.errors import CheckpointError
from glm.generation import GenerationConfig, fill_blanks
from glm.model import GLM
from glm.tokenizer import load_tokenizer
from glm.utils.inputs import read_lines

_BOOL = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def parse_args(argv: list[str]) -> dict[str, Any]:
    """`key=value` pairs, typed by `GenerationConfig`'s fields; unknown keys are an error naming the key."""
    fields = {f.name: f for f in dataclasses.fields(GenerationConfig)}
    own = {"ckpt", "input", "tokenizer", "task_mask", "device"}
    out: dict[str, Any] = {}
    for arg in argv:
        if "=" not in arg:
            raise SystemExit(f"glm.generate: expected key=value, got {arg!r}")
        key, value = arg.split("=", 1)
        key = key.lstrip("+-")
        if key in own:
            out[key] = _BOOL.get(value.lower(), value) if key == "task_mask" else value
            continue
        if key not in fields or key in ("sop_id", "eop_id", "pad_id", "extra_stop_ids"):
            raise SystemExit(f"glm.generate: unknown option {key!r}; known: {sorted(own | set(fields))}")
        default = fields[key].default
        try:
            if isinstance(default, bool):
                out[key] = _BOOL[value.lower()]
            elif key == "seed":
                out[key] = int(value)
            else:
                out[key] = type(default)(value)
        except (KeyError, ValueError):
            raise SystemExit(
                f"glm.generate: {key}={value!r} is not a valid {type(default).__name__}"
            ) from None
    if "ckpt" not in out:
        raise SystemExit("glm.generate: ckpt=EXPORT_DIR is required")
    return out


def load(ckpt: str, tokenizer: str | None = None, device: str = "cpu") -> tuple[Any, Any]:
    """Model (eval mode) and tokenizer from an export directory."""
    config, state_dict, tok = load_export(ckpt, load_tokenizer=tokenizer is None)
    if tokenizer is not None:
        tok = load_tokenizer(tokenizer)
    if tok is None:
        raise SystemExit(f"glm.generate: {ckpt} has no tokenizer/; pass tokenizer=PATH")
    model = GLM(config)
    model.load_state_dict(state_dict)
    return model.to(device).eval(), tok


def read_input(source: str) -> list[str]:
    """The lines of an input file; a missing file or non-UTF-8 bytes end the program naming file and line."""
    if not Path(source).exists():
        raise SystemExit(f"glm.generate: input={source}: no such file")
    try:
        return read_lines(Path(source), "input")
    except (OSError, ValueError) as err:
        raise SystemExit(f"glm.generate: {err}") from None


def main(argv: list[str] | None = None) -> int:
    """Fill the blanks of `input=FILE` (one output line per input line) or of prompts typed on the terminal."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    source = args.pop("input", None)
    lines = read_input(source) if source is not None else None  # bad input fails before the model loads
    ckpt = args.pop("ckpt")
    try:
        model, tok = load(ckpt, args.pop("tokenizer", None), args.pop("device", "cpu"))
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        raise SystemExit(f"glm.generate: ckpt={ckpt}: {err}") from None
    task_mask = bool(args.pop("task_mask", tok.gmask_id is not None))
    try:
        config = GenerationConfig.for_tokenizer(tok, **args)
    except ValueError as err:
        raise SystemExit(f"glm.generate: {err}") from None
    if lines is not None:
        with torch.no_grad():
            for text in lines:  # an empty input line gives an empty output line, so the lines stay paired
                print(
                    fill_blanks(model, tok, text, config, task_mask).text if text.strip() else "", flush=True
                )
        return 0
    while True:  # interactive: an empty line or EOF ends the session
        try:
            text = input("Context prompt (empty line to stop) >>> ")
        except EOFError:
            break
        if not text.strip():
            break
        with torch.no_grad():
            print(fill_blanks(model, tok, text, config, task_mask).text, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
