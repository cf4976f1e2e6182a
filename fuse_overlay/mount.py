"""Starting and running a FUSE session for a :class:`UnionFS`.

pyfuse3 holds one session per process, so a process serves one mount.
Two ways in:

* ``mount(fs, "/some/dir")`` mounts at a path (via fusermount3) with
  ``auto_unmount``, so the mount disappears when this process dies;
* ``mount(fs, fd)`` serves a /dev/fuse descriptor that someone else
  already mounted (libfuse accepts ``/dev/fd/N`` as the mountpoint).  The
  mounter must pass ``default_permissions``: the daemon does no permission
  checks of its own.

A path mount may cover what the daemon itself reads (``lowerdir=/usr`` on
``/usr``).  Until the session serves, any path walk into the mountpoint
sleeps in the kernel waiting for an answer only this process can give, so
everything that needs the filesystem happens before the mount: layers at
or below the mountpoint are opened first (`UnionFS.pin_layers`) and the
watchdog is started first; after ``pyfuse3.init`` nothing execs or opens a
path until ``pyfuse3.main`` runs.
"""

import gc
import logging
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable

import trio

from .errors import OverlayError
from .libfuse import fast, pyfuse3
from .operations import UnionFS

log = logging.getLogger(__name__)

FS_NAME = "sbx-overlayfs"
YOUNG_OBJECTS = 20_000
"""How many new objects the daemon makes between collections of the youngest generation (CPython's default is
700).  A cold walk makes a node, a stat result and attributes per entry, nearly all of which live as long as
the mount, and at 700 the collector ran every few directories, its older generations over an ever larger tree:
a quarter of the Python time of listing /usr.  Cycles of garbage (few: the tree's links point up, and a removed
node leaves it) wait for at most this many objects more."""


class MountError(OverlayError):
    """libfuse could not start the session."""


def mount(fs: UnionFS, target: str | os.PathLike[str] | int, *, allow_other: bool | None = None,
          read_only: bool = False, fsname: str = FS_NAME, debug: bool = False) -> None:
    """Mount `fs` at TARGET.  At a path, ``allow_other`` defaults to whether this process is
    root (of its user namespace), as fuse-overlayfs does, so the namespace's other ids can use it."""
    options = {f"fsname={fsname}", f"subtype={FS_NAME}", "default_permissions"}
    if read_only:
        options.add("ro")
    if debug:
        options.add("debug")
    watchdog = None
    if isinstance(target, int):
        mountpoint = f"/dev/fd/{target}"
    else:
        mountpoint = os.path.abspath(os.fspath(target))
        if allow_other is None:
            allow_other = os.geteuid() == 0
        options.add("auto_unmount")
        if allow_other:
            options.add("allow_other")
        fs.pin_layers(mountpoint)
        if not allow_other:
            watchdog = _Watchdog(mountpoint)
    try:
        pyfuse3.init(fs, mountpoint, options)
    except RuntimeError as exc:
        if watchdog is not None:
            watchdog.cancel()
        raise MountError(f"cannot mount on {mountpoint}: {exc}") from None
    if watchdog is not None:
        watchdog.arm()


class _Watchdog:
    """Lazily unmounts MOUNTPOINT once this process dies, however it dies.

    fusermount3's own auto_unmount gives up when it cannot open the dead
    mount, which is the case without allow_other; a shell blocked on a pipe
    only this process holds does not depend on that.  It is started before
    the mount (its exec must not walk into a mount nobody serves yet) and
    only unmounts once told the mount exists, so a failed mount leaves
    whatever was mounted there alone.
    """

    def __init__(self, mountpoint: str) -> None:
        r, self._w = os.pipe()
        script = 'read m; [ "$m" = mounted ] || exit 0; read _; exec fusermount3 -u -z -- "$1"'
        subprocess.Popen(["sh", "-c", script, "sbx-overlayfs-watchdog", mountpoint], stdin=r,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        os.close(r)

    def arm(self) -> None:
        """The mount exists: unmount it when our end of the pipe closes (kept open until we exit)."""
        os.write(self._w, b"mounted\n")

    def cancel(self) -> None:
        os.close(self._w)


async def _stop_on(signals: AsyncIterator[int]) -> None:
    async for _ in signals:
        pyfuse3.terminate()
        return


async def serve(start: Callable[[], None], *, unmount: bool) -> None:
    """Mount with `start`, then answer requests until the mount goes away or a signal asks us to stop.

    The signal receiver exists before the mount: a SIGTERM arriving right
    after it must unmount cleanly, not kill the daemon with the mount in place.
    """
    gc.freeze()  # what was imported and built before serving lives as long as the daemon: never walked again
    gc.set_threshold(YOUNG_OBJECTS, *gc.get_threshold()[1:])
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        start()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on, signals)
                await pyfuse3.main()
                nursery.cancel_scope.cancel()
        finally:
            pyfuse3.close(unmount=unmount)
            log.debug("requests answered by the shim without Python: %d (%d of them readdirs past a listing's end); "
                      "lower files it opened: %d", *fast.counts())


async def serve_fd(fs: UnionFS, fd: int) -> None:
    """Serve an already-mounted /dev/fuse descriptor (the sandbox's way in)."""
    await serve(lambda: mount(fs, fd), unmount=False)


async def serve_path(fs: UnionFS, mountpoint: str | os.PathLike[str], *, allow_other: bool | None = None) -> None:
    await serve(lambda: mount(fs, mountpoint, allow_other=allow_other), unmount=True)
