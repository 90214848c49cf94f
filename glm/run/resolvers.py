"""Custom OmegaConf resolvers, registered once (imported by run.py and the tests)."""

from __future__ import annotations

from omegaconf import OmegaConf


def hydra_choice(group: str, default: str = "default") -> str:
    """The option chosen for a config group (``+experiment=NAME`` -> ``NAME``), or ``default``."""
    try:
        from hydra.core.hydra_config import HydraConfig

        choice = HydraConfig.get().runtime.choices.get(group)
    except (ValueError, AttributeError):  # no Hydra context
        choice = None
    return str(choice) if choice else default


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("glm.choice"):
        OmegaConf.register_new_resolver("glm.choice", hydra_choice)


register_resolvers()
