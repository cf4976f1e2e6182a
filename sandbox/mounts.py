"""The box's root filesystem: what is mounted where, and how it is built.

`Layout` is checked in the supervisor (so bad input gets a clear message
before anything is forked) and made into a plan there (plan.py);
`build_root` carries the plan out in box init, inside the new user and
mount namespaces, and its pivot step ends with a lazy unmount of the old
root, so the host tree is detached from the box rather than hidden.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from . import hostpath, network, plan
from . import syscalls as sc
from .errors import ConfigError

WORK_DIR = "/box"

_BASE = "/tmp"
"""Where the intermediate root is mounted; pivot_root moves it away again, so binds from /tmp still resolve."""

_NOSUID_NODEV = sc.MS_NOSUID | sc.MS_NODEV


@dataclass(frozen=True)
class Bind:
    src: str
    dst: str
    writable: bool
    identity: tuple[int, int] | None = None
    """(st_dev, st_ino) of what `src` named when the sandbox resolved it (hostpath.py): box init binds that,
    found again without following a link, or nothing."""


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
    home: str = WORK_DIR
    """The program's working directory on the box's capped tmpfs, beside /tmp and /dev/shm (go-judge's clients
    expect /w)."""


def parse_bind(spec: str, writable: bool) -> Bind:
    """`SRC[:DST]` with SRC on the host (must exist) and DST absolute in the box (default: SRC)."""
    flag = "--bind" if writable else "--ro-bind"
    src, sep, dst = spec.partition(":")
    if not src:
        raise ConfigError(f"{flag} {spec!r}: empty source")
    return Bind(src, check_box_path(dst if sep else os.path.abspath(src), flag), writable)


def resolve_bind(bind: Bind, guard: hostpath.Guard) -> Bind:
    """The bind with `src` walked as hostpath.py says: link-free, and with the identity box init checks."""
    with hostpath.resolve(bind.src, "--bind" if bind.writable else "--ro-bind", guard) as found:
        return Bind(found.path, bind.dst, bind.writable, found.identity)


def parse_lower(path: str) -> str:
    return _layer_dir(path, "--lower", os.R_OK | os.X_OK, "not readable")


def parse_upper(path: str) -> str:
    return _layer_dir(path, "--upper", os.W_OK | os.X_OK, "not writable")


def _layer_dir(path: str, flag: str, access: int, refusal: str) -> str:
    """A host dir for the union: link-free (hostpath.py), accessible, and spellable in overlay's option string."""
    with hostpath.resolve(path, flag) as found:
        real, is_dir = found.path, stat.S_ISDIR(os.fstat(found.fd).st_mode)
    if not is_dir:
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


def build_root(steps: tuple[plan.Step, ...], hand_over_fuse: Callable[[int], None]) -> int:
    """Carry out a box's plan (plan.py) under an intermediate root, and switch to it. Runs as box init (pid 1).

    Every mount point in the new root is found or made by `_Tree` (see there), through fds only.
    Returns a writable fd of the box's `ns_last_pid`, opened before /proc/sys went read-only.
    """
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    sc.mount("tmpfs", _BASE, "tmpfs", _NOSUID_NODEV, "mode=0755")
    os.chdir(_BASE)
    os.mkdir("oldroot")
    sc.pivot_root(".", "oldroot")
    os.chdir("/")
    for d in ("new", "rw"):
        os.mkdir(f"/{d}", 0o755)
    builder = _Builder(hand_over_fuse)
    try:
        for step in steps:
            builder.do(step)
    finally:
        builder.close()
    if builder.last_pid < 0:
        raise OSError(errno.EINVAL, "the box's plan mounts no /proc")
    return builder.last_pid


