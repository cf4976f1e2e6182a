"""`sbx serve`: go-judge's documented /run requests through a real server and a real HTTP client, and bad input."""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helpers import CallbackReceiver, free_port, sbx, server_process
from sandbox.service import callback

ENV = ["PATH=/usr/bin:/bin"]
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sum"
COLLECT = [{"name": "stdout", "max": 10240}, {"name": "stderr", "max": 10240}]
LIMITS = {"cpuLimit": 10_000_000_000, "memoryLimit": 268_435_456, "procLimit": 50}
SUM = "#include <iostream>\nint main() { long a, b; std::cin >> a >> b; std::cout << a + b << std::endl; }\n"


def _serve(*args: str, mark: str) -> Iterator[str]:
    port = free_port()
    with server_process([sys.executable, "-m", "sandbox", "serve", "--listen", f"127.0.0.1:{port}", *args], port,
                        mark):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    yield from _serve("--pool", "3", "--max-request", "3M", "--file-cache", "4M", "--callback-allow", "127.0.0.1",
                      mark="sbx-serve-fixture")


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


def test_any_pipe_graph_any_fd_and_a_terminal(client: httpx.Client) -> None:
    """Three commands: a file at fd 3 out through stderr into the next's stdin, whose stdout is the third's fd 5;
    then a command on a terminal, whose output is collected as stdout."""
    ran = client.post("/run", json={"cmd": [
        {"args": ["/bin/sh", "-c", "cat <&3 >&2"], "env": ENV, "files": [None, None, None, {"content": "fd 3\n"}]},
        {"args": ["/usr/bin/tr", "a-z", "A-Z"], "env": ENV, "files": [None, None, COLLECT[1]]},
        {"args": ["/bin/sh", "-c", "cat <&5; cat"], "env": ENV, "files": [{"content": "and stdin\n"}, *COLLECT]}],
        "pipeMapping": [{"in": {"index": 0, "fd": 2}, "out": {"index": 1, "fd": 0}},
                        {"in": {"index": 1, "fd": 1}, "out": {"index": 2, "fd": 5}}]}).json()
    assert [r["status"] for r in ran] == ["Accepted"] * 3, ran
    assert ran[2]["files"]["stdout"] == "FD 3\nand stdin\n"
    tty = client.post("/run", json={"cmd": [{"args": ["/bin/sh", "-c", "test -t 2 && echo terminal >&2"], "env": ENV,
                                             "tty": True, "files": [{"content": ""}, *COLLECT]}]}).json()[0]
    assert (tty["status"], tty["files"]) == ("Accepted", {"stdout": "terminal\r\n", "stderr": ""}), tty


