"""Detached boxes: `sbx run -d`, `ps`, `logs`, `stop`, `start`, `rm`, each box watched by a monitor of its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import host_processes_matching, sbx
from image_helpers import busybox_rootfs
from test_network import PROBE, _stacks, host_server  # noqa: F401 - host_server is a fixture

TICKS = "trap 'echo got TERM; exit 3' TERM; echo hello; i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.2; done"


@pytest.fixture(autouse=True)
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The boxes' state in a runtime dir of the test's own (and the image store, for image boxes); whatever a
    test leaves running, failed or not, is stopped and removed after it."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    (tmp_path / "run").mkdir(mode=0o700)
    boxes = tmp_path / "run" / "sbx" / "boxes"
    yield boxes
    for name in os.listdir(boxes) if boxes.exists() else []:
        sbx("rm", "-f", name)
    networks = tmp_path / "run" / "sbx" / "networks"
    for name in os.listdir(networks) if networks.exists() else []:
        sbx("network", "rm", name)


def tar_text(path: Path, name: str) -> bytes:
    with tarfile.open(path) as tar:
        member = tar.extractfile(name)
        assert member is not None
        return member.read()


def wait_for(check, what: str, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def ps(*args: str) -> dict[str, dict]:  # type: ignore[type-arg]
    return {b["name"]: b for b in json.loads(sbx("ps", "--json", *args).stdout)}


def test_a_detached_box_runs_logs_stops_starts_and_is_removed(runtime: Path) -> None:
    r = sbx("run", "-d", "--name", "ticker", "--", "sh", "-c", TICKS)
    assert (r.returncode, r.stdout) == (0, b"ticker\n"), r.stderr
    assert ps()["ticker"]["state"] == "running" and ps()["ticker"]["command"] == ["sh", "-c", TICKS]
    wait_for(lambda: b"tick 2" in sbx("logs", "ticker").stdout, "the log grows as the program prints")
    before = sbx("logs", "ticker").stdout
    assert before.startswith(b"hello\ntick 1\n")
    cut = time.time()
    wait_for(lambda: b"tick 6" in sbx("logs", "ticker").stdout, "more comes")
    later = sbx("logs", "--since", str(cut), "ticker").stdout  # from the first output after the cut on
    everything = sbx("logs", "--since", "1h", "ticker").stdout
    assert later and everything.endswith(later) and everything.startswith(before)
    assert later.split(b"\n")[0] not in before.split(b"\n"), (before, later)
    follow = subprocess.Popen([sys.executable, "-m", "sandbox", "logs", "-f", "ticker"], stdout=subprocess.PIPE)
    stopped = sbx("stop", "-t", "5", "ticker")
    assert (stopped.returncode, stopped.stdout) == (0, b"ticker\n"), stopped.stderr
    followed, _ = follow.communicate(timeout=30)  # -f ends with the box, having printed all of it
    assert followed.startswith(b"hello\n") and followed.endswith(b"got TERM\n")
    box = ps("-a")["ticker"]
    assert (box["state"], box["exit_status"]) == ("exited", 3) and ps() == {}
    record = json.loads((runtime / "ticker" / "record.json").read_text())
    assert record["status"] == "RE" and record["exit_code"] == 3 and record["wall_time"] > 0
    assert sbx("start", "ticker").returncode == 0 and ps()["ticker"]["state"] == "running"
    again = sbx("run", "-d", "--name", "ticker", "--", "true")
    assert (again.returncode, again.stderr) == (125, b"sbx: box ticker: the name is in use (sbx rm ticker frees "
                                                     b"it)\n")
    refused = sbx("rm", "ticker")
    assert refused.returncode == 125 and b"it is running" in refused.stderr
    assert sbx("rm", "-f", "ticker").stdout == b"ticker\n" and ps("-a") == {}
    assert not (runtime / "ticker").exists()


def test_a_killed_monitor_leaves_nothing_and_ps_says_dead(runtime: Path) -> None:
    marker = "1000.86420"
    assert sbx("run", "-d", "--name", "victim", "--", "sh", "-c", f"sleep {marker}").returncode == 0
    wait_for(lambda: host_processes_matching(marker), "the program runs")
    monitor = ps()["victim"]
    os.kill(json.loads((runtime / "victim" / "state.json").read_text())["monitor"], signal.SIGKILL)
    wait_for(lambda: not host_processes_matching(marker), "the box dies with its monitor")
    box = ps("-a")["victim"]
    assert monitor["state"] == "running" and box["state"] == "dead" and "killed" in box["message"]
    assert sbx("stop", "victim").stderr == b"sbx: box victim: not running (dead)\n"
    assert sbx("rm", "victim").returncode == 0 and not (runtime / "victim").exists()


def test_limits_and_secrets_hold_for_a_detached_box(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("tok-6e1f0a")
    assert sbx("run", "-d", "--name", "hog", "--memory", "64M", "--secret", f"id=t,src={token}", "--",
               "sh", "-c", "cat /run/secrets/t; echo; head -c 400M /dev/zero | tail").returncode == 0
    wait_for(lambda: ps("-a")["hog"]["state"] == "exited", "the hog ends", 60)
    box = ps("-a")["hog"]
    assert box["message"].startswith("MLE") and box["exit_status"] == 137, box
    log = sbx("logs", "hog").stdout
    assert log.startswith(b"***\n") and b"tok-6e1f0a" not in log


def test_an_image_box_keeps_its_files_across_stop_and_start(tmp_path: Path, runtime: Path) -> None:
    assert sbx("image", "import", str(busybox_rootfs(tmp_path / "root")), "--name", "bb").returncode == 0
    script = "cat /etc/kept 2>/dev/null || echo first-run; echo kept > /etc/kept; while :; do sleep 1; done"
    assert sbx("run", "-d", "--name", "keeper", "--image", "bb", "--user", "0", "--", "sh", "-c",
               script).returncode == 0
    wait_for(lambda: b"first-run" in sbx("logs", "keeper").stdout, "the first run writes")
    as_root = sbx("exec", "keeper", "sh", "-c", "id -u; touch /etc/by-exec; stat -c %u /etc/by-exec /etc/kept")
    assert as_root.stdout == b"0\n0\n0\n", as_root.stderr  # exec is root of the box too, over the same files
    assert sbx("stop", "-t", "0", "keeper").returncode == 0
    assert sbx("start", "keeper").returncode == 0
    wait_for(lambda: b"kept" in sbx("logs", "keeper").stdout, "the second run finds the file")
    refused = sbx("export", "keeper", "-o", str(tmp_path / "x.tar"))
    assert refused.stderr == b"sbx: box keeper: it is running (sbx stop keeper first)\n"
    assert sbx("stop", "-t", "0", "keeper").returncode == 0
    out = tmp_path / "keeper.tar"
    exported = sbx("export", "keeper", "-o", str(out))
    assert exported.returncode == 0, exported.stderr
    with tarfile.open(out) as tar:  # the image's files and the box's, as one tree, with the box's owners
        names = {m.name: m for m in tar}
    assert names["etc/kept"].uid == 0 and names["etc/by-exec"].uid == 0 and "etc/motd" in names
    assert tar_text(out, "etc/kept") == b"kept\n" and names["bin/busybox"].isfile()
    assert sbx("rm", "keeper").returncode == 0 and not (runtime / "keeper").exists()


def test_an_export_killed_midway_leaves_no_mount(tmp_path: Path) -> None:
    assert sbx("image", "import", str(busybox_rootfs(tmp_path / "root")), "--name", "bb").returncode == 0
    assert sbx("run", "-d", "--name", "big", "--image", "bb", "--user", "0", "--", "sh", "-c",
               "dd if=/dev/urandom of=/big bs=1M count=200").returncode == 0
    wait_for(lambda: ps("-a")["big"]["state"] == "exited", "the box writes its file", 60)
    assert ps("-a")["big"]["exit_status"] == 0

    def mounted() -> bool:
        return str(tmp_path) in Path("/proc/self/mountinfo").read_text()

    export = subprocess.Popen([sys.executable, "-m", "sandbox", "export", "big", "-o", str(tmp_path / "big.tar")])
    wait_for(lambda: mounted() or export.poll() is not None, "the export mounts the box's files")
    export.kill()
    export.wait()
    wait_for(lambda: not mounted(), "the mount goes with the export that was killed")
    again = sbx("export", "big", "-o", str(tmp_path / "big.tar"), timeout=120)
    assert again.returncode == 0 and (tmp_path / "big.tar").stat().st_size > 200 * 2**20, again.stderr
    assert not mounted() and not list((tmp_path / "data").rglob("export-*"))  # the killed one's dir went too


@pytest.mark.parametrize(("args", "said"), [
    (["run", "-d", "--copy-in", "a:b", "--", "true"], "sbx: run -d: --copy-in is for a run that sbx waits for"),
    (["run", "-d", "--name", "../x", "--", "true"], "sbx: box name '../x': letters, digits"),
    (["run", "-d", "--name", "bad", "--memory", "lots", "--", "true"], "sbx: --memory: invalid size 'lots'"),
    (["logs", "nothere"], "sbx: box nothere: no such box (sbx ps -a lists them)"),
    (["logs", "--since", "yesterday", "x"], "sbx: --since 'yesterday': expected a duration (10m, 1h30m)"),
    (["stop", "nothere"], "sbx: box nothere: no such box (sbx ps -a lists them)"),
])
def test_bad_input_is_one_line_and_leaves_no_box(args: list[str], said: str, runtime: Path) -> None:
    r = sbx(*args)
    assert r.returncode == 125 and len(r.stderr.splitlines()) == 1 and said in r.stderr.decode(), r.stderr
    assert not runtime.exists() or os.listdir(runtime) == []


def test_a_corrupt_state_file_is_one_line(runtime: Path) -> None:
    assert sbx("run", "-d", "--name", "c", "--", "true").returncode == 0
    wait_for(lambda: ps("-a")["c"]["state"] == "exited", "it ends")
    (runtime / "c" / "state.json").write_text("{not json")
    r = sbx("ps", "-a")
    assert r.returncode == 125 and r.stderr.decode().startswith("sbx: box c: its state.json cannot be read")


def test_a_program_that_cannot_be_executed_is_refused_by_run_d_and_by_start(tmp_path: Path, runtime: Path) -> None:
    """The box starts and its program cannot: `run -d` says so as `sbx run` does (127), and frees the name."""
    r = sbx("run", "-d", "--name", "nope", "--", "/no/such/program")
    assert (r.returncode, r.stdout, r.stderr) == (127, b"", b"sbx: /no/such/program: No such file or directory\n")
    assert ps("-a") == {} and os.listdir(runtime) == []
    prog = tmp_path / "bin" / "prog"
    prog.parent.mkdir()
    prog.write_text("#!/bin/sh\nexec sleep 600\n")
    prog.chmod(0o755)
    assert sbx("run", "-d", "--name", "later", "--ro-bind", f"{prog.parent}:/opt/bin", "--",
               "/opt/bin/prog").stdout == b"later\n"
    assert sbx("stop", "-t", "0", "later").returncode == 0
    prog.unlink()  # its program gone: `start` says why too, and the box stays, exited, with the reason
    again = sbx("start", "later")
    assert (again.returncode, again.stderr) == (127, b"sbx: /opt/bin/prog: No such file or directory\n")
    box = ps("-a")["later"]
    assert (box["state"], box["exit_status"]) == ("exited", 127) and "/opt/bin/prog" in box["message"], box


def test_exec_runs_in_the_box_under_its_policy_and_limits_and_ends_with_its_processes(runtime: Path) -> None:
    assert sbx("run", "-d", "--name", "svc", "--memory", "64M", "--env", "GREETING=hi", "--", "sh", "-c",
               "echo data > /box/shared; while :; do sleep 1; done").returncode == 0
    wait_for(lambda: ps()["svc"]["state"] == "running", "it runs")
    marker = "1000.97531"
    r = subprocess.run([sys.executable, "-m", "sandbox", "exec", "svc", "sh", "-c",
                        f"cat /box/shared; echo $GREETING; read line; echo got $line; id -u; sleep {marker} & "
                        "kill -9 1 || echo init-out-of-reach; exit 4"], input=b"typed\n", capture_output=True,
                       timeout=60)
    assert r.returncode == 4 and r.stdout.decode().split("\n")[:5] == ["data", "hi", "got typed", "1000",
                                                                       "init-out-of-reach"], r.stderr
    assert host_processes_matching(marker) == []  # what exec started ended with it
    hog = sbx("exec", "svc", "sh", "-c", "head -c 400M /dev/zero | tail")
    assert hog.returncode == 137 and hog.stderr.decode().splitlines()[-1].startswith("sbx: MLE"), hog.stderr
    ns = sbx("exec", "svc", "unshare", "-U", "true")
    assert ns.stderr.decode().splitlines()[-1] == "sbx: SV: unshare", ns.stderr
    monitor = json.loads((runtime / "svc" / "state.json").read_text())["monitor"]
    reach = sbx("exec", "svc", "sh", "-c", f"kill -9 {monitor} {os.getpid()} 2>/dev/null || echo out-of-reach; "
                "cat /proc/[0-9]*/comm")  # (the glob is expanded before cat starts)
    assert reach.stdout.split() == [b"out-of-reach", b"sh"], reach  # its /proc: itself (the spawner is hidden)
    assert ps()["svc"]["state"] == "running"  # none of it touched the box's own program or its monitor
    assert sbx("exec", "svc", "cat", "/box/shared").stdout == b"data\n"
    running = [subprocess.Popen([sys.executable, "-m", "sandbox", "exec", "svc", "sh", "-c", "echo in; sleep 60"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(6)]
    for r in running:  # more execs at once than anything needs, each in
        assert r.stdout is not None and r.stdout.readline() == b"in\n"
    sbx("stop", "-t", "0", "svc")
    for r in running:  # the box stopped under them: each ends, saying so
        out, err = r.communicate(timeout=30)
        assert r.returncode == 125 and err.decode().splitlines()[-1] == \
            "sbx: IE: run stopped: the box stopped, or the program killed its spawner", err
    assert host_processes_matching("sleep 60") == []
    stopped = sbx("exec", "svc", "true")
    assert (stopped.returncode, stopped.stderr) == (125, b"sbx: box svc: not running (exited)\n")


def test_attach_prints_what_comes_until_the_box_ends() -> None:
    assert sbx("run", "-d", "--name", "talker", "--", "sh", "-c",
               "echo before; sleep 3; echo after; sleep 0.3; echo last").returncode == 0
    wait_for(lambda: b"before" in sbx("logs", "talker").stdout, "it starts")
    attached = sbx("attach", "talker", timeout=30)
    assert attached.returncode == 0 and attached.stdout == b"after\nlast\n", attached
    assert sbx("attach", "talker").stderr == b"sbx: box talker: not running (exited)\n"


def test_a_detached_redis_is_reached_by_name_on_its_network_and_keeps_its_data(debian_rootfs: Path) -> None:
    """The issue's service: Debian's redis-server, detached in a Debian image on a network, its data on a volume; a
    job box of the same image on the same network reaches it by name (redis-cli ping, set, get), and after stop and
    start the data is still there."""
    assert sbx("image", "import", str(debian_rootfs), "--name", "debian:12", timeout=300).returncode == 0
    assert sbx("network", "create", "ci").stdout == b"ci\n"
    server = ["--", "redis-server", "--port", "6379", "--dir", "/data", "--appendonly", "yes", "--save", ""]
    started = sbx("run", "-d", "--name", "db", "--image", "debian:12", "--network", "ci", "-v", "dbdata:/data",
                  *server)
    assert started.returncode == 0, started.stderr
    cli = ["run", "--image", "debian:12", "--network", "ci", "--", "redis-cli", "-h", "db"]
    wait_for(lambda: sbx(*cli, "ping").stdout == b"PONG\n", "redis answers by name", 60)
    assert sbx(*cli, "set", "answer", "42").stdout == b"OK\n"
    assert sbx("stop", "db").returncode == 0 and sbx(*cli, "ping").stdout != b"PONG\n"
    assert sbx("start", "db").returncode == 0
    wait_for(lambda: sbx(*cli, "ping").stdout == b"PONG\n", "redis answers again", 60)
    assert sbx(*cli, "get", "answer").stdout == b"42\n"
    assert b"Ready to accept connections" in sbx("logs", "db").stdout
    assert sbx("rm", "-f", "db").returncode == 0 and sbx("network", "rm", "ci").returncode == 0
    assert sbx("volume", "rm", "dbdata").returncode == 0


def test_a_network_reaches_nothing_of_the_host() -> None:
    import socket
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        assert sbx("network", "create", "closed").returncode == 0
        r = sbx("run", "--network", "closed", "--", "python3", "-c",
                f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3)")
        assert r.returncode != 0 and b"ConnectionRefusedError" in r.stderr, r.stderr  # its own loopback
        devices = sbx("run", "--network", "closed", "--", "cat", "/proc/net/dev").stdout.decode().splitlines()[2:]
        assert [d.split(":")[0].strip() for d in devices] == ["lo"]
        bad = sbx("run", "--network", "nothere", "--", "true")
        assert bad.stderr == b"sbx: network nothere: no such network (sbx network ls lists them)\n"
        both = sbx("run", "--network", "closed", "--net", "pasta", "--", "true")
        assert both.returncode == 125 and b"--network: the network's loopback is the box's network" in both.stderr
    finally:
        listener.close()
        sbx("network", "rm", "closed")


@pytest.mark.parametrize("stack", ["pasta", "slirp4netns"])
def test_a_network_with_a_way_out_shares_it_and_its_stack_goes_with_it(host_server: int, stack: str) -> None:
    before = _stacks()
    assert sbx("network", "create", "--net", stack, "--host-loopback", "out").stdout == b"out\n"
    assert sbx("network", "ls").stdout.split() == [b"out", b"up", stack.encode()]
    assert sbx("run", "-d", "--name", "cache", "--network", "out", "--", "redis-server", "--save", "").returncode == 0
    probe = sbx("run", "--network", "out", "--", "sh", "-c", "cat /etc/resolv.conf; python3 -c \"$0\" "
                f"host.containers.internal - {host_server}; redis-cli -h cache ping", PROBE)
    lines = probe.stdout.decode().splitlines()
    assert lines[0].startswith("nameserver ") and lines[1:] == ["from the host", "PONG"], probe
    assert _stacks() != before  # one stack for the network, and none of the boxes' own
    keeper = json.loads((Path(os.environ["XDG_RUNTIME_DIR"]) / "sbx/networks/out/state.json").read_text())["keeper"]
    os.kill(keeper, signal.SIGKILL)  # the network's keeper killed: its holder and its stack go with it
    wait_for(lambda: _stacks() == before, "the stack goes with the keeper")
    assert sbx("network", "ls").stdout.split() == [b"out", b"gone"]
    assert sbx("network", "rm", "out").returncode == 0 and sbx("network", "ls").stdout == b""


def test_a_way_out_is_asked_for_with_its_options_in_one_line() -> None:
    r = sbx("network", "create", "--host-loopback", "x")
    assert (r.returncode, r.stderr) == (125, b"sbx: --host-loopback needs --net pasta or slirp4netns\n")
    r = sbx("network", "create", "--net", "wifi", "x")
    assert (r.returncode, r.stderr) == (125, b"sbx: --net: unknown way out 'wifi' (expected pasta or slirp4netns)\n")
    assert sbx("network", "ls").stdout == b""


def test_a_box_joins_another_boxs_network_as_a_pod() -> None:
    assert sbx("run", "-d", "--name", "pod", "--", "redis-server", "--port", "7001", "--save", "").returncode == 0
    cli = ["run", "--net", "box:pod", "--", "redis-cli", "-p", "7001"]
    wait_for(lambda: sbx(*cli, "ping").stdout == b"PONG\n", "the pod's redis answers on the shared loopback", 30)
    alone = sbx("run", "--", "redis-cli", "-p", "7001", "ping")
    assert alone.stdout != b"PONG\n"  # a box of its own has a loopback of its own
    sbx("rm", "-f", "pod")
    gone = sbx("run", "--net", "box:pod", "--", "true")
    assert gone.stderr == b"sbx: box pod: no such box (sbx ps -a lists them)\n"


def test_ps_shows_the_cpu_and_memory_so_far() -> None:
    assert sbx("run", "-d", "--name", "busy", "--", "python3", "-c",
               "import time; x = bytearray(50 * 2**20); end = time.time() + 60\nwhile time.time() < end: pass"
               ).returncode == 0
    wait_for(lambda: ps()["busy"]["cpu"] > 1.0, "the busy loop's CPU shows", 30)
    assert 50 * 2**20 < ps()["busy"]["memory"] < 120 * 2**20
    joined = subprocess.Popen([sys.executable, "-m", "sandbox", "exec", "busy", "python3", "-c",
                               "import time; x = bytearray(100 * 2**20); time.sleep(60)"])
    try:  # what exec runs is counted too
        wait_for(lambda: ps()["busy"]["memory"] > 150 * 2**20, "the exec'd program's memory shows", 30)
    finally:
        joined.kill()
        joined.wait()
    assert b"busy" in sbx("ps").stdout and sbx("rm", "-f", "busy").returncode == 0


def test_exec_it_gives_the_program_a_terminal_of_its_own() -> None:
    assert sbx("run", "-d", "--name", "term", "--secret", "id=s,env=HOME", "--", "sleep", "1000").returncode == 0
    r = subprocess.run([sys.executable, "-m", "sandbox", "exec", "-it", "term", "sh", "-c",
                        "test -t 0 && test -t 1 && echo on-a-terminal; read line; echo got $line; cat /run/secrets/s;"
                        " echo; exit 5"], input=b"typed\n", capture_output=True, timeout=60)
    out = r.stdout.replace(b"\r\n", b"\n")
    assert r.returncode == 5 and b"on-a-terminal\n" in out and b"got typed\n" in out, (r.stdout, r.stderr)
    assert os.environ["HOME"].encode() not in out and b"***" in out  # the secret, masked on the terminal too
    # the terminal controls the program's session: ^C interrupts what runs in its foreground
    interrupted = subprocess.Popen([sys.executable, "-m", "sandbox", "exec", "-it", "term", "sh", "-c",
                                    "python3 -c 'import os, time; print(os.tcgetpgrp(0) == os.getpgrp(), flush=True); "
                                    "print(\"ready\", flush=True); time.sleep(60)'; echo not-interrupted"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert interrupted.stdin is not None and interrupted.stdout is not None
    said = b""
    while b"ready" not in said and interrupted.poll() is None:
        said += interrupted.stdout.read1()
    interrupted.stdin.write(b"\x03")
    interrupted.stdin.flush()
    rest, _ = interrupted.communicate(timeout=30)
    assert said.startswith(b"True") and interrupted.returncode == 130 and b"not-interrupted" not in rest, (said, rest)
    sbx("rm", "-f", "term")
