"""`sbx run` and `sbx check` as a user types them: exit statuses, one-line errors, JSON, nothing left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import re
import stat
import uuid
from importlib.metadata import version
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
    assert rec["enforcement"] == {"cpu_time": "ptrace", "wall_time": "monitor", "memory": "sampled", "pids": "rlimit",
                                  "output": "supervisor", "file_size": "rlimit", "syscalls": "seccomp:default"}
    assert isinstance(rec["cpu_time"], float) and rec["memory_peak"] > 0
    to_stdout = sbx("run", "--json", "-", "--", "true")
    assert json.loads(to_stdout.stdout)["status"] == "OK"


def test_json_on_stdout_cannot_be_spoofed_by_the_program() -> None:
    """A program printing a record of its own (and a half line after it) leaves the real one intact."""
    fake = '{"status": "OK", "exit_code": 0}'
    r = sbx("run", "--json", "-", "--", "sh", "-c", f"echo '{fake}'; printf '{{\"status\": '; exit 3")
    assert r.returncode == 3
    assert json.loads(r.stdout)["status"] == "RE" and r.stdout.count(b"\n") == 1
    assert r.stderr.decode().splitlines() == [fake, '{"status": ', "sbx: RE: exited with status 3"]


def test_options_reach_the_box(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("data\n")
    tmp_path.chmod(0o755)  # the program has its own uid: it reads what "others" may read
    r = sbx("run", "--ro-bind", f"{tmp_path}:/in", "--tmpfs", "/scratch", "--cwd", "/in", "--env", "A=b",
            "--", "sh", "-c", "cat f; echo $A; pwd; touch /scratch/x && echo tmpfs-ok")
    assert r.stdout.split() == [b"data", b"b", b"/in", b"tmpfs-ok"], r.stderr
    assert sbx("run", "--cwd", "/", "--", "pwd").stdout == b"/\n"  # an ordinary working directory, not a mount


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
        (["run", "--cwd", "rel", "--", "true"], 125, "sbx: --cwd rel: must be an absolute path in the box"),
        (["run", "--stdin", "/no/file", "--", "true"], 125, "sbx: --stdin /no/file: No such file or directory"),
        (["run", "--net", "wifi", "--", "true"], 125, "sbx: --net: unknown mode 'wifi' (expected none, loopback, pasta, slirp4netns or box:NAME)"),
        (["run", "--idmap", "x", "--", "true"], 125, "sbx: --idmap: unknown mode 'x' (expected auto, range or single)"),
        (["run", "--env", "NOEQUALS", "--", "true"], 125, "sbx: --env 'NOEQUALS': expected KEY=VALUE"),
        (["run", "--ro-bind", "/etc:/usr/lib/sbx-new", "--", "true"], 125,
         "sbx: /usr/lib/sbx-new: cannot create mount point: Read-only file system"),
        (["run", "--copy-in", "/no/file:f", "--", "true"], 125, "sbx: --copy-in /no/file: No such file or directory"),
        (["run", "--copy-in", "/dev/null:null", "--", "true"], 125,
         "sbx: --copy-in /dev/null: neither a regular file nor a directory"),
        (["run", "--copy-in", "/etc/hostname:.", "--", "true"], 125, "sbx: --copy-in .: not a file under /box"),
        (["run", "--copy-in", "/etc/hostname:/etc/x", "--", "true"], 125,
         "sbx: --copy-in /etc/x: not under /box, /tmp or /dev/shm"),
        (["run", "--copy-in", "/etc/hostname", "--", "true"], 125, "sbx: --copy-in '/etc/hostname': expected SRC:DST"),
        (["run", "--copy-out", "f:/no/dir/f", "--", "true"], 125, "sbx: --copy-out /no/dir: No such file or directory"),
        (["run", "--copy-out", "f:/tmp/", "--", "mkfifo", "f"], 125,
         "sbx: --copy-out f: not a regular file or directory"),
        (["run", "--ro-bind", "/etc/hostname:/box/ro", "--copy-in", "/etc/hostname:ro", "--", "true"], 125,
         "sbx: --copy-in ro: Permission denied"),
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
    assert set(rep) == {"installation", "kernel", "user_namespaces", "uid_mapping", "newuidmap", "fuse",
                        "kernel_overlayfs", "cgroup_v2", "seccomp", "tracing", "will_use"}
    assert rep["installation"]["ok"] is True
    assert rep["user_namespaces"]["ok"] is True
    assert rep["uid_mapping"]["detail"].startswith("range:")
    table = sbx("check").stdout.decode()
    assert "user_namespaces" in table and "cgroup_v2" in table


@pytest.mark.parametrize("args,program_stderr,line", [
    (["--time", "0.3", "--", "sh", "-c", "echo err >&2; while :; do :; done"], ["err"],
     r"sbx: TLE: \d+\.\d\d s of CPU time, limit 0\.3 s"),
    (["--wall-time", "0.3", "--", "sh", "-c", "echo err >&2; sleep 10"], ["err"],
     r"sbx: WLE: \d+\.\d\d s of wall time, limit 0\.3 s"),
    (["--", "python3", "-c", "import ctypes; ctypes.CDLL(None).ptrace(0, 0, 0, 0)"], [], r"sbx: SV: ptrace"),
    (["--output", "1K", "--", "sh", "-c", "echo err >&2; yes"], ["err"],
     r"sbx: OLE: output reached the limit of 1 KiB \(stdout and stderr together\)"),
    (["--memory", "64M", "--", "python3", "-c", "x = [bytearray(2**20) for _ in range(200)]"], None,
     r"sbx: MLE: [\d.]+ MiB of memory at peak, limit 64 MiB \(.*\)"),
    (["--", "sh", "-c", "echo err >&2; exit 3"], ["err"], r"sbx: RE: exited with status 3"),
    (["--", "sh", "-c", "echo err >&2; kill -SEGV $$"], ["err"], r"sbx: SG: killed by SIGSEGV"),
])
def test_a_run_that_does_not_end_ok_says_why_after_its_own_output(
        args: list[str], program_stderr: list[str] | None, line: str) -> None:
    r = sbx("run", *args)
    *before, last = r.stderr.decode().splitlines()
    assert re.fullmatch(line, last), r.stderr
    if program_stderr is not None:  # (a MemoryError's traceback is the program's own business)
        assert before == program_stderr
    assert b"sbx:" not in r.stdout
    quiet = sbx("run", "--quiet", *args)
    assert quiet.returncode == r.returncode and b"sbx:" not in quiet.stderr


def test_the_line_starts_a_line_of_its_own_after_a_partial_one() -> None:
    r = sbx("run", "--", "sh", "-c", "printf partial >&2; exit 3")
    assert r.stderr.decode().splitlines() == ["partial", "sbx: RE: exited with status 3"]


def test_an_ok_run_says_nothing() -> None:
    r = sbx("run", "--", "sh", "-c", "echo out")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"out\n", b"")


@pytest.mark.parametrize("args,status,record", [
    (["--", "no-such-program"], 127, {"status": "RE", "exit_code": 127, "signal": None,
                                      "message": "no-such-program: No such file or directory"}),
    (["--", "/usr"], 126, {"status": "RE", "exit_code": 126, "signal": None, "message": "/usr: Is a directory"}),
    (["--cwd", "/nope", "--", "true"], 125, {"status": "IE", "exit_code": None, "signal": None,
                                             "message": "--cwd /nope: No such file or directory"}),
    (["--ro-bind", "/etc/hostname:/box/ro", "--copy-in", "/etc/hostname:ro", "--", "true"], 125,
     {"status": "IE", "exit_code": None, "signal": None, "message": "--copy-in ro: Permission denied"}),
])
def test_json_record_for_a_run_that_never_started(tmp_path: Path, args: list[str], status: int,
                                                   record: dict[str, object]) -> None:
    out = tmp_path / "r.json"
    r = sbx("run", "--json", str(out), *args)
    assert r.returncode == status
    rec = json.loads(out.read_text())
    assert {k: rec[k] for k in record} == record
    assert set(rec) == {"status", "exit_code", "signal", "cpu_time", "wall_time", "memory_peak", "syscall",
                        "message", "enforcement", "events", "proc_peak"}


def test_no_record_for_input_refused_before_any_run(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    assert sbx("run", "--json", str(out), "--memory", "12Q", "--", "true").returncode == 125
    assert not out.exists()


def test_a_host_program_not_in_the_box_gets_a_hint_that_works(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    hello = tmp_path / "hello"
    hello.write_bytes(Path("/bin/true").read_bytes())
    hello.chmod(0o755)
    tmp_path.chmod(0o755)  # the program has its own uid: a bound file must be readable by "others"
    monkeypatch.chdir(tmp_path)
    r = sbx("run", "--policy", "strict", "./hello")
    assert r.returncode == 127
    assert r.stderr.decode().splitlines() == [
        "sbx: ./hello: not found in the box; it exists on the host: bind it in with --ro-bind ./hello:/box/hello "
        "(or --copy-in ./hello:hello)"]
    assert sbx("run", "--policy", "strict", "--ro-bind", "./hello:/box/hello", "./hello").returncode == 0
    assert sbx("run", "--policy", "strict", "--copy-in", "./hello:hello", "./hello").returncode == 0
    (tmp_path / "other").mkdir()
    elsewhere = sbx("run", "--copy-in", "other:.", "--", "./hello")  # a tree went to /box, but not hello
    assert elsewhere.stderr.decode().splitlines() == r.stderr.decode().splitlines()
    no_loader = tmp_path / "no-loader"  # in the box, but its ELF interpreter is not
    no_loader.write_bytes(b"#!/no/such/interpreter\n")
    no_loader.chmod(0o755)
    assert sbx("run", "--copy-in", "no-loader:no-loader", "--", "./no-loader").stderr.decode().splitlines() == [
        "sbx: ./no-loader: No such file or directory", BOX_HAS_ONLY]
    absolute = sbx("run", "--", str(hello))
    assert absolute.stderr.decode().splitlines() == [
        f"sbx: {hello}: not found in the box; it exists on the host: bind it in with --ro-bind {hello}"]


def test_copy_in_and_out_arrive_plain_and_owned_by_the_caller(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("hello\n")
    src.chmod(0o600)
    (tmp_path / "dir").mkdir()
    r = sbx("run", "--copy-in", f"{src}:in.txt", "--copy-in", f"{src}:/tmp/in2",
            "--copy-out", f"out:{tmp_path}/out", "--copy-out", f"/dev/shm/tool:{tmp_path}/dir",
            "--", "sh", "-c", "tr a-z A-Z < in.txt > out; chmod 4777 out; "
                              "cat /tmp/in2 > /dev/shm/tool; chmod 2777 /dev/shm/tool; exit 4")
    assert r.returncode == 4, r.stderr  # copied out after a failed run too
    for path, text in ((tmp_path / "out", "HELLO\n"), (tmp_path / "dir" / "tool", "hello\n")):
        st = path.lstat()
        assert path.read_text() == text
        assert st.st_uid == os.getuid() and stat.S_ISREG(st.st_mode)
        assert stat.S_IMODE(st.st_mode) & ~0o755 == 0 and st.st_mode & stat.S_IXUSR  # executable, nothing more


SECRET = "the caller's secret\n"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file only the caller may read: no copy in or out may carry it or change it."""
    path = tmp_path / "secret"
    path.write_text(SECRET)
    path.chmod(0o600)
    return path


