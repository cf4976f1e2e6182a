"""`sbx check`: what this machine offers a rootless sandbox, probed for real rather than guessed.

Each probe runs the actual mechanism in a short-lived child (a user
namespace, an overlay mount inside it), because sysctls and config files
lie: a kernel may list user namespaces yet deny them through an LSM.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import tempfile
from typing import Any

from . import shipped
from . import syscalls as sc
from .box.cgroups import inspect, systemd_unreachable
from .box.userns import IdMap, detect, write_single_map


def _in_child(probe: Any) -> str | None:
    """Run `probe()` in a forked child; None if it succeeded, else its error message."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            probe()
            os._exit(0)
        except BaseException as e:  # noqa: BLE001 - the probe's failure is the answer
            os.write(w, str(e).encode()[:500])
            os._exit(1)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        message = f.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    return None if status == 0 else (message or f"probe exited with status {status}")


def _userns_probe() -> None:
    ids = IdMap("single", os.getuid(), os.getgid())
    sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWNS)
    write_single_map(ids)


def _overlay_probe() -> None:
    _userns_probe()
    with tempfile.TemporaryDirectory(prefix="sbx-check-") as d:
        for sub in ("l", "u", "w", "m"):
            os.mkdir(f"{d}/{sub}")
        sc.mount("overlay", f"{d}/m", "overlay", 0, f"lowerdir={d}/l,upperdir={d}/u,workdir={d}/w,userxattr")
        sc.umount2(f"{d}/m")


def _cgroup_v2() -> dict[str, Any]:
    """Whether runs get cgroups: a delegated subtree now, or a systemd scope that sbx would ask for."""
    found = inspect()
    if found.base is not None:
        return {"ok": True, "detail": f"delegated: {found.base} ({' '.join(sorted(found.controllers))})"}
    unreachable = systemd_unreachable() if found.not_delegated else None
    if found.not_delegated and unreachable is None:
        return {"ok": True, "detail": f"{found.reason}; sbx will ask systemd for a delegated scope"}
    return {"ok": False, "detail": found.reason + (f"; {unreachable}" if unreachable else "")}


def _seccomp() -> dict[str, Any]:
    try:
        with open("/proc/sys/kernel/seccomp/actions_avail") as f:
            actions = f.read().split()
    except OSError:
        return {"ok": False, "detail": "kernel without seccomp filters"}
    ok = "user_notif" in actions and "kill_process" in actions
    return {"ok": ok, "detail": " ".join(actions)}


def _installation() -> dict[str, Any]:
    """The wheel's own parts: the spawner, the policies and libseccomp (through pyseccomp)."""
    problems = shipped.problems()
    try:
        import pyseccomp  # noqa: F401 - importing it loads libseccomp.so.2
    except (ImportError, OSError, AttributeError) as e:  # pyseccomp without libseccomp.so.2 fails late
        problems.append(f"libseccomp cannot be loaded through pyseccomp: {e}")
    where = f"sbx {importlib.metadata.version('sbx')}, spawner and policies in {os.path.dirname(shipped.POLICY_DIR)}"
    return {"ok": not problems, "detail": "; ".join(problems) or where}


def _tracing() -> dict[str, Any]:
    """Without cgroup v2, a run that may fork is ptraced to count its CPU time; Yama's scope 3 forbids that."""
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            scope = int(f.read())
    except (OSError, ValueError):
        return {"ok": True, "detail": "no Yama restriction"}
    if scope >= 3:
        return {"ok": False, "detail": "kernel.yama.ptrace_scope is 3: without cgroup v2 only --pids 1 runs"}
    return {"ok": True, "detail": f"kernel.yama.ptrace_scope {scope} lets the spawner trace its runs"}


def _limits(cgroup: bool) -> str:
    if cgroup:
        return "limits: cgroup (CPU, memory, pids), spawner timer (CPU kill, wall)"
    return ("limits: spawner (CPU: process clocks, every process traced unless --pids 1; memory: resident memory "
            "sampled (at least 1 ms apart), address space per process capped at 2x the limit + 1 GiB, memfd_create and "
            "shmget refused), RLIMIT_NPROC (pids)")


def report() -> dict[str, Any]:
    userns = _in_child(_userns_probe)
    ids = detect("auto")
    fuse_ok = os.access("/dev/fuse", os.R_OK | os.W_OK)
    overlay = _in_child(_overlay_probe) if userns is None else "no user namespaces"
    cgroup = _cgroup_v2()
    installation = _installation()
    return {
        "installation": installation,
        "kernel": {"ok": True, "detail": platform.release()},
        "user_namespaces": {"ok": userns is None, "detail": userns or "unprivileged user namespaces work"},
        "uid_mapping": {"ok": ids.mode == "range", "detail": ids.describe()},
        "newuidmap": {"ok": shutil.which("newuidmap") is not None, "detail": shutil.which("newuidmap") or "missing"},
        "fuse": {"ok": fuse_ok, "detail": "/dev/fuse usable" if fuse_ok else "/dev/fuse not readable and writable"},
        "kernel_overlayfs": {"ok": overlay is None, "detail": overlay or "mountable with userxattr in a user namespace"},
        "cgroup_v2": cgroup,
        "seccomp": _seccomp(),
        "tracing": _tracing(),
        "will_use": {
            "ok": userns is None and installation["ok"],
            "detail": (
                f"uid map {ids.mode}; root: host system dirs read-only + tmpfs /box, or with --lower the union "
                f"by {'sbx-overlayfs (FUSE)' if fuse_ok else 'kernel overlayfs'}; seccomp policy 'default'; "
                + _limits(cgroup["ok"])
            ),
        },
    }


def table(rep: dict[str, Any]) -> str:
    width = max(len(k) for k in rep)
    return "\n".join(
        f"{name.ljust(width)}  {'yes' if item['ok'] else 'no ':3}  {item['detail']}" for name, item in rep.items()
    )
