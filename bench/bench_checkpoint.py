"""Cost of a safe checkpoint: `AtomicCheckpointIO` (temp file in the target's dir, fsync, rename, sha256
hashed while writing, sidecar in two phases) vs Lightning's default `TorchCheckpointIO` (serialise into
memory, then an fsspec transaction through `$TMPDIR`), for a glm-base training checkpoint.

    python bench/bench_checkpoint.py [--rounds 3] [--preset glm-base] [--dir DIR] [--json PATH]

The checkpoint: the backbone's state dict + AdamW's two moments per parameter (what Lightning stores for
`PretrainModule`), fp32: 3 x 109.3 M parameters = 1.31 GB for glm-base. `--dir` defaults to `outputs/bench/ckpt`
(on this machine the same filesystem as `$TMPDIR`, Lightning's best case: its move is a rename). Saves are
interleaved round by round, each to the same `last.ckpt` path as a run does (so ours also replaces a file
and its sidecar); wall seconds, medians, ratio = median of the per-round ratios. Loads: ours (sha256 of the
file, then `torch.load(weights_only=True, mmap=True)`, touching every tensor) vs plain `torch.load` of the
same file, page cache dropped neither time: both read warm.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning.pytorch.plugins.io import TorchCheckpointIO

import glm.utils.fs as fs
from glm.checkpoint.io import AtomicCheckpointIO
from glm.model import GLM, GLMConfig


def training_checkpoint(preset: str) -> dict:
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in GLM(GLMConfig.from_name(preset)).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    moments = {
        i: {
            "step": torch.tensor(10.0),
            "exp_avg": torch.randn(s, generator=g) * 1e-3,
            "exp_avg_sq": torch.rand(s, generator=g) * 1e-6,
        }
        for i, s in enumerate(shapes.values())
    }
    return {
        "epoch": 0,
        "global_step": 10,
        "state_dict": {f"model.{k}": v for k, v in state.items()},
        "optimizer_states": [{"state": moments, "param_groups": [{"lr": 1e-4, "params": list(moments)}]}],
        "lr_schedulers": [{"last_epoch": 10}],
    }


def touch_all(obj) -> float:
    if isinstance(obj, torch.Tensor):
        return float(obj.float().sum()) if obj.is_floating_point() else 0.0
    if isinstance(obj, dict):
        return sum(touch_all(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(touch_all(v) for v in obj)
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--preset", default="glm-base")
    ap.add_argument("--dir", type=Path, default=Path("outputs/bench/ckpt"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    ckpt = training_checkpoint(args.preset)
    nbytes = sum(t.numel() * t.element_size() for t in ckpt["state_dict"].values()) * 3
    ours_dir, theirs_dir = args.dir / "atomic", args.dir / "lightning"
    for d in (ours_dir, theirs_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    variants = {
        "lightning": lambda: TorchCheckpointIO().save_checkpoint(ckpt, theirs_dir / "last.ckpt"),
        "atomic+sha256": lambda: AtomicCheckpointIO().save_checkpoint(ckpt, ours_dir / "last.ckpt"),
    }
    for fn in variants.values():  # untimed: create the files both replace from now on
        fn()
    save: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        order = list(variants)[r % 2 :] + list(variants)[: r % 2]
        for name in order:
            t = time.perf_counter()
            variants[name]()
            save[name].append(time.perf_counter() - t)

    load: dict[str, list[float]] = {"torch.load": [], "verified load": []}
    path = ours_dir / "last.ckpt"
    for _ in range(args.rounds):
        t = time.perf_counter()
        touch_all(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
        load["torch.load"].append(time.perf_counter() - t)
        fs._verified.clear()  # measure the hash every time, not the process's memo
        t = time.perf_counter()
        touch_all(AtomicCheckpointIO().load_checkpoint(path, map_location="cpu"))
        load["verified load"].append(time.perf_counter() - t)

    def ratio(a: list[float], b: list[float]) -> float:
        return statistics.median(x / y for x, y in zip(a, b, strict=True))

    result = {
        "preset": args.preset,
        "checkpoint_bytes": path.stat().st_size,
        "tensor_bytes": nbytes,
        "rounds": args.rounds,
        "save_s": {k: statistics.median(v) for k, v in save.items()},
        "save_ratio_atomic_vs_lightning": ratio(save["atomic+sha256"], save["lightning"]),
        "load_s": {k: statistics.median(v) for k, v in load.items()},
        "load_ratio_verified_vs_plain": ratio(load["verified load"], load["torch.load"]),
    }
    gb = result["checkpoint_bytes"] / 1e9
    print(f"{args.preset} training checkpoint: {gb:.2f} GB, {args.rounds} rounds, dir {args.dir}")
    for k, v in result["save_s"].items():
        print(f"  save {k:15s} {v:6.2f} s  ({gb / v:.2f} GB/s)")
    print(f"  save ratio atomic+sha256 / lightning: {result['save_ratio_atomic_vs_lightning']:.2f}")
    for k, v in result["load_s"].items():
        print(f"  load {k:15s} {v:6.2f} s")
    print(f"  load ratio verified / torch.load: {result['load_ratio_verified_vs_plain']:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
