"""The box's root filesystem: what is mounted where, and how it is built.

`Layout` is checked in the supervisor (so bad input gets a clear message
before anything is forked); `build_root` runs in box init, inside the new
user and mount namespaces, and ends with `pivot_root` and a lazy unmount of
the old root, so the host tree is detached from the box rather than hidden.
"""

from __future__ import annotations

import glob
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from . import syscalls as sc
from .errors import ConfigError
from .userns import IdMap

SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
"""Host directories every box sees read-only (or, with merged /usr, the symlinks to them)."""

ETC_ENTRIES = (
    "alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone",
    "nsswitch.conf", "host.conf", "gai.conf", "protocols", "services", "mime.types",
    "ssl", "ca-certificates", "ca-certificates.conf", "bash.bashrc", "profile", "inputrc",
    "python3", "python3.*", "perl", "java-*", "gcc", "fonts",
)
"""What of the host's /etc a compiler or interpreter needs; secrets (shadow, ssh, ...) stay out."""

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
PROC_READONLY = ("sys", "sysrq-trigger", "irq", "bus")
WORK_DIR = "/box"

_BASE = "/tmp"
"""Where the intermediate root is mounted; pivot_root moves it away again, so binds from /tmp still resolve."""

_NOSUID_NODEV = sc.MS_NOSUID | sc.MS_NODEV


@dataclass(frozen=True)
class Bind:
    src: str
    dst: str
    writable: bool


@dataclass(frozen=True)
class Layout:
    disk: int
    inodes: int
    binds: tuple[Bind, ...] = ()
    tmpfs: tuple[str, ...] = ()
    lowers: tuple[str, ...] = ()
    """With lowers, the root is their union (top first) over `upper`, not the host's system dirs."""
    upper: str | None = None
    """Host dir keeping what the program wrote; None: a tmpfs inside the box, capped by `disk`."""
    workdir: str | None = None
    """The union's scratch dir for `upper`, on the same filesystem (made and removed by the supervisor)."""
    fs: str = "kernel"
    """The union's implementation: "kernel" (overlayfs) or "fuse" (sbx-overlayfs, served from outside)."""
    hostname: str = "sbx"
    loopback: bool = True


def parse_bind(spec: str, writable: bool) -> Bind:
    """`SRC[:DST]` with SRC on the host (must exist) and DST absolute in the box (default: SRC)."""
    flag = "--bind" if writable else "--ro-bind"
    src, sep, dst = spec.partition(":")
    if not src:
        raise ConfigError(f"{flag} {spec!r}: empty source")
    real = os.path.realpath(src)
    if not os.path.exists(real):
        raise ConfigError(f"{flag} {src}: No such file or directory")
    return Bind(real, check_box_path(dst if sep else os.path.abspath(src), flag), writable)


def parse_lower(path: str) -> str:
    return _layer_dir(path, "--lower", os.R_OK | os.X_OK, "not readable")


def parse_upper(path: str) -> str:
    return _layer_dir(path, "--upper", os.W_OK | os.X_OK, "not writable")


def _layer_dir(path: str, flag: str, access: int, refusal: str) -> str:
    """A host dir for the union: real path, accessible, and spellable in overlay's option string."""
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        raise ConfigError(f"{flag} {path}: not a directory")
    if not os.access(real, access):
        raise ConfigError(f"{flag} {path}: {refusal}")
    if any(c in real for c in ":,"):
        raise ConfigError(f"{flag} {path}: overlay paths cannot contain ':' or ','")
    return real


def check_box_path(path: str, flag: str) -> str:
    if not path.startswith("/"):
        raise ConfigError(f"{flag} {path}: destination must be an absolute path in the box")
    norm = os.path.normpath(path)
    if norm == "/" or norm.split("/")[1] in ("proc", "dev"):
        raise ConfigError(f"{flag} {path}: cannot mount over {norm}")
    return norm


