"""Cloze scoring throughput on CPU: one-pass multi-token scoring vs a token-by-token loop.

    python bench/bench_cloze.py [--task copa] [--layers 12] [--examples 16] [--loop-examples 3] [--json PATH]

Model: glm-base shape (hidden 768, 12 heads, BERT vocabulary V 30592, fp32, random weights: throughput
does not depend on the values); `--layers` fewer than 12 is reported as such. Inputs: the first real
validation examples of a multi-token task (COPA: 2 candidates each), laid out by `ClozeDataModule`.

- one pass: `ClozeModule.score` on collated batches (`--batch` examples, all candidates in one forward,
  every answer token scored from that forward via the sep mask, docs/original-glm.md §7.1);
- loop: per candidate and per answer slot t (the k answer tokens + [eop]) one plain forward pass of
  `[CLS] A eos [sop] a1..a_t` (its own prefix, nothing cached), reading log p(target) at the last position.
Both must give the same scores (max |difference| is printed). Prints examples/s for both and the ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from glm.data.cloze import ClozeDataModule, collate_cloze
from glm.data.paths import data_root
from glm.tasks.cloze import ClozeModule
from glm.tokenizer import load_tokenizer


def loop_scores(model: torch.nn.Module, feature) -> list[float]:
    """Token-by-token reference: one forward per answer slot of each candidate, fresh prefix every time."""
    out = []
    for seq in feature.sequences:
        sep = int(seq["sep"])
        ids = torch.from_numpy(seq["input_ids"])
        pos = torch.from_numpy(seq["position_ids"])
        targets = torch.from_numpy(seq["targets"])
        total = 0.0
        for t in range(sep, len(ids)):  # slot t predicts targets[t] from input [..., ids[t]]
            logits = model(ids[None, : t + 1], pos[None, :, : t + 1], sep=sep).logits[0, -1]
            total += float(logits.float().log_softmax(-1)[targets[t]])
        out.append(total)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="copa", help="a multi-token task: copa, wsc or record")
    p.add_argument("--layers", type=int, default=12, help="transformer layers (glm-base has 12)")
    p.add_argument("--examples", type=int, default=16, help="examples scored by the one-pass scorer")
    p.add_argument("--loop-examples", type=int, default=3, help="examples scored by the token-by-token loop")
    p.add_argument("--batch", type=int, default=8, help="examples per one-pass batch")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    root = data_root()
    tok = load_tokenizer({"kind": "bert", "path": str(root / "tokenizers" / "bert-base-uncased")})
    dm = ClozeDataModule(args.task, tok, root, max_eval_examples=args.examples)
    if dm.scoring != "multi":
        raise SystemExit(f"--task {args.task} is a single-token task; use copa, wsc or record")
    features = list(dm.load_split("val"))
    module = ClozeModule(
        model={"preset": "glm-base", "num_layers": args.layers, "vocab_size": tok.vocab_size},
        optimizer={},
        scheduler={},
        task=args.task,
    )
    module.configure_model()
    module.eval()
    model = module.model
    batches = [
        collate_cloze(features[i : i + args.batch], tok.eos_id) for i in range(0, len(features), args.batch)
    ]
    n_loop = min(args.loop_examples, len(features))

    with torch.inference_mode():
        module.score(batches[0])  # warm-up (allocator, kernels)
        start = time.perf_counter()
        one_pass = [module.score(b)[0] for b in batches]
        t_one = time.perf_counter() - start
        start = time.perf_counter()
        looped = [loop_scores(model, f) for f in features[:n_loop]]
        t_loop = time.perf_counter() - start

    flat = torch.cat(one_pass)
    diff = max(abs(float(flat[i, c]) - s) for i in range(n_loop) for c, s in enumerate(looped[i]))
    candidates = sum(len(f.sequences) for f in features)
    answer_slots = sum(int(s["loss_mask"].sum()) for f in features for s in f.sequences)
    result = {
        "task": args.task,
        "model": f"glm-base shape, {args.layers} layers, hidden 768, V {tok.vocab_size}, fp32",
        "threads": torch.get_num_threads(),
        "examples": len(features),
        "loop_examples": n_loop,
        "candidates_per_example": candidates / len(features),
        "answer_slots_per_candidate": answer_slots / candidates,
        "one_pass_examples_per_s": len(features) / t_one,
        "loop_examples_per_s": n_loop / t_loop,
        "max_abs_score_diff": diff,
    }
    result["speedup"] = result["one_pass_examples_per_s"] / result["loop_examples_per_s"]
    print(
        f"{result['model']}, {result['threads']} threads, {args.task} val: "
        f"{result['candidates_per_example']:.1f} candidates/example, "
        f"{result['answer_slots_per_candidate']:.1f} scored slots/candidate"
    )
    print(
        f"one pass (ClozeModule.score, batch {args.batch}): {result['one_pass_examples_per_s']:8.2f} examples/s "
        f"({len(features)} examples)"
    )
    print(
        f"token-by-token loop:                       {result['loop_examples_per_s']:8.2f} examples/s "
        f"({n_loop} examples)"
    )
    print(f"ratio: {result['speedup']:.1f}x   max |score difference| {diff:.2e}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
