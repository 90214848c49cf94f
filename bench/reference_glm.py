"""Baselines for bench/bench_train.py: a GLM computed the way the 2021 GLM code computes it, and a plain
causal GPT of the same size. Benchmark baselines only; the toolkit never imports this file.

`ReferenceGLM` mirrors the arithmetic of the original `mpu/transformer.py` (docs/original-glm.md §1-§2), written from the
spec's description (no code copied):
- the mask is an explicit float 0/1 matrix `[B, 1, L, L]` built once per forward from `sep` with
  `torch.ones(...).tril()` plus the Part-A columns (`build_mask_matrix`), and applied in every layer as
  `S * m + (-65504) * (1 - m)` (docs/original-glm.md §1.3 gives -65504; Megatron's GPT-2 used -10000, same cost);
- scores `Q @ (K^T / sqrt(d))`, `torch.nn.Softmax` over keys, dropout, `P @ V`, with the view/permute/
  contiguous head split and merge of `_transpose_for_scores`;
- GELU as the tanh formula written out in tensor ops (`gelu_impl`), separate bias-add linears;
- the same parameter names and shapes as `glm.model.GLM`, so `load_state_dict(ours.state_dict())` gives
  the same function (checked by the benchmark before it times anything).

`CausalGPT` is a plain pre-LN GPT with the same blocks, one learned position table and SDPA with
`is_causal=True` (no mask tensor at all): the fastest causal attention torch offers, the "what a GPT of
this size costs" baseline.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glm.model import GLMConfig


def build_mask_matrix(sep: Tensor, batch_size: int, length: int, dtype: torch.dtype) -> Tensor:
    """Float 0/1 `[B, 1, L, L]`: lower triangle plus the first `sep[b]` columns (docs/original-glm.md §2)."""
    m = torch.ones(batch_size, length, length, dtype=dtype, device=sep.device).tril()
    ids = torch.arange(length, device=sep.device)
    part_a = (ids[None, :] < sep[:, None]).to(dtype)  # [B, L] columns of Part A
    m = m + part_a[:, None, :] - m * part_a[:, None, :]  # logical or on 0/1 floats, as the original
    return m.unsqueeze(1)


def gelu_tanh(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)))


class RefAttention(nn.Module):
    def __init__(self, cfg: GLMConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.n, self.d = cfg.num_attention_heads, cfg.head_size
        self.query_key_value = nn.Linear(h, 3 * h)
        self.dense = nn.Linear(h, h)
        self.attention_dropout = nn.Dropout(cfg.attention_dropout)
        self.output_dropout = nn.Dropout(cfg.hidden_dropout)
        self.softmax = nn.Softmax(dim=-1)

    def _transpose_for_scores(self, x: Tensor) -> Tensor:
        B, L, _ = x.shape
        return x.view(B, L, self.n, self.d).permute(0, 2, 1, 3)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        B, L, h = x.shape
        mixed = self.query_key_value(x)
        q, k, v = (self._transpose_for_scores(t.contiguous()) for t in torch.split(mixed, h, dim=-1))
        scores = torch.matmul(q, k.transpose(-1, -2) / math.sqrt(self.d))
        scores = torch.mul(scores, mask) - 65504.0 * (1.0 - mask)
        probs = self.attention_dropout(self.softmax(scores))
        context = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous().view(B, L, h)
        return self.output_dropout(self.dense(context))


class RefMLP(nn.Module):
    def __init__(self, cfg: GLMConfig) -> None:
        super().__init__()
        self.dense_h_to_4h = nn.Linear(cfg.hidden_size, cfg.ffn_size)
        self.dense_4h_to_h = nn.Linear(cfg.ffn_size, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.dense_4h_to_h(gelu_tanh(self.dense_h_to_4h(x))))


class RefLayer(nn.Module):
    def __init__(self, cfg: GLMConfig) -> None:
        super().__init__()
        self.input_layernorm = nn.LayerNorm(cfg.hidden_size, eps=1e-5)
        self.attention = RefAttention(cfg)
        self.post_attention_layernorm = nn.LayerNorm(cfg.hidden_size, eps=1e-5)
        self.mlp = RefMLP(cfg)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        y = x + self.attention(self.input_layernorm(x), mask)
        return y + self.mlp(self.post_attention_layernorm(y))


class RefStack(nn.Module):
    def __init__(self, cfg: GLMConfig) -> None:
        super().__init__()
        rows = cfg.max_sequence_length + 1
        self.position_embeddings = nn.Embedding(rows, cfg.hidden_size)
        self.block_position_embeddings = nn.Embedding(rows, cfg.hidden_size)
        self.embedding_dropout = nn.Dropout(cfg.hidden_dropout)
        self.layers = nn.ModuleList(RefLayer(cfg) for _ in range(cfg.num_layers))
        self.final_layernorm = nn.LayerNorm(cfg.hidden_size, eps=1e-5)


class ReferenceGLM(nn.Module):
    """`forward(input_ids, position_ids [B, 2, L], sep [B]) -> logits`, computed as the 2021 code does."""

    def __init__(self, cfg: GLMConfig) -> None:
        super().__init__()
        if cfg.position_encoding != "learned" or cfg.layernorm_order != "pre" or cfg.mlp != "gelu":
            raise ValueError(
                "ReferenceGLM models the original GLM only (learned positions, pre-LN, GELU MLP)"
            )
        self.config = cfg
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.transformer = RefStack(cfg)

    def forward(self, input_ids: Tensor, position_ids: Tensor, sep: Tensor) -> Tensor:
        B, L = input_ids.shape
        x = self.word_embeddings(input_ids)
        x = x + self.transformer.position_embeddings(position_ids[:, 0])
        x = x + self.transformer.block_position_embeddings(position_ids[:, 1])
        x = self.transformer.embedding_dropout(x)
        mask = build_mask_matrix(sep, B, L, x.dtype)
        for layer in self.transformer.layers:
            x = layer(x, mask)
        return F.linear(self.transformer.final_layernorm(x), self.word_embeddings.weight)


class GPTBlock(nn.Module):
    def __init__(self, cfg: GLMConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.n = cfg.num_attention_heads
        self.ln_1 = nn.LayerNorm(h, eps=1e-5)
        self.qkv = nn.Linear(h, 3 * h)
        self.proj = nn.Linear(h, h)
        self.ln_2 = nn.LayerNorm(h, eps=1e-5)
        self.fc = nn.Linear(h, cfg.ffn_size)
        self.out = nn.Linear(cfg.ffn_size, h)
        self.p_attn, self.p_hidden = cfg.attention_dropout, cfg.hidden_dropout

    def forward(self, x: Tensor) -> Tensor:
        B, L, h = x.shape
        q, k, v = (t.view(B, L, self.n, -1).transpose(1, 2) for t in self.qkv(self.ln_1(x)).split(h, dim=-1))
        a = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.p_attn if self.training else 0.0
        )
        x = x + F.dropout(self.proj(a.transpose(1, 2).reshape(B, L, h)), self.p_hidden, self.training)
        m = self.out(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))
        return x + F.dropout(m, self.p_hidden, self.training)


class CausalGPT(nn.Module):
    """Plain causal GPT with GLM's shapes (tied head, one position table); `forward(input_ids) -> logits`."""

    def __init__(self, cfg: GLMConfig) -> None:
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.wpe = nn.Embedding(cfg.max_sequence_length, cfg.hidden_size)
        self.blocks = nn.ModuleList(GPTBlock(cfg) for _ in range(cfg.num_layers))
        self.ln_f = nn.LayerNorm(cfg.hidden_size, eps=1e-5)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.normal_(p, 0.0, 0.02)

    def forward(self, input_ids: Tensor) -> Tensor:
        L = input_ids.shape[1]
        x = F.dropout(
            self.wte(input_ids) + self.wpe(torch.arange(L, device=input_ids.device)),
            self.config.hidden_dropout,
            self.training,
        )
        for block in self.blocks:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)
