"""The errors FreezeLab raises for its users, and the one rule for showing any error to a person.

Every error in this family carries a message written for the user: what is wrong, and how to fix it.
The CLI prints it as it is (exit code 2) and the dashboard shows it as it is; anything else is a bug,
shown with its type so it can be reported. This module imports nothing heavy: the CLI and the pages
name these classes without loading torch or pandas.
"""

from __future__ import annotations


class FreezeLabError(Exception):
    """An error whose message is meant for the user as it is."""


class ConfigError(FreezeLabError, ValueError):
    """A configuration value is invalid; the message names the field, the value and what is allowed."""


class DataError(FreezeLabError, ValueError):
    """A dataset cannot be used; the message names the file or column and the fix."""


class BackboneError(FreezeLabError, ValueError):
    """A backbone cannot be loaded (unknown name, offline hub id, broken folder)."""


class CheckpointError(FreezeLabError, RuntimeError):
    """A run's checkpoint is missing or cannot be used."""


class StorageError(FreezeLabError, OSError):
    """A file of the runs folder could not be written (disk full, read-only folder); the message names it."""


class RunNotFound(FreezeLabError, LookupError):
    """No run of that id in the runs folder."""


class InvalidRunId(FreezeLabError, ValueError):
    """A run id that is not a plain name (paths and odd characters are refused)."""


class PredictError(FreezeLabError, ValueError):
    """A prediction request that cannot be served (no text, a run without weights...)."""


class JobError(FreezeLabError, ValueError):
    """A queue action that does not apply to the run's state (cancel a completed run...)."""


class TransitionError(JobError):
    """A run state change that the lifecycle does not allow (see core.records.TRANSITIONS)."""


class ExportError(FreezeLabError, ValueError):
    """A run cannot be exported (no checkpoint, an occupied target folder...); the message says what to do."""


class ImbalanceError(ConfigError):
    """A bad imbalance option (a ValueError); the message names the option, the allowed values and the fix."""


class ClassRatioError(ImbalanceError):
    """A class-ratio spec names an unknown class or a fraction outside (0, 1]."""


class AugmentError(ConfigError):
    """A bad augmentation option (a ValueError); the message says which and what is allowed."""


def user_message(exc: BaseException) -> str:
    """What a person is shown for an error: our own messages as they are, anything else with its type."""
    if isinstance(exc, FreezeLabError):
        return str(exc)
    return f"Unexpected error ({type(exc).__name__}: {exc}). This is a bug in FreezeLab; please report it."
