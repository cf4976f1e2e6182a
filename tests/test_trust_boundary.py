"""Setup, teardown and kept uppers against a hostile layer or program (design rules 1 and 3).

Every test plants what a hostile image or program could, runs the real
command line or API as an unprivileged user, and checks the caller's own
files on the host afterwards.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import Bind, ConfigError, Sandbox, SandboxPool, teardown
from sandbox.api import TeardownWarning
from sandbox.box.supervisor import Box

from helpers import sbx
from test_union_root import USR, bottom


def snapshot(path: Path) -> tuple[int, int, int, bytes | list[str]]:
    """What the host file or directory looks like: mode, owner, group, and its content or its listing."""
    st = os.lstat(path)
    content = path.read_bytes() if stat.S_ISREG(st.st_mode) else sorted(os.listdir(path))
    return st.st_mode, st.st_uid, st.st_gid, content


def victims(base: Path) -> tuple[Path, Path]:
    """A private host file and a private host directory of the caller's."""
    secret = base / "victim-file"
    secret.write_text("secret\n")
    secret.chmod(0o600)
    private = base / "victim-dir"
    private.mkdir()
    (private / "inside").write_text("x\n")
    private.chmod(0o700)
    return secret, private


@pytest.fixture
def scratch_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The TMPDIR the sbx command line makes its scratch uppers in, to see whether they are removed.

    Whatever is left there is removed with tools that neither recurse nor follow links (pytest's own cleanup of
    its temporary dirs would die on a deep tree), so that a failure does not spoil later test sessions.
    """
    d = tmp_path / "tmpdir"
    d.mkdir()
    monkeypatch.setenv("TMPDIR", str(d))
    yield d
    subprocess.run(["chmod", "-R", "u+rwx", str(d)], check=False, capture_output=True)
    subprocess.run(["rm", "-rf", str(d)], check=False, capture_output=True)


# -- setup: mount points inside an untrusted root ----------------------------------------------------------------


@pytest.mark.parametrize(("fs", "idmap"), [("kernel", "single"), ("fuse", "single"), ("kernel", "range"),
                                          ("fuse", "root")])
@pytest.mark.parametrize("kind", ["file", "dir"])
def test_a_box_link_in_a_lower_is_not_followed(tmp_path: Path, fs: str, idmap: str, kind: str) -> None:
    secret, private = victims(tmp_path)
    victim = secret if kind == "file" else private
    before = snapshot(victim)
    low = bottom(tmp_path)
    (low / "box").symlink_to(f"/oldroot{victim}")
    ids = ["--idmap", "range", "--user", "0"] if idmap == "root" else ["--idmap", idmap]
    r = sbx("run", *ids, "--fs", fs, "--lower", str(low), "--ro-bind", "/usr", "--",
            "sh", "-c", "echo hi > /box/out && stat -c '%F %a' /box")
    assert snapshot(victim) == before, "setup changed the caller's file through the layer's link"
    assert (r.returncode, r.stdout) == (0, b"directory 755\n"), r.stderr
    assert os.path.islink(low / "box"), "the lower is never written"


@pytest.mark.parametrize("fs", ["kernel", "fuse"])
def test_links_at_every_mount_point_of_a_union_root(tmp_path: Path, fs: str) -> None:
    """/tmp, /dev, /proc, a bind's and a tmpfs' targets, and /dev/shm inside a /dev that is a plain directory."""
    low = bottom(tmp_path)
    hosts = {}
    for name in ("tmp", "dev", "proc", "opt/bound", "opt/scratch"):
        host = tmp_path / f"host-{name.replace('/', '-')}"
        host.mkdir()
        (host / "mine").write_text("host\n")
        host.chmod(0o750)
        hosts[name] = (host, snapshot(host))
        (low / name).parent.mkdir(exist_ok=True)
        (low / name).symlink_to(f"/oldroot{host}")
    data = tmp_path / "data"
    data.mkdir()
    (data / "given").write_text("given\n")
    script = ("set -e; echo t > /tmp/t; echo s > /opt/scratch/s; cat /opt/bound/given; echo d > /dev/shm/d;"
              "test -c /dev/null; test -r /proc/self/status; cat /tmp/t /opt/scratch/s /dev/shm/d")
    r = sbx("run", "--idmap", "single", "--fs", fs, "--lower", str(low), "--ro-bind", "/usr",
            "--ro-bind", f"{data}:/opt/bound", "--tmpfs", "/opt/scratch", "--", "sh", "-c", script)
    for host, before in hosts.values():
        assert snapshot(host) == before, f"{host} changed"
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"given\nt\ns\nd\n", r.stderr


@pytest.mark.parametrize("fs", ["kernel", "fuse"])
def test_a_non_directory_where_a_mount_point_must_be_is_replaced(tmp_path: Path, fs: str) -> None:
    low = bottom(tmp_path)
    (low / "tmp").write_text("a file where /tmp goes\n")
    os.mkfifo(low / "proc")
    r = sbx("run", "--idmap", "single", "--fs", fs, "--lower", str(low), "--ro-bind", "/usr", "--",
            "sh", "-c", "echo t > /tmp/t && cat /tmp/t && test -r /proc/self/status")
    assert (r.returncode, r.stdout) == (0, b"t\n"), r.stderr
    assert (low / "tmp").read_text() == "a file where /tmp goes\n"


def test_a_kept_upper_that_an_earlier_run_planted_links_in(tmp_path: Path) -> None:
    """(FUSE only: --fs kernel refuses --upper, see test_quotas.py.)"""
    fs = "fuse"
    secret, private = victims(tmp_path)
    before = snapshot(secret), snapshot(private)
    low = bottom(tmp_path)
    upper = tmp_path / "upper"
    upper.mkdir()
    common = ["run", "--idmap", "single", "--fs", fs, "--lower", str(low), "--upper", str(upper), "--ro-bind", "/usr"]
    first = sbx(*common, "--", "sh", "-c", f"cd / && rmdir /box && ln -s /oldroot{secret} /box && "
                                           f"ln -s /oldroot{private} /scratch")
    assert first.returncode == 0, first.stderr
    assert os.path.islink(upper / "box") and os.path.islink(upper / "scratch"), "the earlier run planted its links"
    second = sbx(*common, "--tmpfs", "/scratch", "--", "sh", "-c",
                 "echo again > /box/x && echo s > /scratch/s && cat /box/x && ls /scratch")
    assert (snapshot(secret), snapshot(private)) == before
    assert (second.returncode, second.stdout) == (0, b"again\ns\n"), second.stderr
    assert (upper / "box" / "x").read_text() == "again\n" and not os.path.islink(upper / "box")


def test_a_link_on_the_way_to_a_mount_point_is_refused(tmp_path: Path) -> None:
    """Inside a bind of a host dir (not ours to rewrite), a link where a mount point goes is refused, never followed."""
    _, private = victims(tmp_path)
    before = snapshot(private)
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "sub").symlink_to(private)  # as an earlier run could have planted through this writable bind
    r = sbx("run", "--bind", f"{shared}:/opt/w", "--tmpfs", "/opt/w/sub", "--", "true")
    assert snapshot(private) == before
    assert r.returncode == 125
    assert r.stderr == (b"sbx: /opt/w/sub: cannot create mount point: a symlink is there "
                        b"(links in the root are never followed)\n")


def test_a_link_in_a_union_root_on_the_way_is_refused(tmp_path: Path) -> None:
    _, private = victims(tmp_path)
    before = snapshot(private)
    low = bottom(tmp_path)
    (low / "opt").symlink_to(f"/oldroot{private}")
    r = sbx("run", "--idmap", "single", "--fs", "kernel", "--lower", str(low), "--ro-bind", "/usr",
            "--tmpfs", "/opt/x", "--", "true")
    assert snapshot(private) == before
    assert (r.returncode, r.stderr) == (125, b"sbx: /opt/x: cannot create mount point: /opt is a symlink "
                                             b"(links in the root are never followed)\n")


# -- teardown of the scratch upper ---------------------------------------------------------------------------------


@pytest.mark.parametrize("user", [None, "0"])
def test_cleanup_never_follows_a_link_the_program_planted(tmp_path: Path, scratch_tmp: Path, user: str | None) -> None:
    """In /box; and, root of the box, anywhere in the union's upper, under dirs it locked with mode 000."""
    host = tmp_path / "dir"
    host.mkdir()
    (host / "keep").write_text("keep\n")
    host.chmod(0o755)
    before = snapshot(host)
    low = bottom(tmp_path)
    script = f"ln -s {host} /box/x && mkdir -p /box/a/b && ln -s {host} /box/a/b/y && ln -s {host}/keep /box/a/f"
    if user == "0":
        script += (f" && ln -s {host} /planted && mkdir -p /etc/deep/er && ln -s {host}/keep /etc/deep/er/f && "
                   "chmod 000 /etc/deep/er /etc/deep && chown 1234:1234 /etc/deep")
    r = sbx("run", *(["--user", user] if user else []), "--fs", "fuse", "--lower", str(low), "--ro-bind", "/usr",
            "--", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    assert snapshot(host) == before, "cleanup changed a host directory through a link"
    assert os.listdir(scratch_tmp) == [], "the scratch upper is removed"


def test_the_scratch_upper_of_a_killed_sbx_is_removed_by_the_next(tmp_path: Path, scratch_tmp: Path) -> None:
    """SIGKILL leaves the scratch upper behind; the next sandbox that makes one finds it unlocked and removes it."""
    low = bottom(tmp_path)
    killed = subprocess.Popen([sys.executable, "-m", "sandbox", "run", "--fs", "fuse", "--lower", str(low),
                               "--ro-bind", "/usr", "--", "sh", "-c", "echo x > /box/f; exec sleep 100"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            left = list(scratch_tmp.glob("sbx-union-*/upper/box/f"))
            if left:
                break
            time.sleep(0.1)
        assert left, "the run did not start"
    finally:
        killed.kill()
        killed.wait()
    for _ in range(50):  # its FUSE daemon, which holds the lock too, exits once the box is gone
        r = sbx("run", "--fs", "fuse", "--lower", str(low), "--ro-bind", "/usr", "--", "true")
        assert r.returncode == 0, r.stderr
        if not os.listdir(scratch_tmp):
            break
        time.sleep(0.2)
    assert os.listdir(scratch_tmp) == [], "the killed sbx's scratch upper is still there"


def test_cleanup_of_a_deep_and_locked_tree_keeps_the_record(tmp_path: Path, scratch_tmp: Path) -> None:
    low = bottom(tmp_path)
    record = tmp_path / "record.json"
    script = ("mkdir -p /box/locked/in && chmod 000 /box/locked && mkdir -p /box/ro/x && chmod 500 /box/ro && "
              "cd /box && i=0; while [ $i -lt 1500 ]; do mkdir d && cd d || exit 1; i=$((i+1)); done; echo deep")
    r = sbx("run", "--fs", "fuse", "--lower", str(low), "--ro-bind", "/usr", "--json", str(record), "--",
            "sh", "-c", script, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout == b"deep\n"
    assert json.loads(record.read_text())["status"] == "OK"
    assert os.listdir(scratch_tmp) == [], "the scratch upper is removed"


async def test_a_failed_close_is_a_warning_and_the_rest_is_still_removed(tmp_path: Path, scratch_tmp: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever fails while a box closes, its results stay with the caller and its scratch upper still goes."""
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_tmp))
    close = Box.aclose

    async def failing_close(self: Box) -> None:
        await close(self)
        raise OSError(errno.EBUSY, "Device or resource busy")

    monkeypatch.setattr(Box, "aclose", failing_close)
    with pytest.warns(TeardownWarning, match="closing the box failed: .*busy"):
        async with Sandbox(lowers=[str(bottom(tmp_path))], binds=USR, fs="fuse") as box:
            r = await box.run(["sh", "-c", "echo kept; mkdir -p /box/a/b"])
    assert r.stdout == b"kept\n"
    assert os.listdir(scratch_tmp) == [], "the scratch upper is removed"


def test_removal_follows_no_link_and_needs_neither_stack_nor_fds(tmp_path: Path) -> None:
    """The removal itself, in this process: links to a host dir and file, modes 000 and 500, a FIFO, and a tree
    1500 deep while at most 32 fds may be open."""
    _, private = victims(tmp_path)
    private.chmod(0o755)
    before = snapshot(private)
    top = tmp_path / "scratch"
    (top / "a" / "b").mkdir(parents=True)
    (top / "link").symlink_to(private)
    (top / "a" / "b" / "link").symlink_to(private / "inside")
    os.mkfifo(top / "a" / "fifo")
    (top / "locked" / "in").mkdir(parents=True)
    (top / "locked").chmod(0o000)
    (top / "readonly" / "x").mkdir(parents=True)
    (top / "readonly").chmod(0o500)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(1500):
        os.mkdir("d", dir_fd=fd)
        below = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = below
    os.close(fd)
    made = teardown.identity(str(top))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (32, hard))
    try:
        left = teardown.remove_tree(str(top), made)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert left == []
    assert not os.path.lexists(top)
    assert snapshot(private) == before


def test_removal_leaves_alone_what_sbx_did_not_make(tmp_path: Path) -> None:
    _, private = victims(tmp_path)
    before = snapshot(private)
    link = tmp_path / "scratch"
    link.symlink_to(private)
    assert teardown.remove_tree(str(link)) == [f"{link}: not a directory (left alone)"]
    other = tmp_path / "other"
    other.mkdir()
    assert teardown.remove_tree(str(other), (0, 0)) == [f"{other}: not the directory sbx made there (left alone)"]
    assert other.is_dir() and snapshot(private) == before


# -- one writer per kept upper -------------------------------------------------------------------------------------


async def test_a_kept_upper_has_one_writer_at_a_time(tmp_path: Path) -> None:
    """(FUSE only: --fs kernel refuses --upper, see test_quotas.py.)"""
    fs = "fuse"
    low = bottom(tmp_path)
    upper = tmp_path / "upper"
    upper.mkdir()
    async with Sandbox(lowers=[str(low)], upper=str(upper), binds=USR, fs=fs) as box:
        with pytest.raises(ConfigError, match=f"^--upper {upper}: in use by another sandbox"):
            async with Sandbox(lowers=[str(low)], upper=str(upper), binds=USR, fs=fs):
                pass
        r = sbx("run", "--fs", fs, "--lower", str(low), "--upper", str(upper), "--ro-bind", "/usr", "--", "true")
        assert (r.returncode, r.stderr) == (125, f"sbx: --upper {upper}: in use by another sandbox (an upper "
                                                 f"has one writer at a time)\n".encode())
        assert (await box.run(["sh", "-c", "echo mine > /box/f"])).status == "OK"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".sbx-work-")] == []
    async with Sandbox(lowers=[str(low)], upper=str(upper), binds=USR, fs=fs) as box:  # free again once closed
        r = await box.run(["cat", "/box/f"])
    assert r.stdout == b"mine\n"


async def test_uppers_inside_one_another_are_one_writer_too(tmp_path: Path) -> None:
    """An upper inside a live box's upper, or around it, would let two daemons write the same files."""
    low = bottom(tmp_path)
    outer, inner = tmp_path / "outer", tmp_path / "outer" / "inner"
    inner.mkdir(parents=True)
    async with Sandbox(lowers=[str(low)], upper=str(outer), binds=USR, fs="fuse"):
        with pytest.raises(ConfigError, match=f"^--upper {inner}: inside {outer}, the upper of another sandbox"):
            async with Sandbox(lowers=[str(low)], upper=str(inner), binds=USR, fs="fuse"):
                pass
    async with Sandbox(lowers=[str(low)], upper=str(inner), binds=USR, fs="fuse"):
        with pytest.raises(ConfigError, match=f"^--upper {outer}: in use by another sandbox"):
            async with Sandbox(lowers=[str(low)], upper=str(outer), binds=USR, fs="fuse"):
                pass


def test_an_upper_inside_a_layer_or_a_bind_is_refused(tmp_path: Path) -> None:
    low = bottom(tmp_path)
    (low / "up").mkdir()
    with pytest.raises(ConfigError, match=f"^--upper {low}/up: overlaps --lower {low}"):
        Sandbox(lowers=[str(low)], upper=str(low / "up"), fs="fuse")
    (tmp_path / "up").mkdir()
    with pytest.raises(ConfigError, match=f"^--upper {tmp_path}/up: overlaps --bind {tmp_path}"):
        Sandbox(lowers=[str(low)], upper=str(tmp_path / "up"), binds=[Bind(str(tmp_path), "/x", True)], fs="fuse")


async def test_the_upper_stays_locked_while_its_daemon_lives(tmp_path: Path) -> None:
    """The daemon holds the upper's lock itself: a killed supervisor does not free the upper under a live daemon."""
    low = bottom(tmp_path)
    upper = tmp_path / "upper"
    upper.mkdir()
    async with Sandbox(lowers=[str(low)], upper=str(upper), binds=USR, fs="fuse") as sandbox:
        box = sandbox._box
        assert box is not None and len(box.daemons) == 1
        pid = box.daemons[0].pid
        held = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    assert str(upper) in held


async def test_a_pool_cannot_share_one_upper(tmp_path: Path) -> None:
    low = bottom(tmp_path)
    upper = tmp_path / "upper"
    upper.mkdir()
    with pytest.raises(ConfigError, match="^a pool of 2 boxes cannot share one --upper"):
        SandboxPool(2, lowers=[str(low)], upper=str(upper), binds=USR)
    async with SandboxPool(1, lowers=[str(low)], upper=str(upper), binds=USR) as pool:
        async with pool.acquire() as box:
            assert (await box.run(["true"])).status == "OK"
