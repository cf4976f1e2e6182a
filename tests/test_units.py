"""Parsing, verdict rules and other pieces that need no box or mount."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from fuse_overlay.inodes import Node
from fuse_overlay.openfiles import OpenFiles
from sandbox import ConfigError, Limits, Status, parse_size
from sandbox.run import fallback
from sandbox.run.limits import parse_count, parse_seconds
from sandbox.seccomp.policy import load_policy
from sandbox.box.run_protocol import HEAD_TOKENS, MAX_ARGS, MAX_PROGRAM_FDS, RunEnd, RunRequest, Seccomp, StartFailure
from sandbox.box.run_protocol import decode_report
from sandbox.box.plan import Secrets
from sandbox.run.verdict import enforcement, verdict


@pytest.mark.parametrize("text,value", [("65536", 65536), ("256M", 256 * 2**20), ("1G", 2**30), ("1.5k", 1536),
                                        ("64MiB", 64 * 2**20), ("2t", 2 * 2**40)])
def test_parse_size_accepts(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["12Q", "", "M", "-1", "0", "1e9", "ten"])
def test_parse_size_rejects_with_the_flag_name(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^--memory: "):
        parse_size(text, "--memory")


@pytest.mark.parametrize("text", ["abc", "0", "-1", "nan", "inf"])
def test_parse_seconds_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^--time: "):
        parse_seconds(text, "--time")


def test_parse_count_rejects_non_numbers() -> None:
    with pytest.raises(ConfigError, match=r"^--pids: invalid count 'x'"):
        parse_count("x", "--pids")


def test_limits_reject_nonsense() -> None:
    with pytest.raises(ConfigError):
        Limits(cpu_time=-1)
    with pytest.raises(ConfigError):
        Limits(memory=0)


def test_a_record_is_a_value_checked_on_every_copy() -> None:
    """record.py stands in for dataclasses on the start path: what its users rely on must hold."""
    limits = Limits(pids=3)
    assert limits == Limits(pids=3) != Limits(pids=4) and hash(limits) == hash(Limits(pids=3))
    assert limits.replace(pids=5) == Limits(pids=5) and limits.pids == 3
    with pytest.raises(AttributeError):
        limits.pids = 4  # type: ignore[misc]
    with pytest.raises(ConfigError):  # replace goes through __init__, so __post_init__'s checks again
        limits.replace(memory=0)
    with pytest.raises(TypeError, match="missing argument 'cpu_time'"):
        RunEnd(wait_status=0)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected or repeated argument 'cpu_time'"):
        Limits(1.0, cpu_time=2.0)  # type: ignore[misc]
    first, second = _reply(), _reply()
    first.events["x"] = 1
    assert second.events == {}  # a default_factory makes one per record
    result = verdict(_reply(), Limits(), output_exceeded=False, enforcement={})
    result.stdout = b"secret"
    assert "secret" not in repr(result) and "status=" in repr(result)  # repr=False fields stay out
    assert RunEnd(0, 0.1, 0.2, 1000) != StartFailure("exec", 2)  # another type is never equal
    with pytest.raises(TypeError, match="missing argument 'values'"):  # field(repr=False) with no default: required
        Secrets(("api",))  # type: ignore[call-arg]
    assert "6869" not in repr(Secrets(("api",), ("6869",), 1000, 1000))


def _reply(**kw: Any) -> RunEnd:
    return RunEnd(wait_status=0, cpu_time=0.1, wall_time=0.2, memory_peak=1000).replace(**kw)


def test_verdict_order() -> None:
    limits = Limits(cpu_time=1.0, wall_time=2.0, memory=100_000)
    enf = enforcement(limits, None, cgroup=False, traced=True)
    assert verdict(_reply(), limits, output_exceeded=False, enforcement=enf).status is Status.OK
    assert verdict(_reply(wait_status=3 << 8), limits, output_exceeded=False, enforcement=enf).status is Status.RE
    assert verdict(_reply(wait_status=signal.SIGSEGV), limits, output_exceeded=False,
                   enforcement=enf).status is Status.SG
    # An enforced limit wins over the SIGKILL it caused; over-limit CPU is TLE even after a clean exit.
    assert verdict(_reply(wait_status=9, killed="TLE"), limits, output_exceeded=False,
                   enforcement=enf).status is Status.TLE
    assert verdict(_reply(cpu_time=1.01), limits, output_exceeded=False, enforcement=enf).status is Status.TLE
    assert verdict(_reply(wait_status=9, killed="WLE"), limits, output_exceeded=False,
                   enforcement=enf).status is Status.WLE
    assert verdict(_reply(wait_status=13), limits, output_exceeded=True, enforcement=enf).status is Status.OLE
    # MLE only from the spawner's own kill: a failure near the limit is the program's (RE or SG).
    assert verdict(_reply(wait_status=9, killed="MLE", memory_peak=100_500), limits, output_exceeded=False,
                   enforcement=enf).status is Status.MLE
    assert verdict(_reply(wait_status=6, memory_peak=99_000), limits, output_exceeded=False,
                   enforcement=enf).status is Status.SG
    # A signal the program can raise itself is SG, whatever limit it is named after.
    assert verdict(_reply(wait_status=signal.SIGXFSZ), limits, output_exceeded=False,
                   enforcement=enf).status is Status.SG
    assert verdict(_reply(wait_status=signal.SIGXCPU, cpu_time=0.2), limits, output_exceeded=False,
                   enforcement=enf).status is Status.SG


def test_verdict_under_cgroups_is_exact() -> None:
    """MLE only from the kernel's OOM count (no inference from the peak); pids hits are named."""
    limits = Limits(memory=100_000, pids=8)
    enf = enforcement(limits, None, cgroup=True, traced=False)
    assert enf == {"wall_time": "monitor", "memory": "cgroup", "pids": "cgroup", "output": "supervisor", "file_size": "rlimit"}
    high_but_not_killed = verdict(_reply(wait_status=6, memory_peak=99_000), limits, output_exceeded=False,
                                  enforcement=enf)
    assert high_but_not_killed.status is Status.SG
    oom = verdict(_reply(wait_status=9, memory_peak=100_000, events={"memory.oom_kill": 1}), limits,
                  output_exceeded=False, enforcement=enf)
    assert oom.status is Status.MLE and oom.events == {"memory.oom_kill": 1}
    bomb = verdict(_reply(wait_status=1 << 8, events={"pids.max": 5}), limits, output_exceeded=False, enforcement=enf)
    assert bomb.status is Status.RE and bomb.message == "exited with status 1 (the pids limit of 8 refused 5 forks)"


