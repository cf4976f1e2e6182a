"""Scale-out on Redis Streams: `sbx serve --redis` and `sbx worker`, with a real redis-server on 127.0.0.1.

200 submissions go through two workers, one of which is SIGKILLed midway: each ends with the right verdict,
written once, none lost; a job that keeps being delivered ends in the dead-letter stream as IE.  The worker
that writes a result also counts its verdict (at serve's /metrics) and POSTs its callback, once; the
operator's page shows the workers and the latest submissions.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from helpers import CallbackReceiver, free_port, render_page, server_process, stop

OK = "n, *xs = map(int, open(0).read().split())\nprint(sum(xs))\n"
WA = "print(0)\n"


@pytest.fixture
def redis_url() -> Iterator[str]:
    port = free_port()
    with server_process(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                         "no"], port):
        yield f"redis://127.0.0.1:{port}/0"


@pytest.fixture
def service(redis_url: str) -> Iterator[str]:
    port = free_port()
    with server_process([sys.executable, "-m", "sandbox", "serve", "--listen", f"127.0.0.1:{port}", "--pool", "1",
                         "--redis", redis_url, "--max-pending", "500", "--callback-allow", "127.0.0.1"], port,
                        "sbx-serve-redis-fixture"):
        yield f"http://127.0.0.1:{port}"


def _worker(redis_url: str, name: str, lease: str = "3") -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-X", f"sbx-test-mark={name}", "-m", "sandbox", "worker", "--redis",
                             redis_url, "--judges", "2", "--lease", lease, "--name", name],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_two_hundred_submissions_survive_a_killed_worker(redis_url: str, service: str) -> None:
    workers = [_worker(redis_url, "sbx-worker-a"), _worker(redis_url, "sbx-worker-b")]
    store = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        with httpx.Client(base_url=service, timeout=30) as client:
            expected = {}
            for i in range(200):
                source = OK if i % 2 == 0 else WA
                r = client.post("/submissions", json={"language": "py", "source": source,
                                                      "tests": [{"input": f"2\n{i} 1\n", "answer": f"{i + 1}\n"}]})
                assert r.status_code == 202, r.text
                expected[r.json()["id"]] = "OK" if i % 2 == 0 else "WA"
            done: dict[str, str] = {}
            killed = False
            deadline = time.monotonic() + 600
            while len(done) < len(expected):
                assert time.monotonic() < deadline, f"{len(done)} of {len(expected)} done"
                for sid in expected.keys() - done.keys():
                    state = client.get(f"/submissions/{sid}").json()
                    if state["state"] == "done":
                        done[sid] = state["result"]["verdict"]
                if not killed and len(done) >= 40:
                    workers[0].send_signal(signal.SIGKILL)  # mid-judging: its jobs stay pending until reclaimed
                    workers[0].wait()
                    held = store.xpending_range("sbx:submissions", "sbx-workers", min="-", max="+", count=10,
                                                consumername="sbx-worker-a")
                    killed = True
                time.sleep(0.5)
            assert done == expected
            metrics = client.get("/metrics").text
    finally:
        for w in workers:
            assert stop(w)
    assert int(store.get("sbx:results-written") or 0) == 200, "every result was written exactly once"
    assert store.xlen("sbx:submissions") == 0 and store.xpending("sbx:submissions", "sbx-workers")["pending"] == 0
    assert killed and "sbx_queue_depth 0.0" in metrics
    taken_over = float(re.search(r"^sbx_redeliveries_total (\S+)$", metrics, re.M).group(1))  # type: ignore[union-attr]
    assert taken_over == int(store.get("sbx:redeliveries") or 0) >= len(held), "the killed worker's jobs, taken over"


def test_a_job_delivered_too_often_goes_to_the_dead_letter_stream(redis_url: str, service: str) -> None:
    with httpx.Client(base_url=service, timeout=30) as client:
        sid = client.post("/submissions", json={"language": "py", "source": OK,
                                                "tests": [{"input": "1\n1\n", "answer": "1\n"}]}).json()["id"]
        store = redis.Redis.from_url(redis_url, decode_responses=True)
        [[_, [(entry, _)]]] = store.xreadgroup("sbx-workers", "ghost", {"sbx:submissions": ">"}, count=1)
        for _ in range(3):  # a worker that died three more times while judging it
            store.xclaim("sbx:submissions", "sbx-workers", "ghost", min_idle_time=0, message_ids=[entry])
        worker = _worker(redis_url, "sbx-worker-c", lease="1")
        try:
            deadline = time.monotonic() + 120
            while (state := client.get(f"/submissions/{sid}").json())["state"] != "done":
                assert time.monotonic() < deadline, state
                time.sleep(0.3)
        finally:
            assert stop(worker)
    assert state["result"]["verdict"] == "IE" and "deliveries" in state["result"]["compile_error"]
    assert [fields["id"] for _, fields in store.xrange("sbx:dead")] == [sid]


def test_verdicts_callbacks_and_the_operators_page(redis_url: str, service: str, tmp_path: Path) -> None:
    worker = _worker(redis_url, "sbx-worker-d")
    try:
        with CallbackReceiver(failures=1) as receiver, httpx.Client(base_url=service, timeout=30) as client:
            ids = {}
            for source, verdict in ((OK, "OK"), (WA, "WA"), (OK, "OK")):
                r = client.post("/submissions", json={"language": "py", "source": source, "callback_url": receiver.url,
                                                      "tests": [{"name": "<b>bold</b>", "input": "1\n2\n",
                                                                 "answer": "2\n"}]})
                ids[r.json()["id"]] = verdict
            deadline = time.monotonic() + 120
            while any(client.get(f"/submissions/{i}").json()["state"] != "done" for i in ids):
                assert time.monotonic() < deadline
                time.sleep(0.3)
            taken = receiver.wait(3)
            metrics = client.get("/metrics").text
            status = client.get("/status").json()
            dom = render_page(f"{service}/", tmp_path)
    finally:
        assert stop(worker)
    assert sorted((b["id"], b["result"]["verdict"]) for b in taken) == sorted(ids.items()), "each taken once"
    assert len(receiver.attempts) == 4, "the first attempt failed (503) and was retried"
    assert 'sbx_submissions_total{verdict="OK"} 2.0' in metrics and 'sbx_submissions_total{verdict="WA"} 1.0' in metrics
    assert status["mode"] == "redis" and status["queue_depth"] == 0 and status["pool"] is not None
    assert [(w["name"], w["alive"], w["pending"]) for w in status["workers"]] == [("sbx-worker-d", True, 0)]
    assert [(s["id"], s["state"], s["verdict"]) for s in status["submissions"]] == [
        (i, "done", v) for i, v in reversed(ids.items())], "newest first"
    assert [s["detail"] for s in status["submissions"]] == ["", "<b>bold</b>", ""]
    rows = dict(re.findall(r'<tr data-id="([0-9a-f]+)"[^>]*>(.*?)</tr>', dom, re.S))
    assert {i: re.findall(r'<td class="verdict">(\w+)</td>', row) for i, row in rows.items()} == {
        i: [v] for i, v in ids.items()}
    assert '<td class="name">sbx-worker-d</td>' in dom and "(redis)" in dom and "&lt;b&gt;bold&lt;/b&gt;" in dom
    assert "<b>bold</b>" not in dom
    store = redis.Redis.from_url(redis_url, decode_responses=True)
    assert store.keys("sbx:worker:*") == [], "a stopped worker's heartbeat is gone"


@pytest.mark.parametrize("command", ["worker", "serve"])
def test_a_worker_or_server_without_redis_is_one_line(command: str) -> None:
    listen = ["--listen", f"127.0.0.1:{free_port()}"] if command == "serve" else []
    r = subprocess.run([sys.executable, "-m", "sandbox", command, *listen, "--redis",
                        f"redis://127.0.0.1:{free_port()}/0"], capture_output=True, timeout=60)
    assert r.returncode == 125 and r.stderr.count(b"\n") == 1 and r.stderr.startswith(b"sbx: --redis redis://")


def _redis(port: int) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    return server_process(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                           "no"], port)


@contextlib.contextmanager
def _serving(redis_url: str, mark: str) -> Iterator[httpx.Client]:
    """`sbx serve --redis` on a port of its own, and a client of it."""
    port = free_port()
    with server_process([sys.executable, "-m", "sandbox", "serve", "--listen", f"127.0.0.1:{port}", "--pool", "1",
                         "--redis", redis_url], port, mark), \
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        yield client


def _submit_all(client: httpx.Client, count: int, first: int = 0) -> dict[str, str]:
    """`count` submissions, each sent again while the service answers 503 (its Redis away); id -> verdict."""
    expected = {}
    for i in range(first, first + count):
        source = OK if i % 2 == 0 else WA
        deadline = time.monotonic() + 60
        while (r := client.post("/submissions", json={"language": "py", "source": source, "tests": [
                {"input": f"2\n{i} 1\n", "answer": f"{i + 1}\n"}]})).status_code == 503:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.5)
        assert r.status_code == 202, r.text
        expected[r.json()["id"]] = "OK" if i % 2 == 0 else "WA"
    return expected


def _verdicts(client: httpx.Client, ids: dict[str, str], timeout: float = 300) -> dict[str, str]:
    done: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(ids) and time.monotonic() < deadline:
        for sid in ids.keys() - done.keys():
            r = client.get(f"/submissions/{sid}")
            if r.status_code == 200 and r.json()["state"] in ("done", "lost"):
                state = r.json()
                done[sid] = state["result"]["verdict"] if state["state"] == "done" else "lost"
        time.sleep(0.3)
    return done


def test_a_redis_stall_costs_latency_never_a_worker() -> None:
    """Redis stopped (SIGSTOP) for 10 s, twice the client's socket timeout, while 30 submissions are judged: the
    workers wait it out, /healthz says Redis is down meanwhile, and every submission is judged."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with _redis(port) as store:
        workers = [_worker(url, "sbx-worker-stall-a"), _worker(url, "sbx-worker-stall-b")]
        try:
            with _serving(url, "sbx-serve-stall") as client:
                expected = _submit_all(client, 30)
                time.sleep(1)  # judging has begun: the stall meets jobs in flight
                store.send_signal(signal.SIGSTOP)
                try:
                    health = client.get("/healthz")
                    time.sleep(8)
                finally:
                    store.send_signal(signal.SIGCONT)
                assert _verdicts(client, expected, timeout=180) == expected
                assert [w.poll() for w in workers] == [None, None], "the workers rode the stall out"
                assert (health.status_code, health.json()["redis"]) == (503, False), health.text
                assert client.get("/healthz").status_code == 200
        finally:
            for w in workers:
                stop(w)
    said = workers[0].stderr.read().decode() if workers[0].stderr else ""
    assert "Traceback" not in said, said


