"""HELLO/WELCOME: the router tells each client the tunables it must behave by."""

from __future__ import annotations

from router import protocol as P
from router.protocol import Command, Role

from support import Peer


def test_welcome_carries_the_routers_tunables(make_router):
    r = make_router("--window", "77", "--retry-ms", "250", "--retry-max-ms", "4000",
                    "--max-attempts", "9", "--dedup-seconds", "30",
                    "--errors-per-second", "5", "--heartbeat-ms", "700",
                    "--max-payload", "65536")
    with Peer(r.url) as p:
        p.send(P.encode_hello(Role.SENDER, "handshake"))
        info = P.decode_welcome(p.recv_command(Command.WELCOME)[0])
    assert (info.heartbeat_ms, info.liveness, info.max_payload) == (700, 3, 65536)
    assert info.tunables == P.Tunables(window=77, retry_ms=250, retry_max_ms=4000,
                                       max_attempts=9, dedup_ms=30_000, errors_per_second=5,
                                       layout=P.WELCOME_EXT_VERSION)
