"""The RNG states a resumed run needs back (Python, numpy, torch CPU and CUDA), as plain values that
``torch.load(weights_only=True)`` accepts, so they can live inside a Lightning checkpoint."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["rng_states", "set_rng_states"]


def rng_states() -> dict[str, Any]:
    """Python, numpy and torch (CPU, and CUDA when present) RNG states as plain, weights_only-loadable values."""
    np_state: tuple[Any, ...] = tuple(
        np.random.get_state(legacy=True)
    )  # (name, keys, pos, has_gauss, cached)
    out: dict[str, Any] = {
        "python": _plain_python_state(random.getstate()),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def _plain_python_state(state: tuple) -> list:
    version, internal, gauss = state
    return [int(version), torch.tensor(internal, dtype=torch.int64), gauss]


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Inverse of :func:`rng_states`."""
    version, internal, gauss = states["python"]
    random.setstate((int(version), tuple(int(x) for x in internal.tolist()), gauss))
    n = states["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])
