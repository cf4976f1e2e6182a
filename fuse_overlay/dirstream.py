"""readdir offsets that stay valid while the directory changes.

Without opendir there is no handle to hold a snapshot of the listing, and
two readdir calls of one pass may see different listings.  Each name gets a
cookie the first time it is listed and keeps it while it exists; an offset
is a cookie and the next call lists the names with larger ones.  So a name
present during the whole pass is listed exactly once, and a new one, with a
fresh cookie, comes at the end.
"""

import bisect
from collections.abc import Iterator

from .inodes import Node

Listing = tuple[tuple[bytes, Node], ...]
FIRST_COOKIE = 3  # 1 and 2 are "." and ".."


class DirStream:
    __slots__ = ("_cookies", "_entries", "_keys", "_listing", "_next")

    def __init__(self) -> None:
        self._cookies: dict[bytes, int] = {}
        self._next = FIRST_COOKIE
        self._listing: Listing | None = None
        self._entries: list[tuple[int, bytes, Node]] = []
        self._keys: list[int] = []

    def after(self, d: Node, listing: Listing, offset: int) -> Iterator[tuple[int, bytes, Node]]:
        """The entries of D (with "." and "..") whose cookie is larger than OFFSET, in order."""
        if offset < 1:
            yield 1, b".", d
        if offset < 2:
            yield 2, b"..", d.parent or d
        if listing is not self._listing:
            self._renumber(listing)
        for i in range(bisect.bisect_right(self._keys, offset), len(self._entries)):
            yield self._entries[i]

    def _renumber(self, listing: Listing) -> None:
        cookies: dict[bytes, int] = {}
        for name, _node in listing:
            cookie = self._cookies.get(name)
            if cookie is None:
                cookie, self._next = self._next, self._next + 1
            cookies[name] = cookie
        self._cookies = cookies
        self._entries = sorted((cookies[name], name, node) for name, node in listing)
        self._keys = [e[0] for e in self._entries]
        self._listing = listing
