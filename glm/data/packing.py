"""Sequence packing: several short GLM samples in one row of ``seq_length`` tokens.

Pure data code (numpy in, torch tensors out; no model). A packed row holds samples back to back, each with
its own Part A / Part B:

- ``segment_ids [R, L]``: 1..k for the k samples of a row, 0 for trailing padding;
- ``position_ids [R, 2, L]``: each sample's own positions and block positions (they restart per sample);
- ``sep [R, L]``: per token, the row index where its sample's Part A ends (sample offset + sample sep);
  this is the per-token form ``glm.model.build_attention_mask`` / ``GLM.forward(segment_ids=...)`` take:
  key j is visible to query i iff ``(j < sep[j] or j <= i) and segment[i] == segment[j]``;
- ``sample_index [R, L]``: index of each token's sample in the input list (-1 on padding), to reduce
  per-token values (losses) back to per-sample values;
- ``input_ids``, ``targets``, ``loss_mask``: as in an unpacked batch; padding is id ``pad_id``, target 0,
  loss mask 0, positions 0, sep 0, segment 0 (docs/original-glm.md §5.6).

Padding tokens form their own segment 0 with sep 0, so each padding query sees at least itself (no empty
softmax rows, no NaN) and no real token ever sees a padding key.

Decision (bin packing): first-fit decreasing by default — samples sorted longest first, each placed in the
first row with room. It is the classic greedy with at most 11/9 OPT + 1 rows, deterministic, and fast
enough for a batch or a whole finetuning split (a vectorised search over open rows). ``order="sequential"``
keeps the input order (next-fit: a new row when the sample does not fit the current one), for streams.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from glm.errors import ConfigError

__all__ = [
    "PACKED_FIELDS",
    "PackingStats",
    "checked_pack_flag",
    "pack_bins",
    "pack_samples",
    "packing_stats",
    "per_sample_sum",
]

PACKED_FIELDS = ("input_ids", "targets", "loss_mask", "position_ids", "sep", "segment_ids", "sample_index")
ORDERS = ("first_fit_decreasing", "sequential")


def checked_pack_flag(pack: Any) -> bool:
    """The ``data.pack`` switch of every datamodule, refused unless a real bool (a YAML string such as
    ``"yes"`` would silently pack)."""
    if not isinstance(pack, bool):
        raise ConfigError(f"data.pack: expected true/false, got {pack!r}")
    return pack


def _field(sample: Any, name: str) -> Any:
    """``sample[name]`` for dicts (cloze sequences), ``sample.name`` for objects (``MaskedSample``)."""
    if isinstance(sample, Mapping):
        return sample.get(name)
    return getattr(sample, name, None)


def _checked(sample: Any, index: int, seq_length: int) -> tuple[np.ndarray, ...]:
    """The five arrays of one sample, checked; errors name the sample index and the field."""
    arrays = {}
    for name in ("input_ids", "targets", "loss_mask", "position_ids", "sep"):
        value = _field(sample, name)
        if value is None:
            raise ValueError(f"pack_samples: sample {index} has no field {name!r}")
        arrays[name] = np.asarray(value)
    n = arrays["input_ids"].shape[0] if arrays["input_ids"].ndim == 1 else -1
    if n < 1:
        raise ValueError(
            f"pack_samples: sample {index} field 'input_ids' must be a non-empty 1-D array, "
            f"got shape {arrays['input_ids'].shape}"
        )
    for name in ("targets", "loss_mask"):
        if arrays[name].shape != (n,):
            raise ValueError(
                f"pack_samples: sample {index} field {name!r} has shape {arrays[name].shape}, "
                f"expected ({n},) like input_ids"
            )
    if arrays["position_ids"].shape != (2, n):
        raise ValueError(
            f"pack_samples: sample {index} field 'position_ids' has shape "
            f"{arrays['position_ids'].shape}, expected (2, {n})"
        )
    if arrays["sep"].ndim != 0 or not 0 <= int(arrays["sep"]) <= n:
        raise ValueError(
            f"pack_samples: sample {index} field 'sep' must be an int in [0, {n}], got {arrays['sep']!r}"
        )
    if n > seq_length:
        raise ValueError(
            f"pack_samples: sample {index} has {n} tokens, more than seq_length={seq_length}; "
            "truncate it first (packing never cuts a sample)"
        )
    return (
        arrays["input_ids"],
        arrays["targets"],
        arrays["loss_mask"],
        arrays["position_ids"],
        int(arrays["sep"]),
    )


def pack_bins(
    lengths: Sequence[int] | np.ndarray, seq_length: int, order: str = "first_fit_decreasing"
) -> list[list[int]]:
    """Group sample indices into rows whose lengths sum to at most ``seq_length``.

    Within a row, samples keep their input order (so a row reads like the original stream).
    """
    if order not in ORDERS:
        raise ValueError(f"pack_bins: order must be one of {list(ORDERS)}, got {order!r}")
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.ndim != 1:
        raise ValueError(f"pack_bins: lengths must be 1-D, got shape {lengths.shape}")
    if seq_length < 1:
        raise ValueError(f"pack_bins: seq_length must be positive, got {seq_length}")
    too_long = np.flatnonzero((lengths > seq_length) | (lengths < 1))
    if too_long.size:
        i = int(too_long[0])
        raise ValueError(
            f"pack_bins: sample {i} has length {int(lengths[i])}, outside [1, seq_length={seq_length}]"
        )
    bins: list[list[int]] = []
    if order == "sequential":
        room = 0
        for i, n in enumerate(lengths.tolist()):
            if n > room:
                bins.append([])
                room = seq_length
            bins[-1].append(i)
            room -= n
        return bins
    # first fit decreasing; `free` grows geometrically so the search over open rows stays vectorised
    free = np.empty(max(1, len(lengths)), dtype=np.int64)
    used = 0
    for i in np.argsort(-lengths, kind="stable").tolist():
        n = int(lengths[i])
        fits = np.flatnonzero(free[:used] >= n)
        if fits.size:
            row = int(fits[0])
        else:
            row, used = used, used + 1
            free[row] = seq_length
            bins.append([])
        free[row] -= n
        bins[row].append(i)
    return [sorted(b) for b in bins]


def pack_samples(
    samples: Sequence[Any],
    seq_length: int,
    pad_id: int = 0,
    bins: list[list[int]] | None = None,
    order: str = "first_fit_decreasing",
) -> dict[str, torch.Tensor]:
    """Pack samples (dicts or objects with ``input_ids, targets, loss_mask, position_ids [2, n], sep``) into
    ``[R, seq_length]`` rows; see the module docstring for every field. ``bins`` (from :func:`pack_bins`)
    fixes the grouping; by default it is computed with ``order``.
    """
    if not samples:
        raise ValueError("pack_samples: no samples")
    checked = [_checked(s, i, seq_length) for i, s in enumerate(samples)]
    if bins is None:
        bins = pack_bins([len(c[0]) for c in checked], seq_length, order)
    placed = sorted(i for b in bins for i in b)
    if placed != list(range(len(samples))):
        raise ValueError("pack_samples: bins must place every sample exactly once")
    rows, L = len(bins), seq_length
    ids = np.full((rows, L), pad_id, np.int64)
    tgt = np.zeros((rows, L), np.int64)
    lm = np.zeros((rows, L), np.float32)
    pos = np.zeros((rows, 2, L), np.int64)
    sep = np.zeros((rows, L), np.int64)
    seg = np.zeros((rows, L), np.int64)
    owner = np.full((rows, L), -1, np.int64)
    for r, members in enumerate(bins):
        offset = 0
        for k, i in enumerate(members, start=1):
            s_ids, s_tgt, s_lm, s_pos, s_sep = checked[i]
            n = s_ids.shape[0]
            if offset + n > L:
                raise ValueError(f"pack_samples: row {r} overflows seq_length={L} at sample {i}")
            span = slice(offset, offset + n)
            ids[r, span], tgt[r, span], lm[r, span] = s_ids, s_tgt, s_lm
            pos[r, :, span] = s_pos  # positions restart per sample
            sep[r, span] = offset + s_sep  # the sample's Part-A end, as an index into the row
            seg[r, span], owner[r, span] = k, i
            offset += n
    out = {
        "input_ids": ids,
        "targets": tgt,
        "loss_mask": lm,
        "position_ids": pos,
        "sep": sep,
        "segment_ids": seg,
        "sample_index": owner,
    }
    return {k: torch.from_numpy(v) for k, v in out.items()}


def per_sample_sum(values: torch.Tensor, sample_index: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Sum per-token ``values [R, L]`` into ``[num_samples]`` by ``sample_index`` (padding, -1, dropped)."""
    if values.shape != sample_index.shape:
        raise ValueError(
            f"per_sample_sum: values {tuple(values.shape)} vs sample_index {tuple(sample_index.shape)}"
        )
    keep = sample_index >= 0
    out = values.new_zeros(num_samples)
    return out.index_add_(0, sample_index[keep], values[keep])


