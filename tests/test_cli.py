"""`sbx run` and `sbx check` as a user types them: exit statuses, one-line errors, JSON, nothing left behind."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from helpers import host_processes_matching, sbx

BOX_HAS_ONLY = ("sbx: the box has only the host's /usr, /bin, /sbin, /lib* and parts of /etc; /box, /tmp and "
                "/dev/shm start empty (add files with --ro-bind or --copy-in)")


def test_exit_status_is_the_programs_own_or_128_plus_signal() -> None:
    assert sbx("run", "--", "sh", "-c", "exit 42").returncode == 42
    assert sbx("run", "--", "sh", "-c", "kill -TERM $$").returncode == 128 + 15
    assert sbx("run", "--time", "0.2", "--", "sh", "-c", "while :; do :; done").returncode == 128 + 9


def test_output_and_stdin_pass_through(tmp_path: Path) -> None:
    r = sbx("run", "--", "sh", "-c", "cat; echo err >&2", stdin=b"hello\n")
    assert (r.stdout, r.stderr) == (b"hello\n", b"err\n")
    f = tmp_path / "in"
    f.write_bytes(b"from file\n")
    assert sbx("run", "--stdin", str(f), "--", "cat").stdout == b"from file\n"


def test_json_record(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    r = sbx("run", "--time", "2", "--memory", "256M", "--pids", "8", "--json", str(out), "--", "sh", "-c", "exit 3")
    assert r.returncode == 3
    rec = json.loads(out.read_text())
    assert rec["status"] == "RE" and rec["exit_code"] == 3 and rec["signal"] is None
    assert rec["enforcement"] == {"cpu_time": "monitor", "memory": "rlimit", "pids": "rlimit",
                                  "output": "supervisor", "file_size": "rlimit", "syscalls": "seccomp:default"}
    assert isinstance(rec["cpu_time"], float) and rec["memory_peak"] > 0
    to_stdout = sbx("run", "--json", "-", "--", "true")
    assert json.loads(to_stdout.stdout)["status"] == "OK"


def test_options_reach_the_box(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("data\n")
    tmp_path.chmod(0o755)  # the program has its own uid: it reads what "others" may read
    r = sbx("run", "--ro-bind", f"{tmp_path}:/in", "--tmpfs", "/scratch", "--cwd", "/in", "--env", "A=b",
            "--", "sh", "-c", "cat f; echo $A; pwd; touch /scratch/x && echo tmpfs-ok")
    assert r.stdout.split() == [b"data", b"b", b"/in", b"tmpfs-ok"], r.stderr


@pytest.mark.parametrize(
    "args,status,message",
    [
        (["run", "--memory", "12Q", "--", "true"], 125, "sbx: --memory: invalid size '12Q' (expected e.g. 65536, 256M, 1G)"),
        (["run", "--time", "abc", "--", "true"], 125, "sbx: --time: invalid number of seconds 'abc'"),
        (["run", "--pids", "x", "--", "true"], 125, "sbx: --pids: invalid count 'x'"),
        (["run", "--bogus", "--", "true"], 125, "sbx: unrecognized option --bogus"),
        (["run", "--tim", "1", "--", "/bin/true"], 125, "sbx: unrecognized option --tim (did you mean --time?)"),
        (["run", "--wall-tme=1", "--", "true"], 125, "sbx: unrecognized option --wall-tme (did you mean --wall-time?)"),
        (["rn", "--", "true"], 125, "sbx: unrecognized command rn (did you mean run?)"),
        (["policy", "shwo", "strict"], 125, "sbx: unrecognized command shwo (did you mean show?)"),
        (["--verison"], 125, "sbx: unrecognized option --verison (did you mean --version?)"),
        (["run"], 125, "sbx: run: no program given (usage: sbx run [OPTIONS] -- PROG [ARG...])"),
        (["run", "--", "/no/such/program"], 127, f"sbx: /no/such/program: No such file or directory\n{BOX_HAS_ONLY}"),
        (["run", "--", "no-such-program"], 127, f"sbx: no-such-program: No such file or directory\n{BOX_HAS_ONLY}"),
        (["run", "--quiet", "--", "no-such-program"], 127, "sbx: no-such-program: No such file or directory"),
        (["run", "--", "/usr"], 126, "sbx: /usr: Is a directory"),
        (["run", "--", "/etc/passwd"], 126, "sbx: /etc/passwd: Permission denied"),
        (["run", "--bind", "/no/such/dir", "--", "true"], 125, "sbx: --bind /no/such/dir: No such file or directory"),
        (["run", "--ro-bind", "/etc:rel", "--", "true"], 125,
         "sbx: --ro-bind rel: destination must be an absolute path in the box"),
        (["run", "--ro-bind", "/etc:/proc/x", "--", "true"], 125, "sbx: --ro-bind /proc/x: cannot mount over /proc/x"),
        (["run", "--cwd", "/nope", "--", "true"], 125, "sbx: --cwd /nope: No such file or directory"),
        (["run", "--stdin", "/no/file", "--", "true"], 125, "sbx: --stdin /no/file: No such file or directory"),
        (["run", "--net", "wifi", "--", "true"], 125, "sbx: --net: unknown mode 'wifi' (expected none or loopback)"),
        (["run", "--idmap", "x", "--", "true"], 125, "sbx: --idmap: unknown mode 'x' (expected auto, range or single)"),
        (["run", "--env", "NOEQUALS", "--", "true"], 125, "sbx: --env 'NOEQUALS': expected KEY=VALUE"),
        (["run", "--ro-bind", "/etc:/usr/lib/sbx-new", "--", "true"], 125,
         "sbx: /usr/lib/sbx-new: cannot create mount point: Read-only file system"),
        (["run", "--copy-in", "/no/file:f", "--", "true"], 125, "sbx: --copy-in /no/file: No such file or directory"),
        (["run", "--copy-in", "/etc:etc", "--", "true"], 125,
         "sbx: --copy-in /etc: not a regular file (directories are not copied)"),
        (["run", "--copy-in", "/etc/hostname:/etc/x", "--", "true"], 125,
         "sbx: --copy-in /etc/x: not under /box, /tmp or /dev/shm"),
        (["run", "--copy-in", "/etc/hostname", "--", "true"], 125, "sbx: --copy-in '/etc/hostname': expected SRC:DST"),
        (["run", "--copy-out", "f:/no/dir/f", "--", "true"], 125, "sbx: --copy-out /no/dir/f: No such directory"),
        (["run", "--copy-out", "sub:/tmp/", "--", "mkdir", "sub"], 125, "sbx: --copy-out sub: not a regular file"),
        (["run", "--copy-in", "/etc/hostname:no/dir/f", "--", "true"], 125,
         "sbx: --copy-in no/dir/f: No such file or directory"),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(args: list[str], status: int, message: str) -> None:
    before_tmp = set(os.listdir("/tmp"))
    mark = str(uuid.uuid4())  # other sbx processes on the machine (another suite, CI's own) do not count
    r = sbx(*args, mark=mark)
    assert r.returncode == status
    assert r.stderr.decode().splitlines() == message.splitlines()
    # what sbx or Python's tempfile would name (the machine's other tools, e.g. gcc's cc*.s, may come and go)
    assert {n for n in set(os.listdir("/tmp")) - before_tmp if n.startswith(("sbx", "tmp"))} == set()
    assert host_processes_matching(mark) == []


def test_check_reports_every_mechanism() -> None:
    r = sbx("check", "--json")
    assert r.returncode == 0
    rep = json.loads(r.stdout)
    assert set(rep) == {"kernel", "user_namespaces", "uid_mapping", "newuidmap", "fuse", "kernel_overlayfs",
                        "cgroup_v2", "seccomp", "will_use"}
    assert rep["user_namespaces"]["ok"] is True
    assert rep["uid_mapping"]["detail"].startswith("range:")
    table = sbx("check").stdout.decode()
    assert "user_namespaces" in table and "cgroup_v2" in table
