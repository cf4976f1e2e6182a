"""Named volumes (Docker's data volumes): directories that outlive boxes, each capped, with one writer at a time.

Under `$XDG_DATA_HOME/sbx/volumes/NAME/` (default `~/.local/share`)::

    volume.json   its name, when it was made, and its caps (bytes, names)
    data/         its files
    work/         the union daemon's scratch for data/, on the same filesystem
    empty/        the union's lower: nothing lies below a volume

A box sees a volume through a FUSE daemon of its own (the union filesystem
with `data/` as its upper and an empty lower), because nothing rootless caps
a host directory the kernel writes into; the daemon counts what is there
when it starts and refuses writes past the caps (fuse_overlay/quota.py).
The daemon runs as the caller, so every file of a volume stays the caller's
to remove, whatever the box did; the owners the box gave are kept in xattrs.

A volume's files are written by untrusted programs: sbx reads and removes
them through fds only (fdpath.py, teardown.py), never following a link.

Locks (flock), held by the sandbox and inherited by its daemons, so that they
last until both are gone:
- a writer: shared on `NAME/`, exclusive on `data/` (one writer at a time);
- a reader (`:ro`): shared on `NAME/` (it sees a writer's changes as they come);
- `rm` and `prune`: exclusive on `NAME/`, without waiting (a volume in use stays).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import stat
import tempfile
import time

from . import fdpath, teardown
from .errors import ConfigError
from .record import Record

DEFAULT_SIZE = 2**30
DEFAULT_INODES = 2**17
"""The caps of a volume made on first use (`sbx volume create --size/--inodes` sets others)."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_MAX_DEPTH = 512
"""How deep `usage` walks (one fd per level); what lies deeper is not counted and the usage says so."""


class Volume(Record):
    name: str
    path: str
    size: int
    inodes: int
    created: float

    @property
    def data(self) -> str:
        return os.path.join(self.path, "data")

    @property
    def work(self) -> str:
        return os.path.join(self.path, "work")

    @property
    def lower(self) -> str:
        return os.path.join(self.path, "empty")


class Usage(Record):
    bytes: int
    inodes: int
    complete: bool
    """False when part of the tree could not be read or lay deeper than the walk goes."""


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ConfigError(f"volume {name!r}: a name of letters, digits, '.', '_' and '-', at most 128, "
                          "not starting with '.', '_' or '-'")
    return name


