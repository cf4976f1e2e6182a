"""The HTTP service: go-judge's /run and /file, /submissions, /languages, /healthz, /version, /metrics, and
the operator's page (/ and the /status it polls).

A FastAPI app (OpenAPI at /docs) in the process that holds the pool: `sbx
serve` runs it on hypercorn's trio worker, and, written on anyio like the
API, it runs as well in an ASGI server on asyncio.  What it protects:
- a bearer token (from a file) on everything but /healthz, /version, the
  docs and the operator's page (static: its data comes from /status, which
  needs the token), required when the service listens beyond loopback;
- request bodies past `max_request` bytes are 413 (and one without a
  Content-Length 411, so none is read unbounded), and the file cache is
  bounded;
- more than `max_pending` runs waiting is 429;
- malformed input is a JSON error (400), and an unexpected failure is a JSON
  500 counted in sbx_internal_errors_total: the service stays up.
"""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import pydantic
import redis
from fastapi import FastAPI, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from ..box.cgroups import delegation
from ..errors import ConfigError
from ..pool import SandboxPool
from . import callback, gojudge, page, response
from .files import CacheFull, FileCache
from .guard import Guard, error
from .redis_queue import RedisQueue
from .sources import Sources
from .status import PoolView, Status
from .submissions import QueueFull, SubmissionIn, Submissions

OPEN_PATHS = {"/", "/healthz", "/readyz", "/livez", "/version", "/docs", "/openapi.json"}
FEATURES = {"copyOutOptional": True, "copyOutTruncate": True, "symlink": True, "addressSpaceLimit": True,
            "fixSymlinkEscape": True, "pipeProxy": True, "stream": False}
"""go-judge's feature flags (/version, /config), true where sbx does what go-judge documents; clients such as
Hydro's judge read them at start-up."""


def _features() -> dict[str, bool]:
    """FEATURES, and procPeak where runs have a cgroup to count their processes."""
    return {**FEATURES, "procPeak": delegation().base is not None}


_RUN_SCHEMA = gojudge.RunRequest.model_json_schema(ref_template="#/components/schemas/{model}")
_RUN_MODELS = _RUN_SCHEMA.pop("$defs", {})
_RUN_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": _RUN_SCHEMA}}}}
"""/run's body in the OpenAPI document (its handler reads the body itself; the models it names are added to the
document's components by `_openapi`)."""


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        document = FastAPI.openapi(app)
        document.setdefault("components", {}).setdefault("schemas", {}).update(_RUN_MODELS)
    return app.openapi_schema  # type: ignore[return-value]


@dataclass(frozen=True)
class ServiceConfig:
    pool: int = 2
    policy: str | None = "compile"
    token: str | None = None
    max_request: int = 64 * 2**20
    max_pending: int = 64
    file_cache: int = 1 * 2**30
    judges: int = 1  # submissions judged at once (each runs its tests on a pool of its own)
    redis: str | None = None  # submissions go to workers through Redis Streams (redis_queue.py)
    callback_allow: tuple[str, ...] = ()  # hosts a submission's callback_url may name (callback.py)
    output_budget: int = 512 * 2**20  # bytes /run may have collected over all requests at once (response.py)
    src_prefix: tuple[str, ...] = ()  # server paths a request's `src` may name (sources.py); none by default


_VERDICTS = ("sbx_submissions", "Judged submissions by verdict")
_REDELIVERIES = ("sbx_redeliveries", "Jobs taken over from a worker that stopped renewing its lease")


class _RedisCounts(Collector):
    """sbx_submissions_total and sbx_redeliveries_total in Redis mode: the workers judge and take jobs over,
    and count in Redis (redis_queue.py), so this process reads their counts rather than counting itself."""

    def __init__(self, queue: RedisQueue) -> None:
        self.queue = queue

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(*_VERDICTS, labels=["verdict"])
        yield CounterMetricFamily(*_REDELIVERIES)

    def collect(self) -> Iterator[CounterMetricFamily]:  # blocking: /metrics renders in a thread
        verdicts, redeliveries = self.queue.counts()
        family = CounterMetricFamily(*_VERDICTS, labels=["verdict"])
        for verdict, count in sorted(verdicts.items()):
            family.add_metric([verdict], count)
        yield family
        yield CounterMetricFamily(*_REDELIVERIES, value=redeliveries)


