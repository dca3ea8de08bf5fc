"""The one error type of a training run that a user can fix."""

from __future__ import annotations


class TrainingError(Exception):
    """A user error in data, configuration or the run directory. Its message is one line that
    says what was expected and what came; ``smp3d train`` prints it and exits with status 2."""
