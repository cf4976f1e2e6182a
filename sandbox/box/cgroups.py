"""cgroup v2 delegation: a cgroup per box and per run, for exact limits and accounting without root.

Layout under the delegated cgroup BASE (the supervisor's own, or a systemd
scope obtained for it)::

    BASE/                   controllers enabled for its children; no process of its own
    ├── sbx-procs/          every process that was in BASE (the no-internal-processes rule)
    └── sbx-<pid>-<n>/      box n of supervisor <pid>
        ├── init/           the outer process, box init and the spawner
        ├── daemon/         the box's FUSE daemon (a --lower union served with --fs fuse)
        └── run-<k>/        one run: memory.max, swap 0, oom.group, pids.max, cpu.max

A run gets a fresh cgroup because memory.peak cannot be reset before Linux
6.12, and a fresh one starts from zero.  The program's first act (in the
spawner's child, before execve) is to write itself into the run's
`cgroup.procs`, opened here: since Linux 5.16 the kernel checks the opener's
credentials and cgroup namespace, so the box's own need not see the tree.

Nothing here is used silently: `Delegation.reason` says why cgroups are not
used, and the result's `enforcement` then says `rlimit`.
"""

from __future__ import annotations

import errno
import functools
import itertools
import os
import re
import time

from .. import tools
from ..record import Record
from ..run.limits import Limits
from .run_protocol import RunEnd

_WANTED = ("memory", "pids", "cpu")
_REQUIRED = ("memory", "pids")
_LEAF = "sbx-procs"
_BOX = re.compile(r"sbx-(\d+)-\d+")
_MIN_KERNEL = (5, 16)
_EMPTY_TIMEOUT = 2.0
_SCOPE_TIMEOUT = 5.0


class Delegation(Record):
    """Where this process may create cgroups, or why it may not."""

    base: str | None
    reason: str
    controllers: frozenset[str] = frozenset()
    # cgroup v2 with the controllers is there, only not delegated: a systemd scope would be
    not_delegated: bool = False


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _enable(path: str, controllers: frozenset[str]) -> None:
    """Give the children of `path` these controllers."""
    _write(os.path.join(path, "cgroup.subtree_control"), " ".join(f"+{c}" for c in sorted(controllers)))


def _keyed(path: str) -> dict[str, int]:
    """A flat-keyed cgroup file (cpu.stat, memory.events): {"key": value}."""
    return {k: int(v) for k, v in (line.split() for line in _read(path).splitlines())}


@functools.cache
def _mountpoint() -> str | None:
    """Where the cgroup v2 hierarchy is mounted with its root visible (unified or hybrid), if anywhere.

    Read once: every box creation checks its siblings' supervisors with it.
    """
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields, _, rest = line.partition(" - ")
            parts = fields.split()
            if rest.split()[0] == "cgroup2" and parts[3] == "/":
                return parts[4]
    return None


def cgroup_of(pid: int | str = "self") -> str | None:
    """A process's cgroup v2 directory, None when there is no v2 hierarchy that shows it."""
    mount = _mountpoint()
    if mount is None:
        return None
    for line in _read(f"/proc/{pid}/cgroup").splitlines():
        if line.startswith("0::"):
            rel = line[3:]
            # "/.." means the cgroup lies outside the reader's cgroup namespace
            return None if rel.startswith("/..") else os.path.normpath(mount + rel)
    return None


def box_cgroup_of(pid: int) -> str | None:
    """The cgroup of the running box whose outer process is `pid` (it stays in the box's init/), or None if the box
    has none: where an `sbx exec` into it makes its own, so that the box's accounting counts what it runs."""
    try:
        path = cgroup_of(pid)
    except OSError:
        return None
    if path is None or os.path.basename(path) != "init" or not _BOX.fullmatch(os.path.basename(os.path.dirname(path))):
        return None
    return os.path.dirname(path)


def _not_delegated(path: str) -> str | None:
    """Why `path` is not ours to manage (systemd's Delegate=yes chowns exactly these), or None."""
    st = os.stat(path)
    if st.st_uid != os.geteuid():
        return f"{path} is owned by uid {st.st_uid}, not {os.geteuid()} (not delegated)"
    for name in (".", "cgroup.procs", "cgroup.subtree_control"):
        if not os.access(os.path.join(path, name), os.W_OK):
            return f"{os.path.join(path, name)} is not writable (not delegated)"
    return None


