"""The project's own errors. Messages are one line naming the file, config field or stage and
what is wrong; the commands print them without a traceback (``entry.run``)."""


class DataError(ValueError):
    """Input data is missing, malformed or inconsistent."""


class ConfigError(ValueError):
    """A configuration value is invalid."""


class RunFolderError(ConfigError):
    """A run folder's stage was made with another config or input (or did not finish) and
    cannot be reused as it is."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss)."""
