"""What loading a seccomp filter costs a program's start, and where: fork children that load nothing, a filter of
one instruction, a shipped policy's filter, and that filter behind an instruction that returns at once (so the
kernel's per-syscall action cache costs nothing to build: what is left is converting and JITting it).

    python bench/filter_load_bench.py [ROUNDS] [POLICY]     # as an unprivileged user; defaults 5, strict

Each round runs the four in turn (2,000 forks each); prints the medians, in microseconds per fork.
"""

from __future__ import annotations

import statistics
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from sandbox.seccomp.compiler import compile as compile_policy
from sandbox.seccomp.policy import load_policy

RETURN_ALLOW = struct.pack("<HBBI", 0x06, 0, 0, 0x7FFF0000)  # BPF_RET|BPF_K, SECCOMP_RET_ALLOW


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    policy = sys.argv[2] if len(sys.argv) > 2 else "strict"
    bpf = compile_policy(load_policy(policy)).bpf
    with tempfile.TemporaryDirectory() as d:
        exe = Path(d, "filter_load")
        subprocess.run(["gcc", "-O2", "-o", str(exe), str(Path(__file__).parent / "programs" / "filter_load.c")],
                       check=True)
        filters = {"nothing": None, "one instruction": RETURN_ALLOW, f"{policy} ({len(bpf) // 8} instructions)": bpf,
                   f"{policy} behind a first return": RETURN_ALLOW + bpf}
        paths = {}
        for i, (name, code) in enumerate(filters.items()):
            if code is not None:
                paths[name] = Path(d, f"{i}.bpf")
                paths[name].write_bytes(code)
        took: dict[str, list[float]] = {name: [] for name in filters}
        for _ in range(rounds):
            for name in filters:
                args = [str(exe), "2000", *([str(paths[name])] if name in paths else [])]
                took[name].append(float(subprocess.run(args, check=True, capture_output=True, text=True).stdout))
    print("| the child loads | µs per fork, median |\n|---|---:|")
    for name, times in took.items():
        print(f"| {name} | {statistics.median(times):.1f} |")


if __name__ == "__main__":
    main()
