"""How much sbx may still write on the host for input someone else controls: one allowance of bytes and entries.

An image's layers and the files a program leaves to copy out are both
hostile input that becomes files on the host.  Each is taken from a budget
as it comes (never summed up front from sizes the input declares), and the
first take past either end is refused, with nothing taken.
"""

from __future__ import annotations

from typing import Literal

from .record import Record


class Budget(Record, frozen=False):
    bytes: int
    entries: int
    used_bytes: int = 0
    used_entries: int = 0

    def take(self, size: int, entries: int) -> Literal["bytes", "entries"] | None:
        """Take `size` bytes and `entries` entries; what would run out (then nothing is taken), or None."""
        if self.used_bytes + size > self.bytes:
            return "bytes"
        if self.used_entries + entries > self.entries:
            return "entries"
        self.used_bytes += size
        self.used_entries += entries
        return None
