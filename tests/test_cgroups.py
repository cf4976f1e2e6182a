"""cgroup v2 delegation, on a kernel that has it: exact memory, pids and CPU limits and accounting, rootless.

This machine kind has a v1/v2 hybrid (memory, cpu and pids on v1), so
`tests/guest/run` boots a guest kernel with pure cgroup v2, delegates a
subtree to an unprivileged user the way systemd's Delegate=yes does, and
runs this file there with SBX_REQUIRE_CGROUP=1 (then nothing here may skip).
`./dev test` does that after the host suite.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import anyio

from helpers import build_go_program, build_program, sbx
from sandbox import Bind, Limits, Sandbox, Status
from sandbox.box.cgroups import RunCgroup, delegation, inspect

FOUND = inspect()
REQUIRED = os.environ.get("SBX_REQUIRE_CGROUP") == "1"
pytestmark = pytest.mark.skipif(
    FOUND.base is None and not REQUIRED,
    reason=f"no delegated cgroup v2 here ({FOUND.reason}); tests/guest/run runs this file in a guest kernel "
           "with pure cgroup v2, and ./dev test runs that")
MiB = 2**20


def _ours() -> list[str]:
    """Box cgroups of this process (and of CLI children, `sbx-<pid>-<n>`) left in the delegated tree."""
    base = delegation().base
    assert base is not None, delegation().reason
    return sorted(n for n in os.listdir(base) if n.startswith("sbx-") and n != "sbx-procs")


def _run_cgroups() -> list[str]:
    """Run cgroups left in this process's one box."""
    [box_dir] = _ours()
    return [n for n in os.listdir(Path(delegation().base or "", box_dir)) if n.startswith("run-")]


@pytest.fixture(autouse=True)
def leaves_no_cgroup() -> Iterator[None]:
    yield
    assert _ours() == []


def test_delegation_is_found_and_prepared() -> None:
    found = delegation()
    assert found.base is not None, found.reason
    assert {"memory", "pids"} <= found.controllers
    # the no-internal-processes rule: this process moved into a leaf, the base holds none
    assert Path(found.base, "cgroup.procs").read_text() == ""
    assert open("/proc/self/cgroup").read().strip().endswith("/sbx-procs")
    check = json.loads(sbx("check", "--json").stdout)
    assert check["cgroup_v2"] == {"ok": True, "detail": f"delegated: {found.base} (cpu memory pids)"}


async def test_each_run_has_its_own_cgroup_and_the_box_leaves_none() -> None:
    async with Sandbox(limits=Limits(memory=64 * MiB, pids=8), policy=None) as box:
        first = await box.run(["cat", "/proc/self/cgroup"])
        second = await box.run(["cat", "/proc/self/cgroup"])
        assert first.enforcement["memory"] == "cgroup" and first.enforcement["pids"] == "cgroup"
        # seen from the box's cgroup namespace, rooted at the box's init/: each run is a fresh sibling
        assert (first.stdout, second.stdout) == (b"0::/../run-0\n", b"0::/../run-1\n")
        assert _run_cgroups() == []  # each removed as its run ended


async def test_memory_hog_is_mle_with_the_exact_peak() -> None:
    async with Sandbox(limits=Limits(memory=64 * MiB, wall_time=60), policy=None) as box:
        # tail keeps a line without newlines whole: it grows until the kernel's OOM killer stops it
        r = await box.run(["sh", "-c", "head -c 400M /dev/zero | tail"])
    assert r.status is Status.MLE, r
    assert r.events.get("memory.oom_kill", 0) >= 1
    assert 60 * MiB <= r.memory_peak <= 64 * MiB


async def test_without_memory_peak_the_supervisor_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    """Linux 5.16-5.18 has no memory.peak: the peak is sampled from memory.current during the run."""
    real_init = RunCgroup.__init__

    def without_peak(self: RunCgroup, *args: object) -> None:
        real_init(self, *args)  # type: ignore[arg-type]
        self.has_peak = False

    monkeypatch.setattr(RunCgroup, "__init__", without_peak)
    async with Sandbox(limits=Limits(memory=64 * MiB, wall_time=60), policy=None) as box:
        r = await box.run(["sh", "-c", "head -c 40M /dev/zero | tail; sleep 0.5"])
    assert r.status is Status.OK, r
    assert 30 * MiB <= r.memory_peak <= 64 * MiB


async def test_fork_bomb_is_contained_by_pids_max() -> None:
    count = ["sh", "-c", "ls /proc | grep -c '^[0-9]'"]
    async with Sandbox(limits=Limits(pids=16, wall_time=20), policy=None) as box:
        before = await box.run(count)
        # dash gives up on a failed fork, so the bomb collapses once the limit stops it
        r = await box.run(["sh", "-c", "b() { b & b & wait; }; b"])
        assert r.status is not Status.WLE, r
        assert r.events.get("pids.max", 0) > 0
        assert "the pids limit of 16 refused" in r.message
        after = await box.run(count)
        assert after.stdout == before.stdout  # nothing of the bomb survived
    assert r.proc_peak == 16 and before.proc_peak is not None and before.proc_peak < 16, (r, before)


