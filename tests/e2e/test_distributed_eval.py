"""Evaluation under 2 processes (DDP, and FSDP2 in the slow suite) equals one process: seq2seq decoding +
ROUGE, LAMBADA, perplexity, SuperGLUE cloze metrics and every written file, with each rank evaluating about
half of each split. Odd split sizes (7 XSum pairs, 9 LAMBADA lines, 11 RTE / MultiRC examples) make the
evaluation sampler pad one rank with a repeated example, which must not be counted twice.

The multi-process runs are subprocesses of ``tests/e2e/scripts/dist_eval.py`` (Lightning's DDP launcher
re-runs the launching command, docs/lightning-hydra-notes.md R6); the 1-process reference runs the same code in this process.
A glm-tiny trained for a few steps here (so that ROUGE is not 0) is loaded by every module of every run.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from conftest import need_data, run_dist_script

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "e2e" / "scripts" / "dist_eval.py"
sys.path.insert(0, str(SCRIPT.parent))

from dist_eval import N_LAMBADA, N_MULTIRC, N_RTE, N_XSUM, evaluate, train_weights  # noqa: E402

DATA = [
    "xsum/test.jsonl",
    "lambada/lambada_test.jsonl",
    "wikitext-2/wiki.test.tokens",
    "superglue/RTE/val.jsonl",
    "superglue/RTE/test.jsonl",
    "superglue/MultiRC/val.jsonl",
    "tokenizers/bert-base-uncased/vocab.txt",
]
# what each run evaluated: split size per run (ppl: the windows of the slice, checked against 1 process)
SIZES = {
    "xsum_val": N_XSUM,
    "xsum_test": N_XSUM,
    "lambada": N_LAMBADA,
    "rte_val": N_RTE,
    "rte_predict": N_RTE,
    "multirc_val": N_MULTIRC,
}
# sums of float CE over differently batched (differently padded) rows: equal to float rounding only
FLOAT_SUMS = {"test/loss", "val/loss", "val/ppl", "val/adjusted_ppl"}


def _run(out: Path, weights: Path, *args: str, timeout: int = 400) -> dict:
    return run_dist_script(SCRIPT, out, "--weights", str(weights), *args, timeout=timeout)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for rel in DATA:
        need_data(rel)
    path = tmp_path_factory.mktemp("dist_eval") / "weights.pt"
    train_weights(path)
    return path


@pytest.fixture(scope="module")
def single(weights: Path) -> tuple[Path, dict]:
    """The reference: one process, run here (a plain single-device Trainer; saves an interpreter start)."""
    import torch

    out = weights.parent / "single"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each DDP rank runs
    try:
        return out, evaluate(weights, out)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ddp(weights: Path) -> tuple[Path, dict]:
    out = weights.parent / "ddp"
    return out, _run(out, weights, "--devices", "2", "--strategy", "ddp")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _first_xsum_summaries(n: int) -> list[str]:
    out = []
    with need_data("xsum/test.jsonl").open(encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if rec["document"].strip() and rec["summary"].strip():
                out.append(rec["summary"].replace("\n", " "))
            if len(out) == n:
                return out
    raise AssertionError(f"xsum/test.jsonl has fewer than {n} usable records")


def _check_same_as_one_process(single: tuple[Path, dict], multi: tuple[Path, dict]) -> None:
    (one_dir, one), (two_dir, two) = single, multi
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert two["checksums"] == one["checksums"]  # the same model everywhere

    # every split was shared: each rank evaluated half (rounded up: the sampler pads with a repeat)
    for name, n in {**SIZES, "ppl": one["counts"]["ppl"][0]}.items():
        assert one["counts"][name] == [n], name
        assert two["counts"][name] == [math.ceil(n / 2)] * 2, (name, two["counts"][name])

    # the metrics: counts and accuracies exactly, ROUGE exactly (same hypotheses), CE sums to rounding
    assert set(two["metrics"]) == set(one["metrics"])
    for run, values in one["metrics"].items():
        assert set(two["metrics"][run]) == set(values), run
        for key, v in values.items():
            got = two["metrics"][run][key]
            if key in FLOAT_SUMS:
                assert got == pytest.approx(v, rel=1e-6), (run, key)
            else:
                assert got == v, (run, key)
    m = one["metrics"]
    assert m["lambada"]["test/num_samples"] == N_LAMBADA
    assert m["xsum_test"]["test/rouge1"] > 0.0  # the trained model's words overlap the references

    # seq2seq files: one line per pair, in file order, the same hypotheses
    refs = (two_dir / "xsum" / "test.jsonl.refs").read_text(encoding="utf-8").splitlines()
    assert refs == _first_xsum_summaries(N_XSUM)
    hyps = (two_dir / "xsum" / "test.jsonl.hyps").read_text(encoding="utf-8").splitlines()
    assert hyps == (one_dir / "xsum" / "test.jsonl.hyps").read_text(encoding="utf-8").splitlines()
    assert len(hyps) == N_XSUM and all(h.strip() for h in hyps)

    # cloze files: every example once, in order; same predictions, scores to float rounding
    for task, n in (("rte", N_RTE), ("multirc", N_MULTIRC)):
        a, b = (
            _lines(one_dir / task / "val_predictions.jsonl"),
            _lines(two_dir / task / "val_predictions.jsonl"),
        )
        assert len(b) == n and [r["guid"] for r in b] == [r["guid"] for r in a]
        assert len({r["guid"] for r in b}) == n
        for x, y in zip(a, b, strict=True):
            assert (y["idx"], y["prediction"], y["label"]) == (x["idx"], x["prediction"], x["label"])
            assert y["scores"] == pytest.approx(x["scores"], abs=1e-5)
        va = json.loads((one_dir / task / "val_metrics.json").read_text())
        vb = json.loads((two_dir / task / "val_metrics.json").read_text())
        assert vb == va
    assert [r["idx"] for r in _lines(two_dir / "rte" / "val_predictions.jsonl")] == list(range(N_RTE))
    submission = _lines(two_dir / "rte" / "test" / "RTE.jsonl")
    assert submission == _lines(one_dir / "rte" / "test" / "RTE.jsonl")
    assert [r["idx"] for r in submission] == list(range(N_RTE))


def test_ddp_evaluation_equals_one_process(single: tuple[Path, dict], ddp: tuple[Path, dict]) -> None:
    _check_same_as_one_process(single, ddp)


@pytest.mark.slow
def test_fsdp2_evaluation_equals_one_process(single: tuple[Path, dict], weights: Path) -> None:
    """FSDP2 gathers the weights in every forward pass: decoding must keep both ranks stepping together."""
    out = weights.parent / "fsdp"
    _check_same_as_one_process(single, (out, _run(out, weights, "--devices", "2", "--strategy", "fsdp")))


def test_eval_sampler_shards_with_padding() -> None:
    from types import SimpleNamespace

    from glm.data.sampling import eval_sampler

    data = list(range(7))
    assert eval_sampler(data, None) is None
    assert eval_sampler(data, SimpleNamespace(world_size=1, global_rank=0)) is None
    shards = [list(eval_sampler(data, SimpleNamespace(world_size=2, global_rank=r))) for r in (0, 1)]
    assert shards == [[0, 2, 4, 6], [1, 3, 5, 0]]  # in order within a rank, padded with a repeat


def test_gather_by_index_one_process_drops_repeats_and_sorts() -> None:
    from glm.tasks.evaluation import all_gather_objects, gather_by_index

    class NoTrainer:
        _trainer = None

    records = [(3, "c"), (1, "a"), (3, "c again"), (2, "b")]
    assert all_gather_objects(NoTrainer(), records) == [records]
    assert gather_by_index(NoTrainer(), records, index=lambda r: r[0]) == [(1, "a"), (2, "b"), (3, "c")]