def _host_state(root: Path) -> dict[str, tuple[str, bytes]]:
    """Every entry under `root` with what it is: a link's target, a file's contents."""
    state = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            state[str(path)] = ("link", os.readlink(path).encode())
        elif path.is_file():
            state[str(path)] = ("file", path.read_bytes())
        else:
            state[str(path)] = ("dir", b"")
    return state


@pytest.mark.parametrize("plant,src", [
    ("ln -s {secret} out", "out"),
    ("ln -s /proc/self/root{secret} out", "out"),
    ("mkdir d; ln -s {dir} d2", "d2/secret"),
    ("ln -s /proc/1/environ out", "out"),
])
def test_copy_out_never_follows_a_link_the_program_planted(tmp_path: Path, secret: Path, plant: str,
                                                           src: str) -> None:
    before = _host_state(tmp_path)
    out = tmp_path / "r.json"
    r = sbx("run", "--json", str(out), "--copy-out", f"{src}:{tmp_path}/got",
            "--", "sh", "-c", plant.format(secret=secret, dir=tmp_path))
    assert r.returncode == 125
    assert r.stderr.decode().splitlines() == [
        f"sbx: --copy-out {src}: Too many levels of symbolic links (symlinks in the box are never followed)"]
    assert json.loads(out.read_text())["status"] == "OK"  # the record is written all the same
    out.unlink()
    assert _host_state(tmp_path) == before
    assert SECRET.encode() not in r.stdout + r.stderr