@dataclass(frozen=True)
class PackingStats:
    """Token accounting of one way of batching ``num_samples`` samples of ``real_tokens`` tokens in total."""

    num_samples: int
    real_tokens: int
    rows: int
    row_length: float  # mean tokens per row (padding included)

    @property
    def slots(self) -> int:
        return round(self.rows * self.row_length)

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.real_tokens / self.slots


def packing_stats(
    lengths: Sequence[int] | np.ndarray, seq_length: int, batch_size: int, order: str = "first_fit_decreasing"
) -> dict[str, PackingStats]:
    """Padding of three batchings of the same samples (in input order for the unpacked ones):

    ``pad_to_seq_length``: every sample its own row of ``seq_length`` (the original GLM code);
    ``pad_to_longest``: batches of ``batch_size`` samples padded to their longest sample;
    ``packed``: :func:`pack_bins` rows of ``seq_length``.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n, real = len(lengths), int(lengths.sum())
    longest = [
        int(lengths[i : i + batch_size].max()) * len(lengths[i : i + batch_size])
        for i in range(0, n, batch_size)
    ]
    packed_rows = len(pack_bins(lengths, seq_length, order))
    return {
        "pad_to_seq_length": PackingStats(n, real, n, float(seq_length)),
        "pad_to_longest": PackingStats(n, real, n, sum(longest) / n),
        "packed": PackingStats(n, real, packed_rows, float(seq_length)),
    }
