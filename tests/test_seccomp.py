"""Compiled policies loaded for real, without the box.

Each test forks a child that sets no_new_privs, loads the compiled filter with a
listener, sends the listener to this process and execs a program built from
tests/programs/.  This process plays the supervisor (seccomp_notify.receive,
answer with EPERM, kill).  Run as an unprivileged user.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from programs.harness import build_programs, run_filtered
from sandbox.seccomp import compiler as sbx_seccomp
from sandbox.seccomp import notify as seccomp_notify
from sandbox.seccomp.compiler import CompiledPolicy, compile
from sandbox.seccomp.policy import load_policy

SHIPPED = ["build", "compile", "default", "permissive", "strict"]


@pytest.fixture(scope="session")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_programs(tmp_path_factory.mktemp("programs"))


@pytest.fixture(scope="session")
def bpf() -> dict[str, bytes]:
    return {name: compile(load_policy(name)).bpf for name in SHIPPED}


# --- every blocked item is named, under every shipped policy -----------------------------------------

HOSTILE = [
    ("unshare", "unshare"),
    ("clone_newuser", "clone"),
    ("clone_untraced", "clone"),
    ("mount", "mount"),
    ("pivot_root", "pivot_root"),
    ("ptrace", "ptrace"),
    ("process_vm_readv", "process_vm_readv"),
    ("bpf", "bpf"),
    ("perf_event_open", "perf_event_open"),
    ("userfaultfd", "userfaultfd"),
    ("io_uring_setup", "io_uring_setup"),
    ("keyctl", "keyctl"),
    ("kexec_load", "kexec_load"),
    ("init_module", "init_module"),
    ("reboot", "reboot"),
    ("swapon", "swapon"),
    ("acct", "acct"),
    ("open_by_handle_at", "open_by_handle_at"),
    ("tiocsti", "ioctl"),
    ("tiocsti_high", "ioctl"),
    ("tioclinux", "ioctl"),
    ("personality", "personality"),
    ("i386_mount", "i386:mount"),
    ("x32_mount", "x32:mount"),
]


@pytest.mark.parametrize("policy", SHIPPED)
@pytest.mark.parametrize("program,syscall", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_blocked_call_is_reported_by_name_and_killed(programs, bpf, tmp_path: Path, policy: str, program: str,
                                                     syscall: str) -> None:
    run = run_filtered(bpf[policy], [str(programs[program])], tmp=tmp_path)
    assert run.reported == syscall
    assert len(run.notifications) == 1
    assert run.signal == 9 and run.stdout == ""  # killed while the call waited: it never returned


@pytest.mark.parametrize("policy", SHIPPED)
@pytest.mark.parametrize("via,syscall", [([], "seccomp"), (["prctl"], "prctl")])
def test_a_filter_of_the_programs_own_cannot_hide_a_blocked_call(programs, bpf, tmp_path: Path, policy: str,
                                                                   via: list[str], syscall: str) -> None:
    """Stacking a filter is itself the violation: the kernel would rank its ERRNO above our notification."""
    run = run_filtered(bpf[policy], [str(programs["stacked_filter"]), *via], tmp=tmp_path)
    assert (run.reported, run.signal, run.stdout) == (syscall, 9, "")


def test_a_filter_cannot_be_stacked_past_the_check_with_high_bits(programs, bpf, tmp_path: Path) -> None:
    """The kernel reads prctl's option as an int: 22 | 1 << 32 is PR_SET_SECCOMP too."""
    script = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
              "libc.syscall.argtypes = [ctypes.c_long] * 6\n"
              "print(libc.syscall(157, (1 << 32) | 22, 2, 0, 0, 0))\n")  # prctl(PR_SET_SECCOMP, FILTER, NULL)
    for policy in SHIPPED:
        run = run_filtered(bpf[policy], ["python3", "-c", script], tmp=tmp_path)
        assert (run.reported, run.stdout) == ("prctl", ""), (policy, run.stdout)


