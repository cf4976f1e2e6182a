"""--net pasta: a way out for a box, and what it must still not reach (the host's loopback, unless asked)."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import free_port, sbx
from sandbox.box.netstack import _default_gateway

PROBE = """
import socket, sys
try:
    host = socket.gethostbyname(sys.argv[1])
except OSError:
    print("no name", end=" ")
    host = sys.argv[2]
s = socket.socket()
s.settimeout(3)
try:
    s.connect((host, int(sys.argv[3])))
    s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
    answer = b""
    while chunk := s.recv(4096):  # (HTTP/1.0: the server closes at the end)
        answer += chunk
    print(answer.split(b"\\r\\n\\r\\n", 1)[1].decode(), end="")
except OSError as e:
    print(f"unreached: {type(e).__name__}")
"""


@pytest.fixture
def host_server() -> Iterator[int]:
    """An HTTP server on the host's 127.0.0.1 only, as a judge's Redis or an sbx serve is."""
    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"from the host\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


STACKS = ["pasta", "slirp4netns"]


def _stacks() -> set[int]:
    """This user's pasta and slirp4netns processes (Debian's pasta runs as passt.avx2 where the CPU has AVX2)."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text()
            if comm.startswith(("pasta", "passt", "slirp4netns")) and os.stat(f"/proc/{pid}").st_uid == os.getuid():
                found.add(int(pid))
        except OSError:
            pass
    return found


@pytest.mark.parametrize("stack", STACKS)
def test_the_hosts_loopback_is_reached_only_when_asked(host_server: int, stack: str) -> None:
    before = _stacks()
    asked = sbx("run", "--net", stack, "--host-loopback", "--", "python3", "-c", PROBE,
                "host.containers.internal", "-", str(host_server))
    assert (asked.returncode, asked.stdout) == (0, b"from the host\n"), asked.stderr
    # not asked: no name for the host; its loopback is not the box's, nor mapped at the gateway's address
    gateway = _default_gateway() if stack == "pasta" else "10.0.2.2"
    assert gateway is not None
    for host, ip in (("host.containers.internal", gateway), ("localhost", "127.0.0.1")):
        r = sbx("run", "--net", stack, "--", "python3", "-c", PROBE, host, ip, str(host_server))
        assert r.returncode == 0 and b"unreached" in r.stdout and b"from the host" not in r.stdout, (host, r)
    loopback = sbx("run", "--", "python3", "-c", PROBE, "x.invalid", gateway, str(host_server))
    assert loopback.stdout.startswith(b"no name unreached"), loopback  # the default: no way out at all
    assert _stacks() == before  # each box's pasta ended with it


