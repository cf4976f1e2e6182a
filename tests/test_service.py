"""`sbx serve`: go-judge's documented /run requests through a real server and a real HTTP client, and bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helpers import free_port, host_processes_matching, sbx, wait_for_port

ENV = ["PATH=/usr/bin:/bin"]
COLLECT = [{"name": "stdout", "max": 10240}, {"name": "stderr", "max": 10240}]
LIMITS = {"cpuLimit": 10_000_000_000, "memoryLimit": 268_435_456, "procLimit": 50}
SUM = "#include <iostream>\nint main() { long a, b; std::cin >> a >> b; std::cout << a + b << std::endl; }\n"


def _serve(*args: str, mark: str) -> Iterator[str]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-X", f"sbx-test-mark={mark}", "-m", "sandbox", "serve", "--listen",
                               f"127.0.0.1:{port}", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    try:
        wait_for_port(port, server)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        assert host_processes_matching(mark) == [], "the service left processes behind"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    yield from _serve("--max-request", "1M", "--file-cache", "4M", mark="sbx-serve-fixture")


@pytest.fixture
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=120) as c:
        yield c


def test_compile_with_copy_in_and_cached_output_then_run_by_file_id(client: httpx.Client) -> None:
    """go-judge's documented example, unchanged: g++ in one request, the binary by its fileId in the next."""
    compiled = client.post("/run", json={"cmd": [{
        "args": ["/usr/bin/g++", "a.cc", "-o", "a"], "env": ENV, "files": [{"content": ""}, *COLLECT], **LIMITS,
        "copyIn": {"a.cc": {"content": SUM}}, "copyOut": ["stdout", "stderr"], "copyOutCached": ["a.cc", "a"]}]})
    assert compiled.status_code == 200, compiled.text
    [result] = compiled.json()
    assert result["status"] == "Accepted" and result["files"] == {"stdout": "", "stderr": ""}, result
    assert set(result["fileIds"]) == {"a.cc", "a"} and result["time"] > 0 and result["memory"] > 0
    assert client.get("/file").json()[result["fileIds"]["a.cc"]] == "a.cc"
    assert client.get(f"/file/{result['fileIds']['a.cc']}").content == SUM.encode()
    ran = client.post("/run", json={"cmd": [{
        "args": ["a"], "env": ENV, "files": [{"content": "1 1"}, *COLLECT], **LIMITS,
        "copyIn": {"a": {"fileId": result["fileIds"]["a"]}}}]}).json()
    assert [(r["status"], r["exitStatus"], r["files"]["stdout"]) for r in ran] == [("Accepted", 0, "2\n")]
    for file_id in result["fileIds"].values():
        assert client.delete(f"/file/{file_id}").status_code == 200
    assert client.get(f"/file/{result['fileIds']['a']}").status_code == 404


def test_statuses_in_go_judges_names(client: httpx.Client) -> None:
    def one(args: list[str], **limits: int) -> dict:
        [r] = client.post("/run", json={"cmd": [{"args": args, "env": ENV, "files": [{"content": ""}, *COLLECT],
                                                 **{**LIMITS, **limits}}]}).json()
        return r  # type: ignore[no-any-return]
    tle = one(["/usr/bin/python3", "-c", "while True: pass"], cpuLimit=500_000_000, clockLimit=4_000_000_000)
    assert tle["status"] == "Time Limit Exceeded" and 0.5e9 <= tle["time"] < 1e9, tle
    assert one(["/bin/sh", "-c", "exit 3"])["status"] == "Nonzero Exit Status"
    assert one(["/bin/sh", "-c", "kill -SEGV $$"])["status"] == "Signalled"
    mle = one(["/usr/bin/python3", "-c", "x = bytearray(200 * 2**20)"], memoryLimit=64 * 2**20)
    assert mle["status"] == "Memory Limit Exceeded"
    ole = one(["/usr/bin/python3", "-c", "print('x' * 20000)"])
    assert ole["status"] == "Output Limit Exceeded" and ole["fileError"] == [
        {"name": "stdout", "type": "CollectSizeExceeded"}]
    missing = client.post("/run", json={"cmd": [{"args": ["/bin/true"], "copyOut": ["nope", "maybe?"]}]}).json()
    assert missing[0]["status"] == "File Error" and [e["name"] for e in missing[0]["fileError"]] == ["nope"]


