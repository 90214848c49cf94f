"""The GLM backbone, top to bottom: embeddings with 2D positions, the sep attention mask, attention,
MLP, block, stack and the tied LM head.

It follows the original GLM code (docs/original-glm.md §1-§2) so that original checkpoints load with the same keys and
give the same logits: parameter names are those of the original `module` dict (docs/original-glm.md §12.1). It knows
nothing of tasks, losses or parallelism.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glm.model.config import GLMConfig

MASKED_SCORE = (
    -65504.0
)  # the original's finite fill value (docs/original-glm.md §1.3); largest finite fp16 magnitude


# --------------------------------------------------------------------------------------------------
# Attention mask (docs/original-glm.md §2) and cache
# --------------------------------------------------------------------------------------------------
def _per_token_prefix(sep: Tensor | int | None, batch_size: int, length: int, device) -> Tensor:
    """Normalise every sep form to `[B, L]`: for each key position, the end of its sample's Part A."""
    if sep is None:
        sep = 0
    if not torch.is_tensor(sep):
        sep = torch.tensor([int(sep)], device=device)
    sep = sep.to(device=device, dtype=torch.long)
    if sep.dim() == 2:
        if sep.shape != (batch_size, length):
            raise ValueError(
                f"a per-token sep must be [B, L] = {[batch_size, length]}, got {list(sep.shape)}"
            )
        return sep
    sep = sep.reshape(-1)
    if sep.numel() == 1:
        sep = sep.expand(batch_size)
    if sep.numel() != batch_size:
        raise ValueError(f"sep has {sep.numel()} entries for a batch of {batch_size}")
    return sep[:, None].expand(batch_size, length)


def build_attention_mask(
    sep: Tensor | int | None,
    batch_size: int,
    query_length: int,
    memory_length: int = 0,
    device: torch.device | None = None,
    segment_ids: Tensor | None = None,
) -> Tensor:
    """Boolean mask `[B, 1, L, M + L]`, True where query i may attend key j.

    Within the current chunk: `j < sep or j <= i` (sep = 0 is causal, sep = L bidirectional).
    The M cached columns on the left are always visible (docs/original-glm.md §1.7). Packed rows (several samples in
    one row) pass `segment_ids [B, L]` and a per-token `sep [B, L]` (each token's sample Part-A end,
    as an index into the row); attention then never crosses samples.
    """
    cols = torch.arange(query_length, device=device)
    causal = cols[None, :] <= cols[:, None]  # [L, L]
    if segment_ids is None and (not torch.is_tensor(sep) or sep.dim() < 2):
        prefix_end = _per_token_prefix(sep, batch_size, query_length, device)[:, :1]  # [B, 1]
        mask = causal[None] | (cols[None, None, :] < prefix_end[:, :, None])  # [B, L, L]
    else:
        prefix_end = _per_token_prefix(sep, batch_size, query_length, device)  # [B, L] per key
        mask = causal[None] | (cols[None, None, :] < prefix_end[:, None, :])
        if segment_ids is not None:
            mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
    if memory_length:
        mask = torch.cat([mask.new_ones(batch_size, query_length, memory_length), mask], dim=-1)
    return mask[:, None]


# torch's compiled CPU flex kernel returns wrong values (or NaN) when a length is not a multiple of its
# 128-token block (seen with torch 2.13, e.g. L = 40 or 200, even without a mask), so on CPU the block
# mask and q/k/v are padded to a multiple of it; the padded keys are masked and the padded rows dropped.
CPU_FLEX_BLOCK = 128