class Volumes:
    """The caller's volumes."""

    def __init__(self, root: str | None = None) -> None:
        base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
        self.root = root or os.path.join(base, "sbx", "volumes")
        try:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"the volume store {self.root}: {e.strerror}") from None

    def create(self, name: str, size: int = DEFAULT_SIZE, inodes: int = DEFAULT_INODES) -> Volume:
        """A new volume; one of that name already there is an error."""
        check_name(name)
        # made whole under a hidden name, then renamed: a volume is there complete or not at all
        making = tempfile.mkdtemp(prefix=".making-", dir=self.root)
        try:
            for sub in ("data", "work", "empty"):
                os.mkdir(os.path.join(making, sub), 0o755 if sub != "work" else 0o700)
            with open(os.path.join(making, "volume.json"), "x") as f:
                json.dump({"name": name, "created": time.time(), "size": size, "inodes": inodes}, f)
            try:
                os.rename(making, os.path.join(self.root, name))
            except OSError as e:
                if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise ConfigError(f"volume {name}: it already exists") from None
                raise
        except BaseException:
            teardown.remove_tree(making)
            raise
        return self.get(name)

    def get(self, name: str) -> Volume:
        check_name(name)
        path = os.path.join(self.root, name)
        try:
            with open(os.path.join(path, "volume.json")) as f:
                meta = json.load(f)
            return Volume(name, path, int(meta["size"]), int(meta["inodes"]), float(meta["created"]))
        except FileNotFoundError:
            raise ConfigError(f"volume {name}: no such volume (sbx volume ls lists them)") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"volume {name}: its record {path}/volume.json cannot be read: {e}") from None

    def ensure(self, name: str) -> Volume:
        """The volume, made with the default caps on its first use (as `docker run -v NAME:/path` does)."""
        try:
            return self.get(name)
        except ConfigError:
            if os.path.lexists(os.path.join(self.root, check_name(name))):
                raise
        try:
            return self.create(name)
        except ConfigError:  # another sbx made it meanwhile
            return self.get(name)

    def all(self) -> list[Volume]:
        return [self.get(n) for n in sorted(os.listdir(self.root)) if _NAME.fullmatch(n)]

    def lock(self, volume: Volume, read_only: bool) -> list[int]:
        """The fds whose flocks make this sandbox a reader or the one writer (module docstring)."""
        fds: list[int] = []
        try:
            fds.append(os.open(volume.path, fdpath.DIR))
            _flock(fds[0], fcntl.LOCK_SH, f"volume {volume.name}: it is being removed")
            if teardown.identity(volume.path) != fdpath.identity(fds[0]):
                raise ConfigError(f"volume {volume.name}: it was removed meanwhile")
            if not read_only:
                fds.append(os.open("data", fdpath.DIR, dir_fd=fds[0]))
                _flock(fds[1], fcntl.LOCK_EX, f"volume {volume.name}: another box writes to it "
                                              "(one writer at a time; add :ro to read it)")
        except BaseException as e:
            for fd in fds:
                os.close(fd)
            if isinstance(e, OSError):
                raise ConfigError(f"volume {volume.name}: {e.strerror}") from None
            raise
        return fds

    def remove(self, name: str) -> None:
        """Remove the volume and its files, unless a box uses it."""
        volume = self.get(name)
        fd = os.open(volume.path, fdpath.DIR)
        try:
            _flock(fd, fcntl.LOCK_EX, f"volume {name}: in use by a box")
            # renamed away first (still locked): a `--volume` that comes meanwhile makes a new one
            doomed = tempfile.mkdtemp(prefix=".removing-", dir=self.root)
            os.rename(volume.path, os.path.join(doomed, name))
            left = teardown.remove_tree(os.path.join(doomed, name), fdpath.identity(fd))
            if not left:
                os.rmdir(doomed)
        finally:
            os.close(fd)
        if left:
            raise ConfigError(f"volume {name}: could not remove all of it: {'; '.join(left)}")

    def prune(self) -> list[str]:
        """Remove every volume no box uses; the names removed."""
        removed = []
        for volume in self.all():
            try:
                self.remove(volume.name)
            except ConfigError:
                continue
            removed.append(volume.name)
        return removed

    def usage(self, volume: Volume) -> Usage:
        """What the volume's files take, counted as its caps count them (each file's size once, every name)."""
        try:
            top = os.open(volume.data, fdpath.DIR)
        except OSError:
            return Usage(0, 0, False)
        seen: set[tuple[int, int]] = set()
        nbytes = ninodes = 0
        complete = True
        stack = [(top, fdpath.names(top))]
        try:
            while stack:
                fd, names = stack[-1]
                if not names:
                    os.close(stack.pop()[0])
                    continue
                name = names.pop()
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    complete = False
                    continue
                ninodes += 1
                if stat.S_ISDIR(st.st_mode):
                    if len(stack) >= _MAX_DEPTH:
                        complete = False
                        continue
                    try:
                        sub = os.open(name, fdpath.DIR, dir_fd=fd)
                    except OSError:
                        complete = False
                        continue
                    try:
                        stack.append((sub, fdpath.names(sub)))
                    except OSError:
                        os.close(sub)
                        complete = False
                elif (st.st_dev, st.st_ino) not in seen and (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                    seen.add((st.st_dev, st.st_ino))
                    nbytes += st.st_size
        finally:
            for fd, _ in stack:
                os.close(fd)
        return Usage(nbytes, ninodes, complete)


def _flock(fd: int, how: int, busy: str) -> None:
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(busy) from None
