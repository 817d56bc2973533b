"""Dispatch quality: the worker's batched policy against three baselines, over seeds and
loads, in the project's delivery simulation (workers/dispatch/quality.py).

    python -m benchmarks dispatch-quality                    # 3 seeds x 4 loads x 5 policies
    python -m benchmarks dispatch-quality --seeds 42 --loads 24 --policies batch,rank

Policies (workers.dispatch.quality.policy_for): ``greedy`` (nearest idle rider),
``insertion`` (each order to the rider whose route it lengthens least, counting the
customers' waits), ``batch-insertion`` (min-cost assignment by insertion cost every
30 s, two rounds: a batch baseline), ``rank`` (each order at once to the best-ranked
rider) and ``batch`` (the worker's policy: min-cost assignment with rank's weights and
the idle-capacity term). Every policy sees the same riders and orders per seed.

Per load and policy the report gives, over the seeds: the mean of the runs' mean and
p90 delivery minutes (creation to drop-off), late deliveries and orders never delivered
(summed; never delivered orders are not in the means), km ridden per delivered order
and rider utilisation. It checks the issue's targets: at every load ``batch`` no worse
than the best baseline on mean, p90 and late; off peak no slower than ``greedy``; above
peak (24/min) mean <= 24 min, <= 400 late in all and nothing undelivered. Simulation
time, not wall time: the figures do not depend on the machine's load.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

from benchmarks.harness.options import option, parse_options
from workers.dispatch.quality import POLICIES, QualityResult, simulate

BASELINES = ("greedy", "insertion", "batch-insertion")
ABOVE_PEAK = 24.0


@dataclass
class QualityOptions:
    """Options of ``python -m benchmarks dispatch-quality``."""

    seeds: str = option("42,1,2", "comma list of seeds")
    loads: str = option("10,14,18,24", "comma list of orders per minute (300 riders)")
    policies: str = option(",".join(POLICIES), "comma list of policies")
    hours: float = option(2.0, "simulated hours of orders per run (plus 1 h to finish)")
    json_out: str = option("", "write every run's figures to this JSON file",
                           flags=("--json",))


def run(seeds: list[int], loads: list[float], policies: list[str],
        hours: float) -> dict[tuple[float, str], list[QualityResult]]:
    """Every (load, policy) over ``seeds``, printing a line per run."""
    out: dict[tuple[float, str], list[QualityResult]] = {}
    for load in loads:
        for seed in seeds:
            for name in policies:
                t0 = time.monotonic()
                r = simulate(name, seed=seed, hours=hours, orders_per_min=load)
                out.setdefault((load, name), []).append(r)
                print(f"{load:>4g}/min seed {seed:>3} {name:16} mean "
                      f"{r.mean_delivery_s / 60:6.2f} p90 {r.p90_delivery_s / 60:6.2f} "
                      f"late {r.late:5} undelivered {r.undelivered:4} "
                      f"({time.monotonic() - t0:.1f} s)", flush=True)
    return out


def summary(runs: list[QualityResult]) -> dict[str, float]:
    """One (load, policy)'s figures over its seeds."""
    n = len(runs)
    return {"mean_min": sum(r.mean_delivery_s for r in runs) / n / 60,
            "p90_min": sum(r.p90_delivery_s for r in runs) / n / 60,
            "late": sum(r.late for r in runs),
            "undelivered": sum(r.undelivered for r in runs),
            "orders": sum(r.orders for r in runs),
            "km_per_order": sum(r.km_per_order for r in runs) / n,
            "utilisation": sum(r.utilisation for r in runs) / n}


def markdown(results: dict, seeds: list[int], loads: list[float],
             policies: list[str], hours: float) -> str:
    """Tables per load, then the targets."""
    lines = [f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), {hours:g} h of orders "
             "+ 1 h to finish, 300 riders, 8 x 8 km; means over the seeds, late and "
             "undelivered summed.", ""]
    for load in loads:
        lines += [f"**{load:g} orders/min**", "",
                  "| policy | mean min | p90 min | late | never delivered | km/order | "
                  "utilisation |", "|---|---|---|---|---|---|---|"]
        for name in policies:
            s = summary(results[load, name])
            lines.append(f"| {name} | {s['mean_min']:.2f} | {s['p90_min']:.2f} | "
                         f"{s['late']} | {s['undelivered']} | {s['km_per_order']:.2f} | "
                         f"{s['utilisation']:.0%} |")
        lines.append("")
    lines += ["Targets:", ""] + [f"- {t}" for t in targets(results, loads, policies)]
    return "\n".join(lines)


def targets(results: dict, loads: list[float], policies: list[str]) -> list[str]:
    """Each target with **met** or **not met**."""
    if "batch" not in policies:
        return ["(batch not run)"]
    out = []
    base = [b for b in BASELINES if b in policies]
    for load in loads:
        ours = summary(results[load, "batch"])
        for key, label in (("mean_min", "mean"), ("p90_min", "p90"), ("late", "late")):
            best = min(summary(results[load, b])[key] for b in base) if base else None
            if best is not None:
                slack = TOLERANCE_MIN if key != "late" else 0
                out.append(f"{load:g}/min {label}: batch {ours[key]:.2f} vs best baseline "
                           f"{best:.2f}: {_verdict(ours[key] <= best + slack)}")
    low = min(loads)
    if "greedy" in policies:
        g = summary(results[low, "greedy"])["mean_min"]
        b = summary(results[low, "batch"])["mean_min"]
        out.append(f"off peak ({low:g}/min): batch {b:.3f} vs greedy {g:.3f} min: "
                   f"{_verdict(b <= g + TOLERANCE_MIN)}")
    if ABOVE_PEAK in loads:
        s = summary(results[ABOVE_PEAK, "batch"])
        out.append(f"above peak: mean {s['mean_min']:.2f} <= 24 min: "
                   f"{_verdict(s['mean_min'] <= 24)}; late {s['late']} <= 400: "
                   f"{_verdict(s['late'] <= 400)}; never delivered {s['undelivered']} = 0: "
                   f"{_verdict(s['undelivered'] == 0)}")
    return out


#: "No worse" allows half the last digit the report shows (0.005 min = 0.3 s): the
#: policies that tie off peak differ by a fraction of a second either way per seed.
TOLERANCE_MIN = 0.005


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks dispatch-quality``; 1 if a target is not met."""
    a = parse_options(QualityOptions, argv, prog="python -m benchmarks dispatch-quality",
                      doc=__doc__)
    seeds = [int(s) for s in a.seeds.split(",")]
    loads = [float(x) for x in a.loads.split(",")]
    policies = [p for p in a.policies.split(",") if p]
    unknown = set(policies) - set(POLICIES)
    if unknown:
        raise SystemExit(f"unknown policies {sorted(unknown)}: choose from {', '.join(POLICIES)}")
    results = run(seeds, loads, policies, a.hours)
    text = markdown(results, seeds, loads, policies, a.hours)
    print()
    print(text)
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump([{"load": load, "policy": name, **asdict(r)}
                       for (load, name), runs in results.items() for r in runs], f, indent=1)
    return 0 if "not met" not in text else 1
