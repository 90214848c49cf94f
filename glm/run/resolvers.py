"""Custom OmegaConf resolvers, registered once (imported by run.py and the tests)."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from glm.data.superglue.tasks import get_task

# The per-task finetuning defaults of the SuperGLUE task table (glm/data/superglue/tasks.py).
SUPERGLUE_FIELDS = ("default_pattern", "seq_length", "main_metric", "epochs", "batch_size")


def hydra_choice(group: str, default: str = "default", *, _root_: Any = None) -> str:
    """The option chosen for a config group (``+experiment=NAME`` -> ``NAME``), or ``default``."""
    try:
        from hydra.core.hydra_config import HydraConfig

        choice = HydraConfig.get().runtime.choices.get(group)
    except (ValueError, AttributeError):  # no job context: a multirun's own config (its sweep dir) holds them
        choice = OmegaConf.select(_root_, f"hydra.runtime.choices.{group}") if _root_ is not None else None
    return str(choice) if choice else default


def superglue_setting(task: str, field: str) -> Any:
    """``${glm.superglue:cb,main_metric}`` -> ``val/f1``: one field of a task's row in the SuperGLUE table,
    so the experiment configs restate none of it."""
    if field not in SUPERGLUE_FIELDS:
        raise ValueError(f"glm.superglue: unknown field {field!r}; known: {', '.join(SUPERGLUE_FIELDS)}")
    return getattr(get_task(str(task)), field)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("glm.choice"):
        OmegaConf.register_new_resolver("glm.choice", hydra_choice)
    if not OmegaConf.has_resolver("glm.superglue"):
        OmegaConf.register_new_resolver("glm.superglue", superglue_setting)


register_resolvers()