async def test_root_of_the_box_cannot_lift_its_own_limits() -> None:
    """Root of the box (--user 0) with no seccomp policy at all: a user, cgroup and mount namespace of its own let
    it mount its run's cgroup, but the files there are the caller's on the host, which no namespace of the
    program's maps: it can write none of them, and the memory and pids limits hold."""
    lift = ("unshare -U -r -C -m sh -c 'mount -t cgroup2 none /tmp && ls /tmp/memory.max && "
            "for f in memory.max pids.max cgroup.procs; do echo max > /tmp/$f && echo lifted $f; done'; ")
    async with Sandbox(user="0", limits=Limits(memory=64 * MiB, pids=16, wall_time=60), policy=None) as box:
        hog = await box.run(["sh", "-c", lift + "head -c 400M /dev/zero | tail"])
        bomb = await box.run(["sh", "-c", lift + "b() { b & b & wait; }; b"])
    assert hog.stdout.startswith(b"/tmp/memory.max\n") and b"lifted" not in hog.stdout, hog.stderr
    assert b"Permission denied" in hog.stderr
    assert hog.status is Status.MLE, hog
    assert b"lifted" not in bomb.stdout and bomb.proc_peak == 16 and bomb.events.get("pids.max", 0) > 0, bomb


async def test_the_most_processes_at_once_are_counted() -> None:
    """The record's proc_peak (go-judge's procPeak): the shell, five sleeps at once, and the wait after."""
    async with Sandbox(policy=None) as box:
        r = await box.run(["sh", "-c", "for i in 1 2 3 4 5; do sleep 0.2 & done; wait"])
    assert (r.status, r.proc_peak) == (Status.OK, 6), r


@pytest.fixture(scope="module")
def busy_threads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_program("busy_threads", tmp_path_factory.mktemp("programs"), "-pthread")


@pytest.fixture(scope="module")
def go_alloc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_go_program("go_alloc", tmp_path_factory.mktemp("go"), tmp_path_factory.mktemp("gocache"))


@pytest.fixture(scope="module")
def autoreaped_burn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_program("autoreaped_burn", tmp_path_factory.mktemp("programs"))


async def test_cpu_time_counts_every_thread_and_tle_lands_promptly(busy_threads: Path) -> None:
    limit = 1.0
    async with Sandbox(limits=Limits(cpu_time=limit, wall_time=30), binds=[Bind(str(busy_threads.parent), "/t", False)],
                       policy=None) as box:
        r = await box.run(["/t/busy_threads"])
    assert r.status is Status.TLE, r
    assert r.wall_time < 0.8 * r.cpu_time  # two cores busy: CPU time from every thread, not one
    print(f"TLE kill latency: {(r.cpu_time - limit) * 1000:.1f} ms after a {limit} s limit")
    assert limit <= r.cpu_time < limit + 0.25


async def test_cpu_of_children_the_kernel_reaps_by_itself_is_the_cgroups(autoreaped_burn: Path) -> None:
    """The spawner ends the run from cpu.stat, which counts children no wait4 reports (SIGCHLD ignored)."""
    async with Sandbox(binds=[Bind(str(autoreaped_burn.parent), "/t", False)]) as box:
        r = await box.run(["/t/autoreaped_burn", "3"], limits=Limits(cpu_time=1.0, wall_time=30))
    assert r.status is Status.TLE, (r, r.stdout)
    assert 1.0 <= r.cpu_time < 1.5, "killed near the limit, not at the wall limit"
    assert r.enforcement["cpu_time"] == "cgroup"


async def test_memory_no_process_maps_counts_in_the_cgroup() -> None:
    """memfd contents written with write() are in no process's memory, but in the cgroup's."""
    prog = "import os\nfd = os.memfd_create('x')\nfor _ in range(512): os.write(fd, bytes(1 << 20))\nprint('held')"
    async with Sandbox(policy="strict") as box:
        r = await box.run(["python3", "-c", prog], limits=Limits(memory=64 * MiB, wall_time=30))
        several = await box.run(["sh", "-c", "python3 -c \"import time; x = b'x' * (40 << 20); time.sleep(3)\" & " * 8
                                 + "wait"], limits=Limits(memory=64 * MiB, wall_time=30), policy="default")
    assert r.status is Status.MLE and r.stdout == b"", (r, r.stderr)
    assert several.status is Status.MLE, several


