"""Entry point: ``python run.py +experiment=NAME [overrides]`` (``-m`` for sweeps); see README.md."""

from __future__ import annotations

import signal
import sys

import hydra
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

import glm.run  # noqa: F401  (registers the glm.* resolvers and the model/objective schemas before Hydra composes)
from glm.errors import Preempted, UserError
from glm.run.pipeline import run
from glm.run.sweep import exit_status, is_multirun, job_failed, optimized_metric


@hydra.main(version_base="1.3", config_path="conf", config_name="run")
def main(cfg: DictConfig) -> float | None:
    try:
        return optimized_metric(cfg, run(cfg), sweep=is_multirun())
    except Preempted as stop:  # a checkpoint was saved; the message says how to resume (a sweep stops too)
        print(f"Preempted: {stop}", file=sys.stderr)
        sys.exit(stop.exit_code)
    except SIGTERMException:  # Lightning's own stop (callbacks.preemption=null): a SystemExit with code 0
        print(
            "Preempted: SIGTERM, handled by Lightning (callbacks.preemption=null, or before training started): "
            "nothing saved at this step; resume from the newest checkpoint with ckpt_path=last",
            file=sys.stderr,
        )
        sys.exit(128 + signal.SIGTERM)
    except UserError as err:  # config mistakes and bad or missing input: one line naming it, no traceback
        if is_multirun():  # that job fails alone, as below
            job_failed(err)
            return None
        print(f"{err.label} error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:
        if not is_multirun():
            raise
        # A bug in one job of a sweep fails that job only (Hydra's basic sweeper would stop the sweep after the
        # batch): the traceback is in its FAILED file and the summary lists it when the sweep ends. None is a
        # failed trial for an optimising sweeper (Optuna's "return value must be float-castable").
        job_failed(err)
        return None


if __name__ == "__main__":
    main()
    sys.exit(exit_status())  # a sweep with a failed job exits 1 (glm.run.sweep.SweepReport listed them)
