"""Every option of ``python -m benchmarks hop``, written once."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.harness.options import TrialOptions, comma_list, option
from benchmarks.hop.contenders import CONTENDERS
from benchmarks.hop.scenarios import SCENARIOS

DEFAULT_ROUTER_CMD = "{python} -m router serve --bind {endpoint}"


@dataclass
class HopOptions(TrialOptions):
    """What a hop run measures and how; the pytest suite builds it directly."""

    scenarios: tuple = option(tuple(SCENARIOS), "comma list of " + ", ".join(SCENARIOS),
                              flags=("-s", "--scenarios"), parse=comma_list(str, SCENARIOS))
    contenders: tuple = option(("proxy", "pyloop", "router"),
                               "comma list of " + ", ".join(CONTENDERS) + " (the secured "
                               "routers: with credentials, see contenders.py)",
                               flags=("-c", "--contenders"),
                               parse=comma_list(str, CONTENDERS))
    count: int = option(500_000, "messages per throughput/gateways/reliable trial",
                        flags=("-n", "--count"))
    payload: int = option(200, "payload bytes (>= 16)")
    pack: int = option(0, "messages per PACK frame (docs/PROTOCOL.md, PACK): the sender "
                          "packs up to this many, receivers ask the router for packed "
                          "DELIVERs (a proxy forwards the sender's packs as they are); "
                          "0: a frame pair per message")
    rates: tuple = option((5000, 20000), "offered rates for latency, msg/s",
                          parse=comma_list(int))
    duration: float = option(3.0, "seconds per latency trial")
    fanout_rate: int = option(5000, "fan-out: offered rate, msg/s")
    addresses: int = option(10_000, "gateways: addresses bound")
    gateways: int = option(4, "gateways: GATEWAY connections the addresses are dealt over")
    gateway_procs: int = option(1, "receiver processes the gateway connections are spread "
                                   "over (1: same driver processes as the single-address "
                                   "trial)")
    window: int = option(20_000, "reliable: max messages in flight without a terminal "
                                 "receipt")
    deadline: float = option(60.0, "seconds per trial, at most")
    idle: float = option(2.0, "receiver stops after this long without a message")
    repeat: int = option(1, "runs per figure (median)")
    hwm: int = option(0, "driver socket HWM (0: libzmq default)")
    router_cmd: str = option(DEFAULT_ROUTER_CMD, "router command line; {python} {endpoint} "
                                                 "{port} {workdir}")
    sender_hold: bool = option(False, "keep the sender connected until the receivers are "
                                      "done (by default it disconnects as soon as its last "
                                      "message is queued)")
    skip_router_check: bool = option(False, "run the router even if `import router.core` "
                                            "fails")
