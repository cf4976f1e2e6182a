"""Seccomp policies applied in a real box: SV with the syscall named, and programs that must still work."""

from __future__ import annotations

import errno
from pathlib import Path

import anyio
import pytest

from helpers import sbx
from sandbox import ConfigError, ExecError, Limits, Sandbox, Status


@pytest.mark.parametrize("policy,argv,syscall", [
    ("default", ["unshare", "-U", "true"], "unshare"),
    ("strict", ["sh", "-c", "ls / | cat"], None),   # fork or clone, as libc chooses
    ("permissive", ["python3", "-c", "import ctypes; ctypes.CDLL(None).mount(b'x', b'/tmp', b'tmpfs', 0, None)"],
     "mount"),
    ("compile", ["python3", "-c", "import ctypes; ctypes.CDLL(None).ptrace(0, 0, 0, 0)"], "ptrace"),
])
async def test_blocked_call_is_sv_with_its_name(policy: str, argv: list[str], syscall: str | None) -> None:
    async with Sandbox(policy=policy) as box:
        r = await box.run(argv)
    assert r.status is Status.SV, (r, r.stderr)
    if syscall is not None:
        assert r.syscall == syscall
    assert r.syscall and r.message == f"SV: {r.syscall}"
    assert r.enforcement["syscalls"] == f"seccomp:{policy}"


async def test_per_run_policy_and_no_policy() -> None:
    async with Sandbox(policy="strict") as box:
        strict = await box.run(["sh", "-c", "true | true"])
        relaxed = await box.run(["sh", "-c", "true | true"], policy="default")
        none = await box.run(["unshare", "-U", "true"], policy=None)
    assert strict.status is Status.SV
    assert relaxed.status is Status.OK
    assert none.status is Status.OK, "no policy at all: the kernel allows a nested user namespace"
    assert "syscalls" not in none.enforcement


async def test_strict_runs_threads_and_interpreters() -> None:
    prog = "import threading; t = [threading.Thread(target=sum, args=(range(10**5),)) for _ in range(4)];" \
           "[x.start() for x in t]; [x.join() for x in t]; print('threads ok')"
    async with Sandbox(policy="strict") as box:
        r = await box.run(["python3", "-c", prog], limits=Limits(pids=8))
    assert (r.status, r.stdout) == (Status.OK, b"threads ok\n"), r.stderr


async def test_compile_policy_runs_gcc() -> None:
    async with Sandbox(policy="compile") as box:
        await box.write_file("t.c", b"#include <stdio.h>\nint main(void){puts(\"hi\");return 0;}\n")
        c = await box.run(["gcc", "-O2", "-o", "t", "t.c"])
        r = await box.run(["./t"], policy="strict")
    assert c.status is Status.OK, c.stderr
    assert r.stdout == b"hi\n"


def test_unknown_policy_is_bad_input() -> None:
    with pytest.raises(ConfigError, match="no such policy"):
        Sandbox(policy="nope")


TOOLCHAINS = {
    "make": ("printf 'all:\\n\\techo made > out.txt\\n' > Makefile && make -s && cat out.txt", "made"),
    "cmake": ("mkdir -p cm && printf 'cmake_minimum_required(VERSION 3.13)\\nproject(p C)\\nadd_executable(p p.c)\\n'"
              " > cm/CMakeLists.txt && printf 'int main(void){return 0;}\\n' > cm/p.c"
              " && cmake -S cm -B cm/b >/dev/null && cmake --build cm/b >/dev/null && ./cm/b/p && echo cmade", "cmade"),
    "javac": ("printf 'class A { public static void main(String[] a) { System.out.println(\"javac\"); } }\\n' > A.java"
              " && javac A.java && java -cp . A", "javac"),
    "go build": ("printf 'package main\\nimport \"fmt\"\\nfunc main() { fmt.Println(\"go\") }\\n' > m.go"
                 " && go build -o m m.go && ./m", "go"),
    "rustc": ("printf 'fn main() { println!(\"rust\"); }\\n' > r.rs && rustc -O r.rs && ./r", "rust"),
    "cargo": ("cargo new --offline --vcs none --quiet hello && cd hello && cargo build --offline --quiet"
              " && ./target/debug/hello", "Hello, world!"),
}


