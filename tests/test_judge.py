"""`sbx judge` end to end, on the shipped example problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandbox.judge import find_tests

from helpers import sbx

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sum"
PROBLEMS = Path(__file__).resolve().parent.parent / "examples" / "problems"
VERDICTS = Path(__file__).resolve().parent.parent / "examples" / "verdicts"
LANGS = "c, cpp, py, java, go, rust, js"


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
    ("re.c", "WA", ["WA", "RE", "RE"]),
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
    (["judge", "x.rb", "--tests", str(EXAMPLE / "tests")],
     f"sbx: x.rb: cannot tell the language from '.rb'; use --lang ({LANGS})"),
    (["judge", "x.c", "--tests", str(EXAMPLE / "tests"), "--lang", "cobol"],
     f"sbx: --lang: unknown language 'cobol' (expected {LANGS}; sbx judge --list-languages shows them)"),
    (["judge", "x.c"], "sbx: sbx judge: give SOLUTION and one of --tests DIR or --problem DIR (or --list-languages)"),
    (["judge", "x.c", "--problem", "/nonexistent"], "sbx: --problem /nonexistent: not a directory"),
    (["judge", "x.c", "--tests", str(EXAMPLE / "tests"), "--jobs", "0"], "sbx: --jobs: '0' must be at least 1"),
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


@pytest.mark.parametrize("solution", ["sol.c", "sol.cpp", "sol.py", "Main.java", "sol.go", "sol.rs", "sol.js"])
def test_every_verdict_in_every_shipped_language(solution: str) -> None:
    """Under the shipped policies and the language table's limits, two threads included (examples/verdicts)."""
    r = sbx("judge", str(VERDICTS / "solutions" / solution), "--tests", str(VERDICTS / "tests"), "--time", "1",
            "--memory", "256M", "--json", timeout=300)
    report = json.loads(r.stdout)
    assert report["compile_error"] == "", report["compile_error"]
    got = {t["name"]: t["status"] for t in report["tests"]}
    assert got == {"ok": "OK", "wa": "WA", "tle": "TLE", "mle": "MLE", "re": "RE", "threads": "OK"}, report


def test_list_languages_names_each_toolchain_version() -> None:
    r = sbx("judge", "--list-languages")
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line for line in r.stdout.decode().splitlines()}
    assert list(rows) == LANGS.split(", ")
    assert "gcc" in rows["c"] and "openjdk" in rows["java"] and "go version go1" in rows["go"]
    assert "rustc 1." in rows["rust"] and rows["js"].rstrip().split()[-1].startswith("v")
    assert "unavailable" not in r.stdout.decode()


def test_a_language_table_of_ones_own(tmp_path: Path) -> None:
    table = tmp_path / "languages.toml"
    table.write_text('[sh]\ntitle = "POSIX shell"\nextensions = [".sh"]\nsource = "sol.sh"\n'
                     'run = ["sh", "sol.sh"]\nrun_policy = "default"\nprocesses = 8\nversion = ["sh", "-c", "echo dash"]\n')
    solution = tmp_path / "sum.sh"
    solution.write_text("read n; read a b c; echo $((a + b + c))\n")
    r = sbx("judge", str(solution), "--tests", str(EXAMPLE / "tests"), "--languages", str(table), "--json")
    report = json.loads(r.stdout)
    assert report["language"] == "sh" and [t["status"] for t in report["tests"]][:1] == ["OK"], r.stderr
    table.write_text('[sh]\ntitle = "x"\nextensions = [".sh"]\nsource = "../sol.sh"\nrun = ["sh"]\n'
                     'run_policy = "default"\nprocesses = 8\nversion = ["sh"]\ncomplie = ["x"]\n')
    bad = sbx("judge", str(solution), "--tests", str(EXAMPLE / "tests"), "--languages", str(table))
    assert bad.returncode == 125 and bad.stderr.decode() == f"sbx: {table}: [sh]: unknown key complie\n"


def test_wrong_answer_shows_the_first_differing_line() -> None:
    r = sbx("judge", str(EXAMPLE / "solutions" / "wa.c"), "--tests", str(EXAMPLE / "tests"))
    row = r.stdout.decode().splitlines()[3]
    assert row.split()[:2] == ["3", "WA"] and row.endswith("line 1: expected '19999900000', got '-1474936480'")


def test_stop_on_first_failure_runs_nothing_after_it() -> None:
    code, report = judge("re.c", "--stop-on-first-failure", "--jobs", "1")
    assert (code, report["verdict"], [t["status"] for t in report["tests"]], report["skipped"]) == (1, "WA", ["WA"], 2)
    code, report = judge("ok.c", "--stop-on-first-failure", "--jobs", "3")
    assert (code, report["verdict"], report["skipped"]) == (0, "OK", 0)


def test_judge_limits_from_the_command_line(tmp_path: Path) -> None:
    """--wall-time, --pids and --output reach the runs (a sleeping solution, a forking one, a chatty one)."""
    sleeper = tmp_path / "sleep.py"
    sleeper.write_text("import time\ntime.sleep(5)\n")
    code, report = judge(str(sleeper), "--wall-time", "1")
    assert report["verdict"] == "WLE" and report["tests"][0]["wall_time"] < 3
    chatty = tmp_path / "chatty.py"
    chatty.write_text("import sys\nsys.stdout.write('x' * 200000)\n")
    code, report = judge(str(chatty), "--output", "64K")
    assert report["verdict"] == "OLE"
    threads = tmp_path / "threads.py"
    threads.write_text("import threading\nb = threading.Barrier(8, timeout=20)\n"  # all 8 alive at once
                       "ts = [threading.Thread(target=b.wait, daemon=True) for _ in range(8)]\n"
                       "[t.start() for t in ts]\n[t.join() for t in ts]\nprint(6)\n")
    assert judge(str(threads))[1]["tests"][0]["status"] == "OK"
    code, report = judge(str(threads), "--pids", "2")
    assert {t["status"] for t in report["tests"]} == {"RE"}, report


