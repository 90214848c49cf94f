"""`python -m glm.checkpoint convert --from original|hf|ours PATH --out DIR [--to ours|original|hf] ...`

Examples:
    python -m glm.checkpoint convert --from original ckpts/blocklm-large-blank --model glm-large \
        --out export/glm-large
    python -m glm.checkpoint convert --from ours export/glm-large --to original --mp 2 \
        --out ckpts/glm-large-mp2
    python -m glm.checkpoint convert --from hf hf/glm-large --out export/glm-large-hf
    python -m glm.checkpoint consolidate outputs/.../checkpoints/last.ckpt --out export/run1
        (a Lightning .ckpt file, a sharded FSDP checkpoint dir or a DeepSpeed checkpoint dir)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
import yaml

from glm.checkpoint.consolidate import consolidate
from glm.checkpoint.convert_hf import load_hf, save_hf
from glm.checkpoint.convert_original import (
    EXTRAS_FILE,
    check_original_compatible,
    infer_config,
    load_original,
    save_original,
)
from glm.checkpoint.io import atomic_save, export_model, load_export, safe_load
from glm.errors import CheckpointError
from glm.tokenizer import load_tokenizer

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _progress(desc: str):
    from tqdm import tqdm

    return lambda keys: tqdm(keys, desc=desc, unit="tensor", file=sys.stderr)


def convert(args: argparse.Namespace) -> int:
    """Read the source, write the target, print a summary; returns the exit code."""
    src, out = Path(args.path), Path(args.out)
    overrides = {"num_attention_heads": args.heads} if args.heads else {}
    extras, tokenizer = {}, None
    print(f"reading {args.src} checkpoint {src}", file=sys.stderr)
    if args.src == "original":
        sd, info = load_original(src, trust=args.trust_checkpoint, progress=_progress("merging shards"))
        config = infer_config(sd, args.model, str(src), **overrides)
        extras = info.extras
        print(
            f"  {len(info.files)} model-parallel shard(s): {', '.join(f.name for f in info.files)}",
            file=sys.stderr,
        )
    elif args.src == "hf":
        config, sd = load_hf(src, gelu_approximate=args.gelu)
    else:
        config, sd, tokenizer = load_export(src)
        if (src / EXTRAS_FILE).is_file():
            extras = dict(safe_load(src / EXTRAS_FILE))
    if args.src != "hf" and args.gelu != "tanh":
        config.gelu_approximate = args.gelu
    if args.tokenizer:
        tokenizer = load_tokenizer(args.tokenizer)
    if args.dtype:
        sd = {k: v.to(DTYPES[args.dtype]) for k, v in sd.items()}
    if extras and not args.keep_extras:
        print(
            f"  dropping {len(extras)} non-backbone tensors "
            f"({sorted({k.split('.')[0] for k in extras})}); --keep-extras keeps them",
            file=sys.stderr,
        )
        extras = {}

    print(f"writing {args.to} checkpoint {out}", file=sys.stderr)
    if args.to == "ours":
        export_model(sd, config, out, tokenizer=tokenizer)
        if extras:
            atomic_save(extras, out / EXTRAS_FILE)
    elif args.to == "original":
        check_original_compatible(config)
        files = save_original(sd, out, mp=args.mp, tag=args.tag, extras=extras)
        print(f"  wrote {len(files)} shard(s) under {out / args.tag}", file=sys.stderr)
    else:
        save_hf(sd, config, out)

    n_params = sum(v.numel() for v in sd.values())
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in sd.values()})
    print(f"converted {len(sd)} tensors, {n_params:,} parameters ({n_params / 1e6:.1f}M, {'/'.join(dtypes)})")
    print("config:\n" + yaml.safe_dump(config.to_dict(), sort_keys=False).rstrip())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m glm.checkpoint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="convert between original GLM, Hugging Face and our export layout")
    c.add_argument("--from", dest="src", choices=("original", "hf", "ours"), required=True)
    c.add_argument("path", help="source: original checkpoint dir/file, HF model dir, or our export dir")
    c.add_argument("--out", required=True, help="target directory")
    c.add_argument("--to", choices=("ours", "original", "hf"), default="ours")
    c.add_argument(
        "--model",
        help="GLMConfig preset naming the architecture (e.g. glm-large); V and P "
        "are always read from the weights",
    )
    c.add_argument(
        "--heads", type=int, help="number of attention heads (else from --model, else head size 64)"
    )
    c.add_argument("--mp", type=int, default=1, help="model-parallel ranks to write (--to original)")
    c.add_argument("--tag", default="release", help="tag directory name (--to original)")
    c.add_argument(
        "--keep-extras",
        action="store_true",
        help="keep pool_layer/multichoice_head/prompt_spell tensors of finetuned checkpoints",
    )
    c.add_argument(
        "--gelu",
        choices=("tanh", "none"),
        default="tanh",
        help="GELU form in the written config: tanh (original training) or none (erf, as the HF port)",
    )
    c.add_argument("--dtype", choices=sorted(DTYPES), help="cast the weights (default: keep)")
    c.add_argument("--tokenizer", help="tokenizer file/dir to store in the export (--to ours)")
    c.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow arbitrary pickled objects in original files (only for sources you trust)",
    )
    k = sub.add_parser(
        "consolidate",
        help="training checkpoint (Lightning .ckpt, sharded FSDP dir, DeepSpeed dir) -> one export dir",
    )
    k.add_argument("path", help="checkpoint file or sharded checkpoint directory")
    k.add_argument("--out", required=True, help="export directory to write")
    k.add_argument(
        "--tokenizer", help="tokenizer file/dir to store (default: the run dir's export/tokenizer)"
    )
    k.add_argument("--dtype", choices=sorted(DTYPES), help="cast the weights (default: keep)")
    return parser


def consolidate_cmd(args: argparse.Namespace) -> int:
    out = consolidate(args.path, args.out, tokenizer=args.tokenizer, dtype=DTYPES.get(args.dtype or ""))
    print(f"wrote export dir {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.command == "consolidate":
        try:
            return consolidate_cmd(args)
        except CheckpointError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    if args.src != "original" and (args.model or args.heads):
        print(
            "error: --model/--heads only apply with --from original (HF and export dirs carry their config)",
            file=sys.stderr,
        )
        return 2
    if args.mp != 1 and args.to != "original":
        print("error: --mp only applies with --to original", file=sys.stderr)
        return 2
    try:
        return convert(args)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
