"""Every limit and every status, from the API."""

from __future__ import annotations

import os
import signal

import pytest

from sandbox import Limits, Sandbox, Status

BUSY = ["sh", "-c", "while :; do :; done"]


async def test_ok_re_sg(box: Sandbox) -> None:
    ok = await box.run(["true"])
    re = await box.run(["sh", "-c", "exit 3"])
    sg = await box.run(["sh", "-c", "kill -SEGV $$"])
    assert (ok.status, ok.exit_code, ok.signal) == (Status.OK, 0, None)
    assert (re.status, re.exit_code, re.signal) == (Status.RE, 3, None)
    assert (sg.status, sg.exit_code, sg.signal) == (Status.SG, None, signal.SIGSEGV)
    assert sg.message == "killed by SIGSEGV"


async def test_cpu_time_limit_kills_at_the_limit(box: Sandbox) -> None:
    r = await box.run(BUSY, limits=Limits(cpu_time=0.3))
    assert r.status is Status.TLE
    assert r.signal == signal.SIGKILL
    assert r.cpu_time >= 0.3
    # Promptness is measured in bench/ (kill latency), not asserted as a time here; but the kill must come
    # long before the 1 s granularity of RLIMIT_CPU, which would show as 1.0 s or more.
    assert r.cpu_time < 1.0


async def test_cpu_time_is_summed_over_processes(box: Sandbox) -> None:
    r = await box.run(["sh", "-c", "while :; do :; done & while :; do :; done"], limits=Limits(cpu_time=0.6))
    assert r.status is Status.TLE
    assert r.cpu_time >= 0.6
    assert r.cpu_time < 1.0, "a per-process limit would have let the two processes use 1.2 s together"


async def test_cpu_time_of_waited_children_is_counted(box: Sandbox) -> None:
    r = await box.run(["sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"])
    r2 = await box.run(["sh", "-c", "sh -c 'i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done'; true"])
    assert r.status is Status.OK and r2.status is Status.OK
    assert r2.cpu_time > 0.5 * r.cpu_time > 0


async def test_wall_time_limit(box: Sandbox) -> None:
    r = await box.run(["sleep", "10"], limits=Limits(wall_time=0.3))
    assert r.status is Status.WLE
    assert 0.3 <= r.wall_time < 10
    assert r.cpu_time < 0.1


async def test_memory_limit(box: Sandbox) -> None:
    hog = "x = []\nwhile True: x.append(b'x' * (1 << 20))"
    r = await box.run(["python3", "-c", hog], limits=Limits(memory=96 * 2**20))
    assert r.status is Status.MLE, (r, r.stderr)
    assert 0.8 * 96 * 2**20 <= r.memory_peak <= 96 * 2**20
    assert r.enforcement["memory"] == "rlimit"


async def test_memory_peak_is_the_programs_own(box: Sandbox) -> None:
    small = await box.run(["true"])
    big = await box.run(["python3", "-c", "x = b'x' * (50 << 20)"])
    assert small.memory_peak < 4 * 2**20, "not the supervisor's or box init's memory"
    assert 50 * 2**20 <= big.memory_peak < 80 * 2**20


async def test_pids_limit_contains_a_fork_bomb(box: Sandbox) -> None:
    prog = (
        "import os, time\n"
        "n = 0\n"
        "for _ in range(20):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(3); os._exit(0)\n"
        "    n += 1\n"
        "print(n)\n"
    )
    r = await box.run(["python3", "-c", prog], limits=Limits(pids=4))
    assert r.stdout == b"3\n", "the program itself is one of the 4"
    bomb = await box.run(["sh", "-c", "b() { b | b & }; b"], limits=Limits(pids=16, wall_time=3))
    assert bomb.status in (Status.OK, Status.RE, Status.WLE)
    after = await box.run(["echo", "alive"])
    assert after.stdout == b"alive\n"


