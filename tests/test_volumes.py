"""Named volumes (`sbx volume`, `--volume NAME:/path[:ro]`): kept between runs, capped, one writer at a time, and
untrusted content that sbx never follows a link of."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers import sbx
from image_helpers import busybox_rootfs
from sandbox import ConfigError, Sandbox, Status, VolumeMount, Volumes


@pytest.fixture(autouse=True)
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's volumes in a store of its own (the CLI finds it through $XDG_DATA_HOME too)."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return tmp_path / "data" / "sbx" / "volumes"


@pytest.mark.parametrize("idmap", ["range", "single"])
def test_a_volume_keeps_a_cache_across_two_jobs(idmap: str, store: Path) -> None:
    """The CI use: a job fills a cache, the next finds it.  A volume made on first use is the program's to write,
    whatever the id mapping."""
    first = sbx("run", "--idmap", idmap, "-v", "cache:/root/.cache", "--", "sh", "-c",
                "mkdir -p /root/.cache/pip/http && echo wheel-1.0 > /root/.cache/pip/http/entry && "
                "chmod 600 /root/.cache/pip/http/entry && stat -c '%u %a' /root/.cache && id -u")
    assert first.returncode == 0, first.stderr
    owner, mode, uid = first.stdout.decode().split()
    assert (owner, mode) == (uid, "755")
    second = sbx("run", "--idmap", idmap, "-v", "cache:/root/.cache:ro", "--", "sh", "-c",
                 "cat /root/.cache/pip/http/entry; stat -c %a /root/.cache/pip/http/entry; "
                 "touch /root/.cache/x || echo refused")
    assert second.returncode == 0, second.stderr
    assert second.stdout.decode().split("\n")[:3] == ["wheel-1.0", "600", "refused"]
    assert b"Read-only file system" in second.stderr
    # on the host: the caller's files, in the volume's data dir
    entry = store / "cache" / "data" / "pip" / "http" / "entry"
    assert entry.read_text() == "wheel-1.0\n" and entry.stat().st_uid == os.getuid()
    listed = json.loads(sbx("volume", "ls", "--json").stdout)
    assert [(v["name"], v["used_bytes"], v["used_inodes"]) for v in listed] == [("cache", 10, 3)]


def test_a_volume_holds_no_more_than_its_caps(store: Path) -> None:
    made = sbx("volume", "create", "--size", "1M", "--inodes", "20", "small")
    assert (made.returncode, made.stdout) == (0, b"small\n"), made.stderr
    r = sbx("run", "-v", "small:/v", "--", "sh", "-c",
            "head -c 2000000 /dev/zero > /v/big; echo $?; ls -l /v/big | awk '{print $5}'; rm /v/big; "
            "i=0; while [ $i -lt 40 ]; do touch /v/f$i 2>/dev/null || break; i=$((i+1)); done; echo $i; "
            "df -k /v | tail -1 | awk '{print $2}'")
    assert r.returncode == 0, r.stderr
    status, size, made_names, total_kib = r.stdout.decode().split()
    assert status != "0" and int(size) <= 2**20, "writing past the size cap fails with ENOSPC"
    assert made_names == "20", "names past the cap are refused"
    assert total_kib == "1024", "df in the box shows the cap"
    assert sum(p.stat().st_size for p in (store / "small" / "data").rglob("*")) == 0
    inspect = json.loads(sbx("volume", "inspect", "small").stdout)
    assert (inspect[0]["size"], inspect[0]["inodes"], inspect[0]["used_inodes"]) == (2**20, 20, 20)


async def test_one_writer_at_a_time_readers_alongside_and_no_removal_in_use(store: Path) -> None:
    async with Sandbox(volumes=[VolumeMount("shared", "/v")]) as writer:
        assert (await writer.run(["sh", "-c", "echo one > /v/f"])).status is Status.OK
        with pytest.raises(ConfigError, match="another box writes to it"):
            async with Sandbox(volumes=[VolumeMount("shared", "/w")]):
                pass
        async with Sandbox(volumes=[VolumeMount("shared", "/v", read_only=True)]) as reader:
            await writer.run(["sh", "-c", "echo two >> /v/f"])
            r = await reader.run(["cat", "/v/f"])
            assert (r.status, r.stdout) == (Status.OK, b"one\ntwo\n")
        removal = sbx("volume", "rm", "shared")
        assert removal.returncode == 125 and removal.stderr.decode().strip() == "sbx: volume shared: in use by a box"
        pruned = sbx("volume", "prune")
        assert (pruned.returncode, pruned.stdout) == (0, b"")
    async with Sandbox(volumes=[VolumeMount("shared", "/w")]) as next_writer:  # the lock went with the box
        assert (await next_writer.run(["cat", "/w/f"])).stdout == b"one\ntwo\n"
    assert sbx("volume", "prune").stdout == b"removed volume shared\n"
    assert not (store / "shared").exists()


def test_what_a_program_plants_in_a_volume_is_never_followed(store: Path, tmp_path: Path) -> None:
    """The volume's files are the program's: links to the caller's files, a mode-000 maze, a link loop.  Listing
    and removing the volume touch none of what they point at, and leave nothing behind."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("the caller's\n")
    r = sbx("run", "-v", "planted:/v", "--", "sh", "-c",
            f"ln -s {victim} /v/dir-link && ln -s {victim}/keep /v/file-link && ln -s loop /v/loop && "
            "mkdir -p /v/a/b/c && touch /v/a/b/c/f && chmod 000 /v/a/b/c /v/a/b /v/a && "
            "mkdir /v/up && ln -s ../.. /v/up/out")
    assert r.returncode == 0, r.stderr
    listed = json.loads(sbx("volume", "inspect", "planted").stdout)[0]
    # every name counted once, none followed (the daemon keeps a mode-000 dir readable for itself, on the host)
    assert (listed["used_inodes"], listed["usage_complete"]) == (9, True)
    removed = sbx("volume", "rm", "planted")
    assert (removed.returncode, removed.stdout) == (0, b"planted\n"), removed.stderr
    assert (victim / "keep").read_text() == "the caller's\n" and sorted(os.listdir(victim)) == ["keep"]
    assert os.listdir(store) == []


