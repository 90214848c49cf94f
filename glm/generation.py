"""Decoding for GLM: greedy, beam search and sampling over the blank-infilling layout, plus blank filling.

Every strategy shares one layout (docs/original-glm.md §3(d)): step 0 runs the Part-A context plus `[sop]` (positions
`0..S-1, mask_pos`; blocks `0.., 1`; `sep`) once and keeps the backbone's KV cache; step `t >= 1` feeds
only the previous token at position `(mask_pos, t + 1)` with `sep = 0` against the cache, so a new token
costs one position of compute and the prefix is never re-run. Beam search reorders the cache with the
selected beam indices every step (docs/original-glm.md §9).

Beam search follows the original `generation_utils.py` bookkeeping (docs/original-glm.md §9): initial beam scores
`[0, -1e9, ...]`, logits processors on `log_softmax`, `2 * beams` candidates (top-k or sampled),
`[eop]` candidates ranked within the first `beams` close a hypothesis scored
`sum_logprob / max(len, 1) ** length_penalty`, and the early-stop rule
`worst_kept >= best_sum / cur_len ** length_penalty`, where `best_sum` is the highest of the step's
`2 * beams` candidate scores, an `[eop]` candidate included (the original `BeamSearchScorer.process`
passes `next_scores.max()`; docs/original-glm.md §9's "best live" reads it as the best not-yet-finished candidate).
Decision (docs/original-glm.md §9 leaves `cur_len` implicit): `cur_len` is the number of tokens generated *before*
the current step (the length of a hypothesis closed at this step), floored at 1 -- the value the
original gets from `input_ids.shape[-1]` when `input_ids` holds only generated tokens. With it a
1-beam search is exactly greedy decoding for every length penalty.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from glm.model import GLM, KVCache

NEG_INF = float("-inf")
DEAD_BEAM = -1e9  # initial score of beams 1..K-1 (docs/original-glm.md §9): only beam 0 is live at step 0


@dataclass
class GenerationConfig:
    """Decoding settings; defaults are the original `arguments.py` defaults (docs/original-glm.md §9).

    `do_sample=False` is the original `--select-topk` (deterministic top candidates); with
    `do_sample=True` greedy becomes top-k/top-p/temperature sampling and beam search samples its
    `2 * beams` candidates. Token ids default to our sentencepiece tokenizer (docs/contracts.md);
    use `GenerationConfig.for_tokenizer` for another one.
    """

    max_new_tokens: int = 256
    min_new_tokens: int = 0
    num_beams: int = 1
    length_penalty: float = 0.0
    no_repeat_ngram_size: int = 0
    do_sample: bool = False
    top_k: int = 0
    top_p: float = 0.0
    temperature: float = 1.0
    seed: int | None = None
    sop_id: int = 7
    eop_id: int = 8
    pad_id: int = 0
    extra_stop_ids: tuple[
        int, ...
    ] = ()  # e.g. eos for blank filling (docs/original-glm.md §3(d): a blank ends at eop or eos)

    def __post_init__(self) -> None:
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            problems.append(f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens}")
        if self.num_beams < 1:
            problems.append(f"num_beams must be >= 1, got {self.num_beams}")
        if self.no_repeat_ngram_size < 0 or self.top_k < 0:
            problems.append("no_repeat_ngram_size and top_k must be >= 0")
        if not 0.0 <= self.top_p <= 1.0:
            problems.append(f"top_p must be in [0, 1], got {self.top_p}")
        if self.temperature <= 0:
            problems.append(f"temperature must be > 0, got {self.temperature}")
        if problems:
            raise ValueError("invalid GenerationConfig: " + "; ".join(problems))
        self.extra_stop_ids = tuple(int(i) for i in self.extra_stop_ids)

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, **overrides: Any) -> GenerationConfig:
        """Config with `sop/eop/pad` ids taken from a `GLMTokenizer`."""
        ids = {"sop_id": tokenizer.sop_id, "eop_id": tokenizer.eop_id, "pad_id": tokenizer.pad_id}
        return cls(**{**ids, **overrides})

    def replace(self, **changes: Any) -> GenerationConfig:
        return dataclasses.replace(self, **changes)

    @property
    def stop_ids(self) -> tuple[int, ...]:
        return (self.eop_id, *self.extra_stop_ids)


@dataclass
class GenerationOutput:
    """Per batch item: the generated ids (stop token and padding removed) and the sequence score
    (beam search: length-normalised sum of log-probs; greedy/sampling: sum of log-probs)."""

    sequences: list[list[int]]
    scores: list[float]
    # beam search only: every kept hypothesis per item as (score, ids), best first
    hypotheses: list[list[tuple[float, list[int]]]] = field(default_factory=list)


def log_probs(logits: Tensor) -> Tensor:
    """`log_softmax` in at least fp32 (half-precision logits are upcast; fp64 stays fp64)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return F.log_softmax(logits, dim=-1)


