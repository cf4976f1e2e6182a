"""Helpers shared by the tests: the real command line, test programs, a look at the host's processes, a callback
receiver and a headless browser."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PROGRAMS = Path(__file__).parent / "programs"


def build_program(name: str, into: Path, *flags: str) -> Path:
    """tests/programs/NAME.c compiled into the dir `into` (which a box may bind: it is made world-readable)."""
    exe = into / name
    subprocess.run(["gcc", "-O1", *flags, "-o", str(exe), str(PROGRAMS / f"{name}.c")], check=True)
    into.chmod(0o755)
    return exe


def build_go_program(name: str, into: Path, cache: Path) -> Path:
    """tests/programs/NAME.go compiled into `into`, with its build cache in `cache` (no network, no modules)."""
    exe = into / name
    subprocess.run(["go", "build", "-o", str(exe), str(PROGRAMS / f"{name}.go")], check=True,
                   env={**os.environ, "GOCACHE": str(cache), "GOPATH": str(cache), "GO111MODULE": "off"})
    into.chmod(0o755)
    return exe


def sbx(*args: str, stdin: bytes | None = None, timeout: float = 60, mark: str = "") -> subprocess.CompletedProcess[bytes]:
    """Run the real command line, as a user would.

    `mark` goes into the interpreter's command line (`-X`, ignored by Python), which every forked
    process of the run keeps: `host_processes_matching(mark)` then finds exactly this command's.
    """
    marker = ["-X", f"sbx-test-mark={mark}"] if mark else []
    return subprocess.run([sys.executable, *marker, "-m", "sandbox", *args], input=stdin if stdin is not None else b"",
                          capture_output=True, timeout=timeout, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def host_processes_matching(marker: str) -> list[str]:
    """Host processes whose command line contains `marker`, as "PID: CMDLINE" (to prove nothing of a run survived)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if marker.encode() in cmdline:
            words = cmdline.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{name}: {words}")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now (a server started next binds it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, server: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Until 127.0.0.1:`port` accepts a connection; the server's own words if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited ({server.returncode}): "
                               f"{server.stderr.read().decode() if server.stderr else ''}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@contextlib.contextmanager
def server_process(argv: list[str], port: int, mark: str = "") -> Iterator[subprocess.Popen[bytes]]:
    """A server started for a test and stopped after it (SIGTERM, SIGKILL 30 s later); none of its processes
    outlives it."""
    marker = ["-X", f"sbx-test-mark={mark}"] if mark and argv[0] == sys.executable else []
    server = subprocess.Popen([argv[0], *marker, *argv[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    try:
        wait_for_port(port, server)
        yield server
    finally:
        assert stop(server), f"{argv[:4]} did not stop on SIGTERM"
        if mark:
            assert host_processes_matching(mark) == [], f"{argv[:4]} left processes behind"


def stop(proc: subprocess.Popen[bytes]) -> bool:
    """SIGTERM, then SIGKILL 30 s later; whether SIGTERM was enough."""
    if proc.poll() is not None:
        return True
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False


class CallbackReceiver:
    """A tiny HTTP server on 127.0.0.1 (in a thread) for submissions' callback_url: it answers the first
    `failures` POSTs with `fail_with`, then 204, and keeps every body it got (`attempts`) and those it took
    (`taken`)."""

    def __init__(self, failures: int = 0, fail_with: int = 503) -> None:
        self.attempts: list[dict[str, Any]] = []
        self.taken: list[dict[str, Any]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                receiver.attempts.append(body)
                ok = len(receiver.attempts) > failures
                if ok:
                    receiver.taken.append(body)
                self.send_response(204 if ok else fail_with)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/callback"

    def __enter__(self) -> CallbackReceiver:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait(self, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        """The bodies taken, once there are `count` (or the timeout is past); then a moment more, so that a
        duplicate would show."""
        deadline = time.monotonic() + timeout
        while len(self.taken) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1)
        return list(self.taken)


def render_page(url: str, scratch: Path, budget_ms: int = 5000) -> str:
    """The DOM of `url` after its scripts ran for `budget_ms` of virtual time, by headless Chromium.

    Chromium keeps its own sandbox (it works as an unprivileged user, in user namespaces).  Its profile and
    HOME (where its crash handler, which leaves the process group, keeps its database) are under `scratch`,
    so every process it starts names `scratch` in its command line: none may be left afterwards.
    """
    home = scratch / "home"
    home.mkdir(parents=True, exist_ok=True)
    argv = ["chromium", "--headless", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", f"--user-data-dir={scratch / 'profile'}",
            f"--virtual-time-budget={budget_ms}", "--dump-dom", url]
    browser = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                               env={"PATH": os.environ["PATH"], "HOME": str(home), "XDG_CONFIG_HOME": str(home),
                                    "XDG_CACHE_HOME": str(home)})
    try:
        out, err = browser.communicate(timeout=90)
    finally:
        if browser.poll() is None:
            os.killpg(browser.pid, signal.SIGKILL)
            browser.wait()
        deadline = time.monotonic() + 10
        while (left := host_processes_matching(str(scratch))) and time.monotonic() < deadline:
            time.sleep(0.1)
        for line in left:
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
    assert not left, f"chromium left processes behind: {left}"
    assert browser.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()