def test_no_policy_lets_a_vsock_socket_reach_the_host(bpf, tmp_path: Path) -> None:
    """AF_VSOCK ignores network namespaces: permissive kills it, the others refuse it."""
    script = ("import socket\ntry:\n    socket.socket(40, socket.SOCK_STREAM)\n    print('made')\n"
              "except OSError as e:\n    print('refused', e.errno)\n")
    for policy in SHIPPED:
        run = run_filtered(bpf[policy], ["python3", "-c", script], tmp=tmp_path)
        if policy == "permissive":
            assert (run.reported, run.signal) == ("socket", 9), run.stdout
        else:
            assert run.reported is None and run.stdout.startswith("refused"), (policy, run.stdout)


def test_a_vsock_socket_is_not_let_through_by_high_bits(bpf, tmp_path: Path) -> None:
    """The kernel reads socket's family as an int: 40 | 1 << 32 is AF_VSOCK too, and permissive's kill of
    AF_VSOCK must see it (it compared all 64 bits, so the call went through to the kernel)."""
    script = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
              "libc.syscall.argtypes = [ctypes.c_long] * 4\n"
              "fd = libc.syscall(41, (1 << 32) | 40, 1, 0)\n"  # socket(AF_VSOCK, SOCK_STREAM, 0)
              "print('reached the kernel', fd, ctypes.get_errno())\n")
    for policy in SHIPPED:
        run = run_filtered(bpf[policy], ["python3", "-c", script], tmp=tmp_path)
        if policy == "permissive":
            assert (run.reported, run.signal, run.stdout) == ("socket", 9, ""), run.stdout
        else:
            assert run.reported is None and run.stdout != "", (policy, run.stdout)
            assert run.stdout.split()[-1] in (str(errno.EPERM), str(errno.EAFNOSUPPORT)), (policy, run.stdout)


def test_a_syscall_libseccomp_cannot_name_fails_with_enosys(bpf, tmp_path: Path) -> None:
    """Newer than libseccomp (open_tree_attr, 467, on 2.5): not allowed unseen, even by permissive."""
    assert not sbx_seccomp._named(467) and sbx_seccomp._named(0)  # (read has a name)
    script = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
              "print(libc.syscall(467, -1, 0, 0, 0, 0), ctypes.get_errno())\n")
    for policy in SHIPPED:
        run = run_filtered(bpf[policy], ["python3", "-c", script], tmp=tmp_path)
        assert (run.reported, run.stdout) == (None, f"-1 {errno.ENOSYS}\n"), (policy, run.stdout)


def test_other_seccomp_and_prctl_calls_still_work(programs, bpf, tmp_path: Path) -> None:
    """Only installing a filter is refused: asking which actions exist, naming a thread, no_new_privs are not
    (strict, for one program, kills seccomp(2) whatever the operation)."""
    script = ("import ctypes, ctypes.util; libc = ctypes.CDLL(None, use_errno=True)\n"
              "print(libc.syscall(317, 2, 0, ctypes.byref(ctypes.c_uint(0x7fff0000))))\n"  # SECCOMP_GET_ACTION_AVAIL
              "print(libc.prctl(15, b'named', 0, 0, 0), libc.prctl(38, 1, 0, 0, 0))\n")  # PR_SET_NAME, NO_NEW_PRIVS
    for policy in SHIPPED:
        run = run_filtered(bpf[policy], ["python3", "-c", script], tmp=tmp_path)
        expected = ("seccomp", "") if policy == "strict" else (None, "0\n0 0\n")
        assert (run.reported, run.stdout) == expected, (policy, run.stderr)


