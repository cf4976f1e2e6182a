"""Test plumbing for fuse_overlay: a worker inside a user+mount namespace.

Unprivileged tests cannot mount kernel overlayfs or a FUSE fd on the host,
so a worker process unshares a user namespace (host uid -> 0, and the
subordinate range -> 1..65536 when newuidmap allows it) plus a mount
namespace, and runs filesystem calls sent to it.  It mounts kernel
overlayfs there, and mounts /dev/fuse the way the sandbox will, handing
the descriptor back over SCM_RIGHTS to a daemon started outside.

Run as ``python overlay_helpers.py worker FD`` for the worker side.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pickle
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sandbox.box.userns import detect

PY = sys.executable
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_NOSUID = 2
MS_NODEV = 4
MNT_DETACH = 2
_IDS = detect("auto")
"""The test user's own subordinate ranges (useradd gives each user a different one)."""
SUBID_BASE, SUBID_COUNT = _IDS.subuid or (100000, 65536)
SUBGID_BASE, SUBGID_COUNT = _IDS.subgid or (100000, 65536)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


# -- framing ---------------------------------------------------------------


def _send(stream: Any, obj: Any) -> None:
    data = pickle.dumps(obj)
    stream.write(struct.pack("!I", len(data)) + data)
    stream.flush()


def _recv(stream: Any) -> Any:
    head = stream.read(4)
    if len(head) < 4:
        raise EOFError("worker went away")
    (n,) = struct.unpack("!I", head)
    return pickle.loads(stream.read(n))


# -- worker side -----------------------------------------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str, target: str, fstype: str, flags: int, data: str | None) -> None:
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode(), ctypes.c_ulong(flags),
                       data.encode() if data is not None else None), f"mount {fstype} on {target}")


def stat_dict(st: os.stat_result) -> dict[str, int]:
    return {k: getattr(st, k) for k in ("st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid",
                                         "st_size", "st_rdev", "st_mtime_ns", "st_atime_ns")}