# --------------------------------------------------------------------------------------------------
# Logits processors (operate on log-probabilities [N, V] in place)
# --------------------------------------------------------------------------------------------------
def apply_min_length(
    scores: Tensor, num_generated: int, min_new_tokens: int, stop_ids: tuple[int, ...]
) -> Tensor:
    """Ban the stop tokens while fewer than `min_new_tokens` tokens have been generated (docs/original-glm.md §9)."""
    if num_generated < min_new_tokens:
        scores[:, list(stop_ids)] = NEG_INF
    return scores


def banned_ngram_tokens(generated: list[int], n: int) -> set[int]:
    """Tokens that would complete an n-gram already present in `generated` (the beam's own tokens only)."""
    if n <= 0 or len(generated) + 1 < n:
        return set()
    if n == 1:
        return set(generated)
    prefix = tuple(generated[len(generated) - n + 1 :])
    return {
        generated[i + n - 1]
        for i in range(len(generated) - n + 1)
        if tuple(generated[i : i + n - 1]) == prefix
    }


def apply_no_repeat_ngram(scores: Tensor, generated: list[list[int]], n: int) -> Tensor:
    """Set `-inf` on every token that would repeat an n-gram of that row's generated tokens."""
    if n <= 0:
        return scores
    for row, tokens in enumerate(generated):
        banned = banned_ngram_tokens(tokens, n)
        if banned:
            scores[row, list(banned)] = NEG_INF
    return scores


def top_k_top_p_filter(logits: Tensor, top_k: int = 0, top_p: float = 0.0) -> Tensor:
    """Keep the `top_k` largest logits and the smallest set whose probability reaches `top_p`
    (the most likely token always survives); the rest become `-inf`. 0 disables either filter."""
    logits = logits.clone()
    if top_k > 0:
        k = min(top_k, logits.size(-1))
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits[logits < kth] = NEG_INF
    if 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        remove = cumulative > top_p
        remove[..., 1:] = remove[..., :-1].clone()  # shift right: keep the token that crosses top_p
        remove[..., 0] = False
        logits.scatter_(-1, order, sorted_logits.masked_fill(remove, NEG_INF))
    return logits


# --------------------------------------------------------------------------------------------------
# The layout driver: prefill once, then one position per step
# --------------------------------------------------------------------------------------------------
class _Decoder:
    """Feeds a GLM one Part-B token per row and step, against its KV cache.

    `key_valid` (only when `context_mask` is given) marks which cached columns real tokens may see, so a
    batch of right-padded contexts of different lengths decodes exactly as each context alone would.
    Without it the padding inside Part A is visible, as in the original seq2seq pipeline (docs/original-glm.md §2).
    """

    def __init__(self, model: GLM, mask_positions: Tensor) -> None:
        self.model = model
        self.mask_positions = mask_positions  # [N]
        self.cache: KVCache | None = None
        self.key_valid: Tensor | None = None  # [N, M] bool
        self.step = 0  # number of Part-B tokens fed so far ([sop] included)

    def prefill(
        self,
        input_ids: Tensor,
        position_ids: Tensor,
        sep: Tensor,
        sop_id: int,
        context_mask: Tensor | None = None,
    ) -> Tensor:
        """Run `context + [sop]` once (docs/original-glm.md §3(d) step 0); return the `[sop]` slot's logits `[N, V]`."""
        N, S = input_ids.shape
        device = input_ids.device
        sop = torch.full((N, 1), sop_id, dtype=torch.long, device=device)
        sop_pos = torch.stack([self.mask_positions, torch.ones_like(self.mask_positions)], dim=1)[:, :, None]
        ids = torch.cat([input_ids, sop], dim=1)
        pos = torch.cat([position_ids, sop_pos], dim=2)
        if context_mask is None:
            out = self.model(ids, pos, sep=sep, use_cache=True)
        else:
            valid = torch.cat([context_mask.bool(), torch.ones(N, 1, dtype=torch.bool, device=device)], dim=1)
            q = torch.arange(S + 1, device=device)
            visible = (q[None, None, :] < sep[:, None, None]) | (q[None, None, :] <= q[None, :, None])
            visible = visible & valid[:, None, :]
            out = self.model(ids, pos, attention_mask=visible[:, None], use_cache=True)
            self.key_valid = valid
        self.cache = out.cache
        self.step = 1
        return out.logits[:, -1]

    def advance(self, tokens: Tensor) -> Tensor:
        """Feed one token per row at `(mask_pos, step + 1)`; return the next logits `[N, V]`."""
        N = tokens.shape[0]
        pos = torch.stack([self.mask_positions, torch.full_like(self.mask_positions, self.step + 1)], dim=1)
        attention_mask = None
        if self.key_valid is not None:
            self.key_valid = torch.cat([self.key_valid, self.key_valid.new_ones(N, 1)], dim=1)
            attention_mask = self.key_valid[:, None, None, :]
        out = self.model(
            tokens[:, None],
            pos[:, :, None],
            sep=0,
            attention_mask=attention_mask,
            cache=self.cache,
            use_cache=True,
        )
        self.cache = out.cache
        self.step += 1
        return out.logits[:, -1]

    def reorder(self, index: Tensor) -> None:
        """Select/repeat rows (beam expansion and reordering): cache, validity and mask positions."""
        self.cache = self.cache.reorder(index)
        self.mask_positions = self.mask_positions.index_select(0, index)
        if self.key_valid is not None:
            self.key_valid = self.key_valid.index_select(0, index)