def test_a_redis_restart_loses_its_data_and_no_worker() -> None:
    """Redis killed and started again empty: the workers make the consumer group again and judge what comes
    next; submit is 503 while Redis is away; what Redis lost answers as lost, not as queued forever."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    redis_server = _redis(port)
    redis_server.__enter__()
    workers = [_worker(url, "sbx-worker-restart-a"), _worker(url, "sbx-worker-restart-b")]
    try:
        with _serving(url, "sbx-serve-restart") as client:
            before = _submit_all(client, 4)
            assert _verdicts(client, before) == before
            redis_server.__exit__(None, None, None)
            refused = client.post("/submissions", json={"language": "py", "source": OK, "tests": [
                {"input": "1\n1\n", "answer": "1\n"}]})
            assert refused.status_code == 503 and "Redis" in refused.json(), refused.text
            assert client.get("/healthz").status_code == 503
            redis_server = _redis(port)
            redis_server.__enter__()
            after = _submit_all(client, 6, first=10)
            assert _verdicts(client, after) == after
            assert _verdicts(client, before) == {sid: "lost" for sid in before}
            assert client.get("/status").status_code == 200
        assert [w.poll() for w in workers] == [None, None], "the workers survived the restart"
    finally:
        for w in workers:
            stop(w)
        redis_server.__exit__(None, None, None)
