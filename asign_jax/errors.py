"""Errors raised on bad input. Messages always name the file (or section) and the problem."""


class DataError(ValueError):
    """Input data is missing, malformed or inconsistent."""


class ConfigError(ValueError):
    """A configuration value is invalid."""