def _prepare(
    input_ids: Tensor,
    position_ids: Tensor | None,
    sep: Tensor | int | None,
    mask_positions: Tensor | int,
) -> tuple[Tensor, Tensor, Tensor]:
    B, S = input_ids.shape
    device = input_ids.device
    if position_ids is None:  # Part A positions 0..S-1, block 0
        position_ids = torch.stack(
            [torch.arange(S, device=device), torch.zeros(S, dtype=torch.long, device=device)]
        )
        position_ids = position_ids[None].expand(B, 2, S)
    if position_ids.shape != (B, 2, S):
        raise ValueError(f"position_ids must be [B, 2, S] = {[B, 2, S]}, got {list(position_ids.shape)}")
    sep = torch.as_tensor(S if sep is None else sep, dtype=torch.long, device=device).reshape(-1).expand(B)
    mask_positions = torch.as_tensor(mask_positions, dtype=torch.long, device=device).reshape(-1).expand(B)
    return position_ids, sep.contiguous(), mask_positions.contiguous()


@torch.no_grad()
def generate(
    model: GLM,
    input_ids: Tensor,
    mask_positions: Tensor | int,
    config: GenerationConfig,
    position_ids: Tensor | None = None,
    sep: Tensor | int | None = None,
    context_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    may_stop: Callable[[bool], bool] | None = None,
) -> GenerationOutput:
    """Fill one blank per row: decode Part B after the Part-A context `input_ids [B, S]`.

    mask_positions: position id of each row's blank (`[B]` or one int); every Part-B slot uses it.
    position_ids: Part-A positions `[B, 2, S]` (default `0..S-1`, block 0). sep: Part-A length per row
    (default `S`: the whole context is bidirectional). context_mask: `[B, S]`, 1 = real token; rows
    padded on the right then decode as if alone (default: all visible, the original seq2seq behaviour).
    may_stop: called once per step with whether every row is finished; decoding ends early only when it
    returns True (default: as soon as every row is finished). Processes whose forward passes are
    collectives (sharded parameters) pass one that agrees across processes, so all run the same number
    of steps; the extra steps feed pad to finished rows and leave the results unchanged.
    Dispatches to beam search when `config.num_beams > 1`, else greedy / sampling.
    """
    if config.do_sample and generator is None and config.seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(config.seed)
    if config.num_beams > 1:
        return beam_search(
            model, input_ids, mask_positions, config, position_ids, sep, context_mask, generator, may_stop
        )
    return greedy_or_sample(
        model, input_ids, mask_positions, config, position_ids, sep, context_mask, generator, may_stop
    )


