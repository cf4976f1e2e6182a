"""What a hostile program could still reach of its caller (design rules 2, 6, 11 and 12).

The caller's inherited descriptors, its audit identity, box init and the
spawner in /proc, and the caller's paths that run through a directory the
program could write.  Every test plants what a hostile program (or an
earlier run of one) could, runs the real command line or API as an
unprivileged user, and checks from the host.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sandbox import Bind, ConfigError, Sandbox
from sandbox.hostpath import Guard, OutputFile, UnsafePath, resolve

from helpers import host_processes_matching, sbx

POLICIES = ["strict", "default", "compile", "build", "permissive"]
IDMAP = {"range": ["--idmap", "range"], "single": ["--idmap", "single"], "root": ["--idmap", "range", "--user", "0"]}
"""The program's ids: a subordinate uid, the caller's own, or root of a user namespace of its own (--user 0)."""


def shared_dir(path: Path) -> Path:
    """A host dir the program may write through --bind, whichever uid it runs as."""
    path.mkdir()
    path.chmod(0o777)
    return path


def private_dir(path: Path) -> Path:
    path.mkdir()
    (path / "inside").write_text("mine\n")
    path.chmod(0o700)
    return path


def listing(path: Path) -> list[str]:
    return sorted(os.listdir(path))


# -- the caller's descriptors ------------------------------------------------------------------------------------

_INHERITED = textwrap.dedent("""
    import anyio, fcntl, os, socket, sys
    from sandbox import Sandbox

    def high(fd):  # out of the way of the fds the caller leaves open below
        moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 50)
        os.close(fd)
        return moved

    # what a shell or CI runner leaves open: a directory, a writable file, a socket and a pipe, all inheritable
    d = high(os.open("/etc", os.O_RDONLY | os.O_DIRECTORY))
    f = high(os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600))
    ours, theirs = socket.socketpair()
    ours = socket.socket(fileno=high(ours.detach()))
    r, w = (high(fd) for fd in os.pipe())
    for fd, at in ((d, 7), (f, 42), (theirs.fileno(), 9), (w, 43)):
        os.dup2(fd, at, inheritable=True)
    for fd in (d, f, w):
        os.close(fd)
    theirs.close()

    async def main() -> None:
        async with Sandbox() as box:
            # every process of the box is up: the outer, box init, the spawner, the program
            async with anyio.create_task_group() as tg:
                tg.start_soon(box.run, ["sleep", "2"])
                await anyio.sleep(1)
                left = [os.readlink(f"/proc/self/fd/{fd}") for fd in (7, 9, 42, 43)]
                for fd in (7, 9, 42, 43):  # the caller lets go of its own copies
                    os.close(fd)
                os.set_blocking(r, False)
                try:
                    pipe = "eof" if os.read(r, 1) == b"" else "data"
                except BlockingIOError:
                    pipe = "held"  # a process of the box still has the write end
                ours.setblocking(False)
                try:
                    sock = "eof" if ours.recv(1) == b"" else "data"
                except BlockingIOError:
                    sock = "held"
                # the supervisor's children: the box's outer process (the starter; box init below it is not ours
                # to see) and, with a FUSE union, the daemons' fork server, whose children the daemons are
                def parent(p):  # (None for a process that ended meanwhile: the host's others come and go)
                    try:
                        return open(f"/proc/{p}/stat").read().split(") ")[1].split()[1]
                    except (FileNotFoundError, ProcessLookupError):
                        return None
                pids = [p for p in os.listdir("/proc") if p.isdigit()]
                children = [p for p in pids if parent(p) == str(os.getpid())]
                outer = [p for p in children
                         if open(f"/proc/{p}/cmdline", "rb").read().split(b"\\0")[0].endswith(b"/sbx-starter")]
                helpers = children + [p for p in pids if parent(p) in set(children) - set(outer)]
                held = sorted({os.readlink(f"/proc/{p}/fd/{n}") for p in helpers for n in os.listdir(f"/proc/{p}/fd")})
                stderr = os.readlink("/proc/self/fd/2")
                print(pipe, sock, len(outer), len(helpers), len(set(left) & set(held)), stderr in held, *held)

    anyio.run(main)
