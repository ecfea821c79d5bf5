"""Errors that the command line reports as one clear line (never a traceback)."""


class Sam3dMedError(Exception):
    """Base class: the message is complete and meant for the user as it stands."""


class InputError(Sam3dMedError):
    """Bad input data (a file missing, unreadable, or of the wrong shape, type or values)."""


class ConfigError(Sam3dMedError):
    """Bad options or configuration."""
