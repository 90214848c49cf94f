"""CPU training-step benchmark of glm-base (12 layers, hidden 768, 12 heads, head dim 64, V 30592).

    python bench/bench_train.py [--preset glm-base] [--layers N] [--batch 2] [--seq 512] [--rounds 3]
                                [--dropout 0.0] [--threads 1] [--allocator reuse|system] [--json OUT]

One run takes about 12 minutes on the shared 2-core machine (`--layers 2 --batch 1` about 2 minutes).
`--preset glm-large` gives the glm-large shape (24 x 1024, 16 heads); `--dropout 0.1` the original
pretraining's hidden and attention dropout in every variant (then SDPA on CPU leaves its fused kernel).

One training step = forward + loss + backward + AdamW step, fp32 unless stated, dropout 0 in every variant
unless `--dropout` (so every variant runs the same arithmetic and the implementation decides the speed), on a pretraining-like
layout (Part A = 50-95% of each row, loss on Part B only, as the GLM objective has it). Variants, all in one
process on the same batch:

  glm              ours as `PretrainModule` trains: sdpa with the boolean GLM mask, the tied head projected
                   at Part-B positions only (`GLM.forward(logits_index=)`), `blank_infilling_loss`, torch's
                   fused AdamW (the toolkit's default where torch has the kernel)
  glm_eager        the same with the explicit attention (`model.attention=eager`)
  glm_causal       the same with sep=None (a causal boolean mask: what the GLM mask costs)
  glm_full_head    the same with the head over every position and the loss masked to Part B (what the
                   Part-B projection saves; FLOP/s of the whole model formula)
  reference        bench/reference_glm.py: the 2021 code's step -- float 0/1 mask applied as
                   S*m - 65504*(1-m), nn.Softmax, view/permute/contiguous heads, written-out tanh GELU,
                   logits at every position, loss masked to Part B, torch.optim.AdamW's per-parameter loop
  gpt              bench/reference_glm.py CausalGPT: plain pre-LN GPT of the same size, sdpa is_causal=True
                   (no mask tensor), LM loss at every position (what a GPT needs), fused AdamW
  glm_adamw_loop   glm with torch.optim.AdamW's per-parameter loop instead of the fused kernel
  glm_bf16         glm under torch.autocast("cpu", bfloat16)
  glm_ckpt         glm with activation checkpointing (glm.distributed.checkpoint_blocks)

Timing: variants are interleaved round by round (per round and variant, `--settle-steps` untimed steps then
one timed step; each round starts one variant later, so no variant always follows the same neighbour);
figures are medians over rounds and ratios medians of the per-round ratios, so slow drift cancels. The
development machine's 2 cores are shared by several engineers, so the figures are CPU seconds of this
process (`time.process_time`) with one intra-op thread (`--threads 1`: every kernel, forward and backward,
runs in the calling thread), which other users' load moves far less than the wall clock (wall seconds are
reported beside them). Only ratios are meaningful on this machine. The host allocator is run.py's default
(`allocator=reuse`, glm/utils/allocator.py); `--allocator system` gives the C library's defaults.

FLOP/s: executed training FLOPs (3x forward) per CPU second: `GLMConfig.flops_per_token(S)` per token,
minus the head's 6 V h FLOPs at every position where a variant does not project it (glm's Part-A
positions), against the fp32 matmul ceiling: a 2048^3 torch.mm timed the same way inside every round. The
step is GEMM-bound on this CPU, so `reference_speedup_bound_at_ceiling` (the reference's step time over
glm's executed FLOPs at that ceiling) is the most any implementation doing glm's arithmetic could beat the
reference by. After the rounds, the model's own GEMM shapes (QKV, attention output, MLP in/out, head;
forward and both backward products) at this batch are timed in fp32 and bf16: their bf16/fp32 ratio bounds
what bf16 autocast can give a whole step on this CPU.

Memory: a TorchDispatchMode records every tensor storage created during one step and drops it when its
storage is freed (weakref on the storage), giving the exact peak of live bytes allocated by the step
(activations, gradients, temporaries; parameters and optimizer state exist before the step and are not
counted, nor are views of existing storages such as a weight's transpose) and the bytes still held when
the forward ends (what autograd saved for backward), for glm without and with activation checkpointing
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

from glm.distributed import checkpoint_blocks as _checkpoint_blocks
from glm.model import GLM, GLMConfig
from glm.tasks.part_b import part_b_index, part_b_logits
from glm.tasks.pretrain import blank_infilling_loss
from glm.utils.allocator import ALLOCATORS, set_host_allocator

Batch = dict[str, torch.Tensor]


def pretraining_batch(cfg: GLMConfig, batch: int, seq: int, seed: int = 0) -> Batch:
    """Random ids with a pretraining-like layout: Part A = 50-95% of the row, Part B block positions, the
    loss on Part B."""
    g = torch.Generator().manual_seed(seed)
    sep = torch.randint(int(0.5 * seq), int(0.95 * seq), (batch,), generator=g)
    ar = torch.arange(seq)
    part_a = ar[None] < sep[:, None]
    pos = torch.where(part_a, ar[None], sep[:, None] - 1)
    blocks = torch.where(part_a, 0, ar[None] - sep[:, None] + 1)
    return {
        "input_ids": torch.randint(0, cfg.vocab_size, (batch, seq), generator=g),
        "targets": torch.randint(0, cfg.vocab_size, (batch, seq), generator=g),
        "loss_mask": (~part_a).float(),
        "position_ids": torch.stack([pos, blocks], dim=1),
        "sep": sep,
    }


def glm_loss(model: GLM, data: Batch, part_b_head: bool = True, causal: bool = False) -> torch.Tensor:
    """Our pretraining loss: the head at Part B only (as `PretrainModule.part_b_loss`) or everywhere."""
    sep = None if causal else data["sep"]
    if not part_b_head:
        logits = model(data["input_ids"], data["position_ids"], sep=sep).logits
        total, count = blank_infilling_loss(logits, data["targets"], data["loss_mask"])
        return total / count
    logits, targets, mask, _ = part_b_logits(model, {**data, "sep": sep})
    total, count = blank_infilling_loss(logits, targets, mask)
    return total / count


def reference_loss(model: ReferenceGLM, data: Batch) -> torch.Tensor:
    """The 2021 step: logits at every position, per-token CE in fp32, masked to Part B."""
    logits = model(data["input_ids"], data["position_ids"], data["sep"])
    total, count = blank_infilling_loss(logits, data["targets"], data["loss_mask"])
    return total / count


def gpt_loss(model: CausalGPT, data: Batch) -> torch.Tensor:
    """A GPT's LM loss: every position predicts."""
    logits = model(data["input_ids"])
    return F.cross_entropy(logits.flatten(0, 1).float(), data["targets"].flatten())