class _Builder:
    """The executor of a plan's steps, in the order the plan gives: each kind of step is one branch of `do`."""

    def __init__(self, hand_over_fuse: Callable[[int], None]) -> None:
        self.hand_over_fuse = hand_over_fuse
        self.root: _Tree | None = None
        self.last_pid = -1

    def close(self) -> None:
        if self.root is not None:
            self.root.__exit__()
            self.root = None

    def tree(self) -> _Tree:
        if self.root is None:
            raise OSError(errno.EINVAL, "the box's plan has no root")
        return self.root

    @contextlib.contextmanager
    def _dir(self, box_dir: str) -> Iterator[_Tree]:
        """A directory of the new root (made if missing, never through a link) to put entries in."""
        root = self.tree()
        if not box_dir.strip("/"):
            yield root
            return
        with _Tree(root.place(box_dir).fd, replaceable=False) as tree:
            yield tree

    def _new_root(self, union: bool) -> None:
        # A union root is untrusted (its layers, an upper an earlier run wrote) and ours to rewrite (writes go to
        # the box's upper); the host's system dirs go into a fresh tmpfs that holds only what is made here.
        self.root = _Tree(os.open("/new", _PATH_FLAGS | os.O_DIRECTORY), replaceable=union)

    def do(self, step: plan.Step) -> None:
        if isinstance(step, plan.Scratch):
            sc.mount("tmpfs", "/rw", "tmpfs", _NOSUID_NODEV, f"mode=0755,size={step.size},nr_inodes={step.inodes}")
        elif isinstance(step, plan.TmpfsRoot):
            sc.mount("tmpfs", "/new", "tmpfs", _NOSUID_NODEV, "mode=0755")
            self._new_root(False)
        elif isinstance(step, plan.KernelUnion):
            _mount_union(step)
            self._new_root(True)
        elif isinstance(step, plan.FuseUnion):
            _mount_fuse(self.hand_over_fuse)
            self._new_root(True)
        elif isinstance(step, plan.Mirror):
            with self._dir(step.into) as into:
                _mirror(into, f"/oldroot{step.host_dir.rstrip('/')}", step.entry)
        elif isinstance(step, plan.File):
            with self._dir(os.path.dirname(step.path)) as into:
                fd = os.open(os.path.basename(step.path), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                             os.O_CLOEXEC, 0o644, dir_fd=into.fd)
                with open(fd, "wb") as f:
                    f.write(step.text.encode())
        elif isinstance(step, plan.Writable):
            _mount_writable(self.tree(), step)
        elif isinstance(step, plan.Devices):
            _mount_dev(self.tree(), step.names)
        elif isinstance(step, plan.Proc):
            self.last_pid = _mount_proc(self.tree(), step)
        elif isinstance(step, plan.HostBind):
            with _Fd(_host_source(step)) as src, \
                    self.tree().place(step.dst, directory=stat.S_ISDIR(os.fstat(src).st_mode)) as target:
                _bind(src, "", target, step.writable, what=step.src)
        elif isinstance(step, plan.Tmpfs):
            with self.tree().place(step.dst) as target:
                _new_fs(target, "tmpfs", {"mode": "0777", "size": str(step.size), "nr_inodes": str(step.inodes)},
                        _NOSUID_NODEV_ATTRS)
        elif isinstance(step, plan.ReadOnlyRoot):
            sc.mount_setattr(self.tree().fd, sc.MOUNT_ATTR_RDONLY, recursive=False)
        elif isinstance(step, plan.Pivot):
            self.close()
            os.chdir("/new")
            sc.pivot_root(".", ".")
            sc.umount2(".", sc.MNT_DETACH)
            os.chdir("/")
        elif isinstance(step, plan.Hostname):
            socket.sethostname(step.hostname)
        elif isinstance(step, plan.Loopback):
            network.loopback_up()
        else:
            raise OSError(errno.EINVAL, f"the box's plan has a step box init does not know: {step.name}")


_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_RESOLVE = sc.RESOLVE_BENEATH | sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_MAGICLINKS
_NEVER_FOLLOWED = "(links in the root are never followed)"
_NOSUID_NODEV_ATTRS = sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV


