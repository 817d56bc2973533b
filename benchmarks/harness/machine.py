"""The machine a run measures on: CPU model, versions, the router's build, and the CPU
gauges that tell a quiet trial from a noisy one (read from /proc)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time

from benchmarks import ROOT

CLK_TCK = os.sysconf("SC_CLK_TCK")

#: A trial is "noisy" when processes other than its own used more than this share of
#: the machine's CPU while it ran.
NOISE_SHARE = 0.10

#: /proc/PID/stat flags bit of kernel threads.
PF_KTHREAD = 0x00200000


# ---------------------------------------------------------------------------------------
# Versions and the router under test


def _git(*args: str) -> str:
    """stdout of a git command in the repository ("" when git fails)."""
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def router_stamp() -> dict:
    """Router commit, uncommitted files under router/ and ext/, and core build time."""
    status = _git("status", "--porcelain", "--untracked-files=no", "--", "router", "ext")
    router_dir = os.path.join(ROOT, "router")
    core = [os.path.join(router_dir, n) for n in os.listdir(router_dir)
            if n.startswith("core.") and n.endswith(".so")] if os.path.isdir(router_dir) else []
    return {
        "commit": _git("rev-parse", "--short", "HEAD"),
        # The first line lost its leading blank to strip(): split, don't slice.
        "uncommitted": ", ".join(line.split(None, 1)[1]
                                 for line in status.splitlines() if line.strip()),
        "core_built": time.strftime("%Y-%m-%d %H:%M:%S",
                                    time.localtime(os.path.getmtime(core[0]))) if core else "",
    }


def cpu_model() -> str:
    """The CPU's model name (lscpu), else what platform says."""
    model = platform.processor()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return model


def environment() -> dict:
    """Router stamp, machine and versions, as a run's report and JSON record them."""
    import Cython
    import zmq

    stamp = router_stamp()
    return {
        "commit": stamp["commit"],
        "uncommitted": stamp["uncommitted"],
        "router_core_built": stamp["core_built"],
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "cython": Cython.__version__,
    }


def filesystem_of(path: str) -> str:
    """"TYPE on DEVICE (path)" for the filesystem holding ``path`` (df -T), else "?"."""
    try:
        out = subprocess.run(["df", "-T", path], capture_output=True, text=True,
                             timeout=10).stdout.splitlines()
        dev, typ = out[1].split()[:2]
        return f"{typ} on {dev} ({path})"
    except (OSError, IndexError, ValueError, subprocess.SubprocessError):
        return "?"


def router_available() -> tuple[bool, str]:
    """Whether ``import router.core`` works (in a fresh interpreter), and if not why."""
    proc = subprocess.run(
        [sys.executable, "-c", "import router.core"], cwd=ROOT, capture_output=True,
        text=True, timeout=120,
    )
    if proc.returncode == 0:
        return True, ""
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return False, lines[-1] if lines else f"exit code {proc.returncode}"


# ---------------------------------------------------------------------------------------
# CPU gauges


