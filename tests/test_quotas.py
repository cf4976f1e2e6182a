"""--disk and --inodes over a union root hold whatever the program uses to make files.

Every test runs a hostile program through the real API or command line,
rootless, and then looks at what reached the host: the upper dir a union
wrote, or the FUSE daemon serving it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sandbox import ConfigError, Sandbox, Status

from helpers import sbx
from test_union_root import USR, bottom

KIB = 1024
MIB = 1024 * KIB


def upper_usage(upper: Path) -> tuple[int, int]:
    """(names, bytes) in an upper as the host sees it: every entry, and each object's size and xattrs once."""
    names = used = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(upper):
        for name in dirnames + filenames:
            names += 1
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                used += st.st_size
            if not stat.S_ISLNK(st.st_mode):
                for x in os.listxattr(full, follow_symlinks=False):
                    if not x.startswith(("user.sbx.", "user.overlay.")):
                        used += len(x) + len(os.getxattr(full, x, follow_symlinks=False))
    return names, used


def lower(tmp_path: Path) -> Path:
    """A root layer with a directory /data the program may change, holding two files."""
    low = bottom(tmp_path)
    (low / "data").mkdir(mode=0o777)
    (low / "data").chmod(0o777)
    for name in ("motd", "other"):
        (low / "data" / name).write_text(name)
        (low / "data" / name).chmod(0o666)
    return low


async def fuse_run(tmp_path: Path, script: str, *, disk: int, inodes: int,
                   policy: str = "default") -> tuple[bytes, Path, Status]:
    """Run a Python SCRIPT as the program over a FUSE union with a kept upper; its stdout and the upper."""
    upper = tmp_path / "upper"
    upper.mkdir()
    async with Sandbox(lowers=[str(lower(tmp_path))], upper=str(upper), binds=USR, fs="fuse",
                       disk=disk, inodes=inodes, policy=policy) as box:
        r = await box.run(["python3", "-c", script])
    assert r.status is Status.OK, (r.status, r.stderr)
    return r.stdout, upper, r.status


def counted(stdout: bytes) -> int:
    """The number the hostile program printed last: how many objects it managed to make."""
    return int(stdout.split()[-1])


# -- kernel overlayfs ----------------------------------------------------------------------------------------------

FIFTEEN_MIB_IN_200_FILES = "for i in $(seq 200); do head -c 78643 /dev/zero > /box/f$i; done; true"


def test_kernel_union_upper_never_holds_more_than_disk_and_inodes(tmp_path: Path) -> None:
    low = bottom(tmp_path)
    upper = tmp_path / "up"
    upper.mkdir()
    r = sbx("run", "--fs", "kernel", "--lower", str(low), "--upper", str(upper), "--ro-bind", "/usr",
            "--disk", "1M", "--inodes", "50", "--", "sh", "-c", FIFTEEN_MIB_IN_200_FILES, timeout=120)
    names, used = upper_usage(upper)
    assert used <= MIB and names <= 50, (names, used, r.returncode, r.stderr)


def test_kernel_union_with_a_kept_upper_is_refused_in_one_line(tmp_path: Path) -> None:
    """Kernel overlayfs writes straight into a host upper, which nothing rootless can cap: refused, saying why."""
    low = bottom(tmp_path)
    upper = tmp_path / "up"
    upper.mkdir()
    r = sbx("run", "--fs", "kernel", "--lower", str(low), "--upper", str(upper), "--ro-bind", "/usr", "--", "true")
    assert r.returncode == 125
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1 and "--fs kernel" in lines[0] and "--upper" in lines[0] and "--disk" in lines[0], lines
    with pytest.raises(ConfigError, match="--fs kernel"):
        Sandbox(lowers=[str(low)], upper=str(upper), fs="kernel")
    assert "kernel refuses --upper" in " ".join(sbx("run", "--help").stdout.decode().split())


