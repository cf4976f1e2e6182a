"""`sbx serve` under more requests than boxes, hostile output and failing neighbours: what a contest's traffic and
a bad day bring.  Real servers and real HTTP clients on 127.0.0.1."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import anyio
import httpx
import pytest

from helpers import free_port, server_process
from sandbox import ConfigError, SandboxPool

ENV = ["PATH=/usr/bin:/bin"]
LIMITS = {"cpuLimit": 5_000_000_000, "clockLimit": 20_000_000_000, "memoryLimit": 268_435_456, "procLimit": 50}
ERR = {"name": "stderr", "max": 1024}
PING_PONG = [{"in": {"index": 0, "fd": 1}, "out": {"index": 1, "fd": 0}},
             {"in": {"index": 1, "fd": 1}, "out": {"index": 0, "fd": 0}}]


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, int]]:
    """A server with its defaults (a pool of 2), and its pid."""
    port = free_port()
    with server_process([sys.executable, "-m", "sandbox", "serve", "--listen", f"127.0.0.1:{port}", "--pool", "2"],
                        port, "sbx-serve-faults") as proc:
        yield f"http://127.0.0.1:{port}", proc.pid


@pytest.fixture
def server(served: tuple[str, int]) -> str:
    return served[0]


def _peak_rss(pid: int) -> int:
    """The process's peak resident memory so far, bytes (VmHWM)."""
    status = open(f"/proc/{pid}/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) * 1024


def _interactive(i: int) -> dict:
    """Two shells that talk both ways: the first asks, the second answers, each says on stderr what it heard."""
    return {"cmd": [
        {"args": ["/bin/sh", "-c", f"echo ping{i}; read x; echo $x >&2"], "env": ENV, "files": [None, None, ERR],
         **LIMITS},
        {"args": ["/bin/sh", "-c", "read x; echo $x >&2; echo pong"], "env": ENV, "files": [None, None, ERR],
         **LIMITS}], "pipeMapping": PING_PONG}


@pytest.mark.parametrize("requests", [4, 16])
def test_more_interactive_requests_than_boxes_all_finish(server: str, requests: int) -> None:
    """Each pair needs both boxes of the pool at once: taken one by one, two requests could each hold one and wait
    for the other's forever, and every later /run with them."""
    def post(i: int) -> list[dict]:
        with httpx.Client(base_url=server, timeout=120) as client:
            return client.post("/run", json=_interactive(i)).json()

    with ThreadPoolExecutor(requests) as threads:
        answers = list(threads.map(post, range(requests)))
    assert [[(r["status"], r["files"]["stderr"]) for r in a] for a in answers] == [
        [("Accepted", "pong\n"), ("Accepted", f"ping{i}\n")] for i in range(requests)]
    with httpx.Client(base_url=server, timeout=60) as client:
        plain = client.post("/run", json={"cmd": [{"args": ["/bin/echo", "hi"], "env": ENV, "files": [
            None, {"name": "stdout", "max": 100}, ERR], **LIMITS}]}).json()
        assert plain[0]["files"]["stdout"] == "hi\n"
        deadline = time.monotonic() + 30
        while (health := client.get("/healthz").json())["ready"] < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert (health["ready"], health["busy"], health["waiting"]) == (2, 0, 0), health


async def test_a_request_for_several_boxes_holds_none_while_it_waits() -> None:
    """With one box lent out, a request for two waits holding nothing; a request for one that comes after it waits
    its turn (first come, first served), and both go through once the box is back."""
    async with SandboxPool(size=2, policy=None) as pool:
        order: list[str] = []
        async with anyio.create_task_group() as tasks:
            async with pool.acquire():
                async def pair() -> None:
                    async with pool.acquire_many(2):
                        order.append("pair")

                async def single() -> None:
                    async with pool.acquire():
                        order.append("single")

                tasks.start_soon(pair)
                await anyio.wait_all_tasks_blocked()
                tasks.start_soon(single)
                await anyio.wait_all_tasks_blocked()
                assert pool.stats()["ready"] == 1 and pool.stats()["waiting"] == 2, pool.stats()
        assert order == ["pair", "single"]
        with pytest.raises(ConfigError, match="3 boxes at once from a pool of 2"):
            async with pool.acquire_many(3):
                pass


def test_a_callback_to_loopback_is_refused_unless_allowed(server: str) -> None:
    """By default a client cannot make the service POST anywhere: not to its own loopback, where a Redis or an
    admin port may listen, nor to a cloud's metadata address."""
    with httpx.Client(base_url=server, timeout=60) as client:
        for url in ("http://127.0.0.1:6379/", "http://169.254.169.254/latest/meta-data/", "http://localhost/"):
            r = client.post("/submissions", json={"language": "py", "source": "print(3)",
                                                  "tests": [{"input": "", "answer": "3\n"}], "callback_url": url})
            assert r.status_code == 400 and "not an allowed callback host" in r.json(), r.text
        assert client.get("/status").json()["queue_depth"] == 0


@pytest.mark.parametrize("cmd,message", [
    ({"args": ["/bin/true"], "procLimit": 10**12}, "procLimit"),
    ({"args": ["/bin/true"], "cpuLimit": 10**30}, "cpuLimit"),
    ({"args": ["/bin/echo", "a\0b"]}, "args: a NUL byte"),
    ({"args": ["/bin/true"], "env": ["A=\0"]}, "env: a NUL byte"),
    ({"args": [""]}, "args: the program (args[0]) is empty"),
    ({"args": ["/bin/true"], "copyIn": {"a\0b": {"content": "x"}}}, "copyIn: a NUL byte"),
    ({"args": ["/bin/true"], "copyIn": {"": {"content": "x"}}}, "copyIn: an empty file name"),
])
def test_input_the_kernel_cannot_take_is_a_400_not_an_internal_error(server: str, cmd: dict, message: str) -> None:
    with httpx.Client(base_url=server, timeout=60) as client:
        r = client.post("/run", json={"cmd": [cmd]})
        assert r.status_code == 400 and message in r.json(), r.text
        assert client.get("/healthz").json()["ok"] is True


def test_a_request_printing_256_mb_of_nul_bytes_keeps_the_server_under_1_gib(served: tuple[str, int]) -> None:
    """16 commands each print 16 MB of NULs, each `\\u0000` in JSON: a 1.5 GB answer.  Built whole it took the
    server to 3.35 GB; sent as it is encoded, the server holds the collected bytes once."""
    url, pid = served
    mb16 = 16 * 10**6
    cmd = {"args": ["/usr/bin/head", "-c", str(mb16), "/dev/zero"], "env": ENV, **LIMITS,
           "files": [None, {"name": "stdout", "max": mb16}]}
    size = 0
    with httpx.Client(base_url=url, timeout=600) as client:
        with client.stream("POST", "/run", json={"cmd": [cmd] * 16}) as r:
            assert r.status_code == 200
            head = b""
            for piece in r.iter_raw():
                head = head or piece[:200]
                size += len(piece)
        assert head.startswith(b'[{"status":"Accepted","exitStatus":0,'), head
        assert size > 16 * mb16 * 6, size  # every NUL is there, as \u0000
        assert _peak_rss(pid) < 2**30, f"peak RSS {_peak_rss(pid) / 2**20:.0f} MiB"
        assert client.get("/healthz").json()["ok"] is True


def test_output_past_the_service_budget_is_413(server: str) -> None:
    with httpx.Client(base_url=server, timeout=60) as client:
        r = client.post("/run", json={"cmd": [{"args": ["/bin/true"], "files": [
            None, {"name": "stdout", "max": 2**30}]}]})
        assert r.status_code == 413 and "--output-budget" in r.json(), r.text
