"""A build's context: the directory COPY and ADD read, which is hostile input, made into layer tars.

The context is opened once, as a directory fd.  A source COPY names is
resolved beneath it with openat2 (RESOLVE_BENEATH: a link that stays in
the context is followed, as docker follows it; one that leaves it, by `..`
or an absolute target, is refused).  Inside a directory that is copied,
nothing is followed: links are copied as links, and every entry is opened
through its parent's fd with O_NOFOLLOW as the kind it was found to be.
FIFOs, sockets and devices in the context are refused in one line (opening
one could block, or reach a device).  `.containerignore` (else
`.dockerignore`) at the context's root leaves paths out, with docker's
patterns: `*`, `?`, `[...]`, `**` for any number of directories, and `!`
to take a path back.

The layer tar names only what is copied: the directories on the way to the
destination are not in it, so the image's own keep their owner and mode
(images/unpack.py applies a layer onto its parents' view).
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import stat
import tarfile
from collections.abc import Iterator
from typing import IO

from .. import fdpath, hostpath
from .. import syscalls as sc
from ..budget import Budget
from ..errors import ConfigError
from ..record import Record

IGNORE_FILES = (".containerignore", ".dockerignore")
MAX_IGNORE = 1 << 20
MAX_DEPTH = 256
"""How deep a copied directory may go (the walk holds one fd per level)."""
_GLOB = re.compile(r"[*?\[]")


class Owner(Record):
    """COPY --chown and --chmod: None keeps the context's mode, and the owner is root's unless given."""

    uid: int = 0
    gid: int = 0
    mode: int | None = None


class Ignore:
    """docker's .dockerignore rules: the last pattern that matches a path decides, `!` taking it back."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[re.Pattern[str], bool]] = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            keep = line.startswith("!")
            pattern = os.path.normpath(line[1:] if keep else line).lstrip("/")
            self.rules.append((re.compile(_regex(pattern)), keep))
        self.exceptions = any(keep for _, keep in self.rules)

    def excluded(self, rel: str) -> bool:
        """Whether the context path `rel` (no leading /) is left out: by a pattern of its own or of a parent."""
        out = False
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            for regex, keep in self.rules:
                if regex.fullmatch(prefix):
                    out = not keep
            if out and not self.exceptions:
                return True  # an excluded dir with no exception anywhere: nothing below comes back
        return out


def _regex(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(pattern[i]))
                i += 1
            else:
                out.append(fnmatch.translate(pattern[i:end + 1])[4:-3])
                i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


