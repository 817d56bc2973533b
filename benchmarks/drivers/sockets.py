"""What every driver program does before its native loop: connect a DEALER, say HELLO
and wait for WELCOME, and turn a receiver config into ``loadgen.run_receiver`` options."""

from __future__ import annotations

import time

import zmq

from benchmarks.harness.driver_protocol import DriverError
from benchmarks.proto import protocol as P


def make_socket(ctx: zmq.Context, cfg: dict) -> zmq.Socket:
    """A DEALER connected to ``cfg["endpoint"]`` (HWM, linger, timeout and security
    options from ``cfg``)."""
    sock = ctx.socket(zmq.DEALER)
    hwm = int(cfg.get("hwm", 0))
    if hwm:
        sock.sndhwm = hwm
        sock.rcvhwm = hwm
    # Queue nothing until the connection is up, so POLLOUT means "connected".
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.linger = int(cfg.get("linger_ms", 5000))
    # an authenticated router's options (CURVE keys or PLAIN name and password), by
    # libzmq option number: benchmarks/hop/contenders.py SecuredRouterHop
    for option, value in cfg.get("sockopts", {}).items():
        sock.setsockopt(int(option), value.encode())
    sock.connect(cfg["endpoint"])
    timeout_ms = int(float(cfg.get("connect_timeout", 30)) * 1000)
    if not sock.poll(timeout_ms, zmq.POLLOUT):
        raise DriverError(f"could not connect to {cfg['endpoint']} within {timeout_ms} ms")
    return sock


def handshake(sock: zmq.Socket, hello: bytes, timeout: float) -> dict:
    """Send HELLO and wait for WELCOME; an ERROR reply or silence is a failure."""
    sock.send(hello)
    deadline = time.monotonic() + timeout
    skipped = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not sock.poll(int(left * 1000) + 1, zmq.POLLIN):
            raise DriverError(
                f"no WELCOME within {timeout:.0f} s after HELLO ({len(hello)} bytes);"
                f" other frames seen: {skipped[:5]!r}"
            )
        frames = sock.recv_multipart()
        head = frames[0]
        try:
            cmd, _ = P.check_prefix(head)
        except P.ProtocolError as exc:
            skipped.append(f"unparseable {head[:16]!r}: {exc}")
            continue
        if cmd == P.Command.WELCOME:
            hb_ms, liveness, max_payload = P.decode_welcome(head)[:3]
            return {"heartbeat_ms": hb_ms, "liveness": liveness, "max_payload": max_payload}
        if cmd == P.Command.ERROR:
            code, mid, text = P.decode_error(head, frames[1] if len(frames) > 1 else b"")
            raise DriverError(f"HELLO refused: ERROR {code.name} (msg {mid}): {text}")
        skipped.append(cmd.name)


def heartbeat_s(welcome: dict | None) -> float:
    """The heartbeat interval WELCOME announced, in seconds (0: none)."""
    if not welcome or not welcome.get("heartbeat_ms"):
        return 0.0
    return welcome["heartbeat_ms"] / 1000.0


def receiver_options(cfg: dict, count: int, n_addresses: int, heartbeat: float, *,
                     reliable: bool = False, deadline: float = 60.0) -> dict:
    """Keyword arguments of ``loadgen.run_receiver`` from a receiver config (the keys in
    benchmarks/drivers/hop.py's docstring); ``reliable`` and ``deadline`` are the defaults."""
    return dict(
        deadline_s=float(cfg.get("deadline", deadline)),
        idle_s=float(cfg.get("idle", 2.0)),
        reliable=bool(cfg.get("reliable", reliable)),
        ack_interval_s=float(cfg.get("ack_interval", 0.001)),
        max_samples=count if cfg.get("lat_file") else 0,
        index_space=int(cfg.get("index_space", 0)),
        max_addresses=max(16, n_addresses * 2),
        heartbeat_s=heartbeat,
    )


def write_latencies(res: dict, lat_file: str | None) -> None:
    """Move the receiver's raw latencies out of its result: to ``lat_file`` (int64 ns)
    if given; the result keeps how many there were."""
    lat = res.pop("latencies")
    if lat_file:
        with open(lat_file, "wb") as fh:
            lat.tofile(fh)
    res["samples"] = len(lat)
