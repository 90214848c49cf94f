"""CPU inference attention: compiled FlexAttention with the GLM block mask vs SDPA with the boolean mask.

    python bench/bench_flex_cpu.py [--seqs 512 1024] [--batch 2] [--rounds 9] [--threads 1] [--json OUT]

Why it exists: flex is forward-only on CPU, so the only CPU use it could have is inference (evaluation,
cloze scoring). This measures whether `model.attention=auto` should pick it there. Per sequence length:
q, k, v `[B, 12, S, 64]` fp32 under `torch.no_grad()`, pretraining-like seps drawn from U[0.5 S, 0.95 S]
(the layout where block skipping saves most: Part-A rows against Part-B columns are empty blocks);
figures are medians of interleaved rounds in CPU seconds of this process (one intra-op thread), as in
bench_train.py. Reported: each kernel's call, each mask's construction (the block mask is built per batch),
the first flex call (compilation, wall seconds: paid again for every new shape, as `dynamic=False`), and the
largest difference between the two outputs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]
from glm.model.glm import build_attention_mask, build_block_mask, flex_attention_glm, sdpa_attention


def cpu_ms(fn: Callable[[], object]) -> float:
    start = time.process_time()
    fn()
    return (time.process_time() - start) * 1e3


def measure(seq: int, batch: int, rounds: int, heads: int = 12, head_size: int = 64) -> dict:
    g = torch.Generator().manual_seed(seq)
    q, k, v = (torch.randn(batch, heads, seq, head_size, generator=g) for _ in range(3))
    sep = torch.randint(seq // 2, int(0.95 * seq), (batch,), generator=g)
    dense = build_attention_mask(sep, batch, seq)
    blocks = build_block_mask(sep, batch, seq)
    start = time.perf_counter()
    flex_out = flex_attention_glm(q, k, v, blocks, False)
    compile_s = time.perf_counter() - start
    diff = (flex_out - sdpa_attention(q, k, v, dense, 0.0, False)).abs().max().item()
    jobs = {
        "sdpa_ms": lambda: sdpa_attention(q, k, v, dense, 0.0, False),
        "flex_ms": lambda: flex_attention_glm(q, k, v, blocks, False),
        "dense_mask_ms": lambda: build_attention_mask(sep, batch, seq),
        "block_mask_ms": lambda: build_block_mask(sep, batch, seq),
    }
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(rounds):  # interleaved, so drift in the machine's speed hits every job alike
        for name, fn in jobs.items():
            times[name].append(cpu_ms(fn))
    res = {name: statistics.median(t) for name, t in times.items()}
    res.update(
        seq=seq,
        first_flex_call_s=compile_s,
        max_abs_diff=diff,
        flex_over_sdpa=(res["flex_ms"] + res["block_mask_ms"]) / (res["sdpa_ms"] + res["dense_mask_ms"]),
    )
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seqs", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    with torch.no_grad():
        for seq in args.seqs:
            r = measure(seq, args.batch, args.rounds)
            results.append(r)
            print(
                f"S={seq}: sdpa {r['sdpa_ms']:.1f} ms + dense mask {r['dense_mask_ms']:.2f} ms | flex "
                f"{r['flex_ms']:.1f} ms + block mask {r['block_mask_ms']:.2f} ms | flex/sdpa "
                f"{r['flex_over_sdpa']:.2f}x | first flex call {r['first_flex_call_s']:.0f} s | "
                f"max |diff| {r['max_abs_diff']:.1e}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "results": results}, indent=2))


if __name__ == "__main__":
    main()