def _package(solution: str, problem: str, *extra: str) -> dict:
    r = sbx("judge", str(PROBLEMS / problem / "solutions" / solution), "--problem", str(PROBLEMS / problem), "--json",
            *extra, timeout=120)
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def test_a_problem_package_with_an_output_validator_and_test_groups() -> None:
    ok = _package("ok.py", "average")
    assert [(t["name"], t["status"]) for t in ok["tests"]] == [
        ("sample/1", "OK"), ("secret/3", "OK"), ("secret/group1/2", "OK")]
    wa = _package("wa.c", "average")
    assert [(t["status"], t["message"]) for t in wa["tests"]] == [
        ("WA", "expected 1.5, got 1.0"), ("OK", "exited normally"), ("WA", "expected 1.333333333, got 1.0")]


def test_an_interactive_problem_package() -> None:
    assert [t["status"] for t in _package("ok.cpp", "guess")["tests"]] == ["OK"] * 4
    wa = _package("wa.py", "guess")
    assert {(t["status"], t["message"]) for t in wa["tests"]} == {("WA", "more than 10 guesses")}


def test_the_packages_limits_apply_unless_given(tmp_path: Path) -> None:
    (tmp_path / "data" / "secret").mkdir(parents=True)
    (tmp_path / "data" / "secret" / "1.in").write_text("tle\n")
    (tmp_path / "data" / "secret" / "1.ans").write_text("42\n")
    (tmp_path / "problem.yaml").write_text("name: spin\nlimits:\n  time_limit: 0.3\n  memory: 64\n")
    r = sbx("judge", str(VERDICTS / "solutions" / "sol.c"), "--problem", str(tmp_path), "--json")
    [test] = json.loads(r.stdout)["tests"]
    assert test["status"] == "TLE" and 0.3 <= test["cpu_time"] < 0.5, test
    r = sbx("judge", str(VERDICTS / "solutions" / "sol.c"), "--problem", str(tmp_path), "--json", "--time", "0.6")
    assert 0.6 <= json.loads(r.stdout)["tests"][0]["cpu_time"] < 0.8


@pytest.mark.parametrize("files,message", [
    ({"problem.yaml": "name: [unclosed\n"}, "problem.yaml: not valid YAML"),
    ({"problem.yaml": "validation: magic\n"}, "problem.yaml: validation 'magic' is not one of default, custom"),
    ({"problem.yaml": "limits:\n  time_limit: -1\n"}, "problem.yaml: limits.time_limit must be a positive number"),
    ({"data/secret/1.in": "1\n"}, "data/secret/1.in has no 1.ans"),
    ({"problem.yaml": "validation: custom\n", "data/secret/1.in": "", "data/secret/1.ans": "",
      "output_validators/v/a.py": "", "output_validators/v/b.py": ""},
     "output_validators/v must hold one source file (it holds 2)"),
    ({"problem.yaml": "validation: custom\n", "data/secret/1.in": "", "data/secret/1.ans": "",
      "output_validators/v/v.py": "def broken(:\n"}, "the problem's output validator does not compile"),
])
def test_a_bad_problem_package_is_one_line(tmp_path: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    r = sbx("judge", str(EXAMPLE / "solutions" / "ok.c"), "--problem", str(tmp_path))
    assert r.returncode == 125 and r.stderr.count(b"\n") == 1 and message.encode() in r.stderr, r.stderr


def test_a_testlib_interactor(tmp_path: Path) -> None:
    interactor = tmp_path / "interactor.py"
    interactor.write_text("#!/usr/bin/env python3\nimport sys\nsecret = int(open(sys.argv[1]).read())\n"
                          "for _ in range(10):\n    g = int(input())\n"
                          "    if g == secret:\n        print('correct', flush=True)\n        sys.exit(0)\n"
                          "    print('lower' if secret < g else 'higher', flush=True)\n"
                          "print('too many guesses', file=sys.stderr)\nsys.exit(1)\n")
    interactor.chmod(0o755)
    tests = PROBLEMS / "guess" / "data" / "secret"
    for solution, statuses in (("ok.cpp", ["OK"] * 3), ("wa.py", ["WA"] * 3)):
        r = sbx("judge", str(PROBLEMS / "guess" / "solutions" / solution), "--tests", str(tests), "--interactor",
                str(interactor), "--json", timeout=120)
        report = json.loads(r.stdout)
        assert [t["status"] for t in report["tests"]] == statuses, report
    assert report["tests"][0]["message"] == "too many guesses"


def test_testlib_points_are_kept(tmp_path: Path) -> None:
    checker = tmp_path / "checker.sh"
    checker.write_text("#!/bin/sh\necho 'points 0.25 close enough' >&2\nexit 7\n")
    checker.chmod(0o755)
    code, report = judge("ok.c", "--checker", str(checker))
    assert [(t["status"], t["points"]) for t in report["tests"]] == [("WA", 0.25)] * 3
    checker.write_text("#!/bin/sh\nexit 7\n")
    code, report = judge("ok.c", "--checker", str(checker))
    assert {t["status"] for t in report["tests"]} == {"IE"}