@pytest.mark.parametrize("stack", STACKS)
def test_a_published_port_is_answered_by_the_box_and_nothing_else_is_published(stack: str) -> None:
    port, other = free_port(), free_port()
    serve = ("import http.server, os, socket; os.chdir('/box'); open('hello', 'w').write('from the box\\n'); "
             f"unpublished = socket.create_server(('0.0.0.0', {other})); "  # pasta's default would publish it
             "s = http.server.HTTPServer(('0.0.0.0', 8000), http.server.SimpleHTTPRequestHandler); "
             "s.handle_request(); s.handle_request()")
    box = subprocess.Popen([sys.executable, "-m", "sandbox", "run", "--net", stack, "-p", f"{port}:8000",
                            "--wall-time", "60", "--", "python3", "-c", serve],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline, answer = time.monotonic() + 30, b""
        while not answer and time.monotonic() < deadline:
            try:  # pasta listens at once; the box's server a little later
                answer = urllib.request.urlopen(f"http://127.0.0.1:{port}/hello", timeout=3).read()
            except OSError:
                time.sleep(0.1)
        assert answer == b"from the box\n", box.stderr.read1() if box.poll() is not None else ""  # type: ignore
        with pytest.raises(OSError):  # a port the box listens on but did not publish is not on the host
            urllib.request.urlopen(f"http://127.0.0.1:{other}/hello", timeout=3)
        urllib.request.urlopen(f"http://127.0.0.1:{port}/hello", timeout=3).read()  # its second request: it ends
        assert box.wait(timeout=30) == 0
    finally:
        box.kill()
        box.wait()


@pytest.mark.parametrize("stack", STACKS)
def test_a_killed_sbx_leaves_no_stack(stack: str) -> None:
    before = _stacks()
    box = subprocess.Popen([sys.executable, "-m", "sandbox", "run", "--net", stack, "--", "sleep", "60"])
    try:
        deadline = time.monotonic() + 20
        while _stacks() == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _stacks() != before
        box.send_signal(signal.SIGKILL)
        box.wait()
        deadline = time.monotonic() + 10
        while _stacks() != before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _stacks() == before
    finally:
        box.kill()
        box.wait()


@pytest.mark.parametrize(("args", "said"), [
    (["--host-loopback"], "--host-loopback needs --net pasta or slirp4netns"),
    (["-p", "8080:80"], "--publish needs --net pasta or slirp4netns"),
    (["--net", "slirp4netns", "-p", "127.0.0.1:1:80/tcp"], "slirp4netns: cannot publish -p 127.0.0.1:1:80/tcp"),
    (["--net", "pasta", "-p", "70000:80"], "ports are 1 to 65535"),
    (["--net", "pasta", "-p", "80"], "expected [IP:]HOSTPORT:BOXPORT[/tcp|udp]"),
    (["--net", "pasta", "-p", "300.1.1.1:8080:80"], "300.1.1.1 is not an IP address"),
    (["--net", "slirp"], "unknown mode 'slirp' (expected none, loopback, pasta, slirp4netns or box:NAME)"),
])
def test_bad_network_options_are_one_line(args: list[str], said: str) -> None:
    r = sbx("run", *args, "--", "sh", "-c", "echo ran")
    assert (r.returncode, r.stdout, r.stderr.count(b"\n")) == (125, b"", 1), r.stderr
    assert said.encode() in r.stderr


def test_an_image_gets_the_boxs_resolv_conf_and_hosts_and_keeps_its_own(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from image_helpers import OciImage, busybox_rootfs, tar_of
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    OciImage([tar_of(busybox_rootfs(tmp_path / "rootfs"))]).write(tmp_path / "oci")
    assert sbx("image", "import", str(tmp_path / "oci"), "--name", "base").returncode == 0
    for fs in ("kernel", "fuse"):
        r = sbx("run", "--image", "base", "--fs", fs, "--net", "pasta", "--host-loopback", "--",
                "sh", "-c", "cat /etc/resolv.conf /etc/hosts; echo x > /etc/hosts || echo read-only")
        assert r.returncode == 0, (fs, r.stderr)
        assert r.stdout.startswith(b"nameserver 169.254.1.1\n127.0.0.1\tlocalhost") and b"read-only" in r.stdout
        assert f"{_default_gateway()}\thost.containers.internal\n".encode() in r.stdout
        slirp = sbx("run", "--image", "base", "--fs", fs, "--net", "slirp4netns", "--host-loopback", "--",
                    "cat", "/etc/resolv.conf", "/etc/hosts")
        assert slirp.stdout.startswith(b"nameserver 10.0.2.3\n") and b"10.0.2.2\thost.containers.internal\n" in \
            slirp.stdout, slirp.stderr
    plain = sbx("run", "--image", "base", "--", "sh", "-c", "cat /etc/resolv.conf 2>&1; true")
    assert b"nameserver" not in plain.stdout  # the image's own: it has none


def test_pip_installs_from_an_index_on_the_hosts_loopback(tmp_path: Path) -> None:
    """A CI job's dependency: a package index the test serves on 127.0.0.1, reached through pasta."""
    import zipfile
    index = tmp_path / "index"
    (index / "simple" / "tinypkg").mkdir(parents=True)
    wheel = index / "simple" / "tinypkg" / "tinypkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("tinypkg/__init__.py", "ANSWER = 42\n")
        z.writestr("tinypkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n")
        z.writestr("tinypkg-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                  "Tag: py3-none-any\n")
        z.writestr("tinypkg-1.0.dist-info/RECORD", "")
    (index / "simple" / "tinypkg" / "index.html").write_text(f'<a href="{wheel.name}">{wheel.name}</a>\n')
    server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory",
                               str(index), str(port := free_port())], stderr=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL)
    try:
        url = f"http://host.containers.internal:{port}/simple/"
        pip = (f"{sys.prefix}/bin/python -m pip install --quiet --no-cache-dir --disable-pip-version-check "
               f"--index-url {url} --trusted-host host.containers.internal --target /box/deps tinypkg && "
               "PYTHONPATH=/box/deps python3 -c 'import tinypkg; print(tinypkg.ANSWER)'")
        r = sbx("run", "--net", "pasta", "--host-loopback", "--ro-bind", sys.prefix, "--wall-time", "120", "--",
                "sh", "-c", pip, timeout=180)
        assert (r.returncode, r.stdout) == (0, b"42\n"), r.stderr
        offline = sbx("run", "--ro-bind", sys.prefix, "--", "sh", "-c", pip.replace("--quiet", "--quiet --retries 0"))
        assert offline.returncode != 0 and offline.stdout == b""  # the default network has no way out
    finally:
        server.kill()
        server.wait()
