"""A test: an input and the answer to it; `--tests DIR` as NAME.in with NAME.out or NAME.ans."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError


@dataclass(frozen=True)
class TestCase:
    name: str
    input: Path
    answer: Path


def natural_key(name: str) -> list[Any]:
    """Numbers in a test's name sort as numbers: 2 before 10."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def find_tests(directory: Path) -> list[TestCase]:
    if not directory.is_dir():
        raise ConfigError(f"--tests {directory}: not a directory")
    tests = []
    for inp in directory.glob("*.in"):
        answer = next((p for p in (inp.with_suffix(".out"), inp.with_suffix(".ans")) if p.is_file()), None)
        if answer is None:
            raise ConfigError(f"--tests {directory}: {inp.name} has no {inp.stem}.out or {inp.stem}.ans")
        tests.append(TestCase(inp.stem, inp, answer))
    if not tests:
        raise ConfigError(f"--tests {directory}: no NAME.in files")
    return sorted(tests, key=lambda t: natural_key(t.name))