@pytest.mark.parametrize("policy", ["compile", "default"])
@pytest.mark.parametrize("tool", list(TOOLCHAINS))
async def test_toolchains_build_under_compile_and_default(policy: str, tool: str) -> None:
    script, expected = TOOLCHAINS[tool]
    env = {"HOME": "/tmp", "GOCACHE": "/tmp/go-build", "GOPATH": "/tmp/go", "GO111MODULE": "off",
           "CARGO_HOME": "/tmp/cargo"}
    async with Sandbox(policy=policy, env=env) as box:
        r = await box.run(["sh", "-c", script], limits=Limits(cpu_time=120, wall_time=240, pids=256, memory=None))
    assert (r.status, r.stdout.decode().strip().splitlines()[-1:]) == (Status.OK, [expected]), r.stderr.decode()


async def test_refused_calls_are_counted_by_name_and_named_when_the_run_fails() -> None:
    """A policy that breaks a program says which call did it: `events` counts every refusal by name."""
    async with Sandbox(policy="strict") as box:
        failed = await box.run(["python3", "-c", "import socket; socket.socket()"])
        coped = await box.run(["python3", "-c", "import socket\ntry:\n    socket.socket()\nexcept OSError:\n    pass"])
        clean = await box.run(["python3", "-c", "print(1)"])
    assert failed.status is Status.RE and failed.events == {"refused.socket": 1}, failed
    assert failed.message == "exited with status 1 (the policy refused socket x1)"
    assert b"Operation not permitted" in failed.stderr, "the refusal keeps its errno (EPERM under strict)"
    assert (coped.status, coped.events, coped.message) == (Status.OK, {"refused.socket": 1}, "exited normally")
    assert clean.events == {}


def test_the_status_line_names_a_refused_call() -> None:
    r = sbx("run", "--policy", "strict", "--", "python3", "-c", "import socket; socket.socket()")
    assert r.stderr.decode().splitlines()[-1] == "sbx: RE: exited with status 1 (the policy refused socket x1)"


def _policy_file(tmp_path: Path, rule: str) -> str:
    path = tmp_path / "p.toml"
    path.write_text(f'inherit = "strict"\n\n[[rule]]\n{rule}\n')
    return str(path)


@pytest.mark.parametrize("call,argv,status,said", [
    ("close", ["/bin/true"], 127, b"cannot close file descriptor: Operation not permitted"),  # ld.so gives up
    ("write", ["python3", "-c", "import os\ntry:\n    os.write(1, b'x')\nexcept OSError as e:\n    exit(e.errno)"],
     errno.EPERM, b""),
    ("sendmsg", ["/bin/true"], 0, b""),
])
async def test_a_policy_refusing_a_call_the_spawner_makes_before_execve_still_runs(
        tmp_path: Path, call: str, argv: list[str], status: int, said: bytes) -> None:
    """The spawner's child makes these calls between loading the filter and execve, while the spawner waits for
    that execve: a refusal turned into a notification (to be counted) would wait for good.  Such a policy is
    loaded as it is: the kernel answers its refusals (with their errno), uncounted."""
    policy = _policy_file(tmp_path, f'syscalls = ["{call}"]\naction = "errno"\nerrno = "EPERM"')
    async with Sandbox(policy=policy) as box:
        with anyio.fail_after(60):
            r = await box.run(argv, limits=Limits(wall_time=20))
    assert (r.exit_code, r.events) == (status, {}), r
    assert said in r.stderr


async def test_a_policy_refusing_execve_is_an_exec_error_not_a_hang(tmp_path: Path) -> None:
    async with Sandbox(policy=_policy_file(tmp_path, 'syscalls = ["execve"]\naction = "errno"\nerrno = "EPERM"')) as box:
        with anyio.fail_after(60), pytest.raises(ExecError, match="Operation not permitted"):
            await box.run(["/bin/true"], limits=Limits(wall_time=20))


async def test_a_policy_that_kills_a_call_the_spawner_needs_is_bad_input(tmp_path: Path) -> None:
    with anyio.fail_after(60), pytest.raises(ConfigError, match="it kills close, which sbx's spawner calls"):
        async with Sandbox(policy=_policy_file(tmp_path, 'syscalls = ["close"]\naction = "kill"')):
            pass