async def test_kernel_union_scratch_upper_is_capped(tmp_path: Path) -> None:
    """Without --upper the kernel union's upper is on the box's own tmpfs, capped by --disk and --inodes."""
    async with Sandbox(lowers=[str(bottom(tmp_path))], binds=USR, fs="kernel", disk=MIB, inodes=50) as box:
        r = await box.run(["sh", "-c", FIFTEEN_MIB_IN_200_FILES + "; du -sk /box; ls /box | wc -l"])
    kib, entries = r.stdout.split()[-3], r.stdout.split()[-1]
    assert int(kib) <= 1024 and int(entries) <= 50, r.stdout


# -- the FUSE union: each way of making files is charged -------------------------------------------------------------

MAKE_UNTIL_REFUSED = """
import os, sys
def make(i):
{body}
n = 0
try:
    while n < {limit}:
        make(n)
        n += 1
except OSError as e:
    print(os.strerror(e.errno))
print(n)
"""


def hostile(body: str, limit: int, setup: str = "") -> str:
    return setup + MAKE_UNTIL_REFUSED.format(body="\n".join("    " + line for line in body.splitlines()), limit=limit)


async def test_hard_links_are_charged_as_inodes(tmp_path: Path) -> None:
    script = hostile("os.link('/box/f', '/box/l%d' % i)", 20000, setup="open('/box/f', 'w').close()\n")
    out, upper, _ = await fuse_run(tmp_path, script, disk=MIB, inodes=50)
    assert counted(out) < 50 and b"No space left" in out, out
    assert upper_usage(upper)[0] <= 50


async def test_xattrs_are_charged_as_bytes(tmp_path: Path) -> None:
    script = hostile("open('/box/x%d' % i, 'w').close()\nos.setxattr('/box/x%d' % i, 'user.pad', b'p' * 3000)", 100)
    out, upper, _ = await fuse_run(tmp_path, script, disk=64 * KIB, inodes=1000, policy="compile")
    assert 15 < counted(out) < 25 and b"No space left" in out, out
    assert upper_usage(upper)[1] <= 64 * KIB


async def test_xattrs_given_back_when_replaced_removed_or_their_file_goes(tmp_path: Path) -> None:
    script = """
import os
for i in range(200):
    open('/box/f', 'w').close()
    os.setxattr('/box/f', 'user.a', b'a' * 3000)
    os.setxattr('/box/f', 'user.a', b'b' * 3000)
    os.removexattr('/box/f', 'user.a')
    os.setxattr('/box/f', 'user.a', b'c' * 3000)
    os.unlink('/box/f')
print(200)
"""
    out, _, _ = await fuse_run(tmp_path, script, disk=64 * KIB, inodes=1000, policy="compile")
    assert counted(out) == 200


async def test_symlink_targets_are_charged_as_bytes(tmp_path: Path) -> None:
    out, upper, _ = await fuse_run(tmp_path, hostile("os.symlink('t' * 4000, '/box/s%d' % i)", 200),
                                   disk=64 * KIB, inodes=1000)
    assert counted(out) < 17, out
    assert upper_usage(upper)[1] <= 64 * KIB


async def test_directories_and_special_files_are_charged_as_inodes(tmp_path: Path) -> None:
    body = "os.mkdir('/box/d%d' % i)\nos.mkfifo('/box/d%d/p' % i)\nos.symlink('x', '/box/d%d/s' % i)"
    out, upper, _ = await fuse_run(tmp_path, hostile(body, 1000), disk=MIB, inodes=50)
    assert counted(out) < 17, out
    assert upper_usage(upper)[0] <= 50


