"""`sbx`, the command: starts the box zygote first, then loads the command line.

Loading the command line (anyio and asyncio, the API, the policies) takes a few hundred
milliseconds on a slow machine.  A command that makes boxes needs the zygote
(zygote.py, a fresh interpreter that takes about 90 ms to boot); started
here, it boots on another core in that time instead of after it.

At the end the process leaves with `os._exit`: tearing down an interpreter
that loaded the API costs 40-80 ms here, and everything sbx made (boxes, mounts,
scratch dirs) is gone by then, removed by the command itself, never by a
finalizer.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

_MAKES_BOXES = ("run", "judge")


def main() -> NoReturn:
    if sys.argv[1:2] and sys.argv[1] in _MAKES_BOXES:
        from .zygote import Zygote
        Zygote.start()
    from .cli import main as cli_main
    status = cli_main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # a closed pipe (`sbx ... | head`): what is lost was not wanted
            pass
    os._exit(status)
