"""Seq2seq finetuning (summarisation): label-smoothed teacher forcing, beam-search decoding, ROUGE.

Training (docs/original-glm.md §8.2): `loss_t = (1 - eps) * ce_t + eps * mean_V(-log_softmax(logits_t))`, averaged over
the target slots; this is exactly `torch.nn.functional.cross_entropy(..., label_smoothing=eps)`.
Validation/test decode every source with `glm.generation` (the decoding settings of the experiment),
drop eop/pad ids, detokenise and score ROUGE-1/2/Lsum F1 with `rouge_score` (stemming) in process,
logged as `val/rouge1`, `val/rouge2`, `val/rougeL` (Lsum); test writes `test.jsonl.hyps` /
`test.jsonl.refs` (one line each) into the run dir. Under several processes each rank decodes and scores
its share of the split; the per-example results are gathered by example index (`glm.tasks.evaluation`),
so the metrics and files are those of one process (written by rank 0).

ROUGE post-processing (docs/original-glm.md §8.3, the original `rouge_metric`): texts are split into sentences on
`[SEP]` only (a text without it is one sentence); with `rouge_postprocess`
predicted sentences of at most 4 words are dropped and a predicted sentence is removed when more than
70% of its word set already occurs in the earlier sentences (`|A & H| / |A|`, H = the words of every
earlier sentence that passed the length filter, removed ones included, as in the original).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from glm.compat import attached_trainer
from glm.generation import GenerationConfig, generate
from glm.tasks.base import GLMTaskModule
from glm.tasks.evaluation import EvaluationReport, finish_evaluation, world_size
from glm.tasks.lm_eval import check_positions
from glm.tasks.part_b import part_b_logits

log = logging.getLogger(__name__)


def label_smoothed_token_loss(logits: Tensor, targets: Tensor, eps: float = 0.1) -> Tensor:
    """docs/original-glm.md §8.2 `loss_t` over all V logits, `[B, K]`; in fp32 for half/bf16 logits (float64 stays float64,
    so the float64 tests compare packed and unpacked to ~1e-12)."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    per_tok = F.cross_entropy(
        logits.to(dtype).flatten(0, 1), targets.flatten(), reduction="none", label_smoothing=eps
    )
    return per_tok.view(targets.shape)


def label_smoothed_loss(logits: Tensor, targets: Tensor, loss_mask: Tensor, eps: float = 0.1) -> Tensor:
    """docs/original-glm.md §8.2 over all V logits; `sum(loss_t * mask_t) / sum(mask_t)`."""
    return masked_mean(label_smoothed_token_loss(logits, targets, eps), loss_mask)


def masked_mean(per_tok: Tensor, mask: Tensor) -> Tensor:
    """`sum(loss_t * mask_t) / sum(mask_t)` (0 without any target): token-weighted, so the same samples give
    the same loss padded one per row or packed into fewer rows."""
    mask = mask.to(per_tok.dtype)
    return (per_tok * mask).sum() / mask.sum().clamp(min=1.0)


def split_sentences(text: str) -> list[str]:
    """Sentences of a summary for ROUGE: split on `[SEP]` only (docs/original-glm.md §8.3; the BERT-tokenised CNN/DM
    targets carry it). Text without `[SEP]` is one sentence, as in the original `rouge_metric`: its
    length filter then sees the whole summary, and ROUGE-Lsum equals ROUGE-L on it."""
    return [p.strip() for p in text.split("[SEP]") if p.strip()]


def postprocess_prediction(sentences: list[str], min_words: int = 5, max_overlap: float = 0.7) -> list[str]:
    """Drop sentences of fewer than `min_words` words, then every sentence whose (lower-cased) word set has
    more than `max_overlap` of its words among the words of all earlier sentences (docs/original-glm.md §8.3: "earlier
    ones"; as the original `remove_duplicate`, the earlier sentences include removed duplicates, not the
    short ones dropped first)."""
    kept: list[str] = []
    seen: set[str] = set()
    for s in sentences:
        if len(s.split()) < min_words:
            continue
        words = set(s.lower().split())
        if len(words & seen) / len(words) <= max_overlap:
            kept.append(s)
        seen |= words
    return kept


