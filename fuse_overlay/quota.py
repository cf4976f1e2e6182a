"""Upper-layer quota: bytes (apparent file sizes) and inodes.

Counting apparent sizes rather than allocated blocks over-estimates sparse
files, which errs on the side the quota exists for: the host disk is never
filled through the box.
"""

import errno
import os
import stat


class Quota:
    def __init__(self, max_bytes: int | None, max_inodes: int | None) -> None:
        self.max_bytes = max_bytes
        self.max_inodes = max_inodes
        self.used_bytes = 0
        self.used_inodes = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes is not None or self.max_inodes is not None

    def scan(self, upper: bytes) -> None:
        """Count what a previous mount left in the upper, each inode once."""
        seen: set[tuple[int, int]] = set()
        stack = [upper]
        while stack:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    st = entry.stat(follow_symlinks=False)
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                    self.used_inodes += 1
                    if stat.S_ISREG(st.st_mode):
                        self.used_bytes += st.st_size
                    elif stat.S_ISDIR(st.st_mode):
                        stack.append(entry.path)

    def charge_bytes(self, delta: int) -> None:
        """Account a size change, refusing growth past the limit."""
        if delta > 0 and self.max_bytes is not None and self.used_bytes + delta > self.max_bytes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.used_bytes = max(0, self.used_bytes + delta)

    def charge_inode(self, count: int = 1) -> None:
        if count > 0 and self.max_inodes is not None and self.used_inodes + count > self.max_inodes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.used_inodes = max(0, self.used_inodes + count)

    def check_bytes(self, delta: int) -> None:
        if delta > 0 and self.max_bytes is not None and self.used_bytes + delta > self.max_bytes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
