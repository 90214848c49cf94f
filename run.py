"""Entry point: ``python run.py +experiment=NAME [overrides]`` (``-m`` for sweeps); see README.md."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

import glm.utils.resolvers  # noqa: F401  (registers ${glm.choice:...} before Hydra composes)


@hydra.main(version_base="1.3", config_path="conf", config_name="run")
def main(cfg: DictConfig) -> float | None:
    from glm.pipeline import optimized_metric, run
    from glm.utils.wrappers import user_error_label

    try:
        metrics = run(cfg)
    except Exception as err:  # config mistakes and bad or missing input: one line naming it, no traceback
        label = user_error_label(err)
        if label is None:
            raise
        print(f"{label} error: {err}", file=sys.stderr)
        sys.exit(2)
    return optimized_metric(cfg, metrics)


if __name__ == "__main__":
    main()
