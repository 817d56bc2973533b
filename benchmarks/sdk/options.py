"""Every option of ``python -m benchmarks sdk``, written once."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.harness.options import TrialOptions, comma_list, option
from benchmarks.sdk.servers import CONTENDERS


@dataclass
class SdkOptions(TrialOptions):
    """What a users' benchmark run measures and how; the long test builds it directly."""

    contenders: tuple = option(tuple(CONTENDERS), "comma list of " + ", ".join(CONTENDERS),
                               flags=("-c", "--contenders"),
                               parse=comma_list(str, CONTENDERS))
    count: int = option(200_000, "messages per throughput trial", flags=("-n", "--count"))
    rates: tuple = option((5000, 20000), "offered rates of the latency trials, msg/s "
                          "(empty: no latency trials)", parse=comma_list(int))
    duration: float = option(3.0, "seconds per latency trial")
    payload: int = option(200, "payload bytes (>= 16)")
    window: int = option(1000, "reliable contenders: unconfirmed messages per publisher "
                               "(sdk-reliable receipts, JetStream PubAcks)")
    repeat: int = option(3, "interleaved rounds (medians; the spread is reported)")
    idle: float = option(3.0, "a receiver stops after this long without a message, once "
                              "its publisher has sent everything")
    deadline: float = option(120.0, "seconds per trial, at most")
