"""Exceptions with messages meant for people: what went wrong, which input, what to do."""


class PneumoError(Exception):
    """Base class of every error pneumolib raises on purpose.

    The command-line interface prints these without a traceback and exits with status 2.
    """


class DataError(PneumoError):
    """A data file or folder cannot be used (corrupt, wrong layout, missing columns...)."""


class ConfigError(PneumoError):
    """A profile, parameter or option is unknown or has an invalid value."""


class WeightsError(PneumoError):
    """Pretrained weights or a checkpoint cannot be loaded."""


class UnsafeCheckpointError(WeightsError):
    """A weights file is a pickle that needs arbitrary code to load (it asks for globals
    such as ``posix.system``); it was refused by ``torch.load(weights_only=True)`` and
    nothing in it was run."""
