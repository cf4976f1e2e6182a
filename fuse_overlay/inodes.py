"""Inodes of the merged tree and their numbering.

Each object the kernel has heard of is a :class:`Node` reached by its
FUSE inode number.  A node remembers where it lives (``upper`` and, until
copied up, which ``lowers``) and its place in the tree (parent and name),
so renames move one node and its whole subtree follows.  Numbers come
from a counter and a node is kept until it is both unlinked and
forgotten, which keeps ``st_ino`` stable for the life of the mount.
"""

import os
from typing import Any

from .libfuse import pyfuse3

ROOT_INO = pyfuse3.ROOT_INODE


class Node:
    __slots__ = (
        "ino", "parent", "name", "is_dir", "upper", "lowers", "lower_st", "nlookup",
        "children", "listing", "stream", "attr", "aliases", "fd", "fd_rw", "orphan", "unlinked", "key",
        "mem_override", "_rel", "_rel_moves",
    )
    moves = 0
    """How many times a node has been given another parent or name: a directory's path remembered before the
    latest move may be stale (the move can be of any directory above it)."""

    def __init__(self, ino: int, parent: "Node | None", name: bytes, is_dir: bool,
                 upper: bool, lowers: tuple[int, ...], lower_st: os.stat_result | None) -> None:
        self.ino = ino
        self.parent = parent
        self.name = name
        self.is_dir = is_dir
        self.upper = upper
        # Lower layers holding this object, topmost first: for a directory
        # every layer merged into it, for anything else the one it comes from.
        self.lowers = lowers
        self.lower_st = lower_st
        self.nlookup = 0
        # Resolved children by name; None caches a miss.  Valid because the
        # daemon is the only writer of the upper and lowers never change.
        self.children: dict[bytes, Node | None] = {}
        self.listing: tuple[tuple[bytes, Node], ...] | None = None
        self.stream: Any = None  # a DirStream once listed
        # Cached attributes of objects not in the upper (immutable).
        self.attr: Any = None
        # Extra hard-link names besides (parent, name).
        self.aliases: list[tuple[Node, bytes]] = []
        # The descriptor OpenFiles keeps for it, and whether it is read-write.
        self.fd: int | None = None
        self.fd_rw = False
        # Where an unlinked regular file lives until forgotten, in the work dir.
        self.orphan: bytes | None = None
        self.unlinked = False
        self.key: tuple[int, int] | None = None
        self.mem_override: Any = None
        self._rel = b""
        self._rel_moves = -1

    def move(self, parent: "Node", name: bytes) -> None:
        self.parent, self.name = parent, name
        Node.moves += 1

    def rel(self) -> bytes:
        """The path from the root.  Directories remember theirs until the next move anywhere: a listing asks
        for its directory's path once per entry, and a file's is its directory's and its name."""
        parent = self.parent
        if parent is None:
            return b""
        if self._rel_moves == Node.moves:
            return self._rel
        prel = _walk(parent)
        rel = prel + b"/" + self.name if prel else self.name
        if self.is_dir:
            self._rel, self._rel_moves = rel, Node.moves
        return rel

    def is_under(self, ancestor: "Node") -> bool:
        node = self.parent
        while node is not None:
            if node is ancestor:
                return True
            node = node.parent
        return False


def _walk(d: Node) -> bytes:
    """D's path, remembered in D and the directories above it that had none (a loop, not a recursion: a box may
    nest directories deeper than Python's stack)."""
    above = []
    node = d
    while node.parent is not None and node._rel_moves != Node.moves:
        above.append(node)
        node = node.parent
    rel = node._rel if node.parent is not None else b""
    for n in reversed(above):
        rel = rel + b"/" + n.name if rel else n.name
        n._rel, n._rel_moves = rel, Node.moves
    return rel


class InodeTable:
    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        self.by_key: dict[tuple[int, int], Node] = {}
        self._next = ROOT_INO + 1

    def add_root(self, upper: bool, lowers: tuple[int, ...], lower_st: os.stat_result | None) -> Node:
        root = Node(ROOT_INO, None, b"", True, upper, lowers, lower_st)
        root.nlookup = 1
        self.nodes[ROOT_INO] = root
        return root

    def new(self, parent: Node, name: bytes, is_dir: bool, upper: bool,
            lowers: tuple[int, ...], lower_st: os.stat_result | None) -> Node:
        node = Node(self._next, parent, name, is_dir, upper, lowers, lower_st)
        self._next += 1
        self.nodes[node.ino] = node
        return node

    def register_key(self, node: Node, st: os.stat_result) -> None:
        """Remember a multiply-linked object so its other names share the node."""
        key = (st.st_dev, st.st_ino)
        node.key = key
        self.by_key[key] = node

    def drop_key(self, node: Node) -> None:
        if node.key is not None and self.by_key.get(node.key) is node:
            del self.by_key[node.key]
        node.key = None

    def forget(self, ino: int, count: int) -> Node | None:
        """Drop COUNT lookups; returns the node if that was the end of it."""
        node = self.nodes.get(ino)
        if node is None:
            return None
        node.nlookup -= count
        if node.nlookup <= 0 and node.unlinked and ino != ROOT_INO:
            del self.nodes[ino]
            return node
        return None
