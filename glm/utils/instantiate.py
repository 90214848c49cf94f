"""Instantiate the dict-of-nodes groups (callbacks, loggers); only used by glm.pipeline."""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig


def instantiate_group(nodes: DictConfig | None) -> list[Any]:
    """One object per non-null entry with a ``_target_`` (``callbacks.progress=null`` disables one)."""
    out: list[Any] = []
    for node in (nodes or {}).values():
        if node is not None and "_target_" in node:
            out.append(hydra.utils.instantiate(node, _convert_="all"))
    return out
