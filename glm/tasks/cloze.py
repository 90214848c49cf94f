"""Cloze finetuning on SuperGLUE (docs/original-glm.md §7): verbalizer / candidate scoring, losses, metrics, outputs.

Scoring (docs/original-glm.md §7.1):
- single-token: score of class c = raw logit of verbalizer token v_c at the `[sop]` slot (index `sep`);
- multi-token: score of a candidate = sum over its k+1 target slots of `log_softmax(logits)[target]`,
  divided by `(k+1) ** length_penalty` when `length_penalty > 0`; all candidates of a batch in one
  forward pass; padded candidates get -10000. The tied head is projected only where a score reads it
  (the `[sop]` slot, the answer slots).
Packed batches (`data.pack`, `glm.data.cloze.collate_cloze_packed`: candidate sequences sharing rows with
`segment_ids`, per-token `sep`, `sample_index`) go through the same code and give the same `[B, C]` scores.
Losses: `cross_entropy` over the scores (default), `generative` = -log p(gold answer), `mix` = both.
For single-token tasks the generative term is `-log_softmax(logits at [sop])[v_gold]` over the full
vocabulary: the raw-logit score itself is unbounded below, so `-score` would not be a usable loss there
(the multi-token score already is a log-probability, so there it equals `-score[label]`).

Outputs in `output_dir` (the run dir): `val_predictions.jsonl` (one line per validation example with
its scores) and `val_metrics.json` (`{"task", "pattern_id", "epoch", "main_metric", "optimized_metric",
"val/<metric>": value, ...}`) after each validation epoch, and `test/<Task>.jsonl` in SuperGLUE
submission format after `predict`. `metrics.json` belongs to `glm.run.pipeline.run` (the final values of
every stage); the module never writes it. Under several processes each rank scores its share of a split;
the per-example records (scores, loss) are gathered by `example_index` (`glm.tasks.evaluation`), so the
metrics, `val/loss` and the files (written by rank 0) are those of one process.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glm.data.cloze import IGNORE_INDEX
from glm.data.packing import per_sample_sum
from glm.metrics import SuperGLUEMetrics
from glm.tasks.base import GLMTaskModule
from glm.tasks.evaluation import EvaluationReport, finish_evaluation
from glm.tasks.part_b import part_b_index

log = logging.getLogger(__name__)

__all__ = [
    "ClozeModule",
    "PromptEncoder",
    "cloze_example_losses",
    "cloze_loss",
    "multi_token_scores",
    "prompt_slots",
    "single_token_scores",
]

PAD_SCORE = -10000.0
PREDICTION_TABLE_ROWS = 20  # validation predictions shown as a W&B table per validation epoch
LOSSES = ("cross_entropy", "generative", "mix")


def single_token_scores(logits: Tensor, sep: Tensor, verbalizer_ids: Tensor) -> Tensor:
    """Raw logits of the verbalizer tokens at the `[sop]` slot.

    logits `[N, L, V]`, sep `[N]` (the `[sop]` index), verbalizer_ids `[N, K]` -> scores `[N, K]`.
    """
    rows = torch.arange(logits.size(0), device=logits.device)
    at_sop = logits[rows, sep]  # [N, V]
    return at_sop.gather(1, verbalizer_ids)


def multi_token_scores(
    logits: Tensor,
    targets: Tensor,
    loss_mask: Tensor,
    length_penalty: float = 0.0,
    sample_index: Tensor | None = None,
    num_samples: int | None = None,
) -> Tensor:
    """Sum of target log-probabilities over the loss-mask slots of each sequence, length-normalised.

    logits `[N, L, V]`, targets/loss_mask `[N, L]` -> `[N]` (float32 or wider): one sequence per row. With
    `sample_index [R, L]` (packed rows: the sequence of each slot, -1 = none) and `num_samples` the sums
    go to `[num_samples]` sequences instead. Only the masked slots go through log_softmax, so memory is
    O(answer tokens x V), not O(L x V).
    """
    sel = loss_mask > 0
    picked = logits[sel]
    if picked.dtype not in (torch.float32, torch.float64):  # bf16/fp16 logits: log_softmax in float32
        picked = picked.float()
    picked = picked.log_softmax(-1)  # [T, V]
    token_lp = picked.gather(1, targets[sel].unsqueeze(1)).squeeze(1)
    if sample_index is None:  # one sequence per row
        sample_index = torch.arange(sel.size(0), device=sel.device)[:, None].expand(sel.shape)
        num_samples = sel.size(0)
    elif num_samples is None:
        raise ValueError("multi_token_scores: sample_index needs num_samples")
    per_token = token_lp.new_zeros(sel.shape)
    per_token[sel] = token_lp
    scores = per_sample_sum(per_token, sample_index, num_samples)
    if length_penalty > 0:
        counts = per_sample_sum(loss_mask.to(scores.dtype), sample_index, num_samples)
        scores = scores / counts.clamp(min=1) ** length_penalty
    return scores


def prompt_slots(prompt_mask: Tensor, segment_ids: Tensor | None = None) -> Tensor:
    """Number of each continuous-prompt slot within its sequence (0, 1, ...), -1 off the slots.

    prompt_mask `[R, L]`; with `segment_ids [R, L]` (packed rows) the numbering restarts at each
    sequence, so slot j of every sequence gets prompt embedding j as in an unpacked row.
    """
    pm = prompt_mask.long()
    before = pm.cumsum(-1) - pm  # slots before each token in its row
    if segment_ids is not None:
        starts = torch.ones_like(prompt_mask)
        starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
        # `before` never decreases along a row: the running max of its values at sequence starts is the
        # count at the start of each token's own sequence
        before = before - torch.where(starts, before, torch.zeros_like(before)).cummax(-1).values
    return torch.where(prompt_mask, before, torch.full_like(before, -1))


def cloze_example_losses(
    scores: Tensor, label: Tensor, kind: str = "cross_entropy", gen_logprob: Tensor | None = None
) -> Tensor:
    """Per-example `cloze_loss` terms `[B]` (float32; NaN where `label` is -100): their mean over the
    labelled examples is `cloze_loss` up to rounding. Validation keeps them per example so that the loss of
    a split shared between ranks counts every example once."""
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}; expected one of {LOSSES}")
    valid = label != IGNORE_INDEX
    safe = label.clamp(min=0)  # any class for the unlabelled rows; they become NaN below
    out = scores.new_zeros(label.shape, dtype=torch.float32)
    if kind in ("cross_entropy", "mix"):
        out = out + F.cross_entropy(scores.float(), safe, reduction="none")
    if kind in ("generative", "mix"):
        lp = scores if gen_logprob is None else gen_logprob
        out = out - lp.gather(1, safe.unsqueeze(1)).squeeze(1).float()
    return out.masked_fill(~valid, float("nan"))


def cloze_loss(
    scores: Tensor, label: Tensor, kind: str = "cross_entropy", gen_logprob: Tensor | None = None
) -> Tensor:
    """Loss over `[B, C]` scores (padded choices already at -10000) and `label [B]` (-100 = no loss).

    `gen_logprob [B, C]`: log-probability of each choice for the generative term (defaults to the
    scores, which is right for multi-token tasks).
    """
    valid = label != IGNORE_INDEX
    losses = cloze_example_losses(scores, label, kind, gen_logprob)
    if not valid.any():
        return scores.sum() * 0.0  # keeps the graph (and DDP) happy when a batch has no target
    return losses[valid].mean()


class PromptEncoder(nn.Module):
    """Continuous prompt embeddings for P-tuning: `num_tokens` learned vectors through an LSTM or MLP."""

    def __init__(self, num_tokens: int, hidden_size: int, kind: str = "lstm") -> None:
        super().__init__()
        if kind not in ("lstm", "mlp"):
            raise ValueError(f"prompt encoder must be 'lstm' or 'mlp', got {kind!r}")
        self.kind = kind
        self.embedding = nn.Embedding(num_tokens, hidden_size)
        if kind == "lstm":  # P-tuning: a bidirectional LSTM then a 2-layer MLP
            self.lstm = nn.LSTM(
                hidden_size, hidden_size // 2, num_layers=2, bidirectional=True, batch_first=True
            )
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self) -> Tensor:
        """`[num_tokens, hidden]` prompt embeddings."""
        x = self.embedding.weight.unsqueeze(0)
        if self.kind == "lstm":
            x = self.lstm(x)[0]
        return self.mlp(x).squeeze(0)


class ClozeModule(GLMTaskModule):
    """Cloze finetuning of GLM on one SuperGLUE task.

    Extra arguments (plain values, saved as hyperparameters): `task` (boolq, cb, copa, multirc, record, rte,
    wic, wsc), `loss` (cross_entropy | generative | mix), `length_penalty`, `p_tuning` (dict: `enabled`,
    `encoder` lstm|mlp, `freeze_backbone`; the number of prompt tokens comes from the data's
    `num_prompt_tokens`), `output_dir` (where predictions and metrics go; None = the trainer's
    `default_root_dir`).
    """

    def __init__(
        self,
        model: dict,
        optimizer: dict,
        scheduler: dict,
        pretrained: str | None = None,
        task: str = "copa",
        loss: str = "cross_entropy",
        length_penalty: float = 0.0,
        p_tuning: dict | None = None,
        num_prompt_tokens: int = 0,
        output_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            model=model, optimizer=optimizer, scheduler=scheduler, pretrained=pretrained, **kwargs
        )
        if loss not in LOSSES:
            raise ValueError(f"task.loss must be one of {LOSSES}, got {loss!r}")
        self.task_name, self.loss_kind, self.length_penalty = task.lower(), loss, float(length_penalty)
        self.p_tuning = dict(p_tuning or {})
        self.num_prompt_tokens = int(num_prompt_tokens)
        if self.p_tuning.get("enabled") and self.num_prompt_tokens <= 0:
            raise ValueError("p_tuning.enabled needs num_prompt_tokens > 0 (data.num_prompt_tokens)")
        self.output_dir = output_dir
        self.prompt_encoder: PromptEncoder | None = None
        self._val_records: list[dict[str, Any]] = []
        self._test_records: list[dict[str, Any]] = []

    # ---- model ----
    def configure_model(self) -> None:
        super().configure_model()
        if self.p_tuning.get("enabled") and self.prompt_encoder is None:
            self.prompt_encoder = PromptEncoder(
                self.num_prompt_tokens, self.model.config.hidden_size, self.p_tuning.get("encoder", "lstm")
            )
            if self.p_tuning.get("freeze_backbone", False):
                self.model.requires_grad_(False)

    def _forward(self, batch: dict[str, Tensor], logits_index: Tensor | None = None) -> Tensor:
        """Run the backbone once over the batch's rows: `[B, C, ...]` flattened to `[B*C, ...]`, or the
        packed `[R, L]` rows as they are (with `segment_ids` and per-token `sep`); logits `[rows, L, V]`
        (or `[rows, K, V]` at the positions of `logits_index [rows, K]`)."""
        if "segment_ids" in batch:
            ids, pos, sep = batch["input_ids"], batch["position_ids"], batch["sep"]
            seg, pm = batch["segment_ids"], batch.get("prompt_mask")
        else:
            B, C, L = batch["input_ids"].shape
            ids = batch["input_ids"].reshape(B * C, L)
            pos = batch["position_ids"].reshape(B * C, 2, L)
            sep = batch["sep"].reshape(B * C)
            seg = None
            pm = batch["prompt_mask"].reshape(B * C, L) if "prompt_mask" in batch else None
        kwargs = {"sep": sep, "segment_ids": seg, "logits_index": logits_index}
        if pm is not None:
            if self.prompt_encoder is None:
                raise ValueError(
                    "the batch has continuous-prompt slots but p_tuning is not enabled in the task"
                )
            embeds = self.model.word_embeddings(ids)
            prompts = self.prompt_encoder().to(embeds.dtype)  # [P, h], slot j of each sequence gets prompt j
            slot = prompt_slots(pm, seg)
            embeds = torch.where(pm.unsqueeze(-1), prompts[slot.clamp(min=0)], embeds)
            return self.model(None, pos, inputs_embeds=embeds, **kwargs).logits
        return self.model(ids, pos, **kwargs).logits

    def score(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(scores `[B, C or K]` with padded choices at -10000, generative log-probs of the same shape),
        from a padded `[B, C, L]` batch or a packed one (the same numbers)."""
        packed = "segment_ids" in batch
        B, C = batch["choice_mask"].shape
        if "verbalizer_ids" in batch:  # single-token: C == 1; the head is needed at the [sop] slot only
            if packed:
                at = self._forward(batch, logits_index=batch["sop_index"])  # [R, K, V]
                valid = batch["sop_sample"] >= 0
                example = batch["sample_bc"][batch["sop_sample"][valid], 0]  # one sequence per example
                at_sop = at[valid][torch.argsort(example)]  # [B, V], example order
            else:
                at_sop = self._forward(batch, logits_index=batch["sep"][:, :1])[:, 0]  # [B, V]
            zero = torch.zeros(B, dtype=torch.long, device=at_sop.device)
            scores = single_token_scores(at_sop[:, None], zero, batch["verbalizer_ids"])
            lp = at_sop if at_sop.dtype in (torch.float32, torch.float64) else at_sop.float()
            return scores, lp.log_softmax(-1).gather(1, batch["verbalizer_ids"])
        # multi-token: the head only at the answer slots of each row (all that multi_token_scores reads)
        if packed:
            targets, loss_mask, owner = batch["targets"], batch["loss_mask"], batch["sample_index"]
            n = batch["sample_bc"].size(0)
        else:
            L = batch["input_ids"].size(-1)
            targets, loss_mask = batch["targets"].reshape(B * C, L), batch["loss_mask"].reshape(B * C, L)
            n = B * C
            owner = torch.arange(n, device=targets.device)[:, None].expand(n, L)
        index, valid = part_b_index(loss_mask)
        flat = multi_token_scores(
            self._forward(batch, logits_index=index),
            targets.gather(1, index),
            loss_mask.gather(1, index) * valid,
            self.length_penalty,
            sample_index=owner.gather(1, index),
            num_samples=n,
        )
        if packed:  # sequence n is choice sample_bc[n] = (b, c); padded choices stay at PAD_SCORE
            b, c = batch["sample_bc"].unbind(1)
            flat = flat.new_full((B, C), PAD_SCORE).index_put((b, c), flat)
        scores = flat.view(B, C).masked_fill(~batch["choice_mask"], PAD_SCORE)
        return scores, scores

    # ---- steps ----
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        scores, gen = self.score(batch)
        loss = cloze_loss(scores, batch["label"], self.loss_kind, gen)
        self.log("train/loss", loss, prog_bar=True, batch_size=scores.size(0))
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        scores, gen = self.score(batch)
        # the loss per example, averaged at the epoch end over the examples of every rank (each once)
        losses = cloze_example_losses(scores, batch["label"], self.loss_kind, gen)
        self._val_records.extend(self._records(batch, scores, losses))

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        scores, _ = self.score(batch)
        self._test_records.extend(self._records(batch, scores))

    @staticmethod
    def _records(
        batch: dict[str, Tensor], scores: Tensor, losses: Tensor | None = None
    ) -> list[dict[str, Any]]:
        """One plain record per example (`example_index`, the valid choices' `scores`, `best`, `loss` or None):
        what the epoch end gathers from every rank."""
        valid = (
            batch["choice_mask"]
            if "verbalizer_ids" not in batch
            else torch.ones_like(scores, dtype=torch.bool)
        )
        per_loss = [None] * scores.size(0) if losses is None else losses.cpu().tolist()
        out = []
        for i, s, m, loss in zip(
            batch["example_index"].tolist(), scores.float().cpu(), valid.cpu(), per_loss, strict=True
        ):
            s = s[m]
            loss = None if loss is None or math.isnan(loss) else loss
            out.append({"example_index": i, "scores": s.tolist(), "best": int(s.argmax()), "loss": loss})
        return out

    # ---- epoch ends: metrics and files ----
    def _datamodule(self):
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "examples"):
            raise RuntimeError(
                "ClozeModule needs the ClozeDataModule attached to the trainer (trainer.fit(model, "
                "datamodule=...)) to map predictions back to examples"
            )
        return dm

    def _out_dir(self) -> Path:
        return Path(self.output_dir or self.trainer.default_root_dir)

    def on_validation_epoch_end(self) -> None:
        records, self._val_records = self._val_records, []
        finish_evaluation(
            self,
            records,
            index=lambda r: r["example_index"],
            report=self._validation_report,
            output_dir=self._out_dir(),
            barrier="cloze_val_outputs",
        )

    def _validation_report(self, records: list[dict[str, Any]]) -> EvaluationReport:
        """Metrics, `val/loss`, `val_predictions.jsonl` and `val_metrics.json` of every example's record."""
        dm = self._datamodule()
        task, examples = dm.task, dm.examples("val")
        # every rank already holds every example: torchmetrics must not sum the ranks' states again
        metrics = SuperGLUEMetrics(task.name, max(len(task.labels), 2), sync_on_compute=False)
        group_ids: dict[Any, int] = {}
        lines = []
        for r in records:
            ex = examples[r["example_index"]]
            pred = task.predict(ex, r["best"])
            lines.append(
                {
                    "idx": ex.submit_idx,
                    "guid": ex.guid,
                    "prediction": pred,
                    "scores": r["scores"],
                    "label": None if ex.label is None else task.labels[ex.label] if task.labels else None,
                    "answers": ex.answers,
                    "candidates": ex.candidates,
                }
            )
            if task.name == "record":
                metrics.update(pred_texts=[pred], gold_texts=[ex.answers])
                continue
            if ex.label is None:
                continue
            pred_class = task.labels.index(pred) if isinstance(pred, str) else int(pred)
            groups = (
                torch.tensor([group_ids.setdefault(ex.group, len(group_ids))])
                if task.name == "multirc"
                else None
            )
            metrics.update(torch.tensor([pred_class]), torch.tensor([ex.label]), groups)
        values = metrics.compute()
        logged = {f"val/{k}": v for k, v in values.items()}
        losses = [r["loss"] for r in records if r["loss"] is not None]
        if losses:
            logged["val/loss"] = math.fsum(losses) / len(losses)
        main = task.main_metric
        payload = {
            "task": task.name,
            "pattern_id": dm.pattern_id,
            "epoch": self.current_epoch,
            "optimized_metric": values[main.split("/", 1)[1]],
            "main_metric": main,
            **{f"val/{k}": v for k, v in values.items()},
        }
        return EvaluationReport(
            metrics=logged,
            prog_bar=[f"val/{k}" for k in values],
            files={
                "val_predictions.jsonl": _jsonl(lines),
                "val_metrics.json": json.dumps(payload, indent=2) + "\n",
            },
            on_rank_zero=lambda: self._log_prediction_table(lines),
        )

    def _log_prediction_table(self, lines: list[dict[str, Any]]) -> None:
        """The first `PREDICTION_TABLE_ROWS` validation predictions as a table, on loggers that take tables
        (Lightning's WandbLogger `log_table`); other loggers get nothing (the jsonl file has every line)."""
        rows = [
            [
                str(r["idx"]),
                str(r["label"]),
                str(r["prediction"]),
                json.dumps([round(x, 4) for x in r["scores"]]),
            ]
            for r in lines[:PREDICTION_TABLE_ROWS]
        ]
        for logger in self.loggers:
            if hasattr(logger, "log_table"):
                logger.log_table(
                    key="val/predictions", columns=["idx", "label", "prediction", "scores"], data=rows
                )

    def on_predict_epoch_end(self) -> None:
        records, self._test_records = self._test_records, []
        finish_evaluation(
            self,
            records,
            index=lambda r: r["example_index"],
            report=self._submission_report,
            output_dir=self._out_dir(),
            skip_if_empty=False,  # an empty test split still gets its (empty) submission file
            barrier="cloze_predict_outputs",
        )

    def _submission_report(self, records: list[dict[str, Any]]) -> EvaluationReport:
        """`test/<Task>.jsonl` in SuperGLUE submission format."""
        dm = self._datamodule()
        task, examples = dm.task, dm.examples("test")
        preds = [
            (examples[r["example_index"]], task.predict(examples[r["example_index"]], r["best"]))
            for r in records
        ]
        relative = f"test/{task.dirname}.jsonl"
        path = self._out_dir() / relative
        return EvaluationReport(
            files={relative: _jsonl(submission_lines(task.name, preds))},
            on_rank_zero=lambda: log.info("wrote %d test predictions to %s", len(preds), path),
        )


def submission_lines(task: str, preds: list[tuple[Any, Any]]) -> list[dict[str, Any]]:
    """SuperGLUE submission records: `{"idx", "label"}` per item; MultiRC nested per passage/question."""
    if task != "multirc":
        return [{"idx": ex.submit_idx, "label": label} for ex, label in preds]
    passages: dict[Any, dict[Any, list]] = {}
    for ex, label in preds:
        s = ex.submit_idx
        passages.setdefault(s["paragraph"], {}).setdefault(s["question"], []).append(
            {"idx": s["answer"], "label": int(label)}
        )
    return [
        {"idx": p, "passage": {"questions": [{"idx": q, "answers": a} for q, a in qs.items()]}}
        for p, qs in passages.items()
    ]


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
