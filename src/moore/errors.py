"""The errors a user can cause and fix: the CLI prints them as one line and exits with code 2.

Anything else that escapes is a bug in moore and keeps its traceback.
"""

from __future__ import annotations


class MooreError(Exception):
    """A problem with the user's input (config, data, files, run folder), named in the message."""


class ConfigError(MooreError, ValueError):
    """A run configuration that cannot be used; the message says where and why."""


class DataError(MooreError, ValueError):
    """A task's data file that cannot be read as the task needs; the message names the file and line."""


class MissingDataError(MooreError, FileNotFoundError):
    """A task's data file is not in the data directory (and the hub was not an option)."""


class AdapterFileError(MooreError, ValueError):
    """A saved adapter folder whose files are missing, truncated, edited or for another model."""


class RunFolderError(MooreError):
    """An output folder a run may not write into (another run's, or one in use)."""


class TrainingDivergedError(MooreError, RuntimeError):
    """The loss or the gradient norm became NaN or Inf; nothing non-finite was saved."""
