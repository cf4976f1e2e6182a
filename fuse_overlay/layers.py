"""Read-only view of the lower layers, cached for the life of the mount.

Lowers never change while mounted, so each lower directory is listed once
and every later lookup in it is a dictionary probe; that is what keeps
compilers (which probe many missing include paths) cheap.
"""

import os
from dataclasses import dataclass

from .markers import OPAQUE_FILE, WH_PREFIX, has_opaque_xattr, is_chardev_whiteout


@dataclass(frozen=True, slots=True)
class DirScan:
    """One layer's copy of one directory.

    ``whiteouts`` hide names in the layers below only (OCI rule: an entry
    and its whiteout in the same layer leave the entry visible), and
    ``opaque`` likewise stops the descent below this layer.
    """

    names: frozenset[bytes]
    whiteouts: frozenset[bytes]
    opaque: bool


def _is_special(entry: os.DirEntry[bytes]) -> bool:
    """Only device-like entries can be whiteouts; stat nothing else."""
    return not (entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False)
                or entry.is_symlink())


def scan_dir(path: bytes, below: bool) -> DirScan | None:
    """BELOW: whether layers lie below this one, which an opaque mark would hide; the bottom layer's directories
    are not asked for the mark's xattr (a listxattr each, 5% of the daemon's time on a cold walk)."""
    names: set[bytes] = set()
    whiteouts: set[bytes] = set()
    opaque = False
    try:
        it = os.scandir(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    with it:
        for entry in it:
            name = entry.name
            if name == OPAQUE_FILE:
                opaque = True
            elif name.startswith(WH_PREFIX):
                whiteouts.add(name[len(WH_PREFIX):])
            elif _is_special(entry) and is_chardev_whiteout(entry.stat(follow_symlinks=False)):
                whiteouts.add(name)
            else:
                names.add(name)
    return DirScan(frozenset(names), frozenset(whiteouts), opaque or below and has_opaque_xattr(path))


class Lowers:
    def __init__(self, roots: list[bytes]) -> None:
        self.roots = roots
        self._scans: dict[tuple[int, bytes], DirScan | None] = {}

    def path(self, idx: int, rel: bytes) -> bytes:
        return self.roots[idx] + b"/" + rel if rel else self.roots[idx]

    def scan(self, idx: int, rel: bytes) -> DirScan | None:
        key = (idx, rel)
        try:
            return self._scans[key]
        except KeyError:
            result = self._scans[key] = scan_dir(self.path(idx, rel), below=idx < len(self.roots) - 1)
            return result

    def has_name(self, layers: tuple[int, ...], rel: bytes, name: bytes) -> bool:
        """Would NAME show through from these lowers if the upper did not hide it?"""
        for idx in layers:
            sc = self.scan(idx, rel)
            if sc is None:
                continue
            if name in sc.names:
                return True
            if name in sc.whiteouts or sc.opaque:
                return False
        return False

    def root_layers(self) -> tuple[int, ...]:
        result = []
        for idx in range(len(self.roots)):
            result.append(idx)
            sc = self.scan(idx, b"")
            if sc is not None and sc.opaque:
                break
        return tuple(result)
