"""go-judge's `src`: a file on the server, read only beneath the paths the operator names (`--src-prefix`).

A client names a server path; without prefixes every `src` is refused (a
network client never reads the server's files).  Each prefix is resolved
when the service starts (hostpath.py: through links of the operator's or
root's only) and kept open; a `src` is then opened beneath that fd with
`openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`, so neither `..` nor a
link leads out of it, whatever a link under it says.  What is opened is
handed to the box as an fd (box init copies from it), never read whole here.
"""

from __future__ import annotations

import os
import stat

from .. import hostpath
from .. import syscalls as sc

_RESOLVE = sc.RESOLVE_BENEATH | sc.RESOLVE_NO_MAGICLINKS
_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class SourceError(Exception):
    """A `src` the service will not read: the request's error (400)."""


class Sources:
    def __init__(self, prefixes: list[str]) -> None:
        self._roots: list[hostpath.HostPath] = []
        try:
            for prefix in prefixes:
                self._roots.append(hostpath.resolve(prefix, "--src-prefix"))
        except BaseException:
            self.close()
            raise

    def open(self, src: str) -> int:
        """An fd to read `src` from (the caller closes it): a regular file beneath a prefix, or a prefix itself."""
        if not self._roots:
            raise SourceError(f"src {src}: no server path is readable (sbx serve --src-prefix names where)")
        if not os.path.isabs(src) or "\0" in src:
            raise SourceError(f"src {src!r}: expected an absolute path")
        path = os.path.normpath(src)
        for root in self._roots:
            if path == root.path:
                return root.reopen(_FLAGS)
            if path.startswith(root.path.rstrip("/") + "/"):
                try:
                    fd = sc.openat2(root.fd, path[len(root.path):].lstrip("/"), _FLAGS, 0, _RESOLVE)
                except OSError as e:
                    raise SourceError(f"src {src}: {os.strerror(e.errno) if e.errno else e}") from None
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    os.close(fd)
                    raise SourceError(f"src {src}: not a regular file")
                return fd
        raise SourceError(f"src {src}: not beneath a --src-prefix of this server")

    def close(self) -> None:
        for root in self._roots:
            root.close()
