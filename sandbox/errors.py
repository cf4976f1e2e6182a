"""Typed errors of the public API.

Each maps to one precise line on the command line and to an exit status, so a
caller can tell "the sandbox could not be built" (125) from "the program could
not be executed" (126/127) without parsing messages.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


class SandboxError(Exception):
    """Base class: anything that stopped the sandbox from producing a result."""

    exit_status = 125


class ConfigError(SandboxError):
    """Bad input from the caller: a malformed size, a missing bind source, an unknown option."""


class SetupError(SandboxError):
    """The machine refused to build the box (namespaces, mounts, uid mapping)."""


class BoxFileError(SandboxError):
    """A file could not be copied into or out of the box (missing, not a regular file, a symlink, too big)."""


class ExecError(SandboxError):
    """The program itself could not be started inside the box."""

    def __init__(self, message: str, errno: int) -> None:
        super().__init__(message)
        self.errno = errno

    @property
    def exit_status(self) -> int:  # type: ignore[override]
        import errno as _errno

        return 127 if self.errno == _errno.ENOENT else 126


@contextmanager
def single_error() -> Iterator[None]:
    """A task group wraps even a lone error in an ExceptionGroup; callers of the API expect the error itself."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
            raise group.exceptions[0] from None
        raise


class Stopped(SandboxError):
    """The command was stopped by a signal before its work ended."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}: the run was ended and its box removed")
        self.signum = signum

    @property
    def exit_status(self) -> int:  # type: ignore[override]
        return 128 + self.signum
