"""The judge: languages, tests, checkers and the judging loop (`sbx judge`, and the service later)."""

from .checking import compare
from .languages import Language, detect_language, load_languages
from .loop import Options, TestCase, find_tests, judge
from .report import VERDICTS, Report, Verdict, table

__all__ = ["VERDICTS", "Language", "Options", "Report", "TestCase", "Verdict", "compare", "detect_language",
           "find_tests", "judge", "load_languages", "table"]
