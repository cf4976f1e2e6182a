"""--copy-in and --copy-out: files and trees between the host and a box, safely in both directions.

The box side is untrusted: box init opens every file and directory there,
never through a symlink, and this process only reads and lists through
those fds.  The host side is written as the caller, relative to directory
fds, replacing rather than writing through whatever is in the way.  A host
tree being copied in is not trusted either (an earlier run may have written
it through a writable --bind): nothing in it is followed.  Trees are bounded
in depth, and everything copied out together by what the box could hold.
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass

import anyio

from . import fdpath, hostpath
from .api import Sandbox
from .box.files import copy, locate
from .budget import Budget
from .errors import BoxFileError, ConfigError

MAX_DEPTH = 128
"""Levels of a tree that a copy descends; a deeper one is refused (and no hostile tree exhausts the stack)."""


@dataclass(frozen=True)
class Copy:
    """A --copy-in or --copy-out: SRC:DST, one side on the host, the other in /box, /tmp or /dev/shm.

    The host side is resolved when the copy is parsed, before the box is
    built (hostpath.py): `host` is the file or tree to copy in, or the
    directory to copy out into (`name` in it), for the caller to close.  What a
    program does later to the host path cannot change where the copy goes.
    """

    src: str
    dst: str
    host: hostpath.HostPath
    name: str = ""
    into: bool = False
    """For --copy-out: DST is an existing directory, and SRC is copied into it as `name`."""


def _spec(spec: str, flag: str) -> tuple[str, str]:
    src, sep, dst = spec.partition(":")
    if not (src and sep and dst):
        raise ConfigError(f"{flag} {spec!r}: expected SRC:DST")
    return src, dst


def _check_box_path(path: str, flag: str, file: bool) -> None:
    """In /box, /tmp or /dev/shm; a file cannot be one of those dirs themselves (a tree can)."""
    try:
        root, rel = locate(path)
    except ValueError as e:
        raise ConfigError(f"{flag} {e}") from None
    if file and rel == ".":
        raise ConfigError(f"{flag} {path}: not a file under {root}")


def parse_copy_in(spec: str, guard: hostpath.Guard = hostpath.Guard()) -> Copy:
    """Checked before any box is built: a missing source is bad input, and so is a link sbx will not follow.

    SRC itself may be or pass through a link of the caller's or root's, but
    nothing in its tree is followed (see copy_in).
    """
    src, dst = _spec(spec, "--copy-in")
    host = hostpath.resolve(src, "--copy-in", guard)
    mode = os.fstat(host.fd).st_mode
    try:
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise ConfigError(f"--copy-in {src}: neither a regular file nor a directory")
        _check_box_path(dst, "--copy-in", file=not stat.S_ISDIR(mode))
    except BaseException:
        host.close()
        raise
    return Copy(src, dst, host)


def parse_copy_out(spec: str, guard: hostpath.Guard = hostpath.Guard()) -> Copy:
    """Checked before the run, so that a typo in the destination loses no run's work; and the destination's
    directory is opened now, so that what the program does to the host path meanwhile cannot move it."""
    src, dst = _spec(spec, "--copy-out")
    _check_box_path(src, "--copy-out", file=False)
    inside = os.path.basename(os.path.normpath(src))  # SRC's name in DST, when DST is a directory
    if dst.endswith("/"):  # a directory, even through a link (of the caller's: hostpath.py)
        found = hostpath.resolve(dst, "--copy-out", guard)
        if not stat.S_ISDIR(os.fstat(found.fd).st_mode):
            found.close()
            raise ConfigError(f"--copy-out {dst}: Not a directory")
        return Copy(src, dst, found, inside, into=True)
    parent, name = hostpath.resolve_parent(dst, "--copy-out", guard)
    try:
        st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
    except FileNotFoundError:
        return Copy(src, dst, parent, name)
    except OSError as e:
        parent.close()
        raise ConfigError(f"--copy-out {dst}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):  # (a link there is replaced, not followed)
        return Copy(src, dst, parent, name)
    with parent:  # an existing directory: copied into, as cp does
        fd = os.open(name, fdpath.PATH_DIR, dir_fd=parent.fd)
    return Copy(src, dst, hostpath.HostPath(fd, os.path.join(parent.path, name)), inside, into=True)


async def copy_in(sandbox: Sandbox, c: Copy) -> int:
    """One --copy-in, of a file or a directory tree; returns how many entries of the tree were left out.

    Nothing in SRC's tree is followed: a link there may have been planted by
    an earlier run through a writable --bind, and would carry the caller's
    files into the box.
    """
    try:
        top = c.host.reopen(os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise ConfigError(f"--copy-in {c.src}: {e.strerror}") from None
    try:
        return await _send_entry(sandbox, top, c.src, c.dst, 0)
    finally:
        os.close(top)


async def _send_entry(sandbox: Sandbox, fd: int, src: str, dst: str, depth: int) -> int:
    """A regular file is copied; a directory, entry by entry; anything else is left out (counted)."""
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        await _send_file(sandbox, fd, dst)
        return 0
    if not stat.S_ISDIR(mode):
        return 1
    if depth >= MAX_DEPTH:
        raise ConfigError(f"--copy-in {src}: more than {MAX_DEPTH} levels of directories")
    names, left_out = _listing(fd)
    for name in names:
        try:  # (O_NOFOLLOW: an entry swapped for a link meanwhile is refused, not followed)
            below = os.open(name, fdpath.READ, dir_fd=fd)
        except OSError as e:
            raise ConfigError(f"--copy-in {src}/{name}: {e.strerror}") from None
        try:
            left_out += await _send_entry(sandbox, below, f"{src}/{name}", f"{dst}/{name}", depth + 1)
        finally:
            os.close(below)
    return left_out


async def _send_file(sandbox: Sandbox, fd: int, dst: str) -> None:
    """Box init copies straight from the host file, which keeps its executable bits only."""
    try:
        await sandbox.copy_in(dst, fd, _plain_mode(os.fstat(fd).st_mode))
    except BoxFileError as e:
        raise BoxFileError(f"--copy-in {e}") from None


def left_out(count: int) -> str:
    return f"left out {count} symlink(s) or special file(s) in it (only regular files and directories are copied)"


async def copy_out(sandbox: Sandbox, c: Copy, budget: Budget) -> int:
    """One --copy-out, of a file or a directory tree; returns how many entries of the tree were left out.

    Box init opens every file and directory (never through a symlink); this
    process only reads and lists through those fds, and writes the host side
    as itself, with plain modes, relative to the directory opened before the
    run (parse_copy_out): a directory the program removed meanwhile takes no
    new files.
    """
    shown = os.path.join(c.dst, c.name) if c.into else c.dst
    return await _fetch_entry(sandbox, c.src, c.host.fd, c.name, shown, budget, 0)


async def _fetch_entry(sandbox: Sandbox, src: str, parent: int, name: str, shown: str, budget: Budget,
                       depth: int) -> int:
    """Copy the box's `src` to `name` in the host directory `parent` (`shown` is that host path, for messages)."""
    fd = await sandbox.open_file(src)
    try:
        st = os.fstat(fd)
        is_dir = stat.S_ISDIR(st.st_mode)
        out = budget.take(0 if is_dir else st.st_size, 1)
        if out == "bytes":
            raise BoxFileError(f"{src}: {st.st_size} bytes, more than the {budget.bytes - budget.used_bytes} bytes left "
                               "for copying out (at most --disk in all)")
        if out == "entries":
            raise BoxFileError(f"{src}: more files than --inodes in all to copy out")
        try:
            if not is_dir:
                await anyio.to_thread.run_sync(_store, fd, st.st_size, _plain_mode(st.st_mode), parent, name)
                return 0
            if depth >= MAX_DEPTH:
                raise BoxFileError(f"{src}: more than {MAX_DEPTH} levels of directories")
            below = _host_dir(parent, name)
        except OSError as e:
            raise BoxFileError(f"{shown}: {e.strerror or e}") from None
        try:
            names, left_out = _listing(fd)
            for entry in names:
                left_out += await _fetch_entry(sandbox, f"{src}/{entry}", below, entry, f"{shown}/{entry}", budget,
                                               depth + 1)
            return left_out
        finally:
            os.close(below)
    finally:
        os.close(fd)


