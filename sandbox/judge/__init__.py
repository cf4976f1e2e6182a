"""The judge: languages, tests, checkers and the judging loop (`sbx judge`, and the service later)."""

from .checking import compare
from .languages import Language, detect_language, load_languages
from .loop import Options, judge, test_limits
from .problem import Problem, Validator, read_problem
from .report import VERDICTS, Report, Verdict, table
from .testcases import TestCase, find_tests

__all__ = ["VERDICTS", "Language", "Options", "Problem", "Report", "TestCase", "Validator", "Verdict", "compare",
           "detect_language", "find_tests", "judge", "load_languages", "read_problem", "table", "test_limits"]