def inspect() -> Delegation:
    """What `delegation()` would find, without changing anything (for `sbx check`)."""
    release = tuple(int(x) for x in re.findall(r"\d+", os.uname().release)[:2])
    if release < _MIN_KERNEL:
        return Delegation(None, f"Linux {os.uname().release} checks a cgroup move with the mover's credentials, "
                                "not the opener's (5.16): a program cannot join its run cgroup")
    own = cgroup_of()
    if own is None:
        v1 = [line.split(":")[1] for line in _read("/proc/self/cgroup").splitlines() if line.split(":")[1]]
        return Delegation(None, "no cgroup v2 hierarchy shows this process's cgroup"
                                + (f" (controllers on cgroup v1: {', '.join(v1)})" if v1 else ""))
    base = os.path.dirname(own) if os.path.basename(own) == _LEAF else own
    try:
        why = _not_delegated(base)
        available = frozenset(_read(os.path.join(base, "cgroup.controllers")).split())
    except OSError as e:
        return Delegation(None, f"{base}: {e.strerror}")
    missing = [c for c in _REQUIRED if c not in available]
    if missing:
        return Delegation(None, f"controllers {', '.join(missing)} are not available in {base} (bound to cgroup v1?)")
    if why is not None:
        return Delegation(None, why, not_delegated=True)
    return Delegation(base, "delegated", frozenset(c for c in _WANTED if c in available))


def _evacuate(base: str) -> None:
    """Move every process of `base` into its leaf, so `base` may enable controllers.

    Rootless podman moves its processes the same way; a process forking
    meanwhile leaves a child behind, hence the rounds.
    """
    leaf = os.path.join(base, _LEAF)
    os.makedirs(leaf, exist_ok=True)
    for _ in range(20):
        pids = _read(os.path.join(base, "cgroup.procs")).split()
        if not pids:
            return
        for pid in pids:
            try:
                _write(os.path.join(leaf, "cgroup.procs"), pid)
            except ProcessLookupError:
                pass
    raise OSError(errno.EBUSY, f"processes keep appearing in {base}")


def _supervisor_alive(pid: int, base: str) -> bool:
    """Whether `pid` still is a supervisor of `base` (a reused pid elsewhere does not count)."""
    try:
        cgroup = cgroup_of(pid)
    except OSError:
        return False
    return cgroup is not None and cgroup.startswith(base + "/")


def _kill_and_remove(path: str) -> None:
    """Kill everything in the cgroup tree at `path` (cgroup.kill: Linux 5.14, below our 5.16) and remove it."""
    _write(os.path.join(path, "cgroup.kill"), "1")
    deadline = time.monotonic() + _EMPTY_TIMEOUT
    while "populated 1" in _read(os.path.join(path, "cgroup.events")):
        if time.monotonic() > deadline:
            raise OSError(errno.EBUSY, f"{path}: processes did not die")
        time.sleep(0.001)
    for dirpath, dirnames, _ in os.walk(path, topdown=False):
        for d in dirnames:
            os.rmdir(os.path.join(dirpath, d))
    os.rmdir(path)


def _clean_stale(base: str) -> None:
    """Remove box cgroups whose supervisor is gone (it was SIGKILLed and could not clean up)."""
    for name in os.listdir(base):
        m = _BOX.fullmatch(name)
        if m and not _supervisor_alive(int(m.group(1)), base):
            try:
                _kill_and_remove(os.path.join(base, name))
            except OSError:
                pass  # another supervisor is cleaning it, or it resists: the next start tries again


def systemd_unreachable() -> str | None:
    """Why no systemd user manager can be asked for a delegated scope, or None if one can."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", f"/run/user/{os.getuid()}")
    if tools.find("busctl") is None:
        return "no busctl to ask a systemd user manager for a delegated scope"
    if not (os.environ.get("DBUS_SESSION_BUS_ADDRESS") or os.path.exists(f"{runtime}/bus")):
        return "no systemd user manager is reachable for a delegated scope"
    return None


def _systemd_scope() -> str | None:
    """Ask the user's systemd for a delegated scope holding this process, as rootless podman does.

    Returns why that failed, or None once this process has moved.
    """
    unreachable = systemd_unreachable()
    if unreachable is not None:
        return unreachable
    import subprocess  # (only here: a start that needs no scope does not load it)

    busctl = tools.find("busctl")
    assert busctl is not None
    before = _read("/proc/self/cgroup")
    proc = subprocess.run(
        [busctl, "--user", "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
         "org.freedesktop.systemd1.Manager", "StartTransientUnit", "ssa(sv)a(sa(sv))",
         f"sbx-{os.getpid()}-{time.monotonic_ns()}.scope", "fail",
         "2", "PIDs", "au", "1", str(os.getpid()), "Delegate", "b", "true", "0"],
        capture_output=True, text=True, timeout=_SCOPE_TIMEOUT, check=False)
    if proc.returncode != 0:
        return f"systemd refused a delegated scope: {proc.stderr.strip() or proc.returncode}"
    deadline = time.monotonic() + _SCOPE_TIMEOUT
    while _read("/proc/self/cgroup") == before:
        if time.monotonic() > deadline:
            return "systemd did not move this process into its delegated scope in time"
        time.sleep(0.005)
    return None


def _prepare() -> Delegation:
    found = inspect()
    if found.not_delegated:
        scope_error = _systemd_scope()
        found = inspect() if scope_error is None else Delegation(None, f"{found.reason}; {scope_error}")
    if found.base is None:
        return found
    base = found.base
    try:
        if cgroup_of() == base:
            _evacuate(base)
        enabled = set(_read(os.path.join(base, "cgroup.subtree_control")).split())
        if not found.controllers <= enabled:
            _enable(base, found.controllers)
    except OSError as e:
        return Delegation(None, f"cannot use the delegated {base}: {e.strerror or e}")
    return found


@functools.cache
def delegation() -> Delegation:
    """Prepare this process's delegated subtree once (it may move processes), or say why there is none."""
    return _prepare()


