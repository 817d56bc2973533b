"""Generate ``router.histograms.test.yml``: promtool tests of the histogram alerts, with
series on the router's real bucket bounds (``router.core.histogram_bounds()``).

The histogram alerts (RouterDeliveryLatencyHigh, RouterJournalCommitSlow) read
``histogram_quantile`` over the core's buckets, so what they fire at and the value
their summary shows depend on the bounds. Hand-written series with made-up bounds
would test another histogram than the one the router exports; this module writes one
series per real bucket, and computes the expected quantile the way Prometheus does
(linear interpolation inside the bucket) and renders it as ``humanizeDuration`` does.

Run through ``python grafana/build.py`` (which writes it with the dashboards;
``--check`` fails when the committed file is stale, e.g. after the core's bounds
changed).
"""

from __future__ import annotations

import math
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "router.histograms.test.yml"
MINUTES = 20  # each series has MINUTES + 1 samples, one a minute

DELIVERY_DESCRIPTION = """\
99th percentile of accepted-to-acked time for {cls} messages whose recipient
was online has been above 500 ms for 5 minutes (target: 100 ms fine, 500 ms
felt). Messages that waited for an offline recipient are not counted here
(router_offline_delivery_latency_seconds). Check on the overview dashboard
whether hop latency is also high (router busy: CPU, queue depth, journal commit
latency) or only delivery latency (recipients slow to ack: redelivery ratio, a
gateway or the mobile network)."""

COMMIT_DESCRIPTION = """\
99th percentile of one journal group commit (write + fsync) has been above 50
ms for 5 minutes; every reliable send waits for it before ACCEPTED. Check the
data directory's disk (iostat latency, another process writing, a noisy
neighbour on shared storage), free space (router_journal_disk_free_bytes), and
journal size."""


def le(bound: float) -> str:
    """The ``le`` label exactly as router/metrics.py writes it."""
    return "+Inf" if bound == math.inf else repr(bound)


def cumulative(bounds: list[float], per_minute: dict[float, int]) -> dict[float, int]:
    """Observations a minute by value -> cumulative count a minute for every bucket."""
    return {b: sum(n for v, n in per_minute.items() if v <= b) for b in bounds + [math.inf]}


def quantile(q: float, bounds: list[float], per_minute: dict[float, int]) -> float:
    """What Prometheus's histogram_quantile returns for this distribution."""
    cum = cumulative(bounds, per_minute)
    edges = bounds + [math.inf]
    rank = q * cum[math.inf]
    i = next(i for i, b in enumerate(edges) if cum[b] >= rank)
    if edges[i] == math.inf:
        return edges[-2]
    lo, below = (0.0, 0) if i == 0 else (edges[i - 1], cum[edges[i - 1]])
    return lo + (edges[i] - lo) * (rank - below) / (cum[edges[i]] - below)


def humanize_duration(v: float) -> str:
    """Prometheus's humanizeDuration for values below a minute."""
    if v == 0:
        return "0s"
    if abs(v) >= 1:
        assert v < 60, "only seconds are rendered here"
        return f"{v:.4g}s"
    prefix = ""
    for p in ("m", "u", "n"):
        if abs(v) >= 1:
            break
        prefix, v = p, v * 1000
    return f"{v:.4g}{prefix}s"


def series_values(rates: list[dict[float, int]], bound: float) -> str:
    """A counter that rises by rates[i][bound] in minute i, as explicit samples."""
    total, out = 0, ["0"]
    for r in rates:
        total += r[bound]
        out.append(str(total))
    return " ".join(out)


def histogram_series(name: str, labels: str, bounds: list[float],
                     minutes: list[dict[float, int]]) -> list[str]:
    """YAML input_series lines of one histogram, one series per real bucket."""
    rates = [cumulative(bounds, m) for m in minutes]
    out = []
    for b in bounds + [math.inf]:
        sel = f'{name}_bucket{{{labels}, le="{le(b)}"}}'
        out += [f"      - series: '{sel}'", f"        values: '{series_values(rates, b)}'"]
    return out


def block(text: str, indent: int) -> list[str]:
    pad = " " * indent
    return [pad + line for line in text.splitlines()]


def alert(labels: str, summary: str, description: str) -> list[str]:
    return [f"          - exp_labels: {{{labels}}}",
            "            exp_annotations:",
            f"              summary: {summary}",
            "              description: >-", *block(description, 16)]


def bucket_of(bounds: list[float], value: float) -> tuple[float, float]:
    """(lower, upper) of the real bucket that holds ``value``."""
    i = next(i for i, b in enumerate(bounds) if value <= b)
    return (bounds[i - 1] if i else 0.0), bounds[i]


