"""Errors a user can cause. Each message names the file or option and what was expected."""


class SamptError(Exception):
    """Base class of every user-facing sampt error."""


class CheckpointError(SamptError):
    """A checkpoint is missing, corrupted, or does not fit the architecture it is loaded into."""


class DatasetLayoutError(SamptError, FileNotFoundError):
    """A dataset root, split file, frame or annotation is missing or not in the expected layout."""


class InputFormatError(SamptError, ValueError):
    """A user-supplied file (query points, masks, images) is malformed."""