class RougeMetric:
    """ROUGE-1/2/Lsum F1 (x100 not applied: values in [0, 1]) averaged over examples, via `rouge_score`."""

    def __init__(self, postprocess: bool = True) -> None:
        from rouge_score import rouge_scorer

        self.scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeLsum"], use_stemmer=True)
        self.postprocess = postprocess

    def __call__(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
        return self.average([self.score_one(p, r) for p, r in zip(predictions, references, strict=True)])

    def score_one(self, prediction: str, reference: str) -> dict[str, float]:
        """ROUGE-1/2/Lsum F1 of one example (`rougeL` is Lsum)."""
        p = split_sentences(prediction)
        if self.postprocess:
            p = postprocess_prediction(p)
        scores = self.scorer.score("\n".join(split_sentences(reference)), "\n".join(p))
        return {
            "rouge1": scores["rouge1"].fmeasure,
            "rouge2": scores["rouge2"].fmeasure,
            "rougeL": scores["rougeLsum"].fmeasure,
        }

    @staticmethod
    def average(per_example: list[dict[str, float]]) -> dict[str, float]:
        """Mean of `score_one` results, summed in the given order (0 for none)."""
        totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
        for scores in per_example:
            for k in totals:
                totals[k] += scores[k]
        n = max(len(per_example), 1)
        return {k: v / n for k, v in totals.items()}


class Seq2SeqModule(GLMTaskModule):
    """GLM summarisation finetuning. Extra arguments (plain values): `generation` (dict of
    `GenerationConfig` fields: num_beams, length_penalty, no_repeat_ngram_size, min_new_tokens,
    max_new_tokens, do_sample, top_k, top_p, temperature, seed), `label_smoothing` (spec: 0.1),
    `rouge_postprocess`, `num_logged_samples` (rows of the W&B sample table), `output_dir` (None = the
    trainer's `default_root_dir`, the run dir)."""

    def __init__(
        self,
        model: dict,
        optimizer: dict,
        scheduler: dict,
        pretrained: str | None = None,
        generation: dict | None = None,
        label_smoothing: float = 0.1,
        rouge_postprocess: bool = True,
        num_logged_samples: int = 8,
        output_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            model=model, optimizer=optimizer, scheduler=scheduler, pretrained=pretrained, **kwargs
        )
        self.generation = dict(generation or {})
        GenerationConfig(**self.generation)  # fail at start-up on a bad key or value, not after training
        self.label_smoothing = float(label_smoothing)
        self.rouge_postprocess = bool(rouge_postprocess)
        self.num_logged_samples = int(num_logged_samples)
        self.output_dir = output_dir
        # (example index, hypothesis, its ROUGE scores) of what this rank decoded in the current loop
        self._decoded: list[tuple[int, str, dict[str, float]]] = []
        self._rouge: RougeMetric | None = None

    def setup(self, stage: str) -> None:
        trainer = attached_trainer(self)
        dm = getattr(trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "src_seq_length"):
            # Part A positions 0..S-1; Part B block positions 1..T (training) / 1..max_new_tokens (decoding)
            largest = max(
                dm.src_seq_length - 1, dm.tgt_seq_length, int(self.generation.get("max_new_tokens") or 0)
            )
            check_positions(self.glm_config, largest, "data.src_seq_length / data.tgt_seq_length")

    # ---- training ----
    def part_b_losses(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Per-token label-smoothed losses `[R, K]` at the loss positions, their mask `[R, K]` and the index
        `[R, K]` of those positions in the rows. The tied head is projected at Part B only
        (`part_b_index`); padded batches (`sep [B]`) and packed ones (`segment_ids`, per-token `sep [R, L]`,
        data.pack) take the same path."""
        logits, targets, mask, index = part_b_logits(self.model, batch)
        return label_smoothed_token_loss(logits, targets, self.label_smoothing), mask, index

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        per_tok, mask, _ = self.part_b_losses(batch)
        loss = masked_mean(per_tok, mask)
        num_samples = (
            int(batch["sample_index"].max()) + 1 if "sample_index" in batch else batch["input_ids"].shape[0]
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=num_samples)
        return loss

    # ---- decoding ----
    def _tokenizer(self) -> Any:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "tokenizer"):
            raise RuntimeError("Seq2SeqModule needs its Seq2SeqDataModule attached to the trainer")
        return dm.tokenizer

    def generation_config(self) -> GenerationConfig:
        tok = self._tokenizer()
        gen = {"max_new_tokens": self.trainer.datamodule.tgt_seq_length, **self.generation}
        return GenerationConfig.for_tokenizer(tok, **gen)

    def decode_batch(self, batch: dict[str, Tensor]) -> list[str]:
        tok = self._tokenizer()
        cfg = self.generation_config()
        # data.pack: compact sources, their right padding hidden by context_mask (each row decodes as alone)
        out = generate(
            self.model,
            batch["input_ids"],
            batch["mask_pos"],
            cfg,
            position_ids=batch["position_ids"],
            sep=batch["sep"],
            context_mask=batch.get("context_mask"),
            may_stop=self._all_ranks_finished if world_size(self) > 1 else None,
        )
        drop = {tok.eop_id, tok.pad_id}  # docs/original-glm.md §9: eop and pad removed before detokenising
        return [tok.decode([t for t in seq if t not in drop]).strip() for seq in out.sequences]

    def _decode_and_score(self, batch: dict[str, Tensor], stage: str) -> None:
        """Decode the batch and score each hypothesis here, on the rank that decoded it (under several
        processes each rank does its share of both; `_finish` gathers the per-example results)."""
        if self._rouge is None:
            self._rouge = RougeMetric(self.rouge_postprocess)
        refs = self.trainer.datamodule.references(stage)
        for i, hyp in zip(batch["example_index"].tolist(), self.decode_batch(batch), strict=True):
            self._decoded.append((i, hyp, self._rouge.score_one(hyp, refs[i])))

    def _all_ranks_finished(self, finished: bool) -> bool:
        """Whether every rank's batch is decoded (a collective, once per decoding step). With sharded
        parameters (FSDP2) each forward pass gathers weights from all ranks, so a rank whose batch is done
        keeps stepping (feeding pad) until all are; the ranks decode the same number of batches (the
        evaluation sampler pads the split), so the calls pair up."""
        flags = self.all_gather(torch.tensor([int(finished)], device=self.device))
        return bool(flags.all())

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._decode_and_score(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._decode_and_score(batch, "test")

    def _finish(self, stage: str) -> None:
        decoded, self._decoded = self._decoded, []
        finish_evaluation(
            self,
            decoded,
            index=lambda r: r[0],
            report=lambda records: self._report(stage, records),
            output_dir=self.output_dir or self.trainer.default_root_dir,
            barrier="seq2seq_outputs",
        )

    def _report(self, stage: str, decoded: list[tuple[int, str, dict[str, float]]]) -> EvaluationReport:
        """ROUGE over every example; on test also `test.jsonl.hyps` / `test.jsonl.refs`."""
        refs_all = self.trainer.datamodule.references(stage)
        hyps = [h for _, h, _ in decoded]
        refs = [refs_all[i] for i, _, _ in decoded]
        scores = RougeMetric.average([s for _, _, s in decoded])
        files = {}
        if stage == "test":
            # one line per example: newlines inside a summary would break the line pairing
            files["test.jsonl.hyps"] = "".join(h.replace("\n", " ") + "\n" for h in hyps)
            files["test.jsonl.refs"] = "".join(r.replace("\n", " ") + "\n" for r in refs)
        return EvaluationReport(
            metrics={f"{stage}/{k}": v for k, v in scores.items()},
            prog_bar=[f"{stage}/rouge1"],
            files=files,
            on_rank_zero=lambda: self._log_table(stage, hyps, refs),
        )

    def _log_table(self, stage: str, hyps: list[str], refs: list[str]) -> None:
        """A W&B table of sample summaries when a WandbLogger is attached (no-op otherwise)."""
        n = min(self.num_logged_samples, len(hyps))
        for lg in self.loggers:
            if n and hasattr(lg, "log_table") and type(lg).__name__ == "WandbLogger":
                lg.log_table(
                    key=f"{stage}/samples",
                    columns=["reference", "prediction"],
                    data=[[refs[i], hyps[i]] for i in range(n)],
                )

    def on_validation_epoch_end(self) -> None:
        self._finish("val")

    def on_test_epoch_end(self) -> None:
        self._finish("test")
