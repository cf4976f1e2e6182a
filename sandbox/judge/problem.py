"""A Kattis/DOMjudge problem package: `problem.yaml`, `data/sample` and `data/secret`, an output validator.

What is read:
- `problem.yaml`: `name`; `validation` (`default`, `custom`, or `custom
  interactive`); `validator_flags`; `limits` with `time_limit` (seconds),
  `memory` and `output` (MiB).  DOMjudge's `.timelimit` file gives the time
  limit too.
- `data/sample` then `data/secret`, each searched in depth (test groups are
  subdirectories): `NAME.in` with `NAME.ans`, in natural order of path.
- `output_validators/`: one directory (or the directory itself) holding one
  source file in a language of the table; it is compiled in a box like a
  solution.  It follows the package format's convention, not testlib's:
  `validator INPUT ANSWER FEEDBACK_DIR [FLAGS] < OUTPUT`, exit 42 accepted,
  43 wrong answer, anything else a judge error (IE); an interactive one talks
  to the solution on its stdin and stdout instead of reading its output.
  `FEEDBACK_DIR/judgemessage.txt` becomes the test's message.
A package is read-only input from a problem setter: malformed YAML, a missing
answer or an unknown language is one clear line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .languages import Language, detect_language
from .testcases import TestCase, natural_key

MiB = 2**20


@dataclass(frozen=True)
class Validator:
    language: Language
    source: bytes
    flags: tuple[str, ...]
    interactive: bool


@dataclass(frozen=True)
class Problem:
    name: str
    tests: list[TestCase]
    time_limit: float | None
    memory: int | None
    output: int | None
    validator: Validator | None


def read_problem(directory: Path, languages: dict[str, Language]) -> Problem:
    if not directory.is_dir():
        raise ConfigError(f"--problem {directory}: not a directory")
    meta = _yaml(directory / "problem.yaml")
    limits = meta.get("limits") or {}
    if not isinstance(limits, dict):
        raise ConfigError(f"{directory / 'problem.yaml'}: limits must be a mapping")
    validation = str(meta.get("validation", "default")).split()
    if validation[:1] not in (["default"], ["custom"]) or not set(validation[1:]) <= {"interactive", "score"}:
        raise ConfigError(f"{directory / 'problem.yaml'}: validation {meta.get('validation')!r} is not one of "
                          "default, custom, custom interactive")
    flags = meta.get("validator_flags", "")
    validator = None
    if validation[0] == "custom":
        validator = _validator(directory, languages, tuple(str(flags).split()), "interactive" in validation)
    time_limit = _number(limits, "time_limit", directory) or _timelimit_file(directory)
    memory, output = _mib(limits, "memory", directory), _mib(limits, "output", directory)
    tests = [t for part in ("sample", "secret") for t in _tests(directory / "data" / part, directory)]
    if not tests:
        raise ConfigError(f"--problem {directory}: no tests in data/sample or data/secret")
    return Problem(name=str(meta.get("name", directory.name)), tests=tests, time_limit=time_limit, memory=memory,
                   output=output, validator=validator)


def _yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a mapping")
    return data


def _number(limits: dict[str, Any], key: str, directory: Path) -> float | None:
    value = limits.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{directory / 'problem.yaml'}: limits.{key} must be a positive number")
    return float(value)


def _mib(limits: dict[str, Any], key: str, directory: Path) -> int | None:
    value = _number(limits, key, directory)
    return None if value is None else int(value * MiB)


def _timelimit_file(directory: Path) -> float | None:
    path = directory / ".timelimit"
    if not path.is_file():
        return None
    try:
        value = float(path.read_text().strip())
    except ValueError:
        raise ConfigError(f"{path}: not a number of seconds") from None
    if value <= 0:
        raise ConfigError(f"{path}: must be positive")
    return value


def _tests(part: Path, directory: Path) -> list[TestCase]:
    if not part.is_dir():
        return []
    tests = []
    for inp in sorted(part.rglob("*.in"), key=lambda p: natural_key(str(p.relative_to(part)))):
        answer = inp.with_suffix(".ans")
        if not answer.is_file():
            raise ConfigError(f"--problem {directory}: {inp.relative_to(directory)} has no {answer.name}")
        tests.append(TestCase(str(inp.relative_to(directory / "data").with_suffix("")), inp, answer))
    return tests


def _validator(directory: Path, languages: dict[str, Language], flags: tuple[str, ...],
               interactive: bool) -> Validator:
    root = directory / "output_validators"
    if not root.is_dir():
        raise ConfigError(f"--problem {directory}: validation is custom but there is no output_validators/")
    subdirs = [p for p in root.iterdir() if p.is_dir()]
    where = subdirs[0] if len(subdirs) == 1 else root
    sources = [p for p in where.iterdir() if p.is_file()]
    if len(sources) != 1:
        raise ConfigError(f"--problem {directory}: {where.relative_to(directory)} must hold one source file "
                          f"(it holds {len(sources)})")
    [source] = sources
    return Validator(detect_language(languages, source, None), source.read_bytes(), flags, interactive)
