"""GPU benchmark of the backbone: attention kernels and training-step throughput / MFU.

Run on a CUDA machine:  python bench/bench_gpu.py [--quick] [--json OUT.json]
It needs only torch and `glm.model` (no Lightning/Hydra), so it runs on a bare GPU image.
Timings use CUDA events after warm-up; each figure is the median of several repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from glm.model import GLM, GLMConfig, build_attention_mask, build_block_mask  # noqa: E402
from glm.model.glm import flex_attention_glm  # noqa: E402

# dense bf16 peak (TFLOP/s) per device name fragment; MFU uses these (datasheet, no sparsity)
PEAK_BF16_TFLOPS = {"H100 80GB HBM3": 989.4, "H100 PCIe": 756.0, "H200": 989.4, "A100": 312.0}


def peak_tflops(name: str) -> float:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return float("nan")


def cuda_time(fn, warmup: int = 3, repeat: int = 10) -> float:
    """Median milliseconds of `fn()` measured with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def matmul_ceiling() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = cuda_time(lambda: a @ b, warmup=3, repeat=10)
    return 2 * 8192**3 / (ms / 1e3) / 1e12


def pretraining_seps(batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """Part-A lengths of pretraining batches: token-level blanks leave ~85% in Part A, document-level
    generation 50-100%; draw uniformly from [0.5L, 0.95L]."""
    return torch.randint(int(0.5 * length), int(0.95 * length), (batch,), generator=generator)


def bench_attention(results: dict, lengths, batch=8, heads=16, head_dim=64) -> None:
    g = torch.Generator().manual_seed(0)
    for L in lengths:
        q, k, v = (
            torch.randn(batch, heads, L, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            for _ in range(3)
        )
        sep = pretraining_seps(batch, L, g).cuda()
        dense = build_attention_mask(sep, batch, L, device="cuda")
        block = build_block_mask(sep, batch, L, device="cuda")
        grad = torch.randn(batch, heads, L, head_dim, device="cuda", dtype=torch.bfloat16)

        def eager():
            s = q @ (k.transpose(-1, -2) / head_dim**0.5)
            return s.masked_fill(~dense, -65504.0).softmax(-1) @ v

        kernels = {
            "eager_glm": eager,
            "sdpa_glm": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=dense),
            "sdpa_causal": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
            "flex_glm": lambda: flex_attention_glm(q, k, v, block, False),
        }
        # correctness against float64 before timing
        ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=dense)
        for name in ("eager_glm", "sdpa_glm", "flex_glm"):
            out = kernels[name]().double()
            rel = ((out - ref).norm() / ref.norm()).item()
            results.setdefault("attention_check", {})[f"{name}_L{L}"] = rel
            assert rel < 1e-2, (name, rel)
        for name, fn in kernels.items():
            fwd = cuda_time(lambda: fn())

            def fwd_bwd():
                fn().backward(grad)

            both = cuda_time(fwd_bwd)
            results.setdefault("attention_ms", {})[f"{name}_L{L}"] = {"fwd": fwd, "fwd_bwd": both}
            print(f"attention L={L:5d} {name:12s} fwd {fwd:7.3f} ms  fwd+bwd {both:7.3f} ms", flush=True)


