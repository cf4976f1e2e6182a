"""The service: HTTP /run of /bin/true against the in-process pool run, and submissions/s with one and two workers.

    python bench/service_bench.py [N]    # as an unprivileged user; N runs (default 200), N/5 submissions

Starts `sbx serve` (pool of 2) and, for the queue, a redis-server on 127.0.0.1, and stops them after.
/run (from two clients) and the API (on asyncio, the server's loop, and on trio) alternate, one request at a time
(this VM drifts by tens of percent).
"""

from __future__ import annotations

import http.client
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import free_port, server_process, stop  # noqa: E402
from sandbox import Limits, SandboxPool  # noqa: E402

TRUE = {"cmd": [{"args": ["/bin/true"], "env": ["PATH=/usr/bin:/bin"], "files": [
    {"content": ""}, {"name": "stdout", "max": 1024}, {"name": "stderr", "max": 1024}], "cpuLimit": 1_000_000_000,
    "memoryLimit": 268_435_456, "procLimit": 16}]}
SUM = "n, *xs = map(int, open(0).read().split())\nprint(sum(xs))\n"


async def _api_runs(n: int) -> list[float]:
    """A pool run as /run makes it: a box taken from the pool, the run, the box given back (reset meanwhile)."""
    times = []
    async with SandboxPool(size=2, policy="compile") as pool:
        for _ in range(n):
            t = time.perf_counter()
            async with pool.acquire() as box:
                await box.run(["/bin/true"], limits=Limits(cpu_time=1, memory=2**28, pids=16))
            times.append(time.perf_counter() - t)
    return times


def run_vs_api(n: int) -> None:
    """http.client, a lean client, shows what the server costs; httpx what a Python client pays on top."""
    port = free_port()
    times: dict[str, list[float]] = {"http.client": [], "httpx": [], "asyncio": [], "trio": []}
    body = json.dumps(TRUE).encode()
    headers = {"content-type": "application/json"}
    with server_process([sys.executable, "-m", "sandbox", "serve", "--listen", f"127.0.0.1:{port}"], port), \
            httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        lean = http.client.HTTPConnection("127.0.0.1", port)

        def post_lean() -> bytes:
            lean.request("POST", "/run", body, headers)
            return lean.getresponse().read()

        def post_httpx() -> bytes:
            return client.post("/run", content=body, headers=headers).content

        for _ in range(n // 20):  # alternate in rounds of 20
            for name, post in (("http.client", post_lean), ("httpx", post_httpx)):
                for _ in range(20):
                    t = time.perf_counter()
                    answer = post()
                    times[name].append(time.perf_counter() - t)
                    assert json.loads(answer)[0]["status"] == "Accepted"
            for backend in ("asyncio", "trio"):
                times[backend] += anyio.run(_api_runs, 20, backend=backend)
    base = statistics.median(times["asyncio"])
    for name, what in (("http.client", "HTTP POST /run of /bin/true, http.client"),
                       ("httpx", "HTTP POST /run of /bin/true, httpx"),
                       ("asyncio", "in-process pool run of /bin/true on asyncio (take, run, give back)"),
                       ("trio", "in-process pool run of /bin/true on trio (take, run, give back)")):
        m = statistics.median(times[name])
        print(f"| {what}, median of {len(times[name])} | {m * 1000:.2f} ms | {m / base:.2f}x |")


def submissions_per_second(n: int, workers: int) -> float:
    rport, sport = free_port(), free_port()
    url = f"redis://127.0.0.1:{rport}/0"
    with server_process(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", ""], rport), \
            server_process([sys.executable, "-m", "sandbox", "serve", "--listen", f"127.0.0.1:{sport}", "--pool", "1",
                     "--redis", url, "--max-pending", str(n + 1)], sport):
        procs = [subprocess.Popen([sys.executable, "-m", "sandbox", "worker", "--redis", url, "--judges", "2"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(workers)]
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{sport}", timeout=30) as client:
                t = time.perf_counter()
                ids = [client.post("/submissions", json={"language": "py", "source": SUM, "tests": [
                    {"input": "2\n1 2\n", "answer": "3\n"}]}).json()["id"] for _ in range(n)]
                pending = set(ids)
                while pending:
                    pending = {i for i in pending if client.get(f"/submissions/{i}").json()["state"] != "done"}
                    time.sleep(0.1)
                return n / (time.perf_counter() - t)
        finally:
            for p in procs:
                stop(p)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    print("| what | time | ratio |\n|---|---:|---:|")
    run_vs_api(n)
    one = submissions_per_second(n // 5, 1)
    two = submissions_per_second(n // 5, 2)
    print(f"| submissions/s, 1 worker (2 judges), {n // 5} Python submissions | {one:.2f} /s | 1.00x |")
    print(f"| submissions/s, 2 workers (2 judges each), {n // 5} Python submissions | {two:.2f} /s | {two / one:.2f}x |")


if __name__ == "__main__":
    main()
