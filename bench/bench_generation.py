"""Generation throughput with and without the KV cache (CPU ratios; absolute numbers only on a GPU).

    python bench/bench_generation.py [--preset glm-small] [--batch 4] [--context 128]

With the cache each new token is one position of compute, so the per-token cost stays flat as the
output grows; without it every step re-runs the whole prefix (cost grows linearly per token).
"""

from __future__ import annotations

import argparse
import time

import torch

from glm.generation import GenerationConfig, greedy_or_sample
from glm.model import GLM, GLMConfig


def uncached_greedy(model: GLM, ctx: torch.Tensor, new_tokens: int, sop: int) -> None:
    """Re-run context + [sop] + generated tokens in full every step (the no-cache baseline)."""
    B, S = ctx.shape
    ids = torch.cat([ctx, torch.full((B, 1), sop)], 1)
    for _ in range(new_tokens):
        L = ids.shape[1]
        pos = torch.stack(
            [
                torch.cat([torch.arange(S), torch.ones(L - S, dtype=torch.long)]),
                torch.cat([torch.zeros(S, dtype=torch.long), torch.arange(1, L - S + 1)]),
            ]
        )
        nxt = model(ids, pos[None].expand(B, 2, L), sep=S).logits[:, -1].argmax(-1)
        ids = torch.cat([ids, nxt[:, None]], 1)


def timed(fn, repeats: int = 2) -> float:
    """Best of `repeats` wall-clock times (the machines are shared and noisy)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="glm-small")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 256])
    args = ap.parse_args()
    cfg = GLMConfig.from_name(
        args.preset,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        max_sequence_length=max(512, args.context + max(args.lengths) + 2),
    )
    model = GLM(cfg).eval()
    ctx = torch.randint(
        10, cfg.vocab_size, (args.batch, args.context), generator=torch.Generator().manual_seed(0)
    )
    print(
        f"{args.preset}, batch {args.batch}, context {args.context}, threads {torch.get_num_threads()}, "
        f"allocator: default (glibc malloc unless LD_PRELOAD says otherwise)"
    )
    per_token = {}
    for n in args.lengths:
        # eop never chosen: min length = max length, so every run generates exactly n tokens
        gcfg = GenerationConfig(max_new_tokens=n, min_new_tokens=n)
        greedy_or_sample(model, ctx, 1, gcfg.replace(max_new_tokens=16, min_new_tokens=16))  # warm-up
        uncached_greedy(model, ctx, 4, gcfg.sop_id)
        t_cached = timed(lambda: greedy_or_sample(model, ctx, 1, gcfg))
        t_full = timed(lambda: uncached_greedy(model, ctx, n, gcfg.sop_id))
        tok = args.batch * n
        per_token[n] = t_cached / n
        print(
            f"new tokens {n:4d}: cached {tok / t_cached:8.1f} tok/s | uncached {tok / t_full:8.1f} tok/s | "
            f"speed-up x{t_full / t_cached:.2f} | cached ms/step {1e3 * t_cached / n:.2f}"
        )
    a, b = args.lengths[0], args.lengths[-1]
    print(f"cached per-step cost ratio {b} vs {a} tokens: {per_token[b] / per_token[a]:.2f} (flat ~ 1)")


if __name__ == "__main__":
    main()
