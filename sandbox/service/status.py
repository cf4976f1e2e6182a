"""GET /status: what the operator's page (page.html) shows, in one typed shape for both modes.

The embedded store (submissions.py) and the Redis queue (redis_queue.py) each
give their workers and latest submissions as these models; app.py adds the
queue depth and the serving process's pool.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

RECENT = 50  # latest submissions shown
DETAIL = 120  # characters of a row's detail


class WorkerView(BaseModel):
    name: str
    alive: bool  # embedded: always; Redis: its heartbeat key has not expired
    judging: int  # submissions it judges now
    pending: int  # jobs it holds (Redis: the group's pending entries for it, a dead worker's included)
    idle: float  # seconds since it last did something (Redis: XINFO CONSUMERS' idle)


class CallbackFailure(BaseModel):
    """A callback that failed for good: its record is still at GET /submissions/{id}."""
    id: str
    url: str
    error: str
    at: float  # Unix time of the last attempt


class PoolView(BaseModel):
    ready: int
    busy: int
    resetting: int
    waiting: int  # requests waiting for boxes


class SubmissionRow(BaseModel):
    id: str
    language: str
    state: str
    verdict: str | None = None
    time: float | None = None  # the largest CPU time of its tests, seconds
    memory: int | None = None  # the largest peak memory of its tests, bytes
    detail: str = ""  # the first failed test's name, or the first line of a compile error

    @classmethod
    def of(cls, submission_id: str, language: str, state: str, record: dict[str, Any] | None) -> SubmissionRow:
        return cls(id=submission_id, language=language, state=state, **(summary(record) if record else {}))


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """A judged record's row fields: small, so that Redis mode stores them next to the record and the page
    never loads whole records (one per test)."""
    tests = record.get("tests") or []
    failed = next((t["name"] for t in tests if t["status"] != "OK"), "")
    why = (record.get("compile_error") or "").strip().splitlines()
    return {"verdict": record["verdict"],
            "time": max((t["cpu_time"] for t in tests), default=None),
            "memory": max((t["memory_peak"] for t in tests), default=None),
            "detail": (failed or (why[0] if why else ""))[:DETAIL]}


class Status(BaseModel):
    mode: Literal["embedded", "redis"]
    queue_depth: int
    workers: list[WorkerView]
    pool: PoolView | None  # None until the pool has started
    callback_failures: list[CallbackFailure] = []  # the latest first
    submissions: list[SubmissionRow]  # newest first