def build_root(layout: Layout, ids: IdMap, hand_over_fuse: Callable[[int], None]) -> None:
    """Build the box tree under an intermediate root and switch to it. Runs as box init (pid 1)."""
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    sc.mount("tmpfs", _BASE, "tmpfs", _NOSUID_NODEV, "mode=0755")
    os.chdir(_BASE)
    os.mkdir("oldroot")
    sc.pivot_root(".", "oldroot")
    os.chdir("/")
    for d in ("new", "rw"):
        os.mkdir(f"/{d}", 0o755)
    sc.mount("tmpfs", "/rw", "tmpfs", _NOSUID_NODEV, f"mode=0755,size={layout.disk},nr_inodes={layout.inodes}")
    if layout.lowers and layout.fs == "fuse":
        _mount_fuse(hand_over_fuse)
    elif layout.lowers:
        _mount_union(layout)
    else:
        sc.mount("tmpfs", "/new", "tmpfs", _NOSUID_NODEV, "mode=0755")
        _mount_system()
        _mount_etc(layout, ids)
    _mount_writable(ids, union=bool(layout.lowers))
    _mount_dev()
    _mount_proc()
    for bind in layout.binds:
        _bind(f"/oldroot{bind.src}", _mountpoint(bind.dst, os.path.isdir(f"/oldroot{bind.src}")), bind.writable)
    for dst in layout.tmpfs:
        target = _mountpoint(dst, True)
        sc.mount("tmpfs", target, "tmpfs", _NOSUID_NODEV, f"mode=0777,size={layout.disk},nr_inodes={layout.inodes}")
    if not layout.lowers:
        sc.mount_setattr("/new", sc.MOUNT_ATTR_RDONLY, recursive=False)
    os.chdir("/new")
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")


def _bind(src: str, dst: str, writable: bool, *, devices: bool = False) -> None:
    sc.mount(src, dst, None, sc.MS_BIND | sc.MS_REC)
    attrs = sc.MOUNT_ATTR_NOSUID | (0 if devices else sc.MOUNT_ATTR_NODEV) | (0 if writable else sc.MOUNT_ATTR_RDONLY)
    sc.mount_setattr(dst, attrs, recursive=True)


def _mountpoint(box_path: str, directory: bool) -> str:
    """Create (if needed) the mount point for `box_path` in the new root, refusing to follow symlinks.

    A symlink on the way could point anywhere in the intermediate root, which
    still contains the host tree under /oldroot.
    """
    path = "/new"
    parts = box_path.strip("/").split("/")
    for i, part in enumerate(parts):
        path = f"{path}/{part}"
        last = i == len(parts) - 1
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            try:
                if last and not directory:
                    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
                else:
                    os.mkdir(path, 0o755)
            except OSError as e:
                raise OSError(e.errno, f"{box_path}: cannot create mount point: {os.strerror(e.errno)}") from None
            continue
        if stat.S_ISLNK(st.st_mode):
            raise OSError(f"{box_path}: mount point passes through the symlink /{'/'.join(parts[: i + 1])}")
    return path


def _mount_union(layout: Layout) -> None:
    """Kernel overlayfs, mountable inside a user namespace with `userxattr` (Linux >= 5.11)."""
    if layout.upper is not None:
        assert layout.workdir is not None
        upper, work = f"/oldroot{layout.upper}", f"/oldroot{layout.workdir}"
    else:
        upper, work = "/rw/upper", "/rw/work"
        os.mkdir(upper, 0o755)
        os.mkdir(work, 0o700)
    lowers = ":".join(f"/oldroot{d}" for d in layout.lowers)
    sc.mount("overlay", "/new", "overlay", _NOSUID_NODEV,
             f"lowerdir={lowers},upperdir={upper},workdir={work},userxattr")