def _listing(directory: int) -> tuple[list[str], int]:
    """The names of a directory's regular files and directories (sorted), and how many others it has."""
    names, others = [], 0
    with os.scandir(directory) as scan:
        for entry in scan:
            try:
                wanted = entry.is_file(follow_symlinks=False) or entry.is_dir(follow_symlinks=False)
            except OSError:
                wanted = False
            if wanted:
                names.append(entry.name)
            else:
                others += 1
    return sorted(names), others


def _host_dir(parent: int, name: str) -> int:
    """The host directory `name` in `parent`, made if missing; a symlink there is refused, not followed."""
    return fdpath.make_dir(parent, name, 0o755)[0]


def _store(source: int, size: int, mode: int, parent: int, name: str) -> None:
    """Write a new file in `parent` and rename it to `name`.

    An existing `name` (a symlink a program with a writable --bind planted,
    a hard link) is replaced, never written through; a failed copy leaves it
    as it was.
    """
    temp = f".sbx-copy-{secrets.token_hex(8)}"  # (not from `name`: that may already be 255 bytes long)
    fd = os.open(temp, fdpath.CREATE, mode, dir_fd=parent)
    try:
        copy(source, fd, size)
        os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
    except BaseException:
        os.unlink(temp, dir_fd=parent)
        raise
    finally:
        os.close(fd)


def _plain_mode(mode: int) -> int:
    """What a copied file gets: 755 if it was executable by anyone, else 644 (no setuid, nothing world-writable)."""
    return 0o755 if mode & 0o111 else 0o644