def _tree(root: str, with_xattrs: bool = True) -> dict[str, Any]:
    """Everything a user could observe of a tree, minus times and inode numbers."""
    out: dict[str, Any] = {}
    inos: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            info: dict[str, Any] = {"mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid}
            if stat.S_ISREG(st.st_mode):
                info["size"] = st.st_size
                info["nlink"] = st.st_nlink
                with open(full, "rb") as f:
                    info["data"] = f.read()
                inos.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                info["target"] = os.readlink(full)
            elif not stat.S_ISDIR(st.st_mode):
                info["rdev"] = st.st_rdev
            if with_xattrs and (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                info["xattrs"] = {n: os.getxattr(full, n) for n in sorted(os.listxattr(full))}
            out[rel] = info
    out["<links>"] = sorted(sorted(v) for v in inos.values() if len(v) > 1)
    return out


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write(path: str, data: bytes, append: bool = False) -> int:
    with open(path, "ab" if append else "wb") as f:
        return f.write(data)


def _mount_fuse(sock: socket.socket, target: str, extra: str = "") -> None:
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    try:
        opts = f"fd={fd},rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other{extra}"
        _mount("sbx-overlayfs", target, "fuse.sbx-overlayfs", MS_NOSUID | MS_NODEV, opts)
        sock.sendmsg([b"F"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])
    finally:
        os.close(fd)


def _scan_while_changing(path: str, after: int, remove: list[str], add: list[str]) -> list[str]:
    """List PATH with one readdir stream, removing and adding names once AFTER were read."""
    seen = []
    with os.scandir(path) as it:
        for entry in it:
            seen.append(entry.name)
            if len(seen) == after:
                for name in remove:
                    os.unlink(os.path.join(path, name))
                for name in add:
                    os.close(os.open(os.path.join(path, name), os.O_CREAT | os.O_WRONLY, 0o644))
    return seen


def _run(argv: list[str], cwd: str | None = None) -> tuple[int, bytes, bytes]:
    p = subprocess.run(argv, cwd=cwd, capture_output=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def worker_main(sock_fd: int) -> None:
    sock = socket.socket(fileno=sock_fd)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare")
    _send(out, os.getpid())
    _recv(inp)
    _check(_libc.mount(b"none", b"/", None, ctypes.c_ulong(MS_REC | MS_PRIVATE), None), "make / private")
    extra = {
        "read": _read, "write": _write, "tree": _tree, "run": _run, "sleep": time.sleep,
        "mount": _mount, "mount_fuse": lambda target, extra="": _mount_fuse(sock, target, extra),
        "umount": lambda target: _check(_libc.umount2(target.encode(), MNT_DETACH), f"umount {target}"),
        "listdir": lambda p: sorted(os.listdir(p)),
        "stat": lambda p: stat_dict(os.stat(p)), "lstat": lambda p: stat_dict(os.lstat(p)),
        "fstat": lambda fd: stat_dict(os.fstat(fd)),
        "statvfs": lambda p: tuple(os.statvfs(p)),
        "copytree": lambda a, b: shutil.copytree(a, b, symlinks=True) and None,
        "rmtree": shutil.rmtree, "scan_while_changing": _scan_while_changing,
    }
    while True:
        try:
            name, args, kwargs = _recv(inp)
        except EOFError:
            return
        fn = extra.get(name) or getattr(os, name)
        try:
            result: Any = ("ok", fn(*args, **kwargs))
        except OSError as exc:
            result = ("err", exc.errno, str(exc))
        except Exception as exc:  # reported to the test, which fails loudly
            result = ("exc", repr(exc))
        _send(out, result)


# -- test side -------------------------------------------------------------


class NsWorker:
    """Client for a worker process in its own user+mount namespace."""

    def __init__(self) -> None:
        self.sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.proc = subprocess.Popen([PY, __file__, "worker", str(child.fileno())], pass_fds=[child.fileno()],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=child_env())
        child.close()
        pid = _recv(self.proc.stdout)
        self.full_map = _map_ids(pid)
        _send(self.proc.stdin, "go")

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        _send(self.proc.stdin, (name, args, kwargs))
        reply = _recv(self.proc.stdout)
        if reply[0] == "ok":
            return reply[1]
        if reply[0] == "err":
            raise OSError(reply[1], reply[2])
        raise RuntimeError(f"worker failed in {name}: {reply[1]}")

    def errno_of(self, name: str, *args: Any, **kwargs: Any) -> int:
        try:
            self.call(name, *args, **kwargs)
        except OSError as exc:
            return exc.errno or -1
        return 0

    def try_call(self, name: str, *args: Any, **kwargs: Any) -> tuple[str, Any]:
        try:
            return ("ok", self.call(name, *args, **kwargs))
        except OSError as exc:
            return ("errno", exc.errno)

    def mount_overlay(self, lowers: list[Path], upper: Path, work: Path, target: Path) -> None:
        data = f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={work},userxattr"
        self.call("mount", "overlay", str(target), "overlay", 0, data)

    def fuse_fd(self, target: Path, extra: str = "") -> int:
        """Mount /dev/fuse at TARGET inside the namespace and return our copy of its fd."""
        self.call("mount_fuse", str(target), extra)
        _msg, anc, _flags, _addr = self.sock.recvmsg(1, socket.CMSG_SPACE(4))
        return struct.unpack("i", anc[0][2][:4])[0]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.sock.close()


def _map_ids(pid: int) -> bool:
    """Give the worker a full id range if newuidmap allows, else just itself as root."""
    uid, gid = os.getuid(), os.getgid()
    full = (
        subprocess.run(["newuidmap", str(pid), "0", str(uid), "1", "1", str(SUBID_BASE), str(SUBID_COUNT)],
                       capture_output=True).returncode == 0
        and subprocess.run(["newgidmap", str(pid), "0", str(gid), "1", "1", str(SUBGID_BASE), str(SUBGID_COUNT)],
                           capture_output=True).returncode == 0
    )
    if not full:
        Path(f"/proc/{pid}/uid_map").write_text(f"0 {uid} 1\n")
        Path(f"/proc/{pid}/setgroups").write_text("deny\n")
        Path(f"/proc/{pid}/gid_map").write_text(f"0 {gid} 1\n")
    return full


def id_mapping() -> str:
    """The uidmapping=/gidmapping= value matching the worker's namespace."""
    return f"0:{os.getuid()}:1:1:{SUBID_BASE}:{SUBID_COUNT}"


def gid_mapping() -> str:
    return f"0:{os.getgid()}:1:1:{SUBGID_BASE}:{SUBGID_COUNT}"


# The daemon as it runs when pyfuse3 was loaded before fuse_overlay, so the libfuse shim
# is not in place: the kernel sends open and opendir requests.
WITH_OPENS = ["-c", "import sys, pyfuse3; from fuse_overlay.cli import main; sys.exit(main(sys.argv[1:]))"]


class Daemon:
    """An sbx-overlayfs process serving a FUSE fd mounted by the worker."""

    def __init__(self, fd: int, lowers: list[Path], upper: Path | None, work: Path | None,
                 extra: str = "", opens: bool = False) -> None:
        opts = f"lowerdir={':'.join(map(str, lowers))}"
        if upper is not None:
            opts += f",upperdir={upper},workdir={work}"
        opts += f",uidmapping={id_mapping()},gidmapping={gid_mapping()}{extra}"
        entry = WITH_OPENS if opens else ["-m", "fuse_overlay.cli"]
        self.proc = subprocess.Popen([PY, *entry, "-f", "-o", opts, f"/dev/fd/{fd}"],
                                     pass_fds=[fd], env=child_env(), stderr=subprocess.PIPE)
        os.close(fd)

    def stop(self, timeout: float = 10) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait()


def make_layers(base: Path, names: list[str]) -> list[Path]:
    paths = []
    for n in names:
        p = base / n
        p.mkdir(parents=True, exist_ok=True)
        paths.append(p)
    return paths


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    worker_main(int(sys.argv[2]))
