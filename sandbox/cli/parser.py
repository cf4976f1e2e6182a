"""The parser every `sbx` command is built with: one-line errors, no abbreviated options, near misses named."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn

from ..errors import ConfigError


class _Formatter(argparse.HelpFormatter):
    """argparse's, with the terminal's width read through os: argparse makes a formatter for every option it
    adds (to check its metavar), and the first one imports shutil for the width, 2 ms of every start."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        if width is None:
            width = _columns() - 2  # (as argparse does)
        super().__init__(prog, indent_increment, max_help_position, width)


def _columns() -> int:
    """$COLUMNS, else the terminal's width, else 80 (as shutil.get_terminal_size)."""
    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    try:
        return os.get_terminal_size(1).columns
    except OSError:  # not a terminal
        return 80


class Parser(argparse.ArgumentParser):
    """One-line errors (exit 125), and no abbreviated options.

    argparse would take `--tim` as `--time`; a script relying on that breaks
    the day another option starts the same way, so a near miss is refused
    with the nearest real name suggested instead.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.option_names: list[str] = []
        super().__init__(*args, allow_abbrev=False, formatter_class=_Formatter, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.option_names += action.option_strings
        return action

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        """Each (sub)command refuses what it does not know itself, so the suggestion comes from its own options."""
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            word = extras[0]
            if not word.startswith("-"):
                raise ConfigError(f"unrecognized argument {word}")
            raise ConfigError(unrecognized("option", word.partition("=")[0], self.option_names))
        return parsed, extras

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        # the only choices here are subcommands: name the nearest one
        if action.choices is not None and value not in action.choices:
            raise ConfigError(unrecognized("command", value, list(action.choices)))
        super()._check_value(action, value)


def unrecognized(kind: str, word: str, known: Iterable[str]) -> str:
    """The refusal, with the nearest known name; compared without dashes, which every option shares."""
    import difflib  # (only on this error)

    names = {name.lstrip("-"): name for name in known}
    near = difflib.get_close_matches(word.lstrip("-"), names, n=1)
    return f"unrecognized {kind} {word}" + (f" (did you mean {names[near[0]]}?)" if near else "")


def no_command(choices: Iterable[str]) -> Callable[[argparse.Namespace], NoReturn]:
    """A missing subcommand is checked after parsing (not by argparse's `required`), so that in
    `sbx --verison` the unknown option is what gets reported, with its suggestion."""
    def fail(args: argparse.Namespace) -> NoReturn:
        raise ConfigError(f"no command given (one of {', '.join(choices)})")
    return fail
