"""CPU training-step benchmark of a glm-base-shaped model (hidden 768, 12 heads, head dim 64, V 30592).

    python bench/bench_train.py [--layers 2] [--batch 1] [--seq 512] [--rounds 3] [--threads 1] [--json OUT.json]

The defaults keep one run near 3 minutes on the shared 2-core machine (bench/README.md has the results of
`--rounds 5`); `--layers 12 --batch 4` is the full glm-base step (many times longer).

One training step = forward + cross-entropy over all positions + backward + AdamW step, fp32 unless
stated. Variants (all in one process, same shapes, dropout 0 everywhere so every variant runs the same
arithmetic and the kernels decide the speed):

  glm_sdpa         ours, sdpa kernel, GLM mask from pretraining-like seps (Part A = 50-95% of the row)
  glm_eager        ours, explicit matmul + masked_fill + softmax
  glm_sdpa_causal  ours, sep=None (the backbone builds a boolean causal mask; same kernel path)
  reference        bench/reference_glm.py: the 2021 code's arithmetic (float mask, S*m - 65504*(1-m),
                   nn.Softmax, view/permute/contiguous heads, written-out tanh GELU)
  gpt_causal       bench/reference_glm.py CausalGPT: plain pre-LN GPT, sdpa is_causal=True, no mask tensor
  glm_sdpa_bf16    glm_sdpa under torch.autocast("cpu", bfloat16)
  glm_sdpa_ckpt    glm_sdpa with activation checkpointing (glm.tasks.base._checkpoint_blocks)

Timing: variants are interleaved round by round (one step each per round, after one warm-up step each)
and each figure is the median over rounds; ratios are medians of the per-round ratios. The development
machine's 2 cores are shared by several engineers, so wall-clock times swing by 2x from one step to the
next; the figures are therefore CPU seconds
of this process (`time.process_time`) with one intra-op thread (`--threads 1`: every kernel, forward and
backward, runs in the calling thread), which other users' load barely moves. Wall seconds are reported
beside them. Only ratios are meaningful on this machine. The fp32 matmul ceiling is a 2048^3 torch.mm timed
the same way inside every round. Achieved FLOP/s = tokens x GLMConfig.flops_per_token(S) / step CPU time
(training FLOPs = 3x forward, attention included).

Memory: a TorchDispatchMode records every tensor storage created during one step and drops it when its
storage is freed (weakref on the storage), giving the exact peak of live bytes allocated by the step
(activations, gradients, temporaries; parameters and optimizer state exist before the step and are not
counted, nor are views of existing storages such as a weight's transpose) and the bytes still held when
the forward ends (what autograd saved for backward). It runs on the full 12 layers at batch 2 x 512
(`--memory-layers`, `--memory-batch`). Also timed: the attention core alone (Q, K, V -> context, forward +
backward) for each mask/kernel, where many short repeats give tight medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from reference_glm import CausalGPT, ReferenceGLM

from glm.model import GLM, GLMConfig
from glm.tasks.base import _checkpoint_blocks


def pretraining_batch(cfg: GLMConfig, batch: int, seq: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ids with a pretraining-like layout: Part A = 50-95% of the row, Part B block positions."""
    g = torch.Generator().manual_seed(seed)
    sep = torch.randint(int(0.5 * seq), int(0.95 * seq), (batch,), generator=g)
    ar = torch.arange(seq)
    pos = torch.where(ar[None] < sep[:, None], ar[None], sep[:, None] - 1)
    blocks = torch.where(ar[None] < sep[:, None], 0, ar[None] - sep[:, None] + 1)
    return {
        "input_ids": torch.randint(0, cfg.vocab_size, (batch, seq), generator=g),
        "targets": torch.randint(0, cfg.vocab_size, (batch, seq), generator=g),
        "position_ids": torch.stack([pos, blocks], dim=1),
        "sep": sep,
    }


def adamw(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1)


def make_step(
    model: torch.nn.Module, forward: Callable[[], torch.Tensor], targets: torch.Tensor, bf16: bool = False
) -> Callable[[], None]:
    """One training step: zero grads, forward (+ loss) under optional bf16 autocast, backward, AdamW."""
    opt = adamw(model)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = forward()
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        loss.backward()
        opt.step()

    return step


