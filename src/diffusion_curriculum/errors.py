"""The failures a stage reports to its user in one line, because they are about the user's input or run,
not about the code: a bad input file, a setting that cannot work with the data it is given, and a
training run that diverged.  Anything else is a bug and keeps its traceback (``stages/_cli.py``)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["InputFileError", "SettingError", "TrainingDiverged"]


class InputFileError(ValueError):
    """An input file is missing, cannot be read, or does not hold what it should; ``str()`` is
    ``"<path>: <problem>"``.  A ValueError, as a bad value passed in memory would be."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class SettingError(ValueError):
    """A setting that cannot work with the data or files it is applied to.  The library names the
    setting as its caller labels it (a ``source`` or ``setting`` argument, e.g.
    ``"params.yaml: model.condition"``), so the message points at what to change."""


class TrainingDiverged(RuntimeError):
    """The loss stopped being finite or spiked, or the weights stopped being finite; nothing of the
    diverged state was saved."""
