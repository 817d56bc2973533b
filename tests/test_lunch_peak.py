"""The city-scale benchmarks run end to end at a small size: `python -m benchmarks city`
(phone hubs, the order service and rider positions through a real router) and
`python -m benchmarks gateway` (real WebSocket apps through a real `router gateway`).
The figures are the benchmarks' business (benchmarks/RESULTS.md); here each must finish,
lose nothing reliable, and print its tables."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from support import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def run(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], capture_output=True,
                          text=True, env=ENV, timeout=timeout, cwd=ROOT)


@pytest.mark.timeout(150)
def test_a_small_lunch_peak_loses_nothing():
    p = run("city", "--users", "600", "--riders", "400", "--merchants", "100",
            "--orders", "60", "--locations", "600", "--seconds", "7", "--settle", "15",
            timeout=140)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "Nothing reliable lost." in p.stdout
    for cls in ("ORDER", "DISPATCH", "CHAT", "LOCATION"):
        row = re.search(rf"^\| {cls} \| ([\d,]+) \|", p.stdout, re.M)
        assert row and int(row.group(1).replace(",", "")) > 0, (cls, p.stdout)
    placed = int(re.search(r"orders placed: ([\d,]+)", p.stdout).group(1).replace(",", ""))
    done = int(re.search(r"orders delivered: ([\d,]+)", p.stdout).group(1).replace(",", ""))
    assert placed > 300 and done == placed, p.stdout


@pytest.mark.timeout(150)
def test_websocket_apps_through_a_gateway_get_positions_and_orders():
    p = run("gateway", "--connections", "200", "--procs", "2", "--period", "1",
            "--order-every", "2", "--seconds", "5", timeout=140)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "200 in" in p.stdout, p.stdout
    got = re.search(r"received LOCATION \(conflated\) / ORDER \| ([\d,]+) / ([\d,]+)",
                    p.stdout)
    assert got and int(got.group(1).replace(",", "")) > 0 \
        and int(got.group(2).replace(",", "")) > 0, p.stdout
