"""The box as a plan (plan.py): the steps a layout becomes, as data, before any box is built; `sbx run --dry-run`."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from helpers import host_processes_matching, sbx

from sandbox.box import plan
from sandbox.box.layout import Bind, Layout
from sandbox.box.starter import spawn_starter
from sandbox.box.userns import IdMap, detect
from sandbox.shipped import SPAWNER, STARTER

IDS = IdMap(mode="range", outer_uid=1234, outer_gid=1234, subuid=(200000, 65536), subgid=(200000, 65536))


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A host tree with merged /usr (bin a link), a secret and a few entries of /etc a program needs."""
    (tmp_path / "usr").mkdir()
    (tmp_path / "bin").symlink_to("usr/bin")
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in ("shadow", "ssh", "ld.so.cache", "python3.11", "ssl", "motd"):
        (etc / name).touch()
    return tmp_path


def test_a_box_without_an_image_is_a_fresh_root_of_the_hosts_system_dirs(host: Path) -> None:
    layout = Layout(disk=2**20, inodes=100, binds=(Bind("/data", "/in", False, (1, 2)),), tmpfs=("/scratch",))
    steps = plan.make(layout, IDS, host=str(host))
    kinds = [type(s) for s in steps]
    assert kinds[:2] == [plan.Scratch, plan.TmpfsRoot] and kinds[-3:] == [plan.Pivot, plan.Hostname, plan.Loopback]
    assert kinds.index(plan.ReadOnlyRoot) == len(steps) - 4  # after every mount, before the pivot
    mirrored = {(s.into, s.entry) for s in steps if isinstance(s, plan.Mirror)}
    assert mirrored == {("/", "usr"), ("/", "bin"), ("/etc", "ld.so.cache"), ("/etc", "python3.11"), ("/etc", "ssl")}
    files = {s.path: s.text for s in steps if isinstance(s, plan.File)}
    assert "sbx:x:1000:1000:sandboxed program:/box:/bin/sh" in files["/etc/passwd"].splitlines()
    assert set(files) == {"/etc/passwd", "/etc/group", "/etc/hostname", "/etc/hosts"}
    assert plan.HostBind("/data", "/in", False, (1, 2)) in steps and plan.Tmpfs("/scratch", 2**20, 100) in steps
    proc = next(s for s in steps if isinstance(s, plan.Proc))
    assert "cmdline" in proc.masked and "sysrq-trigger" in proc.readonly


@pytest.mark.parametrize("fs,root", [("kernel", plan.KernelUnion), ("fuse", plan.FuseUnion)])
def test_an_image_box_is_its_union_and_nothing_of_the_hosts(host: Path, fs: str, root: type) -> None:
    layout = Layout(disk=2**20, inodes=100, lowers=("/store/l2", "/store/l1"), fs=fs, loopback=False, home="/w")
    steps = plan.make(layout, IDS, host=str(host))
    assert type(steps[1]) is root and not any(isinstance(s, (plan.Mirror, plan.File, plan.ReadOnlyRoot))
                                              for s in steps)
    assert plan.Writable("/w", True, 1000, 1000, True) in steps and not isinstance(steps[-1], plan.Loopback)


def test_a_plan_goes_to_the_starter_as_tokens(host: Path) -> None:
    """The starter (C) reads each step's fields in order: a tuple as its length then its items, None as ""."""
    layout = Layout(disk=2**20, inodes=100, binds=(Bind("/data", "/in", True, (3, 4)), Bind("/x", "/y", False)),
                    lowers=("/a", "/b"), upper=None, loopback=False)
    tokens = plan.tokens(plan.make(layout, IDS, host=str(host)))
    assert tokens[:8] == ["scratch", str(2**20), "100", "kernel-union", "2", "/a", "/b", ""]
    assert ["bind", "/data", "/in", "1", "2", "3", "4", "bind", "/x", "/y", "0", ""] == \
        tokens[tokens.index("bind"):tokens.index("bind") + 12]
    assert tokens[-3:] == ["pivot", "hostname", "sbx"]


@pytest.mark.parametrize("tokens,said", [
    (["scratch", "1024", "100", "format-the-disk"], "the box's plan has a step the starter does not know: "
                                                     "format-the-disk"),
    (["scratch", "1024"], "the box's plan ends in the middle of a step"),
    (["scratch", "x", "1"], "the box's plan has x where a number goes"),
    (["bind", "/a", "/b", "1", "3", "1", "2", "3"], "the box's plan has a bind identity of 3 numbers"),
])
def test_the_starter_refuses_a_plan_it_cannot_read(tokens: list[str], said: str) -> None:
    """A plan it cannot read is one line from the starter, before it makes any namespace."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    unshared_r, unshared_w = os.pipe()
    mapped_r, mapped_w = os.pipe()
    try:
        pid = spawn_starter(STARTER, SPAWNER, detect("single"), [theirs.fileno(), unshared_w, mapped_r], -1)
    finally:
        for fd in (theirs.detach(), unshared_w, mapped_r):
            os.close(fd)
    ours.sendmsg([os.fsencode("\0".join(tokens) + "\0")])
    reply = json.loads(ours.recv(4096))
    _, status = os.waitpid(pid, 0)
    ours.close()
    for fd in (unshared_r, mapped_w):
        os.close(fd)
    assert (reply, os.waitstatus_to_exitcode(status)) == ({"error": said}, 1)


def test_dry_run_prints_the_plan_and_builds_nothing(tmp_path: Path) -> None:
    marker = "sbx-dry-run-1357"
    r = sbx("run", "--dry-run", "--ro-bind", f"{tmp_path}:/in", "--policy", "strict", "--", "sleep", marker)
    lines = r.stdout.decode().splitlines()
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    assert any(line.endswith(f"read-only bind {tmp_path} -> /in") for line in lines), lines
    assert lines[-1].endswith(f"run sleep {marker} under policy strict") and "pivot_root" in r.stdout.decode()
    assert host_processes_matching(marker) == []
