"""The judge's languages: the shipped `languages.toml`, or a table of the user's own in its place.

A table is the whole set: one given by flag, else one in the user's config
directory, else the shipped one.  A language that names a key sbx does not
know, or lacks one it needs, is refused with the file and the key, so a typo
never silently changes how solutions are built.
"""

from __future__ import annotations

import importlib.resources
import os
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..seccomp.policy import resolve

MiB = 2**20
_REQUIRED = {"title", "extensions", "source", "run", "run_policy", "processes", "version"}
_OPTIONAL = {"compile", "artifacts", "compile_policy", "env", "out_of_memory"}


@dataclass(frozen=True)
class Language:
    name: str
    title: str
    extensions: tuple[str, ...]
    source: str
    compile: tuple[str, ...] | None
    artifacts: tuple[str, ...]
    run: tuple[str, ...]
    compile_policy: str
    run_policy: str
    processes: int
    env: dict[str, str]
    out_of_memory: tuple[str, ...]
    version: tuple[str, ...]

    def environment(self, memory: int | None) -> dict[str, str]:
        return {k: _fill(v, memory) for k, v in self.env.items()}

    def run_argv(self, memory: int | None) -> list[str]:
        return [_fill(a, memory) for a in self.run]

    def toolchain_version(self) -> str:
        """The first line the toolchain prints about its version, or why there is none."""
        try:
            out = subprocess.run(list(self.version), capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"unavailable ({e.strerror if isinstance(e, OSError) else 'no answer in 30 s'})"
        lines = (out.stdout or out.stderr).strip().splitlines()
        return lines[0] if lines else f"unavailable (exit status {out.returncode})"


def _fill(text: str, memory: int | None) -> str:
    if memory is None:
        memory = 4096 * MiB  # no limit: what a runtime may assume, rather than no figure at all
    heap = max(memory // 2, memory - 128 * MiB)
    return text.replace("{memory_mib}", str(memory // MiB)).replace("{heap_mib}", str(heap // MiB))


def table_path(given: str | None) -> Path:
    if given:
        return Path(given)
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    mine = Path(config) / "sbx" / "languages.toml"
    return mine if mine.is_file() else Path(str(importlib.resources.files(__package__).joinpath("languages.toml")))


def load_languages(given: str | None = None) -> dict[str, Language]:
    """The languages of the table in use (see `table_path`), by name."""
    path = table_path(given)
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"--languages {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    if not table:
        raise ConfigError(f"{path}: names no language")
    return {name: _language(name, entry, path) for name, entry in table.items()}


def _language(name: str, entry: Any, path: Path) -> Language:
    where = f"{path}: [{name}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: not a table")
    missing, unknown = _REQUIRED - entry.keys(), entry.keys() - _REQUIRED - _OPTIONAL
    if missing or unknown:
        raise ConfigError(f"{where}: " + "; ".join(
            ([f"missing {', '.join(sorted(missing))}"] if missing else []) +
            ([f"unknown key {', '.join(sorted(unknown))}"] if unknown else [])))
    compile_argv = _argv(entry, "compile", where) if "compile" in entry else None
    processes = entry["processes"]
    if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
        raise ConfigError(f"{where}: processes must be a positive integer")
    env = entry.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise ConfigError(f"{where}: env must be a table of strings")
    policies = {key: entry.get(key, "compile") for key in ("compile_policy", "run_policy")}
    for key, policy in policies.items():
        try:
            resolve(policy)
        except ConfigError as e:
            raise ConfigError(f"{where}: {key}: {e}") from None
    return Language(
        name=name, title=_str(entry, "title", where), extensions=_strings(entry, "extensions", where),
        source=_file_name(_str(entry, "source", where), where), compile=compile_argv,
        artifacts=tuple(_file_name(a, where) for a in _strings(entry, "artifacts", where, [entry["source"]])),
        run=_argv(entry, "run", where), compile_policy=policies["compile_policy"], run_policy=policies["run_policy"],
        processes=processes, env=dict(env), out_of_memory=_strings(entry, "out_of_memory", where, []),
        version=_argv(entry, "version", where))


def _str(entry: dict[str, Any], key: str, where: str) -> str:
    value = entry[key]
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {key} must be a non-empty string")
    return value


def _strings(entry: dict[str, Any], key: str, where: str, default: list[str] | None = None) -> tuple[str, ...]:
    value = entry.get(key, default)
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: {key} must be a list of non-empty strings")
    return tuple(value)


def _argv(entry: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    argv = _strings(entry, key, where)
    if not argv:
        raise ConfigError(f"{where}: {key} must name a program")
    return argv


def _file_name(name: str, where: str) -> str:
    if "/" in name or name in (".", ".."):
        raise ConfigError(f"{where}: {name!r} must be a plain file name in the box's work dir")
    return name


def detect_language(languages: dict[str, Language], solution: Path, lang: str | None) -> Language:
    if lang is not None:
        if lang not in languages:
            raise ConfigError(f"--lang: unknown language {lang!r} (expected {', '.join(languages)}; "
                              "sbx judge --list-languages shows them)")
        return languages[lang]
    found = [x for x in languages.values() if solution.suffix in x.extensions]
    if not found:
        raise ConfigError(f"{solution}: cannot tell the language from {solution.suffix!r}; use --lang "
                          f"({', '.join(languages)})")
    return found[0]
