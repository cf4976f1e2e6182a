"""What a seccomp policy costs a run.

Two measurements, each with and without the policy's filter, in the same
process, interleaved, medians over N rounds:

  * start-up: fork + no_new_privs + (filter load with listener, or a dup) + hand the fd over + exec
    /bin/true + wait
  * syscall-heavy: a C program making 1e6 getppid() calls (its own CPU time,
    from wait4's rusage, so fork/exec noise is excluded)

Also the one-time compilation cost and the cached load.  Prints a markdown table.

    python bench/seccomp_bench.py [--rounds 30] [--calls 1000000] [--policy strict]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from sandbox.seccomp import compiler as sbx_seccomp
from sandbox import syscalls
from sandbox.seccomp.policy import load_policy

ROOT = Path(__file__).resolve().parent.parent


def run_once(bpf: bytes | None, argv: list[str]) -> tuple[float, float]:
    """(wall seconds for fork+load+exec+wait, child CPU seconds)."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    argv_b = [os.fsencode(a) for a in argv]
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
            # the same hand-over either way, so that only the filter differs
            fd = syscalls.seccomp_set_filter(bpf, syscalls.SECCOMP_FILTER_FLAG_NEW_LISTENER) if bpf else os.dup(0)
            socket.send_fds(child, [b"L"], [fd])
            os.close(fd)
            os.execv(argv_b[0], argv_b)
        finally:
            os._exit(127)
    child.close()
    _, fds, _, _ = socket.recv_fds(parent, 4, 1)
    for fd in fds:
        os.close(fd)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    parent.close()
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        raise SystemExit(f"{argv[0]} failed under the filter: status {status}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--policy", default="strict")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XDG_CACHE_HOME"] = tmp  # measure a cold compile, not whatever is cached
        t0 = time.perf_counter()
        policy = load_policy(args.policy)
        parse = time.perf_counter() - t0
        t0 = time.perf_counter()
        compiled = sbx_seccomp.compile(policy)
        cold = time.perf_counter() - t0
        sbx_seccomp.clear_memory_cache()
        t0 = time.perf_counter()
        sbx_seccomp.compile(policy)
        disk = time.perf_counter() - t0
        t0 = time.perf_counter()
        sbx_seccomp.compile(policy)
        memory = time.perf_counter() - t0

        loop = Path(tmp) / "getppid_loop"
        subprocess.run(["gcc", "-O2", "-o", str(loop), str(ROOT / "tests/programs/getppid_loop.c")], check=True)
        true = ["/bin/true"]
        heavy = [str(loop), str(args.calls)]
        bpf = compiled.bpf
        run_once(bpf, true)  # warm up
        run_once(None, heavy)
        samples: dict[str, list[float]] = {k: [] for k in ("true_off", "true_on", "loop_off", "loop_on")}
        for i in range(args.rounds):
            order = [(None, "off"), (bpf, "on")] if i % 2 == 0 else [(bpf, "on"), (None, "off")]
            for filt, tag in order:
                samples[f"true_{tag}"].append(run_once(filt, true)[0])
            for filt, tag in order:
                samples[f"loop_{tag}"].append(run_once(filt, heavy)[1])

    med = {k: statistics.median(v) for k, v in samples.items()}
    per_call_off = med["loop_off"] / args.calls * 1e9
    per_call_on = med["loop_on"] / args.calls * 1e9
    print(f"policy `{args.policy}`: {compiled.instructions} BPF instructions; {args.rounds} rounds, medians; "
          f"{os.cpu_count()} CPUs, kernel {os.uname().release}\n")
    print("| measurement | without filter | with filter | ratio |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| fork + exec `/bin/true` + wait (wall) | {med['true_off'] * 1e3:.3f} ms | {med['true_on'] * 1e3:.3f} ms "
          f"| {med['true_on'] / med['true_off']:.2f} |")
    print(f"| {args.calls:.0e} `getppid()` calls (child CPU) | {med['loop_off'] * 1e3:.1f} ms | "
          f"{med['loop_on'] * 1e3:.1f} ms | {med['loop_on'] / med['loop_off']:.2f} |")
    print(f"| per `getppid()` call | {per_call_off:.1f} ns | {per_call_on:.1f} ns | "
          f"+{per_call_on - per_call_off:.1f} ns |")
    print(f"\nload `{args.policy}`: parse {parse * 1e3:.1f} ms (once); compile {cold * 1e3:.1f} ms cold (libseccomp), "
          f"{disk * 1e3:.2f} ms from the disk cache, {memory * 1e6:.1f} µs from memory")


if __name__ == "__main__":
    main()
