"""User-facing errors.

Every mistake a user can make (a bad file, a bad option, a bad value) raises a subclass of
:class:`UsnpruneError`. The command line prints it as one line and exits non-zero, with no
traceback; anything else is a bug and keeps its traceback.
"""


class UsnpruneError(Exception):
    """A problem with the user's input, reported as one clear line."""


class ConfigError(UsnpruneError):
    """A configuration file or option is malformed, unknown or out of range."""


class DataError(UsnpruneError):
    """A dataset file is missing, unreadable or not a keypoint dataset."""


class CheckpointError(UsnpruneError):
    """A checkpoint is missing, unreadable, or its architecture does not match its weights."""
