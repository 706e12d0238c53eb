"""Error types shared by the core. Each message names the file (or input) and the problem.

The CLI prints ``str(error)`` on one line and exits non-zero; the GUI shows it as a notification.
"""

from __future__ import annotations

__all__ = [
    "SamScopeError",
    "ReadError",
    "WriteError",
    "SeriesGeometryError",
    "CheckpointError",
    "CheckpointMissingError",
    "CheckpointRefusedError",
    "DatasetError",
    "RunFolderError",
    "RunFolderBusyError",
    "InputValueError",
]


class SamScopeError(Exception):
    """Base class: an expected failure with a message meant for the user."""


class ReadError(SamScopeError, ValueError):
    """A file could not be read as what it claims to be."""


class WriteError(SamScopeError, OSError):
    """An output could not be written (exists, unwritable, disk full, ...)."""


class SeriesGeometryError(ReadError):
    """A DICOM series is not a regular volume (irregular spacing, mixed orientations, ...)."""


class CheckpointError(SamScopeError):
    """A model checkpoint is missing, corrupt or untrusted."""


class CheckpointMissingError(CheckpointError, FileNotFoundError):
    """The checkpoint is not on disk and cannot be downloaded now."""


class CheckpointRefusedError(CheckpointError):
    """The checkpoint failed its hash check, or carries pickled code and was not loaded."""


class DatasetError(SamScopeError, ValueError):
    """A dataset folder could not be understood."""


class RunFolderError(DatasetError):
    """A benchmark run folder cannot be continued as asked (other options, damaged, ...)."""


class RunFolderBusyError(RunFolderError):
    """Another process is writing to the run folder (its OS lock is held)."""


class InputValueError(SamScopeError, ValueError):
    """A value given by the user or read from a table is out of range (NaN, <= 0, text, ...)."""
