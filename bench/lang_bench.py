"""The judge's languages: compile time of a trivial program, and its run under `strict` against the same run bare.

    python bench/lang_bench.py [N]    # as an unprivileged user; N runs of each (default 20)

For each shipped language: the toolchain's version, the median wall time of
compiling "hello" in a box under the language's compile policy (as `sbx
judge` does, five times), and the median wall time of running it N times in a
pooled box under its run policy with the judge's limits, interleaved with
the same command run bare from a temporary directory on the host.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from sandbox import Limits, Sandbox, SandboxPool
from sandbox.judge import load_languages
from sandbox.judge.loop import COMPILE_LIMITS

HELLO = {
    "c": '#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n',
    "cpp": '#include <iostream>\nint main() { std::cout << "hello\\n"; }\n',
    "py": 'print("hello")\n',
    "java": 'public class Main { public static void main(String[] a) { System.out.println("hello"); } }\n',
    "go": 'package main\nimport "fmt"\nfunc main() { fmt.Println("hello") }\n',
    "rust": 'fn main() { println!("hello"); }\n',
    "js": 'console.log("hello");\n',
}
MiB = 2**20


async def one(name: str, n: int) -> str:
    lang = load_languages()[name]
    memory = 256 * MiB
    env = lang.environment(memory)
    source = HELLO[name].encode()
    compile_times, files = [], {lang.source: (source, 0o644)}
    if lang.compile is not None:
        for _ in range(5):
            async with Sandbox(policy=lang.compile_policy, env=env) as box:
                await box.write_file(lang.source, source)
                t = time.perf_counter()
                r = await box.run(list(lang.compile), limits=COMPILE_LIMITS)
                compile_times.append(time.perf_counter() - t)
                assert r.status.value == "OK", r.stderr
                files = {a: (await box.read_file(a), 0o755) for a in lang.artifacts}
    limits = Limits(cpu_time=5, wall_time=15, memory=memory, pids=lang.processes)
    argv = lang.run_argv(memory)
    ours, bare = [], []
    with tempfile.TemporaryDirectory() as d:
        for a, (data, mode) in files.items():
            Path(d, a).write_bytes(data)
            os.chmod(Path(d, a), mode)
        async with SandboxPool(size=1, policy=lang.run_policy, env=env) as pool:
            for _ in range(n):
                async with pool.acquire() as box:
                    for a, (data, mode) in files.items():
                        await box.write_file(a, data, mode)
                    t = time.perf_counter()
                    r = await box.run(argv, limits=limits)
                    ours.append(time.perf_counter() - t)
                    assert r.stdout == b"hello\n", (r, r.stderr)
                t = time.perf_counter()
                subprocess.run(argv, cwd=d, env={"PATH": "/usr/bin:/bin", **env}, check=True,
                               stdout=subprocess.DEVNULL)
                bare.append(time.perf_counter() - t)
    c = f"{statistics.median(compile_times):.2f} s" if compile_times else "-"
    s, b = statistics.median(ours), statistics.median(bare)
    return (f"| {name} | {lang.toolchain_version()} | {c} | {s * 1000:.1f} ms | {b * 1000:.1f} ms | "
            f"{(s - b) * 1000:+.1f} ms ({s / b:.2f}x) |")


async def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    print("| language | toolchain | compile hello (median of 5) | run under strict | run bare | overhead |")
    print("|---|---|---:|---:|---:|---:|")
    for name in HELLO:
        if shutil.which(load_languages()[name].version[0]):
            print(await one(name, n), flush=True)


if __name__ == "__main__":
    trio.run(main)
