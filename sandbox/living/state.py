"""Detached boxes' state: one directory per box, which its monitor keeps and the other commands read.

Under `$XDG_RUNTIME_DIR/sbx/boxes/NAME/` (else `/tmp/sbx-UID/boxes`), 0700::

    run.json      what `sbx run -d` was given: its arguments and working directory (never a secret's value)
    state.json    starting | running | exited, the monitor's pid, the times, the exit status
    record.json   the run's record (as `sbx run --json` writes it), once it ended
    log, log.idx  the program's stdout and stderr, masked, and when each part came (log.py); log.1, log.1.idx
                  before them, once the log was rotated
    lock          flocked by the monitor for its whole life: free while the state says running means it died
    stop          the grace `sbx stop -t` asks for, in seconds
    stats.json    the CPU time and memory so far, sampled by the monitor every 2 s

Every JSON file is written whole under another name and renamed, so a
reader sees the old or the new one; one that cannot be read is reported in
one line.  A name is taken by making its directory: a second box cannot
take a name in use, running or not (`sbx rm` frees it).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from typing import Any

from ..errors import ConfigError
from ..record import Record

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class BoxState(Record):
    name: str
    state: str
    """starting, running, exited, or dead (its monitor ended without saying so: killed)."""
    command: tuple[str, ...] = ()
    image: str | None = None
    monitor: int = 0
    box: int = 0
    """The box's outer process, whose namespaces `sbx exec` enters."""
    created: float = 0.0
    started: float | None = None
    ended: float | None = None
    exit_status: int | None = None
    message: str = ""


def root() -> str:
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/sbx-{os.getuid()}"
    path = os.path.join(runtime, "sbx", "boxes")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"the detached boxes' state {path}: {e.strerror}") from None
    return path


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ConfigError(f"box name {name!r}: letters, digits, '.', '_' and '-', at most 64, starting with a "
                          "letter or digit")
    return name


def path_of(name: str) -> str:
    return os.path.join(root(), check_name(name))


def create(name: str) -> str:
    """Take the name: its directory, made here and now (a name in use, running or not, is refused)."""
    path = path_of(name)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        raise ConfigError(f"box {name}: the name is in use (sbx rm {name} frees it)") from None
    return path


def write_json(path: str, name: str, data: dict[str, Any]) -> None:
    write_text(path, name, json.dumps(data, sort_keys=True))


def write_text(path: str, name: str, text: str) -> None:
    """`path/name` replaced whole: written under another name, then renamed (a reader sees the old or the new)."""
    tmp = os.path.join(path, f".{name}.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, os.path.join(path, name))


def read_json(path: str, name: str) -> dict[str, Any]:
    try:
        with open(os.path.join(path, name)) as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        return data
    except FileNotFoundError:
        raise ConfigError(f"box {os.path.basename(path)}: no such box (sbx ps -a lists them)") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"box {os.path.basename(path)}: its {name} cannot be read ({e})") from None


def alive(path: str) -> bool:
    """Whether the box's monitor lives (it holds the lock)."""
    try:
        fd = os.open(os.path.join(path, "lock"), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def hold(path: str) -> int:
    """The monitor's lock, for its whole life."""
    fd = os.open(os.path.join(path, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def status(name: str) -> BoxState:
    """The box's state as its monitor last wrote it; a running one whose monitor is gone is dead."""
    path = path_of(name)
    data = read_json(path, "state.json")
    try:
        state = BoxState(**{**data, "command": tuple(data.get("command") or ())})
    except TypeError as e:
        raise ConfigError(f"box {name}: its state.json cannot be read ({e})") from None
    if state.state in ("starting", "running") and not alive(path):
        return state.replace(state="dead", message=state.message or "its monitor ended without a word (killed)")
    return state


def save(path: str, state: BoxState) -> None:
    from ..record import asdict
    write_json(path, "state.json", {**asdict(state), "command": list(state.command)})


def names() -> list[str]:
    return sorted(n for n in os.listdir(root()) if _NAME.fullmatch(n))


def usage(name: str) -> tuple[float, int]:
    """CPU seconds and memory bytes so far: the monitor's last sample while the box runs, the record's once it
    ended (its CPU time and memory peak); (0, 0) when neither is there."""
    path = path_of(name)
    for file, cpu, memory in (("record.json", "cpu_time", "memory_peak"), ("stats.json", "cpu", "memory")):
        try:
            data = read_json(path, file)
            return float(data.get(cpu) or 0), int(data.get(memory) or 0)
        except (ConfigError, ValueError, TypeError):
            continue
    return 0.0, 0


def uptime(state: BoxState) -> float:
    return ((state.ended or time.time()) - state.started) if state.started else 0.0
