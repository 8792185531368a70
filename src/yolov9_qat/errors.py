"""Errors a user can cause. The CLI turns each into one clear line and a non-zero exit."""


class UserError(Exception):
    """Bad input from the user: a missing file, a malformed label, a wrong checkpoint, no GPU.

    The message is the whole story: it is printed as one line, without a traceback.
    """

    exit_code = 2


class CheckpointError(UserError):
    """A file that cannot be read as a checkpoint of this package or of upstream YOLOv9."""


class ConfigError(UserError):
    """A model / data / hyper-parameter config that does not exist or does not parse."""


class DataError(UserError):
    """A data set that cannot be used (missing, empty, unreadable)."""
