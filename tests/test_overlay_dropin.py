"""sbx-overlayfs where fuse-overlayfs is used: mount(8), over its own /usr, as namespace root, in a box.

Every test runs unprivileged, in user+mount namespaces of its own.  The
command under test is the installed ``sbx-overlayfs`` script next to the
interpreter, never a file of the source tree.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from overlay_helpers import NsWorker

from helpers import sbx

SBX_OVERLAYFS = Path(sys.executable).parent / "sbx-overlayfs"
MS_BIND = 4096


@pytest.fixture
def open_dirs() -> Iterator[dict[str, Path]]:
    """lower/upper/work/mnt under a directory every uid may traverse (pytest's own is 0700)."""
    base = Path(tempfile.mkdtemp(prefix="sbx-dropin-", dir="/tmp"))
    base.chmod(0o755)
    d = {n: base / n for n in ("lower", "upper", "work", "mnt", "bin")}
    for p in d.values():
        p.mkdir(mode=0o755)
    (d["lower"] / "file").write_bytes(b"lower data")
    (d["lower"] / "file").chmod(0o644)
    yield d
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def worker() -> Iterator[NsWorker]:
    w = NsWorker()
    yield w
    w.close()


def mounted(worker: NsWorker, path: Path) -> str | None:
    """The filesystem type mounted at PATH in the worker's namespace, if any."""
    for line in worker.call("read", "/proc/self/mountinfo").decode().splitlines():
        fields = line.split()
        if fields[4] == str(path):
            return fields[fields.index("-") + 1]
    return None


def run_in(worker: NsWorker, *argv: str) -> tuple[int, str]:
    rc, out, err = worker.call("run", list(argv))
    return rc, (out + err).decode(errors="replace")


def test_mount8_runs_it_as_fuse_overlayfs_is_run(worker: NsWorker, open_dirs: dict[str, Path]) -> None:
    """`mount -t fuse.sbx-overlayfs` (and fstab) reach it through mount.fuse3 as `SOURCE MOUNTPOINT -o rw,...,dev,suid`."""
    if shutil.which("mount.fuse3", path="/sbin:/usr/sbin") is None:
        pytest.skip("mount.fuse3 (package fuse3) is not installed")
    d = open_dirs
    # mount(8) runs helpers with PATH removed, so mount.fuse3's shell searches only the default PATH.
    (d["bin"] / "sbx-overlayfs").symlink_to(SBX_OVERLAYFS)
    worker.call("mount", str(d["bin"]), "/usr/local/bin", "", MS_BIND, None)
    opts = f"lowerdir={d['lower']},upperdir={d['upper']},workdir={d['work']},fsync=0,volatile"  # podman adds these
    rc, out = run_in(worker, "mount", "-t", "fuse.sbx-overlayfs", "-o", opts, "overlay", str(d["mnt"]))
    assert rc == 0, out
    try:
        assert mounted(worker, d["mnt"]) == "fuse.sbx-overlayfs"
        assert worker.call("read", str(d["mnt"] / "file")) == b"lower data"
        worker.call("write", str(d["mnt"] / "new"), b"upper data")
        assert (d["upper"] / "new").read_bytes() == b"upper data"
        assert not (d["lower"] / "new").exists()
    finally:
        run_in(worker, "umount", str(d["mnt"]))
    assert mounted(worker, d["mnt"]) is None

    # mount -r: the same layers, upper included, read-only
    rc, out = run_in(worker, "mount", "-r", "-t", "fuse.sbx-overlayfs", "-o", opts, "overlay", str(d["mnt"]))
    assert rc == 0, out
    try:
        assert worker.call("read", str(d["mnt"] / "new")) == b"upper data"
        assert worker.errno_of("write", str(d["mnt"] / "other"), b"x") == errno.EROFS
    finally:
        run_in(worker, "umount", str(d["mnt"]))


def test_allow_other_when_namespace_root(worker: NsWorker, open_dirs: dict[str, Path]) -> None:
    """As fuse-overlayfs does: the namespace's other uids can use a mount made by its root."""
    if not worker.full_map:
        pytest.skip("no subordinate id range: the namespace has no other uid")
    d = open_dirs
    opts = f"lowerdir={d['lower']},upperdir={d['upper']},workdir={d['work']}"
    rc, out = run_in(worker, str(SBX_OVERLAYFS), "-o", opts, str(d["mnt"]))
    assert rc == 0, out
    try:
        as_uid_1 = ["setpriv", "--reuid=1", "--regid=1", "--clear-groups"]
        rc, out = run_in(worker, *as_uid_1, "cat", str(d["mnt"] / "file"))
        assert (rc, out) == (0, "lower data")
        rc, out = run_in(worker, *as_uid_1, "sh", "-c", f"echo x > {d['mnt']}/by-uid-1")
        assert rc != 0 and "Permission denied" in out, "permissions are still checked (default_permissions)"
    finally:
        run_in(worker, "umount", str(d["mnt"]))


def in_own_namespaces(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """SCRIPT as root of new user, mount and pid namespaces: killing `unshare` (on a timeout) ends them all."""
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork", "--kill-child",
                           "sh", "-c", script], capture_output=True, text=True, env={**os.environ, **env}, timeout=120)


