"""Shared fixtures: compose run configs with Hydra's compose API, tmp output dirs, quiet W&B."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import glm.run  # noqa: F401  (the glm.* resolvers and the model/objective schemas conf/ needs)

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

# Tests never talk to W&B (the one offline-files test sets its own mode) and never need the network.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")


def data_root() -> Path:
    try:
        from glm.data.paths import data_root as root
    except ImportError:  # pragma: no cover
        return Path(os.environ.get("GLM_DATA_ROOT", "data"))
    return root()


def need_data(relpath: str) -> Path:
    """Shared data file or a failure (CI=true) / skip (elsewhere)."""
    from glm.data.paths import need_shared_data

    return need_shared_data(relpath)


CORPUS_WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]


def write_corpus(path: Path, paragraphs: int = 40) -> Path:
    """A small text corpus: ``paragraphs`` blank-line separated paragraphs over CORPUS_WORDS."""
    text = "\n\n".join(
        " ".join(CORPUS_WORDS[(p * 7 + k * 3) % len(CORPUS_WORDS)] for k in range(12)) + "."
        for p in range(paragraphs)
    )
    path.write_text(text + "\n")
    return path


@pytest.fixture(autouse=True)
def _clear_hydra() -> Iterator[None]:
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable[..., object]:
    """``compose_cfg(experiment=None, overrides=[...])`` -> a run config with the Hydra node set as if Hydra ran
    it (so ``${hydra:runtime.output_dir}`` resolves to ``tmp_path/run``), caches under ``tmp_path/cache`` unless
    ``cache_dir`` is given."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    def _compose(
        experiment: str | None = None, overrides: list[str] | None = None, cache_dir: Path | None = None
    ) -> object:
        args = list(overrides or [])
        if experiment:
            args.insert(0, f"+experiment={experiment}")
        args += [f"paths.cache_dir={cache_dir or tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
            cfg = compose("run", overrides=args, return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(tmp_path / "run")
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):  # the task function sees the config without its hydra node, as under @hydra.main
            del cfg["hydra"]
        return cfg

    return _compose


def run_cli(args: list[str], tmp_path: Path, timeout: int = 240, env: dict[str, str] | None = None):
    """``python run.py ARGS`` in a subprocess from the repo root; returns the CompletedProcess."""
    import subprocess

    full_env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "RANK")
    }
    full_env.setdefault("GLM_DATA_ROOT", str(data_root()))
    full_env["GLM_DATA_ROOT"] = str(Path(full_env["GLM_DATA_ROOT"]).absolute())
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, str(REPO / "run.py"), *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        check=False,
        text=True,
        timeout=timeout,
    )


def run_dist_script(script: Path, out: Path, *args: str, timeout: int = 300) -> dict:
    """Run a multi-process test script (``tests/e2e/scripts/``) in a subprocess, outside pytest (Lightning's DDP
    launcher re-runs the launching command: docs/lightning-hydra-notes.md R6), with no rank variables inherited and glm
    imported from this checkout; return the ``result.json`` it writes under ``out``."""
    import json
    import subprocess

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "RANK")
    }
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    r = subprocess.run(
        [sys.executable, str(script), "--out", str(out), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return json.loads((out / "result.json").read_text())


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """One line saying how many tests were skipped for missing data and how to get it (the per-test
    reasons are shown with ``-rs``)."""
    reasons = [
        str(rep.longrepr[2])
        for rep in terminalreporter.stats.get("skipped", [])
        if isinstance(rep.longrepr, tuple)
    ]
    missing = [r for r in reasons if "missing" in r and "GLM_DATA_ROOT" in r]
    if missing:
        terminalreporter.write_line(
            f"{len(missing)} tests skipped: data missing under {data_root()}. Fill it with "
            "`python -m glm.data download all` or point GLM_DATA_ROOT at a copy (-rs lists each reason).",
            yellow=True,
        )