def test_notification_carries_pid_arch_number_and_arguments(programs, bpf, tmp_path: Path) -> None:
    run = run_filtered(bpf["strict"], [str(programs["tiocsti_high"])], tmp=tmp_path)
    n = run.notifications[0]
    assert (n.arch, n.name, n.nr) == ("x86_64", "ioctl", 16)
    assert n.args[0] == 0 and n.args[1] == 0x100005412
    assert n.pid > 0 and n.instruction_pointer != 0
    i386 = run_filtered(bpf["strict"], [str(programs["i386_mount"])], tmp=tmp_path).notifications[0]
    assert (i386.arch, i386.name, i386.nr, i386.syscall) == ("i386", "mount", 21, "i386:mount")
    x32 = run_filtered(bpf["strict"], [str(programs["x32_mount"])], tmp=tmp_path).notifications[0]
    assert (x32.arch, x32.name, x32.nr, x32.syscall) == ("x32", "mount", 0x40000000 | 165, "x32:mount")


def test_answer_makes_the_call_fail_with_the_errno(programs, bpf, tmp_path: Path) -> None:
    """Without the kill, the program sees the supervisor's errno: the call did not run."""
    run = run_filtered(bpf["default"], [str(programs["mount"])], kill_on_report=False, answer_errno=errno.EACCES,
                       tmp=tmp_path)
    assert run.reported == "mount" and run.answered == [True]
    assert run.stdout == f"survived: -1 {os.strerror(errno.EACCES)}\n"
    assert run.exit_code == 0


def test_closed_listener_makes_notified_calls_fail_with_enosys(programs, bpf, tmp_path: Path) -> None:
    from sandbox import syscalls

    out = tmp_path / "out"
    pid = os.fork()
    if pid == 0:
        try:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
            os.dup2(fd, 1)
            syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
            listener = syscalls.seccomp_set_filter(bpf["strict"], syscalls.SECCOMP_FILTER_FLAG_NEW_LISTENER)
            os.close(listener)  # nobody listens
            os.execv(str(programs["mount"]), [str(programs["mount"])])
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert out.read_text() == f"survived: -1 {os.strerror(errno.ENOSYS)}\n"


def test_receive_returns_none_when_the_caller_is_gone(programs, bpf, tmp_path: Path) -> None:
    import select
    import signal
    import socket

    from sandbox import syscalls

    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        try:
            syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
            listener = syscalls.seccomp_set_filter(bpf["strict"], syscalls.SECCOMP_FILTER_FLAG_NEW_LISTENER)
            socket.send_fds(child, [b"L"], [listener])
            os.execv(str(programs["mount"]), [str(programs["mount"])])
        finally:
            os._exit(127)
    _, fds, _, _ = socket.recv_fds(parent, 4, 1)
    listener = fds[0]
    try:
        assert select.select([listener], [], [], 10)[0] == [listener]
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        assert seccomp_notify.receive(listener) is None
    finally:
        os.close(listener)


# --- what must keep working ----------------------------------------------------------------------------


def test_clone3_fails_with_enosys_without_a_kill(programs, bpf, tmp_path: Path) -> None:
    for policy in SHIPPED:
        run = run_filtered(bpf[policy], [str(programs["clone3"])], tmp=tmp_path)
        assert run.notifications == [], policy
        assert run.stdout == f"clone3: -1 {os.strerror(errno.ENOSYS)}\n", policy


@pytest.mark.parametrize("policy", ["strict", "default", "compile"])
@pytest.mark.parametrize("program", ["hello", "hello_static"])
def test_dynamic_and_static_c(programs, bpf, tmp_path: Path, policy: str, program: str) -> None:
    run = run_filtered(bpf[policy], [str(programs[program])], stdin=b"40 2\n", tmp=tmp_path)
    assert (run.reported, run.exit_code, run.stdout) == (None, 0, "42\n")


@pytest.mark.parametrize("policy", ["strict", "default"])
def test_pthreads_and_std_thread(programs, bpf, tmp_path: Path, policy: str) -> None:
    run = run_filtered(bpf[policy], [str(programs["threads"])], tmp=tmp_path)
    assert (run.reported, run.exit_code, run.stdout) == (None, 0, f"threads: {4 * sum(k % 7 for k in range(1000000))}\n")
    run = run_filtered(bpf[policy], [str(programs["threads_cpp"])], tmp=tmp_path)
    assert (run.reported, run.exit_code, run.stdout) == (None, 0, "cpp threads: 10\n")