def _process_stats():
    """Fields 3.. of /proc/PID/stat for every live process (field 3 at index 0)."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                yield fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue


def group_cpu_s(pgid: int) -> float:
    """utime+stime (seconds) of every live process in process group ``pgid``."""
    # Index 2 is field 5 (pgrp); 11 and 12 are fields 14 and 15 (utime, stime).
    total = sum(int(f[11]) + int(f[12]) for f in _process_stats() if int(f[2]) == pgid)
    return total / CLK_TCK


def system_busy_s() -> float:
    """CPU seconds spent by the whole machine (all cores, not idle/iowait) since boot."""
    with open("/proc/stat") as fh:
        vals = [int(v) for v in fh.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return (sum(vals[:8]) - idle) / CLK_TCK


def machine_cpu() -> dict:
    """CPU seconds since boot: user+system of the whole machine (no irq/softirq), irq +
    softirq, and user+system of kernel threads (journal writeback, kworkers)."""
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:]]
    # Index 6 is field 9 (flags).
    kth = sum(int(f[11]) + int(f[12]) for f in _process_stats() if int(f[6]) & PF_KTHREAD)
    return {"usersys": (v[0] + v[1] + v[2]) / CLK_TCK, "irq": (v[5] + v[6]) / CLK_TCK,
            "kthreads": kth / CLK_TCK, "self": time.process_time(), "t": time.monotonic()}


def _is_noisy(other_s: float, window_s: float) -> bool:
    """Whether ``other_s`` CPU seconds exceed the noise share of the machine's cores over
    ``window_s``."""
    return other_s > NOISE_SHARE * window_s * (os.cpu_count() or 1)


def busy_noise(busy0: float, t0: float, ours: float) -> dict:
    """The hop trials' gauge: CPU the whole machine spent since :func:`system_busy_s`
    read ``busy0`` at monotonic ``t0``, less ``ours`` (the trial's processes). Kernel
    threads working for the trial count as other; approximate (10 ms ticks)."""
    other = (system_busy_s() - busy0) - ours
    window = time.monotonic() - t0
    return {"other_cpu_s": max(0.0, other), "window_s": window,
            "noisy": _is_noisy(other, window)}


def noise_gauge(m0: dict, ours: float, m1: dict | None = None) -> dict:
    """The durability trials' gauge: CPU of processes other than the trial's, from two
    :func:`machine_cpu` readings.

    ``ours`` is the CPU of the trial's router and drivers; this process (a scraper thread
    included) is added here. Unlike :func:`busy_noise` this leaves out kernel threads and
    irq/softirq time, which the journal's writeback and loopback TCP spend on the trial's
    behalf (reported as kthread_cpu_s and irq_cpu_s)."""
    m1 = m1 or machine_cpu()
    window = m1["t"] - m0["t"]
    kth = m1["kthreads"] - m0["kthreads"]
    mine = m1["self"] - m0["self"]
    other = max(0.0, (m1["usersys"] - m0["usersys"]) - ours - kth - mine)
    return {"other_cpu_s": other, "kthread_cpu_s": kth, "irq_cpu_s": m1["irq"] - m0["irq"],
            "window_s": window, "noisy": _is_noisy(other, window)}


def noise_total(parts: list[dict]) -> dict:
    """One :func:`noise_gauge` over several measured windows of a trial (gaps left out)."""
    out = {k: sum(p[k] for p in parts) for k in ("other_cpu_s", "kthread_cpu_s",
                                                  "irq_cpu_s", "window_s")}
    out["noisy"] = _is_noisy(out["other_cpu_s"], out["window_s"])
    return out


def wait_quiet(max_s: float, share: float = NOISE_SHARE, sample_s: float = 0.5) -> float:
    """Wait (at most ``max_s``) until the machine's user+system CPU over ``sample_s`` is
    below ``share`` of all cores; return the seconds waited."""
    t0 = time.monotonic()
    cores = os.cpu_count() or 1
    while True:
        a = machine_cpu()
        time.sleep(sample_s)
        b = machine_cpu()
        busy = (b["usersys"] - a["usersys"]) - (b["kthreads"] - a["kthreads"])
        if busy < share * cores * sample_s or time.monotonic() - t0 >= max_s:
            return time.monotonic() - t0


# ---------------------------------------------------------------------------------------
# How fast the machine itself is right now

#: The echo child of :func:`speed_probe`: bytes in on stdin, the same bytes out.
_ECHO = ("import os\nwhile True:\n    b = os.read(0, 1)\n    if not b:\n        break\n"
         "    os.write(1, b)\n")


def speed_probe(wakeups: int = 2000) -> dict:
    """Two figures of the machine's own speed at this moment, so that a slower run can be
    told from a slower router: ``cpu_probe_us``, the best of five timings of a fixed
    pure-Python loop (what a busier host or a slower clock changes), and
    ``wakeup_probe_us``, the median round trip of one byte through pipes to a child
    process and back (two sleeps and two wake-ups: what every hop between the suite's
    threads and processes pays). Takes about 0.1 s."""
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        x = 0
        for i in range(100_000):
            x += i & 7
        best = min(best, time.perf_counter() - t0)
    child = subprocess.Popen([sys.executable, "-c", _ECHO], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, bufsize=0)
    try:
        w, r = child.stdin.fileno(), child.stdout.fileno()
        os.write(w, b"x")
        os.read(r, 1)  # the child is up
        trips = []
        for _ in range(wakeups):
            t0 = time.perf_counter()
            os.write(w, b"x")
            os.read(r, 1)
            trips.append(time.perf_counter() - t0)
    finally:
        child.stdin.close()
        child.wait(5)
        child.stdout.close()
    trips.sort()
    return {"cpu_probe_us": round(best * 1e6, 1),
            "wakeup_probe_us": round(trips[len(trips) // 2] * 1e6, 1)}
