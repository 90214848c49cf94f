"""Hydra multirun (sweep) specifics: is this job part of a sweep, and the value its sweeper optimises."""

from __future__ import annotations

import logging

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from glm.errors import ConfigError

log = logging.getLogger(__name__)


def is_multirun() -> bool:
    """True inside a Hydra multirun (a sweep) job."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def optimized_metric(cfg: DictConfig, metrics: dict[str, float], sweep: bool = False) -> float | None:
    """The value a sweeper optimises (``cfg.optimized_metric``). Not logged: in a sweep (``sweep``) a
    ``ConfigError`` (the sweep would optimise nothing); in a single run None with a warning (a run without
    validation never logs val/loss)."""
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics:
        logged = ", ".join(sorted(metrics)) or "nothing"
        if sweep:
            raise ConfigError(
                f"optimized_metric: {name!r} was not logged by this sweep job; logged: {logged}"
            )
        log.warning("optimized_metric %r was not logged; logged: %s", name, logged)
        return None
    return metrics[name]
