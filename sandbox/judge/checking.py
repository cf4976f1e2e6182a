"""Whether an output is right: the default token comparison with a short diff, or a testlib checker.

Checkers follow testlib's conventions: `checker INPUT OUTPUT ANSWER`, exit
0 OK, 1 WA, 2 PE, 3 a checker failure (IE), 4 trailing garbage (PE), 7
partial points ("points X" on its output), 8 the output ended early (WA);
anything else, or a checker that does not end normally, is IE.  A checker
runs in a box of its own that holds only it and its three files: a
solution's box may hold anything it wrote, so a checker never runs there.
"""

from __future__ import annotations

import contextlib
import itertools
import re
from dataclasses import dataclass

from ..api import Sandbox
from ..errors import BoxFileError
from ..run.limits import Limits
from ..run.result import Result, Status

CHECKER_POLICY = "default"  # a checker may be a script
CHECKER_LIMITS = Limits(cpu_time=10.0, wall_time=20.0)
CHECKER_ENV = {"PYTHONSAFEPATH": "1", "PYTHONNOUSERSITE": "1"}  # a Python checker imports nothing from its dir
TESTLIB_EXIT = {0: "OK", 1: "WA", 2: "PE", 4: "PE", 7: "WA", 8: "WA"}
KATTIS_EXIT = {42: "OK", 43: "WA"}
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


@dataclass(frozen=True)
class JudgeProgram:
    """A checker, interactor or output validator, as it runs in its own box."""

    files: dict[str, tuple[bytes, int]]
    run: tuple[str, ...]
    convention: str  # "testlib" or "kattis"
    interactive: bool = False
    flags: tuple[str, ...] = ()  # a package's validator_flags

    def command(self) -> list[str]:
        if self.convention == "kattis":
            return [*self.run, "input", "answer", "feedback/", *self.flags]
        return [*self.run, "input", "output", *([] if self.interactive else ["answer"])]


def testlib_program(data: bytes, interactive: bool) -> JudgeProgram:
    """A host executable given with --checker or --interactor."""
    name = "interactor" if interactive else "checker"
    return JudgeProgram({name: (data, 0o755)}, (f"./{name}",), "testlib", interactive)


async def write_files(box: Sandbox, files: dict[str, tuple[bytes, int]]) -> None:
    """Files (name -> data and mode) into a box: a compiled solution's, or a judging program's."""
    for name, (data, mode) in files.items():
        await box.write_file(name, data, mode)


async def prepare(box: Sandbox, program: JudgeProgram, given: bytes, answer: bytes) -> None:
    """The program's files, the test's input and answer (and the feedback dir) in its box."""
    await write_files(box, program.files)
    await box.write_file("input", given)
    await box.write_file("answer", answer)
    if program.convention == "kattis":
        await box.write_file("feedback/judgemessage.txt", b"")


async def check(box: Sandbox, program: JudgeProgram, given: bytes, output: bytes, answer: bytes
                ) -> tuple[str, str, float | None]:
    """The verdict, message and points of a checker or validator reading a finished run's output."""
    await prepare(box, program, given, answer)
    if program.convention == "kattis":
        r = await box.run(program.command(), stdin=output, limits=CHECKER_LIMITS)
    else:
        await box.write_file("output", output)
        r = await box.run(program.command(), limits=CHECKER_LIMITS)
    return await outcome(box, program, r)


async def outcome(box: Sandbox, program: JudgeProgram, r: Result) -> tuple[str, str, float | None]:
    """What a judging program's run says, by its convention."""
    said = r.stderr or r.stdout
    if program.convention == "kattis":
        with contextlib.suppress(BoxFileError):
            said = await box.read_file("feedback/judgemessage.txt", max_size=1 << 16) or said
    comment = said.decode(errors="replace").strip()[:200]
    code = r.exit_code or 0
    table = KATTIS_EXIT if program.convention == "kattis" else TESTLIB_EXIT
    if r.status in (Status.OK, Status.RE) and code in table:
        points = None
        if code == 7 and program.convention == "testlib":
            found = _POINTS.search(said)
            if found is None:
                return "IE", f"checker gave points (exit 7) but no 'points X' line: {comment}", None
            points = float(found.group(1))
        return table[code], comment, points
    why = f"exit status {r.exit_code}" if r.status is Status.RE else f"{r.status.value} {r.message}"
    return "IE", f"{'validator' if program.convention == 'kattis' else 'checker'} failed ({why})" + (
        f": {comment}" if comment else ""), None