def adamw(model: torch.nn.Module, fused: bool) -> torch.optim.Optimizer:
    kind = {"fused": True} if fused else {"fused": False, "foreach": False}  # 2021: the per-parameter loop
    return torch.optim.AdamW(
        model.parameters(), lr=1e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1, **kind
    )


def make_step(
    model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor], fused: bool = True, bf16: bool = False
) -> Callable[[], None]:
    """One training step: zero grads, forward + loss under optional bf16 autocast, backward, AdamW."""
    opt = adamw(model, fused)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn()
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


def step_memory(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor]) -> dict:
    opt = adamw(model, fused=True)
    for p in model.parameters():  # create the AdamW state before the measurement (it lives across steps)
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    with LiveBytes() as mem:
        loss = loss_fn()
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
    """Step memory of a `layers`-deep glm step without and with activation checkpointing."""
    cfg = GLMConfig.from_dict({**cfg.to_dict(), "num_layers": layers})
    data = pretraining_batch(cfg, batch, seq, seed=1)
    out = {}
    for name, checkpointing in (("no_checkpointing", False), ("checkpointing", True)):
        torch.manual_seed(0)
        model = GLM(cfg)
        if checkpointing:
            _checkpoint_blocks(model)
        out[name] = step_memory(model, lambda model=model: glm_loss(model, data))
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