@pytest.mark.parametrize("body,status,message", [
    (b"{not json", 400, "JSON"),
    (b'{"cmd": []}', 400, "cmd"),
    (b'{"cmd": [{"args": ["/bin/true"], "cpuLimit": -1}]}', 400, "cpuLimit"),
    (b'{"cmd": [{"args": ["/bin/cat"], "copyIn": {"x": {"src": "/etc/shadow"}}}]}', 400, "src"),
    (b'{"cmd": [{"args": ["a"]}, {"args": ["b"]}], "pipeMapping": [{"in": {"index": 0, "fd": 2}, '
     b'"out": {"index": 2, "fd": 0}}]}', 400, "pipeMapping"),
    (b'{"cmd": [{"args": ["a"], "files": [{"content": ""}]}, {"args": ["b"]}], "pipeMapping": [{"in": {"index": 1, '
     b'"fd": 1}, "out": {"index": 0, "fd": 0}}]}', 400, "null"),
    (b"x" * (4 * 2**20), 413, "larger than"),
    (b'{"cmd": [{"args": ["/bin/true"], "files": [null, {"name": "stdout", "max": 600000000}]}]}', 413, "add up to"),
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
    version = client.get("/version").json()
    assert version["buildVersion"].startswith("v") and version["server"] == "sbx" and version["symlink"] is True
    assert client.get("/config").json()["runnerConfig"]["cgroupType"] in (0, 2)
    client.post("/run", json={"cmd": [{"args": ["/bin/true"]}]})
    text = client.get("/metrics").text
    assert 'sbx_runs_total{status="Accepted"}' in text and "sbx_run_cpu_seconds_bucket" in text
    assert 'sbx_pool_boxes{state="ready"}' in text
    assert "sbx_redeliveries_total 0.0" in text and "sbx_internal_errors_total 0.0" in text, "one process"
    assert client.get("/docs").status_code == 200
    doc = client.get("/openapi.json").json()  # /run's body, read by its handler, is documented with its models
    body = doc["paths"]["/run"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "cmd" in body["properties"] and {"Cmd", "FileSpec", "PipeMap"} <= set(doc["components"]["schemas"])


def test_a_token_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    for base in _serve("--token-file", str(tmp_path / "token"), "--pool", "1", mark="sbx-serve-token-fixture"):
        with httpx.Client(base_url=base, timeout=60) as c:
            for _ in range(20):  # refused unread, each body is read or the connection closed: the next one is served
                assert c.post("/run", json={"cmd": [{"args": ["/bin/true"]}]}).status_code == 401
                assert c.get("/file", headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert c.get("/version").status_code == 200, "version and health need no token, as in go-judge"
            ok = c.post("/run", json={"cmd": [{"args": ["/bin/true"]}]}, headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code == 200 and ok.json()[0]["status"] == "Accepted"


def test_beyond_loopback_a_token_is_required() -> None:
    r = sbx("serve", "--listen", "0.0.0.0:5099")
    assert r.returncode == 125 and r.stderr == b"sbx: --listen 0.0.0.0:5099: beyond loopback a --token-file is required\n"


def _tests() -> list[dict[str, str]]:
    return [{"name": p.stem, "input": p.read_text(), "answer": p.with_suffix(".out").read_text()}
            for p in sorted((EXAMPLE / "tests").glob("*.in"))]


def _done(client: httpx.Client, submission_id: str) -> dict:
    deadline = time.monotonic() + 120
    while (state := client.get(f"/submissions/{submission_id}").json())["state"] != "done":
        assert time.monotonic() < deadline, state
        time.sleep(0.1)
    return state  # type: ignore[no-any-return]


def test_submissions_are_judged_with_sbx_judges_record(client: httpx.Client) -> None:
    ids = {}
    for solution in ("ok.cpp", "wa.c", "tle.c"):
        r = client.post("/submissions", json={"language": solution.split(".")[1],
                                              "source": (EXAMPLE / "solutions" / solution).read_text(),
                                              "tests": _tests(), "limits": {"time": 0.5, "memory": 64 * 2**20}})
        assert r.status_code == 202, r.text
        ids[solution] = r.json()["id"]
    verdicts = {s: _done(client, i)["result"] for s, i in ids.items()}
    assert {s: r["verdict"] for s, r in verdicts.items()} == {"ok.cpp": "OK", "wa.c": "WA", "tle.c": "TLE"}
    assert [t["status"] for t in verdicts["wa.c"]["tests"]] == ["OK", "OK", "WA"]
    assert set(verdicts["ok.cpp"]) == {"verdict", "language", "compile", "compile_error", "tests", "skipped"}
    assert client.get("/submissions/nope").status_code == 404
    bad = client.post("/submissions", json={"language": "cobol", "source": "", "tests": _tests()})
    assert bad.status_code == 400 and "cobol" in bad.json()
    assert 'sbx_submissions_total{verdict="WA"}' in client.get("/metrics").text


def test_a_callback_gets_the_record(client: httpx.Client) -> None:
    with CallbackReceiver() as receiver:
        r = client.post("/submissions", json={"language": "py", "source": (EXAMPLE / "solutions" / "ok.py").read_text(),
                                              "tests": _tests(), "callback_url": receiver.url})
        _done(client, r.json()["id"])
        got = receiver.wait(1)
    assert [(g["id"], g["state"], g["result"]["verdict"]) for g in got] == [(r.json()["id"], "done", "OK")]


def test_a_callback_that_fails_for_good_is_kept_for_the_operator(client: httpx.Client) -> None:
    with CallbackReceiver(failures=10, fail_with=502) as receiver:
        r = client.post("/submissions", json={"language": "py", "source": (EXAMPLE / "solutions" / "ok.py").read_text(),
                                              "tests": _tests(), "callback_url": receiver.url})
        _done(client, r.json()["id"])
        deadline = time.monotonic() + 30
        while not (failed := client.get("/status").json()["callback_failures"]) and time.monotonic() < deadline:
            time.sleep(0.2)
    assert [(f["id"], f["url"], f["error"]) for f in failed][:1] == [
        (r.json()["id"], receiver.url, f"HTTP 502 (after {callback.ATTEMPTS} attempts)")]


@pytest.mark.parametrize("url,refused", [
    ("http://127.0.0.1:9/x", False), ("http://127.0.0.2/", True), ("http://localhost/", True),
    ("http://169.254.169.254/latest/meta-data/", True), ("http://[::1]/", True), ("ftp://127.0.0.1/", True),
    ("http://10.1.2.3/", False), ("http://judge.example/", False), ("http://JUDGE.example./", False),
    ("http://evil.example/", True), ("http://127.0.0.1:99999/", True),
])
def test_callback_hosts_are_only_those_allowed(url: str, refused: bool) -> None:
    allowed = callback.Allowed.parse(["127.0.0.1,10.0.0.0/8", "judge.example"])
    assert (allowed.refusal(url) is not None) is refused


@pytest.mark.parametrize("failures,status,attempts,taken", [
    (10, 503, callback.ATTEMPTS, False),  # a failing receiver: tried a bounded number of times
    (1, 404, 1, False),  # a refusal is final
    (0, 503, 1, True),
])
async def test_callback_attempts_are_bounded(failures: int, status: int, attempts: int, taken: bool) -> None:
    with CallbackReceiver(failures=failures, fail_with=status) as receiver:
        assert (await callback.post(receiver.url, {"id": "x"}) is None) is taken
    assert len(receiver.attempts) == attempts


async def test_an_unreachable_receiver_is_retried_with_backoff() -> None:
    started = time.monotonic()
    assert (await callback.post(f"http://127.0.0.1:{free_port()}/", {}) or "").startswith("ConnectError")
    assert time.monotonic() - started >= sum(callback.FIRST_DELAY * 2**k for k in range(callback.ATTEMPTS - 1))


def test_sbx_submit_prints_the_table_sbx_judge_prints(server: str) -> None:
    args = [str(EXAMPLE / "solutions" / "wa.c"), "--tests", str(EXAMPLE / "tests")]
    submitted = sbx("submit", "--server", server, *args, "--wait", timeout=180)
    judged = sbx("judge", *args, timeout=180)
    assert submitted.returncode == judged.returncode == 1, submitted.stderr

    def shape(out: bytes) -> list[list[str]]:
        return [line.split()[:2] + line.split()[4:] for line in out.decode().splitlines()]
    assert shape(submitted.stdout) == shape(judged.stdout)
    assert submitted.stdout.decode().splitlines()[-1] == "verdict: WA"
    offline = sbx("submit", "--server", "http://127.0.0.1:9", *args, "--wait")
    assert offline.returncode == 125 and offline.stderr.startswith(b"sbx: --server http://127.0.0.1:9: ")


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_the_app_serves_in_process_on_either_event_loop(anyio_backend: str) -> None:
    """The app in a caller's own ASGI server, on asyncio or trio: pool, /run and the judging task all run on the
    loop it is given."""
    import anyio
    from hypercorn.config import Config

    from sandbox.service import ServiceConfig, create_app

    if anyio_backend == "asyncio":
        from hypercorn.asyncio import serve
    else:
        from hypercorn.trio import serve
    port = free_port()
    config = Config()
    config.bind, config.accesslog = [f"127.0.0.1:{port}"], None
    stopping = anyio.Event()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(functools.partial(serve, create_app(ServiceConfig(pool=1)), config,  # type: ignore[arg-type]
                                           shutdown_trigger=stopping.wait))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            with anyio.fail_after(60):
                while not await _answers(c, "/healthz"):
                    await anyio.sleep(0.05)
                ran = (await c.post("/run", json={"cmd": [{"args": ["/bin/echo", anyio_backend], "env": ENV,
                                                          "files": [{"content": ""}, *COLLECT], **LIMITS}]})).json()
                assert [(r["status"], r["files"]["stdout"]) for r in ran] == [("Accepted", f"{anyio_backend}\n")]
                source = (EXAMPLE / "solutions" / "ok.py").read_text()
                submitted = (await c.post("/submissions", json={"language": "py", "source": source,
                                                                "tests": _tests()})).json()
                while (state := (await c.get(f"/submissions/{submitted['id']}")).json())["state"] != "done":
                    await anyio.sleep(0.1)
        stopping.set()
    assert state["result"]["verdict"] == "OK", state


async def _answers(c: httpx.AsyncClient, path: str) -> bool:
    try:
        return (await c.get(path)).status_code == 200
    except httpx.TransportError:
        return False


def _one(client: httpx.Client, **cmd: object) -> dict:
    body = {"cmd": [{"env": ENV, "files": [{"content": ""}, *COLLECT], **LIMITS, **cmd}]}
    r = client.post("/run", json=body)
    assert r.status_code == 200, r.text
    return r.json()[0]


def test_go_judges_limits_env_and_symlinks(client: httpx.Client) -> None:
    """realCpuLimit is the wall limit; env is exactly the list given; copyIn makes a symlink; addressSpaceLimit
    makes an allocation past memoryLimit fail inside the program rather than end the run."""
    slept = _one(client, args=["/bin/sleep", "5"], realCpuLimit=500_000_000)
    assert slept["status"] == "Time Limit Exceeded" and slept["runTime"] < 3 * 10**9, slept
    env = _one(client, args=["/usr/bin/env"], env=["PATH=/bin", "A=1=2"])
    assert env["files"]["stdout"] == "PATH=/bin\nA=1=2\n", env
    linked = _one(client, args=["/bin/sh", "-c", "readlink l; cat l"], copyIn={
        "f": {"content": "through the link"}, "l": {"symlink": "f"}})
    assert linked["files"]["stdout"] == "f\nthrough the link", linked
    pinned = _one(client, args=["/bin/grep", "Cpus_allowed_list", "/proc/self/status"], cpuSetLimit="0")
    assert pinned["files"]["stdout"].split() == ["Cpus_allowed_list:", "0"], pinned
    grab = "x = bytearray(200 * 2**20)\nprint('allocated')"
    capped = _one(client, args=["/usr/bin/python3", "-c", grab], memoryLimit=100 * 2**20, addressSpaceLimit=True)
    assert capped["status"] == "Nonzero Exit Status" and "MemoryError" in capped["files"]["stderr"], capped


@pytest.mark.parametrize("cmd,status,files,errors", [
    ({"args": ["/usr/bin/mkfifo", "out"], "copyOut": ["out"]}, "File Error", {},
     [("out", "CopyOutNotRegularFile")]),
    ({"args": ["/bin/ln", "-s", "/etc/passwd", "out"], "copyOut": ["out"]}, "File Error", {}, [("out", "CopyOutOpen")]),
    ({"args": ["/bin/true"], "copyOut": ["missing?"]}, "Accepted", {}, []),
    ({"args": ["/bin/true"], "copyIn": {"in": {"content": "1234567890"}}, "copyOut": ["in"], "copyOutMax": 5},
     "File Error", {}, [("in", "CopyOutSizeExceeded")]),
    ({"args": ["/bin/true"], "copyIn": {"in": {"content": "1234567890"}}, "copyOut": ["in"], "copyOutMax": 5,
      "copyOutTruncate": True}, "File Error", {"in": "12345"}, [("in", "CopyOutSizeExceeded")]),
])
def test_copy_out_errors_have_go_judges_types(client: httpx.Client, cmd: dict, status: str, files: dict,
                                              errors: list) -> None:
    got = _one(client, **cmd)
    assert got["status"] == status, got
    assert {k: v for k, v in got.get("files", {}).items() if k not in ("stdout", "stderr")} == files
    assert [(e["name"], e["type"]) for e in got.get("fileError", [])] == errors
    if errors and errors[0][1] == "CopyOutNotRegularFile":
        assert "not a regular file" in got["error"]


@pytest.mark.parametrize("cmd,message", [
    ({"args": ["/bin/true"], "files": [None, None, None, {"name": "x"}]}, "collector"),
    ({"args": ["/bin/true"], "cpuSetLimit": "0-4096"}, "cpuSetLimit"),
    ({"args": ["/bin/true"], "cpuSetLimit": "a"}, "cpuSetLimit"),
    ({"args": ["/bin/true"], "env": ["NOEQUALS"]}, "NAME=VALUE"),
])
def test_what_sbx_does_not_do_is_a_400_not_silence(client: httpx.Client, cmd: dict, message: str) -> None:
    r = client.post("/run", json={"cmd": [cmd]})
    assert r.status_code == 400 and message in r.json(), r.text


def test_src_is_read_only_beneath_a_src_prefix(tmp_path: Path) -> None:
    """go-judge's `src`, under --src-prefix: a file beneath it is read, and neither `..` nor a link leads out."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("from the server\n")
    (data / "out").symlink_to(tmp_path / "secret")
    (tmp_path / "secret").write_text("SECRET\n")
    for base in _serve("--src-prefix", f"{data},/dev/null", "--pool", "1", mark="sbx-serve-src-fixture"):
        with httpx.Client(base_url=base, timeout=60) as c:
            cat = {"args": ["/bin/cat", "-", "copied"], "env": ENV, **LIMITS, "files": [
                {"src": "/dev/null"}, *COLLECT], "copyIn": {"copied": {"src": f"{data}/in.txt"}}}
            got = c.post("/run", json={"cmd": [cat]}).json()[0]
            assert (got["status"], got["files"]["stdout"]) == ("Accepted", "from the server\n"), got
            for src in (f"{data}/../secret", f"{data}/out", str(tmp_path / "secret"), "/etc/passwd"):
                r = c.post("/run", json={"cmd": [{**cat, "copyIn": {"copied": {"src": src}}}]})
                assert r.status_code == 400 and "src" in r.json() and "SECRET" not in r.text, (src, r.text)


def test_hydros_compile_and_run_requests_run_as_sent(tmp_path: Path) -> None:
    """The bodies Hydro's judge sends (packages/hydrojudge sandbox.ts's proc) to compile, with the binary cached,
    and then to run it on a test whose input it names by `src` on the server; then it deletes the binary."""
    (tmp_path / "1.in").write_text("20 22\n")
    mib = 1024 * 1024

    def proc(args: list[str], stdin: dict, copy_in: dict, copy_out: list[str], cached: list[str]) -> dict:
        return {"args": args, "env": ["PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/w"],
                "files": [stdin, {"name": "stdout", "max": 4 * mib}, {"name": "stderr", "max": 4 * mib}],
                "cpuLimit": 10_000_000_000, "clockLimit": 30_000_000_000, "memoryLimit": 512 * mib,
                "strictMemoryLimit": False, "stackLimit": 0, "procLimit": 32, "copyOutMax": 3 * 32 * mib,
                "copyIn": copy_in, "copyOut": copy_out, "copyOutCached": cached}

    for base in _serve("--src-prefix", str(tmp_path), "--pool", "1", mark="sbx-serve-hydro-fixture"):
        with httpx.Client(base_url=base, timeout=120) as c:
            built = c.post("/run", json={"cmd": [proc(["/usr/bin/g++", "foo.cc", "-o", "foo"], {"content": ""},
                                                      {"foo.cc": {"content": SUM}}, [], ["foo"])]}).json()[0]
            assert built["status"] == "Accepted" and "foo" in built["fileIds"], built
            ran = c.post("/run", json={"cmd": [proc(["foo"], {"src": str(tmp_path / "1.in")},
                                                    {"foo": {"fileId": built["fileIds"]["foo"]}}, ["stdout"],
                                                    [])]}).json()[0]
            assert (ran["status"], ran["files"]["stdout"]) == ("Accepted", "42\n"), ran
            assert c.delete(f"/file/{built['fileIds']['foo']}").status_code == 200


def test_hydros_interactive_request_runs_as_sent(client: httpx.Client) -> None:
    """The body Hydro's judge sends for an interactive problem (packages/hydrojudge: judge/interactive.ts and
    sandbox.ts's proc), field for field: files at /w, the interactor writing /w/tout, both pipes proxied with a
    name and a max, stdin's files slot null for the pipes."""
    interactor = ("import sys\nn = open('/w/in').read().split()[0]\nprint(n, flush=True)\nanswer = input()\n"
                  "open('/w/tout', 'w').write('ok\\n' if answer == str(2 * int(n)) else 'wrong\\n')\n")
    user = "print(2 * int(input()), flush=True)\n"
    mib = 1024 * 1024

    def proc(args: list[str], copy_in: dict, copy_out: list[str]) -> dict:
        return {"args": args, "env": ["PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/w"],
                "files": [None, None, {"name": "stderr", "max": 4 * mib}],
                "cpuLimit": 1_000_000_000, "clockLimit": 3_000_000_000, "memoryLimit": 256 * mib,
                "strictMemoryLimit": False, "stackLimit": 0, "procLimit": 32, "copyOutMax": 3 * 32 * mib,
                "copyIn": copy_in, "copyOut": copy_out, "copyOutCached": []}

    body = {"cmd": [proc(["/usr/bin/python3", "user.py"], {"user.py": {"content": user}}, []),
                    proc(["/usr/bin/python3", "interactor.py", "/w/in", "/w/tout", "/w/out"],
                         {"interactor.py": {"content": interactor}, "in": {"content": "21\n"},
                          "out": {"content": "42\n"}}, ["/w/tout?"])],
            "pipeMapping": [{"proxy": True, "max": 32 * mib, "in": {"index": 0, "fd": 1}, "out": {"index": 1, "fd": 0},
                             "name": "userToInteractor"},
                            {"proxy": True, "max": 32 * mib, "in": {"index": 1, "fd": 1}, "out": {"index": 0, "fd": 0},
                             "name": "interactorToUser"}]}
    user_result, interactor_result = client.post("/run", json=body).json()
    assert (user_result["status"], interactor_result["status"]) == ("Accepted", "Accepted"), (user_result,
                                                                                               interactor_result)
    assert interactor_result["files"]["/w/tout"] == "ok\n"
    assert user_result["files"]["userToInteractor"] == "42\n"
    assert interactor_result["files"]["interactorToUser"] == "21\n"


def test_the_working_directory_is_go_judges(client: httpx.Client) -> None:
    got = _one(client, args=["/bin/sh", "-c", "pwd; cat /w/a; echo made > /w/b"], copyIn={"a": {"content": "in\n"}},
               copyOut=["/w/b", "b"])
    assert got["files"]["stdout"] == "/w\nin\n" and got["files"]["/w/b"] == got["files"]["b"] == "made\n", got


def test_a_kept_pipe_past_its_max_is_the_writers_output_limit(client: httpx.Client) -> None:
    """What passes still passes (the reader gets all of it); what is kept stops at max, as go-judge keeps it."""
    body = {"cmd": [{"args": ["/bin/echo", "0123456789"], "env": ENV, **LIMITS, "files": [{"content": ""}]},
                    {"args": ["/usr/bin/wc", "-c"], "env": ENV, **LIMITS, "files": [None, *COLLECT]}],
            "pipeMapping": [{"in": {"index": 0, "fd": 1}, "out": {"index": 1, "fd": 0}, "proxy": True,
                             "name": "between", "max": 5}]}
    writer, reader = client.post("/run", json=body).json()
    assert reader["files"]["stdout"] == "11\n", reader
    assert writer["status"] == "Output Limit Exceeded" and writer["files"]["between"] == "012345", writer
    assert writer["fileError"] == [{"name": "between", "type": "CollectSizeExceeded"}]
