"""`python -m benchmarks curve-frames` (benchmarks/curve_frames.py): a short run moves
every message of every shape through a real proxy, plaintext and CURVE, and reports the
ratio per shape; a wrong shape is one line and exit 2."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from support import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def curve_frames(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks", "curve-frames", *args],
                          capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=110)


def test_every_shape_runs_in_plaintext_and_under_curve():
    run = curve_frames("-n", "2000", "--repeat", "1")
    assert run.returncode == 0, run.stderr[-2000:]
    rows = re.findall(r"^\| (2x|1x|10in1) \| ([\d,]+) \| ([\d,]+) \| ([\d.]+) \|",
                      run.stdout, re.M)
    assert [r[0] for r in rows] == ["2x", "1x", "10in1"], run.stdout
    for shape, plain, curve, ratio in rows:
        p, c = (int(x.replace(",", "")) for x in (plain, curve))
        assert p > 0 and c > 0
        assert abs(float(ratio) - c / p) < 0.006


def test_an_unknown_shape_is_one_line_and_exit_2():
    run = curve_frames("--shapes", "3x")
    assert run.returncode == 2
    assert "unknown shape 3x: choose from 2x, 1x, 10in1" in run.stderr
    assert "Traceback" not in run.stderr