def test_mounting_over_usr_with_usr_as_lower_serves(tmp_path: Path) -> None:
    """Nothing the daemon does between mounting /usr and serving it may walk into /usr.

    In its own pid namespace, so that on failure (a hang) killing `unshare`
    takes every process and the mount with it.
    """
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    script = r"""
        set -eu
        "$SBX" -o "lowerdir=/usr,upperdir=$UPPER,workdir=$WORK" /usr
        echo "type: $(awk '$5 == "/usr" { print $(NF-2) }' /proc/self/mountinfo)"
        echo probe > /usr/sbx-probe
        cat /usr/sbx-probe
        test -x /usr/bin/sh && echo "sh: ok"
    """
    proc = in_own_namespaces(script, SBX=str(SBX_OVERLAYFS), UPPER=str(upper), WORK=str(work))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["type: fuse.sbx-overlayfs", "probe", "sh: ok"]
    assert (upper / "sbx-probe").read_text() == "probe\n"
    assert not Path("/usr/sbx-probe").exists()


def test_an_internal_error_while_serving_usr_does_not_hang_it(tmp_path: Path) -> None:
    """A handler's bug raised inside a standard library module, with the daemon serving that module's file:
    reporting it must not read the file (a traceback's quoted lines), or the daemon waits on itself for good."""
    (tmp_path / "upper").mkdir()
    (tmp_path / "work").mkdir()
    daemon = textwrap.dedent("""
        import json, sys
        from fuse_overlay.operations import UnionFS, handler

        @handler
        async def statfs(self, ctx):
            return json.loads(0)  # a bug, raised from json's own code under /usr

        UnionFS.statfs = statfs
        from fuse_overlay.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    script = r"""
        set -eu
        "$PY" -c "$DAEMON" -o "lowerdir=/usr,upperdir=$UPPER,workdir=$WORK" /usr
        if "$PY" -c 'import os; os.statvfs("/usr")' 2>/dev/null; then echo "statfs: ok"; else echo "statfs: EIO"; fi
        test -x /usr/bin/sh && echo "still serving"
    """
    proc = in_own_namespaces(script, PY=sys.executable, DAEMON=daemon, UPPER=str(tmp_path / "upper"),
                             WORK=str(tmp_path / "work"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["statfs: EIO", "still serving"]


def test_single_mapping_runs_on_the_fuse_union(tmp_path: Path) -> None:
    """--idmap single (only the caller's uid mapped) with --lower: the FUSE root mounts and serves."""
    root = tmp_path / "root"
    (root / "usr").mkdir(parents=True)
    for link in ("bin", "lib", "lib64", "sbin"):
        (root / link).symlink_to(f"usr/{link}")
    r = sbx("run", "--idmap", "single", "--fs", "fuse", "--lower", str(root), "--ro-bind", "/usr",
            "--", "/bin/sh", "-c", "id -u; echo hi > /tmp/x; cat /tmp/x")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(os.getuid()).encode(), b"hi"]


def test_redirect_dir_off_refuses_to_move_lower_directories(tmp_path: Path) -> None:
    """redirect_dir=off: EXDEV for a directory with lower contents, as fuse-overlayfs and kernel overlayfs say
    (mv then copies); by default such a directory moves."""
    d = {n: tmp_path / n for n in ("lower", "upper", "work", "mnt")}
    for p in d.values():
        p.mkdir()
    (d["lower"] / "dir").mkdir()
    (d["lower"] / "dir" / "file").write_bytes(b"x")
    opts = f"lowerdir={d['lower']},upperdir={d['upper']},workdir={d['work']}"
    for extra, lower_dir_moves in ((",redirect_dir=off", False), ("", True)):
        r = subprocess.run([str(SBX_OVERLAYFS), "-o", opts + extra, str(d["mnt"])], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        try:
            (d["mnt"] / "new").mkdir()
            (d["mnt"] / "new").rename(d["mnt"] / "new2")  # nothing below it: always movable
            if lower_dir_moves:
                (d["mnt"] / "dir").rename(d["mnt"] / "moved")
                assert (d["mnt"] / "moved" / "file").read_bytes() == b"x"
            else:
                with pytest.raises(OSError) as exc:
                    (d["mnt"] / "dir").rename(d["mnt"] / "moved")
                assert exc.value.errno == errno.EXDEV
                assert (d["mnt"] / "dir" / "file").read_bytes() == b"x"
        finally:
            subprocess.run(["fusermount3", "-u", str(d["mnt"])], check=False, timeout=60)
        shutil.rmtree(d["upper"] / "new2")
