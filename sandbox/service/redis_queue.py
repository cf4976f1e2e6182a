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
import itertools
import json
import secrets
import socket
import sys
import time
from collections import OrderedDict
from typing import Any

import anyio
import anyio.abc
import redis

from . import callback
from .status import RECENT, CallbackFailure, SubmissionRow, WorkerView, summary
from .submissions import QueueFull, SubmissionIn, check_language, judge_submission

STREAM, GROUP, DEAD = "sbx:submissions", "sbx-workers", "sbx:dead"
REDELIVERIES, WRITTEN = "sbx:redeliveries", "sbx:results-written"
VERDICTS, RECENT_IDS, HEARTBEAT = "sbx:verdicts", "sbx:recent", "sbx:worker:"
FAILED_CALLBACKS = "sbx:callback-failures"  # JSON CallbackFailures, the latest first, capped
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


RETRY_FIRST, RETRY_MAX = 0.5, 10.0  # seconds between tries while Redis is unreachable: doubled up to the max
KEPT_IDS = 100_000  # ids serve remembers having issued, to tell a lost submission from an unknown one


def _connect(url: str) -> redis.Redis:
    client = redis.Redis.from_url(url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT,
                                  decode_responses=True)
    _make_group(client)
    return client


def _make_group(client: redis.Redis) -> None:
    """The consumer group, made again after a Redis that lost its data (from the stream's start: a job
    queued meanwhile is read too)."""
    try:
        client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    except redis.ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise


class _Backoff:
    """Waits between tries while Redis is unreachable (stalled, restarting): a fault costs latency, never a
    worker.  Says so on stderr once per outage, and again when Redis answers."""

    def __init__(self, what: str) -> None:
        self.what, self.delay, self.down = what, RETRY_FIRST, False

    async def failed(self, e: redis.RedisError) -> None:
        if not self.down:
            print(f"sbx worker: {self.what}: Redis: {e or type(e).__name__}; trying again", file=sys.stderr, flush=True)
            self.down = True
        await anyio.sleep(self.delay)
        self.delay = min(self.delay * 2, RETRY_MAX)

    def succeeded(self) -> None:
        if self.down:
            print(f"sbx worker: {self.what}: Redis answers again", file=sys.stderr, flush=True)
        self.down, self.delay = False, RETRY_FIRST


