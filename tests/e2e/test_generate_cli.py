"""`python -m glm.generate ckpt=<export dir> input=FILE` on the export a real `+experiment=ci_tiny` run writes:
one filled line per input line, identical to in-process `fill_blanks`; bad input named before the model loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, need_data, run_cli

TEXTS = [
    "Alice was beginning to get very [MASK] of sitting by her sister.",
    "",
    "The Rabbit ran down the hole",
]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_data("gutenberg/11-0.txt")
    tmp = tmp_path_factory.mktemp("ci_tiny")
    r = run_cli(["+experiment=ci_tiny", "logger=none", f"hydra.run.dir={tmp / 'run'}"], tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp / "run" / "export"


def test_generate_cli_fills_every_line_like_the_library(export_dir: Path, tmp_path: Path) -> None:
    import torch

    from glm.generate import load
    from glm.generation import GenerationConfig, fill_blanks

    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "glm.generate",
            f"ckpt={export_dir}",
            f"input={src}",
            "max_new_tokens=6",
            "min_new_tokens=2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout.split("\n")
    assert out[-1] == "" and len(out) - 1 == len(TEXTS)  # one line per input line, the empty one kept
    assert out[1] == ""
    # the text around the blank is kept; the blank ([MASK]) and the appended [gMASK] got >= 2 tokens each
    head, tail = TEXTS[0].split("[MASK]")
    assert out[0].startswith(head) and out[0].endswith(tail) and len(out[0]) > len(head + tail)
    assert out[2].startswith(TEXTS[2]) and len(out[2]) > len(TEXTS[2])
    # the CLI is the library: same weights, tokenizer and greedy decoding give the same strings
    model, tok = load(str(export_dir))
    config = GenerationConfig.for_tokenizer(tok, max_new_tokens=6, min_new_tokens=2)
    with torch.no_grad():
        expected = [fill_blanks(model, tok, t, config, task_mask=True).text if t else "" for t in TEXTS]
    assert out[:-1] == expected


def test_generate_cli_bad_input_is_named(export_dir: Path, tmp_path: Path) -> None:
    from glm.generate import main

    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine [MASK] line\nbroken \xff byte\n")
    with pytest.raises(SystemExit, match=r"bad.txt:2: not valid UTF-8"):
        main([f"ckpt={export_dir}", f"input={bad}"])
    with pytest.raises(SystemExit, match=r"input=.*missing.txt: no such file"):
        main([f"ckpt={export_dir}", f"input={tmp_path / 'missing.txt'}"])
    with pytest.raises(SystemExit, match=r"ckpt=.*not an export directory"):
        main([f"ckpt={tmp_path}"])
    with pytest.raises(SystemExit, match=r"unknown option 'beams'"):
        main([f"ckpt={export_dir}", "beams=3"])
    with pytest.raises(SystemExit, match=r"min_new_tokens must be in \[0, max_new_tokens\]"):
        main([f"ckpt={export_dir}", "max_new_tokens=2", "min_new_tokens=5"])
