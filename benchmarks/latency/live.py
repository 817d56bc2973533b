"""What the latency suites share: the live router of a module, the echo worker, the
round settings, and :func:`measure`, which times one operation per round with
pytest-benchmark and adds the tail percentiles and the machine's load to extra_info.

Settings (environment variables, so that a saved run and a compared run differ only in
what the engineer changed):

``LATENCY_ROUNDS``       timed rounds per benchmark (default 5000)
``LATENCY_WARMUP``       untimed rounds before them (default 500)
``LATENCY_ROUTER_ARGS``  extra ``router serve`` flags, e.g. ``--fsync false``
``LATENCY_BATCH``        messages per timed batch in test_throughput_batch.py (10000)
``LATENCY_BATCH_ROUNDS`` timed batches per throughput benchmark (default 30)
``LATENCY_PIN``          ``one`` (default): the router, the echo worker and this process
                         (clients, engine threads) all on the last CPU, so that no
                         wake-up crosses to the other CPU (on this KVM guest a cross-CPU
                         wake-up costs ~60 us and varies ~10% from run to run; on the
                         same CPU 7 us); ``1``: the router and the echo worker on the
                         last CPU, this process on the others; ``0``: not pinned
``LATENCY_DATA_DIR``     where the router's directory (journal, history) goes: default
                         /dev/shm, a RAM filesystem, so that fsync runs but the disk's
                         own latency (which varied 12-18% between runs) stays out of
                         the figures; ``disk``: the system's temporary directory; or
                         a path. What the disk adds is the durability benchmark's
                         subject (group commit, fsync)
"""

from __future__ import annotations

import gc
import os
import shlex
import subprocess
import sys
import time

from benchmarks import ROOT
from benchmarks.harness.machine import machine_cpu, noise_gauge, speed_probe
from benchmarks.harness.procs import spawn, stop

sys.path.insert(0, os.path.join(ROOT, "tests"))
from support import RouterProcess  # noqa: E402  (tests/support.py: `router serve` subprocess)

ROUNDS = int(os.environ.get("LATENCY_ROUNDS", "5000"))
WARMUP = int(os.environ.get("LATENCY_WARMUP", "500"))
ROUTER_ARGS = shlex.split(os.environ.get("LATENCY_ROUTER_ARGS", ""))
BATCH = int(os.environ.get("LATENCY_BATCH", "10000"))
BATCH_ROUNDS = int(os.environ.get("LATENCY_BATCH_ROUNDS", "30"))
PIN_MODE = os.environ.get("LATENCY_PIN", "one")
_CPUS = sorted(os.sched_getaffinity(0))  # before any pinning
_DATA = os.environ.get("LATENCY_DATA_DIR", "")
DATA_PARENT = (None if _DATA == "disk" else _DATA if _DATA
               else "/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
PIN = PIN_MODE not in ("", "0")
if PIN_MODE not in ("", "0", "1", "one"):
    raise SystemExit(f"LATENCY_PIN={PIN_MODE!r}: use one (the default: one CPU), 1 (the "
                     "router apart from the clients) or 0 (not pinned)")

#: Seconds any single wait inside a round may take before the round fails (a lost
#: message must fail the benchmark, not hang it).
OP_TIMEOUT = 5.0

#: The payload of every message: 200 bytes, as in the hop benchmarks (below the SDK's
#: compression threshold, so no lz4 in the path).
PAYLOAD = bytes(range(200))

#: The service the echo worker serves.
ECHO_SERVICE = "bench.echo"


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of process ``pid`` (0: this one) onto ``cpus``; threads it starts
    later inherit that."""
    for tid in os.listdir(f"/proc/{pid or os.getpid()}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:  # the thread ended meanwhile
            pass


def server_cpus() -> tuple[set[int], set[int]]:
    """(CPUs for the router and the worker, CPUs for this process) under LATENCY_PIN."""
    cpus = _CPUS  # as at start: pinning this process narrows its own mask
    if PIN_MODE == "one":
        return {cpus[-1]}, {cpus[-1]}
    return {cpus[-1]}, set(cpus[:-1]) or {cpus[-1]}


def start_router() -> RouterProcess:
    """A ``router serve`` on tcp://127.0.0.1 with the journal on (fsync on: the
    defaults), history on, no periodic summary, its directory under DATA_PARENT;
    ``LATENCY_ROUTER_ARGS`` come last and win. Pinned as LATENCY_PIN says, before any
    client exists, so the engine threads inherit it."""
    router = RouterProcess("--journal", "true", "--summary-interval", "0", *ROUTER_ARGS,
                           under=DATA_PARENT).start()
    if PIN:
        theirs, ours = server_cpus()
        pin(router.pid, theirs)
        pin(0, ours)
    return router


def stop_router(router: RouterProcess, failed: bool = False) -> None:
    """Stop it; remove its directory unless the module failed (then say where it is).
    This process gets all its CPUs back: later modules (the hop, say) must not run pinned."""
    router.stop()
    if PIN:
        pin(0, set(_CPUS))
    if failed:
        print(f"router files kept: {router.ipc_dir}", file=sys.stderr)
    else:
        router.remove_files()


def start_echo_worker(url: str, workdir: str) -> subprocess.Popen:
    """A :class:`workers.service.ServiceWorker` process answering ``bench.echo`` with
    the request's payload; returns once it has said it is connected."""
    proc = spawn([sys.executable, "-m", "benchmarks.latency.echo_worker", url, ECHO_SERVICE],
                 os.path.join(workdir, "echo-worker.log"), stdout=subprocess.PIPE, cwd=ROOT)
    line = proc.stdout.readline()
    if PIN:
        pin(proc.pid, server_cpus()[0])
    if not line.startswith(b"ready"):
        stop(proc)
        raise RuntimeError(f"echo worker did not start: {line!r}; see {workdir}/echo-worker.log")
    return proc


