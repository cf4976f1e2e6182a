"""Started by real root: the program still runs as an unprivileged, subordinate host uid.

Everything else in the suite runs as an unprivileged user; this file needs real
root, and `./dev test` (as root, as CI runs it) runs it first, as root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from helpers import host_processes_matching, sbx
from sandbox.box.userns import ROOT_RANGE

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs real root: ./dev test runs this file as root")


def _has_own_range() -> bool:
    with open("/etc/subuid") as f:
        return any(line.split(":")[0] in ("root", "0") for line in f)


@pytest.mark.skipif(_has_own_range(), reason="root has an /etc/subuid range here: that is used instead")
def test_root_without_a_range_gets_a_private_one() -> None:
    r = sbx("run", "--", "sh", "-c", "cat /proc/self/uid_map; id -u")
    assert r.returncode == 0, r.stderr
    lines = [line.split() for line in r.stdout.decode().splitlines()]
    assert lines == [["0", "0", "1"], ["1", str(ROOT_RANGE[0]), str(ROOT_RANGE[1])], ["1000"]]
    check = json.loads(sbx("check", "--json").stdout)
    assert "root's private range" in check["uid_mapping"]["detail"]


def test_the_program_is_never_host_root() -> None:
    """Whatever the mapping, the program's host uid is not 0, and it has no capabilities."""
    marker = "sbx-root-probe"
    proc = subprocess.Popen([sys.executable, "-m", "sandbox", "run", "--", "bash", "-c", f"exec -a {marker} sleep 5"])
    try:
        for _ in range(200):
            found = [p for p in host_processes_matching(marker) if p.split(": ", 1)[1].startswith(marker)]
            if found:
                break
            time.sleep(0.02)
        pid = found[0].split(":")[0]
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f.read().splitlines())
        host_uid = int(status["Uid"].split()[0])
        assert host_uid != 0 and host_uid > 65535, status["Uid"]
        assert int(status["CapEff"], 16) == 0
    finally:
        proc.kill()
        proc.wait()