def test_personality_query_and_unlisted_syscall_do_not_break(programs, bpf, tmp_path: Path) -> None:
    run = run_filtered(bpf["strict"], [str(programs["personality_query"])], tmp=tmp_path)
    assert (run.reported, run.exit_code, run.stdout) == (None, 0, "personality: 0 0\n")
    run = run_filtered(bpf["strict"], [str(programs["unlisted"])], tmp=tmp_path)
    assert (run.reported, run.exit_code, run.stdout) == (None, 0, f"syncfs: -1 {os.strerror(errno.ENOSYS)}\n")


def test_fork_and_wait_under_default_but_not_strict(programs, bpf, tmp_path: Path) -> None:
    run = run_filtered(bpf["default"], [str(programs["forkwait"])], tmp=tmp_path)
    assert (run.reported, run.exit_code, run.stdout) == (None, 0, "child ran\nparent: child exited 0\n")
    run = run_filtered(bpf["strict"], [str(programs["forkwait"])], tmp=tmp_path)
    assert run.reported == "clone" and run.signal == 9  # glibc's fork() is clone(SIGCHLD|...)
    run = run_filtered(bpf["strict"], [str(programs["direct_fork"])], tmp=tmp_path)
    assert run.reported == "fork"
    run = run_filtered(bpf["default"], [str(programs["direct_fork"])], tmp=tmp_path)
    assert (run.reported, run.exit_code) == (None, 0)
    assert re.fullmatch(r"survived: [1-9][0-9]* ok\n", run.stdout)  # the parent got the child's pid


PY = "/usr/bin/python3"


@pytest.mark.parametrize("policy", ["strict", "default"])
def test_python_runs(bpf, tmp_path: Path, policy: str) -> None:
    code = "import json, os, sys, threading; t = threading.Thread(target=print, args=('t',)); t.start(); t.join(); print(json.dumps(sum(range(10))))"
    run = run_filtered(bpf[policy], [PY, "-c", code], tmp=tmp_path)
    assert (run.reported, run.exit_code, run.stdout, run.stderr) == (None, 0, "t\n45\n", "")


def test_python_subprocess_under_default_but_not_strict(bpf, tmp_path: Path) -> None:
    code = "import subprocess; print(subprocess.run(['echo', 'sub'], capture_output=True, text=True).stdout, end='')"
    run = run_filtered(bpf["default"], [PY, "-c", code], tmp=tmp_path)
    assert (run.reported, run.exit_code, run.stdout) == (None, 0, "sub\n")
    run = run_filtered(bpf["strict"], [PY, "-c", code], tmp=tmp_path)
    assert run.reported in ("clone", "vfork") and run.signal == 9


def test_shell(bpf, tmp_path: Path) -> None:
    # strict: dash runs a single command without forking
    run = run_filtered(bpf["strict"], ["/bin/sh", "-c", "echo one"], tmp=tmp_path)
    assert (run.reported, run.exit_code, run.stdout) == (None, 0, "one\n")
    # a real script needs processes: default runs it, strict reports the first fork
    script = "for i in 1 2 3; do echo $i; done | wc -l; x=$(cat /etc/hostname); test -n \"$x\" && echo ok"
    run = run_filtered(bpf["default"], ["/bin/sh", "-c", script], tmp=tmp_path)
    assert (run.reported, run.exit_code, run.stdout) == (None, 0, "3\nok\n")
    run = run_filtered(bpf["strict"], ["/bin/sh", "-c", script], tmp=tmp_path)
    assert run.reported in ("clone", "vfork") and run.signal == 9


