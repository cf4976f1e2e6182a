"""Typed errors raised before a mount starts serving.

They exist so that callers (the sandbox launcher, the CLI) can tell a bad
configuration or a damaged upper layer apart from a bug, and report it in
one line instead of a traceback.
"""


class OverlayError(Exception):
    """Base class for every error this package raises on purpose."""


class ConfigError(OverlayError):
    """The mount was asked for with options that cannot work."""


class CorruptUpperError(OverlayError):
    """The upper or work directory is in a state the union cannot serve."""
