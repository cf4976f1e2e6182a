"""The README's worked examples, run as a reader would copy them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) == 1, "the README has one Python example"
    return blocks[0]


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])  # the README says either works
async def test_the_judge_backend_example_gives_verdicts() -> None:
    namespace: dict = {}
    exec(compile(_python_example(), "README.md", "exec"), namespace)
    judge = namespace["judge"]
    good = b'#include <stdio.h>\nint main(void){int a,b;scanf("%d %d",&a,&b);printf("%d\\n",a+b);}\n'
    tests = [(b"1 2\n", b"3\n"), (b"5 5\n", b"10\n")]
    assert await judge(good, tests) == ["OK", "OK"]
    wrong = good.replace(b"a+b", b"a-b")
    assert await judge(wrong, tests) == ["WA", "WA"]
    assert await judge(b"int main(void) { return }\n", tests) == ["CE"]
    spin = b"int main(void){for(;;);}\n"
    assert await judge(spin, tests[:1]) == ["TLE"]


def test_the_shell_session_prints_what_the_readme_shows(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    session = re.search(r"\*\*At a shell\.\*\*.*?```\n(.*?)```", README.read_text(), re.S)
    assert session is not None
    (tmp_path / "hello.c").write_text('#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n')
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    steps = re.findall(r"^\$ (.*)\n((?:(?!\$ ).*\n)*)", session.group(1), re.M)
    assert len(steps) == 5
    for command, shown in steps:
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, timeout=120)
        assert (done.stdout + done.stderr).decode() == shown, command
