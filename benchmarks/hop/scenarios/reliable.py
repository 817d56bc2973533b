"""reliable: ORDER class; the receiver acks cumulatively and the sender waits for a
terminal receipt per message (at most --window in flight)."""

from __future__ import annotations

from benchmarks.hop.scenarios.base import Scenario, TrialSpec, endpoint_hello
from benchmarks.proto import protocol as P


def receivers(sender: dict, recv: dict, spec: TrialSpec) -> list[dict]:
    """One acking ENDPOINT receiver on user:1; the sender sends ORDER and waits."""
    sender.update(msg_class=int(P.MsgClass.ORDER), window=spec.opts.window,
                  wait_terminal=True)
    return [dict(recv, count=spec.count, reliable=True,
                 hello=endpoint_hello("bench-endpoint", ["user:1"]),
                 lat_file=spec.lat_file(0))]


SCENARIO = Scenario(
    name="reliable",
    contenders=("router", "router-redis"),
    title=lambda o: (f"Reliable (ORDER), cumulative acks, sender waits for receipts "
                     f"(window {o.window:,}), {o.count:,} messages"),
    receivers=receivers,
)