def test_enforcement_names_only_set_limits() -> None:
    unset = {"wall_time": None, "memory": None, "pids": None, "output": None, "file_size": None}
    enf = enforcement(Limits(cpu_time=1.0, **unset), None, cgroup=False, traced=True)  # type: ignore[arg-type]
    assert enf == {"cpu_time": "ptrace"}
    one = enforcement(Limits(cpu_time=1.0, **{**unset, "memory": 1 << 20, "pids": 1}), None,  # type: ignore[arg-type]
                      cgroup=False, traced=False)
    assert one == {"cpu_time": "monitor", "memory": "sampled", "pids": "rlimit"}
    assert enforcement(Limits(**unset), "strict", cgroup=False,  # type: ignore[arg-type]
                       traced=False) == {"syscalls": "seccomp:strict"}


def test_a_run_is_traced_only_where_it_may_make_processes() -> None:
    """Without cgroup v2 the spawner traces a run whose policy and pids limit let it fork (see fallback.py)."""
    forks = fallback.one_process(load_policy("default"))
    assert fallback.traced(Limits(), cgroup=False, one_process=forks)
    assert not fallback.traced(Limits(), cgroup=True, one_process=forks)
    assert not fallback.traced(Limits(pids=1), cgroup=False, one_process=forks)
    assert not fallback.traced(Limits(), cgroup=False, one_process=fallback.one_process(load_policy("strict"))), \
        "strict makes threads only"
    assert fallback.traced(Limits(), cgroup=False, one_process=False)  # no policy
    assert fallback.one_process(load_policy("strict")) and not fallback.one_process(load_policy("compile"))


def test_defaults_bound_what_untrusted_code_can_take() -> None:
    limits = Limits()
    assert (limits.wall_time, limits.memory, limits.pids, limits.cpu_time) == (600.0, 2**30, 64, None)


def test_result_record_has_every_contract_field() -> None:
    r = verdict(_reply(), Limits(), output_exceeded=False, enforcement={})
    assert set(r.record()) == {"status", "exit_code", "signal", "cpu_time", "wall_time", "memory_peak", "syscall",
                               "message", "enforcement", "events", "proc_peak"}


def test_open_files_keep_a_bounded_number_of_descriptors(tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"f{i}")
        paths[-1].write_bytes(b"%d" % i)
    nodes = [Node(10 + i, None, b"", False, True, (), None) for i in range(3)]
    files = OpenFiles(limit=2)
    fds = [files.get(node, bytes(path), writable=False) for node, path in zip(nodes, paths)]
    assert nodes[0].fd is None
    with pytest.raises(OSError) as closed:
        os.fstat(fds[0])
    assert closed.value.errno == errno.EBADF
    assert os.pread(files.get(nodes[0], bytes(paths[0]), writable=False), 1, 0) == b"0"
    assert nodes[1].fd is None  # the least recently used went this time
    writable = files.get(nodes[2], bytes(paths[2]), writable=True)
    assert writable != fds[2] and nodes[2].fd_rw
    os.pwrite(writable, b"X", 0)
    assert paths[2].read_bytes() == b"X"
    files.drop(nodes[2])
    assert nodes[2].fd is None


