"""The async API beyond one run: cancellation, interactive pairs, output modes."""

from __future__ import annotations

import os

import pytest
import trio

from sandbox import ExecError, Limits, Relay, Sandbox, Status, run_interactive

from helpers import host_processes_matching

INTERACTOR = (
    "import sys\n"
    "for i in range(1000):\n"
    "    print(i, flush=True)\n"
    "    got = sys.stdin.readline()\n"
    "    assert int(got) == i + 1, got\n"
    "print('done', file=sys.stderr)\n"
)
SOLUTION = (
    "import sys\n"
    "for line in sys.stdin:\n"
    "    print(int(line) + 1, flush=True)\n"
)


async def test_cancelling_a_run_kills_it_and_keeps_the_box(box: Sandbox) -> None:
    marker = "1000.1357"
    with trio.move_on_after(0.3) as scope:
        await box.run(["sleep", marker])
    assert scope.cancelled_caught
    assert host_processes_matching(marker) == []
    r = await box.run(["echo", "usable"])
    assert r.stdout == b"usable\n"


async def test_interactive_pair_with_direct_pipes() -> None:
    async with Sandbox() as a, Sandbox() as b:
        sol, inter = await run_interactive(a, ["python3", "-c", SOLUTION], b, ["python3", "-c", INTERACTOR],
                                           limits_a=Limits(cpu_time=5), limits_b=Limits(cpu_time=5))
    assert inter.status is Status.OK, inter.stderr
    assert inter.stderr == b"done\n"
    assert sol.status is Status.OK, "the solution sees EOF once the interactor exits"


async def test_interactive_each_side_has_its_own_limits() -> None:
    async with Sandbox() as a, Sandbox() as b:
        sol, inter = await run_interactive(a, ["sh", "-c", "while :; do :; done"], b, ["python3", "-c", INTERACTOR],
                                           limits_a=Limits(cpu_time=0.2), limits_b=Limits(wall_time=5))
    assert sol.status is Status.TLE
    assert inter.status is Status.RE, "the interactor sees its peer vanish"


async def test_output_handed_over_or_relayed(box: Sandbox, tmp_path: object) -> None:
    r, w = os.pipe()
    try:
        res = await box.run(["echo", "direct"], stdout=w)
        os.close(w)
        w = -1
        assert os.read(r, 100) == b"direct\n"
        assert res.stdout == b""
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    r, w = os.pipe()
    try:
        res = await box.run(["sh", "-c", "yes | head -c 5000"], stdout=Relay(w), limits=Limits(output=1000))
        assert res.status is Status.OLE
        os.close(w)
        w = -1
        relayed = b""
        while chunk := os.read(r, 65536):
            relayed += chunk
        assert len(relayed) == 1000
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


async def test_errors_are_typed_not_grouped(box: Sandbox) -> None:
    with pytest.raises(ExecError) as e:
        await box.run(["/no/such"])
    assert e.value.errno == 2 and e.value.exit_status == 127
    again = await box.run(["true"])
    assert again.status is Status.OK