async def test_cpus_caps_bandwidth(busy_threads: Path) -> None:
    async with Sandbox(limits=Limits(cpus=0.5, wall_time=2.0), binds=[Bind(str(busy_threads.parent), "/t", False)],
                       policy=None) as box:
        r = await box.run(["/t/busy_threads"])
    assert r.status is Status.WLE, r
    assert r.enforcement["cpus"] == "cgroup"
    assert 0.6 <= r.cpu_time <= 1.4  # half a core for two seconds, from four spinning threads


async def test_jvm_runs_under_a_256m_limit() -> None:
    async with Sandbox(limits=Limits(memory=256 * MiB, pids=64, wall_time=120), policy=None) as box:
        r = await box.run(["java", "-version"])
    assert r.status is Status.OK, (r, r.stderr)
    assert b"version" in r.stderr
    assert 0 < r.memory_peak <= 256 * MiB


async def test_go_runs_under_a_memory_limit_and_is_mle_past_it(go_alloc: Path) -> None:
    """GOMEMLIMIT (90% of the limit) keeps the collector within it; past it, the cgroup's OOM kill is MLE."""
    async with Sandbox(binds=[Bind(str(go_alloc.parent), "/t", False)]) as box:
        fits = await box.run(["/t/go_alloc", "128"], limits=Limits(memory=256 * MiB, wall_time=60))
        over = await box.run(["/t/go_alloc", "512"], limits=Limits(memory=256 * MiB, wall_time=60))
    assert (fits.status, fits.stdout) == (Status.OK, b"ok 128\n"), (fits, fits.stderr)
    assert over.status is Status.MLE and over.enforcement["memory"] == "cgroup", (over, over.stderr)


VERDICTS = Path(__file__).resolve().parent.parent / "examples" / "verdicts"


@pytest.mark.parametrize("solution", ["sol.cpp", "sol.go"])
def test_every_verdict_where_the_runtime_meets_the_cgroup(solution: str) -> None:
    """MLE from memory.max (Go under its GOMEMLIMIT too), two threads within pids.max, TLE from cpu.stat.

    The time limit is generous: the guest emulates its CPU.  Java and JavaScript are left to the host
    suite: emulated, javac alone takes over a minute of CPU time and V8 misses an 8 s limit.  Their heaps
    are set from the limit on both paths (languages.toml), and test_jvm_runs_under_a_256m_limit runs
    the JVM here.
    """
    r = sbx("judge", str(VERDICTS / "solutions" / solution), "--tests", str(VERDICTS / "tests"), "--time", "8",
            "--memory", "256M", "--json", timeout=900)
    report = json.loads(r.stdout)
    got = {t["name"]: t["status"] for t in report["tests"]}
    assert got == {"ok": "OK", "wa": "WA", "tle": "TLE", "mle": "MLE", "re": "RE", "threads": "OK"}, report


def _run_from_plain_cgroup(env: dict[str, str]) -> dict[str, object]:
    """`sbx run` started in a cgroup the user may enter but does not own (not delegated); its JSON record."""
    plain = os.environ.get("SBX_PLAIN_CGROUP")
    if plain is None:
        pytest.skip("SBX_PLAIN_CGROUP (a cgroup the user may enter but does not own) is set up by tests/guest/run")
    proc = subprocess.run(
        ["sh", "-c", f'echo $$ > {plain}/cgroup.procs && exec "$@"', "sh",
         sys.executable, "-m", "sandbox", "run", "--memory", "64M", "--json", "-", "--", "true"],
        capture_output=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **env}, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_not_delegated_falls_back_to_rlimit_and_says_so() -> None:
    assert _run_from_plain_cgroup({"DBUS_SESSION_BUS_ADDRESS": ""})["enforcement"]["memory"] == "sampled"  # type: ignore[index]


FAKE_SYSTEMD = """#!/bin/sh
# Stands in for the user's systemd: accepts exactly the call rootless podman makes for a
# delegated scope, then does what systemd would: a cgroup owned by the user, holding the pid.
[ "$*" = "--user call org.freedesktop.systemd1 /org/freedesktop/systemd1 org.freedesktop.systemd1.Manager \
StartTransientUnit ssa(sv)a(sa(sv)) $8 fail 2 PIDs au 1 ${14} Delegate b true 0" ] || { echo "bad call: $*" >&2; exit 3; }
case "$8" in sbx-*.scope) ;; *) exit 4 ;; esac
mkdir "$SCOPE" && echo "${14}" > "$SCOPE/cgroup.procs"
"""


