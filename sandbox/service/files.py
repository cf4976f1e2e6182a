"""The service's file cache: files uploaded with POST /file or kept with copyOutCached, by id, in memory.

Bounded in total bytes: a client that would go past the bound gets a clear
error (HTTP 413, or "File Error" for a run's cached copy), never an
out-of-memory service.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field


class CacheFull(Exception):
    pass


@dataclass
class FileCache:
    limit: int  # bytes over all files
    used: int = 0
    _files: dict[str, tuple[str, bytes]] = field(default_factory=dict)

    def add(self, name: str, data: bytes) -> str:
        if self.used + len(data) > self.limit:
            raise CacheFull(f"the file cache holds {self.used} of {self.limit} bytes; {len(data)} more do not fit "
                            "(DELETE /file/ID frees space)")
        file_id = secrets.token_hex(8).upper()
        self._files[file_id] = (name, data)
        self.used += len(data)
        return file_id

    def get(self, file_id: str) -> bytes | None:
        entry = self._files.get(file_id)
        return None if entry is None else entry[1]

    def remove(self, file_id: str) -> bool:
        entry = self._files.pop(file_id, None)
        if entry is None:
            return False
        self.used -= len(entry[1])
        return True

    def names(self) -> dict[str, str]:
        return {file_id: name for file_id, (name, _) in self._files.items()}
