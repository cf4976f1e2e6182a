"""POST /submissions and GET /submissions/{id}: a solution judged in the service's own process.

A bounded queue (a full one is 429) feeds a fixed number of judging tasks;
each submission is judged as `sbx judge` judges (its record is `sbx judge
--json`'s), on tests given inline.  When it names a `callback_url`, the
record is POSTed there once it is done (callback.py: retried a few times, in
a task of its own so that judging goes on).  Finished submissions are kept
for GET up to a bound, the oldest forgotten first; the latest of them, and
what each judging task does, make the operator's page (status.py).
"""

from __future__ import annotations

import itertools
import secrets
import tempfile
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel, Field

from ..errors import ConfigError
from ..judge import Options, TestCase, judge, load_languages, test_limits
from . import callback
from .status import DETAIL, RECENT, CallbackFailure, SubmissionRow, WorkerView

MiB = 2**20
KEPT = 10_000


class QueueFull(Exception):
    pass


class TestIn(BaseModel):
    name: str = Field(default="", max_length=64)
    input: str
    answer: str


class LimitsIn(BaseModel):
    time: float = Field(default=1.0, gt=0, le=60)  # CPU seconds per test
    wall_time: float | None = Field(default=None, gt=0, le=180)
    memory: int = Field(default=256 * MiB, ge=MiB)  # bytes
    pids: int | None = Field(default=None, ge=1, le=1024)
    output: int = Field(default=64 * MiB, ge=1)


class SubmissionIn(BaseModel):
    language: str
    source: str
    tests: list[TestIn] = Field(min_length=1, max_length=1000)
    limits: LimitsIn = LimitsIn()
    stop_on_first_failure: bool = False
    callback_url: str | None = Field(default=None, pattern=r"^https?://")


@dataclass
class Submission:
    id: str
    request: SubmissionIn
    state: str = "queued"  # then "judging", then "done"
    record: dict[str, Any] | None = None
    error: str = ""

    def view(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "state": self.state, "result": self.record}
        if self.error:
            out["error"] = self.error
        return out


@dataclass
class _Task:
    """What a judging task does, for the operator's page."""
    name: str
    judging: int = 0
    since: float = field(default_factory=time.monotonic)  # when it last took or finished a submission


@dataclass
class Submissions:
    max_pending: int
    on_done: Any  # a callable(record) for the metrics
    languages: str | None = None
    _items: OrderedDict[str, Submission] = field(default_factory=OrderedDict)
    _tasks: list[_Task] = field(default_factory=list)
    _failed_callbacks: deque[CallbackFailure] = field(default_factory=lambda: deque(maxlen=callback.KEPT_FAILURES))

    def __post_init__(self) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[Submission](self.max_pending)

    async def submit(self, request: SubmissionIn) -> str:
        check_language(request, self.languages)
        item = Submission(secrets.token_hex(12), request)
        try:
            self._send.send_nowait(item)
        except anyio.WouldBlock:
            raise QueueFull(f"{self.max_pending} submissions are queued already; try again later") from None
        self._items[item.id] = item
        while len(self._items) > KEPT:
            oldest = next(iter(self._items.values()))
            if oldest.state != "done":
                break
            self._items.popitem(last=False)
        return item.id

    async def view(self, submission_id: str) -> dict[str, Any] | None:
        item = self._items.get(submission_id)
        return None if item is None else item.view()

    async def depth(self) -> int:
        return sum(1 for s in self._items.values() if s.state == "queued")

    async def workers(self) -> list[WorkerView]:
        now = time.monotonic()
        return [WorkerView(name=t.name, alive=True, judging=t.judging, pending=t.judging, idle=now - t.since)
                for t in self._tasks]

    async def recent(self) -> list[SubmissionRow]:
        rows = []
        for item in itertools.islice(reversed(self._items.values()), RECENT):
            row = SubmissionRow.of(item.id, item.request.language, item.state, item.record)
            rows.append(row.model_copy(update={"detail": item.error[:DETAIL]}) if item.error else row)
        return rows

    async def work(self) -> None:
        """One judging task: submissions one at a time, for as long as the service runs; callbacks go on in
        tasks of their own."""
        me = _Task(f"judge-{len(self._tasks) + 1}")
        self._tasks.append(me)
        async with anyio.create_task_group() as callbacks:
            async for item in self._receive:
                item.state = "judging"
                me.judging, me.since = 1, time.monotonic()
                try:
                    item.record = await judge_submission(item.request, self.languages)
                except Exception as e:  # noqa: BLE001 - a submission that cannot be judged is IE, the task goes on
                    item.error = f"{type(e).__name__}: {e}"
                    item.record = {"verdict": "IE", "language": item.request.language, "compile": None,
                                   "compile_error": "", "tests": [], "skipped": 0}
                item.state = "done"
                me.judging, me.since = 0, time.monotonic()
                self.on_done(item.record)
                if item.request.callback_url:
                    callbacks.start_soon(self._call_back, item)

    async def _call_back(self, item: Submission) -> None:
        assert item.request.callback_url is not None
        why = await callback.post(item.request.callback_url, item.view())
        if why is not None:
            self._failed_callbacks.appendleft(CallbackFailure(id=item.id, url=item.request.callback_url, error=why,
                                                              at=time.time()))

    async def callback_failures(self) -> list[CallbackFailure]:
        return list(self._failed_callbacks)


def check_language(request: SubmissionIn, languages: str | None) -> None:
    if request.language not in load_languages(languages):
        raise ConfigError(f"language: unknown {request.language!r} (GET /languages lists them)")


async def judge_submission(request: SubmissionIn, languages: str | None = None) -> dict[str, Any]:
    """`sbx judge`'s record for a submission, its tests written to a private temporary dir."""
    language = load_languages(languages)[request.language]
    given = request.limits
    run_limits = test_limits(language, given.time, given.memory, given.output, wall=given.wall_time, pids=given.pids)
    with tempfile.TemporaryDirectory(prefix="sbx-submission-") as d:
        tests = []
        for i, t in enumerate(request.tests):
            given, answer = Path(d, f"{i}.in"), Path(d, f"{i}.ans")
            given.write_text(t.input)
            answer.write_text(t.answer)
            tests.append(TestCase(t.name or str(i + 1), given, answer))
        report = await judge(request.source.encode(), language, tests,
                             Options(limits=run_limits, stop_on_first_failure=request.stop_on_first_failure))
    return report.record()
