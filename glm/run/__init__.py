"""The run layer: one Hydra job from a composed config to its metrics (validation, instantiation, the
stages, failure bookkeeping). Nothing below this package imports it."""