class LiveBytes(TorchDispatchMode):
    """Peak bytes of tensor storages created under the mode and still alive (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._refs: dict[int, weakref.ref] = {}

    def _track(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        key, n = st.data_ptr(), st.nbytes()
        if n == 0 or key in self._refs:
            return
        self.live += n
        self.peak = max(self.peak, self.live)

        def freed(_: object, key: int = key, n: int = n) -> None:
            self.live -= n
            self._refs.pop(key, None)

        self._refs[key] = weakref.ref(st, freed)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # views and in-place results alias an input's storage (e.g. a parameter's transpose): not new memory
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self._track(t)
        return out


def step_memory(model: torch.nn.Module, forward: Callable[[], torch.Tensor], targets: torch.Tensor) -> dict:
    opt = adamw(model)
    for p in model.parameters():  # create the AdamW state before the measurement (it lives across steps)
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    with LiveBytes() as mem:
        loss = F.cross_entropy(forward().flatten(0, 1), targets.flatten())
        after_forward = mem.live
        loss.backward()
        del loss
        peak_fwd_bwd, mem.peak = mem.peak, mem.live  # the optimizer phase gets its own peak
        opt.step()
    return {
        "after_forward_bytes": after_forward,
        "peak_forward_backward_bytes": peak_fwd_bwd,
        "peak_optimizer_step_bytes": mem.peak,
    }


def measure_memory(cfg: GLMConfig, layers: int, batch: int, seq: int) -> dict:
    """Step memory of a `layers`-deep copy of the model without and with activation checkpointing."""
    cfg = GLMConfig.from_dict({**cfg.to_dict(), "num_layers": layers})
    data = pretraining_batch(cfg, batch, seq, seed=1)
    out = {}
    for name, checkpointing in (("no_checkpointing", False), ("checkpointing", True)):
        torch.manual_seed(0)
        model = GLM(cfg)
        if checkpointing:
            _checkpoint_blocks(model)

        def forward(model: GLM = model) -> torch.Tensor:
            return model(data["input_ids"], data["position_ids"], sep=data["sep"]).logits

        out[name] = step_memory(model, forward, data["targets"])
        del model
    return out


def attention_core(cfg: GLMConfig, batch: int, seq: int, sep: torch.Tensor, repeats: int) -> dict:
    """Forward+backward of the attention core alone (Q, K, V -> context) for one layer's shapes: the
    kernels and masks without the projections, MLP and head that dominate a whole step. Many short
    interleaved repeats give tight medians (CPU seconds per call)."""
    from glm.model import build_attention_mask
    from glm.model.glm import eager_attention, sdpa_attention

    g = torch.Generator().manual_seed(2)
    shape = (batch, cfg.num_attention_heads, seq, cfg.head_size)
    q, k, v = (torch.randn(shape, generator=g).requires_grad_() for _ in range(3))
    grad = torch.randn(shape, generator=g)
    glm_mask = build_attention_mask(sep, batch, seq)
    causal_mask = build_attention_mask(None, batch, seq)
    float_mask = glm_mask.float()

    def reference() -> torch.Tensor:  # the 2021 arithmetic, as in reference_glm.RefAttention
        scores = torch.matmul(q, k.transpose(-1, -2) / cfg.head_size**0.5)
        scores = torch.mul(scores, float_mask) - 65504.0 * (1.0 - float_mask)
        return torch.matmul(torch.nn.functional.softmax(scores, dim=-1), v)

    kernels = {
        "sdpa_glm_mask": lambda: sdpa_attention(q, k, v, glm_mask, 0.0, False),
        "sdpa_causal_mask": lambda: sdpa_attention(q, k, v, causal_mask, 0.0, False),
        "sdpa_is_causal": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "eager_glm_mask": lambda: eager_attention(q, k, v, glm_mask, 0.0, False),
        "reference_glm_mask": reference,
    }
    times: dict[str, list[float]] = {name: [] for name in kernels}
    for r in range(repeats + 1):
        for name, fn in kernels.items():
            t0 = time.process_time()
            fn().backward(grad)
            if r:  # round 0 is the warm-up
                times[name].append(time.process_time() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}

    def paired(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

    return {
        "fwd_bwd_cpu_ms_median": {k: 1e3 * v for k, v in med.items()},
        "glm_mask_cost_vs_causal_mask": paired("sdpa_glm_mask", "sdpa_causal_mask") - 1.0,
        "glm_mask_cost_vs_is_causal": paired("sdpa_glm_mask", "sdpa_is_causal") - 1.0,
        "sdpa_vs_eager_speedup": paired("eager_glm_mask", "sdpa_glm_mask"),
        "sdpa_vs_reference_speedup": paired("reference_glm_mask", "sdpa_glm_mask"),
    }


def matmul_ceiling_fn(n: int = 2048) -> tuple[Callable[[], None], float]:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return (lambda: torch.mm(a, b)), 2.0 * n**3


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=2, help="glm-base has 12; fewer keep the run within ~3 min")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--threads", type=int, default=1, help="intra-op threads (1: CPU time is all in this thread)"
    )
    p.add_argument(
        "--memory-layers", type=int, default=12, help="layers of the model whose step memory is measured"
    )
    p.add_argument("--memory-batch", type=int, default=2)
    p.add_argument("--attention-repeats", type=int, default=15)
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = GLMConfig.from_name(
        "glm-base",
        num_layers=args.layers,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        max_sequence_length=max(512, args.seq),
    )
    B, S = args.batch, args.seq
    data = pretraining_batch(cfg, B, S)
    ids, pos, sep, tgt = data["input_ids"], data["position_ids"], data["sep"], data["targets"]
    print(
        f"glm-base-shaped: {cfg.num_layers} layers (glm-base has 12), h={cfg.hidden_size}, heads="
        f"{cfg.num_attention_heads}, V={cfg.vocab_size}; batch {B} x seq {S}; fp32, dropout 0; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        flush=True,
    )

    ours = GLM(cfg)
    ref = ReferenceGLM(cfg)
    ref.load_state_dict(ours.state_dict())
    ckpt = GLM(cfg)
    ckpt.load_state_dict(ours.state_dict())
    _checkpoint_blocks(ckpt)
    gpt = CausalGPT(cfg)
    with torch.no_grad():  # the reference computes the same function before anything is timed
        diff = (ref(ids, pos, sep) - ours(ids, pos, sep=sep).logits).abs().max().item()
    print(f"reference vs ours: max |logit diff| = {diff:.2e}")
    assert diff < 1e-3, diff

    def glm_forward(impl: str, causal: bool = False, model: GLM = ours) -> Callable[[], torch.Tensor]:
        def forward() -> torch.Tensor:
            model.config.attention = impl
            return model(ids, pos, sep=None if causal else sep).logits

        return forward

    variants = {
        "glm_sdpa": make_step(ours, glm_forward("sdpa"), tgt),
        "glm_eager": make_step(ours, glm_forward("eager"), tgt),
        "glm_sdpa_causal": make_step(ours, glm_forward("sdpa", causal=True), tgt),
        "reference": make_step(ref, lambda: ref(ids, pos, sep), tgt),
        "gpt_causal": make_step(gpt, lambda: gpt(ids), tgt),
        "glm_sdpa_bf16": make_step(ours, glm_forward("sdpa"), tgt, bf16=True),
        "glm_sdpa_ckpt": make_step(ckpt, glm_forward("sdpa", model=ckpt), tgt),
    }
    mm, mm_flops = matmul_ceiling_fn()
    times: dict[str, list[float]] = {name: [] for name in [*variants, "matmul"]}
    wall: dict[str, list[float]] = {name: [] for name in times}
    for fn in [*variants.values(), mm]:
        fn()  # warm-up
    start = time.perf_counter()
    for r in range(args.rounds):
        for name, fn in [*variants.items(), ("matmul", mm)]:
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            times[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - w0)
        print(
            f"round {r + 1}/{args.rounds} (CPU s): " + " ".join(f"{k}={v[-1]:.2f}" for k, v in times.items()),
            flush=True,
        )
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = B * S
    step_flops = tokens * cfg.flops_per_token(S)
    ceiling = mm_flops / med["matmul"]
    res: dict = {
        "config": {
            "layers": cfg.num_layers,
            "hidden": cfg.hidden_size,
            "heads": cfg.num_attention_heads,
            "vocab": cfg.vocab_size,
            "batch": B,
            "seq": S,
            "rounds": args.rounds,
            "threads": torch.get_num_threads(),
            "memory_layers": args.memory_layers,
            "memory_batch": args.memory_batch,
            "torch": torch.__version__,
            "seps": sep.tolist(),
            "timing_s": round(time.perf_counter() - start, 1),
        },
        "step_cpu_s_median": med,
        "step_cpu_s_min": {k: min(v) for k, v in times.items()},
        "step_wall_s_median": {k: statistics.median(v) for k, v in wall.items()},
        "load_average_1min": os.getloadavg()[0],
        "tokens_per_s": {k: tokens / v for k, v in med.items() if k != "matmul"},
        "matmul_fp32_gflops": ceiling / 1e9,
        "train_gflops": {k: step_flops / med[k] / 1e9 for k in ("glm_sdpa", "gpt_causal", "reference")},
    }

    def paired(a: str, b: str) -> float:
        """Median over rounds of t_a / t_b measured in the same round (drifting load cancels)."""
        return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

    res["ratios"] = {
        "glm_mask_cost_vs_our_causal": paired("glm_sdpa", "glm_sdpa_causal") - 1.0,
        "glm_mask_cost_vs_gpt_is_causal": paired("glm_sdpa", "gpt_causal") - 1.0,
        "ours_sdpa_vs_reference_speedup": paired("reference", "glm_sdpa"),
        "sdpa_vs_eager_speedup": paired("glm_eager", "glm_sdpa"),
        "bf16_vs_fp32_speedup": paired("glm_sdpa", "glm_sdpa_bf16"),
        "checkpointing_time_cost": paired("glm_sdpa_ckpt", "glm_sdpa") - 1.0,
        "train_flops_vs_matmul_ceiling": step_flops / med["glm_sdpa"] / ceiling,
        "gpt_flops_vs_matmul_ceiling": step_flops / med["gpt_causal"] / ceiling,
    }
    res["attention_core"] = attention_core(cfg, B, S, sep, args.attention_repeats)
    if not args.skip_memory:
        del variants, ours, ref, ckpt, gpt
        res["memory"] = {
            "method": "peak live bytes of storages created during one step (TorchDispatchMode + storage weakrefs)",
            **measure_memory(cfg, args.memory_layers, args.memory_batch, S),
        }
    report(res)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))
    return res


def report(res: dict) -> None:
    c = res["config"]
    print(
        f"\nmedian CPU seconds per step ({c['threads']} thread(s); load average {res['load_average_1min']:.1f}); "
        "tokens/s = tokens / CPU seconds"
    )
    print("variant            CPU s  wall s   tokens/s")
    for k, v in res["tokens_per_s"].items():
        print(f"  {k:16s} {res['step_cpu_s_median'][k]:6.2f}  {res['step_wall_s_median'][k]:6.2f}  {v:9.0f}")
    print(
        f"fp32 matmul ceiling (2048^3 mm): {res['matmul_fp32_gflops']:.1f} GFLOP/s; training GFLOP/s: "
        + ", ".join(f"{k} {v:.1f}" for k, v in res["train_gflops"].items())
    )
    r = res["ratios"]
    print(
        f"GLM mask cost over our causal mask: {100 * r['glm_mask_cost_vs_our_causal']:+.1f}% (target <= 5%)"
    )
    print(f"GLM mask cost over GPT is_causal:   {100 * r['glm_mask_cost_vs_gpt_is_causal']:+.1f}%")
    print(f"ours (sdpa) vs reference-style:     {r['ours_sdpa_vs_reference_speedup']:.2f}x (target >= 1.5x)")
    print(f"sdpa vs eager:                      {r['sdpa_vs_eager_speedup']:.2f}x")
    print(f"bf16 autocast vs fp32:              {r['bf16_vs_fp32_speedup']:.2f}x (target >= 2.5x)")
    print(
        f"training FLOP/s / matmul ceiling:   {100 * r['train_flops_vs_matmul_ceiling']:.0f}% (target >= 85%); "
        f"GPT {100 * r['gpt_flops_vs_matmul_ceiling']:.0f}%"
    )
    print(f"activation checkpointing step time: {100 * r['checkpointing_time_cost']:+.1f}%")
    a = res["attention_core"]
    print(
        "attention core alone (one layer's shapes), forward+backward CPU ms: "
        + ", ".join(f"{k} {v:.1f}" for k, v in a["fwd_bwd_cpu_ms_median"].items())
    )
    print(
        f"  GLM mask cost: {100 * a['glm_mask_cost_vs_causal_mask']:+.1f}% vs a causal bool mask, "
        f"{100 * a['glm_mask_cost_vs_is_causal']:+.1f}% vs is_causal; sdpa vs eager "
        f"{a['sdpa_vs_eager_speedup']:.2f}x, vs reference arithmetic {a['sdpa_vs_reference_speedup']:.2f}x"
    )
    if "memory" in res:
        m = res["memory"]
        for k in ("no_checkpointing", "checkpointing"):
            print(
                f"memory {k:16s} ({c['memory_layers']} layers, batch {c['memory_batch']}): held after forward "
                f"{m[k]['after_forward_bytes'] / 2**20:7.1f} MiB, peak forward+backward "
                f"{m[k]['peak_forward_backward_bytes'] / 2**20:7.1f} MiB, peak in AdamW step "
                f"{m[k]['peak_optimizer_step_bytes'] / 2**20:7.1f} MiB"
            )


if __name__ == "__main__":
    main()