class _Metrics:
    def __init__(self, queue: RedisQueue | None) -> None:
        self.registry = CollectorRegistry()
        self.runs = Counter("sbx_runs", "Runs by go-judge status", ["status"], registry=self.registry)
        self.cpu = Histogram("sbx_run_cpu_seconds", "CPU time of each run", registry=self.registry,
                             buckets=(0.001, 0.01, 0.1, 0.5, 1, 2, 5, 10, 30))
        self.memory = Histogram("sbx_run_memory_bytes", "Peak memory of each run", registry=self.registry,
                                buckets=tuple(2**k for k in range(20, 34)))
        self.boxes = Gauge("sbx_pool_boxes", "Boxes of the pool by state", ["state"], registry=self.registry)
        self.pending = Gauge("sbx_pending_runs", "Run requests waiting or running", registry=self.registry)
        self.waiting = Gauge("sbx_pool_waiting_requests", "Requests waiting for boxes of the pool",
                             registry=self.registry)
        self.rejected = Counter("sbx_rejected_requests", "Requests refused", ["reason"], registry=self.registry)
        self.errors = Counter("sbx_internal_errors", "Requests that failed inside the service",
                              registry=self.registry)
        if queue is None:  # one process: it counts its verdicts, and never delivers a job twice
            self.verdicts = Counter(*_VERDICTS, ["verdict"], registry=self.registry)
            Counter(*_REDELIVERIES, registry=self.registry)
        else:
            self.registry.register(_RedisCounts(queue))
        self.queue = Gauge("sbx_queue_depth", "Submissions waiting to be judged", registry=self.registry)

    def record(self, results: list[dict[str, Any]]) -> None:
        for r in results:
            self.runs.labels(r["status"]).inc()
            self.cpu.observe(r["time"] / gojudge.NS)
            self.memory.observe(r["memory"])


class _Streamed(StreamingResponse):
    """A large /run answer, encoded as it is sent; its bytes go back to the budget once it is sent or the client
    has gone."""

    def __init__(self, results: list[dict[str, Any]], budget: response.OutputBudget, taken: int) -> None:
        super().__init__(response.stream(results), media_type="application/json")
        self._budget, self._taken = budget, taken

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._budget.give(self._taken)


