"""go-judge's /run, on sbx's pool: its request and response shapes and status names, so its clients work unchanged.

Units are go-judge's: times in nanoseconds, sizes in bytes.  Each command
runs in a box of the pool (a fresh one, reset after), under the service's
policy.  Files come from `content` or a cached `fileId`; a `src` (a path on
the server) is refused: a network client never names the server's files.
Two commands joined by a `pipeMapping` run as a pipeline (the first one's
stdout the second's stdin) or, when the ends cross, as an interactive pair;
other mappings are refused.  Unlike go-judge, an unknown fileId is that
command's "File Error", not an HTTP 500 for the whole request.
"""

from __future__ import annotations

from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..api import Sandbox, run_interactive, run_pipeline
from ..errors import BoxFileError, SandboxError
from ..limits import Limits
from ..pool import SandboxPool
from ..result import Result, Status
from .files import CacheFull, FileCache
from .response import Collected

NS = 1e9
DEFAULT_COLLECT = 64 * 2**20
STATUS = {
    Status.OK: "Accepted", Status.RE: "Nonzero Exit Status", Status.SG: "Signalled",
    Status.TLE: "Time Limit Exceeded", Status.WLE: "Time Limit Exceeded", Status.MLE: "Memory Limit Exceeded",
    Status.OLE: "Output Limit Exceeded", Status.SV: "Dangerous Syscall", Status.IE: "Internal Error",
}


class RequestError(Exception):
    """A request the service cannot run as asked: HTTP 400 with the reason."""


class FileSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    content: str | None = None
    fileId: str | None = None  # noqa: N815 - go-judge's names
    src: str | None = None
    name: str | None = None  # a collector (stdout/stderr)
    max: int | None = Field(default=None, ge=0)
    pipe: bool = False


DAY_NS = 86_400 * 10**9
"""The longest CPU or wall limit a command may ask for."""
MAX_BYTES = 2**50
MAX_PROCS = 4_194_304  # the kernel's own pid_max limit


class Cmd(BaseModel):
    model_config = ConfigDict(extra="ignore")  # go-judge has options sbx does not need (tty, cpuRateLimit, ...)
    args: list[str] = Field(min_length=1)
    env: list[str] = []
    files: list[FileSpec | None] = []
    cpuLimit: int = Field(default=0, ge=0, le=DAY_NS)  # noqa: N815
    clockLimit: int = Field(default=0, ge=0, le=DAY_NS)  # noqa: N815
    memoryLimit: int = Field(default=0, ge=0, le=MAX_BYTES)  # noqa: N815
    stackLimit: int = Field(default=0, ge=0, le=MAX_BYTES)  # noqa: N815
    procLimit: int = Field(default=0, ge=0, le=MAX_PROCS)  # noqa: N815
    copyIn: dict[str, FileSpec] = {}  # noqa: N815
    copyOut: list[str] = []  # noqa: N815
    copyOutCached: list[str] = []  # noqa: N815
    copyOutMax: int = Field(default=0, ge=0, le=MAX_BYTES)  # noqa: N815

    @model_validator(mode="after")
    def _strings(self) -> Cmd:
        """What execve and the kernel's paths cannot take is the client's error (400), not the service's."""
        if not self.args[0]:
            raise ValueError("args: the program (args[0]) is empty")
        for where, texts in (("args", self.args), ("env", self.env), ("copyIn", list(self.copyIn)),
                             ("copyOut", self.copyOut), ("copyOutCached", self.copyOutCached)):
            if any("\0" in t for t in texts):
                raise ValueError(f"{where}: a NUL byte cannot be passed to a program or be in a file name")
        if any(not name for name in self.copyIn):
            raise ValueError("copyIn: an empty file name")
        return self


class PipeEnd(BaseModel):
    index: int = Field(ge=0)
    fd: int = Field(ge=0)


