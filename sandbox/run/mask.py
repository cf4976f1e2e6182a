"""Secrets masked in what sbx relays: a program that prints a secret shows `***` instead, as GitHub's `::add-mask::`.

A stream is masked as it comes, chunk by chunk, so a secret split across
two reads (or two writes of the program) is still found: `feed` keeps back
the end of what it was given for as long as that end could be the start of
a secret, and `flush` gives the rest at the stream's end.  Masking is for
logs and records: a program can still leak a secret by encoding it, as
with any CI system's masking.
"""

from __future__ import annotations

import re

MASK = b"***"


class Mask:
    """One stream's masker (`feed` as output comes, `flush` at its end); `apply` masks a whole text at once."""

    def __init__(self, secrets: tuple[bytes, ...]) -> None:
        self._secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))
        self._pattern = re.compile(b"|".join(map(re.escape, self._secrets))) if self._secrets else None
        self._held = b""

    def __bool__(self) -> bool:
        return self._pattern is not None

    def apply(self, data: bytes) -> bytes:
        return data if self._pattern is None else self._pattern.sub(MASK, data)

    def apply_text(self, text: str) -> str:
        """A message of sbx's (a result's), masked as the output is."""
        return text if self._pattern is None else self.apply(text.encode()).decode(errors="replace")

    def feed(self, data: bytes) -> bytes:
        """What of the stream so far can be shown: masked, less an end that may begin a secret."""
        if self._pattern is None:
            return data
        text = self._held + data
        cut = len(text) - self._open_end(text)
        for found in self._pattern.finditer(text):  # a whole secret across the cut is shown (masked) whole
            if found.start() < cut < found.end():
                cut = found.end()
        self._held = text[cut:]
        return self._pattern.sub(MASK, text[:cut])

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        return self.apply(held)

    def _open_end(self, text: bytes) -> int:
        """The length of the longest end of `text` that a secret begins with."""
        longest = min(len(text), max(map(len, self._secrets)) - 1) if self._secrets else 0
        for size in range(longest, 0, -1):
            tail = text[len(text) - size:]
            if any(secret.startswith(tail) for secret in self._secrets):
                return size
        return 0