@pytest.mark.parametrize(("args", "said"), [
    (["run", "-v", "cache", "--", "true"], "--volume 'cache': expected NAME:/PATH[:ro]"),
    (["run", "-v", "cache:box", "--", "true"], "--volume box: destination must be an absolute path in the box"),
    (["run", "-v", "cache:/c:rx", "--", "true"], "--volume 'cache:/c:rx': expected NAME:/PATH[:ro]"),
    (["run", "--volume=-bad:/c", "--", "true"], "volume '-bad': a name of letters"),
    (["run", "-v", "ok:/proc/x", "--", "true"], "--volume /proc/x: cannot mount over /proc/x"),
    (["run", "-v", "ok:/c", "--cwd", "rel", "--", "true"], "--cwd rel: must be an absolute path in the box"),
    (["volume", "rm", "missing"], "volume missing: no such volume (sbx volume ls lists them)"),
    (["volume", "create", "--size", "lots", "x"], "--size: invalid size 'lots'"),
    (["volume", "create", "../x"], "volume '../x': a name of letters"),
])
def test_bad_volume_input_is_one_line_and_makes_no_volume(args: list[str], said: str, store: Path) -> None:
    r = sbx(*args)
    assert r.returncode == 125 and r.stdout == b""
    assert len(r.stderr.decode().splitlines()) == 1 and said in r.stderr.decode(), r.stderr
    assert not store.exists() or os.listdir(store) == []


def test_a_second_create_is_refused_and_the_dry_run_names_the_mount(store: Path) -> None:
    assert sbx("volume", "create", "twice").returncode == 0
    again = sbx("volume", "create", "twice")
    assert (again.returncode, again.stderr) == (125, b"sbx: volume twice: it already exists\n")
    plan = sbx("run", "--dry-run", "-v", "twice:/data:ro", "-v", f"{store}:/host:ro", "--", "true").stdout.decode()
    assert "read-only volume at /data (a FUSE mount)" in plan and f"read-only bind {store} -> /host" in plan
    assert Volumes().get("twice").size == 2**30


@pytest.mark.parametrize("fs", ["kernel", "fuse"])
def test_an_image_job_keeps_its_cache_in_a_volume_and_a_commit_never_holds_it(fs: str, tmp_path: Path) -> None:
    """A volume over an image's root, on either union; what the job writes there stays out of `--commit`'s layer,
    as a docker volume stays out of `docker commit`."""
    assert sbx("image", "import", str(busybox_rootfs(tmp_path / "root")), "--name", "bb").returncode == 0
    commit = ["--commit", "bb:after"] if fs == "fuse" else []
    r = sbx("run", "--image", "bb", "--fs", fs, *commit, "-v", "cache:/var/cache/job", "--",
            "sh", "-c", "echo cached > /var/cache/job/entry && ls /var/cache/job")
    assert (r.returncode, r.stdout) == (0, b"entry\n"), r.stderr
    again = sbx("run", "--image", "bb", "--fs", fs, "-v", "cache:/var/cache/job", "--", "cat", "/var/cache/job/entry")
    assert again.stdout == b"cached\n", again.stderr
    if fs == "fuse":  # the commit holds neither the volume's files nor the mount point box init made for it
        bare = sbx("run", "--image", "bb:after", "--", "sh", "-c", "ls -A /var/cache; ls /var/cache/job")
        assert bare.stdout == b"" and b"/var/cache/job: No such file or directory" in bare.stderr, bare.stderr


async def test_a_volume_daemon_that_dies_ends_the_run_ie() -> None:
    async with Sandbox(volumes=[VolumeMount("dies", "/v")]) as box:
        daemon = box._box.daemons[0]  # type: ignore[union-attr]
        assert daemon.what == "the daemon of the volume at /v"
        daemon.kill()
        r = await box.run(["sh", "-c", "sleep 0.2; ls /v"])
    assert r.status is Status.IE and "the daemon of the volume at /v died" in r.message
