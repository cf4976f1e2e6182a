"""`sbx judge` end to end, on the shipped example problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandbox.judge import find_tests

from helpers import sbx

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sum"


def judge(solution: str, *extra: str) -> tuple[int, dict]:
    r = sbx("judge", str(EXAMPLE / "solutions" / solution), "--tests", str(EXAMPLE / "tests"), "--memory", "64M",
            "--json", *extra, timeout=120)
    return r.returncode, json.loads(r.stdout)


@pytest.mark.parametrize("solution,verdict,statuses", [
    ("ok.c", "OK", ["OK", "OK", "OK"]),
    ("ok.py", "OK", ["OK", "OK", "OK"]),
    ("wa.c", "WA", ["OK", "OK", "WA"]),
    ("tle.c", "TLE", ["OK", "OK", "TLE"]),
    ("mle.c", "MLE", ["MLE", "MLE", "MLE"]),
    ("re.c", "WA", ["WA", "SG", "SG"]),
    ("sv.c", "SV", ["SV", "SV", "SV"]),
])
def test_verdicts(solution: str, verdict: str, statuses: list[str]) -> None:
    code, report = judge(solution)
    assert report["verdict"] == verdict
    assert [t["status"] for t in report["tests"]] == statuses
    assert [t["name"] for t in report["tests"]] == ["1", "2", "3"]
    assert code == (0 if verdict == "OK" else 1)
    for t in report["tests"]:
        assert set(t) == {"name", "status", "cpu_time", "wall_time", "memory_peak", "message"}


def test_compile_error() -> None:
    code, report = judge("ce.c")
    assert (code, report["verdict"], report["tests"]) == (1, "CE", [])
    assert report["compile"]["status"] == "RE"


def test_custom_checker(tmp_path: Path) -> None:
    checker = tmp_path / "checker.sh"
    checker.write_text("#!/bin/sh\n# accepts anything with as many lines as the answer\n"
                       "[ $(wc -l < \"$2\") = $(wc -l < \"$3\") ] || { echo 'line count' >&2; exit 1; }\n")
    checker.chmod(0o755)
    code, report = judge("wa.c", "--checker", str(checker))
    assert (code, report["verdict"]) == (0, "OK"), "the checker accepts a wrong sum"


def test_natural_order_and_ans_files(tmp_path: Path) -> None:
    for name in ("10", "2", "1"):
        (tmp_path / f"{name}.in").write_text("1\n5\n")
        (tmp_path / f"{name}.ans").write_text("5\n")
    assert [t.name for t in find_tests(tmp_path)] == ["1", "2", "10"]


@pytest.mark.parametrize("args,message", [
    (["judge", "x.c", "--tests", "/nonexistent"], "sbx: --tests /nonexistent: not a directory"),
    (["judge", "x.rb", "--tests", str(EXAMPLE / "tests")], "sbx: x.rb: cannot tell the language from '.rb'; use --lang"),
    (["judge", "x.c", "--tests", str(EXAMPLE / "tests"), "--lang", "cobol"],
     "sbx: --lang: unknown language 'cobol' (expected c, cpp, py)"),
    (["judge", "/nonexistent.c", "--tests", str(EXAMPLE / "tests")], "sbx: /nonexistent.c: No such file or directory"),
])
def test_bad_input(args: list[str], message: str) -> None:
    r = sbx(*args)
    assert r.returncode == 125
    assert r.stderr.decode().splitlines() == [message]


def test_sv_names_the_syscall() -> None:
    _, report = judge("sv.c")
    assert report["tests"][0]["message"] == "SV: fork" or report["tests"][0]["message"].startswith("SV: clone")


# --- a solution cannot bias or break its judging ------------------------------------------------------


def _problem(tmp_path: Path) -> Path:
    tests = tmp_path / "tests"
    tests.mkdir()
    for name, (given, answer) in {"1": ("1 2\n", "3\n"), "2": ("5 5\n", "10\n")}.items():
        (tests / f"{name}.in").write_text(given)
        (tests / f"{name}.out").write_text(answer)
    return tests


def _judge_source(tmp_path: Path, name: str, source: str, *extra: str) -> dict:
    solution = tmp_path / name
    solution.write_text(source)
    r = sbx("judge", str(solution), "--tests", str(_problem(tmp_path)), "--json", *extra, timeout=180)
    assert r.stdout, r.stderr
    return json.loads(r.stdout)


def test_a_solution_cannot_plant_code_for_a_python_checker(tmp_path: Path) -> None:
    """The solution writes a module beside where the checker runs; the checker must not import it."""
    checker = tmp_path / "checker.py"
    checker.write_text("#!/usr/bin/env python3\nimport sys\n"
                       "try:\n    import verdict_helper  # an optional helper, as checkers have\n"
                       "except ImportError:\n    pass\n"
                       "ok = open(sys.argv[2]).read().split() == open(sys.argv[3]).read().split()\n"
                       "sys.exit(0 if ok else 1)\n")
    checker.chmod(0o755)
    planted = ("import os\n"
               "for d in ('/box', '/tmp', '/dev/shm'):\n"
               "    try:\n"
               "        open(os.path.join(d, 'verdict_helper.py'), 'w').write('import sys; sys.exit(0)\\n')\n"
               "    except OSError: pass\n"
               "print(42)\n")
    report = _judge_source(tmp_path, "sol.py", planted, "--checker", str(checker))
    assert [t["status"] for t in report["tests"]] == ["WA", "WA"], report


def test_a_directory_named_like_the_checker_files_does_not_abort_judging(tmp_path: Path) -> None:
    checker = tmp_path / "checker.sh"
    checker.write_text("#!/bin/sh\ncmp -s \"$2\" \"$3\" || exit 1\n")
    checker.chmod(0o755)
    hostile = "import os\nfor n in ('output', 'input', 'answer', 'checker'):\n    os.mkdir('/box/' + n)\nprint(3)\n"
    report = _judge_source(tmp_path, "sol.py", hostile, "--checker", str(checker))
    assert [t["status"] for t in report["tests"]] == ["OK", "WA"], report


@pytest.mark.parametrize("code,status", [(0, "OK"), (1, "WA"), (2, "PE"), (3, "IE"), (7, "IE")])
def test_checker_exit_codes_follow_testlib(tmp_path: Path, code: int, status: str) -> None:
    checker = tmp_path / "checker.sh"
    checker.write_text(f"#!/bin/sh\necho 'said by the checker' >&2\nexit {code}\n")
    checker.chmod(0o755)
    report = _judge_source(tmp_path, "sol.py", "print(input().split()[0])\n", "--checker", str(checker))
    assert [t["status"] for t in report["tests"]] == [status, status]
    assert "said by the checker" in report["tests"][0]["message"]
