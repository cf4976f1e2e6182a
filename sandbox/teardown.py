"""Removing what a box leaves on the host (the union's scratch upper, its work dir) without trusting any of it.

The program wrote that tree (through the union) and overlayfs left its own
dirs in it (a mode-000 `work`), so nothing in it is trusted: links it
planted, modes it set, a depth meant to exhaust the stack or the fds.  The
removal works on directory fds only: it unlinks relative to the parent's
fd (unlinkat never follows a link), opens a directory only with
O_DIRECTORY|O_NOFOLLOW (a link there fails to open and is unlinked as
what it is), fchmods only directories it opened that way, and walks the
tree with a loop and one open directory at a time (the way back up is
`..` of the directory it leaves, checked against the identity it had on
the way down).  It never raises for what it could not remove: it says
what was left, so that a caller's result survives a failed cleanup.
"""

from __future__ import annotations

import errno
import os
import stat

from . import fdpath
from . import syscalls as sc

_MAX_NOTES = 3


class TeardownWarning(RuntimeWarning):
    """Closing a sandbox left something behind (part of a scratch upper or work dir, a process, a cgroup).

    A warning and not an exception: the results of the box's runs, which the
    caller holds or is writing, must survive a failed cleanup.
    """


def identity(path: str) -> tuple[int, int]:
    """What `remove_tree` checks a dir it is given against, taken when the dir is made: (st_dev, st_ino)."""
    st = os.lstat(path)
    return st.st_dev, st.st_ino


def remove_tree(path: str, expected: tuple[int, int] | None = None) -> list[str]:
    """Remove the directory `path` and everything in it, following no link.

    `path`'s parent is trusted (sbx made `path` in it); `expected` is the
    dir's `identity` when it was made, and a dir that is not that one is
    left alone.  Returns what could not be removed, one line each (empty
    when everything went); raises nothing for that.
    """
    notes = _Notes(path)
    parent_path, name = os.path.split(os.path.normpath(path))
    try:
        top_parent = os.open(parent_path or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        notes.add(parent_path, e)
        return notes.lines
    try:
        try:
            top = _open_dir(top_parent, name)
        except FileNotFoundError:
            return notes.lines
        except OSError as e:
            notes.add(path, e if e.errno not in (errno.ELOOP, errno.ENOTDIR) else "not a directory (left alone)")
            return notes.lines
        if expected is not None and fdpath.identity(top) != expected:
            os.close(top)
            notes.add(path, "not the directory sbx made there (left alone)")
            return notes.lines
        if _empty(top, path, notes):
            try:
                os.rmdir(name, dir_fd=top_parent)
            except OSError as e:
                notes.add(path, e)
    finally:
        os.close(top_parent)
    return notes.lines


def _empty(top: int, top_path: str, notes: _Notes) -> bool:
    """Empty the directory open as `top` (and close it): depth first, with a loop and one open directory at a time.

    The stack holds, per level above the current directory, its identity,
    its names still to remove and the name of the child being emptied.
    Returns False if it had to stop because the tree changed under it.
    """
    stack: list[tuple[tuple[int, int], list[str], str]] = []
    cur, cur_id, todo, where = top, fdpath.identity(top), _names(top, top_path, notes), top_path
    try:
        while True:
            if todo:
                name = todo.pop()
                child = _remove_or_open(cur, name, f"{where}/{name}", notes)
                if child is None:
                    continue
                stack.append((cur_id, todo, name))
                os.close(cur)
                cur, where = child, f"{where}/{name}"
                cur_id, todo = fdpath.identity(cur), _names(cur, where, notes)
                continue
            if not stack:
                return True
            parent_id, todo, name = stack.pop()
            try:
                up = os.open("..", fdpath.DIR, dir_fd=cur)
            except OSError as e:
                notes.add(os.path.dirname(where), e)
                return False
            os.close(cur)
            cur, where = up, os.path.dirname(where)
            cur_id = fdpath.identity(cur)
            if cur_id != parent_id:  # nothing should move it; if something did, touch nothing more
                notes.add(where, "moved during removal (removal stopped)")
                return False
            try:
                os.rmdir(name, dir_fd=cur)
            except OSError as e:
                notes.add(f"{where}/{name}", e)
    finally:
        os.close(cur)


def _remove_or_open(parent: int, name: str, where: str, notes: _Notes) -> int | None:
    """Unlink `name` if it is not a directory; else an fd of the directory, to empty it (None: nothing to do)."""
    try:
        os.unlink(name, dir_fd=parent)  # unlinkat(2): a link itself goes, never what it points to
        return None
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        pass
    except OSError as e:
        notes.add(where, e)
        return None
    try:
        return _open_dir(parent, name)
    except (FileNotFoundError, NotADirectoryError):
        return None  # gone, or not a directory after all: nothing of it to follow
    except OSError as e:
        notes.add(where, e)
        return None


def _open_dir(parent: int, name: str) -> int:
    """An fd of the directory `name` (never through a link), readable and writable for its owner, so that it can be
    emptied: a directory sbx cannot list or write to is fchmodded to 0700 through an fd of that very directory."""
    try:
        fd = os.open(name, fdpath.DIR, dir_fd=parent)
    except PermissionError:  # e.g. overlayfs's mode-000 `work`: opened without read access, fchmodded, then read
        path_fd = os.open(name, fdpath.PATH_DIR, dir_fd=parent)
        try:
            sc.fchmod_path(path_fd, 0o700)
            fd = os.open(".", fdpath.DIR, dir_fd=path_fd)
        finally:
            os.close(path_fd)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o700 != 0o700:
            os.fchmod(fd, 0o700)
    except OSError:
        pass  # not ours to chmod: removing in it may still work, else it is reported
    return fd


def _names(fd: int, where: str, notes: _Notes) -> list[str]:
    try:
        return os.listdir(fd)
    except OSError as e:
        notes.add(where, e)
        return []


class _Notes:
    """What was left, as a few lines (a hostile tree can make thousands of failures: the rest are counted)."""

    def __init__(self, top: str) -> None:
        self.top = top
        self._lines: list[str] = []
        self._more = 0

    def add(self, where: str, why: OSError | str) -> None:
        if len(self._lines) >= _MAX_NOTES:
            self._more += 1
        else:
            self._lines.append(f"{where}: {why.strerror if isinstance(why, OSError) and why.strerror else why}")

    @property
    def lines(self) -> list[str]:
        return self._lines + ([f"... and {self._more} more under {self.top}"] if self._more else [])