def build_block_mask(
    sep: Tensor | int | None,
    batch_size: int,
    query_length: int,
    memory_length: int = 0,
    device: torch.device | None = None,
    segment_ids: Tensor | None = None,
    pad_to: int = 1,
):
    """The same rule as `build_attention_mask`, as a FlexAttention block mask: blocks with no visible
    key (Part-A rows against Part-B columns, other samples of a packed row) are skipped entirely.
    `pad_to > 1` rounds both lengths up to a multiple of it (`flex_attention_glm` pads q/k/v to match)."""
    from torch.nn.attention.flex_attention import create_block_mask

    prefix_end = _per_token_prefix(sep, batch_size, query_length, device)
    M, L = memory_length, query_length
    q_len, kv_len = -(-L // pad_to) * pad_to, -(-(M + L) // pad_to) * pad_to

    def glm_mask(b, h, q_idx, kv_idx):
        key = (kv_idx - M).clamp(min=0)
        visible = (key < prefix_end[b, key]) | (key <= q_idx)
        if segment_ids is not None:
            visible = visible & (segment_ids[b, q_idx] == segment_ids[b, key])
        return (kv_idx < M) | visible

    def padded_mask(b, h, q_idx, kv_idx):  # padded rows see what the last row sees; padded keys nothing
        q = q_idx.clamp(max=L - 1)
        return glm_mask(b, h, q, kv_idx.clamp(max=M + L - 1)) & (kv_idx < M + L)

    mask_mod = glm_mask if (q_len, kv_len) == (L, M + L) else padded_mask
    return create_block_mask(mask_mod, batch_size, None, q_len, kv_len, device=device)


def _explicit_mask(attention_mask: Tensor, query_length: int, key_length: int) -> Tensor:
    """An explicit 0/1 or bool mask -> bool `[B, 1, L, M+L]` (True = may attend).

    `[B, 1, L, >= M+L]` is the original's matrix form (its last M+L columns are used, docs/original-glm.md §2);
    `[B, M+L]` is the Hugging Face port's key padding mask, broadcast over queries (docs/original-glm.md §12.3).
    """
    if attention_mask.dim() == 2 and attention_mask.shape[1] == key_length:
        attention_mask = attention_mask[:, None, None, :].expand(-1, 1, query_length, -1)
    if (
        attention_mask.dim() != 4
        or attention_mask.shape[-1] < key_length
        or attention_mask.shape[2] != query_length
    ):
        raise ValueError(
            f"attention_mask must be a sep ([B] or one element), an explicit [B, 1, L, M+L] = "
            f"[B, 1, {query_length}, {key_length}] matrix or a [B, {key_length}] key padding mask; "
            f"got shape {tuple(attention_mask.shape)}"
        )
    mask = attention_mask[..., -key_length:]
    return mask if mask.dtype == torch.bool else mask > 0.5


def _is_sep(mask: Tensor, batch_size: int) -> bool:
    """The original's dispatch (docs/original-glm.md §2): one element or a `[B]` vector is a sep, anything else a matrix."""
    return mask.numel() == 1 or (mask.dim() == 1 and mask.numel() == batch_size)


@dataclass
class KVCache:
    """Per-layer attention keys and values `[B, n, T, d]` of everything decoded so far.

    Unlike the original's "mems" (layer inputs re-projected every step, docs/original-glm.md §1.7) the cache holds the
    projected keys/values, so a new token costs one position of compute. Logits are the same.
    """

    keys: list[Tensor]
    values: list[Tensor]

    @property
    def length(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    def reorder(self, index: Tensor) -> KVCache:
        """Select (or repeat) batch rows: beam reordering, or expanding a prompt to several beams."""
        return KVCache(
            [k.index_select(0, index) for k in self.keys], [v.index_select(0, index) for v in self.values]
        )


@dataclass
class GLMOutput:
    logits: Tensor
    cache: KVCache | None = None
    hidden_states: tuple[Tensor, ...] | None = None


# --------------------------------------------------------------------------------------------------
# Rotary 2D positions (GLM-130B): half of each head rotates with the position id, half with the block id
# --------------------------------------------------------------------------------------------------
class Rotary2D(nn.Module):
    def __init__(self, head_size: int, base: float) -> None:
        super().__init__()
        rotary_dim = head_size // 2  # one half per position id row
        inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim))
        self.inv_freq: Tensor
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        """`[B, 2, L]` ids -> cos, sin of shape `[B, 1, L, head_size]` (first half: positions, second: blocks)."""
        angles = position_ids.float()[..., None] * self.inv_freq  # [B, 2, L, d/4]
        angles = torch.cat([angles, angles], dim=-1)  # rotate-half layout per row: [B, 2, L, d/2]
        angles = torch.cat([angles[:, 0], angles[:, 1]], dim=-1)[:, None]  # [B, 1, L, d]
        return angles.cos(), angles.sin()


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary_2d(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first half of each head by the position id and the second half by the block id."""
    half = x.shape[-1] // 2
    parts = []
    for i, part in enumerate((x[..., :half], x[..., half:])):
        c, s = cos[..., i * half : (i + 1) * half], sin[..., i * half : (i + 1) * half]
        parts.append(part * c.to(x.dtype) + _rotate_half(part) * s.to(x.dtype))
    return torch.cat(parts, dim=-1)


# --------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------
class SelfAttention(nn.Module):
    def __init__(self, config: GLMConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden_size
        self.num_heads, self.head_size = config.num_attention_heads, config.head_size
        self.query_key_value = nn.Linear(
            h, 3 * h
        )  # rows [0,h) Q, [h,2h) K, [2h,3h) V (docs/original-glm.md §1.3)
        self.dense = nn.Linear(h, h)
        self.output_dropout = nn.Dropout(config.hidden_dropout)

    def forward(
        self,
        x: Tensor,
        mask: Tensor,
        rotary: tuple[Tensor, Tensor] | None,
        past: tuple[Tensor, Tensor] | None,
        impl: str,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        B, L, h = x.shape
        q, k, v = self.query_key_value(x).split(h, dim=-1)
        q, k, v = (t.view(B, L, self.num_heads, self.head_size).transpose(1, 2) for t in (q, k, v))
        if rotary is not None:
            q, k = apply_rotary_2d(q, *rotary), apply_rotary_2d(k, *rotary)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        dropout = self.config.attention_dropout if self.training else 0.0
        if impl == "eager":
            context = eager_attention(q, k, v, mask, dropout, self.config.softmax_in_fp32)
        elif impl == "flex":
            context = flex_attention_glm(q, k, v, mask, self.config.softmax_in_fp32)
        else:
            context = sdpa_attention(q, k, v, mask, dropout, self.config.softmax_in_fp32)
        context = context.transpose(1, 2).reshape(B, L, h)
        return self.output_dropout(self.dense(context)), (k, v)


def eager_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor, dropout: float, softmax_in_fp32: bool
) -> Tensor:
    """The readable reference, arithmetic as in the original (docs/original-glm.md §1.3): scale K, fill -65504, softmax."""
    dtype = q.dtype
    if softmax_in_fp32 and dtype in (torch.float16, torch.bfloat16):  # scores, softmax and PV in fp32
        q, k, v = q.float(), k.float(), v.float()
    scores = q @ (k.transpose(-1, -2) / math.sqrt(q.shape[-1]))
    scores = scores.masked_fill(~mask, MASKED_SCORE)
    probs = F.dropout(scores.softmax(dim=-1), p=dropout, training=dropout > 0)
    return (probs @ v).to(dtype)


def sdpa_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor, dropout: float, softmax_in_fp32: bool
) -> Tensor:
    """torch's fused scaled-dot-product attention with the boolean GLM mask (same probabilities)."""
    dtype = q.dtype
    if softmax_in_fp32 and dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    return out.to(dtype)


_compiled_flex = None


def flex_attention_glm(q: Tensor, k: Tensor, v: Tensor, block_mask, softmax_in_fp32: bool) -> Tensor:
    """FlexAttention with the GLM block mask (compiled once per process; needs no dense mask)."""
    global _compiled_flex
    if _compiled_flex is None:
        from torch.nn.attention.flex_attention import flex_attention

        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    dtype = q.dtype
    if softmax_in_fp32 and dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
    L = q.shape[-2]
    q_len, kv_len = block_mask.seq_lengths
    if q_len != L or kv_len != k.shape[-2]:  # a padded block mask (CPU): pad to it, drop the padded rows
        q = F.pad(q, (0, 0, 0, q_len - L))
        k, v = (F.pad(t, (0, 0, 0, kv_len - t.shape[-2])) for t in (k, v))
    return _compiled_flex(q, k, v, block_mask=block_mask)[..., :L, :].to(dtype)


class MLP(nn.Module):
    def __init__(self, config: GLMConfig) -> None:
        super().__init__()
        h, ffn = config.hidden_size, config.ffn_size
        self.geglu = config.mlp == "geglu"
        self.approximate = config.gelu_approximate
        self.dense_h_to_4h = nn.Linear(h, 2 * ffn if self.geglu else ffn)
        self.dense_4h_to_h = nn.Linear(ffn, h)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dense_h_to_4h(x)
        if self.geglu:  # GLM-130B: first half is the value, second half goes through the GELU gate
            value, gate = x.chunk(2, dim=-1)
            x = value * F.gelu(gate, approximate=self.approximate)
        else:
            x = F.gelu(x, approximate=self.approximate)
        return self.dropout(self.dense_4h_to_h(x))


class GLMBlock(nn.Module):
    """Pre-LN (docs/original-glm.md §1.2): y = x + Attn(LN(x)); out = y + MLP(LN(y)).

    DeepNorm (GLM-130B) keeps the same modules but adds the normalised input scaled by alpha:
    y = a*LN_in(x) + Attn(LN_in(x)); out = a*LN_post(y) + MLP(LN_post(y)).
    """

    def __init__(self, config: GLMConfig) -> None:
        super().__init__()
        eps = config.layernorm_epsilon
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=eps)
        self.attention = SelfAttention(config)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=eps)
        self.mlp = MLP(config)
        self.deepnorm_alpha = config.deepnorm_alpha if config.layernorm_order == "deepnorm" else None

    def forward(
        self,
        x: Tensor,
        mask: Tensor,
        rotary: tuple[Tensor, Tensor] | None = None,
        past: tuple[Tensor, Tensor] | None = None,
        impl: str = "sdpa",
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        normed = self.input_layernorm(x)
        attn, present = self.attention(normed, mask, rotary, past, impl)
        if self.deepnorm_alpha is None:
            y = x + attn
            return y + self.mlp(self.post_attention_layernorm(y)), present
        y = normed * self.deepnorm_alpha + attn
        normed = self.post_attention_layernorm(y)
        return normed * self.deepnorm_alpha + self.mlp(normed), present


class GLMStack(nn.Module):
    """`transformer.*` of the original: position tables, layers, final LayerNorm."""

    def __init__(self, config: GLMConfig) -> None:
        super().__init__()
        if config.position_encoding == "learned":
            rows = config.max_sequence_length + 1  # P + 1 rows (docs/original-glm.md §1.1)
            self.position_embeddings = nn.Embedding(rows, config.hidden_size)
            self.block_position_embeddings = nn.Embedding(rows, config.hidden_size)
        self.embedding_dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(GLMBlock(config) for _ in range(config.num_layers))
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------
class GLM(nn.Module):
    """GLM backbone with the tied LM head. `forward` returns logits over the whole padded vocabulary."""

    def __init__(self, config: GLMConfig) -> None:
        super().__init__()
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.transformer = GLMStack(config)
        self.rotary = (
            Rotary2D(config.head_size, config.rotary_base) if config.position_encoding == "rotary" else None
        )
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """docs/original-glm.md §1.8: N(0, 0.02) everywhere, output projections N(0, 0.02 / sqrt(2 * layers)), biases 0.

        DeepNorm instead uses Xavier normal with gain beta on V, the attention output and the MLP
        (DeepNet), and gain 1 on Q and K.
        """
        cfg, std = self.config, self.config.initializer_range
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, std)
                nn.init.zeros_(module.bias)
        out_std = std / math.sqrt(2.0 * cfg.num_layers)
        for layer in self.transformer.layers:
            assert isinstance(layer, GLMBlock)
            if cfg.layernorm_order == "deepnorm":
                h, beta = cfg.hidden_size, cfg.deepnorm_beta
                assert beta is not None  # GLMConfig.__post_init__ sets it for deepnorm
                qkv = layer.attention.query_key_value.weight
                for third, gain in ((0, 1.0), (1, 1.0), (2, beta)):
                    nn.init.xavier_normal_(qkv[third * h : (third + 1) * h], gain=gain)
                for linear in (layer.attention.dense, layer.mlp.dense_h_to_4h, layer.mlp.dense_4h_to_h):
                    nn.init.xavier_normal_(linear.weight, gain=beta)
            else:
                nn.init.normal_(layer.attention.dense.weight, 0.0, out_std)
                nn.init.normal_(layer.mlp.dense_4h_to_h.weight, 0.0, out_std)

    def attention_impl(self, x: Tensor) -> str:
        """Kernel for this call. `auto`: flex on CUDA (when there is no attention dropout to apply),
        sdpa elsewhere. Flex on CPU has no backward pass in torch, so it is inference-only there, and even
        there compiled flex plus its per-batch block mask is 1.4-1.8x slower than sdpa on the development
        CPU (bench/bench_flex_cpu.py), with a compilation for every new shape: `auto` keeps sdpa."""
        impl = self.config.attention
        dropout = self.training and self.config.attention_dropout > 0
        if impl == "auto":
            return "flex" if x.is_cuda and not dropout else "sdpa"
        if impl == "flex":
            if dropout:
                raise ValueError(
                    "attention='flex' applies no attention dropout: set attention_dropout=0 "
                    "for training with flex, or use attention='sdpa'/'auto'"
                )
            if not x.is_cuda and torch.is_grad_enabled() and x.requires_grad:
                raise ValueError(
                    "attention='flex' on CPU is inference-only (torch has no CPU backward for "
                    "flex_attention); use attention='sdpa' or 'auto' for training on CPU"
                )
        return impl

    def embed(
        self, input_ids: Tensor | None, position_ids: Tensor, inputs_embeds: Tensor | None = None
    ) -> Tensor:
        """Word + position + block-position embeddings (docs/original-glm.md §1.1), before dropout."""
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        if self.rotary is None:
            x = x + self.transformer.position_embeddings(position_ids[:, 0])
            x = x + self.transformer.block_position_embeddings(position_ids[:, 1])
        alpha = self.config.embedding_grad_scale
        if alpha != 1.0:  # GLM-130B: forward unchanged, gradient into the embeddings scaled by alpha
            x = x * alpha + x.detach() * (1.0 - alpha)
        return x

    def forward(
        self,
        input_ids: Tensor | None,
        position_ids: Tensor | None = None,
        sep: Tensor | int | None = None,
        attention_mask: Tensor | None = None,
        cache: KVCache | None = None,
        use_cache: bool = False,
        output_hidden_states: bool = False,
        inputs_embeds: Tensor | None = None,
        segment_ids: Tensor | None = None,
        logits_index: Tensor | None = None,
    ) -> GLMOutput:
        """Run the backbone on `[B, L]` ids (or `inputs_embeds [B, L, h]`, for continuous prompts).

        position_ids: `[B, 2, L]` (row 0 positions, row 1 block positions); None gives `arange(L)` / 0.
        sep: per-sample Part-A length `[B]` or one int (docs/original-glm.md §2); None = 0 = causal. Ignored when an
             explicit `attention_mask [B, 1, L, M+L]` (True/1 = may attend) is given. As in the
             original, a sep given as `attention_mask` and a matrix given as `sep` are both understood;
             a `[B, M+L]` attention_mask is a key padding mask (the Hugging Face port's form).
        cache: keys/values of earlier positions; they are visible to every new query. With
             `use_cache=True` the returned `out.cache` holds them plus this call's positions.
        segment_ids: `[B, L]` sample index of each token in packed rows (then `sep` is per token `[B, L]`).
        logits_index: `[B, K]` positions whose logits are wanted (out.logits is then `[B, K, V]`): the
             V-sized head is the largest matmul of a small model, and losses need only Part B.
        """
        x_ref = input_ids if input_ids is not None else inputs_embeds
        if x_ref is None:
            raise ValueError("GLM.forward: give input_ids or inputs_embeds")
        B, L = x_ref.shape[:2]
        device = x_ref.device
        if position_ids is None:
            position_ids = torch.stack(
                [torch.arange(L, device=device), torch.zeros(L, dtype=torch.long, device=device)]
            )
            position_ids = position_ids[None].expand(B, 2, L)
        elif position_ids.shape != (B, 2, L):
            raise ValueError(
                f"position_ids must have shape [B, 2, L] = {[B, 2, L]}, got {list(position_ids.shape)}"
            )
        past_len = cache.length if cache is not None else 0
        # the original's calling convention `forward(ids, position_ids, attention_mask)` passes a sep or an
        # explicit matrix in the same argument (docs/original-glm.md §2): route each to where it belongs
        if torch.is_tensor(sep) and sep.dim() == 4:
            sep, attention_mask = None, sep
        if attention_mask is not None and _is_sep(attention_mask, B):
            sep, attention_mask = attention_mask, None
        x = self.transformer.embedding_dropout(self.embed(input_ids, position_ids, inputs_embeds))
        impl = self.attention_impl(x)
        # the mask is built once per batch and shared by all layers
        if attention_mask is not None:
            if impl == "flex" and self.config.attention == "flex":
                raise ValueError("attention='flex' takes sep/segment_ids, not an explicit attention_mask")
            mask = _explicit_mask(attention_mask.to(device), L, past_len + L)
            # a query row that may attend nowhere gets uniform weights in the original (every score is the
            # same -65504 fill); SDPA returns zeros there, so such batches take the original's arithmetic
            impl = "eager" if not bool(mask.any(-1).all()) else ("sdpa" if impl == "flex" else impl)
        elif impl == "flex":
            pad_to = CPU_FLEX_BLOCK if device.type == "cpu" else 1
            mask = build_block_mask(sep, B, L, past_len, device, segment_ids, pad_to)
        else:
            mask = build_attention_mask(sep, B, L, past_len, device, segment_ids)
        rotary = self.rotary(position_ids) if self.rotary is not None else None
        hidden = [x] if output_hidden_states else None
        keys, values = [], []
        for i, layer in enumerate(self.transformer.layers):
            past = (cache.keys[i], cache.values[i]) if cache is not None else None
            x, (k, v) = layer(x, mask, rotary, past, impl)
            if use_cache:
                keys.append(k)
                values.append(v)
            if hidden is not None:
                hidden.append(x)
        x = self.transformer.final_layernorm(x)
        if hidden is not None:
            hidden.append(x)
        if logits_index is not None:
            x = x.gather(1, logits_index[..., None].expand(-1, -1, x.shape[-1]))
        logits = F.linear(x, self.word_embeddings.weight)  # tied head, no bias (docs/original-glm.md §1.5)
        return GLMOutput(
            logits=logits,
            cache=KVCache(keys, values) if use_cache else None,
            hidden_states=tuple(hidden) if hidden is not None else None,
        )

    def load_original_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        """Load the `module` dict of an original GLM checkpoint (docs/original-glm.md §12.1 keys, model-parallel size 1).

        Keys and shapes are the same as ours, so this is a strict load with a readable error; sharded
        checkpoints, prefixes and longer/shorter position tables are handled by `glm.checkpoint`.
        """
        ours = self.state_dict()
        missing = sorted(set(ours) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(ours))
        wrong = sorted(k for k in set(ours) & set(state_dict) if ours[k].shape != state_dict[k].shape)
        if missing or unexpected or wrong:
            details = [
                f"missing keys {missing[:8]}" if missing else "",
                f"unexpected keys {unexpected[:8]}" if unexpected else "",
                "shape mismatch "
                + ", ".join(
                    f"{k}: ours {tuple(ours[k].shape)} vs {tuple(state_dict[k].shape)}" for k in wrong[:8]
                )
                if wrong
                else "",
            ]
            raise ValueError(
                "original state dict does not fit this GLMConfig: " + "; ".join(d for d in details if d)
            )
        self.load_state_dict(state_dict, strict=True)
