"""The sbx-overlayfs command line, the Python entry points, and failure modes."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from overlay_helpers import PY, NsWorker, child_env

from fuse_overlay import ConfigError, CorruptUpperError, UnionFS


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "fuse_overlay.cli", *args], capture_output=True, text=True,
                          env=child_env(), timeout=timeout)


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def wait_for(cond, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    d = {n: tmp_path / n for n in ("lower", "upper", "work", "mnt")}
    for p in d.values():
        p.mkdir()
    (d["lower"] / "file").write_bytes(b"lower data")
    return d


@pytest.fixture
def unmount_after(dirs: dict[str, Path]) -> Iterator[None]:
    yield
    if is_mounted(dirs["mnt"]):
        subprocess.run(["fusermount3", "-u", "-z", str(dirs["mnt"])], check=False)


def opts(d: dict[str, Path], extra: str = "") -> str:
    return f"lowerdir={d['lower']},upperdir={d['upper']},workdir={d['work']}{extra}"


@pytest.mark.parametrize("option, message", [
    ("frobnicate", "unknown option 'frobnicate'"),
    ("quota_bytes=lots", "quota_bytes='lots'"),
    ("uidmapping=0:1", "BOX:HOST:COUNT"),
    ("whiteout=maybe", "whiteout='maybe'"),
])
def test_bad_options_give_one_line_and_exit_1(dirs: dict[str, Path], option: str, message: str) -> None:
    r = cli("-o", opts(dirs, "," + option), str(dirs["mnt"]))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sbx-overlayfs: ") and message in lines[0]
    assert not is_mounted(dirs["mnt"])


def test_missing_lowerdir_and_mountpoint(dirs: dict[str, Path]) -> None:
    r = cli("-o", f"upperdir={dirs['upper']},workdir={dirs['work']}", str(dirs["mnt"]))
    assert r.returncode == 1 and r.stderr.strip() == "sbx-overlayfs: missing lowerdir= option"
    r = cli("-o", opts(dirs))
    assert r.returncode == 1 and r.stderr.strip() == "sbx-overlayfs: missing MOUNTPOINT"


def test_corrupt_upper_is_refused(dirs: dict[str, Path], tmp_path: Path) -> None:
    whiteout = tmp_path / "wh"
    os.mknod(whiteout, stat.S_IFCHR, 0)
    r = cli("-o", f"lowerdir={dirs['lower']},upperdir={whiteout},workdir={dirs['work']}", str(dirs["mnt"]))
    assert r.returncode == 1
    assert r.stderr.strip() == f"sbx-overlayfs: upper directory {whiteout}: is a whiteout, expected a directory"
    with pytest.raises(CorruptUpperError, match="is a whiteout"):
        UnionFS([dirs["lower"]], whiteout, dirs["work"])
    with pytest.raises(CorruptUpperError, match="does not exist"):
        UnionFS([dirs["lower"]], dirs["upper"], tmp_path / "nowork")
    os.chmod(dirs["work"], 0o500)
    try:
        with pytest.raises(CorruptUpperError, match="not writable"):
            UnionFS([dirs["lower"]], dirs["upper"], dirs["work"])
    finally:
        os.chmod(dirs["work"], 0o700)
    with pytest.raises(ConfigError, match="must not contain each other"):
        UnionFS([dirs["lower"]], dirs["upper"], dirs["upper"] / ".")
    with pytest.raises(ConfigError, match="needs a work directory"):
        UnionFS([dirs["lower"]], dirs["upper"], None)


def test_leftovers_in_work_dir_are_cleaned(dirs: dict[str, Path]) -> None:
    stale = dirs["work"] / "sbx-work" / "t7"
    stale.mkdir(parents=True)
    (stale / "half-copied").write_bytes(b"junk")
    UnionFS([dirs["lower"]], dirs["upper"], dirs["work"])
    assert os.listdir(dirs["work"] / "sbx-work") == []


def test_daemonizes_once_mount_is_ready(dirs: dict[str, Path], unmount_after: None) -> None:
    r = cli("-o", opts(dirs, ",fast_ino=1,noacl,default_permissions"), str(dirs["mnt"]))
    assert r.returncode == 0, r.stderr
    assert is_mounted(dirs["mnt"])
    assert (dirs["mnt"] / "file").read_bytes() == b"lower data"
    (dirs["mnt"] / "new").write_bytes(b"upper data")
    assert (dirs["upper"] / "new").read_bytes() == b"upper data"
    assert not (dirs["lower"] / "new").exists()
    subprocess.run(["fusermount3", "-u", str(dirs["mnt"])], check=True)
    assert not is_mounted(dirs["mnt"])


def test_daemon_death_is_seen_and_mount_goes(dirs: dict[str, Path], unmount_after: None) -> None:
    proc = subprocess.Popen([PY, "-m", "fuse_overlay.cli", "-f", "-o", opts(dirs), str(dirs["mnt"])],
                            env=child_env())
    assert wait_for(lambda: is_mounted(dirs["mnt"]))
    fd = os.open(dirs["mnt"] / "file", os.O_RDONLY)
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        with pytest.raises(OSError) as exc:
            os.pread(fd, 100, 0)
        assert exc.value.errno in (errno.ENOTCONN, errno.EIO, errno.ENODEV)
    finally:
        with contextlib.suppress(OSError):  # close() on a dead connection fails too
            os.close(fd)
    assert wait_for(lambda: not is_mounted(dirs["mnt"]))


def test_sigterm_unmounts_cleanly(dirs: dict[str, Path], unmount_after: None) -> None:
    proc = subprocess.Popen([PY, "-m", "fuse_overlay.cli", "-f", "-o", opts(dirs), str(dirs["mnt"])],
                            env=child_env())
    assert wait_for(lambda: is_mounted(dirs["mnt"]))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert not is_mounted(dirs["mnt"])


def test_python_api_serves_a_premounted_fd(dirs: dict[str, Path]) -> None:
    """What the sandbox does: mount /dev/fuse in its namespace, pass the fd to serve_fd()."""
    worker = NsWorker()
    try:
        fd = worker.fuse_fd(dirs["mnt"])
        script = textwrap.dedent(f"""
            import sys, trio
            from fuse_overlay import UnionFS, IdMap, serve_fd
            fs = UnionFS([{str(dirs['lower'])!r}], {str(dirs['upper'])!r}, {str(dirs['work'])!r},
                         uid_map=IdMap.single({os.getuid()}, 0), gid_map=IdMap.single({os.getgid()}, 0))
            trio.run(serve_fd, fs, {fd})
        """)
        daemon = subprocess.Popen([PY, "-c", script], pass_fds=[fd], env=child_env(), cwd=dirs["work"].parent)
        os.close(fd)
        assert worker.call("read", str(dirs["mnt"] / "file")) == b"lower data"
        st = worker.call("stat", str(dirs["mnt"] / "file"))
        assert (st["st_uid"], st["st_gid"]) == (0, 0)
        worker.call("write", str(dirs["mnt"] / "made-in-box"), b"hi")
        assert (dirs["upper"] / "made-in-box").read_bytes() == b"hi"
        worker.call("umount", str(dirs["mnt"]))
        assert daemon.wait(timeout=10) == 0
    finally:
        worker.close()


def test_help_and_version() -> None:
    assert "lowerdir=" in cli("--help").stdout
    assert cli("--version").stdout.startswith("sbx-overlayfs ")
