"""A root filesystem made of layers (--lower, top first) with a writable upper (--upper)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import anyio

from sandbox import Bind, ConfigError, Sandbox, Status
from sandbox.box.union_daemon import ForkServer

from helpers import host_processes_matching, sbx


def rootfs(base: Path, name: str, files: dict[str, str]) -> Path:
    """A layer; the bottom one also has the merged-/usr symlinks, /usr itself is bound from the host."""
    layer = base / name
    layer.mkdir()
    for rel, text in files.items():
        (layer / rel).parent.mkdir(parents=True, exist_ok=True)
        (layer / rel).write_text(text)
    for d in (layer, *(p for p in layer.rglob("*") if p.is_dir())):
        d.chmod(0o755)
    return layer


def bottom(base: Path) -> Path:
    layer = rootfs(base, "bottom", {"etc/motd": "bottom\n", "etc/only-bottom": "b\n"})
    (layer / "usr").mkdir()
    for link in ("bin", "lib", "lib64", "sbin"):
        (layer / link).symlink_to(f"usr/{link}")
    return layer


USR = [Bind("/usr", "/usr", False)]


@pytest.fixture(params=["kernel", "fuse"])
def fs(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_layers_merge_top_first_and_upper_keeps_writes(tmp_path: Path, fs: str) -> None:
    if fs == "kernel":
        pytest.skip("--fs kernel refuses --upper (test_quotas.py): nothing rootless could cap the host dir")
    low = bottom(tmp_path)
    top = rootfs(tmp_path, "top", {"etc/motd": "top\n"})
    upper = tmp_path / "upper"
    upper.mkdir()
    async with Sandbox(lowers=[str(top), str(low)], upper=str(upper), binds=USR, fs=fs) as box:
        r = await box.run(["sh", "-c", "cat /etc/motd /etc/only-bottom; echo artifact > /box/out.txt"])
    assert r.stdout == b"top\nb\n", r.stderr
    assert (upper / "box" / "out.txt").read_text() == "artifact\n"
    assert (top / "etc" / "motd").read_text() == "top\n"
    assert not any(p.name.startswith(".sbx-work-") for p in tmp_path.iterdir()), "the work dir is removed"


async def test_nothing_reaches_a_lower(tmp_path: Path, fs: str) -> None:
    low = bottom(tmp_path)
    (low / "etc" / "shared").write_text("lower\n")
    (low / "etc" / "shared").chmod(0o666)
    (low / "etc").chmod(0o777)
    before = sorted(str(p.relative_to(low)) for p in low.rglob("*"))
    async with Sandbox(lowers=[str(low)], binds=USR, fs=fs) as box:
        r = await box.run(["sh", "-c", "echo mod >> /etc/shared; rm /etc/only-bottom; mkdir /etc/new; cat /etc/shared"])
        again = await box.run(["sh", "-c", "ls /etc"])
    assert r.stdout == b"lower\nmod\n", r.stderr
    assert b"only-bottom" not in again.stdout and b"new" in again.stdout
    assert (low / "etc" / "shared").read_text() == "lower\n"
    assert sorted(str(p.relative_to(low)) for p in low.rglob("*")) == before


async def test_default_upper_is_capped_by_disk(tmp_path: Path, fs: str) -> None:
    async with Sandbox(lowers=[str(bottom(tmp_path))], binds=USR, disk=1 << 20, fs=fs) as box:
        r = await box.run(["sh", "-c", "head -c 3000000 /dev/zero > /box/big"])
    assert r.status is Status.RE and b"No space left" in r.stderr


def test_union_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--upper needs --lower"):
        Sandbox(upper=str(tmp_path))
    with pytest.raises(ConfigError, match="--lower /nonexistent: No such file or directory"):
        Sandbox(lowers=["/nonexistent"])
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o000)
    with pytest.raises(ConfigError, match="not readable"):
        Sandbox(lowers=[str(locked)])
    with pytest.raises(ConfigError, match="--fs: unknown filesystem 'zfs'"):
        Sandbox(lowers=[str(tmp_path)], fs="zfs")
    r = sbx("run", "--lower", str(tmp_path), "--upper", "/nonexistent", "--", "true")
    assert (r.returncode, r.stderr) == (125, b"sbx: --upper /nonexistent: No such file or directory\n")


def test_cli_union_root(tmp_path: Path) -> None:
    low = bottom(tmp_path)
    upper = tmp_path / "up"
    upper.mkdir()
    r = sbx("run", "--lower", str(low), "--upper", str(upper), "--ro-bind", "/usr", "--",
            "sh", "-c", "cat /etc/motd > /box/copy")
    assert r.returncode == 0, r.stderr
    assert (upper / "box" / "copy").read_text() == "bottom\n"
    assert not any(n.startswith(".sbx-work-") for n in os.listdir(tmp_path))


async def test_file_requests_follow_the_home_box_init_made_not_a_name_the_program_moved(tmp_path: Path) -> None:
    """In a union root with the single id mapping the program owns "/" (the caller's layers), so it can move /box
    away and put a link to /etc in its place.  Box init opened its writable dirs before any program ran: a file
    written to /box lands in the moved dir, not through the link."""
    async with Sandbox(lowers=[str(bottom(tmp_path))], binds=USR, fs="kernel", idmap="single") as box:
        r = await box.run(["sh", "-c", "cd / && mv /box /moved && ln -s /etc /box && echo moved"])
        assert (r.status, r.stdout) == (Status.OK, b"moved\n"), r
        await box.write_file("/box/planted", b"data\n")
        r = await box.run(["sh", "-c", "cat /moved/planted; ls /etc/planted 2>&1 || echo not-in-etc"])
    assert r.stdout.decode().splitlines() == ["data", "ls: cannot access '/etc/planted': No such file or directory",
                                              "not-in-etc"], r


async def test_fuse_daemons_fork_from_one_warm_interpreter(tmp_path: Path) -> None:
    """A box's FUSE daemon is no new interpreter: each is a fork of one server per process, spawned with the first
    (fuse_overlay/forkserver.py), so the boxes after it start without an interpreter's 200-300 ms."""
    lower = bottom(tmp_path)
    parents = []
    for _ in range(2):
        async with Sandbox(lowers=[str(lower)], binds=USR, fs="fuse") as box:
            daemon = box._box.daemons[0]  # type: ignore[union-attr]
            r = await box.run(["cat", "/etc/motd"])
            assert (r.status, r.stdout) == (Status.OK, b"bottom\n")
            parents.append(Path(f"/proc/{daemon.pid}/stat").read_text().split(") ")[1].split()[1])
    server = ForkServer._current
    assert server is not None and parents == [str(server.pid)] * 2
    assert Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")[1:3] == [b"-m", b"fuse_overlay.forkserver"]


async def test_fuse_daemon_death_ends_the_run_ie_and_leaves_nothing(tmp_path: Path) -> None:
    marker = "1000.7531"
    before = set(os.listdir("/tmp"))
    async with Sandbox(lowers=[str(bottom(tmp_path))], binds=USR, fs="fuse") as box:
        daemon = box._box.daemons[0]  # type: ignore[union-attr]

        async def kill_daemon_soon() -> None:
            with anyio.fail_after(10):
                while not host_processes_matching(marker):
                    await anyio.sleep(0.01)
            daemon.kill()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(kill_daemon_soon)
            r = await box.run(["sh", "-c", f"sleep {marker}; ls /etc"])
    assert r.status is Status.IE
    assert "union filesystem daemon died" in r.message
    assert host_processes_matching(marker) == []
    assert set(os.listdir("/tmp")) - before == set(), "the default FUSE upper is removed"
