"""User-facing errors: the CLI prints their message (no stack trace) and exits with ``exit_code``."""


class BenchError(Exception):
    """A user mistake or an unavailable resource, reported as one clear message."""

    exit_code = 2


class ConfigError(BenchError):
    """A broken suite file or override: unknown key, wrong type, unknown name."""


class DatasetUnavailable(BenchError):
    """The dataset is not on disk and cannot be downloaded; the message says how to get it."""


class NonFiniteLoss(BenchError):
    """The training bound became NaN or infinite; the run is marked FAILED, its metrics kept."""

    exit_code = 1