def gemm_ceilings(cfg: GLMConfig, tokens: int, head_tokens: int) -> dict:
    """fp32 and bf16 GFLOP/s of the model's own GEMMs at this batch (forward ``x @ W^T`` and the two
    backward products), best of 3 CPU-timed calls each, and their FLOP-weighted totals."""
    h, ffn, V = cfg.hidden_size, cfg.ffn_size, cfg.vocab_size
    shapes = {  # name: (rows, in, out)
        "qkv": (tokens, h, 3 * h),
        "attention_out": (tokens, h, h),
        "mlp_in": (tokens, h, ffn),
        "mlp_out": (tokens, ffn, h),
        "head": (head_tokens, h, V),
    }
    g = torch.Generator().manual_seed(3)
    out: dict = {"per_shape": {}}
    seconds = {"fp32": 0.0, "bf16": 0.0}
    flops_total = 0.0
    for name, (m, k, n) in shapes.items():
        x, w, dy = (torch.randn(a, b, generator=g) for a, b in ((m, k), (n, k), (m, n)))
        row = {}
        for dtype_name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            xs, ws, dys = x.to(dt), w.to(dt), dy.to(dt)
            calls = (  # y = x W^T, dx = dy W, dW = dy^T x
                lambda xs=xs, ws=ws: xs @ ws.t(),
                lambda dys=dys, ws=ws: dys @ ws,
                lambda dys=dys, xs=xs: dys.t() @ xs,
            )
            best = 0.0
            for fn in calls:
                fn()
                times = []
                for _ in range(3):
                    t0 = time.process_time()
                    fn()
                    times.append(time.process_time() - t0)
                best += min(times)
            row[f"{dtype_name}_gflops"] = 3 * 2 * m * k * n / best / 1e9
            seconds[dtype_name] += best
        flops_total += 3 * 2 * m * k * n
        row["bf16_vs_fp32"] = row["bf16_gflops"] / row["fp32_gflops"]
        out["per_shape"][name] = row
    out["fp32_gflops"] = flops_total / seconds["fp32"] / 1e9
    out["bf16_gflops"] = flops_total / seconds["bf16"] / 1e9
    out["bf16_vs_fp32"] = seconds["fp32"] / seconds["bf16"]
    return out


