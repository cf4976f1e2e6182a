"""go-judge's /run, on sbx's pool: its request and response shapes and status names, so its clients work unchanged.

Units are go-judge's: times in nanoseconds, sizes in bytes.  Each command
runs in a box of the pool (a fresh one, reset after), under the service's
policy.  Files come from `content`, a cached `fileId`, or a `src` on the
server beneath the operator's `--src-prefix` paths (sources.py).
Commands joined by a `pipeMapping` run at once, each pipe from any fd of one
to any fd of another (a pipeline, an interactive pair, any graph), relayed
and kept (`proxy` with a `name`) if asked.  Any fd may be given a file;
stdout and stderr may be collected (also from a terminal, `tty`).  Unlike
go-judge, an unknown fileId is that command's "File Error", not an HTTP 500
for the whole request.
"""

from __future__ import annotations

import os
import stat
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..api import Pipe, Program, Sandbox, run_connected
from ..box.cgroups import delegation
from ..box.run_protocol import MAX_PROGRAM_FDS
from ..errors import BoxFileError, SandboxError
from ..pool import SandboxPool
from ..run.limits import Limits
from ..run.result import Result, Status
from ..run.tap import Tap
from ..spec import ExactEnv
from .files import CacheFull, FileCache
from .response import Collected
from .sources import SourceError, Sources

NS = 1e9
HOME = "/w"
"""The boxes' working directory, go-judge's: clients name files there (Hydro's interactor writes /w/tout)."""
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
    symlink: str | None = None  # copyIn only: a link to this target
    name: str | None = None  # a collector (stdout/stderr)
    max: int | None = Field(default=None, ge=0)
    pipe: bool = False


DAY_NS = 86_400 * 10**9
"""The longest CPU or wall limit a command may ask for."""
MAX_BYTES = 2**50
MAX_PROCS = 4_194_304  # the kernel's own pid_max limit


class Cmd(BaseModel):
    model_config = ConfigDict(extra="ignore")  # go-judge has fields sbx needs not (copyOutDir, streamIn, ...)
    args: list[str] = Field(min_length=1)
    env: list[str] = []
    files: list[FileSpec | None] = []
    cpuLimit: int = Field(default=0, ge=0, le=DAY_NS)  # noqa: N815
    realCpuLimit: int = Field(default=0, ge=0, le=DAY_NS)  # noqa: N815 - the wall limit; clockLimit's new name
    clockLimit: int = Field(default=0, ge=0, le=DAY_NS)  # noqa: N815
    cpuRateLimit: int = Field(default=0, ge=0, le=10**6)  # noqa: N815 - thousandths of a CPU
    cpuSetLimit: str = ""  # noqa: N815
    tty: bool = False
    strictMemoryLimit: bool = False  # noqa: N815
    dataSegmentLimit: bool = False  # noqa: N815
    addressSpaceLimit: bool = False  # noqa: N815
    copyOutTruncate: bool = False  # noqa: N815
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
        if any("=" not in e for e in self.env):
            raise ValueError("env: each entry is NAME=VALUE")
        if self.cpuSetLimit:
            _cpu_set(self.cpuSetLimit)
        return self


def _cpu_set(text: str) -> frozenset[int]:
    """go-judge's cpuSetLimit, cpuset(7)'s list format ("0", "0-1", "0,2-3"), within this machine's CPUs."""
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        if not low.isdigit() or (high and not high.isdigit()) or (high and int(high) < int(low)):
            raise ValueError(f"cpuSetLimit {text!r}: expected CPUs as 0,2-3")
        cpus.update(range(int(low), int(high or low) + 1))
    have = os.sched_getaffinity(0)
    if not cpus <= have:
        raise ValueError(f"cpuSetLimit {text!r}: this server runs on CPUs {','.join(map(str, sorted(have)))}")
    return frozenset(cpus)


class PipeEnd(BaseModel):
    index: int = Field(ge=0)
    fd: int = Field(ge=0)