def test_copy_out_replaces_a_host_link_the_program_planted_and_never_writes_through_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("mine\n")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # writable by the program's own uid through --bind
    r = sbx("run", "--bind", f"{shared}:/shared", "--copy-out", f"result:{shared}/result",
            "--", "sh", "-c", f"ln -s {victim} /shared/result; echo artifact > result")
    assert r.returncode == 0, r.stderr
    result = shared / "result"
    assert not result.is_symlink() and result.read_text() == "artifact\n"
    assert victim.read_text() == "mine\n"
    assert sorted(p.name for p in shared.iterdir()) == ["result"]  # no temporary file left behind


def test_copy_out_of_a_missing_file_is_one_line_and_keeps_the_record(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    r = sbx("run", "--json", str(out), "--copy-out", f"missing:{tmp_path}/x", "--", "true")
    assert r.returncode == 125
    assert r.stderr.decode().splitlines() == ["sbx: --copy-out missing: No such file or directory"]
    assert json.loads(out.read_text())["status"] == "OK"
    assert not (tmp_path / "x").exists()


def test_copy_out_brings_back_at_most_disk_in_all(tmp_path: Path) -> None:
    r = sbx("run", "--disk", "1M", "--copy-out", f"big:{tmp_path}/a", "--copy-out", f"big:{tmp_path}/b",
            "--", "sh", "-c", "head -c 700000 /dev/zero > big")
    assert r.returncode == 125
    assert r.stderr.decode().splitlines() == [
        "sbx: --copy-out big: 700000 bytes, more than the 348576 bytes left for copying out (at most --disk in all)"]
    assert (tmp_path / "a").stat().st_size == 700000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_version() -> None:
    r = sbx("--version")
    assert (r.returncode, r.stdout.decode()) == (0, f"sbx {version('sbx')}\n")


def test_run_help_names_every_option() -> None:
    text = sbx("run", "--help").stdout.decode()
    for flag in ("--copy-in", "--copy-out", "--quiet", "--json", "--disk", "--bind", "--ro-bind", "--time"):
        assert flag in text
    assert "Exit status" in text and "--inodes files in all" in text
    flat = " ".join(text.split())
    for default in ("(default 600; none lifts it)", "(default 1G; none lifts it)", "(default 64)", "(default 64M)",
                    "(default 256M)", "(default 16384)", "(default: none, --wall-time bounds it)"):
        assert default in flat, default


def test_default_limits_hold_and_none_lifts_them() -> None:
    r = sbx("run", "--json", "-", "--", "true")
    rec = json.loads(r.stdout)
    assert rec["enforcement"]["wall_time"] == "monitor" and "memory" in rec["enforcement"]
    lifted = json.loads(sbx("run", "--wall-time", "none", "--memory", "none", "--json", "-", "--", "true").stdout)
    assert "wall_time" not in lifted["enforcement"] and "memory" not in lifted["enforcement"]
    bad = sbx("run", "--memory", "nothing", "--", "true")
    assert bad.returncode == 125 and b"--memory" in bad.stderr


@pytest.mark.parametrize("fs", ["kernel", "fuse"])
def test_copy_in_and_out_of_a_union_root(tmp_path: Path, fs: str) -> None:
    """A FUSE union serves only the box's user namespace: box init hands such a file over as a copy."""
    low = tmp_path / "low"
    (low / "usr").mkdir(parents=True)
    for link in ("bin", "lib", "lib64", "sbin"):
        (low / link).symlink_to(f"usr/{link}")
    for d in (tmp_path, low, low / "usr"):
        d.chmod(0o755)
    src = tmp_path / "in"
    src.write_text("layered\n")
    r = sbx("run", "--fs", fs, "--lower", str(low), "--ro-bind", "/usr", "--copy-in", f"{src}:in",
            "--copy-out", f"out:{tmp_path}/out", "--", "sh", "-c", "rev in > out")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out").read_text() == "dereyal\n"
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) & ~0o644 == 0
    tree = sbx("run", "--fs", fs, "--lower", str(low), "--ro-bind", "/usr", "--copy-out", f"d:{tmp_path}/d",
               "--", "sh", "-c", "mkdir d; echo x > d/x")
    if fs == "kernel":
        assert tree.returncode == 0 and (tmp_path / "d" / "x").read_text() == "x\n"
    else:  # FUSE serves only the box's user namespace, and box init copies files, not listings
        assert tree.stderr.decode().splitlines() == [
            "sbx: --copy-out d: a directory of a FUSE union cannot be listed from outside the box"]