async def test_output_limit(box: Sandbox) -> None:
    r = await box.run(["yes"], limits=Limits(output=10_000))
    assert r.status is Status.OLE
    assert len(r.stdout) == 10_000
    both = await box.run(["sh", "-c", "head -c 6000 /dev/zero; head -c 6000 /dev/zero >&2"],
                         limits=Limits(output=10_000))
    assert both.status is Status.OLE and len(both.stdout) + len(both.stderr) == 10_000


async def test_file_size_open_files_core_and_stack(box: Sandbox) -> None:
    r = await box.run(["sh", "-c", "exec head -c 2000000 /dev/zero > /box/f"], limits=Limits(file_size=1 << 20))
    assert r.status is Status.SG and r.signal == signal.SIGXFSZ and "size limit of 1 MiB" in r.message
    r = await box.run(["python3", "-c", "[open('/dev/null') for _ in range(50)]"], limits=Limits(open_files=20))
    assert r.status is Status.RE and b"Too many open files" in r.stderr
    r = await box.run(["sh", "-c", "ulimit -c; ulimit -s"], limits=Limits(stack=4 << 20))
    assert r.stdout.split() == [b"0", b"4096"]


async def test_stdin_bytes_and_large_output(box: Sandbox) -> None:
    data = bytes(range(256)) * 4096
    r = await box.run(["cat"], stdin=data)
    assert r.stdout == data
    ignored = await box.run(["true"], stdin=data * 4)
    assert ignored.status is Status.OK
    again = await box.run(["sh", "-c", "head -c 3; echo; cat /dev/stdin"], stdin=b"abcdef")
    assert again.stdout == b"abc\nabcdef", "stdin data is a file: a program may reopen or reread it"


async def test_endless_output_without_an_output_limit_still_meets_the_wall_limit(box: Sandbox) -> None:
    """All of it is kept (no output limit), and the spawner still ends the run at its wall limit."""
    r = await box.run(["sh", "-c", "yes | head -c 30000000; exec yes"], limits=Limits(output=None, wall_time=0.5))
    assert r.status is Status.WLE and r.wall_time < 1.0
    assert len(r.stdout) > 30_000_000


async def test_captured_output_keeps_streams_apart_and_each_run_sees_its_own(box: Sandbox) -> None:
    """The spawner copies both pipes into the sandbox's files; each run sees only its own output."""
    big = await box.run(["sh", "-c", "head -c 300000 /dev/zero; echo err >&2; echo out"])
    assert big.stdout == bytes(300000) + b"out\n" and big.stderr == b"err\n"
    small = await box.run(["echo", "x"])
    assert (small.stdout, small.stderr) == (b"x\n", b"")
    silent = await box.run(["sh", "-c", "exec >&- 2>&-; sleep 0.05"])
    assert silent.status is Status.OK and silent.stdout == b""


async def test_exact_cpu_time_excludes_sandbox_overhead(box: Sandbox) -> None:
    """The spawner's and box init's own work is not the program's: compare with a bare run of the same."""
    bare = []
    for _ in range(5):
        pid = os.posix_spawn("/bin/true", ["true"], {})
        ru = os.wait4(pid, 0)[2]
        bare.append(ru.ru_utime + ru.ru_stime)
    boxed = [(await box.run(["/bin/true"], policy=None)).cpu_time for _ in range(5)]
    assert min(boxed) <= 2 * max(bare) + 0.001, (boxed, bare)


@pytest.mark.parametrize("sig", [signal.SIGXCPU, signal.SIGXFSZ])
async def test_a_limit_signal_the_program_raises_itself_is_sg_not_a_limit(box: Sandbox, sig: int) -> None:
    r = await box.run(["sh", "-c", f"kill -{signal.Signals(sig).name[3:]} $$"],
                      limits=Limits(cpu_time=1.0, file_size=1 << 20))
    assert (r.status, r.signal) == (Status.SG, sig), r.message
