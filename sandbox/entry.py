"""`sbx`, the command: the command line, left with `os._exit`.

Tearing down an interpreter that loaded the API costs 40-80 ms here, and
everything sbx made (boxes, mounts, scratch dirs) is gone by the end,
removed by the command itself, never by a finalizer.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn


def main() -> NoReturn:
    from .cli import main as cli_main
    status = cli_main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # a closed pipe (`sbx ... | head`): what is lost was not wanted
            pass
    os._exit(status)