def bench_training(results: dict, preset: str, seq: int, batch: int, variants, steps: int = 8) -> None:
    peak = peak_tflops(torch.cuda.get_device_name())
    g = torch.Generator().manual_seed(1)
    for variant in variants:
        attention, causal, compile_blocks, attn_dropout = variant
        torch.manual_seed(0)
        max_len = max(seq, GLMConfig.from_name(preset).max_sequence_length)  # longer sequences: longer tables
        cfg = GLMConfig.from_name(
            preset, attention=attention, attention_dropout=attn_dropout, max_sequence_length=max_len
        )
        model = GLM(cfg).cuda()
        if compile_blocks == "blocks" or compile_blocks is True:
            for layer in model.transformer.layers:
                layer.compile()
        decay = [p for n, p in model.named_parameters() if p.dim() > 1]
        no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
            lr=1e-4,
            betas=(0.9, 0.98),
            eps=1e-6,
            fused=True,
        )
        ids = torch.randint(0, cfg.vocab_size, (batch, seq), device="cuda", generator=None)
        pos = (
            torch.stack([torch.arange(seq), torch.zeros(seq, dtype=torch.long)])[None]
            .expand(batch, 2, seq)
            .cuda()
        )
        sep = (
            torch.zeros(batch, dtype=torch.long, device="cuda")
            if causal
            else pretraining_seps(batch, seq, g).cuda()
        )
        targets = torch.randint(0, cfg.vocab_size, (batch, seq), device="cuda")

        def forward_loss():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(ids, pos, sep=sep).logits
            return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

        if compile_blocks == "step":  # the whole forward + loss as one graph (fuses the head and the CE)
            forward_loss = torch.compile(forward_loss)

        def step():
            loss = forward_loss()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        t0 = time.time()
        ms = cuda_time(step, warmup=3, repeat=steps)
        tokens_per_s = batch * seq / (ms / 1e3)
        achieved = cfg.flops_per_token(seq) * tokens_per_s / 1e12
        name = (
            f"{preset}_L{seq}_B{batch}_{attention}{'_causal' if causal else ''}{'_compiled-' + str(compile_blocks) if compile_blocks else ''}"
            f"_attndrop{attn_dropout}"
        )
        row = {
            "ms_per_step": ms,
            "tokens_per_s": tokens_per_s,
            "tflops": achieved,
            "mfu": achieved / peak,
            "batch": batch,
            "seq": seq,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
            "wall_s": time.time() - t0,
        }
        results.setdefault("training", {})[name] = row
        print(
            f"train {name:52s} {tokens_per_s:9.0f} tok/s  {achieved:6.1f} TFLOP/s  MFU {row['mfu']:.3f}",
            flush=True,
        )
        model = opt = None  # free this variant's memory before the next one builds its model
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--skip-attention", action="store_true")
    parser.add_argument("--scaling", action="store_true", help="glm-large batch/compile/seq scaling only")
    parser.add_argument("--mfu", action="store_true", help="glm-large with the whole step compiled")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    results["matmul_bf16_tflops"] = matmul_ceiling()
    print(
        f"{results['device']}  torch {torch.__version__}  bf16 matmul {results['matmul_bf16_tflops']:.0f} TFLOP/s",
        flush=True,
    )
    if args.mfu:
        bench_training(
            results,
            "glm-large",
            512,
            64,
            [("sdpa", False, "step", 0.1), ("sdpa", False, "step", 0.0), ("flex", False, "step", 0.0)],
        )
        bench_training(
            results, "glm-large", 1024, 32, [("sdpa", False, "step", 0.0), ("flex", False, "step", 0.0)]
        )
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
        return
    if args.scaling:
        for batch in (16, 32, 64):
            bench_training(
                results,
                "glm-large",
                512,
                batch,
                [("sdpa", False, False, 0.1), ("sdpa", False, True, 0.1), ("sdpa", False, True, 0.0)],
            )
        bench_training(
            results,
            "glm-large",
            1024,
            16,
            [
                ("sdpa", False, True, 0.0),
                ("flex", False, True, 0.0),
                ("flex", False, False, 0.0),
                ("sdpa", False, False, 0.0),
            ],
        )
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
        return
    if not args.skip_attention:
        bench_attention(results, [512, 1024] if not args.quick else [512])
    variants = [
        ("sdpa", False, False, 0.1),
        ("sdpa", False, False, 0.0),
        ("sdpa", True, False, 0.0),
        ("flex", False, False, 0.0),
        ("eager", False, False, 0.0),
    ]
    if not args.quick:
        variants.append(("sdpa", False, True, 0.0))
    bench_training(results, "glm-large", 512, 16, variants)
    bench_training(results, "glm-base", 512, 32, variants[:4])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
