"""Submissions over Redis Streams: `sbx serve --redis` enqueues, `sbx worker --redis` judges, on any machine.

At least once, never lost:
- a job is an entry of the stream `sbx:submissions`, read through the
  consumer group `sbx-workers`, and stays pending until its result is
  written (then XACK and XDEL);
- the worker judging it refreshes a lease (XCLAIM to itself with JUSTID,
  which resets the entry's idle time without counting a delivery); an entry
  idle past the lease belongs to a dead worker, and any worker takes it over
  with XAUTOCLAIM;
- a job delivered more than MAX_DELIVERIES times goes to the dead-letter
  stream `sbx:dead` and gets an IE record;
- results are idempotent per submission: the first record written (HSETNX)
  stands, and a redelivered job whose record exists is only acknowledged.

State per submission is the hash `sbx:sub:ID` (state, language, request,
result, and the result's summary for the operator's page).  The worker whose
HSETNX wrote the result, and no other, also counts its verdict (HINCRBY
`sbx:verdicts`, which `sbx serve --redis` exposes at /metrics) and POSTs its
callback.  The client is redis-py's blocking one, called in worker threads
with short timeouts, so the event loop never blocks on the network.

The operator's page (status.py) sees:
- the latest submissions: `sbx:recent`, their ids, pushed at submit and
  capped (LPUSH + LTRIM), so that a queued one shows too; their rows come
  from one pipeline of HMGETs of small fields (never the whole records);
- the workers, from two sources: XINFO CONSUMERS gives each consumer's
  pending jobs and idle time, but keeps a consumer until it is deleted, dead
  or not; each live worker also renews a heartbeat key `sbx:worker:NAME`
  (with a TTL, so it vanishes with its worker) saying how many submissions it
  judges.  A dead worker's row stays, not alive, with the jobs it still holds
  until another worker takes them over.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
from typing import Any

import anyio
import anyio.abc
import redis

from . import callback
from .status import RECENT, SubmissionRow, WorkerView, summary
from .submissions import QueueFull, SubmissionIn, check_language, judge_submission

STREAM, GROUP, DEAD = "sbx:submissions", "sbx-workers", "sbx:dead"
REDELIVERIES, WRITTEN = "sbx:redeliveries", "sbx:results-written"
VERDICTS, RECENT_IDS, HEARTBEAT = "sbx:verdicts", "sbx:recent", "sbx:worker:"
BEAT = 2.0  # seconds between a worker's heartbeats; the key lives three of them
MAX_DELIVERIES = 3
# A result, once: HSETNX, and only if it wrote, the summary and the counts, in one step (a worker killed
# in between would leave a result uncounted)
WRITE = """
redis.call('HSET', KEYS[1], 'state', 'done')
if redis.call('HSETNX', KEYS[1], 'result', ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'summary', ARGV[2])
redis.call('INCR', KEYS[2])
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
return 1
"""
TIMEOUT = 5.0  # seconds for any one Redis call


def _connect(url: str) -> redis.Redis:
    client = redis.Redis.from_url(url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT,
                                  decode_responses=True)
    try:
        client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    except redis.ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise
    return client


class RedisQueue:
    """The serving side: enqueue, look up, count."""

    def __init__(self, url: str, max_pending: int, languages: str | None = None) -> None:
        self.client = _connect(url)
        self.max_pending = max_pending
        self.languages = languages

    async def submit(self, request: SubmissionIn) -> str:
        check_language(request, self.languages)
        return await anyio.to_thread.run_sync(self._submit, request)

    def _submit(self, request: SubmissionIn) -> str:
        if self.client.xlen(STREAM) >= self.max_pending:
            raise QueueFull(f"{self.max_pending} submissions are queued already; try again later")
        submission_id = secrets.token_hex(12)
        self.client.hset(f"sbx:sub:{submission_id}", mapping={"state": "queued", "language": request.language,
                                                              "request": request.model_dump_json()})
        self.client.xadd(STREAM, {"id": submission_id})
        with self.client.pipeline() as pipe:
            pipe.lpush(RECENT_IDS, submission_id).ltrim(RECENT_IDS, 0, RECENT - 1).execute()
        return submission_id

    async def view(self, submission_id: str) -> dict[str, Any] | None:
        found = await anyio.to_thread.run_sync(self.client.hgetall, f"sbx:sub:{submission_id}")
        if not found:
            return None
        return {"id": submission_id, "state": found.get("state", "queued"),
                "result": json.loads(found["result"]) if "result" in found else None}

    async def depth(self) -> int:
        return int(await anyio.to_thread.run_sync(self.client.xlen, STREAM))

    async def work(self) -> None:  # the serving side judges nothing: workers do
        await anyio.sleep_forever()

    async def workers(self) -> list[WorkerView]:
        return await anyio.to_thread.run_sync(self._workers)

    def _workers(self) -> list[WorkerView]:
        consumers = {c["name"]: c for c in self.client.xinfo_consumers(STREAM, GROUP)}
        keys = list(self.client.scan_iter(match=f"{HEARTBEAT}*", count=100))
        beats = {k.removeprefix(HEARTBEAT): json.loads(v) for k, v in zip(keys, self.client.mget(keys) if keys else [])
                 if v is not None}
        return [WorkerView(name=name, alive=name in beats, judging=beats.get(name, {}).get("judging", 0),
                           pending=consumers.get(name, {}).get("pending", 0),
                           idle=consumers.get(name, {}).get("idle", 0) / 1000)
                for name in sorted(consumers.keys() | beats.keys())]

    async def recent(self) -> list[SubmissionRow]:
        return await anyio.to_thread.run_sync(self._recent)

    def _recent(self) -> list[SubmissionRow]:
        ids = self.client.lrange(RECENT_IDS, 0, RECENT - 1)
        with self.client.pipeline(transaction=False) as pipe:
            for submission_id in ids:
                pipe.hmget(f"sbx:sub:{submission_id}", "state", "language", "summary")
            found = pipe.execute()
        return [SubmissionRow(id=submission_id, language=language or "", state=state,
                              **(json.loads(row) if row else {}))
                for submission_id, (state, language, row) in zip(ids, found) if state is not None]

    def counts(self) -> tuple[dict[str, int], int]:
        """Judged submissions by verdict, and jobs taken over, as the workers counted them (blocking: /metrics
        calls it in a thread)."""
        with self.client.pipeline(transaction=False) as pipe:
            verdicts, redeliveries = pipe.hgetall(VERDICTS).get(REDELIVERIES).execute()
        return {verdict: int(n) for verdict, n in verdicts.items()}, int(redeliveries or 0)


class Worker:
    """The judging side: take jobs, keep their leases, write results once."""

    def __init__(self, url: str, lease: float, name: str | None = None, languages: str | None = None) -> None:
        self.client = _connect(url)
        self.lease = lease
        self.name = name or f"{socket.gethostname()}-{secrets.token_hex(4)}"
        self.languages = languages
        self._judging = 0  # submissions being judged now, for the heartbeat
        self._write = self.client.register_script(WRITE)

    async def run(self, judges: int) -> None:
        """`judges` submissions at a time, their callbacks in tasks of their own, and a heartbeat."""
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._heartbeat)
            for _ in range(judges):
                tasks.start_soon(self._loop, tasks)

    async def _heartbeat(self) -> None:
        """The key `sbx:worker:NAME` while this worker runs: renewed every BEAT seconds, deleted when it stops."""
        key = HEARTBEAT + self.name
        try:
            while True:
                beat = json.dumps({"judging": self._judging})
                await anyio.to_thread.run_sync(lambda: self.client.set(key, beat, ex=int(3 * BEAT)))
                await anyio.sleep(BEAT)
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(redis.RedisError):
                await anyio.to_thread.run_sync(self.client.delete, key)

    async def _loop(self, tasks: anyio.abc.TaskGroup) -> None:
        while True:
            job = await anyio.to_thread.run_sync(self._next)
            if job is not None:
                await self._handle(*job, tasks)

    def _next(self) -> tuple[str, str] | None:
        """A job: first one whose worker stopped renewing its lease, else a new one (waiting up to a second)."""
        _, claimed, *_ = self.client.xautoclaim(STREAM, GROUP, self.name, min_idle_time=int(self.lease * 1000),
                                                start_id="0-0", count=1)
        if claimed:
            self.client.incr(REDELIVERIES)
            entry_id, fields = claimed[0]
            return entry_id, fields.get("id", "")
        read = self.client.xreadgroup(GROUP, self.name, {STREAM: ">"}, count=1, block=1000)
        if not read:
            return None
        entry_id, fields = read[0][1][0]
        return entry_id, fields.get("id", "")

    async def _handle(self, entry_id: str, submission_id: str, tasks: anyio.abc.TaskGroup) -> None:
        key = f"sbx:sub:{submission_id}"
        found = await anyio.to_thread.run_sync(self.client.hgetall, key)
        if "result" in found or "request" not in found:  # done already (a redelivery), or nothing to judge
            await anyio.to_thread.run_sync(self._ack, entry_id)
            return
        request = json.loads(found["request"])
        language = request.get("language", "")
        pending = await anyio.to_thread.run_sync(
            lambda: self.client.xpending_range(STREAM, GROUP, min=entry_id, max=entry_id, count=1))
        if pending and pending[0]["times_delivered"] > MAX_DELIVERIES:
            record = _failed(language, f"given up after {MAX_DELIVERIES} deliveries (sbx:dead has it)")
            await anyio.to_thread.run_sync(lambda: self.client.xadd(DEAD, {"id": submission_id}))
            await self._done(entry_id, submission_id, request.get("callback_url"), record, tasks)
            return
        await anyio.to_thread.run_sync(lambda: self.client.hset(key, mapping={"state": "judging", "worker": self.name}))
        async with anyio.create_task_group() as lease:
            lease.start_soon(self._keep_lease, entry_id)
            self._judging += 1
            try:
                record = await judge_submission(SubmissionIn.model_validate(request), self.languages)
            except Exception as e:  # noqa: BLE001 - a job that cannot be judged is IE; the worker goes on
                record = _failed(language, f"{type(e).__name__}: {e}")
            finally:
                self._judging -= 1
            lease.cancel_scope.cancel()
        await self._done(entry_id, submission_id, request.get("callback_url"), record, tasks)

    async def _done(self, entry_id: str, submission_id: str, url: str | None, record: dict[str, Any],
                    tasks: anyio.abc.TaskGroup) -> None:
        """The result written (once), and, by the worker that wrote it, its callback started."""
        written = await anyio.to_thread.run_sync(self._finish, entry_id, f"sbx:sub:{submission_id}", record)
        if written and url:
            tasks.start_soon(callback.post, url, {"id": submission_id, "state": "done", "result": record})

    async def _keep_lease(self, entry_id: str) -> None:
        while True:
            await anyio.sleep(self.lease / 3)
            await anyio.to_thread.run_sync(
                lambda: self.client.xclaim(STREAM, GROUP, self.name, min_idle_time=0, message_ids=[entry_id],
                                           justid=True))

    def _finish(self, entry_id: str, key: str, record: dict[str, Any]) -> bool:
        """Whether this worker wrote the result (a redelivered job's second result is dropped)."""
        written = bool(self._write(keys=[key, WRITTEN, VERDICTS],
                                   args=[json.dumps(record), json.dumps(summary(record)), record["verdict"]]))
        self._ack(entry_id)
        return written

    def _ack(self, entry_id: str) -> None:
        self.client.xack(STREAM, GROUP, entry_id)
        self.client.xdel(STREAM, entry_id)


def _failed(language: str, why: str) -> dict[str, Any]:
    return {"verdict": "IE", "language": language, "compile": None, "compile_error": why, "tests": [], "skipped": 0}
