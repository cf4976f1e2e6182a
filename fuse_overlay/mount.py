"""Starting and running a FUSE session for a :class:`UnionFS`.

pyfuse3 holds one session per process, so a process serves one mount.
Two ways in:

* ``mount(fs, "/some/dir")`` mounts at a path (via fusermount3 when
  unprivileged) with ``auto_unmount``, so the mount disappears when this
  process dies;
* ``mount(fs, fd)`` serves a /dev/fuse descriptor that someone else
  already mounted (libfuse accepts ``/dev/fd/N`` as the mountpoint).  The
  mounter must pass ``default_permissions``: the daemon does no permission
  checks of its own.
"""

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


class MountError(OverlayError):
    """libfuse could not start the session."""


def mount(fs: UnionFS, target: str | os.PathLike[str] | int, *, allow_other: bool = False,
          fsname: str = FS_NAME, debug: bool = False) -> None:
    options = {f"fsname={fsname}", f"subtype={FS_NAME}", "default_permissions"}
    if isinstance(target, int):
        mountpoint = f"/dev/fd/{target}"
    else:
        mountpoint = os.fspath(target)
        options.add("auto_unmount")
        if allow_other:
            options.add("allow_other")
    if debug:
        options.add("debug")
    try:
        pyfuse3.init(fs, mountpoint, options)
    except RuntimeError as exc:
        raise MountError(f"cannot mount on {mountpoint}: {exc}") from None
    if not isinstance(target, int):
        _unmount_when_gone(os.path.abspath(mountpoint))


def _unmount_when_gone(mountpoint: str) -> None:
    """Lazily unmount MOUNTPOINT once this process dies, however it dies.

    fusermount3's own auto_unmount gives up when it cannot open the dead
    mount, which is the case without allow_other; a watchdog blocked on a
    pipe only this process holds does not depend on that.
    """
    r, _w = os.pipe()
    subprocess.Popen(["sh", "-c", 'read _; exec fusermount3 -u -z -- "$1"', "sbx-overlayfs-watchdog", mountpoint],
                     stdin=r, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    os.close(r)


async def _stop_on(signals: AsyncIterator[int]) -> None:
    async for _ in signals:
        pyfuse3.terminate()
        return


async def serve(start: Callable[[], None], *, unmount: bool) -> None:
    """Mount with `start`, then answer requests until the mount goes away or a signal asks us to stop.

    The signal receiver exists before the mount: a SIGTERM arriving right
    after it must unmount cleanly, not kill the daemon with the mount in place.
    """
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        start()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on, signals)
                await pyfuse3.main()
                nursery.cancel_scope.cancel()
        finally:
            pyfuse3.close(unmount=unmount)
            log.debug("requests answered by the shim without Python: %d", fast.answered())


async def serve_fd(fs: UnionFS, fd: int) -> None:
    """Serve an already-mounted /dev/fuse descriptor (the sandbox's way in)."""
    await serve(lambda: mount(fs, fd), unmount=False)


async def serve_path(fs: UnionFS, mountpoint: str | os.PathLike[str], *, allow_other: bool = False) -> None:
    await serve(lambda: mount(fs, mountpoint, allow_other=allow_other), unmount=True)
