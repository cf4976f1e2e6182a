"""Test harness for seccomp policies without the box.

`run_filtered` forks a child that sets no_new_privs, loads a compiled filter
with a listener, hands the listener to the parent over a socketpair and
execs the program.  The parent plays the supervisor: on a notification it
receives it, answers it with an errno and kills the child's process group.

`bpf_run` is a small classic-BPF interpreter, enough for what libseccomp
emits, to check a compiled program against the policy's own meaning.

`build_programs` compiles tests/programs/*.c (and .cpp) into a directory.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from sandbox import syscalls
from sandbox.seccomp import notify as seccomp_notify

HERE = Path(__file__).resolve().parent


# --- building the test programs --------------------------------------------------------------------


def build_programs(out: Path) -> dict[str, Path]:
    """Compile every program here; `hello` also as `hello_static`.  Returns name -> executable."""
    built: dict[str, Path] = {}
    for src in sorted(HERE.glob("*.c")) + sorted(HERE.glob("*.cpp")):
        name = src.stem + ("_cpp" if src.suffix == ".cpp" else "")
        exe = out / name
        compiler = "g++" if src.suffix == ".cpp" else "gcc"
        subprocess.run([compiler, "-O1", "-pthread", "-o", str(exe), str(src)], check=True, capture_output=True)
        built[name] = exe
    static = out / "hello_static"
    subprocess.run(["gcc", "-O1", "-static", "-o", str(static), str(HERE / "hello.c")], check=True,
                   capture_output=True)
    built["hello_static"] = static
    return built


# --- running a program under a filter --------------------------------------------------------------


@dataclass
class Run:
    exit_code: int | None  # None if killed by a signal
    signal: int | None
    stdout: str
    stderr: str
    notifications: list[seccomp_notify.Notification] = field(default_factory=list)
    answered: list[bool] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def reported(self) -> str | None:
        return self.notifications[0].syscall if self.notifications else None


_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


def run_filtered(bpf: bytes | None, argv: list[str], *, cwd: str | None = None, stdin: bytes = b"",
                 env: dict[str, str] | None = None, timeout: float = 60.0, kill_on_report: bool = True,
                 answer_errno: int = errno.EPERM, tmp: Path | None = None) -> Run:
    """Run argv with the filter loaded (None: no filter), playing the supervisor for its notifications."""
    import tempfile

    tmpdir = tempfile.TemporaryDirectory(dir=tmp)
    base = Path(tmpdir.name)
    (base / "in").write_bytes(stdin)
    out_path, err_path = base / "out", base / "err"
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    exe = argv[0] if "/" in argv[0] else _which(argv[0], (env or _ENV).get("PATH", _ENV["PATH"]))
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: no Python objects touched after the filter beyond what execve needs
        try:
            os.setpgid(0, 0)
            stdin_fd = os.open(base / "in", os.O_RDONLY)
            out_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT, 0o600)
            err_fd = os.open(err_path, os.O_WRONLY | os.O_CREAT, 0o600)
            os.dup2(stdin_fd, 0)
            os.dup2(out_fd, 1)
            os.dup2(err_fd, 2)
            if cwd:
                os.chdir(cwd)
            parent_sock.close()
            envp = env if env is not None else _ENV
            argv_b = [os.fsencode(a) for a in argv]
            if bpf is not None:
                syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
                listener = syscalls.seccomp_set_filter(bpf, syscalls.SECCOMP_FILTER_FLAG_NEW_LISTENER)
                socket.send_fds(child_sock, [b"L"], [listener])
                os.close(listener)
            else:
                child_sock.send(b"N")
            os.execve(exe, argv_b, envp)
        except BaseException as e:  # noqa: BLE001 - report anything, then leave without Python's cleanup
            try:
                os.write(2, f"harness child: {e!r}\n".encode())
            finally:
                os._exit(127)
    child_sock.close()
    run = _supervise(pid, parent_sock, timeout, kill_on_report, answer_errno)
    run.elapsed = time.monotonic() - start
    run.stdout = out_path.read_text(errors="replace")
    run.stderr = err_path.read_text(errors="replace")
    tmpdir.cleanup()
    return run


def _which(name: str, path: str) -> str:
    for d in path.split(":"):
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    return name


def _supervise(pid: int, sock: socket.socket, timeout: float, kill_on_report: bool, answer_errno: int) -> Run:
    run = Run(None, None, "", "")
    listener = -1
    pidfd = os.pidfd_open(pid)
    deadline = time.monotonic() + timeout
    try:
        sock.settimeout(timeout)
        msg, fds, _flags, _addr = socket.recv_fds(sock, 16, 1)
        if fds:
            listener = fds[0]
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if listener >= 0:
            poller.register(listener, select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.killpg(pid, signal.SIGKILL)
                raise TimeoutError(f"program still running after {timeout} s")
            events = dict(poller.poll(left * 1000))
            if listener >= 0 and events.get(listener, 0) & select.POLLIN:
                n = seccomp_notify.receive(listener)
                if n is not None:
                    run.notifications.append(n)
                    if kill_on_report:  # kill first: after an answer the program would run on for a moment
                        _killpg(pid)
                    run.answered.append(seccomp_notify.answer(listener, n, answer_errno))
            elif listener >= 0 and events.get(listener, 0) & (select.POLLHUP | select.POLLERR):
                poller.unregister(listener)
            if events.get(pidfd, 0) & select.POLLIN:
                break
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            run.signal = os.WTERMSIG(status)
        else:
            run.exit_code = os.WEXITSTATUS(status)
        _killpg(pid)  # anything the program left behind
        return run
    except BaseException:
        _killpg(pid)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(pidfd)
        if listener >= 0:
            os.close(listener)
        sock.close()


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --- a classic BPF interpreter ---------------------------------------------------------------------


SECCOMP_RET_ACTION_FULL = 0xFFFF0000
RET_ALLOW = 0x7FFF0000
RET_NOTIFY = 0x7FC00000
RET_ERRNO = 0x00050000


def const_allow(bpf: bytes, nr: int, arch: int) -> bool:
    """What the kernel's action cache concludes for a call at load (seccomp_is_const_allow, kernel/seccomp.c):
    allowed whatever its arguments, by a path of only number and arch loads, AND, jumps on constants and
    `ret ALLOW`.  Anything else on the path (an argument's load, memory) leaves the call to the filter."""
    insns = list(struct.iter_unpack("=HBBI", bpf))
    a, pc = 0, 0
    while pc < len(insns):
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20 and k in (0, 4):  # BPF_LD | BPF_W | BPF_ABS of nr or arch
            a = nr if k == 0 else arch
        elif code == 0x06:  # BPF_RET | BPF_K
            return k == RET_ALLOW
        elif code == 0x05:  # BPF_JA
            pc += k
        elif code in (0x15, 0x25, 0x35, 0x45):  # BPF_JEQ, JGT, JGE, JSET with K
            taken = {0x15: a == k, 0x25: a > k, 0x35: a >= k, 0x45: bool(a & k)}[code]
            pc += jt if taken else jf
        elif code == 0x54:  # BPF_ALU | BPF_AND | BPF_K
            a &= k
        else:
            return False
    raise AssertionError("BPF program ran off its end")


def seccomp_data(nr: int, arch: int, args: tuple[int, ...] = (0,) * 6, ip: int = 0) -> bytes:
    args = tuple(a & (2**64 - 1) for a in args) + (0,) * (6 - len(args))
    return struct.pack("=iIQ6Q", nr, arch, ip, *args)


def bpf_run(bpf: bytes, data: bytes) -> int:
    """Run a seccomp classic-BPF program on a seccomp_data buffer; returns the 32-bit return value."""
    insns = list(struct.iter_unpack("=HBBI", bpf))
    a = x = 0
    mem = [0] * 16
    pc = 0
    steps = 0
    while True:
        steps += 1
        if steps > 100000 or pc >= len(insns):
            raise AssertionError("BPF program ran off its end")
        code, jt, jf, k = insns[pc]
        cls = code & 0x07
        pc += 1
        if cls == 0x00:  # LD
            mode = code & 0xE0
            if mode == 0x20:  # ABS
                a = struct.unpack_from("=I", data, k)[0]
            elif mode == 0x00:  # IMM
                a = k
            elif mode == 0x60:  # MEM
                a = mem[k]
            else:
                raise AssertionError(f"unsupported LD {code:#x}")
        elif cls == 0x01:  # LDX
            mode = code & 0xE0
            if mode == 0x00:
                x = k
            elif mode == 0x60:
                x = mem[k]
            else:
                raise AssertionError(f"unsupported LDX {code:#x}")
        elif cls == 0x02:  # ST
            mem[k] = a
        elif cls == 0x03:  # STX
            mem[k] = x
        elif cls == 0x04:  # ALU
            op, src = code & 0xF0, (x if code & 0x08 else k)
            if op == 0x50:
                a &= src
            elif op == 0x40:
                a |= src
            elif op == 0x00:
                a = (a + src) & 0xFFFFFFFF
            elif op == 0x10:
                a = (a - src) & 0xFFFFFFFF
            elif op == 0xA0:
                a ^= src
            elif op == 0x60:
                a = (a << src) & 0xFFFFFFFF
            elif op == 0x70:
                a >>= src
            elif op == 0x80:
                a = (-a) & 0xFFFFFFFF
            else:
                raise AssertionError(f"unsupported ALU {code:#x}")
        elif cls == 0x05:  # JMP
            op, src = code & 0xF0, (x if code & 0x08 else k)
            if op == 0x00:
                pc += k
                continue
            cond = {0x10: a == src, 0x20: a > src, 0x30: a >= src, 0x40: bool(a & src)}.get(op)
            if cond is None:
                raise AssertionError(f"unsupported JMP {code:#x}")
            pc += jt if cond else jf
        elif cls == 0x06:  # RET
            return a if code & 0x18 == 0x10 else k
        elif cls == 0x07:  # MISC
            if code & 0xF8 == 0x00:
                x = a
            else:
                a = x
        else:
            raise AssertionError(f"unsupported class {code:#x}")
