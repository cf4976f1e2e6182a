"""Each isolation property, attacked from inside the box."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import anyio

from sandbox import Bind, Limits, Sandbox, Status
from sandbox.box.userns import PROGRAM_ID

from helpers import host_processes_matching, sbx


@pytest.fixture(params=[None, "0"], ids=["uid1000", "root"])
def user(request: pytest.FixtureRequest) -> str | None:
    """Every isolation property of the `box` tests holds for root of the box (--user 0) too."""
    return request.param


@pytest.fixture(params=[False, True], ids=["box", "exec"])
def joined(request: pytest.FixtureRequest) -> bool:
    """... and for a process `sbx exec` started in a running detached box."""
    return request.param


def _status_field(text: str, name: str) -> str:
    return next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith(name + ":"))


def test_tests_run_unprivileged_without_capabilities() -> None:
    assert os.getuid() != 0 and os.geteuid() != 0
    status = Path("/proc/self/status").read_text()
    for field in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(_status_field(status, field), 16) == 0, field


ROOT_CAPS = sum(1 << n for n in (0, 1, 3, 4, 5, 6, 7, 8, 10, 18, 31))
"""What root of the box keeps, over its own user namespace only (podman's default set): chown, dac_override,
fowner, fsetid, kill, setgid, setuid, setpcap, net_bind_service, sys_chroot, setfcap."""


async def test_program_has_no_privileges(box: Sandbox, user: str | None) -> None:
    """No capability; or, root of the box, podman's default ones over its own user namespace, of which the box's
    root (box init, the spawner, the mounts) is no part."""
    r = await box.run(["sh", "-c", "cat /proc/self/status; echo ---; cat /proc/self/uid_map"])
    assert r.status is Status.OK
    status, uid_map = r.stdout.decode().split("---\n")
    for field in ("CapPrm", "CapEff", "CapBnd"):
        assert int(_status_field(status, field), 16) == (ROOT_CAPS if user == "0" else 0), field
    for field in ("CapInh", "CapAmb"):
        assert int(_status_field(status, field), 16) == 0, field
    assert _status_field(status, "NoNewPrivs") == "1"
    uid = int(_status_field(status, "Uid").split()[0])
    ids = box._box.ids  # type: ignore[union-attr]
    assert uid == (0 if user == "0" else PROGRAM_ID if ids.mode == "range" else os.getuid())
    if user == "0":  # its 0 is the box's top subordinate id; the box's root (the caller's uid) is not in its map
        assert ids.subuid and uid_map.split() == ["0", str(ids.subuid[1]), "1", "1", "1", str(ids.subuid[1] - 1)]


async def test_program_gets_its_own_host_uid_from_the_subuid_range(box: Sandbox, user: str | None) -> None:
    """Seen from the host, the program is a subordinate uid: neither the caller (box init and the spawner) nor
    root."""
    ids = box._box.ids  # type: ignore[union-attr]
    assert ids.mode == "range" and ids.subuid, "the test user has an /etc/subuid range (useradd gives one)"
    marker = "1000.3579"
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(box.run, ["sleep", marker])
        with anyio.fail_after(10):
            while not host_processes_matching(marker):
                await anyio.sleep(0.01)
        pid = host_processes_matching(marker)[0].split(":")[0]
        host_uids = _status_field(Path(f"/proc/{pid}/status").read_text(), "Uid").split()
        tasks.cancel_scope.cancel()  # (a cancelled run is killed)
    expected = ids.subuid[0] + (ids.subuid[1] if user == "0" else PROGRAM_ID) - 1
    assert host_uids == [str(expected)] * 4 and expected not in (os.getuid(), 0)


async def test_single_id_mapping_also_isolates() -> None:
    async with Sandbox(idmap="single") as box:
        r = await box.run(["sh", "-c", "id -u; grep CapEff /proc/self/status; cat /proc/self/uid_map"])
    lines = r.stdout.decode().split("\n")
    assert lines[0] == str(os.getuid())
    assert lines[1].split()[1] == "0000000000000000"
    assert lines[2].split() == [str(os.getuid()), str(os.getuid()), "1"]


async def test_the_hosts_own_facts_in_proc_are_masked(box: Sandbox) -> None:
    """The kernel's command line, the host's keys and timers read as empty files; /proc/acpi as an empty dir."""
    script = ("for f in /proc/cmdline /proc/keys /proc/key-users /proc/timer_list; do "
              "[ -e $f ] && { cat $f; echo $f $(stat -c %s $f); }; done; ls -A /proc/acpi 2>/dev/null; "
              "echo x > /proc/cmdline || echo refused")
    r = await box.run(["sh", "-c", script])
    assert b"/proc/cmdline 0\n" in r.stdout and r.stdout.endswith(b"refused\n"), (r, r.stderr)
    assert Path("/proc/cmdline").read_bytes().strip() not in r.stdout
    assert all(line.endswith(b" 0") for line in r.stdout.splitlines()[:-1]), r.stdout


async def test_host_files_outside_binds_are_invisible(box: Sandbox, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    r = await box.run(["sh", "-c", f"cat {secret}; ls /home /root /etc/shadow /var"])
    assert b"host secret" not in r.stdout
    assert r.stderr.count(b"No such file or directory") == 5


async def test_system_dirs_are_read_only(box: Sandbox) -> None:
    r = await box.run(["sh", "-c", "touch /usr/sbx-was-here || echo denied; echo x > /etc/passwd || echo denied2;"
                                   "mkdir /newdir || echo denied3"])
    assert r.stdout.split() == [b"denied", b"denied2", b"denied3"]
    assert b"Read-only file system" in r.stderr
    assert not Path("/usr/sbx-was-here").exists()


async def test_work_dir_tmp_and_shm_are_writable_and_private(box: Sandbox) -> None:
    r = await box.run(["sh", "-c", "pwd; echo a > /box/f && echo b > /tmp/f && echo c > /dev/shm/f && cat /box/f /tmp/f"
                                   " /dev/shm/f"])
    assert r.stdout.split() == [b"/box", b"a", b"b", b"c"]
    r2 = await box.run(["cat", "/box/f"])
    assert r2.stdout == b"a\n", "a box keeps its work dir between runs"


async def test_old_root_is_detached_not_hidden(box: Sandbox) -> None:
    r = await box.run(["cat", "/proc/self/mountinfo"])
    mounts = r.stdout.decode()
    assert "oldroot" not in mounts
    assert all(line.split()[4] != "/oldroot" for line in mounts.splitlines())
    assert len(mounts.splitlines()) < 60


async def test_host_processes_are_invisible(box: Sandbox) -> None:
    r = await box.run(["sh", "-c", f"ls /proc | grep -c '^[0-9]'; kill -0 {os.getpid()} && echo reachable"])
    assert int(r.stdout.split()[0]) <= 5  # box init, the stub, sh, ls, grep
    assert b"reachable" not in r.stdout


async def test_program_cannot_kill_the_supervisor_or_the_box(box: Sandbox) -> None:
    r = await box.run(["sh", "-c", f"kill -9 {os.getpid()}; kill -9 1; kill -KILL -1; kill -STOP $PPID || echo denied"])
    assert r.status is Status.OK
    assert r.stdout == b"denied\n", "the spawner (the program's parent) runs as box root, out of the program's reach"
    again = await box.run(["echo", "still here"])
    assert again.stdout == b"still here\n"


async def test_a_program_that_stops_or_kills_its_parent_cannot_wedge_the_box() -> None:
    """In the single mapping the program may signal the spawner: box init continues it, or it is replaced."""
    async with Sandbox(idmap="single") as box:
        r = await box.run(["sh", "-c", "kill -STOP $PPID; sleep 10"], limits=Limits(wall_time=0.3))
        assert r.status is Status.WLE
        assert r.wall_time < 0.5, "continued at once, the spawner itself enforced the limit"
        r = await box.run(["sh", "-c", "kill -STOP $PPID; while :; do :; done"], limits=Limits(cpu_time=0.3))
        assert r.status is Status.TLE
        r = await box.run(["sh", "-c", "while :; do kill -STOP $PPID; done"], limits=Limits(wall_time=0.3))
        assert r.status is Status.WLE
        r = await box.run(["sh", "-c", "kill -KILL $PPID; sleep 10"], limits=Limits(wall_time=5))
        assert r.status is Status.IE and "spawner died" in r.message
        assert r.wall_time < 1
        again = await box.run(["echo", "still here"])
    assert again.stdout == b"still here\n"


async def test_only_loopback_network(box: Sandbox) -> None:
    r = await box.run(["sh", "-c", "cat /proc/net/dev; echo ---; cat /proc/net/route"])
    devices, routes = r.stdout.decode().split("---")
    names = [line.split(":")[0].strip() for line in devices.splitlines()[2:]]
    assert names == ["lo"]
    assert len(routes.strip().splitlines()) <= 1, "no IPv4 route: nothing but loopback is reachable"
    server = (
        "import socket,threading\n"
        "s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen()\n"
        "threading.Thread(target=lambda: s.accept()[0].sendall(b'pong'), daemon=True).start()\n"
        "c=socket.create_connection(s.getsockname()); print(c.recv(4).decode())\n"
    )
    r = await box.run(["python3", "-c", server], limits=Limits(pids=8))
    assert r.stdout == b"pong\n", r.stderr


async def test_net_none_has_no_loopback() -> None:
    async with Sandbox(net="none") as box:
        r = await box.run(["python3", "-c", "import socket; socket.create_connection(('127.0.0.1', 9))"])
    assert r.status is Status.RE
    assert b"Network is unreachable" in r.stderr or b"Cannot assign" in r.stderr


async def test_hostname_ipc_and_session(box: Sandbox) -> None:
    r = await box.run(["sh", "-c", "hostname; cat /proc/self/stat"])
    hostname, stat = r.stdout.decode().splitlines()
    assert hostname == "sbx"
    fields = stat.rsplit(")", 1)[1].split()
    assert fields[4] == "0", "no controlling terminal: TIOCSTI cannot reach the caller's terminal"
    assert int(fields[3]) != os.getsid(0)


def test_a_terminal_nobody_controls_given_as_stdin_does_not_become_the_programs(tmp_path: Path) -> None:
    """A terminal sbx is given (a CI runner's pseudo-terminal, opened by no session leader) stays nobody's
    controlling terminal: as its controlling terminal, the program could push input into it with TIOCSTI for
    whoever reads it after sbx (a shell outside the box).  Every shipped policy kills TIOCSTI; this holds under
    a user's policy that allows it too."""
    import fcntl
    import termios
    policy = tmp_path / "ioctl.toml"
    policy.write_text('inherit = "permissive"\n\n[[rule]]\nsyscalls = ["ioctl"]\naction = "allow"\n')
    master, terminal = os.openpty()
    try:
        probe = ("import fcntl, termios\ntry:\n    fcntl.ioctl(0, termios.TIOCSTI, b'x')\n    print('injected')\n"
                 "except OSError as e:\n    print(e.strerror)")
        r = subprocess.run([sys.executable, "-m", "sandbox", "run", "--policy", str(policy), "--", "python3", "-c",
                            probe], stdin=terminal, capture_output=True, timeout=60)
        assert r.stdout == b"Operation not permitted\n", r
        pending = int.from_bytes(fcntl.ioctl(terminal, termios.FIONREAD, b"\0\0\0\0"), "little")
        assert pending == 0, "nothing was pushed into the terminal's input"
    finally:
        os.close(master)
        os.close(terminal)


async def test_only_standard_fds_and_scrubbed_environment(box: Sandbox) -> None:
    os.environ["SBX_HOST_SECRET"] = "leak"
    try:
        r = await box.run(["sh", "-c", "ls /proc/$$/fd; echo ---; /usr/bin/env"], env={"MINE": "1"},
                          limits=Limits(memory=None))  # (a memory limit adds runtime settings: test_limits.py)
    finally:
        del os.environ["SBX_HOST_SECRET"]
    fds, env = r.stdout.decode().split("---")
    assert fds.split() == ["0", "1", "2"]
    keys = {line.split("=", 1)[0] for line in env.split()}
    assert keys == {"PATH", "HOME", "LANG", "MINE", "PWD"}


async def test_binds(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    rw = tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    rw.chmod(0o777)  # the program runs under its own uid
    (ro / "in.txt").write_text("input\n")
    async with Sandbox(binds=[Bind(str(ro), "/data", False), Bind(str(rw), "/out", True)]) as box:
        r = await box.run(["sh", "-c", "cat /data/in.txt; echo x > /data/new || echo ro; echo result > /out/r"])
    assert r.stdout.split() == [b"input", b"ro"]
    assert (rw / "r").read_text() == "result\n"
    assert not (ro / "new").exists()


async def test_disk_and_inode_limits() -> None:
    async with Sandbox(disk=1 << 20, inodes=64) as box:
        big = await box.run(["sh", "-c", "head -c 2000000 /dev/zero > /box/big"])
        many = await box.run(["sh", "-c", "for i in $(seq 100); do touch /tmp/f$i || exit 9; done"])
    assert big.status is Status.RE and b"No space left on device" in big.stderr
    assert many.exit_code == 9


async def test_nothing_survives_the_run_background_setsid_double_fork(box: Sandbox) -> None:
    marker = "1000.4321"
    script = f"sleep {marker} & setsid sleep {marker} & (sh -c 'sleep {marker} &' &); nohup sleep {marker} &"
    r = await box.run(["sh", "-c", script])
    assert r.status is Status.OK
    assert host_processes_matching(marker) == []


def test_nothing_survives_a_killed_supervisor() -> None:
    marker = "1000.9876"
    cli = subprocess.Popen([sys.executable, "-m", "sandbox", "run", "--", "sh", "-c", f"sleep {marker} & sleep {marker}"])
    deadline = time.monotonic() + 10
    while not host_processes_matching(marker) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert host_processes_matching(marker), "the run started"
    cli.kill()
    cli.wait()
    deadline = time.monotonic() + 5
    while host_processes_matching(marker) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert host_processes_matching(marker) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("way", ["one-shot", "fuse union"])
def test_a_signalled_cli_run_ends_its_box_and_leaves_nothing(tmp_path: Path, signum: int, way: str) -> None:
    """Ctrl-C, or SIGTERM from a CI runner's timeout, ends `sbx run` as a cancellation: the run killed, 128+N,
    one line, an IE record, and no process, mount or temp dir (the FUSE union's scratch) left behind.  Both ways
    a run goes: the one-shot path (no event loop) and the API's (here for the FUSE union's daemon)."""
    marker = f"1000.{signum}{len(way)}77"
    low = tmp_path / "low"
    (low / "usr").mkdir(parents=True)
    for link in ("bin", "lib", "lib64", "sbin"):
        (low / link).symlink_to(f"usr/{link}")
    before_tmp = set(os.listdir("/tmp"))
    before_mounts = Path("/proc/self/mountinfo").read_text()
    union = ["--fs", "fuse", "--lower", str(low), "--ro-bind", "/usr"] if way == "fuse union" else []
    cli = subprocess.Popen([sys.executable, "-m", "sandbox", "run", "--json", str(tmp_path / "r.json"), *union, "--",
                            "sleep", marker], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not any(p.split(": ", 1)[1].startswith("sleep") for p in host_processes_matching(marker)):
        assert time.monotonic() < deadline and cli.poll() is None, "the run started"
        time.sleep(0.02)
    if union:
        assert set(os.listdir("/tmp")) != before_tmp, "the union's scratch dir is there while it runs"
    cli.send_signal(signum)
    _, err = cli.communicate(timeout=30)
    assert cli.returncode == 128 + signum, err
    assert err.decode().splitlines() == [f"sbx: stopped by {signal.Signals(signum).name}: the run was ended and "
                                         "its box removed"]
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "IE"
    assert host_processes_matching(marker) == []
    assert set(os.listdir("/tmp")) == before_tmp
    assert Path("/proc/self/mountinfo").read_text() == before_mounts


def test_a_plain_cli_run_loads_no_event_loop() -> None:
    """`sbx run` with no copies and no FUSE union goes the one-shot way: asyncio and anyio, whose imports cost
    more than building the box (bench/README.md), are not loaded at all; nor is what a start need not pay for:
    dataclasses (record.py), subprocess, shutil, pathlib, ctypes (until a raw syscall is made: syscalls.py),
    OpenSSL's hashlib, or the other commands' modules."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "sandbox", "run", "--policy", "strict", "--",
                        "sh", "-c", "echo out; echo err >&2; exit 3"], capture_output=True, timeout=60)
    lines = r.stderr.decode().splitlines()
    loaded = {line.rpartition("|")[2].strip() for line in lines if line.startswith("import time:")}
    assert (r.returncode, r.stdout, [line for line in lines if not line.startswith("import time:")]) == \
        (3, b"out\n", ["err", "sbx: RE: exited with status 3"])
    assert "sandbox.oneshot" in loaded
    assert not {"asyncio", "anyio", "trio", "sandbox.api", "dataclasses", "subprocess", "shutil", "pathlib",
                "ctypes", "_hashlib", "zipfile", "sandbox.cli.image", "sandbox.cli.judge", "sandbox.cli.serve",
                "sandbox.cli.submit"} & loaded


def test_cli_run_leaves_no_mount_or_temp_dir() -> None:
    before_tmp = set(os.listdir("/tmp"))
    before_mounts = Path("/proc/self/mountinfo").read_text()
    r = sbx("run", "--", "sh", "-c", "echo hi > /box/x; echo hi > /tmp/y")
    assert r.returncode == 0
    assert set(os.listdir("/tmp")) == before_tmp
    assert Path("/proc/self/mountinfo").read_text() == before_mounts


@pytest.mark.parametrize("idmap", ["range", "single"])
async def test_devices(idmap: str) -> None:
    async with Sandbox(idmap=idmap) as box:  # type: ignore[arg-type]
        r = await box.run(["sh", "-c", "head -c 4 /dev/urandom | wc -c; echo x > /dev/null && echo null-ok;"
                                       "ls /dev; python3 -c 'import os; os.openpty(); print(\"pty-ok\")'"])
    out = r.stdout.decode().split()
    assert out[:2] == ["4", "null-ok"]
    assert {"null", "zero", "full", "random", "urandom", "tty", "pts", "ptmx", "shm"} <= set(out)
    assert "sda" not in out and "vda" not in out
    assert out[-1] == "pty-ok", r.stderr


async def test_cancelled_run_leaves_no_process() -> None:
    marker = "1000.2468"
    async with Sandbox() as box:
        with anyio.move_on_after(0.5):
            await box.run(["sleep", marker])
    await anyio.sleep(0.2)
    assert host_processes_matching(marker) == []


@pytest.mark.parametrize(("args", "said"), [
    (["--user", "0", "--idmap", "single"], "--user 0 needs a subordinate id range"),
    (["--user", "5"], "--user 5: 0 (root of the box) or 1000 (the default) are the users a box has"),
    (["--user", "0", "--fs", "kernel", "--lower", "/usr"], "--user 0 with a union root needs --fs fuse"),
])
def test_bad_user_input_is_one_line(args: list[str], said: str) -> None:
    r = sbx("run", *args, "--", "true")
    assert r.returncode == 125 and len(r.stderr.splitlines()) == 1 and said in r.stderr.decode(), r.stderr


def test_the_dry_run_shows_the_programs_own_namespace() -> None:
    r = sbx("run", "--dry-run", "--user", "root", "--", "true")
    assert r.returncode == 0 and b"the program: root of a user namespace of its own (its 0 = box uid" in r.stdout


@pytest.mark.parametrize("user", [None, "0"])
def test_strict_still_holds_for_root_of_the_box(user: str | None) -> None:
    """Root of the box is no way around a policy: strict still kills a second process, default a namespace."""
    as_user = ["--user", user] if user else []
    one = sbx("run", *as_user, "--policy", "strict", "--", "python3", "-c",
              "import os; print(os.getuid(), flush=True); os.fork()")
    assert one.returncode == 137 and one.stderr.decode().splitlines()[-1] == "sbx: SV: clone", one.stderr
    assert one.stdout == (b"0\n" if user else f"{PROGRAM_ID}\n".encode())
    ns = sbx("run", *as_user, "--", "unshare", "-U", "true")
    assert ns.stderr.decode().splitlines()[-1] == "sbx: SV: unshare", ns.stderr