class PipeMap(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    in_: PipeEnd = Field(alias="in")
    out: PipeEnd


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    cmd: list[Cmd] = Field(min_length=1, max_length=16)
    pipeMapping: list[PipeMap] = []  # noqa: N815
    requestId: str | None = None  # noqa: N815


def worst_case(request: RunRequest) -> int:
    """The most bytes the request's answer may hold: every collector's max, every copied-out file's."""
    total = 0
    for cmd in request.cmd:
        collectors = _collectors(cmd)
        total += sum(m for _, m in collectors.values())
        total += sum(cmd.copyOutMax or DEFAULT_COLLECT for name in (*cmd.copyOut, *cmd.copyOutCached)
                     if name.removesuffix("?") not in collectors)
    return total


async def run(request: RunRequest, pool: SandboxPool, cache: FileCache) -> list[dict[str, Any]]:
    """The results of the request's commands, in order; collected files as response.Collected bytes."""
    for cmd in request.cmd:
        _check_files(cmd, cache)
    if request.pipeMapping:
        return await _piped(request, pool, cache)
    results: list[dict[str, Any]] = [{} for _ in request.cmd]

    async def one(i: int, cmd: Cmd) -> None:
        results[i] = await _one(cmd, pool, cache)

    async with anyio.create_task_group() as tasks:
        for i, cmd in enumerate(request.cmd):
            tasks.start_soon(one, i, cmd)
    return results


def _check_files(cmd: Cmd, cache: FileCache) -> None:
    for where, spec in [*(("files", f) for f in cmd.files if f is not None), *cmd.copyIn.items()]:
        if spec.src is not None:
            raise RequestError(f"{where}: src (a path on the server) is not accepted; send content or a fileId")
    if len(cmd.files) > 3:
        raise RequestError("files: at most stdin, stdout and stderr")


def _data(spec: FileSpec, cache: FileCache) -> bytes:
    if spec.content is not None:
        return spec.content.encode()
    if spec.fileId is not None:
        data = cache.get(spec.fileId)
        if data is None:
            raise BoxFileError(f"fileId {spec.fileId}: no such file")
        return data
    raise RequestError("a file needs content or a fileId")


def _stdin(cmd: Cmd, cache: FileCache) -> bytes | None:
    """The data of a command's stdin (files[0]) when it is given, not collected."""
    given = cmd.files[0] if cmd.files else None
    return _data(given, cache) if given and not given.name else None


async def _copy_in(box: Sandbox, cmd: Cmd, cache: FileCache) -> None:
    for path, spec in cmd.copyIn.items():
        await box.write_file(path, _data(spec, cache), 0o755)  # executable: a cached binary runs by its name


def _limits(cmd: Cmd, collect: int) -> Limits:
    return Limits(cpu_time=cmd.cpuLimit / NS if cmd.cpuLimit else None,
                  wall_time=cmd.clockLimit / NS if cmd.clockLimit else Limits().wall_time,
                  memory=cmd.memoryLimit or Limits().memory, stack=cmd.stackLimit or None,
                  pids=cmd.procLimit or Limits().pids, output=collect)


def _argv(cmd: Cmd) -> list[str]:
    """go-judge runs a bare name that a copyIn put in the work dir from there."""
    first = cmd.args[0]
    return [f"./{first}" if "/" not in first and first in cmd.copyIn else first, *cmd.args[1:]]


def _collectors(cmd: Cmd) -> dict[str, tuple[int, int]]:
    """Collector name -> (fd, max bytes)."""
    return {spec.name: (fd, spec.max if spec.max is not None else DEFAULT_COLLECT)
            for fd, spec in enumerate(cmd.files) if spec is not None and spec.name is not None and fd in (1, 2)}


async def _one(cmd: Cmd, pool: SandboxPool, cache: FileCache) -> dict[str, Any]:
    collectors = _collectors(cmd)
    try:
        async with pool.acquire() as box:
            await _copy_in(box, cmd, cache)
            result = await box.run(_argv(cmd), stdin=_stdin(cmd, cache),
                                   env=dict(e.split("=", 1) for e in cmd.env if "=" in e),
                                   limits=_limits(cmd, sum(m for _, m in collectors.values()) or DEFAULT_COLLECT))
            return await _result(cmd, result, collectors, box, cache)
    except BoxFileError as e:
        return _failure("File Error", e)
    except SandboxError as e:
        return _failure("Internal Error", e)


def _failure(status: str, e: Exception) -> dict[str, Any]:
    return {"status": status, "exitStatus": 0, "time": 0, "memory": 0, "runTime": 0, "error": str(e)}


async def _result(cmd: Cmd, r: Result, collectors: dict[str, tuple[int, int]], box: Sandbox,
                  cache: FileCache) -> dict[str, Any]:
    """go-judge's Result: collectors always in `files`, empty fields left out."""
    status = STATUS[r.status]
    files: dict[str, Collected] = {}
    file_ids: dict[str, str] = {}
    errors: list[dict[str, str]] = []
    for name, (fd, limit) in collectors.items():
        data = r.stdout if fd == 1 else r.stderr
        if len(data) > limit:
            status = "Output Limit Exceeded"
            errors.append({"name": name, "type": "CollectSizeExceeded"})
        files[name] = Collected(data[:limit + 1])
    for names, cached in ((cmd.copyOut, False), (cmd.copyOutCached, True)):
        for spec in names:
            name, optional = spec.removesuffix("?"), spec.endswith("?")
            if name in collectors and not cached:
                continue
            try:
                data = files[name].data if name in collectors else await box.read_file(
                    name, max_size=cmd.copyOutMax or DEFAULT_COLLECT)
            except BoxFileError as e:
                if not optional:
                    errors.append({"name": name, "type": "CopyOutOpen", "message": str(e)})
                continue
            if not cached:
                files[name] = Collected(data)
                continue
            try:
                file_ids[name] = cache.add(name, data)
            except CacheFull as e:
                errors.append({"name": name, "type": "CopyOutCreateFile", "message": str(e)})
    if errors and status == "Accepted":
        status = "File Error"
    out: dict[str, Any] = {
        "status": status, "exitStatus": r.exit_code if r.exit_code is not None else (r.signal or 0),
        "time": int(r.cpu_time * NS), "memory": r.memory_peak, "runTime": int(r.wall_time * NS),
    }
    extra = {"error": r.message if r.status is not Status.OK else "", "files": files, "fileIds": file_ids,
             "fileError": errors}
    return {**out, **{k: v for k, v in extra.items() if v}}


async def _piped(request: RunRequest, pool: SandboxPool, cache: FileCache) -> list[dict[str, Any]]:
    ends = {(m.in_.index, m.in_.fd, m.out.index, m.out.fd) for m in request.pipeMapping}
    if len(request.cmd) != 2 or ends not in ({(0, 1, 1, 0)}, {(0, 1, 1, 0), (1, 1, 0, 0)}):
        raise RequestError("pipeMapping: two commands, the first one's stdout (fd 1) the second's stdin (fd 0), "
                           "and, for an interactive pair, the second's stdout the first's stdin")
    if pool.size < 2:
        raise RequestError(f"pipeMapping: the two commands need two boxes at once, and the pool has {pool.size} "
                           "(sbx serve --pool 2)")
    a, b = request.cmd
    crossed = len(ends) == 2
    try:
        async with pool.acquire_many(2) as (box_a, box_b):
            for cmd, box in ((a, box_a), (b, box_b)):
                await _copy_in(box, cmd, cache)
            limits = {"limits_a": _limits(a, DEFAULT_COLLECT), "limits_b": _limits(b, DEFAULT_COLLECT)}
            if crossed:
                ra, rb = await run_interactive(box_a, _argv(a), box_b, _argv(b), **limits)
            else:
                ra, rb = await run_pipeline(box_a, _argv(a), box_b, _argv(b), **limits, stdin=_stdin(a, cache))
            captured_b = _collectors(b) if not crossed else {n: c for n, c in _collectors(b).items() if c[0] == 2}
            return [await _result(a, ra, {n: c for n, c in _collectors(a).items() if c[0] == 2}, box_a, cache),
                    await _result(b, rb, captured_b, box_b, cache)]
    except BoxFileError as e:
        return [_failure("File Error", e)] * 2
    except SandboxError as e:
        return [_failure("Internal Error", e)] * 2