def create_app(config: ServiceConfig) -> FastAPI:
    cache = FileCache(config.file_cache)
    inputs = gojudge.Inputs(cache, Sources(list(config.src_prefix)))
    budget = response.OutputBudget(config.output_budget)
    allowed = callback.Allowed.parse(config.callback_allow)
    state: dict[str, Any] = {"pending": 0}

    submissions: Submissions | RedisQueue
    if config.redis:
        submissions = RedisQueue(config.redis, config.max_pending)
        metrics = _Metrics(submissions)
    else:
        submissions = Submissions(config.max_pending, lambda record: metrics.verdicts.labels(record["verdict"]).inc())
        metrics = _Metrics(None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with SandboxPool(size=config.pool, policy=config.policy, home=gojudge.HOME) as pool, \
                anyio.create_task_group() as tasks:
            state["pool"] = pool
            for _ in range(config.judges):
                tasks.start_soon(submissions.work)
            yield
            tasks.cancel_scope.cancel()

    app = FastAPI(title="sbx", description="A rootless sandbox for untrusted code, with go-judge's /run API",
                  lifespan=lifespan)

    app.openapi = functools.partial(_openapi, app)  # type: ignore[method-assign]
    app.add_middleware(Guard, token=config.token, open_paths=OPEN_PATHS, max_request=config.max_request,
                       rejected=metrics.rejected, errors=metrics.errors)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error(400, f"{where}: {first.get('msg')}" if where else str(first.get("msg")))

    @app.exception_handler(redis.RedisError)
    async def redis_down(request: Request, exc: redis.RedisError) -> JSONResponse:
        metrics.rejected.labels("redis_down").inc()
        return error(503, f"the queue's Redis does not answer ({exc or type(exc).__name__}); try again later")

    @app.exception_handler(gojudge.RequestError)
    async def bad_request(request: Request, exc: gojudge.RequestError) -> JSONResponse:
        return error(400, str(exc))

    @app.post("/run", summary="Run commands (go-judge's request and response)", openapi_extra=_RUN_BODY)
    async def run(request: Request) -> Response:
        """The body is parsed and validated in one step by pydantic-core (model_validate_json), not by FastAPI's
        body dependency (json.loads, then validation): a third of what the service itself adds to a run."""
        try:
            body = gojudge.RunRequest.model_validate_json(await request.body())
        except pydantic.ValidationError as e:
            raise RequestValidationError(e.errors()) from None
        need = gojudge.worst_case(body)
        if need > budget.total:
            metrics.rejected.labels("output_budget").inc()
            return error(413, f"the collectors' and copy-outs' max add up to {need} bytes, more than the service "
                               f"holds for all requests at once ({budget.total}, sbx serve --output-budget)")
        if state["pending"] >= config.max_pending:
            metrics.rejected.labels("queue_full").inc()
            return error(429, f"{state['pending']} runs are waiting already; try again later")
        state["pending"] += 1
        metrics.pending.set(state["pending"])
        try:
            await budget.take(need)
            try:
                results = await gojudge.run(body, state["pool"], inputs)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await budget.give(need)
                raise
        finally:
            state["pending"] -= 1
            metrics.pending.set(state["pending"])
        metrics.record(results)
        if response.collected_size(results) <= response.STREAM_FROM:
            await budget.give(need)
            return Response(response.whole(results), media_type="application/json")
        return _Streamed(results, budget, need)

    @app.post("/submissions", status_code=202, summary="Judge a solution (sbx judge's record when done)")
    async def submit(body: SubmissionIn) -> Any:
        refused = body.callback_url and allowed.refusal(body.callback_url)
        if refused:
            metrics.rejected.labels("callback_host").inc()
            return error(400, refused)
        try:
            return {"id": await submissions.submit(body)}
        except QueueFull as e:
            metrics.rejected.labels("queue_full").inc()
            return error(429, str(e))
        except ConfigError as e:
            return error(400, str(e))

    @app.get("/submissions/{submission_id}", summary="A submission's state, and its record once judged")
    async def submission(submission_id: str) -> Any:
        found = await submissions.view(submission_id)
        return error(404, f"no submission {submission_id}") if found is None else found

    @app.get("/file", summary="Cached files: id -> name")
    async def files() -> dict[str, str]:
        return cache.names()

    @app.post("/file", summary="Cache a file (multipart field 'file'); its id")
    async def upload(file: UploadFile) -> Any:
        data = await file.read(config.max_request + 1)
        try:
            return cache.add(file.filename or "file", data)
        except CacheFull as e:
            metrics.rejected.labels("cache_full").inc()
            return error(413, str(e))

    @app.get("/file/{file_id}", summary="A cached file's content")
    async def download(file_id: str) -> Response:
        data = cache.get(file_id)
        if data is None:
            return error(404, f"no file {file_id}")
        return Response(data, media_type="application/octet-stream")

    @app.delete("/file/{file_id}", summary="Forget a cached file")
    async def delete(file_id: str) -> Response:
        return Response() if cache.remove(file_id) else error(404, f"no file {file_id}")

    @app.get("/languages", summary="The judge's languages")
    async def languages() -> list[dict[str, Any]]:
        from ..judge import load_languages
        return [{"name": lang.name, "title": lang.title, "extensions": list(lang.extensions)}
                for lang in load_languages().values()]

    async def health() -> dict[str, Any]:
        """What a request would meet now: the pool (started, its boxes), the queue, and Redis when there is one."""
        found: dict[str, Any] = {"pool": "pool" in state, **(state["pool"].stats() if "pool" in state else {}),
                                 "pending": state["pending"]}
        if isinstance(submissions, RedisQueue):
            found["redis"] = await anyio.to_thread.run_sync(submissions.ping)
        return {"ok": found["pool"] and found.get("redis", True), **found}

    @app.get("/healthz", summary="Pool, pending runs and Redis; 503 when a request would fail")
    async def healthz() -> Response:
        found = await health()
        return JSONResponse(found, status_code=200 if found["ok"] else 503)

    @app.get("/readyz", summary="Readiness probe: 200 when the service can take requests, else 503")
    async def readyz() -> Response:
        return await healthz()

    @app.get("/livez", summary="Liveness probe: 200 while the process answers (restart it when it does not)")
    async def livez() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/version", summary="sbx's version and which of go-judge's features it has")
    async def version() -> dict[str, Any]:
        from importlib.metadata import version as package_version
        return {"buildVersion": f"v{package_version('sbx')}", "server": "sbx", "platform": os.uname().machine,
                "os": "linux", **_features()}

    @app.get("/config", summary="go-judge's /config: the features, and what the runner has (cgroup v2)")
    async def runner_config() -> dict[str, Any]:
        found = delegation()
        return {**_features(), "runnerConfig": {"cgroupType": 2 if found.base else 0,
                                             "cgroupControllers": sorted(found.controllers) if found.base else []}}

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        if "pool" in state:
            for name, value in state["pool"].stats().items():
                if name == "waiting":
                    metrics.waiting.set(value)
                else:
                    metrics.boxes.labels(name).set(value)
        metrics.queue.set(await submissions.depth())
        text = await anyio.to_thread.run_sync(generate_latest, metrics.registry)  # Redis mode's collector blocks
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    @app.get("/", summary="The operator's page: queue, workers, pool and latest submissions, live",
             response_class=HTMLResponse)
    async def operator_page() -> Response:
        return HTMLResponse(page.HTML, headers=page.HEADERS)

    @app.get("/status", summary="What the operator's page shows")
    async def status() -> Status:
        return Status(mode="redis" if config.redis else "embedded", queue_depth=await submissions.depth(),
                      workers=await submissions.workers(),
                      pool=PoolView(**state["pool"].stats()) if "pool" in state else None,
                      submissions=await submissions.recent(), callback_failures=await submissions.callback_failures())

    return app
