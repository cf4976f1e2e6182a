"""Upper-layer quota: bytes and names.

What the box can make in the upper is charged, whichever call makes it:

* a name (``quota_inodes``): every entry of the upper, so files, directories,
  symlinks, special files, whiteouts, and each extra hard link of a file (a
  link costs a directory entry on the host and a name the daemon keeps);
  a removed file still held open keeps its name (in the work dir) until the
  kernel forgets it;
* bytes (``quota_bytes``): the apparent size of each regular file and symlink
  (once per object, however many names it has), plus the names and values of
  its extended attributes.

Counting apparent sizes rather than allocated blocks over-estimates sparse
files, which errs on the side the quota exists for: the host disk is never
filled through the box.  The opaque marker file of the OCI dialect belongs
to its directory and is not counted.
"""

import errno
import os
import stat

from .markers import OPAQUE_FILE, is_hidden_xattr


def xattr_bytes(path: bytes) -> int:
    """The charge for the extended attributes of PATH the box can see and set."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return 0
    total = 0
    for name in names:
        raw = os.fsencode(name)
        if is_hidden_xattr(raw):
            continue
        try:
            total += len(raw) + len(os.getxattr(path, name, follow_symlinks=False))
        except OSError:
            continue
    return total


def object_bytes(path: bytes, st: os.stat_result) -> int:
    """The bytes charged for the object at PATH (ST: its lstat)."""
    size = st.st_size if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode) else 0
    return size if stat.S_ISLNK(st.st_mode) else size + xattr_bytes(path)


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
        """Count what a previous mount left in the upper: every name, each object's bytes once."""
        seen: set[tuple[int, int]] = set()
        stack = [upper]
        while stack:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    if entry.name == OPAQUE_FILE:
                        continue
                    self.used_inodes += 1
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(entry.path)
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                    self.used_bytes += object_bytes(entry.path, st)

    def charge_bytes(self, delta: int) -> None:
        """Account a size change, refusing growth past the limit."""
        self.check_bytes(delta)
        self.used_bytes = max(0, self.used_bytes + delta)

    def charge_inode(self, count: int = 1) -> None:
        """Account COUNT names more (or fewer), refusing growth past the limit."""
        if count > 0 and self.max_inodes is not None and self.used_inodes + count > self.max_inodes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.used_inodes = max(0, self.used_inodes + count)

    def check_bytes(self, delta: int) -> None:
        if delta > 0 and self.max_bytes is not None and self.used_bytes + delta > self.max_bytes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