def test_a_pipeline_and_an_interactive_pair_through_pipe_mapping(client: httpx.Client) -> None:
    """go-judge's documented pipe example (cat 1 | cat), then two programs talking both ways."""
    piped = client.post("/run", json={"cmd": [
        {"args": ["/bin/cat", "1"], "env": ENV, "files": [{"content": ""}, None, COLLECT[1]], **LIMITS,
         "copyIn": {"1": {"content": "TEST 1"}}, "copyOut": ["stderr"]},
        {"args": ["/bin/cat"], "env": ENV, "files": [None, *COLLECT], **LIMITS, "copyOut": ["stdout", "stderr"]}],
        "pipeMapping": [{"in": {"index": 0, "fd": 1}, "out": {"index": 1, "fd": 0}}]}).json()
    assert [r["status"] for r in piped] == ["Accepted"] * 2 and piped[1]["files"]["stdout"] == "TEST 1", piped
    ask = "import sys\nprint('ping', flush=True)\nsys.stderr.write(input())\n"
    answer = "import sys\nsys.stderr.write(input())\nprint('pong', flush=True)\n"
    talked = client.post("/run", json={"cmd": [
        {"args": ["/usr/bin/python3", "-c", ask], "files": [None, None, COLLECT[1]], **LIMITS},
        {"args": ["/usr/bin/python3", "-c", answer], "files": [None, None, COLLECT[1]], **LIMITS}],
        "pipeMapping": [{"in": {"index": 0, "fd": 1}, "out": {"index": 1, "fd": 0}},
                        {"in": {"index": 1, "fd": 1}, "out": {"index": 0, "fd": 0}}]}).json()
    assert [(r["status"], r["files"]["stderr"]) for r in talked] == [("Accepted", "pong"), ("Accepted", "ping")]


@pytest.mark.parametrize("body,status,message", [
    (b"{not json", 400, "JSON"),
    (b'{"cmd": []}', 400, "cmd"),
    (b'{"cmd": [{"args": ["/bin/true"], "cpuLimit": -1}]}', 400, "cpuLimit"),
    (b'{"cmd": [{"args": ["/bin/cat"], "copyIn": {"x": {"src": "/etc/shadow"}}}]}', 400, "src"),
    (b'{"cmd": [{"args": ["a"]}, {"args": ["b"]}], "pipeMapping": [{"in": {"index": 0, "fd": 2}, '
     b'"out": {"index": 1, "fd": 0}}]}', 400, "pipeMapping"),
    (b"x" * (2 * 2**20), 413, "larger than"),
])
def test_bad_input_is_a_json_error_and_the_service_goes_on(client: httpx.Client, body: bytes, status: int,
                                                          message: str) -> None:
    r = client.post("/run", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status and message in r.json(), r.text
    assert client.get("/healthz").json()["ok"] is True


def test_an_unknown_file_id_is_that_commands_file_error(client: httpx.Client) -> None:
    [r] = client.post("/run", json={"cmd": [{"args": ["/bin/true"], "copyIn": {"x": {"fileId": "NOPE"}}}]}).json()
    assert r["status"] == "File Error" and "NOPE" in r["error"]


def test_the_file_cache_is_bounded(client: httpx.Client) -> None:
    ids = [client.post("/file", files={"file": ("big", b"x" * 900_000)}) for _ in range(5)]
    assert [r.status_code for r in ids] == [200, 200, 200, 200, 413]
    for r in ids[:4]:
        assert client.delete(f"/file/{r.json()}").status_code == 200


def test_languages_version_metrics_and_docs(client: httpx.Client) -> None:
    assert [lang["name"] for lang in client.get("/languages").json()][:3] == ["c", "cpp", "py"]
    assert client.get("/version").json()["buildVersion"].startswith("sbx ")
    client.post("/run", json={"cmd": [{"args": ["/bin/true"]}]})
    text = client.get("/metrics").text
    assert 'sbx_runs_total{status="Accepted"}' in text and "sbx_run_cpu_seconds_bucket" in text
    assert 'sbx_pool_boxes{state="ready"}' in text
    assert client.get("/docs").status_code == 200 and "/run" in client.get("/openapi.json").json()["paths"]


def test_a_token_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    for base in _serve("--token-file", str(tmp_path / "token"), "--pool", "1", mark="sbx-serve-token-fixture"):
        with httpx.Client(base_url=base, timeout=60) as c:
            assert c.post("/run", json={"cmd": [{"args": ["/bin/true"]}]}).status_code == 401
            assert c.get("/file", headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert c.get("/version").status_code == 200, "version and health need no token, as in go-judge"
            ok = c.post("/run", json={"cmd": [{"args": ["/bin/true"]}]}, headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code == 200 and ok.json()[0]["status"] == "Accepted"


def test_beyond_loopback_a_token_is_required() -> None:
    r = sbx("serve", "--listen", "0.0.0.0:5099")
    assert r.returncode == 125 and r.stderr == b"sbx: --listen 0.0.0.0:5099: beyond loopback a --token-file is required\n"