def test_gcc_and_gxx_compile_under_compile(programs, bpf, tmp_path: Path) -> None:
    src = Path(__file__).parent / "programs"
    run = run_filtered(bpf["compile"], ["gcc", "-O2", "-o", str(tmp_path / "c"), str(src / "hello.c")], cwd=str(tmp_path),
                       tmp=tmp_path, timeout=120)
    assert (run.reported, run.exit_code, run.stderr) == (None, 0, "")
    assert subprocess.run([str(tmp_path / "c")], input=b"1 2", capture_output=True).stdout == b"3\n"
    run = run_filtered(bpf["compile"], ["g++", "-O2", "-pthread", "-o", str(tmp_path / "cpp"), str(src / "threads.cpp")],
                       cwd=str(tmp_path), tmp=tmp_path, timeout=180)
    assert (run.reported, run.exit_code, run.stderr) == (None, 0, "")
    assert subprocess.run([str(tmp_path / "cpp")], capture_output=True).stdout == b"cpp threads: 10\n"
    # and strict cannot compile: gcc must start cc1
    run = run_filtered(bpf["strict"], ["gcc", "-o", str(tmp_path / "x"), str(src / "hello.c")], cwd=str(tmp_path),
                       tmp=tmp_path, timeout=120)
    assert run.reported in ("clone", "vfork")


def test_javac_under_compile_and_java_under_default_and_strict(bpf, tmp_path: Path) -> None:
    assert shutil.which("javac"), "the JDK is part of the test setup: apt-get install default-jdk-headless"
    (tmp_path / "Hi.java").write_text(
        "public class Hi { public static void main(String[] a) throws Exception {"
        " Thread t = new Thread(() -> System.out.println(\"thread\")); t.start(); t.join();"
        " System.out.println(\"hi java\"); } }\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    run = run_filtered(bpf["compile"], ["javac", "-d", str(tmp_path), str(tmp_path / "Hi.java")], cwd=str(tmp_path),
                       env=env, tmp=tmp_path, timeout=240)
    assert (run.reported, run.exit_code) == (None, 0), run.stderr
    for policy in ("default", "strict"):
        run = run_filtered(bpf[policy], ["java", "-Xshare:auto", "-cp", str(tmp_path), "Hi"], cwd=str(tmp_path),
                           env=env, tmp=tmp_path, timeout=240)
        assert (run.reported, run.exit_code, run.stdout) == (None, 0, "thread\nhi java\n"), (policy, run.stderr)


# --- the cache ---------------------------------------------------------------------------------------


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty per-user cache directory, and nothing compiled in memory yet."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    sbx_seccomp.clear_memory_cache()
    yield tmp_path
    sbx_seccomp.clear_memory_cache()


def test_compile_once_then_from_memory_and_never_from_disk(fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builds = []
    real = sbx_seccomp._build
    monkeypatch.setattr(sbx_seccomp, "_build", lambda p: builds.append(p.name) or real(p))
    first = compile(load_policy("strict"))
    assert isinstance(first, CompiledPolicy) and first.name == "strict" and first.reports
    assert len(first.bpf) % 8 == 0 and first.instructions == len(first.bpf) // 8
    assert builds == ["strict"]
    assert compile(load_policy("strict")) is first  # memory
    assert list(fresh_cache.iterdir()) == []  # no cache directory: a filter is never read back from disk
    sbx_seccomp.clear_memory_cache()
    again = compile(load_policy("strict"))
    assert builds == ["strict", "strict"] and again.bpf == first.bpf


def test_cache_key_is_the_policy_meaning_not_its_file(fresh_cache: Path, tmp_path: Path) -> None:
    a = tmp_path / "a.toml"
    b = tmp_path / "b.toml"
    a.write_text('inherit = "strict"\nallow = ["syncfs"]\n')
    b.write_text('# same meaning, other text\ninherit = "strict"\n\nallow = [ "syncfs" ]\n')
    ca, cb = compile(load_policy(str(a))), compile(load_policy(str(b)))
    assert ca.digest == cb.digest and ca.bpf == cb.bpf and (ca.name, cb.name) == ("a", "b")
    c = tmp_path / "c.toml"
    c.write_text('inherit = "strict"\nallow = ["syncfs", "sync"]\n')
    assert compile(load_policy(str(c))).digest != ca.digest