class _Fd:
    """An fd, closed at the end of a `with` block."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


class _Tree:
    """A directory that mounts go into (the new root, or a filesystem made for the box), held as an fd.

    The one way a mount point is made: `place` walks to it one component at a
    time, relative to the fd of the directory before it.  It makes what is
    missing (mkdirat, or an O_EXCL create) and opens it with openat2
    confined beneath that directory, following no link; what was there
    already it opens the same way as it is (a link's own O_PATH fd) and
    checks its kind with fstat.  It hands out an fd of that very directory
    or file: the mount is attached to it (move_mount) and owner and mode are
    set through it (`_own`).  No path is resolved again after the check.

    A link, or a file of the wrong kind, is never followed or used.  Where the
    mount point itself must be, in a tree that is ours to rewrite (a union
    root: the change goes to the box's upper, never to a lower), it is
    replaced; anywhere else (on the way to a mount point, inside a bind of a
    host dir, in the fresh tmpfs root) setup stops with an error naming it.
    """

    def __init__(self, fd: int, replaceable: bool) -> None:
        self.fd = fd
        self.replaceable = replaceable

    def __enter__(self) -> _Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def place(self, box_path: str, directory: bool = True, mode: int = 0o755) -> _Fd:
        """An fd (O_PATH, or write-only for a file made here) of the mount point `box_path` in the tree, made if
        missing, for the caller to close."""
        parts = [p for p in box_path.split("/") if p]
        fd = self.fd
        ours = self.replaceable
        try:
            for i, name in enumerate(parts):
                if name in (".", ".."):
                    raise OSError(errno.EINVAL, f"{box_path}: cannot create mount point: {name} in its path")
                last = i == len(parts) - 1
                child, ours = self._step(fd, name, box_path, parts[: i + 1], directory or not last, last, ours,
                                         mode if last else 0o755)
                if fd != self.fd:
                    os.close(fd)
                fd = child
        except BaseException:
            if fd != self.fd:
                os.close(fd)
            raise
        return _Fd(fd)

    def _step(self, parent: int, name: str, box_path: str, parts: list[str], want_dir: bool, last: bool, ours: bool,
              mode: int) -> tuple[int, bool]:
        fd = _create(parent, name, want_dir, mode, box_path)
        if fd >= 0:
            return fd, ours
        fd, ours = _lookup(parent, name, ours)
        kind = os.fstat(fd).st_mode if fd >= 0 else 0
        if stat.S_ISDIR(kind) if want_dir else stat.S_ISREG(kind):
            return fd, ours
        if fd >= 0:
            os.close(fd)
        so_far = "/" + "/".join(parts)
        if fd < 0:  # only a concurrent writer could do this
            raise OSError(errno.EAGAIN, f"{box_path}: cannot create mount point: {so_far} changed while it was made")
        if not (last and ours):
            raise OSError(errno.ELOOP if stat.S_ISLNK(kind) else errno.ENOTDIR,
                          f"{box_path}: cannot create mount point: {_misplaced(kind, want_dir, so_far, last)}")
        try:  # in a union root: the link or file goes (a whiteout in the upper where a lower has it)
            if stat.S_ISDIR(kind):
                os.rmdir(name, dir_fd=parent)
            else:
                os.unlink(name, dir_fd=parent)
        except OSError as e:
            raise OSError(e.errno, f"{box_path}: cannot create mount point: "
                                   f"{_misplaced(kind, want_dir, so_far, last)}") from None
        fd = _create(parent, name, want_dir, mode, box_path)
        if fd < 0:
            raise OSError(errno.EEXIST, f"{box_path}: cannot create mount point: {so_far} came back")
        return fd, ours


def _create(parent: int, name: str, want_dir: bool, mode: int, box_path: str) -> int:
    """A new directory (mode `mode`) or empty regular file `name` in `parent`, as an fd of it; -1 if the name exists.

    Tried before looking: in the fresh trees most mount points go into, this is the one lookup needed.
    """
    try:
        if not want_dir:  # O_EXCL: the fd is of the file made here, never of something that was there
            return sc.openat2(parent, name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                              0o644, _RESOLVE)
        os.mkdir(name, mode, dir_fd=parent)
    except FileExistsError:
        return -1
    except OSError as e:
        raise OSError(e.errno, f"{box_path}: cannot create mount point: {os.strerror(e.errno)}") from None
    try:  # O_DIRECTORY: only the directory made here (or, if it was swapped meanwhile, another one: no link)
        return sc.openat2(parent, name, _PATH_FLAGS | os.O_DIRECTORY, 0, _RESOLVE)
    except OSError as e:
        raise OSError(e.errno, f"{box_path}: cannot create mount point: {os.strerror(e.errno)}") from None


def _lookup(parent: int, name: str, ours: bool) -> tuple[int, bool]:
    """An O_PATH fd of `name` in `parent` as it is (a link's own), or -1 if there is none; and whether it is still
    on the tree's own filesystem (past a mount point, e.g. into a bind of a host dir, nothing is ours to rewrite)."""
    try:
        try:
            return sc.openat2(parent, name, _PATH_FLAGS, 0, _RESOLVE | (sc.RESOLVE_NO_XDEV if ours else 0)), ours
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            return sc.openat2(parent, name, _PATH_FLAGS, 0, _RESOLVE), False
    except FileNotFoundError:
        return -1, ours


def _misplaced(kind: int, want_dir: bool, so_far: str, last: bool) -> str:
    what = "a symlink" if stat.S_ISLNK(kind) else "a directory" if stat.S_ISDIR(kind) else \
        "a regular file" if stat.S_ISREG(kind) else "a special file"
    if not last:
        return f"{so_far} is {what}" + (f" {_NEVER_FOLLOWED}" if stat.S_ISLNK(kind) else "")
    if stat.S_ISLNK(kind):
        return f"{what} is there {_NEVER_FOLLOWED}"
    return f"{what} is there, not a {'directory' if want_dir else 'regular file'}"


def _own(target: int, uid: int, gid: int, mode: int) -> None:
    """Set owner and mode of the directory open (O_PATH) as `target`, through an fd of that very directory."""
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=target)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _host_source(bind: plan.HostBind) -> int:
    """The bind's source under /oldroot, by the link-free path the supervisor resolved, and only if it is still
    what the supervisor saw there (a program of another box may have swapped a directory on the way since)."""
    oldroot = os.open("/oldroot", _PATH_FLAGS | os.O_DIRECTORY)
    try:
        fd = sc.openat2(oldroot, bind.src.lstrip("/") or ".", os.O_PATH | os.O_CLOEXEC, 0,
                        sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_MAGICLINKS)
    finally:
        os.close(oldroot)
    st = os.fstat(fd)
    if bind.identity is not None and (st.st_dev, st.st_ino) != tuple(bind.identity):
        os.close(fd)
        raise OSError(errno.ESTALE, f"{bind.src}: replaced since the sandbox resolved it")
    return fd


def _bind(src_dir: int, src: str, target: int, writable: bool, *, devices: bool = False, what: str = "") -> None:
    """Bind `src` (relative to `src_dir`, "" for `src_dir` itself; trusted: the host's, the caller's or ours) onto
    the mount point fd `target`, restricted before it is attached.  `what` names it in errors (default `src`)."""
    what = what or src
    tree = sc.open_tree(src_dir, src, what)
    try:
        attrs = sc.MOUNT_ATTR_NOSUID | (0 if devices else sc.MOUNT_ATTR_NODEV) | \
            (0 if writable else sc.MOUNT_ATTR_RDONLY)
        sc.mount_setattr(tree, attrs, recursive=True)
        sc.move_mount(tree, target, what)
    finally:
        os.close(tree)


def _new_fs(target: int, fstype: str, options: dict[str, str | None], attrs: int) -> int:
    """A new `fstype` mounted on the mount point fd `target`; returns the fd of its root (the caller closes it)."""
    fs = sc.fs_mount(fstype, options, attrs)
    try:
        sc.move_mount(fs, target, fstype)
    except BaseException:
        os.close(fs)
        raise
    return fs


def _mount_union(step: plan.KernelUnion) -> None:
    """Kernel overlayfs, mountable inside a user namespace with `userxattr` (Linux >= 5.11)."""
    if step.upper is not None:
        assert step.workdir is not None
        upper, work = f"/oldroot{step.upper}", f"/oldroot{step.workdir}"
    else:
        upper, work = "/rw/upper", "/rw/work"
        os.mkdir(upper, 0o755)
        os.mkdir(work, 0o700)
    lowers = ":".join(f"/oldroot{d}" for d in step.lowers)
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


def _mirror(tree: _Tree, host_dir: str, name: str) -> None:
    """The host's `host_dir/name` in `tree`, read-only: a link as the same link, a directory or file as a bind."""
    host = f"{host_dir}/{name}"
    try:
        kind = os.lstat(host).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(kind):
        os.symlink(os.readlink(host), name, dir_fd=tree.fd)
    elif stat.S_ISDIR(kind) or stat.S_ISREG(kind):
        with tree.place(name, directory=stat.S_ISDIR(kind)) as target:
            _bind(sc.AT_FDCWD, host, target, False)


def _mount_dev(root: _Tree, devices: tuple[str, ...]) -> None:
    with root.place("dev") as target:
        dev = _Tree(_new_fs(target, "tmpfs", {"mode": "0755"}, sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NOEXEC), False)
    with dev:
        for name in devices:
            with dev.place(name, directory=False) as node:
                _bind(sc.AT_FDCWD, f"/oldroot/dev/{name}", node, True, devices=True)
        with dev.place("pts") as target:
            os.close(_new_fs(target, "devpts", {"newinstance": None, "ptmxmode": "0666", "mode": "620"},
                             sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NOEXEC))
        os.symlink("pts/ptmx", "ptmx", dir_fd=dev.fd)
        for name, link in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                           ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
            os.symlink(link, name, dir_fd=dev.fd)
        with dev.place("shm") as target:
            _bind(sc.AT_FDCWD, "/rw/shm", target, True)
        sc.mount_setattr(dev.fd, sc.MOUNT_ATTR_RDONLY, recursive=False)


def _mount_proc(root: _Tree, step: plan.Proc) -> int:
    """A procfs of the box's own pid namespace, with the kernel-tuning parts read-only and the host's facts masked.

    `hidepid=invisible`: the program sees only the processes it could trace,
    its own.  Box init and the spawner are not there to open at all, so no
    kernel's permission check on one of their files (Linux 6.1 lets anyone
    open /proc/PID/timers) is between the program and them.

    The masks are read-only binds of an empty file and an empty directory made on the box's own tmpfs.
    Returns a writable fd of its `sys/kernel/ns_last_pid` (see boxinit.py).
    """
    os.mkdir("/rw/masked", 0o555)
    os.close(os.open("/rw/masked-file", os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o444))
    with root.place("proc", mode=0o555) as target:
        proc = _new_fs(target, "proc", {"hidepid": "invisible"},
                       sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV | sc.MOUNT_ATTR_NOEXEC)
    try:
        last_pid = os.open("sys/kernel/ns_last_pid", os.O_WRONLY | os.O_CLOEXEC, dir_fd=proc)
        for name in (*step.readonly, *step.masked):
            fd, _ = _lookup(proc, name, False)
            if fd < 0:
                continue
            with _Fd(fd):
                if name in step.readonly:
                    _bind(proc, name, fd, False)
                else:
                    _bind(sc.AT_FDCWD, "/rw/masked" if stat.S_ISDIR(os.fstat(fd).st_mode) else "/rw/masked-file",
                          fd, False)
    finally:
        os.close(proc)
    return last_pid


def _mount_writable(root: _Tree, step: plan.Writable) -> None:
    """`home` (/box), /tmp and /dev/shm share one size-limited tmpfs, so --disk caps them together.

    Over a union root, `home` is the union's own directory instead, so that an
    `upper` keeps what the program wrote there.
    """
    for d in ("box", "tmp", "shm"):
        os.mkdir(f"/rw/{d}")
    os.chmod("/rw/tmp", 0o1777)
    os.chmod("/rw/shm", 0o1777)
    with root.place(step.home) as box:
        if step.union:
            _own(box, step.uid, step.gid, 0o755)
        else:
            os.chown("/rw/box", step.uid, step.gid)
            os.chmod("/rw/box", 0o755)
            _bind(sc.AT_FDCWD, "/rw/box", box, True)
    with root.place("tmp") as target:
        _bind(sc.AT_FDCWD, "/rw/tmp", target, True)
