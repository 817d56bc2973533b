"""`router demo` end to end, as a user runs it: a subprocess with the router, dispatch
workers and the city. It must exit 0 without a traceback, get orders to `delivered` and
`cancelled` (the summary and the router's history say so), print measured latency, and
treat its data directory as the user asked (kept, created if missing, or temporary)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
DEMO = [sys.executable, "-m", "router", "demo"]


@contextlib.contextmanager
def demo_process(*args: str) -> Iterator[subprocess.Popen]:
    """`router demo` in its own process group, text pipes; on leaving, the demo and
    everything it started are killed if still running."""
    p = subprocess.Popen([*DEMO, *args], cwd=ROOT, env=ENV, text=True, start_new_session=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield p
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()


def run_demo(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """Run `router demo` to its end; its output as text. Past ``timeout`` the demo and
    everything it started (its process group) are killed."""
    with demo_process(*args) as p:
        out, err = p.communicate(timeout=timeout)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def check_clean(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """Exit 0, no traceback anywhere, measured latency on the live lines, and orders
    delivered and cancelled; returns the summary's order counts."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{out[-4000:]}"
    assert "Traceback" not in out, out[-4000:]
    live = [ln for ln in proc.stdout.splitlines() if " | orders +" in ln]
    assert live, proc.stdout
    assert all(" order msgs e2e p" in ln for ln in live), live[:3]
    assert not any("<=" in ln for ln in live), "bucket bounds printed as measurements"
    assert re.search(r"order msgs e2e p50 [\d.]+ms p99 [\d.]+ms", proc.stdout), live[-3:]
    m = re.search(r"orders placed (\d+), delivered (\d+), cancelled (\d+), still open (\d+)",
                  proc.stdout)
    assert m, proc.stdout[-2000:]
    counts = dict(zip(("placed", "delivered", "cancelled", "open"), map(int, m.groups())))
    assert counts["delivered"] > 0 and counts["cancelled"] > 0, counts
    return counts


def check_history(stdout: str, data_dir: Path) -> None:
    """The summary names a delivered and a cancelled order; their timelines in the kept
    data dir end that way."""
    for what, final in (("delivered", "order.delivered"), ("cancelled", "order.cancelled")):
        m = re.search(rf"`router history (\d+) --data-dir [^`]+` \({what}\)", stdout)
        assert m, f"no {what} order named in:\n{stdout[-1500:]}"
        h = subprocess.run([sys.executable, "-m", "router", "history", m.group(1),
                            "--data-dir", str(data_dir)], cwd=ROOT, env=ENV,
                           capture_output=True, text=True, timeout=30)
        assert h.returncode == 0, h.stderr
        assert "order.created" in h.stdout and final in h.stdout, h.stdout


def test_short_fast_demo_runs_clean_and_keeps_a_new_data_dir(tmp_path):
    data = tmp_path / "not" / "yet"  # does not exist: the demo creates it
    proc = run_demo("--seconds", "20", "--speed", "150", "--data-dir", str(data), timeout=90)
    check_clean(proc)
    assert f"data and logs in {data} (kept)" in proc.stdout
    assert (data / "history.db").exists() and (data / "router.log").exists()
    check_history(proc.stdout, data)
    assert re.search(r"late, repeated or unknown messages ignored: ", proc.stdout)
    assert re.search(r"dispatch requests: first \d+, more \d+, retry \d+", proc.stdout)
    # the secure path: CURVE with the demo's own keys, and no party needed more rights
    # than its principal has
    log = (data / "router.log").read_text()
    assert "CURVE on every endpoint" in log and "(CURVE; keys and credentials in" in proc.stdout
    assert "FORBIDDEN" not in log and "running OPEN" not in log
    assert (data / "certs" / "router.key_secret").stat().st_mode & 0o077 == 0


def test_demo_stops_on_ctrl_c_and_removes_its_temporary_dir():
    with demo_process("--speed", "150") as p:
        banner = "".join(p.stdout.readline() for _ in range(4))  # router, metrics, web, data
        m = re.search(r"data and logs in (\S+) \(temporary, removed on exit\)", banner)
        if not m:  # the demo ended before its banner: say why
            p.kill()
            out, err = p.communicate(timeout=30)
            pytest.fail(f"no banner (exit {p.returncode}):\n{banner}{out}\n{err}")
        time.sleep(4)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0 and "Traceback" not in out + err, out + err
    assert "orders placed" in out, out
    assert not Path(m.group(1)).exists(), "the temporary data dir was left behind"


@pytest.mark.parametrize("under_file", [False, True])
def test_unusable_data_dir_is_one_line_and_a_non_zero_exit(tmp_path, under_file):
    f = tmp_path / "a-file"
    f.write_text("")
    bad = f / "sub" if under_file else f
    proc = run_demo("--seconds", "5", "--data-dir", str(bad), timeout=30)
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("router demo: ") and str(bad) in lines[0], lines
    assert proc.stdout == ""


@pytest.mark.long
@pytest.mark.timeout(480)
def test_demo_runs_300_seconds_cleanly(tmp_path):
    """The README's main job for 5 minutes (it used to crash after 2-4 with a KeyError)."""
    data = tmp_path / "demo"
    proc = run_demo("--seconds", "300", "--data-dir", str(data), timeout=420)
    counts = check_clean(proc)
    assert counts["placed"] > 1000, counts
    assert re.search(r"^ran 30\d s real", proc.stdout, re.M), proc.stdout[-1500:]
    check_history(proc.stdout, data)


def test_a_dead_router_stops_the_demo_with_one_line_and_keeps_the_logs():
    with demo_process("--speed", "60") as p:
        banner = "".join(p.stdout.readline() for _ in range(4))  # router, metrics, web, data
        assert "(temporary, removed on exit)" in banner, banner
        children = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
        routers = [int(c) for c in children
                   if b"router\0serve" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(routers) == 1, children
        time.sleep(2)
        os.kill(routers[0], signal.SIGKILL)
        out, err = p.communicate(timeout=30)
    assert p.returncode == 1 and "Traceback" not in out + err, out + err
    assert "router demo: stopping: router was killed by SIGKILL" in err, err
    kept = re.search(r"router demo: logs kept in (\S+)", err)
    assert kept and (Path(kept.group(1)) / "router.log").exists(), err
    shutil.rmtree(kept.group(1))
