"""Structured-config schemas of the ``model`` and ``objective`` groups, registered in Hydra's ConfigStore.

Each ``conf/model/*.yaml`` / ``conf/objective/*.yaml`` starts from its group's ``schema``, so every field of
:class:`~glm.model.GLMConfig` / :class:`~glm.data.masking.MaskingConfig` can be overridden without ``+``
(``model.num_layers=4``), and a misspelt key (``model.num_layayers=4``) or a wrong type is refused while Hydra
composes, naming the key. A field is ``None`` until a config sets it: ``None`` means "the preset's value"
(:func:`set_values` drops it before the values reach ``GLMConfig.from_dict`` / ``MaskingConfig``).

Import this module before Hydra composes (``run.py`` and the tests' compose fixture do).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from glm.data.masking import MaskingConfig
from glm.model import GLMConfig

SCHEMA_NAME = "schema"  # the option name in each group: `defaults: [schema, _self_]`


def _optional(hint: Any) -> Any:
    """``X`` or ``X | None`` -> ``Optional[X]`` (the form OmegaConf validates); anything wider -> ``Any``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(rest) != 1:
            return Any
        hint = rest[0]
    return Optional[hint]  # noqa: UP045  (OmegaConf's structured configs read typing.Optional)


def schema_of(cls: type, name: str) -> type:
    """A dataclass of ``preset`` and every field of the dataclass ``cls``, each optional, default None."""
    hints = typing.get_type_hints(cls)
    fields = [("preset", Optional[str], dataclasses.field(default=None))]  # noqa: UP045  (as above)
    fields += [
        (f.name, _optional(hints[f.name]), dataclasses.field(default=None)) for f in dataclasses.fields(cls)
    ]
    schema = dataclasses.make_dataclass(name, fields)
    schema.__doc__ = (
        f"The config group of {cls.__name__}: ``preset`` + any of its fields (None = the preset's)."
    )
    return schema


ModelSchema = schema_of(GLMConfig, "ModelSchema")
ObjectiveSchema = schema_of(MaskingConfig, "ObjectiveSchema")


def set_values(node: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """The fields a config actually sets: a plain, resolved dict without the None placeholders."""
    values = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    return {key: value for key, value in values.items() if value is not None}


def register_schemas() -> None:
    store = ConfigStore.instance()
    store.store(group="model", name=SCHEMA_NAME, node=ModelSchema)
    store.store(group="objective", name=SCHEMA_NAME, node=ObjectiveSchema)


register_schemas()