""")


@pytest.mark.parametrize("idmap,union", [("range", False), ("single", False), ("range", True)])
def test_the_callers_descriptors_reach_no_process_of_the_box(tmp_path: Path, idmap: str, union: bool) -> None:
    """A pipe's write end and a socket, left open by the caller, are held by no process of the box: the caller's
    letting go of its own copies ends them (EOF).  Seen from the host, the box's outer process holds none of the
    four, and not even the caller's stderr: its stdin, stdout and stderr are /dev/null.  With a FUSE union, neither
    do the daemons' fork server and the box's daemon."""
    low = tmp_path / "low"
    (low / "usr").mkdir(parents=True)
    for link in ("bin", "lib", "lib64", "sbin"):
        (low / link).symlink_to(f"usr/{link}")
    box = f"Sandbox(idmap={idmap!r}" + (f", lowers=[{str(low)!r}], binds=[Bind('/usr', '/usr', False)], fs='fuse')"
                                        if union else ")")
    script = tmp_path / "inherit.py"
    script.write_text(_INHERITED.replace("Sandbox()", box).replace("from sandbox import Sandbox",
                                                                   "from sandbox import Bind, Sandbox"))
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "written")], capture_output=True, timeout=60,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    pipe, sock, outers, helpers, shared, stderr_held, *held = r.stdout.decode().split()
    assert (pipe, sock, outers, helpers, shared, stderr_held) == \
        ("eof", "eof", "1", "3" if union else "1", "0", "False"), r.stdout
    assert "/dev/null" in held  # its stdin and stdout: the caller's terminal is not the box's either


# -- the audit identity -----------------------------------------------------------------------------------------


def _loginuid() -> str:
    return Path("/proc/self/loginuid").read_text().strip()


@pytest.mark.skipif(not Path("/proc/self/loginuid").exists(), reason="this kernel has no audit loginuid")
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("idmap", ["range", "single", "root"])
def test_the_program_cannot_set_its_own_audit_identity(policy: str, idmap: str) -> None:
    """With the caller's loginuid unset (a service, a CI runner), the box's is set to the program's uid before it
    runs: setting it again needs CAP_AUDIT_CONTROL of the host, which nothing in a box has."""
    if _loginuid() != "4294967295":
        pytest.skip(f"the caller's loginuid is set ({_loginuid()}): the kernel lets only an unset one be set, so "
                    "there is nothing for a program to claim (CI's and this machine's callers have it unset)")
    r = sbx("run", *IDMAP[idmap], "--policy", policy, "--", "sh", "-c",  # (builtins only: strict forks nothing)
            "echo 0 > /proc/self/loginuid && echo changed; read uid < /proc/self/loginuid; echo $uid")
    assert r.returncode == 0, r.stderr
    program_uid = {"range": 1000, "single": os.getuid(), "root": 0}[idmap]
    assert r.stdout.decode().split() == [str(program_uid)], "the loginuid is the program's own uid, as it sees it"
    assert r.stderr.startswith(b"sh: 1: echo: echo: "), r.stderr  # the kernel refused the write


# -- /proc ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("idmap", ["range", "single", "root"])
def test_the_program_sees_only_its_own_processes(idmap: str) -> None:
    """Box init (pid 1) and the spawner are not in the box's /proc at all, so none of their files can be opened
    (Debian 12's kernel lets anyone open /proc/PID/timers); the program's own processes are."""
    r = sbx("run", *IDMAP[idmap], "--", "sh", "-c",
            "sleep 5 & for p in /proc/[0-9]*; do echo ${p#/proc/}; done; "
            "for f in /proc/1/timers /proc/1/status /proc/2/timers; do cat $f >/dev/null 2>&1 && echo opened $f; done; "
            "echo me $$ $!; kill $!")
    assert r.returncode == 0, r.stderr
    words = r.stdout.decode().split()
    assert "opened" not in words, r.stdout
    me, child = words[-2:]
    visible = set(words[:words.index("me")])
    assert {me, child} <= visible and "1" not in visible, r.stdout


def test_box_init_carries_nothing_of_the_callers_process() -> None:
    """Pid 1 of the box is the starter, spawned fresh, not a fork of the supervisor: on the host,
    only the supervisor has the caller's command line; in the box, pid 1 is not there to read."""
    mark = "sbx-secret-" + os.urandom(4).hex()
    proc = subprocess.Popen([sys.executable, "-X", f"sbx-test-mark={mark}", "-m", "sandbox", "run", "--env",
                             f"SECRET={mark}", "--", "sh", "-c", "sleep 1; cat /proc/1/cmdline"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.7)
    holders = host_processes_matching(mark)
    out, err = proc.communicate(timeout=60)
    assert holders == [h for h in holders if h.startswith(f"{proc.pid}:")] and len(holders) == 1, holders
    assert proc.returncode == 1 and out == b"" and b"No such file or directory" in err, (out, err)


# -- caller's paths: links planted in a writable bind ----------------------------------------------------------


@pytest.mark.parametrize("idmap", ["range", "single", "root"])
def test_copy_out_never_writes_through_a_link_planted_in_a_writable_bind(tmp_path: Path, idmap: str) -> None:
    """The issue's attack: the program swaps the destination's directory for a link to the caller's private one.
    The directory was opened before the run; it is gone now, and nothing lands in the private one."""
    shared = shared_dir(tmp_path / "b")
    shared_dir(shared / "sub")
    victim = private_dir(tmp_path / "victim")
    r = sbx("run", *IDMAP[idmap], "--bind", f"{shared}:/data", "--copy-out", f"out:{shared}/sub/result", "--",
            "sh", "-c", f"echo PWNED > /box/out; rm -rf /data/sub; ln -s {victim} /data/sub")
    assert listing(victim) == ["inside"], "copy-out wrote into the caller's private directory"
    assert r.returncode == 125
    assert r.stderr.decode().splitlines() == [f"sbx: --copy-out {shared}/sub/result: No such file or directory"]


@pytest.mark.parametrize("idmap", ["range", "single", "root"])
def test_copy_in_never_reads_through_a_link_an_earlier_run_planted(tmp_path: Path, idmap: str) -> None:
    """Run 1 plants a link in a writable bind; run 2 copies in through that path.  A link of the program's
    (subordinate) uid is refused wherever it is; with the single mapping the program's links are the caller's
    own, so there the bind run 2 also makes writable refuses every link below it."""
    shared = shared_dir(tmp_path / "b2")
    victim = private_dir(tmp_path / "v2")
    (victim / "keep").write_text("SECRET\n")
    first = sbx("run", *IDMAP[idmap], "--bind", f"{shared}:/data", "--", "ln", "-s", str(victim), "/data/sub")
    assert first.returncode == 0, first.stderr
    again = ["--bind", f"{shared}:/data"] if idmap == "single" else []
    r = sbx("run", *IDMAP[idmap], *again, "--copy-in", f"{shared}/sub/keep:keep", "--", "cat", "keep")
    assert r.returncode == 125 and b"SECRET" not in r.stdout
    why = ("is a link inside a directory the box can write; links there are never followed" if idmap == "single"
           else f"is a link owned by uid {os.lstat(shared / 'sub').st_uid}; only links of the caller's or root's "
                "are followed")
    assert r.stderr.decode().splitlines() == [f"sbx: --copy-in: {shared}/sub {why}"]


def test_a_bind_through_a_link_an_earlier_run_planted_is_refused(tmp_path: Path) -> None:
    shared = shared_dir(tmp_path / "b")
    victim = private_dir(tmp_path / "victim")
    first = sbx("run", "--bind", f"{shared}:/data", "--", "ln", "-s", str(victim), "/data/sub")
    assert first.returncode == 0, first.stderr
    r = sbx("run", "--ro-bind", f"{shared}/sub:/x", "--", "ls", "/x")
    assert r.returncode == 125 and b"inside" not in r.stdout
    assert r.stderr.decode().startswith(f"sbx: --ro-bind: {shared}/sub is a link owned by uid "), r.stderr


def test_the_json_record_never_goes_through_a_link_the_program_planted(tmp_path: Path) -> None:
    """--json's directory is resolved before the run and the record written with O_NOFOLLOW after it."""
    shared = shared_dir(tmp_path / "b")
    shared_dir(shared / "sub")
    victim = private_dir(tmp_path / "victim")
    r = sbx("run", "--idmap", "single", "--bind", f"{shared}:/data", "--json", f"{shared}/sub/record.json", "--",
            "sh", "-c", f"rm -rf /data/sub; ln -s {victim} /data/sub")
    assert listing(victim) == ["inside"]
    assert r.returncode == 125 and r.stderr.decode().splitlines() == [
        f"sbx: --json {shared}/sub/record.json: No such file or directory"]


def test_a_caller_path_through_a_link_of_the_callers_own_works(tmp_path: Path) -> None:
    """The caller's own links and root's are followed as ever: /dev/stdin (root's, then the kernel's /proc link),
    a link to a directory for --copy-out and one to a file for --copy-in."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "in").write_text("hello\n")
    (tmp_path / "alias").symlink_to(data)
    r = sbx("run", "--stdin", "/dev/stdin", "--copy-in", f"{tmp_path}/alias/in:in", "--copy-out",
            f"out:{tmp_path}/alias/", "--json", f"{tmp_path}/alias/r.json", "--", "sh", "-c", "cat in - > out",
            stdin=b"world\n")
    assert r.returncode == 0, r.stderr
    assert (data / "out").read_text() == "hello\nworld\n"
    assert json.loads((data / "r.json").read_text())["status"] == "OK"


# -- the walk itself ---------------------------------------------------------------------------------------------


def test_the_walk_follows_root_and_caller_links_and_reports_a_loop(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(ConfigError, match=r"^--x .*/a/f: Too many levels of symbolic links$"):
        resolve(f"{tmp_path}/a/f", "--x")
    with resolve("/dev/stdin", "--x") as found:  # root's link, then the kernel's
        assert found.identity == (os.fstat(0).st_dev, os.fstat(0).st_ino)
    (tmp_path / "up").symlink_to("..")
    with resolve(f"{tmp_path}/up/{tmp_path.name}/./up", "--x") as found:
        assert found.path == str(tmp_path.parent) and stat.S_ISDIR(os.fstat(found.fd).st_mode)
    with pytest.raises(ConfigError, match="Not a directory"):
        resolve("/etc/hostname/x", "--x")


def test_the_walk_follows_no_link_below_a_guarded_directory(tmp_path: Path) -> None:
    guarded = tmp_path / "g"
    (guarded / "d").mkdir(parents=True)
    (guarded / "d" / "mine").symlink_to(tmp_path)
    st = os.stat(guarded)
    with resolve(f"{guarded}/d/mine", "--x") as found:
        assert found.path == str(tmp_path)
    with pytest.raises(UnsafePath, match=r"^--x: .*/g/d/mine is a link inside a directory the box can write"):
        resolve(f"{guarded}/d/mine", "--x", Guard(frozenset({(st.st_dev, st.st_ino)})))


def test_an_api_bind_is_resolved_and_found_again_by_identity(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "alias").symlink_to(data)
    box = Sandbox(binds=[Bind(str(tmp_path / "alias"), "/data", True)])
    assert [b.src for b in box._binds] == [str(data)] and box.writable_dirs.dirs == {
        (os.stat(data).st_dev, os.stat(data).st_ino)}
    with pytest.raises(ConfigError, match="No such file or directory"):
        Sandbox(binds=[Bind(str(tmp_path / "missing"), "/data", False)])


def test_an_output_file_refuses_a_link_planted_after_it_was_named(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("mine\n")
    with OutputFile(str(tmp_path / "record.json"), "--json") as out:
        (tmp_path / "record.json").symlink_to(victim)
        with pytest.raises(ConfigError, match="Too many levels of symbolic links"):
            out.write(b"{}")
    assert victim.read_text() == "mine\n"
    (tmp_path / "record.json").unlink()
    r, w = os.pipe()
    with OutputFile(f"/proc/self/fd/{w}", "--json") as out:  # not a regular file: opened as it is
        os.close(w)
        out.write(b"{}\n")
    assert os.read(r, 10) == b"{}\n"
    os.close(r)