class RedisQueue:
    """The serving side: enqueue, look up, count."""

    def __init__(self, url: str, max_pending: int, languages: str | None = None) -> None:
        self.client = _connect(url)
        self.max_pending = max_pending
        self.languages = languages
        self._issued: OrderedDict[str, None] = OrderedDict()

    async def submit(self, request: SubmissionIn) -> str:
        check_language(request, self.languages)
        return await anyio.to_thread.run_sync(self._submit, request)

    def _submit(self, request: SubmissionIn) -> str:
        if self.client.xlen(STREAM) >= self.max_pending:
            raise QueueFull(f"{self.max_pending} submissions are queued already; try again later")
        submission_id = secrets.token_hex(12)
        key = f"sbx:sub:{submission_id}"
        self.client.hset(key, mapping={"state": "queued", "language": request.language,
                                       "request": request.model_dump_json()})
        entry = self.client.xadd(STREAM, {"id": submission_id})
        with self.client.pipeline() as pipe:
            pipe.hset(key, "entry", entry).lpush(RECENT_IDS, submission_id).ltrim(RECENT_IDS, 0, RECENT - 1).execute()
        self._issued[submission_id] = None
        while len(self._issued) > KEPT_IDS:
            self._issued.popitem(last=False)
        return submission_id

    async def view(self, submission_id: str) -> dict[str, Any] | None:
        return await anyio.to_thread.run_sync(self._view, submission_id)

    def _view(self, submission_id: str) -> dict[str, Any] | None:
        """The submission's state; "lost" where Redis lost its job (restarted without its data) before a result."""
        key = f"sbx:sub:{submission_id}"
        found = self.client.hgetall(key)
        if not found:
            return _lost(submission_id) if submission_id in self._issued else None
        if "result" not in found and "entry" in found and not self.client.xrange(STREAM, found["entry"],
                                                                                   found["entry"]):
            found = self.client.hgetall(key)  # a worker may have written the result and removed the job meanwhile
            if "result" not in found:
                return _lost(submission_id)
        return {"id": submission_id, "state": found.get("state", "queued"),
                "result": json.loads(found["result"]) if "result" in found else None}

    def ping(self) -> bool:
        """Whether Redis answers now (for /healthz and the readiness probe)."""
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

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

    async def callback_failures(self) -> list[CallbackFailure]:
        found = await anyio.to_thread.run_sync(self.client.lrange, FAILED_CALLBACKS, 0, callback.KEPT_FAILURES - 1)
        return [CallbackFailure.model_validate_json(f) for f in found]

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
        """The key `sbx:worker:NAME` while this worker runs: renewed every BEAT seconds, deleted when it stops;
        and now and then the consumers of dead workers whose jobs were all taken over are removed."""
        key = HEARTBEAT + self.name
        backoff = _Backoff("heartbeat")
        try:
            for beats in itertools.count():
                beat = json.dumps({"judging": self._judging})
                try:
                    await anyio.to_thread.run_sync(lambda: self.client.set(key, beat, ex=int(3 * BEAT)))
                    if beats % 10 == 9:
                        await anyio.to_thread.run_sync(self._forget_dead)
                except redis.RedisError as e:
                    await backoff.failed(e)
                    continue
                backoff.succeeded()
                await anyio.sleep(BEAT)
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(redis.RedisError):
                await anyio.to_thread.run_sync(self.client.delete, key)

    def _forget_dead(self) -> None:
        """XGROUP DELCONSUMER for each consumer with no heartbeat, no pending job and idle past the lease: its
        jobs were taken over, and the operator's page need not list it any more."""
        for consumer in self.client.xinfo_consumers(STREAM, GROUP):
            name = consumer["name"]
            if (consumer["pending"] == 0 and consumer["idle"] > 1000 * max(self.lease, 3 * BEAT)
                    and not self.client.exists(HEARTBEAT + name)):
                self.client.xgroup_delconsumer(STREAM, GROUP, name)

    async def _loop(self, tasks: anyio.abc.TaskGroup) -> None:
        backoff = _Backoff("taking jobs")
        while True:
            try:
                job = await anyio.to_thread.run_sync(self._next)
                if job is not None:
                    await self._handle(*job, tasks)
            except redis.RedisError as e:
                await backoff.failed(e)
                continue
            backoff.succeeded()

    def _next(self) -> tuple[str, str] | None:
        """A job: first one whose worker stopped renewing its lease, else a new one (waiting up to a second)."""
        try:
            return self._take()
        except redis.ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            _make_group(self.client)  # Redis lost its data: the group is made again, and the next call reads
            return None

    def _take(self) -> tuple[str, str] | None:
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
        """Judge one job.  Redis failing before judging starts leaves the job pending (raised to `_loop`, which
        waits); once judged, the result is written whatever it takes (`_done`)."""
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
        with contextlib.suppress(redis.RedisError):  # only the operator's page reads it
            await anyio.to_thread.run_sync(
                lambda: self.client.hset(key, mapping={"state": "judging", "worker": self.name}))
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
        """The result written (once), and, by the worker that wrote it, its callback started.  While Redis is
        unreachable the write is tried again: a judged result is never dropped for a fault of Redis's."""
        backoff = _Backoff(f"writing the result of {submission_id}")
        while True:
            try:
                written = await anyio.to_thread.run_sync(self._finish, entry_id, f"sbx:sub:{submission_id}", record)
                break
            except redis.RedisError as e:
                await backoff.failed(e)
        backoff.succeeded()
        if written and url:
            tasks.start_soon(self._call_back, url, submission_id, record)

    async def _call_back(self, url: str, submission_id: str, record: dict[str, Any]) -> None:
        why = await callback.post(url, {"id": submission_id, "state": "done", "result": record})
        if why is not None:
            failure = CallbackFailure(id=submission_id, url=url, error=why, at=time.time()).model_dump_json()
            with self.client.pipeline() as pipe, contextlib.suppress(redis.RedisError):
                await anyio.to_thread.run_sync(
                    pipe.lpush(FAILED_CALLBACKS, failure).ltrim(FAILED_CALLBACKS, 0, callback.KEPT_FAILURES - 1)
                    .execute)

    async def _keep_lease(self, entry_id: str) -> None:
        """Renew the job's lease while judging; a renewal Redis misses is only a lease that may run out (another
        worker may then judge the job too, and the first result written stands)."""
        while True:
            await anyio.sleep(self.lease / 3)
            with contextlib.suppress(redis.RedisError):
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


def _lost(submission_id: str) -> dict[str, Any]:
    return {"id": submission_id, "state": "lost", "result": None,
            "error": "Redis lost this submission (restarted without its data) before it was judged; submit it again"}


def _failed(language: str, why: str) -> dict[str, Any]:
    return {"verdict": "IE", "language": language, "compile": None, "compile_error": why, "tests": [], "skipped": 0}