def test_not_delegated_asks_systemd_for_a_delegated_scope(tmp_path: Path) -> None:
    base = delegation().base
    assert base is not None
    scope = Path(base, "fake.scope")
    (tmp_path / "busctl").write_text(FAKE_SYSTEMD)
    (tmp_path / "busctl").chmod(0o755)
    try:
        record = _run_from_plain_cgroup({"PATH": f"{tmp_path}:{os.environ['PATH']}", "SCOPE": str(scope),
                                         "DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/fake-bus"})
        assert record["enforcement"] == {"wall_time": "monitor", "memory": "cgroup", "pids": "cgroup", "output": "supervisor",
                                         "file_size": "rlimit", "syscalls": "seccomp:default"}
        assert (scope / "sbx-procs").is_dir()  # the scope is used as a delegated base: processes in a leaf
    finally:
        for d in (scope / "sbx-procs", scope):
            if d.exists():
                d.rmdir()


def test_cgroups_of_a_killed_supervisor_are_removed_by_the_next() -> None:
    cli = subprocess.Popen([sys.executable, "-m", "sandbox", "run", "--", "sleep", "1000"],
                           env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    stale = f"sbx-{cli.pid}-0"
    base = delegation().base
    assert base is not None
    deadline = time.monotonic() + 60
    while not Path(base, stale, "run-0").exists():
        assert time.monotonic() < deadline, "the CLI's run started"
        time.sleep(0.05)
    cli.send_signal(signal.SIGKILL)
    cli.wait()
    assert stale in _ours()
    r = sbx("run", "--", "true")
    assert r.returncode == 0, r.stderr
    assert stale not in _ours()


async def test_cancelled_run_leaves_no_run_cgroup() -> None:
    async with Sandbox(policy=None) as box:
        with anyio.move_on_after(1):
            await box.run(["sleep", "100"])
        assert _run_cgroups() == []
        assert (await box.run(["true"])).status is Status.OK


async def test_the_fuse_daemon_is_charged_to_the_box(tmp_path: Path) -> None:
    """The daemon serving a --lower union works for the box: its memory and CPU go to the box's cgroup."""
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        pytest.fail("/dev/fuse is not usable here")
    low = tmp_path / "low"
    # the box's mount points are there already: the guest's /tmp has no user xattrs (Linux < 6.6), where the
    # daemon keeps what the host cannot hold (a directory made 0555, ids of a range), so the union makes none
    for d in ("usr", "proc", "dev", "tmp", "box"):
        (low / d).mkdir(parents=True)
    for link in ("bin", "lib", "lib64", "sbin"):
        (low / link).symlink_to(f"usr/{link}")
    for d in (tmp_path, low, *(p for p in low.iterdir() if not p.is_symlink())):
        d.chmod(0o755)
    async with Sandbox(lowers=[str(low)], binds=[Bind("/usr", "/usr", False)], fs="fuse", idmap="single") as box:
        daemon = box._box.daemons[0]  # type: ignore[union-attr]
        [box_dir] = _ours()
        charged = Path(delegation().base or "", box_dir, "daemon")
        assert open(f"/proc/{daemon.pid}/cgroup").read().strip().endswith(f"/{box_dir}/daemon")
        before = int((charged / "cpu.stat").read_text().split()[1])
        r = await box.run(["sh", "-c", "for i in $(seq 300); do echo x > /box/f$i; ls /box > /dev/null; done"])
        assert r.status is Status.OK, r.stderr
        assert int((charged / "cpu.stat").read_text().split()[1]) > before
        assert int((charged / "memory.current").read_text()) > 0


async def test_what_exec_runs_is_in_the_boxs_cgroup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sbx exec makes its cgroup in the running box's: the box's accounting (sbx ps) counts what it runs, its limits
    are the cgroup's, and it goes with the box."""
    from sandbox.box.cgroups import box_cgroup_of
    from sandbox.living import detach, state
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir(mode=0o700)
    assert sbx("run", "-d", "--name", "held", "--memory", "64M", "--", "sleep", "600").returncode == 0
    try:
        box_dir = box_cgroup_of(state.status("held").box)
        assert box_dir is not None and os.path.basename(box_dir) in _ours()
        async with Sandbox(join=state.status("held").box, **detach.exec_config("held")) as box:
            [nested] = [n for n in os.listdir(box_dir) if n.startswith("sbx-")]
            hog = await box.run(["python3", "-c", "x = bytearray(200 * 2**20)"])
            assert hog.status is Status.MLE and hog.enforcement["memory"] == "cgroup", hog
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(box.run, ["python3", "-c", "import time; x = bytearray(40 * 2**20); time.sleep(4)"])
                with anyio.fail_after(30):
                    while int(Path(box_dir, "memory.current").read_text()) < 40 * MiB:
                        await anyio.sleep(0.1)
        assert nested not in os.listdir(box_dir)  # the exec's cgroup goes with it
    finally:
        assert sbx("rm", "-f", "held").returncode == 0
    assert not os.path.exists(box_dir)