class RunCgroup:
    """One run's cgroup: its limits, the fd the program joins it through, and its accounting."""

    def __init__(self, path: str, limits: Limits, controllers: frozenset[str]) -> None:
        self.path = path
        os.mkdir(path)
        try:
            if limits.memory is not None:
                self._set("memory.max", str(limits.memory))
                if os.path.exists(os.path.join(path, "memory.swap.max")):
                    self._set("memory.swap.max", "0")
            self._set("memory.oom.group", "1")
            if limits.pids is not None:
                self._set("pids.max", str(limits.pids))
            if limits.cpus is not None:
                if "cpu" not in controllers:
                    raise OSError(errno.EOPNOTSUPP, "the cpu controller is not delegated (needed by --cpus)")
                self._set("cpu.max", f"{max(1000, round(limits.cpus * 100_000))} 100000")
            self.procs_fd = os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
            try:  # the spawner reads it to end the run at its CPU limit
                self.cpu_stat_fd = os.open(os.path.join(path, "cpu.stat"), os.O_RDONLY | os.O_CLOEXEC)
            except BaseException:
                os.close(self.procs_fd)
                raise
        except BaseException:
            os.rmdir(path)
            raise
        self.has_peak = os.path.exists(os.path.join(path, "memory.peak"))
        self.has_pids_peak = os.path.exists(os.path.join(path, "pids.peak"))  # Linux 6.1
        self.sampled_peak = 0

    def _set(self, name: str, value: str) -> None:
        _write(os.path.join(self.path, name), value)

    def sample_memory(self) -> None:
        """Before Linux 5.19 there is no memory.peak: the supervisor samples memory.current while the run lasts."""
        self.sampled_peak = max(self.sampled_peak, int(_read(os.path.join(self.path, "memory.current"))))

    def accounted(self, end: RunEnd) -> RunEnd:
        """`end` as the spawner reported it, with this cgroup's exact CPU time, memory peak, process peak and
        events (OSError if they cannot be read)."""
        cpu = _keyed(os.path.join(self.path, "cpu.stat"))["usage_usec"] / 1e6
        peak = int(_read(os.path.join(self.path, "memory.peak"))) if self.has_peak else self.sampled_peak
        events = {f"memory.{k}": v for k, v in _keyed(os.path.join(self.path, "memory.events")).items()
                  if k in ("oom_kill", "max") and v}
        if (pids_max := _keyed(os.path.join(self.path, "pids.events")).get("max", 0)):
            events["pids.max"] = pids_max
        procs = int(_read(os.path.join(self.path, "pids.peak"))) if self.has_pids_peak else None
        return end.replace(cpu_time=cpu, memory_peak=peak, proc_peak=procs, events={**end.events, **events})

    def remove(self) -> None:
        """The spawner reaped every process of the run, so this is normally a plain rmdir."""
        try:
            os.rmdir(self.path)
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
            _kill_and_remove(self.path)


class BoxCgroup:
    """One box's cgroup: `init/` for the box's own processes, and a fresh child per run."""

    _boxes = itertools.count()

    def __init__(self, found: Delegation, clean: bool = True) -> None:
        """`clean`: remove the stale box cgroups in the base first (not in a running box's, where `sbx exec`'s nest:
        theirs go with the box's)."""
        assert found.base is not None
        self.controllers = found.controllers
        if clean:
            _clean_stale(found.base)
        self.path = os.path.join(found.base, f"sbx-{os.getpid()}-{next(self._boxes)}")
        self._runs = itertools.count()
        os.mkdir(self.path)
        try:
            os.mkdir(os.path.join(self.path, "init"))
            _enable(self.path, self.controllers)
        except BaseException:
            _kill_and_remove(self.path)
            raise

    def init_procs(self) -> int:
        """An fd of init/cgroup.procs: the outer process writes itself there before its namespaces."""
        return os.open(os.path.join(self.path, "init", "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)

    def daemon_procs(self) -> int:
        """A write-only fd of `daemon/cgroup.procs`, through which the box's FUSE daemon joins before it serves.

        From then on the memory it allocates and the CPU it spends serving the
        box are charged to the box's cgroup; `remove` kills it with the box.
        """
        path = os.path.join(self.path, "daemon")
        os.makedirs(path, exist_ok=True)
        return os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)

    def new_run(self, limits: Limits) -> RunCgroup:
        return RunCgroup(os.path.join(self.path, f"run-{next(self._runs)}"), limits, self.controllers)

    def remove(self) -> None:
        if os.path.exists(self.path):
            _kill_and_remove(self.path)