def test_copy_in_of_a_tree_copies_files_and_directories_and_follows_no_link_in_it(tmp_path: Path,
                                                                                    secret: Path) -> None:
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "deep").write_text("deep\n")
    (src / "build.sh").write_text("#!/bin/sh\necho built > out\n")
    (src / "build.sh").chmod(0o755)
    (src / "leak").symlink_to(secret)  # as an earlier run could have planted through a writable --bind
    (src / "a" / "up").symlink_to("../..")
    os.mkfifo(src / "fifo")
    for dst, cd in (("src", "src"), (".", ".")):
        r = sbx("run", "--copy-in", f"{src}:{dst}", "--copy-out", f"{cd}/out:{tmp_path}/out",
                "--", "sh", "-c", f"cd {cd} && find . -path ./out -prune -o -print | sort; ./build.sh; "
                                  "cat leak a/up/secret 2>&1 >/dev/null | wc -l")
        assert r.returncode == 0, r.stderr
        assert r.stdout.decode().split() == [".", "./a", "./a/b", "./a/b/deep", "./build.sh", "2"]
        assert r.stderr.decode().splitlines() == [
            f"sbx: --copy-in {src}: left out 3 symlink(s) or special file(s) in it "
            "(only regular files and directories are copied)"]
        assert (tmp_path / "out").read_text() == "built\n"


