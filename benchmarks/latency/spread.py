"""How noisy the latency suite is here: run it several times, then each benchmark's
median per run and the spread of those medians ((max - min) / their median).

    python -m benchmarks latency-spread                    # 5 runs of the latency suite
    python -m benchmarks latency-spread --runs 3 --suite benchmarks/test_throughput_batch.py
    python -m benchmarks latency-spread --from-dir DIR     # tables of runs already saved
    flock /work/bench.lock python -m benchmarks latency-spread --markdown spread.md

Each run is ``python -m pytest SUITE --benchmark-json DIR/run-N.json`` in a subprocess
(a fresh router per module each time), one after the other. A spread at or below
``--target`` (10%) means a ``--benchmark-compare-fail=median:10%`` gate on that benchmark
is not set off by this machine's noise alone.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from benchmarks import ROOT
from benchmarks.harness.machine import environment
from benchmarks.harness.options import comma_list, option, parse_options

LATENCY_SUITE = ("benchmarks/test_latency.py", "benchmarks/test_latency_aio.py")


@dataclass
class SpreadOptions:
    runs: int = option(5, "runs of the suite")
    suite: tuple = option(LATENCY_SUITE, "comma-separated test files (or node ids) to run",
                          parse=comma_list())
    pytest_args: str = option("", "more pytest arguments, one string (e.g. \"-k round_trip\")")
    out: str = option("", "directory for the runs' JSON files (default: a new temp dir)",
                      saved=False)
    from_dir: str = option("", "do not run: read DIR/run-*.json from earlier runs",
                           saved=False)
    target: float = option(0.10, "spread a benchmark's medians should stay within")
    markdown: str = option("", "also write the report to this file", saved=False)


def run_suite(opts: SpreadOptions, out: str) -> list[float]:
    """Run the suite ``opts.runs`` times; return each run's wall time (s)."""
    walls = []
    for i in range(1, opts.runs + 1):
        path = os.path.join(out, f"run-{i}.json")
        cmd = [sys.executable, "-m", "pytest", "-q", *opts.suite,
               f"--benchmark-json={path}", *shlex.split(opts.pytest_args)]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        walls.append(time.monotonic() - t0)
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
        print(f"run {i}/{opts.runs}: {walls[-1]:.1f} s, exit {proc.returncode}: {tail[0]}",
              flush=True)
        if proc.returncode != 0:
            print(proc.stdout[-4000:], proc.stderr[-2000:], sep="\n", file=sys.stderr)
            raise SystemExit(f"run {i} failed (exit {proc.returncode}); JSON files in {out}")
    return walls


def load_runs(out: str) -> list[dict]:
    """The runs' pytest-benchmark JSON documents, in run order."""
    paths = sorted(glob.glob(os.path.join(out, "run-*.json")),
                   key=lambda p: int(p.rsplit("-", 1)[1].split(".")[0]))
    if not paths:
        raise SystemExit(f"no run-*.json in {out}")
    return [json.load(open(p)) for p in paths]


def spread_rows(runs: list[dict]) -> list[dict]:
    """Per benchmark (in the first run's order): the medians, p99s and other-CPU shares
    of every run, the median of the medians and the spread."""
    names = [b["fullname"] for b in runs[0]["benchmarks"]]
    rows = []
    for name in names:
        per = [next((b for b in r["benchmarks"] if b["fullname"] == name), None) for r in runs]
        per = [b for b in per if b is not None]
        medians = [b["stats"]["median"] for b in per]
        mid = statistics.median(medians)
        rows.append({
            "name": per[0]["name"],
            "medians": medians,
            "median": mid,
            "spread": (max(medians) - min(medians)) / mid if mid else 0.0,
            "p99": [b["extra_info"].get("p99_us") for b in per],
            "other": [b["extra_info"].get("other_cpu_share") for b in per],
            "steal": [b["extra_info"].get("steal_share") for b in per],
            "msg_s": [b["extra_info"].get("msg_s_median") for b in per],
        })
    return rows