class PipeMap(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    in_: PipeEnd = Field(alias="in")  # the writing end (a command's stdout)
    out: PipeEnd  # the reading end (a command's stdin)
    proxy: bool = False  # relayed by the service; with a name, what passes is kept (tap.py)
    name: str = ""
    max: int = Field(default=0, ge=0, le=MAX_BYTES)
    disableZeroCopy: bool = False  # noqa: N815 - a relay detail of go-judge's; sbx's relay copies either way

    @property
    def kept(self) -> bool:
        """go-judge keeps what passes only through a proxied pipe with a name."""
        return self.proxy and bool(self.name)


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    cmd: list[Cmd] = Field(min_length=1, max_length=16)
    pipeMapping: list[PipeMap] = []  # noqa: N815
    requestId: str | None = None  # noqa: N815


def worst_case(request: RunRequest) -> int:
    """The most bytes the request's answer may hold: every collector's max, every copied-out file's, every
    kept pipe's."""
    total = sum(m.max or DEFAULT_COLLECT for m in request.pipeMapping if m.kept)
    for cmd in request.cmd:
        collectors = _collectors(cmd)
        total += sum(m for _, m in collectors.values())
        total += sum(cmd.copyOutMax or DEFAULT_COLLECT for name in (*cmd.copyOut, *cmd.copyOutCached)
                     if name.removesuffix("?") not in collectors)
    return total


async def run(request: RunRequest, pool: SandboxPool, inputs: Inputs) -> list[dict[str, Any]]:
    """The results of the request's commands, in order; collected files as response.Collected bytes.  Commands
    joined by a pipeMapping run at once, each in a box; others each in its own, as boxes come free."""
    for cmd in request.cmd:
        _check_files(cmd, inputs)
    if request.pipeMapping:
        if len(request.cmd) > pool.size:
            raise RequestError(f"pipeMapping: the {len(request.cmd)} commands need as many boxes at once, and the "
                               f"pool has {pool.size} (sbx serve --pool)")
        return await _group(request.cmd, _pipes(request), pool, inputs)
    if len(request.cmd) == 1:
        return await _group(request.cmd, [], pool, inputs)
    results: list[dict[str, Any]] = [{} for _ in request.cmd]

    async def one(i: int, cmd: Cmd) -> None:
        results[i], = await _group([cmd], [], pool, inputs)

    async with anyio.create_task_group() as tasks:
        for i, cmd in enumerate(request.cmd):
            tasks.start_soon(one, i, cmd)
    return results


@dataclass(frozen=True)
class Inputs:
    """Where a command's files come from besides `content`: the cache (fileId) and the server's files (src)."""

    cache: FileCache
    sources: Sources


def _check_files(cmd: Cmd, inputs: Inputs) -> None:
    for where, spec in [*(("files", f) for f in cmd.files if f is not None), *cmd.copyIn.items()]:
        if spec.src is not None:
            try:
                os.close(inputs.sources.open(spec.src))
            except SourceError as e:
                raise RequestError(f"{where}: {e}") from None
    if any(f is not None and f.symlink is not None for f in cmd.files):
        raise RequestError("files: a symlink is for copyIn only")
    if len(cmd.files) > MAX_PROGRAM_FDS:
        raise RequestError(f"files: at most {MAX_PROGRAM_FDS} (fds 0 to {MAX_PROGRAM_FDS - 1})")
    for fd, spec in enumerate(cmd.files):
        if spec is not None and (spec.name is not None) != (fd in (1, 2)):
            raise RequestError(f"files[{fd}]: a collector (name) is for stdout and stderr, which take nothing else "
                               "(or a pipe, or null)")
    if cmd.cpuRateLimit and delegation().base is None:
        raise RequestError(f"cpuRateLimit: needs cgroup v2 delegation, and there is none: {delegation().reason}")


def _data(spec: FileSpec, inputs: Inputs) -> bytes | int:
    """A file's data, or for a `src` an fd to read it from (the caller closes it)."""
    if spec.content is not None:
        return spec.content.encode()
    if spec.fileId is not None:
        data = inputs.cache.get(spec.fileId)
        if data is None:
            raise BoxFileError(f"fileId {spec.fileId}: no such file")
        return data
    if spec.src is not None:
        try:
            return inputs.sources.open(spec.src)
        except SourceError as e:
            raise BoxFileError(str(e)) from None
    raise RequestError("a file needs content, a fileId or a src")


async def _copy_in(box: Sandbox, cmd: Cmd, inputs: Inputs) -> None:
    for path, spec in cmd.copyIn.items():
        if spec.symlink is not None:
            await box.symlink(path, spec.symlink)
            continue
        data = _data(spec, inputs)
        try:  # executable: a cached binary runs by its name
            await (box.copy_in(path, data, 0o755) if isinstance(data, int) else box.write_file(path, data, 0o755))
        finally:
            if isinstance(data, int):
                os.close(data)


def _limits(cmd: Cmd, collect: int) -> Limits:
    wall = cmd.realCpuLimit or cmd.clockLimit
    memory = cmd.memoryLimit or Limits().memory
    return Limits(cpu_time=cmd.cpuLimit / NS if cmd.cpuLimit else None,
                  wall_time=wall / NS if wall else Limits().wall_time,
                  memory=memory, stack=cmd.stackLimit or None,
                  pids=cmd.procLimit or Limits().pids, output=collect,
                  cpus=cmd.cpuRateLimit / 1000 if cmd.cpuRateLimit else None,
                  address_space=memory if cmd.addressSpaceLimit else None,
                  cpu_set=_cpu_set(cmd.cpuSetLimit) if cmd.cpuSetLimit else None,
                  data=memory if cmd.dataSegmentLimit or cmd.strictMemoryLimit else None)


def _env(cmd: Cmd) -> ExactEnv:
    """Exactly the list given, as go-judge passes it (a later NAME wins)."""
    return ExactEnv(e.split("=", 1) for e in cmd.env)


def _argv(cmd: Cmd) -> list[str]:
    """go-judge runs a bare name that a copyIn put in the work dir from there."""
    first = cmd.args[0]
    return [f"./{first}" if "/" not in first and first in cmd.copyIn else first, *cmd.args[1:]]


def _collectors(cmd: Cmd, piped: frozenset[int] = frozenset()) -> dict[str, tuple[int, int]]:
    """Collector name -> (fd, max bytes), but for the fds that are `piped`."""
    return {spec.name: (fd, spec.max if spec.max is not None else DEFAULT_COLLECT)
            for fd, spec in enumerate(cmd.files) if spec is not None and spec.name is not None and fd not in piped}


def _pipes(request: RunRequest) -> list[tuple[Pipe, str]]:
    """The request's pipes, each with the name under which the writer's result keeps what passed ("": none)."""
    pipes = []
    for m in request.pipeMapping:
        for end in (m.in_, m.out):
            if end.index >= len(request.cmd) or end.fd >= MAX_PROGRAM_FDS:
                raise RequestError(f"pipeMapping: no fd {end.fd} of command {end.index} (commands 0 to "
                                   f"{len(request.cmd) - 1}, fds 0 to {MAX_PROGRAM_FDS - 1})")
            cmd = request.cmd[end.index]
            if _file(cmd, end.fd) is not None or (cmd.tty and end.fd in (1, 2)):
                raise RequestError(f"pipeMapping: fd {end.fd} of command {end.index} is piped, so its files entry "
                                   "is null, and it is not a terminal (tty)")
        pipes.append((Pipe((m.in_.index, m.in_.fd), (m.out.index, m.out.fd), Tap(m.max or DEFAULT_COLLECT)
                           if m.kept else None), m.name if m.kept else ""))
    ends = [end for pipe, _ in pipes for end in (pipe.writer, pipe.reader)]
    if len(set(ends)) != len(ends):
        raise RequestError("pipeMapping: an fd is the end of two pipes")
    return pipes


def _file(cmd: Cmd, fd: int) -> FileSpec | None:
    return cmd.files[fd] if fd < len(cmd.files) else None


def _program(cmd: Cmd, box: Sandbox, piped: frozenset[int], inputs: Inputs, opened: ExitStack) -> Program:
    """A command as run_connected takes it: its given files (not collectors, not piped) as data or fds."""
    given: dict[int, bytes | int] = {}
    for fd, spec in enumerate(cmd.files):
        if spec is not None and spec.name is None and fd not in piped:
            data = given[fd] = _data(spec, inputs)
            if isinstance(data, int):
                opened.callback(os.close, data)
    collect = sum(m for _, m in _collectors(cmd, piped).values()) or DEFAULT_COLLECT
    return Program(box, _argv(cmd), _limits(cmd, collect), _env(cmd), stdin=given.pop(0, None), fds=given,
                   tty=cmd.tty)


async def _group(cmds: list[Cmd], pipes: list[tuple[Pipe, str]], pool: SandboxPool,
                 inputs: Inputs) -> list[dict[str, Any]]:
    """Commands run at once, each in a box of its own, joined by `pipes`."""
    piped = [frozenset(fd for pipe, _ in pipes for index, fd in (pipe.writer, pipe.reader) if index == i)
             for i in range(len(cmds))]
    try:
        async with pool.acquire_many(len(cmds)) as boxes:
            with ExitStack() as opened:
                programs = []
                for cmd, box, fds in zip(cmds, boxes, piped, strict=True):
                    await _copy_in(box, cmd, inputs)
                    programs.append(_program(cmd, box, fds, inputs, opened))
                ran = await run_connected(programs, [pipe for pipe, _ in pipes])
            results = [await _result(cmd, r, _collectors(cmd, fds), box, inputs)
                       for cmd, r, box, fds in zip(cmds, ran, boxes, piped, strict=True)]
    except BoxFileError as e:
        return [_failure("File Error", e) for _ in cmds]
    except SandboxError as e:
        return [_failure("Internal Error", e) for _ in cmds]
    for pipe, name in pipes:  # what passed, in the writer's result, as go-judge has it
        if pipe.tap is None:
            continue
        out = results[pipe.writer[0]]
        out.setdefault("files", {})[name] = Collected(bytes(pipe.tap.data))
        if pipe.tap.exceeded:
            out.setdefault("fileError", []).append({"name": name, "type": "CollectSizeExceeded"})
            if out["status"] == "Accepted":
                out["status"] = "Output Limit Exceeded"
    return results


def _failure(status: str, e: Exception) -> dict[str, Any]:
    return {"status": status, "exitStatus": 0, "time": 0, "memory": 0, "runTime": 0, "error": str(e)}


async def _result(cmd: Cmd, r: Result, collectors: dict[str, tuple[int, int]], box: Sandbox,
                  inputs: Inputs) -> dict[str, Any]:
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
            if name in collectors:
                data = files[name].data
            else:
                data, error = await _copy_out(box, cmd, name)
                if error is not None and (error["type"] != "CopyOutOpen" or not optional):
                    errors.append(error)
                if data is None:
                    continue
            if not cached:
                files[name] = Collected(data)
                continue
            try:
                file_ids[name] = inputs.cache.add(name, data)
            except CacheFull as e:
                errors.append({"name": name, "type": "CopyOutCreateFile", "message": str(e)})
    if errors and status == "Accepted":
        status = "File Error"
    out: dict[str, Any] = {
        "status": status, "exitStatus": r.exit_code if r.exit_code is not None else (r.signal or 0),
        "time": int(r.cpu_time * NS), "memory": r.memory_peak, "runTime": int(r.wall_time * NS),
        **({"procPeak": r.proc_peak} if r.proc_peak is not None else {}),
    }
    said = r.message if r.status is not Status.OK else "; ".join(e["message"] for e in errors if "message" in e)
    extra = {"error": said, "files": files, "fileIds": file_ids, "fileError": errors}
    return {**out, **{k: v for k, v in extra.items() if v}}


async def _copy_out(box: Sandbox, cmd: Cmd, name: str) -> tuple[bytes | None, dict[str, str] | None]:
    """A file of the box for copyOut, and the file error go-judge would give (its types and messages): what the
    box cannot open (missing, a symlink: never followed), what is not a regular file, what is over copyOutMax
    (with copyOutTruncate, its first copyOutMax bytes and the error)."""
    limit = cmd.copyOutMax or DEFAULT_COLLECT
    try:
        fd = await box.open_file(name)
    except BoxFileError as e:
        kind = "CopyOutNotRegularFile" if "not a regular file" in str(e) else "CopyOutOpen"
        return None, {"name": name, "type": kind, "message": f"copyout: {e}"}
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, {"name": name, "type": "CopyOutNotRegularFile",
                          "message": f"copyout: {name!r} is not a regular file"}
        over = {"name": name, "type": "CopyOutSizeExceeded",
                "message": f"copyout: {name!r} size ({st.st_size}) exceeds limit ({limit})"}
        if st.st_size > limit and not cmd.copyOutTruncate:
            return None, over
        data = await anyio.to_thread.run_sync(f.read, limit + 1) if limit > 2**20 else f.read(limit + 1)
    return (data[:limit], over) if len(data) > limit else (data, None)
