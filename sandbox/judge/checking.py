"""Whether an output is right: the default token comparison with a short diff, or a testlib checker.

Checkers follow testlib's conventions: `checker INPUT OUTPUT ANSWER`, exit
0 OK, 1 WA, 2 PE, 3 a checker failure (IE), 4 trailing garbage (PE), 7
partial points ("points X" on its output), 8 the output ended early (WA);
anything else, or a checker that does not end normally, is IE.  A checker
runs in a box of its own that holds only it and its three files: a
solution's box may hold anything it wrote, so a checker never runs there.
"""

from __future__ import annotations

import itertools
import re

from ..api import Sandbox
from ..limits import Limits
from ..result import Status

CHECKER_POLICY = "default"  # a checker may be a script
CHECKER_LIMITS = Limits(cpu_time=10.0, wall_time=20.0)
CHECKER_ENV = {"PYTHONSAFEPATH": "1", "PYTHONNOUSERSITE": "1"}  # a Python checker imports nothing from its dir
TESTLIB_EXIT = {0: "OK", 1: "WA", 2: "PE", 4: "PE", 7: "WA", 8: "WA"}
_POINTS = re.compile(rb"^\s*points\s+([-+0-9.eE]+)", re.MULTILINE)
_SHOWN = 40  # characters of each side of a differing line


def compare(output: bytes, answer: bytes) -> tuple[str, str]:
    """Token by token, whitespace aside: ("OK", "") or ("WA", the first differing line, expected and got)."""
    if output.split() == answer.split():
        return "OK", ""
    got, expected = _lines(output), _lines(answer)
    # the token lists differ, so some line does (a missing line counts as None)
    i = next(i for i in itertools.count() if _tokens(got, i) != _tokens(expected, i))
    return "WA", f"line {i + 1}: expected {_show(expected, i)}, got {_show(got, i)}"


def _tokens(lines: list[bytes], i: int) -> list[bytes] | None:
    return lines[i].split() if i < len(lines) else None


def _lines(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _show(lines: list[bytes], i: int) -> str:
    if i >= len(lines):
        return "end of output"
    text = lines[i].decode(errors="replace").strip()
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")


async def check(box: Sandbox, given: bytes, output: bytes, answer: bytes, checker: bytes
                ) -> tuple[str, str, float | None]:
    """The checker's verdict, message and points, in a box that holds only the checker and its three files."""
    for name, data, mode in (("checker", checker, 0o755), ("input", given, 0o644), ("output", output, 0o644),
                             ("answer", answer, 0o644)):
        await box.write_file(name, data, mode)
    r = await box.run(["./checker", "input", "output", "answer"], limits=CHECKER_LIMITS)
    said = (r.stderr or r.stdout)
    comment = said.decode(errors="replace").strip()[:200]
    code = r.exit_code or 0
    if r.status in (Status.OK, Status.RE) and code in TESTLIB_EXIT:
        points = None
        if code == 7:
            found = _POINTS.search(said)
            if found is None:
                return "IE", f"checker gave points (exit 7) but no 'points X' line: {comment}", None
            points = float(found.group(1))
        return TESTLIB_EXIT[code], comment, points
    why = f"exit status {r.exit_code}" if r.status is Status.RE else f"{r.status.value} {r.message}"
    return "IE", f"checker failed ({why})" + (f": {comment}" if comment else ""), None