@torch.no_grad()
def greedy_or_sample(
    model: GLM,
    input_ids: Tensor,
    mask_positions: Tensor | int,
    config: GenerationConfig,
    position_ids: Tensor | None = None,
    sep: Tensor | int | None = None,
    context_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    may_stop: Callable[[bool], bool] | None = None,
) -> GenerationOutput:
    """Greedy decoding (`do_sample=False`) or top-k/top-p/temperature sampling, batched.

    A row stops at its first stop token; finished rows keep feeding pad (their outputs are ignored) so
    the batch stays one tensor. Scores are the sums of the chosen tokens' log-probs after processors.
    """
    position_ids, sep, mask_positions = _prepare(input_ids, position_ids, sep, mask_positions)
    B = input_ids.shape[0]
    dec = _Decoder(model, mask_positions)
    logits = dec.prefill(input_ids, position_ids, sep, config.sop_id, context_mask)
    generated: list[list[int]] = [[] for _ in range(B)]
    scores = torch.zeros(B, dtype=torch.float64)
    done = torch.zeros(B, dtype=torch.bool)
    stop = torch.tensor(config.stop_ids, dtype=torch.long)
    for t in range(config.max_new_tokens):
        logp = log_probs(logits)
        apply_min_length(logp, t, config.min_new_tokens, config.stop_ids)
        apply_no_repeat_ngram(logp, generated, config.no_repeat_ngram_size)
        if config.do_sample:
            filtered = top_k_top_p_filter(
                logits.to(logp.dtype) / config.temperature, config.top_k, config.top_p
            )
            filtered = filtered.masked_fill(torch.isinf(logp), NEG_INF)  # processors' bans still hold
            nxt = torch.multinomial(filtered.softmax(-1), 1, generator=generator)[:, 0]
        else:
            nxt = logp.argmax(-1)
        chosen = logp.gather(1, nxt[:, None])[:, 0].cpu().double()
        nxt_cpu = nxt.cpu()
        is_stop = torch.isin(nxt_cpu, stop)
        scores += torch.where(done, 0.0, chosen)
        for row in range(B):
            if not done[row] and not is_stop[row]:
                generated[row].append(int(nxt_cpu[row]))
        done |= is_stop
        if t + 1 == config.max_new_tokens or (may_stop or bool)(bool(done.all())):
            break
        feed = torch.where(done.to(nxt.device), torch.full_like(nxt, config.pad_id), nxt)
        logits = dec.advance(feed)
    return GenerationOutput(sequences=generated, scores=scores.tolist())


class BeamHypotheses:
    """The finished hypotheses of one batch item (at most `num_beams`, worst dropped first)."""

    def __init__(self, num_beams: int, length_penalty: float) -> None:
        self.num_beams = num_beams
        self.length_penalty = length_penalty
        self.beams: list[tuple[float, list[int]]] = []
        self.worst_score = 1e9

    def __len__(self) -> int:
        return len(self.beams)

    def add(self, tokens: list[int], sum_logprobs: float) -> None:
        score = sum_logprobs / (max(len(tokens), 1) ** self.length_penalty)
        if len(self) < self.num_beams or score > self.worst_score:
            self.beams.append((score, tokens))
            if len(self) > self.num_beams:
                worst = min(range(len(self.beams)), key=lambda i: self.beams[i][0])
                del self.beams[worst]
            self.worst_score = min(s for s, _ in self.beams)

    def is_done(self, best_sum_logprobs: float, cur_len: int) -> bool:
        """docs/original-glm.md §9: done once full and no live beam can beat the worst kept hypothesis."""
        if len(self) < self.num_beams:
            return False
        return self.worst_score >= best_sum_logprobs / (max(cur_len, 1) ** self.length_penalty)

    def sorted(self) -> list[tuple[float, list[int]]]:
        return sorted(self.beams, key=lambda x: -x[0])