class Context:
    """The context dir, open; `close` (or `with`) lets it go."""

    def __init__(self, path: str) -> None:
        with hostpath.resolve(path, "sbx build: the context") as found:
            try:
                self.fd = found.reopen(os.O_RDONLY | os.O_DIRECTORY)
            except OSError as e:
                raise ConfigError(f"sbx build: the context {path}: {e.strerror}") from None
        self.path = path
        self.ignore = Ignore(self._ignore_text())

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        os.close(self.fd)

    def _ignore_text(self) -> str:
        for name in IGNORE_FILES:
            try:
                fd = os.open(name, fdpath.READ, dir_fd=self.fd)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise ConfigError(f"sbx build: {self.path}/{name}: {e.strerror}") from None
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise ConfigError(f"sbx build: {self.path}/{name}: not a regular file")
                return os.read(fd, MAX_IGNORE).decode(errors="replace")
            finally:
                os.close(fd)
        return ""

    def read_file(self, rel: str, limit: int, what: str) -> bytes:
        """A regular file of the context, at most `limit` bytes (the Containerfile itself)."""
        fd = self._open(rel, os.O_RDONLY | os.O_NONBLOCK, what)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigError(f"{what}: not a regular file")
            data = os.read(fd, limit + 1)
        finally:
            os.close(fd)
        if len(data) > limit:
            raise ConfigError(f"{what}: more than {limit} bytes")
        return data

    def sources(self, src: str, where: str) -> list[str]:
        """The context paths a COPY source names: one path, or what a pattern matches (not left out)."""
        rel = _inside(src, where)
        if not _GLOB.search(rel):
            if rel != "." and self.ignore.excluded(rel):
                raise ConfigError(f"{where}: {src} is left out by the context's ignore file")
            return [rel]
        found = [p for p in self._walk_names() if fnmatch.fnmatchcase(p, rel) and not self.ignore.excluded(p)]
        if not found:
            raise ConfigError(f"{where}: {src} matches nothing in the context")
        return sorted(found)

    def _walk_names(self) -> Iterator[str]:
        """Every path of the context (no link followed), for a pattern to match."""
        stack = [(os.dup(self.fd), "")]
        try:
            while stack:
                fd, prefix = stack.pop()
                try:
                    for name in fdpath.names(fd):
                        rel = prefix + name
                        yield rel
                        if len(stack) < MAX_DEPTH:
                            try:
                                stack.append((os.open(name, fdpath.DIR, dir_fd=fd), rel + "/"))
                            except OSError:
                                pass
                finally:
                    os.close(fd)
        finally:
            for fd, _ in stack:
                os.close(fd)

    def _open(self, rel: str, flags: int, what: str) -> int:
        try:
            return sc.openat2(self.fd, rel, flags | os.O_CLOEXEC, 0, sc.RESOLVE_BENEATH | sc.RESOLVE_NO_MAGICLINKS)
        except OSError as e:
            if e.errno == errno.EXDEV:
                raise ConfigError(f"{what}: a link out of the context (refused)") from None
            raise ConfigError(f"{what}: {os.strerror(e.errno or errno.EIO)}") from None

    def is_dir(self, rel: str, where: str) -> bool:
        fd = self._open(rel, os.O_PATH, f"{where}: {rel}")
        try:
            return stat.S_ISDIR(os.fstat(fd).st_mode)
        finally:
            os.close(fd)

    def open_file(self, rel: str, where: str) -> IO[bytes]:
        """A regular file of the context, to read (an archive ADD unpacks)."""
        fd = self._open(rel, os.O_RDONLY | os.O_NONBLOCK, f"{where}: {rel}")
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ConfigError(f"{where}: {rel}: not a regular file")
        return os.fdopen(fd, "rb")

    def add(self, tar: tarfile.TarFile, rel: str, dest: str, owner: Owner, budget: Budget, where: str) -> None:
        """Put the context path `rel` in `tar` at `dest` (an absolute box path: the file's, or the dir its
        contents go into)."""
        fd = self._open(rel, os.O_PATH, f"{where}: {rel}")
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                self._add_tree(tar, fd, rel, dest, owner, budget, where)
            else:
                self._add_entry(tar, fd, st, rel, dest, owner, budget, where)
        finally:
            os.close(fd)

    def _add_tree(self, tar: tarfile.TarFile, top: int, rel: str, dest: str, owner: Owner, budget: Budget,
                  where: str) -> None:
        dir_fd = os.open(".", fdpath.DIR, dir_fd=top)
        stack = [(dir_fd, "" if rel == "." else rel + "/", dest.rstrip("/"), iter(fdpath.names(dir_fd)))]
        try:
            while stack:
                fd, prefix, into, names = stack[-1]
                name = next(names, None)
                if name is None:
                    os.close(stack.pop()[0])
                    continue
                path = prefix + name
                excluded = self.ignore.excluded(path) or (not prefix and name in IGNORE_FILES)
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    if excluded and not self.ignore.exceptions:
                        continue  # (with a `!` pattern, what it takes back below is looked for)
                    if len(stack) >= MAX_DEPTH:
                        raise ConfigError(f"{where}: {path}: directories nested deeper than {MAX_DEPTH}")
                    sub = os.open(name, fdpath.DIR, dir_fd=fd)
                    stack.append((sub, path + "/", f"{into}/{name}", iter(fdpath.names(sub))))
                    if not excluded:
                        self._add_entry(tar, sub, os.fstat(sub), path, f"{into}/{name}", owner, budget, where)
                elif excluded:
                    continue
                else:
                    entry = os.open(name, fdpath.PATH, dir_fd=fd)
                    try:
                        self._add_entry(tar, entry, os.fstat(entry), path, f"{into}/{name}", owner, budget, where)
                    finally:
                        os.close(entry)
        finally:
            for fd, *_ in stack:
                os.close(fd)

    def _add_entry(self, tar: tarfile.TarFile, fd: int, st: os.stat_result, rel: str, dest: str, owner: Owner,
                   budget: Budget, where: str) -> None:
        info = tarfile.TarInfo(dest.lstrip("/"))
        info.uid, info.gid, info.mtime = owner.uid, owner.gid, int(st.st_mtime)
        info.mode = owner.mode if owner.mode is not None else stat.S_IMODE(st.st_mode)
        short = budget.take(st.st_size if stat.S_ISREG(st.st_mode) else 0, 1)
        if short is not None:
            raise ConfigError(f"{where}: the copy holds more {short} than a build step may ({budget.bytes} bytes, "
                              f"{budget.entries} entries)")
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        elif stat.S_ISLNK(st.st_mode):
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink("", dir_fd=fd)
            tar.addfile(info)
        elif stat.S_ISREG(st.st_mode):
            data = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                with os.fdopen(data, "rb", closefd=False) as f:
                    info.size = os.fstat(data).st_size
                    tar.addfile(info, f)
            finally:
                os.close(data)
        else:
            raise ConfigError(f"{where}: {rel} is a {_kind(st.st_mode)}: only files, directories and links are "
                              "copied from the context")


def _kind(mode: int) -> str:
    return "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device"


def _inside(src: str, where: str) -> str:
    """A source as a context path: relative, normalized, not leaving the context by `..`."""
    rel = os.path.normpath(src.lstrip("/")) if src.strip("/") else "."
    if rel == ".." or rel.startswith("../"):
        raise ConfigError(f"{where}: {src} is outside the context")
    return rel
