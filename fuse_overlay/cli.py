"""``sbx-overlayfs``: a drop-in for fuse-overlayfs's command line.

Three callers, one grammar: people and podman's ``mount_program`` run
``sbx-overlayfs -o OPTS MOUNTPOINT``; mount(8) (``mount -t
fuse.sbx-overlayfs``, fstab) runs it through mount.fuse3 as
``sbx-overlayfs SOURCE MOUNTPOINT -o rw,OPTS,dev,suid``.  The SOURCE is
ignored, as fuse-overlayfs ignores it.

Without ``-f`` the process forks, the child mounts, and the parent exits
only once the mount is ready (or failed), so scripts may use the
mountpoint as soon as the command returns.
"""

import logging
import os
import re
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import trio

from .mount import mount, serve
from .errors import OverlayError
from .operations import UnionFS
from .options import parse_options

PROG = "sbx-overlayfs"
USAGE = f"usage: {PROG} [-f] [-d] -o lowerdir=DIR[:DIR...][,upperdir=DIR,workdir=DIR][,...] [SOURCE] MOUNTPOINT"
_FD_TARGET = re.compile(r"^/dev/fd/(\d+)$")


class UsageError(OverlayError):
    pass


def _parse_argv(argv: Sequence[str]) -> tuple[list[str], str, bool, bool]:
    opts: list[str] = []
    positional: list[str] = []
    foreground = debug = False
    args = iter(argv)
    for arg in args:
        if arg == "--":
            positional.extend(args)
        elif arg == "-o":
            value = next(args, None)
            if value is None:
                raise UsageError("option -o needs a value")
            opts.append(value)
        elif arg.startswith("-o"):
            opts.append(arg[2:])
        elif arg == "-f":
            foreground = True
        elif arg == "-d":
            foreground = debug = True
        elif arg in ("-s",):
            continue
        elif arg.startswith("-") and arg != "-":
            raise UsageError(f"unknown argument {arg!r}")
        else:
            positional.append(arg)
    if not positional:
        raise UsageError("missing MOUNTPOINT")
    if len(positional) > 2:
        raise UsageError(f"expected [SOURCE] MOUNTPOINT, got {len(positional)} arguments")
    return opts, positional[-1], foreground, debug


def _trace(exc: BaseException, tb: TracebackType | None) -> str:
    """A traceback naming each file and line without reading the file.

    The daemon may be serving the very files (``lowerdir=/usr`` mounted on
    /usr holds the standard library): reading one to quote a line, from the
    one thread that must answer that read, would wait forever.
    """
    frames = "".join(f'  File "{frame.f_code.co_filename}", line {line}, in {frame.f_code.co_name}\n'
                     for frame, line in traceback.walk_tb(tb))
    message = str(exc)
    return f"Traceback (most recent call last):\n{frames}{type(exc).__qualname__}{': ' + message if message else ''}\n"


class _Formatter(logging.Formatter):
    def formatException(self, ei: Any) -> str:
        return _trace(ei[1], ei[2]).rstrip("\n") if ei[1] is not None else ""


def _report_without_reading_sources(level: int) -> None:
    """Log, report a crash and show warnings the way `_trace` does: without opening source files."""
    handler = logging.StreamHandler()
    handler.setFormatter(_Formatter(f"{PROG}: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    sys.excepthook = lambda _type, exc, tb: sys.stderr.write(_trace(exc, tb))
    show = warnings.showwarning
    warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: show(
        message, category, filename, lineno, file, "" if line is None else line)


def _target(mountpoint: str) -> str | int:
    m = _FD_TARGET.match(mountpoint)
    return int(m.group(1)) if m else mountpoint


def _run(target: str | int, start: Callable[[], None]) -> None:
    """Mount (with `start`) and serve; the mount happens once signals are already handled."""
    trio.run(lambda: serve(start, unmount=not isinstance(target, int)))


def _daemonize(fs: UnionFS, target: str | int, allow_other: bool | None, read_only: bool) -> int:
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        with os.fdopen(r, "rb") as pipe:
            status = pipe.read()
        if status == b"ok":
            return 0
        print(f"{PROG}: {status.decode(errors='replace') or 'daemon died while mounting'}", file=sys.stderr)
        return 1
    os.close(r)
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)

    def start() -> None:
        try:
            mount(fs, target, allow_other=allow_other, read_only=read_only)
        except OverlayError as exc:
            os.write(w, str(exc).encode())
            os._exit(1)
        os.write(w, b"ok")
        os.close(w)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.chdir("/")

    _run(target, start)
    os._exit(0)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    if any(a in ("-V", "--version") for a in argv):
        from importlib.metadata import version  # (only here: it costs every daemon's start some 15 ms)
        print(f"{PROG} {version('sbx')}")
        return 0
    try:
        opts, mountpoint, foreground, debug = _parse_argv(argv)
        options = parse_options(opts)
        target = _target(mountpoint)
        if not isinstance(target, int) and not os.path.isdir(mountpoint):
            raise UsageError(f"mountpoint {mountpoint}: not a directory")
        fs = UnionFS(options.lowers, options.upper, options.work, quota_bytes=options.quota_bytes,
                     quota_inodes=options.quota_inodes, uid_map=options.uid_map(), gid_map=options.gid_map(),
                     whiteout=options.whiteout, redirect_dir=options.redirect_dir)
    except OverlayError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    _report_without_reading_sources(logging.DEBUG if (debug or options.debug) else logging.WARNING)
    if not foreground:
        return _daemonize(fs, target, options.allow_other, options.read_only)
    try:
        _run(target, lambda: mount(fs, target, allow_other=options.allow_other, read_only=options.read_only,
                                   debug=debug))
    except OverlayError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
