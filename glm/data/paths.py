"""Where the project's data lives, and clear errors when a file is missing.

The data root is, in order of precedence:

1. the environment variable ``GLM_DATA_ROOT`` (a relative value is taken relative to the current
   working directory, like any shell path);
2. ``data/`` inside the source checkout, when ``glm`` is imported from a checkout (the editable
   install used for development: the folder holding ``pyproject.toml`` next to ``glm/``) -- so tests
   and scripts find the same folder whatever directory they are started from;
3. ``data/`` relative to the current working directory (a wheel install has no checkout).

Every file below the root keeps the layout of ``python -m glm.data list``; ``python -m glm.data
download NAME`` fills it in.
"""

from __future__ import annotations

import os
from pathlib import Path

from glm.data.sources import dataset_for
from glm.errors import DataNotFoundError
from glm.utils.inputs import set_missing_file_error

ENV_VAR = "GLM_DATA_ROOT"

# glm/data/paths.py -> parents[2] is the folder that holds the `glm` package.
_CHECKOUT = Path(__file__).resolve().parents[2]


def data_root() -> Path:
    """The data root (see the module docstring for the precedence). The folder may not exist yet."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser().absolute()
    if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "glm").is_dir():
        return _CHECKOUT / "data"
    return Path.cwd() / "data"


def missing_data(path: str | os.PathLike[str], problem: str) -> DataNotFoundError:
    """The error for a missing ``path`` (a file, folder or glob): ``problem``, then how to get it when
    the path lies under the data root (the download command), else where the data root is."""
    root = data_root()
    parts = Path(os.path.abspath(path)).parts
    for i, part in enumerate(parts):  # a glob: the folder above its first wildcard
        if any(c in part for c in "*?["):
            parts = parts[:i]
            break
    try:
        rel = Path(*parts).relative_to(root).as_posix()
    except ValueError:
        rel = None
    if rel is not None and rel != ".":
        hint = _how_to_get(rel)
    else:
        hint = f"the data root is {root} (${ENV_VAR}); `python -m glm.data list` shows what it holds"
    return DataNotFoundError(f"{problem}; {hint}.")


def _how_to_get(relpath: str) -> str:
    """A hint naming the download command for ``relpath`` when the registry knows the file."""
    name = dataset_for(relpath)
    if name is not None:
        return f"get it with `python -m glm.data download {name}`, or set {ENV_VAR} to a folder that has it"
    return f"put the file there by hand, or set {ENV_VAR} to a folder that has it"


# Readers below the data layer (glm.utils.inputs, the tokenizers) report a missing file through this, so a
# file under the data root comes with its download command.
set_missing_file_error(missing_data)


def require_data(relpath: str | os.PathLike[str], what: str | None = None) -> Path:
    """Return ``data_root() / relpath``; raise ``FileNotFoundError`` saying how to get it if missing.

    ``what`` is a short human description used in the message (e.g. ``"BoolQ validation set"``).
    """
    rel = Path(relpath).as_posix()
    root = data_root()
    path = root / rel
    if path.exists():
        return path
    label = f"{what} ({rel})" if what else rel
    raise DataNotFoundError(
        f"missing data file {label}: looked for {path} under the data root {root} "
        f"(from {'$' + ENV_VAR if os.environ.get(ENV_VAR) else 'the default'}); {_how_to_get(rel)}."
    )


def need_shared_data(relpath: str | os.PathLike[str], what: str | None = None) -> Path:
    """Pytest helper: the path of a shared data file, or fail (``CI=true``) / skip (elsewhere).

    CI must never silently skip a test because its data is absent, so there the test fails with
    the message of :func:`require_data`; on a developer machine without the data it is skipped.
    """
    import pytest  # test-only dependency, imported here so the package does not need it

    try:
        return require_data(relpath, what)
    except FileNotFoundError as err:
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"CI=true and shared data is missing: {err}", pytrace=False)
        pytest.skip(str(err))
