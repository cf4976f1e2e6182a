"""Focused tests of sbx-overlayfs semantics, served the way the sandbox does.

Each test mounts /dev/fuse inside a user+mount namespace worker, hands the
descriptor to an ``sbx-overlayfs /dev/fd/N`` daemon, and inspects both the
merged view (through the worker) and the upper on the host.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from overlay_helpers import Daemon, NsWorker


@pytest.fixture(scope="module")
def worker() -> Iterator[NsWorker]:
    w = NsWorker()
    yield w
    w.close()


class Mount:
    def __init__(self, worker: NsWorker, base: Path, lowers: list[Path], extra: str = "",
                 upper: bool = True, opens: bool = False) -> None:
        self.w = worker
        self.base = base
        self.upper = base / "upper"
        self.work = base / "work"
        self.root = base / "merged"
        for d in (self.upper, self.work, self.root):
            d.mkdir(exist_ok=True)
        fd = worker.fuse_fd(self.root)
        self.daemon = Daemon(fd, lowers, self.upper if upper else None, self.work if upper else None, extra, opens)
        self.rc: int | None = None

    def p(self, rel: str = "") -> str:
        return str(self.root / rel) if rel else str(self.root)

    def __getattr__(self, name: str):  # forwards filesystem calls, paths relative to the mount
        def call(rel: str, *args, **kwargs):
            return self.w.call(name, self.p(rel), *args, **kwargs)
        return call

    def rename(self, a: str, b: str) -> None:
        self.w.call("rename", self.p(a), self.p(b))

    def replace(self, a: str, b: str) -> None:
        self.w.call("replace", self.p(a), self.p(b))

    def link(self, a: str, b: str) -> None:
        self.w.call("link", self.p(a), self.p(b))

    def symlink(self, target: str, rel: str) -> None:
        self.w.call("symlink", target, self.p(rel))

    def err(self, name: str, rel: str, *args) -> int:
        return self.w.errno_of(name, self.p(rel), *args)

    def close(self) -> int:
        """Unmount and stop the daemon (once; the fixture calls it again)."""
        if self.rc is None:
            self.w.call("umount", str(self.root))
            self.rc = self.daemon.stop()
            self.w.call("rmtree", str(self.upper))
        return self.rc


@pytest.fixture
def mount(worker: NsWorker, tmp_path: Path) -> Iterator:
    mounts: list[Mount] = []

    def make(lowers: list[Path], extra: str = "", upper: bool = True, opens: bool = False) -> Mount:
        m = Mount(worker, tmp_path / f"m{len(mounts)}", lowers, extra, upper, opens)
        mounts.append(m)
        return m

    for i in range(4):
        (tmp_path / f"m{i}").mkdir()
    yield make
    for m in mounts:
        assert m.close() == 0


def layer(tmp_path: Path, name: str, files: dict[str, bytes | None]) -> Path:
    """Build a lower: bytes make files, None makes directories."""
    root = tmp_path / name
    root.mkdir()
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if data is None:
            p.mkdir(exist_ok=True)
        else:
            p.write_bytes(data)
    return root


def test_merged_listing_deduplicates_and_hides_whiteouts(mount, tmp_path: Path) -> None:
    top = layer(tmp_path, "top", {"d/a": b"top a", "d/only_top": b"1"})
    os.mknod(top / "d/gone", stat.S_IFCHR, 0)
    bottom = layer(tmp_path, "bottom", {"d/a": b"bottom a", "d/gone": b"x", "d/only_bottom": b"2"})
    m = mount([top, bottom])
    assert m.listdir("d") == ["a", "only_bottom", "only_top"]
    # "." and ".." are listed too (os.listdir hides them; ls -a, find and tar read them), with their inodes
    rc, out, _ = m.w.call("run", ["ls", "-a1i", m.p("d")])
    listed = dict(reversed(line.split()) for line in out.decode().splitlines())
    assert rc == 0 and sorted(listed) == [".", "..", "a", "only_bottom", "only_top"]
    assert (int(listed["."]), int(listed[".."])) == (m.stat("d")["st_ino"], m.stat("")["st_ino"])
    assert m.read("d/a") == b"top a"
    assert m.err("stat", "d/gone") == errno.ENOENT


def test_oci_whiteouts_and_opaque_dirs_in_lowers(mount, tmp_path: Path) -> None:
    top = layer(tmp_path, "top", {"etc/.wh.passwd": b"", "opt/.wh..wh..opq": b"", "opt/new": b"n",
                                  "var/.wh.cache": b""})
    bottom = layer(tmp_path, "bottom", {"etc/passwd": b"root", "etc/group": b"g", "opt/old": b"o",
                                        "var/cache/x": b"c", "var/log": None})
    m = mount([top, bottom])
    assert m.listdir("etc") == ["group"]
    assert m.listdir("opt") == ["new"]
    assert m.listdir("var") == ["log"]
    assert m.err("stat", "etc/passwd") == errno.ENOENT
    assert m.err("stat", "etc/.wh.passwd") == errno.ENOENT
    assert m.err("stat", "opt/old") == errno.ENOENT
    # A name reserved for OCI whiteouts cannot be created.
    assert m.err("mkdir", "etc/.wh.x", 0o755) == errno.EINVAL


def test_opaque_xattr_in_lower(mount, tmp_path: Path) -> None:
    top = layer(tmp_path, "top", {"d/new": b"n"})
    os.setxattr(top / "d", "user.overlay.opaque", b"y")
    bottom = layer(tmp_path, "bottom", {"d/old": b"o"})
    m = mount([top, bottom])
    assert m.listdir("d") == ["new"]
    assert "user.overlay.opaque" not in m.listxattr("d")


def test_copy_up_is_atomic_and_keeps_metadata(mount, tmp_path: Path) -> None:
    low = layer(tmp_path, "low", {"dir/f": b"original"})
    os.chmod(low / "dir/f", 0o604)
    os.setxattr(low / "dir/f", "user.keep", b"me")
    os.utime(low / "dir/f", ns=(1_000_000_000, 2_000_000_000))
    os.utime(low / "dir", ns=(3_000_000_000, 4_000_000_000))
    m = mount([low])
    before = m.lstat("dir/f")
    m.write("dir/f", b"more", True)
    after = m.lstat("dir/f")
    assert m.read("dir/f") == b"originalmore"
    assert (low / "dir/f").read_bytes() == b"original"
    assert after["st_ino"] == before["st_ino"]
    assert stat.S_IMODE(after["st_mode"]) == 0o604
    assert m.getxattr("dir/f", "user.keep") == b"me"
    # The parent was copied up too, with its times untouched by the copy-up.
    assert m.lstat("dir")["st_mtime_ns"] == 4_000_000_000
    assert (m.upper / "dir/f").read_bytes() == b"originalmore"
    assert os.listdir(m.work / "sbx-work") == []


def test_chmod_touch_copy_up_only_metadata_objects(mount, tmp_path: Path) -> None:
    low = layer(tmp_path, "low", {"f": b"data", "g": b"data"})
    m = mount([low])
    m.chmod("f", 0o600)
    m.utime("g", ns=(5_000_000_000, 6_000_000_000))
    assert stat.S_IMODE(m.lstat("f")["st_mode"]) == 0o600
    assert m.lstat("g")["st_mtime_ns"] == 6_000_000_000
    assert m.read("g") == b"data"
    assert (m.upper / "g").exists() and stat.S_IMODE(os.stat(low / "f").st_mode) == 0o644


def test_unlink_and_rmdir_leave_whiteouts_and_recreate(mount, tmp_path: Path) -> None:
    low = layer(tmp_path, "low", {"f": b"x", "d/inner": b"y"})
    m = mount([low])
    m.unlink("f")
    assert m.err("stat", "f") == errno.ENOENT
    assert m.err("rmdir", "d") == errno.ENOTEMPTY
    m.unlink("d/inner")
    m.rmdir("d")
    assert m.listdir("") == []
    m.mkdir("d", 0o755)
    assert m.listdir("d") == []  # the new dir is opaque, the lower content stays hidden
    m.write("f", b"new")
    assert m.read("f") == b"new"
    assert (low / "d/inner").exists() and (low / "f").read_bytes() == b"x"


def test_rename_of_lower_directory_moves_whole_tree(mount, tmp_path: Path) -> None:
    top = layer(tmp_path, "top", {"src/a": b"a", "src/sub/b": b"b"})
    bottom = layer(tmp_path, "bottom", {"src/c": b"c", "dst/z": b"behind"})
    m = mount([top, bottom])
    ino = m.lstat("src/sub/b")["st_ino"]
    m.unlink("dst/z")
    m.rename("src", "dst")
    assert m.err("stat", "src") == errno.ENOENT
    assert m.listdir("dst") == ["a", "c", "sub"]
    assert m.read("dst/sub/b") == b"b"
    assert m.lstat("dst/sub/b")["st_ino"] == ino
    m.rename("dst", "again")
    assert m.read("again/c") == b"c"
    assert m.listdir("") == ["again"]


def test_rename_files_and_exchange_flags(mount, tmp_path: Path) -> None:
    low = layer(tmp_path, "low", {"a": b"A", "b": b"B"})
    m = mount([low])
    m.rename("a", "c")
    assert m.listdir("") == ["b", "c"]
    m.replace("c", "b")
    assert m.read("b") == b"A" and m.listdir("") == ["b"]


def test_hard_links_share_inode(mount, tmp_path: Path) -> None:
    low = layer(tmp_path, "low", {"f": b"data"})
    m = mount([low])
    m.link("f", "g")
    f, g = m.lstat("f"), m.lstat("g")
    assert f["st_ino"] == g["st_ino"] and f["st_nlink"] == 2
    m.write("g", b"changed")
    assert m.read("f") == b"changed"
    m.unlink("f")
    assert m.lstat("g")["st_nlink"] == 1
    assert m.read("g") == b"changed"


def test_xattrs_set_listed_and_internal_ones_hidden(mount, tmp_path: Path) -> None:
    low = layer(tmp_path, "low", {"f": b"x"})
    m = mount([low], extra=",whiteout=chardev")
    m.setxattr("f", "user.mine", b"1")
    m.chown("f", 1000, 1000)
    assert m.listxattr("f") == ["user.mine"]
    for name in ("user.sbx.owner", "user.overlay.opaque", "trusted.overlay.opaque"):
        assert m.err("getxattr", "f", name) in (errno.ENODATA, errno.EPERM)
        assert m.err("setxattr", "f", name, b"y") == errno.EPERM
    m.removexattr("f", "user.mine")
    assert m.listxattr("f") == []
    assert os.getxattr(m.upper / "f", "user.sbx.owner") == b"1000:1000:100644:0"


def test_ownership_presentation(mount, tmp_path: Path, worker: NsWorker) -> None:
    if not worker.full_map:
        pytest.fail("newuidmap/newgidmap with a subordinate id range are needed for this test")
    low = layer(tmp_path, "low", {"f": b"x", "d/g": b"y"})
    m = mount([low])
    st = m.lstat("f")
    assert (st["st_uid"], st["st_gid"]) == (0, 0)  # the host user's files are the box's root's
    m.chown("f", 1000, 1001)
    m.chmod("f", 0o4750)
    st = m.lstat("f")
    assert (st["st_uid"], st["st_gid"], stat.S_IMODE(st["st_mode"])) == (1000, 1001, 0o4750)
    host = os.stat(m.upper / "f")
    assert host.st_uid == os.getuid() and not host.st_mode & stat.S_ISUID
    # chmod 000 in the box must not lock the daemon out of its own file.
    m.chmod("f", 0)
    assert stat.S_IMODE(m.lstat("f")["st_mode"]) == 0
    assert m.read("f") == b"x"
    # New files belong to their creator, setgid dirs pass their group on.
    m.chown("d", 0, 50)
    m.chmod("d", 0o2775)
    m.mkdir("d/sub", 0o755)
    sub = m.lstat("d/sub")
    assert sub["st_gid"] == 50 and sub["st_mode"] & stat.S_ISGID
    m.symlink("target", "link")
    m.lchown("link", 7, 8)
    ln = m.lstat("link")
    assert (ln["st_uid"], ln["st_gid"]) == (7, 8)
    # Only 0:0 devices get past the kernel in a user namespace; one made by a
    # nested container tool must stay a visible device, not become our whiteout.
    m.mknod("wh", stat.S_IFCHR | 0o600, 0)
    dev = m.lstat("wh")
    assert stat.S_ISCHR(dev["st_mode"]) and dev["st_rdev"] == 0
    assert "wh" in m.listdir("")
    assert stat.S_ISREG(os.lstat(m.upper / "wh").st_mode)


def test_unmapped_host_ids_can_show_as_overflow(mount, tmp_path: Path) -> None:
    low = layer(tmp_path, "low", {"f": b"x"})
    m = mount([low], extra=",uidmapping=5:4242:1,gidmapping=5:4242:1,unmapped=overflow")
    st = m.lstat("f")
    assert (st["st_uid"], st["st_gid"]) == (65534, 65534)


def test_quota_bytes_and_inodes(mount, tmp_path: Path) -> None:
    low = layer(tmp_path, "low", {"small": b"s" * 10})
    m = mount([low], extra=",quota_bytes=64k,quota_inodes=20")
    m.write("a", b"x" * 40000)
    assert m.err("write", "b", b"y" * 40000) == errno.ENOSPC
    m.unlink("a")
    m.write("c", b"z" * 60000)
    assert m.err("truncate", "c", 1 << 20) == errno.ENOSPC
    m.truncate("c", 0)
    created = 0
    while m.err("mkdir", f"d{created}", 0o755) == 0:
        created += 1
        assert created < 100
    assert m.err("mkdir", "one-more", 0o755) == errno.ENOSPC
    assert 10 < created < 20
    vfs = m.statvfs("")
    assert vfs[2] * vfs[1] == 64 * 1024  # f_blocks * f_frsize
    assert sum(f.stat().st_size for f in m.upper.rglob("*") if f.is_file()) <= 64 * 1024


def test_a_removed_file_held_open_keeps_its_quota(mount, tmp_path: Path) -> None:
    """Unlinking a big file the program still holds open must not free quota the host disk still spends."""
    low = layer(tmp_path, "low", {"small": b"s"})
    m = mount([low], extra=",quota_bytes=64k")
    m.write("a", b"x" * 40000)
    fd = m.w.call("open", m.p("a"), os.O_RDONLY)
    m.unlink("a")
    assert m.err("write", "b", b"y" * 40000) == errno.ENOSPC
    assert m.w.call("pread", fd, 5, 0) == b"xxxxx"
    m.w.call("close", fd)
    for _ in range(100):  # the kernel forgets the closed file asynchronously
        if m.err("write", "b", b"y" * 40000) == 0:
            break
        m.w.call("sleep", 0.05)
    assert m.read("b") == b"y" * 40000


def test_inode_numbers_stable_and_one_device(mount, tmp_path: Path) -> None:
    top = layer(tmp_path, "top", {"a/x": b"1"})
    bottom = layer(tmp_path, "bottom", {"b/y": b"2"})
    m = mount([top, bottom])
    first = {p: m.lstat(p) for p in ("", "a", "a/x", "b", "b/y")}
    assert len({s["st_dev"] for s in first.values()}) == 1
    assert len({s["st_ino"] for s in first.values()}) == 5
    m.write("a/x", b"changed")
    m.rename("a/x", "a/moved")
    assert m.lstat("a/moved")["st_ino"] == first["a/x"]["st_ino"]
    assert m.lstat("b/y")["st_ino"] == first["b/y"]["st_ino"]


def test_read_only_mount_without_upper(mount, tmp_path: Path) -> None:
    low = layer(tmp_path, "low", {"f": b"x"})
    m = mount([low], upper=False)
    assert m.read("f") == b"x"
    assert m.err("write", "g", b"y") == errno.EROFS
    assert m.err("unlink", "f") == errno.EROFS


def test_open_reader_sees_copy_up_writes(mount, tmp_path: Path) -> None:
    low = layer(tmp_path, "low", {"f": b"0123456789"})
    m = mount([low])
    fd = m.w.call("open", m.p("f"), os.O_RDONLY)
    m.write("f", b"abc")
    assert m.w.call("pread", fd, 10, 0) == b"abc"
    m.w.call("close", fd)


def test_special_files_and_symlinks(mount, tmp_path: Path) -> None:
    low = layer(tmp_path, "low", {"f": b"x"})
    os.symlink("f", low / "ln")
    os.mkfifo(low / "fifo")
    m = mount([low])
    assert m.readlink("ln") == "f"
    assert stat.S_ISFIFO(m.lstat("fifo")["st_mode"])
    m.chmod("fifo", 0o600)
    assert stat.S_ISFIFO(os.lstat(m.upper / "fifo").st_mode)
    m.symlink("../somewhere", "new")
    assert m.readlink("new") == "../somewhere"
    m.mknod("pipe", stat.S_IFIFO | 0o644, 0)
    assert stat.S_ISFIFO(m.lstat("pipe")["st_mode"])


def test_statfs_and_fsync(mount, tmp_path: Path) -> None:
    low = layer(tmp_path, "low", {"f": b"x"})
    m = mount([low])
    fd = m.w.call("open", m.p("g"), os.O_WRONLY | os.O_CREAT, 0o644)
    m.w.call("pwrite", fd, b"data", 0)
    m.w.call("fsync", fd)
    m.w.call("close", fd)
    assert m.read("g") == b"data"
    assert m.statvfs("")[8] >= 250  # f_namemax


# -- serving without open requests (shim.c) and with them (fallback) ----------------

BOTH_WAYS = pytest.mark.parametrize("opens", [False, True], ids=["kernel-opens", "daemon-opens"])


def test_the_kernel_serves_warm_opens_and_listings_itself(mount, tmp_path: Path) -> None:
    """Once read, a file and a listing come from the kernel's caches: the daemon is not asked again.

    Lowers must not change under a mount; changing one here shows who answers.
    """
    low = layer(tmp_path, "low", {"d/f": b"cached"})
    m = mount([low], extra=",debug")
    assert m.read("d/f") == b"cached"
    assert m.listdir("d") == ["f"]
    (low / "d" / "f").unlink()
    (low / "d" / "g").write_bytes(b"new")
    assert m.read("d/f") == b"cached"
    assert m.listdir("d") == ["f"]
    assert m.close() == 0
    assert b"open and opendir: served by the kernel" in m.daemon.proc.stderr.read()


def test_without_the_shim_the_daemon_answers_opens(mount, tmp_path: Path) -> None:
    low = layer(tmp_path, "low", {"d/f": b"x"})
    m = mount([low], extra=",debug", opens=True)
    assert m.read("d/f") == b"x"
    assert m.listdir("d") == ["f"]
    assert m.close() == 0
    assert b"open and opendir: requests to the daemon" in m.daemon.proc.stderr.read()


@BOTH_WAYS
def test_o_trunc_truncates_lower_and_upper_files(mount, tmp_path: Path, opens: bool) -> None:
    low = layer(tmp_path, "low", {"f": b"0123456789"})
    m = mount([low], opens=opens)
    fd = m.w.call("open", m.p("f"), os.O_WRONLY | os.O_TRUNC)
    m.w.call("pwrite", fd, b"ab", 0)
    m.w.call("close", fd)
    assert m.read("f") == b"ab"
    assert (m.upper / "f").read_bytes() == b"ab"
    m.write("f", b"xyz123")
    fd = m.w.call("open", m.p("f"), os.O_RDWR | os.O_TRUNC)
    assert m.w.call("fstat", fd)["st_size"] == 0
    m.w.call("close", fd)
    assert (m.upper / "f").read_bytes() == b""
    assert (low / "f").read_bytes() == b"0123456789"


@BOTH_WAYS
def test_removed_files_stay_usable_through_open_descriptors(mount, tmp_path: Path, opens: bool) -> None:
    low = layer(tmp_path, "low", {"lowfile": b"lower data", "d": None})
    m = mount([low], opens=opens)
    m.write("up", b"upper data")
    m.write("over", b"old")
    fd_up = m.w.call("open", m.p("up"), os.O_RDWR)
    fd_low = m.w.call("open", m.p("lowfile"), os.O_RDWR)
    fd_over = m.w.call("open", m.p("over"), os.O_RDONLY)
    m.unlink("up")
    m.unlink("lowfile")
    m.write("new", b"replacement")
    m.rename("new", "over")
    assert m.w.call("pwrite", fd_up, b"UPPER", 0) == 5
    assert m.w.call("pread", fd_up, 100, 0) == b"UPPER data"
    assert m.w.call("fstat", fd_up)["st_size"] == 10
    m.w.call("pwrite", fd_low, b"LOWER", 0)
    assert m.w.call("pread", fd_low, 100, 0) == b"LOWER data"
    assert m.w.call("pread", fd_over, 100, 0) == b"old"
    assert m.read("over") == b"replacement"
    assert sorted(m.listdir("")) == ["d", "over"]
    assert (low / "lowfile").read_bytes() == b"lower data"
    for fd in (fd_up, fd_low, fd_over):
        m.w.call("close", fd)
    leftovers = m.work / "sbx-work"
    for _ in range(100):  # the kernel forgets the inodes asynchronously
        if not any(leftovers.iterdir()):
            break
        m.w.call("sleep", 0.05)
    assert list(leftovers.iterdir()) == []


@BOTH_WAYS
def test_a_listing_stays_exact_while_the_directory_changes(mount, tmp_path: Path, opens: bool) -> None:
    """Each name present throughout is listed once, however the directory changes mid-listing.

    The names are long, so the listing takes many readdir requests; after the
    first 300 names some already listed names go and new ones come.
    """
    names = [f"{i:04d}-" + "x" * 120 for i in range(1500)]
    low = layer(tmp_path, "low", {f"d/{n}": b"" for n in names[:750]})
    m = mount([low], opens=opens)
    for n in names[750:]:
        m.write(f"d/{n}", b"")
    first = m.listdir("d")
    assert first == sorted(names)
    seen = m.scan_while_changing("d", 300, [], [])
    removed = seen[:100]
    added = [f"new-{i}" for i in range(100)]
    seen = m.scan_while_changing("d", 300, removed, added)
    assert len(seen) == len(set(seen))
    assert set(names) - set(removed) <= set(seen)
    assert set(removed) <= set(seen)
    assert sorted(m.listdir("d")) == sorted(set(names) - set(removed) | set(added))


def test_the_end_of_a_listing_is_answered_in_c_until_the_directory_changes(mount, tmp_path: Path) -> None:
    """The kernel reads a directory until a readdir comes back empty: that last one is the shim's once Python
    listed the directory to its end, and Python's again as soon as a name comes or goes (a pass that reads on
    past the old end while names come: test_a_listing_stays_exact_while_the_directory_changes)."""
    names = [f"{i:03d}-" + "y" * 100 for i in range(200)]  # long names: a listing takes several readdirs
    low = layer(tmp_path, "low", {**{f"d{j}/f": b"" for j in range(10)}, **{f"big/{n}": b"" for n in names}})
    m = mount([low], extra=",debug")
    for j in range(10):
        assert m.listdir(f"d{j}") == ["f"]
    assert sorted(m.listdir("big")) == names
    added = [f"new-{i:03d}-" + "z" * 100 for i in range(200)]
    for n in added:
        m.write(f"big/{n}", b"")
    m.unlink(f"big/{names[0]}")
    assert sorted(m.listdir("big")) == sorted(names[1:] + added)
    m.mkdir("d0/sub")
    assert sorted(m.listdir("d0")) == ["f", "sub"]
    assert m.close() == 0
    log = m.daemon.proc.stderr.read().decode()
    ends = int(log.rsplit("readdirs past a listing's end", 1)[0].rsplit("(", 1)[1].split()[0])
    assert ends >= 13, log[-2000:]  # the ten d*, big twice and d0 again


def test_the_shim_opens_lower_files_for_reads_and_keeps_a_bounded_number_open(mount, tmp_path: Path) -> None:
    """A lower file's first read is the shim's: it opens the path Python registered with the attributes.  It keeps
    256 such descriptors, so reading 300 files, dropping their cached pages and reading them again reopens the
    oldest; a file copied up is read from the upper again."""
    files = {f"d/f{i:03d}": f"file {i}\n".encode() * (i + 1) for i in range(300)}
    low = layer(tmp_path, "low", files)
    m = mount([low], extra=",debug")
    for _ in range(2):
        for rel, data in files.items():
            assert m.read(rel) == data
        for rel in files:  # the next reads must reach the daemon
            fd = m.w.call("open", m.p(rel), os.O_RDONLY)
            m.w.call("posix_fadvise", fd, 0, 0, os.POSIX_FADV_DONTNEED)
            m.w.call("close", fd)
    m.write("d/f000", b"changed")
    fd = m.w.call("open", m.p("d/f000"), os.O_RDONLY)
    m.w.call("posix_fadvise", fd, 0, 0, os.POSIX_FADV_DONTNEED)
    assert m.w.call("pread", fd, 100, 0) == b"changed"
    m.w.call("close", fd)
    assert m.close() == 0
    log = m.daemon.proc.stderr.read().decode()
    opened = int(log.rsplit("lower files it opened: ", 1)[1].split()[0])
    assert opened >= 300 + 44, log[-2000:]  # each once, then again the 44 that left the 256


@BOTH_WAYS
def test_the_shim_answers_unchanging_objects_and_lets_changed_ones_go(mount, tmp_path: Path, opens: bool) -> None:
    """getattr and read of lower objects are answered in C; a copy-up takes them back to Python."""
    data = bytes(range(256)) * 8192  # 2 MiB: many read requests
    low = layer(tmp_path, "low", {"big": data, "d/f": b"x"})
    m = mount([low], extra=",debug", opens=opens)
    assert m.read("big") == data
    m.listdir("d")  # readdir leaves d's atime stale: the next stat asks the daemon
    assert stat.S_ISDIR(m.stat("d")["st_mode"])
    m.chmod("big", 0o600)
    assert stat.S_IMODE(m.stat("big")["st_mode"]) == 0o600
    fd = m.w.call("open", m.p("big"), os.O_RDWR)
    m.w.call("pwrite", fd, b"changed", 1 << 20)
    m.w.call("posix_fadvise", fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the next reads must reach the daemon
    m.w.call("close", fd)
    assert m.read("big") == data[:1 << 20] + b"changed" + data[(1 << 20) + 7:]
    assert stat.S_IMODE(m.stat("big")["st_mode"]) == 0o600  # asked again after those reads
    assert (low / "big").read_bytes() == data
    assert m.close() == 0
    log = m.daemon.proc.stderr.read().decode()
    answered = int(log.rsplit("requests answered by the shim without Python: ", 1)[1].split()[0])
    assert (answered == 0) if opens else (answered >= 5), log[-2000:]
