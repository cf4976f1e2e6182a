"""A pooled box's next run sees what a fresh box would, whatever the run before it left behind."""

from __future__ import annotations

import json

from sandbox import Limits, Sandbox, SandboxPool, SetupError, Status

DIRS = ["/box", "/tmp", "/dev/shm", "/scratch"]
# (no memory limit: without cgroup v2 it would refuse the System V segment that the reset must remove)
OPTIONS = {"policy": "permissive", "tmpfs": ["/scratch"], "limits": Limits(wall_time=30, memory=None)}

LEAVE = """
import ctypes, os, sys
rt = ctypes.CDLL("librt.so.1", use_errno=True)
rt.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
libc = ctypes.CDLL(None, use_errno=True)
for d in DIRS:
    open(d + "/leak", "w").write("left\\n")
    cur = os.open(d, os.O_RDONLY)
    for name in ["deep"] + ["d"] * 1200:  # deeper than a recursive cleanup could go
        os.mkdir(name, dir_fd=cur)
        cur, old = os.open(name, os.O_RDONLY, dir_fd=cur), cur
        os.close(old)
    os.chmod(d + "/deep", 0)
    for change in (lambda: os.setxattr(d, "user.leak", b"1"), lambda: os.utime(d, (123456789, 123456789))):
        try:  # (only /box is the program's own)
            change()
        except PermissionError:
            assert d != "/box"
assert rt.mq_open(b"/sbx-leak", os.O_CREAT | os.O_RDWR, 0o600, None) >= 0, ctypes.get_errno()
assert libc.shmget(0, 4096, 0o1600) >= 0  # IPC_PRIVATE, IPC_CREAT | 0600
os.chmod("/box", 0)
print("left")
""".replace("DIRS", repr(DIRS))

PROBE = """
import ctypes, json, os
rt = ctypes.CDLL("librt.so.1", use_errno=True)
rt.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
seen = {}
for d in DIRS:
    st = os.stat(d)
    seen[d] = {"entries": sorted(os.listdir(d)), "mode": oct(st.st_mode), "owner": [st.st_uid, st.st_gid],
               "xattrs": os.listxattr(d), "planted_time": st.st_mtime == 123456789}
queue = rt.mq_open(b"/sbx-leak", os.O_RDONLY, 0, None)
seen["mqueue"] = queue >= 0 or ctypes.get_errno()
seen["sysv"] = {k: open("/proc/sysvipc/" + k).read().splitlines()[1:] for k in ("shm", "sem", "msg")}
print(json.dumps(seen, sort_keys=True))
""".replace("DIRS", repr(DIRS))


async def _probe(box: Sandbox) -> dict[str, object]:
    r = await box.run(["python3", "-c", PROBE], cwd="/")
    assert r.status is Status.OK, r.stderr
    return json.loads(r.stdout)


async def test_a_pooled_box_after_a_run_that_leaves_everything_is_a_fresh_box() -> None:
    async with Sandbox(**OPTIONS) as fresh:
        expected = await _probe(fresh)
    assert expected["mqueue"] != True and all(not expected[d]["entries"] for d in DIRS)  # noqa: E712
    async with SandboxPool(size=1, **OPTIONS) as pool:
        async with pool.acquire() as first:
            box = first
            r = await box.run(["python3", "-c", LEAVE], cwd="/")
            assert (r.status, r.stdout) == (Status.OK, b"left\n"), r.stderr
            seen = await box.run(["sh", "-c", "ls -a /tmp; cat /proc/sysvipc/shm | wc -l"], cwd="/")
            assert seen.stdout.split() == [b".", b"..", b"deep", b"leak", b"2"]  # real before the reset
        async with pool.acquire() as box:
            assert box is first  # reset, not replaced (a box that fails its reset is replaced)
            assert await _probe(box) == expected


async def test_the_pid_counter_carries_nothing_from_run_to_run() -> None:
    """300 processes in one run would move the next run's pids by 300: the reset rewinds the box's pid counter."""
    async with SandboxPool(size=1, **OPTIONS) as pool:
        async with pool.acquire() as box:
            first = await box.run(["sh", "-c", "echo $$; for i in $(seq 300); do /bin/true; done"])
        async with pool.acquire() as box:
            second = await box.run(["sh", "-c", "echo $$"])
    assert first.stdout.split()[0] == second.stdout.strip(), (first.stdout, second.stdout)


async def test_a_box_with_a_union_root_is_not_reset_but_replaced() -> None:
    """Its upper holds whatever the run wrote anywhere in the root (/var/tmp here): no reset can be trusted."""
    async with Sandbox(lowers=["/"], fs="fuse") as box:
        try:
            await box.reset()
        except SetupError as e:
            assert "cannot be reset" in str(e)
        else:
            raise AssertionError("reset of a union box succeeded")
    async with SandboxPool(size=1, lowers=["/"], fs="fuse", policy="default") as pool:
        async with pool.acquire() as box:
            r = await box.run(["sh", "-c", "echo left > /var/tmp/sbx-leak"])
            assert r.status is Status.OK, r.stderr
        async with pool.acquire() as box:
            r = await box.run(["sh", "-c", "cat /var/tmp/sbx-leak"])
            assert r.status is Status.RE and b"No such file" in r.stderr
