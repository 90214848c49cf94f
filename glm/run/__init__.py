"""The run layer: one Hydra job from a composed config to its metrics (validation, instantiation, the
stages, failure bookkeeping). Nothing below this package imports it.

Importing it registers what Hydra needs before it composes `conf/`: the `glm.*` resolvers and the
model/objective schemas."""

from glm.run import resolvers, schemas  # noqa: F401
