"""``python -m glm.tokenizer train|encode``: train a SentencePiece tokenizer, or inspect an encoding."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from glm.tokenizer.base import SP_MODEL_FILE
from glm.tokenizer.loading import load_tokenizer
from glm.tokenizer.training import train_sentencepiece


def main(argv: list[str] | None = None) -> int:
    """``train`` a SentencePiece tokenizer, or ``encode`` text with any tokenizer (for inspection)."""
    parser = argparse.ArgumentParser(prog="python -m glm.tokenizer", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train a GLM sentencepiece tokenizer on text files")
    p_train.add_argument(
        "--input", nargs="+", required=True, metavar="GLOB", help="text files or glob patterns"
    )
    p_train.add_argument("--out", required=True, help="output dir (tokenizer.model + tokenizer.json)")
    p_train.add_argument("--vocab-size", type=int, default=8000)
    p_train.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe")
    p_train.add_argument("--max-bytes", type=int, default=200_000_000, help="cap on text read (0: no cap)")
    p_train.add_argument("--threads", type=int, default=2)
    p_enc = sub.add_parser("encode", help="print ids and pieces of TEXT")
    p_enc.add_argument("--tokenizer", required=True, help="tokenizer dir or .model file")
    p_enc.add_argument("text")
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            tok = train_sentencepiece(
                args.input,
                args.out,
                args.vocab_size,
                args.model_type,
                args.max_bytes or None,
                num_threads=args.threads,
            )
            print(
                f"wrote {Path(args.out) / SP_MODEL_FILE} ({tok.num_text_tokens} pieces, V={tok.vocab_size})"
            )
        else:
            tok = load_tokenizer(args.tokenizer)
            ids = tok.encode(args.text)
            print(ids)
            print([tok.id_to_piece(i) for i in ids])
        return 0
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