def delivery_cases(bounds: list[float]) -> list[str]:
    """Delivery p99 per class: order slow throughout, dispatch slow for 10 minutes,
    chat fast; every class has minutes-long offline deliveries that must not count."""
    fast, slow = 0.03, 0.9  # seconds: well under and well over the 500 ms threshold
    assert bucket_of(bounds, slow)[0] >= 0.5, "the slow value must read above 500 ms"
    order = {fast: 10, slow: 90}
    per_class = {"order": [order] * MINUTES,
                 "dispatch": [{slow: 100}] * 10 + [{fast: 100}] * (MINUTES - 10),
                 "chat": [{fast: 100}] * MINUTES}
    offline = [{bounds[-1] * 2: 50, 45.0: 50}] * MINUTES  # riders back after a minute or more
    base = 'job="router", instance="r1:9464"'
    lines = ["  - name: delivery p99 above 500 ms for 5 minutes fires for that class only; "
             "offline waits do not count",
             "    interval: 1m", "    input_series:"]
    for cls, minutes in per_class.items():
        lines += histogram_series("router_delivery_latency_seconds", f'{base}, class="{cls}"',
                                  bounds, minutes)
        lines += histogram_series("router_offline_delivery_latency_seconds",
                                  f'{base}, class="{cls}"', bounds, offline)

    def firing(cls: str, dist: dict) -> list[str]:
        p99 = humanize_duration(quantile(0.99, bounds, dist))
        return alert(f'severity: warning, job: router, instance: "r1:9464", class: {cls}',
                     f"{cls} delivery p99 is {p99} on r1:9464",
                     DELIVERY_DESCRIPTION.format(cls=cls))

    lines += ["    alert_rule_test:",
              "      - eval_time: 4m   # above target, but not yet for 5 minutes",
              "        alertname: RouterDeliveryLatencyHigh", "        exp_alerts: []",
              "      - eval_time: 7m", "        alertname: RouterDeliveryLatencyHigh",
              "        exp_alerts:", *firing("order", order), *firing("dispatch", {slow: 100}),
              "      - eval_time: 20m   # dispatch fast since minute 10: resolved; order slow",
              "        alertname: RouterDeliveryLatencyHigh", "        exp_alerts:",
              *firing("order", order), ""]
    # Only offline deliveries (every rider went offline at once): no alert.
    lines += ["  - name: riders offline for minutes do not fire the delivery latency alert",
              "    interval: 1m", "    input_series:"]
    lines += histogram_series("router_delivery_latency_seconds", f'{base}, class="dispatch"',
                              bounds, [{}] * MINUTES)
    lines += histogram_series("router_offline_delivery_latency_seconds",
                              f'{base}, class="dispatch"', bounds, [{30.0: 100}] * MINUTES)
    lines += ["    alert_rule_test:", "      - eval_time: 15m",
              "        alertname: RouterDeliveryLatencyHigh", "        exp_alerts: []", ""]
    return lines


def commit_cases(bounds: list[float]) -> list[str]:
    """Journal commit p99: r1 every commit ~75 ms (slow), r2 every commit ~5 ms."""
    slow, fast = 0.075, 0.005
    assert bucket_of(bounds, slow)[0] >= 0.05, "the slow commit must read above 50 ms"
    lines = ["  - name: journal commit p99 above 50 ms for 5 minutes fires",
             "    interval: 1m", "    input_series:"]
    lines += histogram_series("router_journal_commit_seconds", 'job="router", instance="r1:9464"',
                              bounds, [{slow: 600}] * MINUTES)
    lines += histogram_series("router_journal_commit_seconds", 'job="router", instance="r2:9464"',
                              bounds, [{fast: 600}] * MINUTES)
    p99 = humanize_duration(quantile(0.99, bounds, {slow: 600}))
    lines += ["    alert_rule_test:", "      - eval_time: 4m",
              "        alertname: RouterJournalCommitSlow", "        exp_alerts: []",
              "      - eval_time: 10m", "        alertname: RouterJournalCommitSlow",
              "        exp_alerts:",
              *alert('severity: warning, job: router, instance: "r1:9464"',
                     f"Journal commit p99 is {p99} on r1:9464", COMMIT_DESCRIPTION), ""]
    return lines


def render(bounds: dict[str, list[float]]) -> str:
    """The whole generated test file for these bounds."""
    head = [
        "# GENERATED by grafana/build.py (grafana/alerts/histogram_tests.py) from the core's",
        "# bucket bounds, router.core.histogram_bounds(): do not edit; run",
        "# `python grafana/build.py` after the bounds change.",
        "# promtool test rules router.rules.test.yml router.histograms.test.yml",
        "rule_files:", "  - router.rules.yml", "", "evaluation_interval: 1m", "", "tests:"]
    return "\n".join(head + delivery_cases(bounds["delivery"])
                     + commit_cases(bounds["commit"])).rstrip("\n") + "\n"