def test_an_answer_is_the_same_json_whole_or_streamed() -> None:
    """/run's small answers go out whole (the json module), large ones in pieces: the same JSON either way, with
    invalid UTF-8 as U+FFFD and NULs escaped."""
    from sandbox.service.response import Collected, encode, whole
    results = [{"status": "Accepted", "time": 1, "files": {"stdout": Collected(b"a\0\xff\"\n" + "é".encode() * 70_000)},
                "fileError": [{"name": "x", "type": "CopyOutOpen"}]}, {}]
    streamed = b"".join(encode(results))
    assert whole(results) == streamed
    assert json.loads(streamed)[0]["files"]["stdout"].startswith('a\0\ufffd"\n')


def test_the_run_protocol_is_the_spawners() -> None:
    """run_protocol.py's bounds are spawner.c's, and a request has as many head tokens as spawner.c reads."""
    source = (Path(__file__).resolve().parent.parent / "sandbox" / "box" / "spawner.c").read_text()
    defined = dict(re.findall(r"^#define (\w+) (\d+)\b", source, re.M))
    assert (int(defined["MAX_ARGS"]), int(defined["MAX_PROGRAM_FDS"]), int(defined["HEAD_TOKENS"])) == \
        (MAX_ARGS, MAX_PROGRAM_FDS, HEAD_TOKENS)
    request = RunRequest(argv=("prog", "arg"), env={"A": "b"}, cwd="/w", rlimits=((7, 64, 64),), cpu_time=1.5,
                         wall_time=None, memory=None, output=1024, cpu_set=frozenset({1, 0}), trace=False,
                         seccomp=Seccomp.COUNTED, capture=True, fds=4)
    tokens = request.tokens(cgroup=True)
    assert tokens[:HEAD_TOKENS] == ["run", "2", "1", "0", "1.5", "0", "0", "1", "1024", "1", "2", "1", "/w", "0,1", "4", "0"]
    assert tokens[HEAD_TOKENS:] == ["7", "64", "64", "prog", "arg", "A=b"]
    flags = {f"{a},{b}": request.replace(say_started=a, terminal=b).tokens(cgroup=False)[HEAD_TOKENS - 1]
             for a in (False, True) for b in (False, True)}  # FLAGS, as spawner.c reads them
    assert flags == {"False,False": "0", "True,False": defined["SAY_STARTED"], "False,True": defined["TERMINAL"],
                     "True,True": "3"}
    assert decode_report({"stage": "exec", "errno": 2}, None) == StartFailure("exec", 2)
    end = decode_report({"wait_status": 9, "cpu": 0.5, "wall": 0.7, "maxrss": 10, "limit": None, "syscall": None,
                         "out": [3, 4], "refused": []}, "WLE")
    assert end == RunEnd(9, 0.5, 0.7, 10240, killed="WLE", out=(3, 4))


@pytest.mark.parametrize(("text", "seconds_back"), [("10m", 600), ("1h30m", 5400), ("2.5s", 2.5), ("250ms", 0.25),
                                                    ("1700000000", 1700000000),
                                                    ("2023-11-14T22:13:20Z", 1700000000)])
def test_logs_since_takes_what_docker_takes(text: str, seconds_back: float) -> None:
    from sandbox.living.log import parse_since
    now = 1800000000.0
    want = seconds_back if seconds_back > 1e6 else now - seconds_back
    assert parse_since(text, now) == pytest.approx(want)
    with pytest.raises(ConfigError, match="--since '10x'"):
        parse_since("10x", now)


def test_a_box_log_and_its_index_stay_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A program that prints a byte at a time makes a mark per write: the index rotates too, so neither grows
    past its bound; --since still finds what came after a time."""
    from sandbox.living import log
    monkeypatch.setattr(log, "MARKS", 100)
    monkeypatch.setattr(log, "RESOLUTION", 0.0)
    writer = log.Writer(str(tmp_path))
    for i in range(1000):
        writer.write(b"%d\n" % i)
    writer.close()
    assert (tmp_path / "log.idx").stat().st_size <= 100 * 16 and (tmp_path / "log.1.idx").stat().st_size == 1600
    lines = (tmp_path / "log.1").read_bytes().splitlines() + (tmp_path / "log").read_bytes().splitlines()
    assert lines[-1] == b"999" and len(lines) == 100 + 1000 % 100
    import io
    out = io.BytesIO()
    log.copy(str(tmp_path), log.since(str(tmp_path), 0.0), out)
    assert out.getvalue().splitlines() == lines
