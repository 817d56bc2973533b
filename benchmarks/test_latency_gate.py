"""The regression gate tested: ``--benchmark-compare-fail=median:10%`` fails the run when
the path really is slower, and does not when nothing changed.

    flock /work/bench.lock pytest benchmarks/test_latency_gate.py     # ~20 s

Runs part of the blocking latency suite (round trip and time to ACCEPTED, 1,000 rounds
each) three times in pytest subprocesses, with its own ``--benchmark-storage`` in a temp
dir:

1. baseline: a router with ``--fsync false`` (journal on, no fdatasync per group
   commit), saved with ``--benchmark-save``;
2. the same router settings compared against it with a loose bound (50%): passes, so
   the gate does not fail merely because it compares;
3. the router's defaults (fsync on: every group commit waits for the disk) compared
   with the documented gate, ``median:10%``: fails, exit code 1, both benchmarks named
   under "Performance has regressed".

The slowdown is a real setting of the router, not code injected into it. On this machine
fsync adds ~200 us to both operations (about 2x), far beyond the suite's run-to-run
spread (benchmarks/RESULTS.md); on a machine whose fsync is nearly free (tmpfs, a
write-back cache that lies) step 3 cannot fail, and the test says so.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from benchmarks import ROOT

pytestmark = pytest.mark.timeout(300)

SUBSET = ["benchmarks/test_latency.py", "-k", "test_round_trip or test_accepted"]
ROUNDS = {"LATENCY_ROUNDS": "1000", "LATENCY_WARMUP": "100"}


def suite(storage: str, router_args: str, *args: str) -> subprocess.CompletedProcess:
    """The subset in a pytest subprocess against a router with ``router_args``."""
    # the journal on disk: on the suites' default RAM filesystem fsync costs nothing
    env = {**os.environ, **ROUNDS, "LATENCY_ROUTER_ARGS": router_args,
           "LATENCY_DATA_DIR": "disk"}
    cmd = [sys.executable, "-m", "pytest", "-q", *SUBSET, f"--benchmark-storage=file://{storage}",
           "--benchmark-columns=min,median,iqr,rounds", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


def output(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def medians_us(text: str) -> dict[str, float]:
    """Median per benchmark from the ``Name | min | median | ...`` table (us)."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"(test_\w+)(?: \(NOW\))?\s+[\d,.]+(?: \([^)]*\))?\s+([\d,.]+)",
                     line.strip())
        if m:
            out[m.group(1)] = float(m.group(2).replace(",", ""))
    return out


def test_gate_fails_when_fsync_is_on(tmp_path):
    storage = str(tmp_path / "benchmarks")
    base = suite(storage, "--fsync false", "--benchmark-save=nofsync")
    assert base.returncode == 0, output(base)

    same = suite(storage, "--fsync false", "--benchmark-compare=0001",
                 "--benchmark-compare-fail=median:50%")
    assert same.returncode == 0, "the unchanged router failed the gate:\n" + output(same)
    assert "0001_nofsync" in same.stdout, output(same)

    slow = suite(storage, "", "--benchmark-compare=0001", "--benchmark-compare-fail=median:10%")
    text = slow.stdout + slow.stderr
    if slow.returncode == 0:
        pytest.fail("fsync on did not fail the gate; is fsync free on this filesystem "
                    f"({tmp_path})?\n" + output(slow))
    assert slow.returncode == 1, output(slow)
    assert "Performance has regressed" in text, output(slow)
    regressed = text.split("Performance has regressed", 1)[1]
    for name in ("test_round_trip", "test_accepted"):
        assert name in regressed, f"{name} not reported as regressed:\n" + output(slow)
    print(f"medians (us): fsync off {medians_us(base.stdout)}, "
          f"off again {medians_us(same.stdout)}, fsync on {medians_us(slow.stdout)}")