def test_copy_out_of_a_tree_brings_files_and_directories_and_follows_no_link(tmp_path: Path,
                                                                             secret: Path) -> None:
    (tmp_path / "into").mkdir()
    r = sbx("run", "--copy-out", f"dist:{tmp_path}/dist", "--copy-out", f".:{tmp_path}/into",
            "--", "sh", "-c", f"mkdir -p dist/a/b dist/empty; echo top > dist/top; echo deep > dist/a/b/deep; "
                              f"chmod 4777 dist/top; chmod 700 dist/a; ln -s {secret} dist/leak; "
                              f"ln -s {tmp_path} dist/a/up; mkfifo dist/fifo")
    assert r.returncode == 0, r.stderr
    note = "left out 3 symlink(s) or special file(s) in it (only regular files and directories are copied)"
    assert r.stderr.decode().splitlines() == [f"sbx: --copy-out dist: {note}", f"sbx: --copy-out .: {note}"]
    for root in (tmp_path / "dist", tmp_path / "into" / "dist"):
        found = {str(p.relative_to(root)): p.lstat() for p in root.rglob("*")}
        assert sorted(found) == ["a", "a/b", "a/b/deep", "empty", "top"]
        assert all(st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & ~0o755 == 0 for st in found.values())
        assert (root / "top").read_text() == "top\n" and (root / "a" / "b" / "deep").read_text() == "deep\n"
    assert secret.read_text() == SECRET


