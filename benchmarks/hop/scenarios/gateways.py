"""gateways: --addresses addresses bound through --gateways GATEWAY connections, the
sender cycling over them in a fixed random order.

The connections live in one receiver process by default (--gateway-procs 1), so the
trial has the same driver processes as "throughput" and the ratio to it measures the
hop; --gateway-procs 4 gives each connection its own process.
"""

from __future__ import annotations

import random

from benchmarks.hop.scenarios.base import Scenario, TrialSpec


def gateway_addresses(n: int, gateways: int) -> list[list[str]]:
    """Address i goes to gateway i % gateways."""
    return [[f"user:{i}" for i in range(g, n, gateways)] for g in range(gateways)]


def spread(items: list, procs: int) -> list[list]:
    """Deal ``items`` round-robin into at most ``procs`` non-empty groups."""
    procs = max(1, min(procs, len(items)))
    return [items[i::procs] for i in range(procs)]


def gateway_targets(n: int) -> list[str]:
    """The sender's cycle over the addresses: each once, in a fixed random order (traffic
    to users is not sorted by user id, and a sorted walk would let the CPU's hardware
    prefetcher hide the router's per-address memory cost)."""
    targets = [f"user:{i}" for i in range(n)]
    random.Random(42).shuffle(targets)
    return targets


def expected_per_gateway(count: int, targets: list[str], groups: list[list[str]]) -> list[int]:
    """Messages each gateway (``groups``: its addresses) gets when the sender cycles over
    ``targets``."""
    full, rest = divmod(count, len(targets))
    gateway_of = {a: g for g, addrs in enumerate(groups) for a in addrs}
    per = [0] * len(groups)
    for i, t in enumerate(targets):
        per[gateway_of[t]] += full + (1 if i < rest else 0)
    return per


def receivers(sender: dict, recv: dict, spec: TrialSpec) -> list[dict]:
    """GATEWAY connections spread over --gateway-procs receiver processes; the sender
    cycles over every address."""
    opts = spec.opts
    groups = gateway_addresses(opts.addresses, opts.gateways)
    sender["targets"] = gateway_targets(opts.addresses)
    expected = expected_per_gateway(spec.count, sender["targets"], groups)
    conns = [({"role": "GATEWAY", "name": f"bench-gw{g}", "addresses": addrs}, n)
             for g, (addrs, n) in enumerate(zip(groups, expected))]
    return [dict(recv, count=sum(n for _, n in share), hellos=[h for h, _ in share],
                 lat_file=None)
            for share in spread(conns, opts.gateway_procs)]


def title(o) -> str:
    """The report's heading for this scenario."""
    return (f"{o.addresses:,} addresses through {o.gateways} gateway connections in "
            f"{min(o.gateway_procs, o.gateways)} receiver process(es), {o.count:,} messages")


SCENARIO = Scenario(
    name="gateways",
    contenders=("pyloop", "router"),
    title=title,
    receivers=receivers,
)