def probe_line(runs: list[dict], key: str, label: str) -> str | None:
    """One line of the report: the machine's speed probe ``key`` per run (the median
    over that run's benchmarks) and its spread, the noise floor the medians sit on."""
    per_run = []
    for r in runs:
        vals = [b["extra_info"][key] for b in r["benchmarks"] if key in b["extra_info"]]
        if vals:
            per_run.append(statistics.median(vals))
    if len(per_run) < 2:
        return None
    mid = statistics.median(per_run)
    spread = (max(per_run) - min(per_run)) / mid if mid else 0.0
    return (f"- {label} per run: " + ", ".join(f"{v:.1f} us" for v in per_run)
            + f" (spread {spread * 100:.1f}%)")


def fmt_time(seconds: float) -> str:
    """Microseconds below 10 ms, else milliseconds."""
    return f"{seconds * 1e6:.0f} us" if seconds < 0.01 else f"{seconds * 1e3:.1f} ms"


def report(rows: list[dict], runs: list[dict], walls: list[float], opts: SpreadOptions) -> str:
    """The markdown report: machine, suite, one row per benchmark."""
    env = environment()
    loads = [r["benchmarks"][0]["extra_info"].get("loadavg_before", [None])[0] for r in runs]
    lines = [
        f"Five-run spread ({len(runs)} runs), {datetime.date.today().isoformat()}: "
        f"`{' '.join(opts.suite)}` {opts.pytest_args}".rstrip(),
        "",
        f"- commit {env['commit']}{' (uncommitted: ' + env['uncommitted'] + ')' if env['uncommitted'] else ''}; "
        f"{env['cpu']}, {env['cores']} cores, kernel {env['kernel']}",
        f"- Python {env['python']}, pyzmq {env['pyzmq']}, libzmq {env['libzmq']}, "
        f"Cython {env['cython']}, pytest-benchmark {runs[0].get('version', '?')}",
        "- load average (1 min) at each run's start: " + ", ".join(str(v) for v in loads),
        ("- wall time per run: " + ", ".join(f"{w:.0f} s" for w in walls)) if walls else None,
        probe_line(runs, "cpu_probe_us", "machine speed probe, fixed Python loop"),
        probe_line(runs, "wakeup_probe_us", "machine wake-up probe, pipe round trip to a child"),
        "",
        "| benchmark | median per run | median of medians | spread | p99 per run (us) | "
        "other CPU share (max) | steal share (max) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ok = "" if r["spread"] <= opts.target else " **over**"
        p99 = ", ".join(f"{v:.0f}" for v in r["p99"] if v is not None)
        other = max((v for v in r["other"] if v is not None), default=None)
        steal = max((v for v in r["steal"] if v is not None), default=None)
        extra = ""
        if any(r["msg_s"]):
            extra = " (" + ", ".join(f"{v / 1000:.0f}k" for v in r["msg_s"] if v) + " msg/s)"
        lines.append(
            f"| {r['name']} | {', '.join(fmt_time(m) for m in r['medians'])}{extra} | "
            f"{fmt_time(r['median'])} | {r['spread'] * 100:.1f}%{ok} | {p99} | "
            f"{other if other is not None else '?'} | {steal if steal is not None else '?'} |")
    return "\n".join(line for line in lines if line is not None) + "\n"


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(SpreadOptions, argv, prog="python -m benchmarks latency-spread",
                         doc=__doc__)
    walls: list[float] = []
    if opts.from_dir:
        out = opts.from_dir
    else:
        out = opts.out or tempfile.mkdtemp(prefix="latency-spread-")
        os.makedirs(out, exist_ok=True)
        walls = run_suite(opts, out)
    runs = load_runs(out)
    text = report(spread_rows(runs), runs, walls, opts)
    print(text)
    print(f"JSON of each run: {out}")
    if opts.markdown:
        with open(opts.markdown, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