async def test_sparse_files_and_fallocate_are_charged_by_size(tmp_path: Path) -> None:
    script = """
import os
fd = os.open('/box/sparse', os.O_RDWR | os.O_CREAT)
for what, call in (('write', lambda: os.pwrite(fd, b'x', 1 << 30)), ('truncate', lambda: os.ftruncate(fd, 1 << 30)),
                   ('fallocate', lambda: os.posix_fallocate(fd, 0, 1 << 30))):
    try:
        call()
        print(what, 'ok')
    except OSError as e:
        print(what, e.errno)
print(os.fstat(fd).st_size)
"""
    out, upper, _ = await fuse_run(tmp_path, script, disk=MIB, inodes=50)
    assert b" ok" not in out and counted(out) <= MIB, out
    assert (upper / "box" / "sparse").stat().st_size <= MIB


async def test_a_deleted_file_held_open_keeps_its_quota(tmp_path: Path) -> None:
    script = """
import os
fd = os.open('/box/held', os.O_RDWR | os.O_CREAT)
os.write(fd, b'h' * 700000)
os.unlink('/box/held')
n = 0
try:
    with open('/box/next', 'wb') as f:
        for _ in range(7):
            f.write(b'n' * 100000)
            f.flush()
            n += 1
except OSError as e:
    print(os.strerror(e.errno))
print(n, flush=True)
os.pwrite(fd, b'more', 800000)  # and it may not grow past the quota either
"""
    upper = tmp_path / "upper"
    upper.mkdir()
    async with Sandbox(lowers=[str(bottom(tmp_path))], upper=str(upper), binds=USR, fs="fuse", disk=MIB) as box:
        r = await box.run(["python3", "-c", script])
    assert r.status is Status.RE and b"No space left" in r.stderr, (r.stdout, r.stderr)
    assert counted(r.stdout) <= 3 and b"No space left" in r.stdout, r.stdout


# -- the FUSE union: what is given back is given back exactly once ------------------------------------------------------


async def test_churn_of_names_does_not_use_up_the_quota(tmp_path: Path) -> None:
    """Removing and making names again (over lower files, directories, links) leaves the count where it was."""
    script = """
import os
os.unlink('/data/other')
for i in range(150):
    os.unlink('/data/motd')
    with open('/data/motd', 'w') as f:
        f.write('x' * 1000)
    os.mkdir('/box/d')
    os.rmdir('/box/d')
    os.mkdir('/data/other')
    os.rename('/data/other', '/data/gone.d')
    os.rmdir('/data/gone.d')
    os.link('/data/motd', '/box/l')
    os.rename('/box/l', '/box/m')
    os.unlink('/box/m')
print(150)
"""
    out, upper, _ = await fuse_run(tmp_path, script, disk=64 * KIB, inodes=50)
    assert counted(out) == 150


# -- the FUSE daemon's memory ------------------------------------------------------------------------------------------


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * KIB
    raise AssertionError("no VmRSS")


STORM = """
import os
long = 'n' * 200
for i in range(30000):
    try:
        os.stat('/box/%s%d' % (long, i))
    except FileNotFoundError:
        pass
    try:
        os.stat('/etc/%s%d' % (long, i))
    except FileNotFoundError:
        pass
    p = '/box/%s-%d' % (long, i)
    open(p, 'w').close()
    os.unlink(p)
print('done')
"""


async def test_a_lookup_storm_does_not_grow_the_daemon(tmp_path: Path) -> None:
    """90,000 names that fail or are gone again: the daemon must not keep one of them."""
    async with Sandbox(lowers=[str(bottom(tmp_path))], binds=USR, fs="fuse", inodes=100) as box:
        daemon = box._box.daemons[0]  # type: ignore[union-attr]
        warm = await box.run(["python3", "-c", STORM.replace("30000", "2000")])
        assert warm.stdout == b"done\n", warm.stderr
        before = _rss(daemon.pid)
        r = await box.run(["python3", "-c", STORM])
        after = _rss(daemon.pid)
    assert r.stdout == b"done\n", r.stderr
    assert after - before < 8 * MIB, f"the daemon grew by {(after - before) / MIB:.1f} MiB"
