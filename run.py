"""Entry point: ``python run.py +experiment=NAME [overrides]`` (``-m`` for sweeps); see README.md."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

import glm.run.resolvers  # noqa: F401  (registers ${glm.choice:...} before Hydra composes)


@hydra.main(version_base="1.3", config_path="conf", config_name="run")
def main(cfg: DictConfig) -> float | None:
    from glm.errors import UserError
    from glm.run.pipeline import optimized_metric, run

    try:
        metrics = run(cfg)
    except UserError as err:  # config mistakes and bad or missing input: one line naming it, no traceback
        print(f"{err.label} error: {err}", file=sys.stderr)
        sys.exit(2)
    return optimized_metric(cfg, metrics)


if __name__ == "__main__":
    main()
