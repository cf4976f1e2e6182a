"""Descriptors by node, for requests that name an inode rather than an open file.

The kernel serves opens itself (shim.c), so the daemon never learns when
a file is opened or closed: it opens the real file when data is first read
or written and keeps the descriptor in a bounded LRU.  A file whose last
name is removed while the box may still use it is moved into the work dir
(the node's ``orphan`` path) until the kernel forgets it, so a descriptor
can always be reopened by path and none has to be held.
"""

import os
from collections import OrderedDict

from .inodes import Node
from .libfuse import fast

DEFAULT_LIMIT = 256


class OpenFiles:
    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self._lru: OrderedDict[int, Node] = OrderedDict()

    def get(self, node: Node, path: bytes, writable: bool) -> int:
        """A descriptor of PATH for NODE, read-write when WRITABLE (upper files only)."""
        fd = node.fd
        if fd is not None and (node.fd_rw or not writable):
            self._lru.move_to_end(node.ino)
            return fd
        new = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
        self.put(node, new, writable)
        return new

    def put(self, node: Node, fd: int, writable: bool) -> None:
        self.drop(node)
        node.fd, node.fd_rw = fd, writable
        self._lru[node.ino] = node
        if not writable and not node.upper:
            fast.file(node.ino, fd)
        while len(self._lru) > self.limit:
            _, old = self._lru.popitem(last=False)
            self._close(old)

    def drop(self, node: Node) -> None:
        """Forget NODE's descriptor: its object was copied up or is gone."""
        if node.fd is not None:
            del self._lru[node.ino]
            self._close(node)

    @staticmethod
    def _close(node: Node) -> None:
        fd, node.fd, node.fd_rw = node.fd, None, False
        if fd is not None:
            fast.file(node.ino, -1)
            os.close(fd)