def stop_worker(proc: subprocess.Popen) -> None:
    """Stop the echo worker (its own process group, by id)."""
    stop(proc)


def proc_cpu_s(pid: int) -> float:
    """utime+stime (s) of one live process, all its threads; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def steal_s() -> float:
    """CPU seconds the hypervisor gave to other guests while this one wanted them (all
    cores, since boot; /proc/stat's steal column): noise no process list shows."""
    with open("/proc/stat") as fh:
        fields = fh.readline().split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of sorted values."""
    n = len(sorted_values)
    return sorted_values[min(n - 1, int(q * n))]


def cores() -> int:
    """CPUs this process may run on (what ``nproc`` prints)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def measure(benchmark, fn, *, rounds: int = ROUNDS, warmup: int = WARMUP, setup=None,
            teardown=None, pids=(), extra: dict | None = None):
    """Time ``fn()`` once per round (``rounds`` timed after ``warmup`` untimed), with
    ``setup``/``teardown`` around each round untimed; then put in extra_info the
    p99/p99.9 (us), the machine's load average and cores, the CPU that processes
    other than this one and ``pids`` (the router, the worker) used meanwhile, and the
    machine's speed just before (:func:`speed_probe`)."""
    gc.collect()
    probe = speed_probe()  # the machine's own speed now (not timed into the benchmark)
    load0 = os.getloadavg()
    m0 = machine_cpu()
    steal0 = steal_s()
    cpu0 = {pid: proc_cpu_s(pid) for pid in pids}
    result = benchmark.pedantic(fn, setup=setup, teardown=teardown, rounds=rounds,
                                warmup_rounds=warmup, iterations=1)
    ours = sum(proc_cpu_s(pid) - c for pid, c in cpu0.items())
    noise = noise_gauge(m0, ours)
    info = benchmark.extra_info
    stats = getattr(benchmark, "stats", None)
    data = sorted(stats.stats.data) if stats is not None else []  # None: --benchmark-disable
    if data:
        for name, q in (("p50_us", 0.5), ("p90_us", 0.9), ("p99_us", 0.99),
                        ("p999_us", 0.999)):
            info[name] = round(percentile(data, q) * 1e6, 1)
        info["max_us"] = round(data[-1] * 1e6, 1)
    n = cores()
    info.update({
        "rounds": rounds, "warmup_rounds": warmup,
        "router_args": " ".join(ROUTER_ARGS) or "(defaults: journal on, fsync on)",
        "nproc": n,
        "pinned": PIN_MODE if PIN else False,
        "data_dir": DATA_PARENT or "the system's temporary directory",
        "loadavg_before": [round(x, 2) for x in load0],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        # Share of the machine's CPU that other processes (other people's work, kernel
        # threads excluded) took while this benchmark ran: above ~0.1 it was disturbed.
        "other_cpu_share": round(noise["other_cpu_s"] / max(noise["window_s"] * n, 1e-9), 3),
        # Share of the machine's CPU time stolen by the hypervisor meanwhile.
        "steal_share": round((steal_s() - steal0) / max(noise["window_s"] * n, 1e-9), 3),
        "window_s": round(noise["window_s"], 2),
        **probe,
    })
    if extra:
        info.update(extra)
    return result


def wait_for_service(ask, timeout: float = OP_TIMEOUT) -> None:
    """Call ``ask()`` (a request to the echo service returning its Reply) until a reply
    has code NONE: the worker's READY reached the router before the first round."""
    deadline = time.monotonic() + timeout
    while True:
        rep = ask()
        if rep.code == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{ECHO_SERVICE} not served within {timeout}s: code {rep.code}")
        time.sleep(0.02)
