"""Backbone tests: the sep mask, kernels, float64 recomputation, KV cache, GLM-130B switches.

`reference_forward` re-implements the original GLM forward pass (docs/original-glm.md §1-§2) independently of
`glm.model`: explicit mask matrix built the original way, K pre-scaled, the -65504 fill arithmetic
`S*m - 65504*(1-m)`, the tanh GELU written out as in `gelu_impl`, and the original's memory
("mems" = layer inputs, re-projected every step) for incremental decoding.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from glm.model import GLM, GLMConfig, build_attention_mask

V = 97


def tiny(**overrides) -> GLMConfig:
    base = dict(
        num_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        vocab_size=V,
        max_sequence_length=64,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    return GLMConfig(**{**base, **overrides})


def make_model(seed: int = 0, **overrides) -> GLM:
    torch.manual_seed(seed)
    model = GLM(tiny(**overrides)).eval()
    with torch.no_grad():  # non-trivial LayerNorm / bias values, so a wrong wiring cannot hide
        for name, p in model.named_parameters():
            if name.endswith("bias") or "layernorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def glm_inputs(batch: int = 3, length: int = 12, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (batch, length), generator=g)
    pos = torch.randint(0, 20, (batch, 2, length), generator=g)
    sep = torch.randint(0, length + 1, (batch,), generator=g)
    return ids, pos, sep


# --------------------------------------------------------------------------------------------------
# Independent reference of the original forward pass
# --------------------------------------------------------------------------------------------------
def gelu_impl(x):
    return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)))


def layer_norm(x, w, b, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def original_mask(sep, batch, length, memory_length):
    """`build_mask_matrix` of the original: tril ones, then the first `sep` columns set to 1."""
    m = torch.ones(batch, length, length).tril()
    ids = torch.arange(length)
    m = torch.where((ids[None, None, :] < sep[:, None, None]), torch.ones_like(m), m)
    if memory_length:
        m = torch.cat([torch.ones(batch, length, memory_length), m], dim=2)
    return m[:, None]


def reference_forward(sd, cfg, ids, pos, sep, mems=None, matrix=None):
    """Returns (logits, new_mems) computed like the 2021 code, in the dtype of `sd`; `matrix` is an
    explicit 0/1 `[B, 1, L, M+L]` mask used instead of the one built from `sep`."""
    h, n = cfg.hidden_size, cfg.num_attention_heads
    d = h // n
    B, L = ids.shape
    M = mems[0].shape[1] if mems else 0
    x = sd["word_embeddings.weight"][ids]
    x = x + sd["transformer.position_embeddings.weight"][pos[:, 0]]
    x = x + sd["transformer.block_position_embeddings.weight"][pos[:, 1]]
    m = (original_mask(sep, B, L, M) if matrix is None else matrix).to(x.dtype)
    new_mems = [x]
    for i in range(cfg.num_layers):
        p = lambda k, i=i: sd[f"transformer.layers.{i}.{k}"]  # noqa: E731
        ln = layer_norm(x, p("input_layernorm.weight"), p("input_layernorm.bias"))
        qkv = ln @ p("attention.query_key_value.weight").T + p("attention.query_key_value.bias")
        q = qkv[..., :h]
        if mems:
            mem_ln = layer_norm(mems[i], p("input_layernorm.weight"), p("input_layernorm.bias"))
            kv = torch.cat([mem_ln, ln], 1) @ p("attention.query_key_value.weight").T + p(
                "attention.query_key_value.bias"
            )
            k, v = kv[..., h : 2 * h], kv[..., 2 * h :]
        else:
            k, v = qkv[..., h : 2 * h], qkv[..., 2 * h :]
        heads = lambda t: t.view(B, -1, n, d).permute(0, 2, 1, 3)  # noqa: E731
        q, k, v = heads(q), heads(k), heads(v)
        s = q @ (k.transpose(-1, -2) / math.sqrt(d))
        s = s * m - 65504.0 * (1.0 - m)
        probs = torch.softmax(s, dim=-1)
        ctx = (probs @ v).permute(0, 2, 1, 3).reshape(B, L, h)
        x = x + ctx @ p("attention.dense.weight").T + p("attention.dense.bias")
        ln2 = layer_norm(x, p("post_attention_layernorm.weight"), p("post_attention_layernorm.bias"))
        mlp = gelu_impl(ln2 @ p("mlp.dense_h_to_4h.weight").T + p("mlp.dense_h_to_4h.bias"))
        x = x + mlp @ p("mlp.dense_4h_to_h.weight").T + p("mlp.dense_4h_to_h.bias")
        new_mems.append(x)
    out = layer_norm(x, sd["transformer.final_layernorm.weight"], sd["transformer.final_layernorm.bias"])
    logits = out @ sd["word_embeddings.weight"].T
    if mems:
        new_mems = [torch.cat([old, new], 1) for old, new in zip(mems, new_mems, strict=True)]
    return logits, new_mems


# --------------------------------------------------------------------------------------------------
# Mask semantics (docs/original-glm.md §2)
# --------------------------------------------------------------------------------------------------
def test_sep_zero_is_causal_and_sep_L_is_bidirectional():
    L = 5
    causal = build_attention_mask(torch.tensor([0]), 1, L)[0, 0]
    assert torch.equal(causal, torch.ones(L, L, dtype=torch.bool).tril())
    full = build_attention_mask(torch.tensor([L]), 1, L)[0, 0]
    assert bool(full.all())


def test_sep_mask_hand_built_case():
    # sep = 3, L = 5: Part A (0..2) sees only Part A; Part B token 3 sees 0..3, token 4 sees 0..4.
    expected = torch.tensor(
        [
            [1, 1, 1, 0, 0],
            [1, 1, 1, 0, 0],
            [1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    mask = build_attention_mask(torch.tensor([3, 0]), 2, 5, memory_length=2)
    assert mask.shape == (2, 1, 5, 7)
    assert bool(mask[:, :, :, :2].all())  # memory columns always visible
    assert torch.equal(mask[0, 0, :, 2:], expected)
    assert torch.equal(mask[1, 0, :, 2:], torch.ones(5, 5, dtype=torch.bool).tril())


def test_part_a_never_sees_part_b():
    model = make_model()
    ids, pos, _ = glm_inputs(batch=1, length=10)
    sep = torch.tensor([6])
    base = model(ids, pos, sep=sep).logits
    changed = ids.clone()
    changed[0, 6:] = (changed[0, 6:] + 1) % V
    after = model(changed, pos, sep=sep).logits
    torch.testing.assert_close(after[0, :6], base[0, :6], rtol=0, atol=0)
    assert not torch.allclose(after[0, 6:], base[0, 6:])


def test_sep_forms_agree():
    model = make_model()
    ids, pos, _ = glm_inputs(batch=2)
    per_sample = model(ids, pos, sep=torch.tensor([4, 4])).logits
    scalar = model(ids, pos, sep=4).logits
    explicit = model(ids, pos, attention_mask=original_mask(torch.tensor([4, 4]), 2, ids.shape[1], 0)).logits
    torch.testing.assert_close(scalar, per_sample, rtol=0, atol=0)
    torch.testing.assert_close(explicit, per_sample, rtol=1e-6, atol=1e-6)


def test_original_calling_convention_dispatches_sep_and_matrix():
    """The original's third argument is a sep (one element or [B]) or an explicit matrix (docs/original-glm.md §2)."""
    model = make_model().double()
    ids, pos, sep = glm_inputs()
    expected = model(ids, pos, sep=sep).logits
    matrix = original_mask(sep, *ids.shape, 0).double()
    torch.testing.assert_close(model(ids, pos, attention_mask=sep).logits, expected, rtol=0, atol=0)
    torch.testing.assert_close(model(ids, pos, matrix).logits, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        model(ids, pos, attention_mask=torch.tensor(5)).logits, model(ids, pos, sep=5).logits, rtol=0, atol=0
    )
    with pytest.raises(ValueError, match=r"attention_mask must be .* got shape \(3, 12, 12\)"):
        model(ids, pos, attention_mask=matrix[:, 0])


