"""fanout: SEND to channel order:1, whose 3 members are on 3 receivers, at
--fanout-rate msg/s for --duration seconds; latency over all deliveries."""

from __future__ import annotations

from benchmarks.hop.scenarios.base import Scenario, TrialSpec, endpoint_hello

MEMBERS = ("user:7", "merchant:881", "rider:42")


def receivers(sender: dict, recv: dict, spec: TrialSpec) -> list[dict]:
    """One ENDPOINT per member; the sender JOINs them to order:1 and sends to it."""
    sender.update(targets=["order:1"], channel=True, joins=[["order:1", list(MEMBERS)]])
    return [dict(recv, count=spec.count,
                 hello=endpoint_hello(f"bench-member{i}", [addr]),
                 lat_file=spec.lat_file(i))
            for i, addr in enumerate(MEMBERS)]


SCENARIO = Scenario(
    name="fanout",
    contenders=("pyloop", "router"),
    title=lambda o: (f"Fan-out to channel order:1 (3 members on 3 receivers), "
                     f"{o.duration:g} s"),
    receivers=receivers,
    rates=lambda o: [float(o.fanout_rate)],
    paced=True,
)