def _mount_fuse(hand_over: Callable[[int], None]) -> None:
    """Mount the FUSE union as the new root; the daemon serving it runs outside the box.

    Mounting FUSE needs only the user namespace that owns this mount
    namespace.  `hand_over` gives the connection's fd to the supervisor, which
    starts the daemon on it (`sbx-overlayfs ... /dev/fd/N`); the first access
    to /new waits until the daemon has answered the kernel's INIT.
    """
    fd = os.open("/oldroot/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    try:
        # user_id/group_id name the mounter in this user namespace's terms: 0 in the range
        # mapping, the caller's own ids in the single one (where 0 is unmapped: EINVAL).
        sc.mount("sbx-overlayfs", "/new", "fuse.sbx-overlayfs", _NOSUID_NODEV,
                 f"fd={fd},rootmode=40000,user_id={os.getuid()},group_id={os.getgid()},"
                 "default_permissions,allow_other")
        hand_over(fd)
    finally:
        os.close(fd)


def _mkdir(path: str, mode: int = 0o755) -> None:
    """A mount point that a root filesystem image may already have."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass


def _mount_system() -> None:
    for name in SYSTEM_DIRS:
        host = f"/oldroot/{name}"
        if os.path.islink(host):
            os.symlink(os.readlink(host), f"/new/{name}")
        elif os.path.isdir(host):
            os.mkdir(f"/new/{name}", 0o755)
            _bind(host, f"/new/{name}", False)


def _mount_etc(layout: Layout, ids: IdMap) -> None:
    os.mkdir("/new/etc", 0o755)
    for pattern in ETC_ENTRIES:
        for host in sorted(glob.glob(f"/oldroot/etc/{pattern}")):
            box = "/new/etc/" + os.path.basename(host)
            if os.path.islink(host):
                os.symlink(os.readlink(host), box)
            elif os.path.isdir(host):
                os.mkdir(box, 0o755)
                _bind(host, box, False)
            elif os.path.isfile(host):
                os.close(os.open(box, os.O_CREAT | os.O_WRONLY, 0o644))
                _bind(host, box, False)
    files = {
        "passwd": _passwd(ids),
        "group": _group(ids),
        "hostname": f"{layout.hostname}\n".encode(),
        "hosts": f"127.0.0.1\tlocalhost {layout.hostname}\n::1\tlocalhost ip6-localhost\n".encode(),
    }
    for name, data in files.items():
        with open(f"/new/etc/{name}", "wb") as f:
            f.write(data)


def _passwd(ids: IdMap) -> bytes:
    lines = ["root:x:0:0:root:/root:/bin/sh"]
    if ids.program_uid != 0:
        lines.append(f"sbx:x:{ids.program_uid}:{ids.program_gid}:sandboxed program:{WORK_DIR}:/bin/sh")
    lines.append("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin")
    return ("\n".join(lines) + "\n").encode()


def _group(ids: IdMap) -> bytes:
    lines = ["root:x:0:", "tty:x:5:"]
    if ids.program_gid != 0:
        lines.append(f"sbx:x:{ids.program_gid}:")
    lines.append("nogroup:x:65534:")
    return ("\n".join(lines) + "\n").encode()


def _mount_dev() -> None:
    _mkdir("/new/dev")
    sc.mount("tmpfs", "/new/dev", "tmpfs", sc.MS_NOSUID | sc.MS_NOEXEC, "mode=0755")
    for name in DEVICES:
        node = f"/new/dev/{name}"
        os.close(os.open(node, os.O_CREAT | os.O_WRONLY, 0o666))
        _bind(f"/oldroot/dev/{name}", node, True, devices=True)
    os.mkdir("/new/dev/pts", 0o755)
    sc.mount("devpts", "/new/dev/pts", "devpts", sc.MS_NOSUID | sc.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620")
    os.symlink("pts/ptmx", "/new/dev/ptmx")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"/new/dev/{name}")
    os.mkdir("/new/dev/shm")
    _bind("/rw/shm", "/new/dev/shm", True)
    sc.mount_setattr("/new/dev", sc.MOUNT_ATTR_RDONLY, recursive=False)


def _mount_proc() -> None:
    """A procfs of the box's own pid namespace, with the kernel-tuning parts read-only."""
    _mkdir("/new/proc", 0o555)
    sc.mount("proc", "/new/proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    for name in PROC_READONLY:
        path = f"/new/proc/{name}"
        if os.path.exists(path):
            _bind(path, path, False)


def _mount_writable(ids: IdMap, union: bool) -> None:
    """/box, /tmp and /dev/shm share one size-limited tmpfs, so --disk caps them together.

    Over a union root, /box is the union's own directory instead, so that an
    `upper` keeps what the program wrote there.
    """
    for d in ("box", "tmp", "shm"):
        os.mkdir(f"/rw/{d}")
    os.chmod("/rw/tmp", 0o1777)
    os.chmod("/rw/shm", 0o1777)
    _mkdir(f"/new{WORK_DIR}")
    box_dir = f"/new{WORK_DIR}" if union else "/rw/box"
    os.chown(box_dir, ids.program_uid, ids.program_gid)
    os.chmod(box_dir, 0o755)
    if not union:
        _bind("/rw/box", f"/new{WORK_DIR}", True)
    _mkdir("/new/tmp")
    _bind("/rw/tmp", "/new/tmp", True)
