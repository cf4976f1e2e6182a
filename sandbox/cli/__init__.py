"""The command line: `main` parses the arguments and runs one command; a module per command (`run` and `check` are
in `main`).  The modules of commands other than the one given are imported, for their arguments, but each loads
what its work needs only when it runs."""

from .main import main

__all__ = ["main"]