def test_copy_out_of_a_tree_refuses_a_host_link_where_a_directory_goes(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    r = sbx("run", "--bind", f"{shared}:/shared", "--copy-out", f"dist:{shared}",
            "--", "sh", "-c", f"mkdir -p /shared/dist dist/sub; chmod 777 /shared/dist; "
                              f"ln -s {victim} /shared/dist/sub; echo x > dist/sub/x")
    assert r.returncode == 125
    assert r.stderr.decode().splitlines() == [f"sbx: --copy-out {shared}/dist/sub: Not a directory"]
    assert list(victim.iterdir()) == []


def test_a_tree_deeper_than_a_copy_descends_is_one_line_both_ways(tmp_path: Path) -> None:
    """1500 levels: deeper than Python's recursion limit, which a recursive copy would hit with a traceback."""
    deep = "/".join(["d"] * 1500)
    out = tmp_path / "out"
    r = sbx("run", "--copy-out", f"d:{out}", "--json", str(tmp_path / "rec.json"), "--",
            "sh", "-c", f"mkdir -p {deep}")
    lines = r.stderr.decode().splitlines()
    assert r.returncode == 125 and len(lines) == 1, r.stderr
    assert lines[0].startswith("sbx: --copy-out d/d/") and lines[0].endswith(": more than 128 levels of directories")
    assert json.loads((tmp_path / "rec.json").read_text())["status"] == "OK"
    host = tmp_path / "host"
    host.mkdir()
    subprocess.run(["mkdir", "-p", deep], cwd=host, check=True)  # (os.makedirs recurses too)
    try:
        r = sbx("run", "--copy-in", f"{host}:tree", "--", "/bin/true")
    finally:
        subprocess.run(["rm", "-rf", str(host)], check=True)  # (so does pytest's removal of old temp dirs)
    lines = r.stderr.decode().splitlines()
    assert r.returncode == 125 and len(lines) == 1 and lines[0].endswith(": more than 128 levels of directories"), r.stderr


def test_output_parked_in_a_unix_socket_does_not_keep_the_run_alive() -> None:
    """The program leaves its stdout and stderr in flight in a cycle of unix sockets and exits: no EOF comes
    until the kernel's socket GC runs, which sbx must not wait for (before: more than 20 s past a 3 s limit)."""
    park = ("import socket\n"
            "a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
            "socket.send_fds(a, [b'x'], [1, 2, a.fileno(), b.fileno()])\n"
            "print('parked', flush=True)\n")
    r = sbx("run", "--wall-time", "3", "--", "python3", "-c", park, timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"parked\n", b"")


def test_a_terminal_given_as_stdin_gets_its_settings_back() -> None:
    import pty
    import termios

    leader, follower = pty.openpty()
    try:
        before = termios.tcgetattr(follower)
        assert before[3] & termios.ECHO
        r = subprocess.run([sys.executable, "-m", "sandbox", "run", "--", "stty", "-echo", "raw"], stdin=follower,
                           capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert termios.tcgetattr(follower) == before
    finally:
        os.close(leader)
        os.close(follower)