def test_query_row_with_no_visible_key_gets_uniform_weights_as_the_original():
    """An all-zero row of an explicit matrix: every score is the -65504 fill, so the original averages
    all values there (docs/original-glm.md §1.3); SDPA alone would return zeros."""
    model = make_model(attention="sdpa").double()
    ids, pos, sep = glm_inputs()
    matrix = original_mask(sep, *ids.shape, 0).double()
    matrix[0, 0, 3] = 0.0  # query 3 of sample 0 sees nothing
    matrix[2, 0, 7] = 0.0
    ref, _ = reference_forward(model.state_dict(), model.config, ids, pos, sep, matrix=matrix)
    torch.testing.assert_close(model(ids, pos, attention_mask=matrix).logits, ref, rtol=1e-10, atol=1e-10)


def test_key_padding_mask_is_broadcast_over_queries():
    """A `[B, L]` mask is the Hugging Face port's key padding mask (docs/original-glm.md §12.3): bidirectional over the
    keys it marks."""
    model = make_model().double()
    ids, pos, _ = glm_inputs()
    keys = torch.ones(3, ids.shape[1], dtype=torch.long)
    keys[1, -4:] = 0
    matrix = keys[:, None, None, :].expand(-1, 1, ids.shape[1], -1).double()
    ref, _ = reference_forward(model.state_dict(), model.config, ids, pos, None, matrix=matrix)
    torch.testing.assert_close(model(ids, pos, attention_mask=keys).logits, ref, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------------------
# Numerics against the reference
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_matches_original_arithmetic_in_float64(impl):
    model = make_model(attention=impl).double()
    ids, pos, sep = glm_inputs()
    ours = model(ids, pos, sep=sep).logits
    ref, _ = reference_forward(model.state_dict(), model.config, ids, pos, sep)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def test_float32_close_to_float64_recomputation():
    model = make_model()
    ids, pos, sep = glm_inputs(length=20)
    ours = model(ids, pos, sep=sep).logits
    sd64 = {k: v.double() for k, v in model.state_dict().items()}
    ref, _ = reference_forward(sd64, model.config, ids, pos, sep)
    assert (ours.double() - ref).abs().max().item() < 1e-5


def test_eager_equals_sdpa_with_gradients():
    ids, pos, sep = glm_inputs(length=16)
    grads = {}
    for impl in ("eager", "sdpa"):
        model = make_model(attention=impl).double()
        logits = model(ids, pos, sep=sep).logits
        (logits.sin().sum()).backward()
        grads[impl] = (logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(grads["eager"][0], grads["sdpa"][0], rtol=1e-10, atol=1e-10)
    for name, g in grads["eager"][1].items():
        torch.testing.assert_close(g, grads["sdpa"][1][name], rtol=1e-8, atol=1e-10, msg=name)


def test_original_state_dict_loads_and_gives_reference_logits():
    source = make_model(seed=3)
    original = {k: v.clone() for k, v in source.state_dict().items()}  # docs/original-glm.md §12.1 key layout
    model = GLM(tiny()).eval()
    model.load_original_state_dict(original)
    ids, pos, sep = glm_inputs()
    ref, _ = reference_forward(original, model.config, ids, pos, sep)
    assert (model(ids, pos, sep=sep).logits - ref).abs().max().item() < 1e-5
    bad = dict(original)
    bad.pop("transformer.final_layernorm.bias")
    with pytest.raises(ValueError, match="missing keys.*final_layernorm.bias"):
        model.load_original_state_dict(bad)


def test_state_dict_keys_are_the_original_layout():
    cfg = tiny(num_layers=1)
    keys = set(GLM(cfg).state_dict())
    h = cfg.hidden_size
    expected = {
        "word_embeddings.weight",
        "transformer.position_embeddings.weight",
        "transformer.block_position_embeddings.weight",
        "transformer.final_layernorm.weight",
        "transformer.final_layernorm.bias",
    }
    for part in (
        "input_layernorm",
        "attention.query_key_value",
        "attention.dense",
        "post_attention_layernorm",
        "mlp.dense_h_to_4h",
        "mlp.dense_4h_to_h",
    ):
        expected |= {f"transformer.layers.0.{part}.weight", f"transformer.layers.0.{part}.bias"}
    assert keys == expected
    sd = GLM(cfg).state_dict()
    assert sd["transformer.position_embeddings.weight"].shape == (cfg.max_sequence_length + 1, h)
    assert sd["transformer.layers.0.attention.query_key_value.weight"].shape == (3 * h, h)
    assert sd["transformer.layers.0.mlp.dense_4h_to_h.weight"].shape == (h, 4 * h)


def test_initialisation_follows_spec():
    torch.manual_seed(0)
    cfg = GLMConfig(
        num_layers=8, hidden_size=256, num_attention_heads=4, vocab_size=2048, max_sequence_length=256
    )
    model = GLM(cfg)
    sd = model.state_dict()
    assert abs(sd["word_embeddings.weight"].std().item() - 0.02) < 1e-3
    assert abs(sd["transformer.layers.0.attention.query_key_value.weight"].std().item() - 0.02) < 1e-3
    out_std = 0.02 / math.sqrt(2 * 8)
    assert abs(sd["transformer.layers.3.mlp.dense_4h_to_h.weight"].std().item() - out_std) < 2e-4
    assert abs(sd["transformer.layers.3.attention.dense.weight"].std().item() - out_std) < 2e-4
    assert sd["transformer.layers.0.attention.dense.bias"].abs().max().item() == 0.0
    assert torch.equal(sd["transformer.layers.0.input_layernorm.weight"], torch.ones(256))


def test_hidden_states_and_tied_head():
    model = make_model()
    ids, pos, sep = glm_inputs()
    out = model(ids, pos, sep=sep, output_hidden_states=True)
    assert len(out.hidden_states) == model.config.num_layers + 2
    torch.testing.assert_close(out.hidden_states[-1] @ model.word_embeddings.weight.T, out.logits)


def test_logits_index_gathers_rows_of_the_full_logits_and_gradients():
    model = make_model().double()
    ids, pos, sep = glm_inputs()
    index = torch.tensor([[11, 0, 5], [3, 3, 7], [10, 9, 8]])
    full = model(ids, pos, sep=sep).logits
    part = model(ids, pos, sep=sep, logits_index=index).logits
    assert part.shape == (3, 3, V)
    torch.testing.assert_close(part, full[torch.arange(3)[:, None], index], rtol=0, atol=1e-12)
    # the same loss through either path gives the same parameter gradients
    target = torch.randint(0, V, (3, 3), generator=torch.Generator().manual_seed(2))
    g_part = torch.autograd.grad(
        F.cross_entropy(part.flatten(0, 1), target.flatten()), model.word_embeddings.weight
    )
    full = model(ids, pos, sep=sep).logits[torch.arange(3)[:, None], index]
    g_full = torch.autograd.grad(
        F.cross_entropy(full.flatten(0, 1), target.flatten()), model.word_embeddings.weight
    )
    torch.testing.assert_close(g_part[0], g_full[0], rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# Incremental decoding
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_kv_cache_decoding_equals_full_forward(impl):
    model = make_model(attention=impl).double()
    ids, pos, _ = glm_inputs(batch=2, length=14)
    part_a = 8
    full = model(ids, pos, sep=part_a).logits
    out = model(ids[:, :part_a], pos[:, :, :part_a], sep=part_a, use_cache=True)
    steps = [out.logits]
    cache = out.cache
    for t in range(part_a, ids.shape[1]):
        out = model(ids[:, t : t + 1], pos[:, :, t : t + 1], sep=0, cache=cache, use_cache=True)
        cache = out.cache
        steps.append(out.logits)
    assert cache.length == ids.shape[1]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-10, atol=1e-10)
    # and the original's memory mechanism gives the same logits step by step
    sd = model.state_dict()
    ref_logits, mems = reference_forward(
        sd, model.config, ids[:, :part_a], pos[:, :, :part_a], torch.tensor([part_a] * 2)
    )
    ref_steps = [ref_logits]
    for t in range(part_a, ids.shape[1]):
        logits, mems = reference_forward(
            sd, model.config, ids[:, t : t + 1], pos[:, :, t : t + 1], torch.zeros(2, dtype=torch.long), mems
        )
        ref_steps.append(logits)
    torch.testing.assert_close(torch.cat(ref_steps, 1), full, rtol=1e-10, atol=1e-10)


def test_cache_reorder_selects_rows():
    model = make_model().double()
    ids, pos, _ = glm_inputs(batch=3, length=6)
    cache = model(ids, pos, sep=6, use_cache=True).cache
    index = torch.tensor([2, 2, 0])
    reordered = cache.reorder(index)
    nxt = torch.tensor([[5], [6], [7]])
    npos = torch.tensor([[[6], [1]]] * 3)
    a = model(nxt, npos, cache=reordered).logits
    b = model(nxt, npos, cache=model(ids[index], pos[index], sep=6, use_cache=True).cache).logits
    torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------------------------------
# GLM-130B switches: each changes the output and still trains
# --------------------------------------------------------------------------------------------------
SWITCHES = {
    "rotary": dict(position_encoding="rotary"),
    "deepnorm": dict(layernorm_order="deepnorm"),
    "geglu": dict(mlp="geglu"),
    "erf_gelu": dict(gelu_approximate="none"),
}


@pytest.mark.parametrize("name", sorted(SWITCHES))
def test_switch_changes_output_and_trains(name):
    ids, pos, sep = glm_inputs(batch=4, length=16)
    base = make_model(seed=5)
    switched = make_model(seed=5, **SWITCHES[name])
    if (
        name == "erf_gelu"
    ):  # same weights, different function; GELU inputs of order 1 where tanh and erf differ
        switched.load_state_dict(base.state_dict())
        with torch.no_grad():
            for model in (base, switched):
                for layer in model.transformer.layers:
                    layer.mlp.dense_h_to_4h.weight.mul_(50.0)
    difference = (base(ids, pos, sep=sep).logits - switched(ids, pos, sep=sep).logits).abs().max().item()
    assert difference > 1e-6, difference
    targets = torch.randint(0, V, ids.shape, generator=torch.Generator().manual_seed(9))
    model = switched.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(model(ids, pos, sep=sep).logits.flatten(0, 1), targets.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]


def test_rotary_uses_both_position_rows_and_cache():
    model = make_model(position_encoding="rotary").double()
    assert "transformer.position_embeddings.weight" not in model.state_dict()
    ids, pos, _ = glm_inputs(batch=2, length=10)
    out = model(ids, pos, sep=5).logits
    for row in (0, 1):
        moved = pos.clone()
        moved[:, row, -1] += 3
        assert not torch.allclose(model(ids, moved, sep=5).logits[:, -1], out[:, -1])
    full = out
    cache = model(ids[:, :5], pos[:, :, :5], sep=5, use_cache=True).cache
    step = model(ids[:, 5:], pos[:, :, 5:], sep=0, cache=cache).logits
    torch.testing.assert_close(step, full[:, 5:], rtol=1e-10, atol=1e-10)


def test_deepnorm_values_follow_deepnet_rule():
    cfg = tiny(layernorm_order="deepnorm", num_layers=6)
    assert math.isclose(cfg.deepnorm_alpha, 12**0.25)
    assert math.isclose(cfg.deepnorm_beta, 48**-0.25)


def test_geglu_shapes():
    cfg = tiny(mlp="geglu", hidden_size=48, num_attention_heads=4)
    sd = GLM(cfg).state_dict()
    assert sd["transformer.layers.0.mlp.dense_h_to_4h.weight"].shape == (2 * 128, 48)  # 8h/3 = 128
    assert sd["transformer.layers.0.mlp.dense_4h_to_h.weight"].shape == (48, 128)
    assert GLMConfig.from_name("glm-130b").ffn_size == 32768


def test_embedding_grad_shrink_scales_only_the_gradient():
    ids, pos, sep = glm_inputs()
    grads, logits = [], []
    for alpha in (1.0, 0.1):
        model = make_model(seed=2, embedding_grad_scale=alpha).double()
        out = model(ids, pos, sep=sep).logits
        out.sum().backward()
        logits.append(out.detach())
        grads.append(model.transformer.position_embeddings.weight.grad.clone())
    torch.testing.assert_close(logits[0], logits[1])
    torch.testing.assert_close(grads[1], 0.1 * grads[0])


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_softmax_in_fp32_under_bf16_is_closer_to_float64(impl):
    ids, pos, sep = glm_inputs(length=24)
    ref = make_model(seed=4, attention=impl).double()(ids, pos, sep=sep).logits
    errors = {}
    for fp32 in (False, True):
        model = make_model(seed=4, attention=impl, softmax_in_fp32=fp32).to(torch.bfloat16)
        errors[fp32] = (model(ids, pos, sep=sep).logits.double() - ref).abs().mean().item()
    assert errors[True] != errors[False]
    assert errors[True] <= errors[False] * 1.05


def test_config_validation_messages():
    with pytest.raises(ValueError, match="divisible by num_attention_heads"):
        GLMConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="attention must be one of"):
        GLMConfig(attention="fast")
    with pytest.raises(ValueError, match="unknown GLM preset 'glm-huge'"):
        GLMConfig.from_name("glm-huge")
    with pytest.raises(ValueError, match=r"unknown GLMConfig field\(s\) \['hiden_size'\]"):
        GLMConfig.from_dict({"preset": "glm-tiny", "hiden_size": 3})


def test_presets_match_spec_parameter_counts():
    expected_millions = {
        "glm-base": 109.3,
        "glm-large": 334.7,
        "glm-roberta-large": 354.9,
        "glm-410m": 410.3,
        "glm-515m": 514.6,
        "glm-2b": 1920.1,
        "glm-10b": 9880.7,
    }
    for name, millions in expected_millions.items():
        cfg = GLMConfig.from_name(name)
        h, L, V_, P = cfg.hidden_size, cfg.num_layers, cfg.vocab_size, cfg.max_sequence_length
        formula = L * (12 * h * h + 13 * h) + V_ * h + 2 * (P + 1) * h + 2 * h  # docs/original-glm.md §11
        assert cfg.num_parameters() == formula
        assert abs(formula / 1e6 - millions) < 0.1, name
    small = GLMConfig.from_name("glm-small")
    assert sum(p.numel() for p in GLM(small).parameters()) == small.num_parameters()
