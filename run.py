"""Entry point: ``python run.py +experiment=NAME [overrides]`` (``-m`` for sweeps); see README.md."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

import glm.utils.resolvers  # noqa: F401  (registers ${glm.choice:...} before Hydra composes)


@hydra.main(version_base="1.3", config_path="conf", config_name="run")
def main(cfg: DictConfig) -> float | None:
    from glm.checkpoint.io import CheckpointError
    from glm.data.paths import DataNotFoundError
    from glm.pipeline import optimized_metric, run
    from glm.utils.inputs import DataFormatError, MissingInputError
    from glm.utils.validation import ConfigError

    try:
        metrics = run(cfg)
    except ConfigError as err:  # a config mistake: one line naming the key, no traceback
        print(f"Config error: {err}", file=sys.stderr)
        sys.exit(2)
    except DataNotFoundError as err:  # missing data: one line saying where and how to get it
        print(f"Data error: {err}", file=sys.stderr)
        sys.exit(2)
    except (DataFormatError, MissingInputError, CheckpointError) as err:  # bad input: one line naming it
        print(f"Input error: {err}", file=sys.stderr)
        sys.exit(2)
    return optimized_metric(cfg, metrics)


if __name__ == "__main__":
    main()