@torch.no_grad()
def beam_search(
    model: GLM,
    input_ids: Tensor,
    mask_positions: Tensor | int,
    config: GenerationConfig,
    position_ids: Tensor | None = None,
    sep: Tensor | int | None = None,
    context_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    may_stop: Callable[[bool], bool] | None = None,
) -> GenerationOutput:
    """Batched beam search with the original bookkeeping (docs/original-glm.md §9); see the module docstring."""
    position_ids, sep, mask_positions = _prepare(input_ids, position_ids, sep, mask_positions)
    B, device = input_ids.shape[0], input_ids.device
    K = config.num_beams
    dec = _Decoder(model, mask_positions)
    logits = dec.prefill(input_ids, position_ids, sep, config.sop_id, context_mask)
    # run the context once, then copy its cache to the K beams of each item
    expand = torch.arange(B, device=device).repeat_interleave(K)
    dec.reorder(expand)
    logits = logits.index_select(0, expand)
    V = logits.shape[-1]
    beam_scores = torch.full((B, K), DEAD_BEAM, dtype=log_probs(logits[:1]).dtype, device=device)
    beam_scores[:, 0] = 0.0
    beam_tokens: list[list[int]] = [[] for _ in range(B * K)]
    hyps = [BeamHypotheses(K, config.length_penalty) for _ in range(B)]
    done = [False] * B
    stop_ids = set(config.stop_ids)
    for t in range(config.max_new_tokens):
        logp = log_probs(logits)  # [B*K, V]
        apply_min_length(logp, t, config.min_new_tokens, config.stop_ids)
        apply_no_repeat_ngram(logp, beam_tokens, config.no_repeat_ngram_size)
        flat = (logp + beam_scores.reshape(-1, 1)).reshape(B, K * V)
        n_cand = min(2 * K, K * V)
        if config.do_sample:
            probs = (flat / config.temperature).softmax(-1)
            cand = torch.multinomial(probs, n_cand, generator=generator)
            cand_scores = flat.gather(1, cand)
            cand_scores, order = cand_scores.sort(dim=1, descending=True)
            cand = cand.gather(1, order)
        else:
            cand_scores, cand = flat.topk(n_cand, dim=1)
        cand_beam, cand_tok = (cand // V).cpu(), (cand % V).cpu()
        cand_scores_cpu = cand_scores.cpu()
        next_scores = torch.zeros(B, K, dtype=torch.float64)
        next_tokens = torch.full((B, K), config.pad_id, dtype=torch.long)
        next_beams = torch.zeros(B, K, dtype=torch.long)
        for b in range(B):
            if done[b]:  # keep feeding pad on a finished item's beams
                next_beams[b] = torch.arange(K)
                continue
            filled = 0
            for rank in range(n_cand):
                beam, tok, score = (
                    int(cand_beam[b, rank]),
                    int(cand_tok[b, rank]),
                    float(cand_scores_cpu[b, rank]),
                )
                if tok in stop_ids:
                    if rank < K:  # an end candidate ranked within the first K closes a hypothesis
                        hyps[b].add(list(beam_tokens[b * K + beam]), score)
                    continue
                next_scores[b, filled], next_tokens[b, filled], next_beams[b, filled] = score, tok, beam
                filled += 1
                if filled == K:
                    break
            if filled < K:  # fewer live candidates than beams (tiny vocabularies): pad with dead beams
                next_scores[b, filled:] = DEAD_BEAM * 2
                next_beams[b, filled:] = next_beams[b, 0]
            # The original passes the best of all 2K candidate scores (an [eop] one included), not only
            # the live beams': with a length penalty the two rules stop at different steps.
            done[b] = hyps[b].is_done(float(cand_scores_cpu[b].max()), cur_len=t)
        if (may_stop or bool)(all(done)):
            break
        rows = (torch.arange(B)[:, None] * K + next_beams).reshape(-1)
        beam_tokens = [
            beam_tokens[int(r)] + [int(tok)] for r, tok in zip(rows, next_tokens.reshape(-1), strict=True)
        ]
        beam_scores = next_scores.to(device=device, dtype=beam_scores.dtype)
        if t + 1 == config.max_new_tokens:
            break
        dec.reorder(rows.to(device))
        logits = dec.advance(next_tokens.reshape(-1).to(device))
    # finalise: live beams of unfinished items become hypotheses too
    for b in range(B):
        if done[b]:
            continue
        for k in range(K):
            score = float(beam_scores[b, k])
            if score > DEAD_BEAM / 2:
                hyps[b].add(list(beam_tokens[b * K + k]), score)
    sequences, scores, all_hyps = [], [], []
    for b in range(B):
        ranked = hyps[b].sorted()
        all_hyps.append(ranked)
        best = ranked[0] if ranked else (NEG_INF, [])
        sequences.append(best[1])
        scores.append(best[0])
    return GenerationOutput(sequences=sequences, scores=scores, hypotheses=all_hyps)


# --------------------------------------------------------------------------------------------------
# Interactive blank filling (docs/original-glm.md §3(d), `generate_samples.py`)
# --------------------------------------------------------------------------------------------------
@dataclass
class FilledText:
    text: str  # the input with every blank replaced by its generated text
    blanks: list[str]  # each blank's text, in order
    blank_ids: list[list[int]]  # each blank's generated ids (stop token excluded)


def build_blank_context(token_ids: list[int], tokenizer: Any, task_mask: bool = True) -> list[int]:
    """`[CLS] + text (+ [gMASK] or [MASK] when the text has no mask) + [eos]` (no eos after a final
    `[gMASK]`), docs/original-glm.md §3(d)."""
    masks = {tokenizer.mask_id, tokenizer.smask_id, tokenizer.gmask_id}
    ids = [tokenizer.cls_id, *token_ids]
    if not any(t in masks for t in token_ids):
        ids.append(tokenizer.gmask_id if task_mask else tokenizer.mask_id)
    if ids[-1] != tokenizer.gmask_id:
        ids.append(tokenizer.eos_id)
    return ids


@torch.no_grad()
def fill_blanks(
    model: GLM,
    tokenizer: Any,
    text: str,
    config: GenerationConfig,
    task_mask: bool = True,
    generator: torch.Generator | None = None,
) -> FilledText:
    """Fill every `[MASK]`/`[sMASK]`/`[gMASK]` of `text`, left to right, each in its own Part-B span.

    The context runs once with `sep = len(context)`; each blank starts from `[sop]` at
    `(index of its mask, 1)` and sees the context and every earlier blank through the cache (sep 0).
    A blank ends at `[eop]` or eos. Decision: the cache keeps each blank's fed tokens (`[sop]` and the
    generated ids, not the closing stop token), which is what a later blank attends to.
    """
    device = next(model.parameters()).device
    context = build_blank_context(tokenizer.encode(text), tokenizer, task_mask)
    masks = {tokenizer.mask_id, tokenizer.smask_id, tokenizer.gmask_id}
    mask_idx = [i for i, t in enumerate(context) if t in masks]
    config = config.replace(
        sop_id=tokenizer.sop_id,
        eop_id=tokenizer.eop_id,
        pad_id=tokenizer.pad_id,
        extra_stop_ids=tuple(sorted({*config.extra_stop_ids, tokenizer.eos_id})),
    )
    if config.do_sample and generator is None and config.seed is not None:
        generator = torch.Generator(device=device).manual_seed(config.seed)
    ids = torch.tensor([context], dtype=torch.long, device=device)
    out = model(ids, None, sep=len(context), use_cache=True)
    cache = out.cache
    blanks: list[list[int]] = []
    for m in mask_idx:
        filled = _fill_one(model, cache, m, config, generator)
        blanks.append(filled)
        # extend the cache with this blank's Part-B tokens so later blanks see it
        span = torch.tensor([[tokenizer.sop_id, *filled]], dtype=torch.long, device=device)
        pos = torch.tensor([[[m] * span.shape[1], list(range(1, span.shape[1] + 1))]], device=device)
        cache = model(span, pos, sep=0, cache=cache, use_cache=True).cache
    pieces, last = [], 1  # drop [CLS]
    for m, filled in zip(mask_idx, blanks, strict=True):  # one blank filled per mask
        pieces.append(tokenizer.decode(context[last:m]))
        pieces.append(tokenizer.decode(filled))
        last = m + 1
    pieces.append(tokenizer.decode(context[last:]))
    return FilledText(text="".join(pieces), blanks=[tokenizer.decode(b) for b in blanks], blank_ids=blanks)


def _fill_one(
    model: GLM, cache: KVCache, mask_index: int, config: GenerationConfig, generator: torch.Generator | None
) -> list[int]:
    """Decode one blank of a batch-1 context whose keys/values are already in `cache`."""
    device = cache.keys[0].device
    # The context is in the cache; the decoder's "prefill" is then just the [sop] slot (an empty Part A).
    empty = torch.zeros(1, 0, dtype=torch.long, device=device)
    runner = _CachedPrefixModel(model, cache)
    out = generate(
        runner,
        empty,
        mask_index,
        config,
        position_ids=torch.zeros(1, 2, 0, dtype=torch.long, device=device),
        sep=0,
        generator=generator,
    )
    return out.sequences[0]


class _CachedPrefixModel:
    """Wraps a model so that a cache-less call (the decoder's prefill) starts from a fixed prefix cache.

    Rows are broadcast to the call's batch (beam expansion happens after prefill, on the returned cache).
    """

    def __init__(self, model: GLM, prefix: KVCache) -> None:
        self.model, self.prefix = model, prefix

    def __call__(
        self,
        input_ids: Tensor,
        position_ids: Tensor,
        sep: Any = None,
        attention_mask: Any = None,
        cache: KVCache | None = None,
        use_cache: bool = False,
    ):
        if cache is None:
            cache = self.prefix.reorder(
                torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
            )
        return self.model(
            input_ids, position_ids, sep=sep, attention_mask=attention_mask, cache=cache, use_cache=use_cache
        )
