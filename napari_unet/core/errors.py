"""Exceptions the core raises for problems a user can fix; widgets show their message as is."""


class NapariUNetError(Exception):
    """Base class: the message says what is wrong and what to do."""


class ConfigError(NapariUNetError, ValueError):
    """An option value is invalid or options contradict each other."""


class InputError(NapariUNetError, ValueError):
    """An image or label array cannot be used (shape, dtype, values)."""


class BundleError(NapariUNetError):
    """A model file or folder cannot be read, is corrupt, unsafe or incompatible."""


class OutputError(NapariUNetError, OSError):
    """An output location cannot be used: it holds inputs, would replace a file, or is not writable.

    Also an OSError, so callers that catch write failures as OSError keep working."""
