"""Instantiate the dict-of-nodes groups (callbacks, loggers); only used by glm.run.pipeline."""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig


def instantiate_group(nodes: DictConfig | None, extra: dict[str, dict[str, Any]] | None = None) -> list[Any]:
    """One object per non-null entry with a ``_target_`` (``callbacks.progress=null`` disables one).

    ``extra[name]`` adds keyword arguments to entry ``name`` without changing the config (e.g. the stored
    W&B run id when resuming)."""
    out: list[Any] = []
    for name, node in (nodes or {}).items():
        if node is not None and "_target_" in node:
            out.append(hydra.utils.instantiate(node, _convert_="all", **(extra or {}).get(str(name), {})))
    return out
