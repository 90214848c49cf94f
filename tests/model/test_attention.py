"""Attention kernels (eager, sdpa, flex) and packed rows: all give the same numbers."""

from __future__ import annotations

import pytest
import torch

from glm.model import GLM, GLMConfig, build_attention_mask

V = 97


def model_with(attention: str, seed: int = 0) -> GLM:
    torch.manual_seed(seed)
    cfg = GLMConfig(
        num_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        vocab_size=V,
        max_sequence_length=64,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        attention=attention,
    )
    return GLM(cfg).eval()


def sample(length: int, sep: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (length,), generator=g)
    pos = torch.stack([torch.arange(length), torch.zeros(length, dtype=torch.long)])
    pos[1, sep:] = torch.arange(1, length - sep + 1)
    pos[0, sep:] = sep - 1
    return ids, pos, sep


def pack(samples, row_length: int):
    """One row holding the samples back to back; sep per token = absolute Part-A end of its sample."""
    ids = torch.zeros(row_length, dtype=torch.long)
    pos = torch.zeros(2, row_length, dtype=torch.long)
    seg = torch.full((row_length,), -1, dtype=torch.long)
    sep = torch.zeros(row_length, dtype=torch.long)
    offset = 0
    for index, (s_ids, s_pos, s_sep) in enumerate(samples):
        n = len(s_ids)
        ids[offset : offset + n], pos[:, offset : offset + n] = s_ids, s_pos  # positions restart per sample
        seg[offset : offset + n], sep[offset : offset + n] = index, offset + s_sep
        offset += n
    seg[offset:] = len(samples)  # trailing padding is its own segment
    return ids[None], pos[None], sep[None], seg[None]


def test_packed_mask_never_crosses_samples():
    seg = torch.tensor([[0, 0, 0, 1, 1]])
    sep = torch.tensor([[2, 2, 2, 4, 4]])  # sample 0: Part A = 2 tokens; sample 1: Part A = 1 token
    mask = build_attention_mask(sep, 1, 5, segment_ids=seg)[0, 0].int()
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [0, 0, 0, 1, 0],
            [0, 0, 0, 1, 1],
        ]
    )
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_rows_give_per_sample_logits(impl):
    model = model_with(impl).double()
    samples = [sample(9, 4, 1), sample(6, 3, 2), sample(11, 7, 3)]
    ids, pos, sep, seg = pack(samples, 30)
    packed = model(ids, pos, sep=sep, segment_ids=seg).logits[0]
    offset = 0
    for s_ids, s_pos, s_sep in samples:
        alone = model(s_ids[None], s_pos[None], sep=s_sep).logits[0]
        torch.testing.assert_close(packed[offset : offset + len(s_ids)], alone, rtol=1e-10, atol=1e-10)
        offset += len(s_ids)


def test_flex_equals_sdpa_forward_on_cpu():
    """CPU flex kernels are forward-only and fp32 at most: compare with sdpa in fp32 and with float64."""
    sdpa = model_with("sdpa")
    flex = model_with("flex")
    flex.load_state_dict(sdpa.state_dict())
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (2, 40), generator=g)
    pos = torch.randint(0, 30, (2, 2, 40), generator=g)
    sep = torch.tensor([10, 25])
    with torch.no_grad():
        reference = sdpa.double()(ids, pos, sep=sep).logits
        sdpa.float()
        out_flex = flex(ids, pos, sep=sep).logits
        out_sdpa = sdpa(ids, pos, sep=sep).logits
        assert (out_flex.double() - reference).abs().max().item() < 2e-6
        assert (out_flex - out_sdpa).abs().max().item() < 2e-6
        # packed rows through the flex block mask
        samples = [sample(9, 4, 1), sample(6, 3, 2)]
        p_ids, p_pos, p_sep, p_seg = pack(samples, 20)
        packed = flex(p_ids, p_pos, sep=p_sep, segment_ids=p_seg).logits[0]
        alone = sdpa(samples[1][0][None], samples[1][1][None], sep=samples[1][2]).logits[0]
        assert (packed[9:15] - alone).abs().max().item() < 2e-6
        # one decoded position against 40 cached keys (CPU pads both lengths to the kernel's block)
        cached = sdpa(ids[:, :39], pos[:, :, :39], sep=sep, use_cache=True).cache
        step = flex(ids[:, 39:], pos[:, :, 39:], sep=sep, cache=cached).logits
        assert (step - out_sdpa[:, 39:]).abs().max().item() < 2e-6


def test_flex_refuses_cpu_training_and_dropout_clearly():
    model = model_with("flex").train()
    ids = torch.randint(0, V, (1, 8))
    with pytest.raises(ValueError, match="inference-only"):
        model(ids, sep=4)
    model.config.attention_dropout = 0.1
    with pytest.raises(ValueError, match="no attention dropout"):
        model(ids, sep=4)


def test_auto_picks_sdpa_on_cpu():
    model = model_with("auto")
    assert model.attention_impl(torch.zeros(1, 1, 1)) == "sdpa"
