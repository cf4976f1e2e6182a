"""The operator's page (`/`, polling `/status`) of a real `sbx serve`, rendered by headless Chromium, and a
callback retried after a 503.  Redis mode's page and callbacks are in test_queue.py."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helpers import CallbackReceiver, free_port, render_page, server_process

OK = "print(sum(map(int, open(0).read().split())))\n"
WA = "print(0)\n"
HOSTILE = "<img src=x onerror=\"document.title='pwned'\">"  # a test name: users choose it, the page shows it
TOKEN = "s3cret-page"


def submit(client: httpx.Client, source: str, test_name: str, callback_url: str | None = None) -> str:
    r = client.post("/submissions", json={"language": "py", "source": source, "callback_url": callback_url,
                                          "tests": [{"name": test_name, "input": "1 2\n", "answer": "3\n"}]})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def wait_done(client: httpx.Client, ids: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while any(client.get(f"/submissions/{i}").json()["state"] != "done" for i in ids):
        assert time.monotonic() < deadline
        time.sleep(0.2)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[str], CallbackReceiver]]:
    """A serve with a token, and two judged submissions (OK, then WA on the hostile test name), the first one
    with a callback to a receiver that fails its first attempt."""
    token = tmp_path_factory.mktemp("token") / "token"
    token.write_text(TOKEN)
    port = free_port()
    with CallbackReceiver(failures=1) as receiver, server_process(
            [sys.executable, "-m", "sandbox", "serve", "--listen", f"127.0.0.1:{port}", "--pool", "1",
             "--token-file", str(token), "--callback-allow", "127.0.0.1"], port, "sbx-serve-page-fixture"):
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            ids = [submit(client, OK, "one", receiver.url), submit(client, WA, HOSTILE)]
            wait_done(client, ids)
        yield base, ids, receiver


def test_status_needs_the_token_and_shows_queue_pool_workers_and_submissions(
        served: tuple[str, list[str], CallbackReceiver]) -> None:
    base, (ok, wa), _ = served
    assert httpx.get(f"{base}/status").status_code == 401
    assert httpx.get(f"{base}/status", headers={"Authorization": "Bearer wrong"}).status_code == 401
    page = httpx.get(f"{base}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"], "the page holds no data: open"
    assert "script-src 'sha256-" in page.headers["content-security-policy"]
    status = httpx.get(f"{base}/status", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert status["mode"] == "embedded" and status["queue_depth"] == 0
    assert status["pool"]["ready"] + status["pool"]["busy"] + status["pool"]["resetting"] >= 1
    assert [(w["name"], w["alive"], w["judging"]) for w in status["workers"]] == [("judge-1", True, 0)]
    rows = {s["id"]: s for s in status["submissions"]}
    assert list(rows) == [wa, ok], "newest first"
    assert (rows[ok]["language"], rows[ok]["state"], rows[ok]["verdict"], rows[ok]["detail"]) == ("py", "done", "OK", "")
    assert (rows[wa]["verdict"], rows[wa]["detail"]) == ("WA", HOSTILE)
    assert all(r["time"] >= 0 and r["memory"] > 0 for r in rows.values())


def test_chromium_renders_the_page_from_status_with_user_data_as_text(
        served: tuple[str, list[str], CallbackReceiver], tmp_path: Path) -> None:
    base, (ok, wa), _ = served
    dom = render_page(f"{base}/#token={TOKEN}", tmp_path)
    rows = dict(re.findall(r'<tr data-id="([0-9a-f]+)"[^>]*>(.*?)</tr>', dom, re.S))
    assert set(rows) == {ok, wa}, dom
    assert '<td class="verdict">OK</td>' in rows[ok] and '<td class="verdict">WA</td>' in rows[wa]
    assert re.search(r'<td class="time num">\d+ ms</td><td class="memory num">[\d.]+ MiB</td>', rows[ok])
    assert '<b id="depth">0</b>' in dom and re.search(r'<b id="pool-ready">\d+</b>', dom)
    assert '<b id="pool-waiting">0</b>' in dom, "no request waits for boxes"
    assert '<td class="name">judge-1</td>' in dom and "(embedded)" in dom
    assert "&lt;img src=x onerror=\"document.title='pwned'\"&gt;" in rows[wa], "the test name, as text"
    assert "<img" not in dom and "<title>sbx</title>" in dom, "not as markup"


def test_chromium_without_the_token_says_it_needs_one(served: tuple[str, list[str], CallbackReceiver],
                                                      tmp_path: Path) -> None:
    dom = render_page(f"{served[0]}/", tmp_path, budget_ms=2000)
    assert "needs its token" in dom and "data-id" not in dom


def test_a_callback_is_retried_after_a_503_and_taken_once(served: tuple[str, list[str], CallbackReceiver]) -> None:
    _, (ok, _), receiver = served
    taken = receiver.wait(1)
    assert [(b["id"], b["state"], b["result"]["verdict"]) for b in taken] == [(ok, "done", "OK")]
    assert len(receiver.attempts) == 2, "one 503, then taken"