def matmul_ceiling_fn(n: int = 2048) -> tuple[Callable[[], None], float]:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return (lambda: torch.mm(a, b)), 2.0 * n**3


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--preset", default="glm-base", help="GLMConfig preset giving the shape (glm-large: 24 x 1024)"
    )
    p.add_argument("--layers", type=int, default=None, help="override the preset's layer count")
    p.add_argument(
        "--dropout",
        type=float,
        default=0.0,
        help="hidden and attention dropout of every variant (the original pretraining used 0.1)",
    )
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--settle-steps",
        type=int,
        default=1,
        help="untimed steps of a variant before its timed one, per round",
    )
    p.add_argument(
        "--threads", type=int, default=1, help="intra-op threads (1: CPU time is all in this thread)"
    )
    p.add_argument(
        "--memory-layers", type=int, default=12, help="layers of the model whose step memory is measured"
    )
    p.add_argument("--memory-batch", type=int, default=2)
    p.add_argument("--attention-repeats", type=int, default=15)
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument(
        "--only", default=None, help="comma-separated variants to time (e.g. glm for an allocator comparison)"
    )
    p.add_argument(
        "--allocator", choices=ALLOCATORS, default="reuse", help="host malloc, as run.py's allocator key"
    )
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    allocator_applied = set_host_allocator(args.allocator)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = GLMConfig.from_name(
        args.preset,
        **({"num_layers": args.layers} if args.layers else {}),
        hidden_dropout=args.dropout,
        attention_dropout=args.dropout,
        max_sequence_length=max(512, args.seq),
    )
    B, S = args.batch, args.seq
    data = pretraining_batch(cfg, B, S)
    ids, pos, sep = data["input_ids"], data["position_ids"], data["sep"]
    print(
        f"{args.preset}-shaped: {cfg.num_layers} layers, h={cfg.hidden_size}, heads="
        f"{cfg.num_attention_heads}, V={cfg.vocab_size}; batch {B} x seq {S}; fp32, dropout {args.dropout}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, allocator "
        f"{args.allocator if allocator_applied else 'system'}",
        flush=True,
    )

    known = [
        "glm",
        "glm_eager",
        "glm_causal",
        "glm_full_head",
        "reference",
        "gpt",
        "glm_adamw_loop",
        "glm_bf16",
        "glm_ckpt",
    ]
    wanted = args.only.split(",") if args.only else known
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        p.error(f"--only: unknown variant(s) {unknown}; known: {sorted(known)}")
    ours = GLM(cfg)
    ref = ReferenceGLM(cfg)
    ref.load_state_dict(ours.state_dict())
    ckpt = gpt = None  # built only when timed (a glm-large model with its AdamW state is ~5 GB)
    if "glm_ckpt" in wanted:
        ckpt = GLM(cfg)
        ckpt.load_state_dict(ours.state_dict())
        _checkpoint_blocks(ckpt)
    if "gpt" in wanted:
        gpt = CausalGPT(cfg)
    with torch.no_grad():  # the reference computes the same function before anything is timed
        ours.eval(), ref.eval()  # (dropout off for the check)
        diff = (ref(ids, pos, sep) - ours(ids, pos, sep=sep).logits).abs().max().item()
        loss_diff = abs(glm_loss(ours, data).item() - reference_loss(ref, data).item())
        ours.train(), ref.train()
    print(f"reference vs ours: max |logit diff| = {diff:.2e}, |loss diff| = {loss_diff:.2e}")
    assert diff < 1e-3 and loss_diff < 1e-4, (diff, loss_diff)

    def with_attention(impl: str, fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            ours.config.attention = impl
            return fn()

        return run

    builders: dict[str, Callable[[], Callable[[], None]]] = {
        "glm": lambda: make_step(ours, with_attention("sdpa", lambda: glm_loss(ours, data))),
        "glm_eager": lambda: make_step(ours, with_attention("eager", lambda: glm_loss(ours, data))),
        "glm_causal": lambda: make_step(
            ours, with_attention("sdpa", lambda: glm_loss(ours, data, causal=True))
        ),
        "glm_full_head": lambda: make_step(ours, with_attention("sdpa", lambda: glm_loss(ours, data, False))),
        "reference": lambda: make_step(ref, lambda: reference_loss(ref, data), fused=False),
        "gpt": lambda: make_step(gpt, lambda: gpt_loss(gpt, data)),
        "glm_adamw_loop": lambda: make_step(
            ours, with_attention("sdpa", lambda: glm_loss(ours, data)), fused=False
        ),
        "glm_bf16": lambda: make_step(ours, with_attention("sdpa", lambda: glm_loss(ours, data)), bf16=True),
        "glm_ckpt": lambda: make_step(ckpt, lambda: glm_loss(ckpt, data)),
    }
    variants = {name: builders[name]() for name in known if name in wanted}
    report_partial = bool(args.only)
    mm, mm_flops = matmul_ceiling_fn()
    times: dict[str, list[float]] = {name: [] for name in [*variants, "matmul"]}
    wall: dict[str, list[float]] = {name: [] for name in times}
    for fn in [*variants.values(), mm]:
        fn()  # warm-up
    start = time.perf_counter()
    order = [*variants.items(), ("matmul", mm)]
    for r in range(args.rounds):
        # each round starts one variant later, and each variant first takes untimed steps of its own, so no
        # variant always follows the same neighbour (whose heap layout and caches it would inherit)
        for name, fn in order[r % len(order) :] + order[: r % len(order)]:
            for _ in range(args.settle_steps):
                fn()
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
    head_tokens = B * part_b_index(data["loss_mask"])[0].shape[1]  # rows x largest Part B (padded index)
    head_flops = 6 * cfg.vocab_size * cfg.hidden_size  # training FLOPs of the tied head per position
    full_flops = tokens * cfg.flops_per_token(S)
    executed = {
        "glm": full_flops - (tokens - head_tokens) * head_flops,
        "glm_full_head": full_flops,
        "reference": full_flops,
        "gpt": full_flops,
    }
    ceiling = mm_flops / med["matmul"]

    def paired(a: str, b: str) -> float:
        """Median over rounds of t_a / t_b measured in the same round (drifting load cancels)."""
        return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

    if report_partial:  # a subset of the variants: their own figures, and their step times over glm's
        res = {
            "allocator": args.allocator if allocator_applied else "system",
            "preset": args.preset,
            "dropout": args.dropout,
            "step_cpu_s_median": med,
            "tokens_per_s": {k: tokens / v for k, v in med.items() if k != "matmul"},
            "flops_vs_matmul_ceiling": {k: f / med[k] / ceiling for k, f in executed.items() if k in med},
            "step_time_over_glm": {k: paired(k, "glm") for k in variants if k != "glm" and "glm" in variants},
        }
        print(json.dumps(res, indent=2))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(res, indent=2))
        return res
    gemm = gemm_ceilings(cfg, tokens, head_tokens)
    res: dict = {
        "config": {
            "preset": args.preset,
            "dropout": args.dropout,
            "layers": cfg.num_layers,
            "hidden": cfg.hidden_size,
            "heads": cfg.num_attention_heads,
            "vocab": cfg.vocab_size,
            "batch": B,
            "seq": S,
            "rounds": args.rounds,
            "settle_steps": args.settle_steps,
            "threads": torch.get_num_threads(),
            "memory_layers": args.memory_layers,
            "memory_batch": args.memory_batch,
            "torch": torch.__version__,
            "allocator": args.allocator if allocator_applied else "system",
            "seps": sep.tolist(),
            "head_positions_glm": head_tokens,
            "timing_s": round(time.perf_counter() - start, 1),
        },
        "step_cpu_s_median": med,
        "step_cpu_s_min": {k: min(v) for k, v in times.items()},
        "step_wall_s_median": {k: statistics.median(v) for k, v in wall.items()},
        "load_average_1min": os.getloadavg()[0],
        "tokens_per_s": {k: tokens / v for k, v in med.items() if k != "matmul"},
        "matmul_fp32_gflops": ceiling / 1e9,
        "model_gemms": gemm,
        "train_gflops": {k: f / med[k] / 1e9 for k, f in executed.items()},
    }

    res["ratios"] = {
        "glm_mask_cost_vs_causal_mask": paired("glm", "glm_causal") - 1.0,
        "glm_vs_gpt_step_time": paired("glm", "gpt"),
        "glm_full_head_vs_gpt_step_time": paired("glm_full_head", "gpt"),
        "ours_vs_reference_speedup": paired("reference", "glm"),
        "ours_full_head_vs_reference_speedup": paired("reference", "glm_full_head"),
        "part_b_head_speedup": paired("glm_full_head", "glm"),
        "sdpa_vs_eager_speedup": paired("glm_eager", "glm"),
        "bf16_vs_fp32_speedup": paired("glm", "glm_bf16"),
        "fused_adamw_speedup": paired("glm_adamw_loop", "glm"),
        "checkpointing_time_cost": paired("glm_ckpt", "glm") - 1.0,
        **{f"{k}_flops_vs_matmul_ceiling": res["train_gflops"][k] * 1e9 / ceiling for k in executed},
        # the most any implementation doing glm's arithmetic could beat the reference by: its whole step at
        # the fp32 matmul ceiling, nothing else costing time (the step is GEMM-bound on this CPU)
        "reference_speedup_bound_at_ceiling": med["reference"] * ceiling / executed["glm"],
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
    g = res["model_gemms"]
    print(
        f"fp32 matmul ceiling (2048^3 mm): {res['matmul_fp32_gflops']:.1f} GFLOP/s; the model's GEMM shapes "
        f"(best of 3): fp32 {g['fp32_gflops']:.1f}, bf16 {g['bf16_gflops']:.1f} GFLOP/s ({g['bf16_vs_fp32']:.2f}x); "
        "executed training GFLOP/s: " + ", ".join(f"{k} {v:.1f}" for k, v in res["train_gflops"].items())
    )
    r = res["ratios"]
    print(
        f"GLM mask cost over a causal mask:   {100 * r['glm_mask_cost_vs_causal_mask']:+.1f}% (target <= 5%)"
    )
    print(
        f"step time GLM / GPT:                {r['glm_vs_gpt_step_time']:.2f} "
        f"(head over every position: {r['glm_full_head_vs_gpt_step_time']:.2f})"
    )
    print(
        f"ours vs reference-style 2021 step:  {r['ours_vs_reference_speedup']:.2f}x (target >= 1.5x; head over "
        f"every position {r['ours_full_head_vs_reference_speedup']:.2f}x; bound with glm's FLOPs at the "
        f"matmul ceiling {r['reference_speedup_bound_at_ceiling']:.2f}x)"
    )
    print(f"head at Part B only:                {r['part_b_head_speedup']:.2f}x")
    print(f"fused AdamW vs the per-parameter loop: {r['fused_adamw_speedup']:.2f}x")
    print(f"sdpa vs eager:                      {r['sdpa_vs_eager_speedup']:.2f}x")
    print(
        f"bf16 autocast vs fp32:              {r['bf16_vs_fp32_speedup']:.2f}x (target >= 2.5x; the model's "
        f"GEMMs alone: {g['bf16_vs_fp32']:.2f}x)"
    )
    print(
        "training FLOP/s / matmul ceiling:   "
        + ", ".join(
            f"{k} {100 * r[f'{k}_flops_vs_matmul_ceiling']:.0f}%"
            for k in ("glm", "glm_full_head", "gpt", "reference")
        )
        + " (target >= 85%)"
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
