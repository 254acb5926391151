"""User-facing errors.

A :class:`UserError` is a mistake in the user's input (a file, a flag, a config key). The CLI prints
its message on one line and exits with status 2, never a traceback. Library callers can catch it.
"""


class UserError(Exception):
    """A problem with user input; the message names the file/field, the value and what was expected."""


class ConfigError(UserError):
    """A configuration file or value is invalid."""


class DataError(UserError):
    """A data set folder or one of its entries is invalid."""
