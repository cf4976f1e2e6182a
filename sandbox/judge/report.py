"""What judging gives back: a verdict per test, the overall verdict, the JSON record and the table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..run.result import Result

VERDICTS = ("OK", "WA", "PE", "CE", "TLE", "WLE", "MLE", "OLE", "RE", "SV", "IE")
"""The judge's vocabulary (the run record's SG is RE here, the signal in the message)."""


@dataclass
class Verdict:
    name: str
    status: str
    result: Result | None = None
    message: str = ""
    points: float | None = None  # what a testlib checker gave (exit 7, "points X")

    def record(self) -> dict[str, Any]:
        r = self.result
        out = {"name": self.name, "status": self.status, "cpu_time": r.cpu_time if r else 0.0,
               "wall_time": r.wall_time if r else 0.0, "memory_peak": r.memory_peak if r else 0,
               "message": self.message or (r.message if r else "")}
        if self.points is not None:
            out["points"] = self.points
        return out


@dataclass
class Report:
    language: str
    compile: Result | None = None
    tests: list[Verdict] = field(default_factory=list)
    compile_error: str = ""
    skipped: int = 0  # tests not run after the first failure (--stop-on-first-failure)

    @property
    def verdict(self) -> str:
        if self.compile_error:
            return "CE"
        return next((t.status for t in self.tests if t.status != "OK"), "OK")

    def record(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "language": self.language,
                "compile": self.compile.record() if self.compile else None,
                "compile_error": self.compile_error, "tests": [t.record() for t in self.tests],
                "skipped": self.skipped}


def table(record: dict[str, Any]) -> str:
    """The verdict table of a report's record (`Report.record()`, as `sbx judge --json` and the service give it)."""
    lines = []
    if record["compile_error"]:
        lines.append("compilation failed:\n" + record["compile_error"].rstrip())
    tests = record["tests"]
    if tests:
        width = max(12, *(len(t["name"]) for t in tests))
        lines.append(f"{'test':<{width}} {'status':<6} {'cpu (s)':>8} {'memory':>10}  message")
        for t in tests:
            message = t["message"] if t["status"] != "OK" else ""
            if "points" in t:
                message = f"{t['points']:g} points" + (f": {message}" if message else "")
            lines.append(f"{t['name']:<{width}} {t['status']:<6} {t['cpu_time']:>8.3f} "
                         f"{t['memory_peak'] // 1024:>6} KiB  {message}".rstrip())
    if record["skipped"]:
        lines.append(f"({record['skipped']} more tests not run: --stop-on-first-failure)")
    lines.append(f"verdict: {record['verdict']}")
    return "\n".join(lines)
