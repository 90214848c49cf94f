"""Every error class of the project, in one place.

A :class:`UserError` is a mistake a user can fix (a config key, a missing or malformed file, an unusable
checkpoint), not a bug: ``run.py`` prints ``<label> error: <message>`` in one line and exits 2, and the
traceback goes to the run's ``FAILED`` file only. Each message names the key, or the file, line and field.
Anything else is a bug or an environment failure and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "ChecksumError",
    "CheckpointError",
    "CheckpointWriteError",
    "ConfigError",
    "DataFormatError",
    "DataNotFoundError",
    "DownloadError",
    "MissingInputError",
    "NonFiniteLossError",
    "Preempted",
    "StrategyUnavailable",
    "UserError",
]


class UserError(Exception):
    """A problem with what the user gave; ``label`` says which kind ("Config", "Data", "Input" or
    "Training")."""

    label = "Input"


class ConfigError(UserError, ValueError):
    """A configuration problem; the message names the offending key."""

    label = "Config"


class DataFormatError(UserError, ValueError):
    """A malformed input file: the message names the file, the (1-based) line and the field."""


class MissingInputError(UserError, FileNotFoundError):
    """An input path that cannot be read as a file (absent, a directory, unreadable); the message names it."""


class DataNotFoundError(MissingInputError):
    """A data file or folder a run needs is missing; the message says how to download it."""

    label = "Data"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file or directory that cannot be used; the message names the path."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint that could not be written (full disk, I/O error); the previous file is intact."""

    label = "Checkpoint"


class DownloadError(UserError, RuntimeError):
    """A file could not be fetched (network, HTTP status, or a conflicting local file)."""

    label = "Data"


class ChecksumError(DownloadError):
    """The fetched bytes do not have the registered sha256 (nothing was written)."""


class StrategyUnavailable(RuntimeError):
    """A strategy that cannot run on this machine (raised before anything is built; validation turns it
    into a :class:`ConfigError` naming the hardware group)."""


class NonFiniteLossError(UserError, FloatingPointError):
    """A NaN/Inf training loss; the message names the global step and the batch index. A user error: what
    makes a loss diverge is the run's setup (learning rate, data, precision), so ``run.py`` prints it in one
    line (``Training error: ...``) like any other."""

    label = "Training"


class Preempted(Exception):
    """Training stopped on a signal (SIGTERM, SIGUSR1, SIGINT) after saving a resumable checkpoint at a step
    boundary. ``run.py`` prints the message (it says how to resume) and exits ``128 + signum``; a sweep stops
    too. Not a :class:`UserError`: nothing was wrong with the input."""

    def __init__(self, message: str, signum: int, step: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.step = step

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)
