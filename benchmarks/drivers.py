"""Sender and receiver processes around the native loops of ``loadgen``.

    python benchmarks/drivers.py sender   CONFIG.json
    python benchmarks/drivers.py receiver CONFIG.json

The orchestrator (``hop.py``) starts one process per driver. Each one connects, does the
protocol handshake if the hop speaks it (HELLO, wait for WELCOME; the sender then sends
its JOINs), prints ``{"event": "ready", ...}`` as one JSON line, waits for ``go`` on
stdin, runs its native loop with the GIL released, and prints ``{"event": "result",
...}``. Anything that goes wrong is printed as ``{"event": "error", "error": ...}``.

Sender config: endpoint, hello (null for the bare proxy, else {"name"}), joins
([[channel, [addresses]]]), targets, channel (bool: targets are channels), msg_class,
count, rate, payload, window, wait_terminal, deadline, connect_timeout, hwm, first_id,
hold (print {"event": "sent"} and keep the connection open until "close" on stdin).

Receiver config: endpoint, hello (null, or {"role": "ENDPOINT"|"GATEWAY", "name",
"addresses"}) or hellos (a list of those: one connection each, all served by this
process), count, reliable, deadline, idle, ack_interval, lat_file (raw latencies as
int64 ns are written there), index_space, connect_timeout, hwm.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import zmq  # noqa: E402

from build import import_loadgen  # noqa: E402
from proto import protocol as P  # noqa: E402

loadgen = import_loadgen()


class DriverError(RuntimeError):
    pass


def emit(event: str, **fields) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def wait_go(timeout: float, word: str = "go") -> None:
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    if not ready:
        raise DriverError(f"no '{word}' from the orchestrator within {timeout:.0f} s")
    line = sys.stdin.readline().strip()
    if line != word:
        raise DriverError(f"expected '{word}' on stdin, got {line!r}")


def make_socket(ctx: zmq.Context, cfg: dict) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    hwm = int(cfg.get("hwm", 0))
    if hwm:
        sock.sndhwm = hwm
        sock.rcvhwm = hwm
    # Queue nothing until the connection is up, so POLLOUT means "connected".
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.linger = int(cfg.get("linger_ms", 5000))
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
    if not welcome or not welcome.get("heartbeat_ms"):
        return 0.0
    return welcome["heartbeat_ms"] / 1000.0


def run_sender(cfg: dict) -> None:
    ctx = zmq.Context()
    sock = make_socket(ctx, cfg)
    welcome = None
    hello = cfg.get("hello")
    if hello is not None:
        welcome = handshake(
            sock, P.encode_hello(P.Role.SENDER, hello.get("name", "bench-sender")),
            float(cfg.get("connect_timeout", 30)),
        )
    for channel, members in cfg.get("joins", []):
        sock.send(P.encode_join(channel, members))
    msg_class = P.MsgClass(int(cfg.get("msg_class", P.MsgClass.NOTICE)))
    flags = P.Flag.CHANNEL if cfg.get("channel") else P.Flag.NONE
    headers = [P.encode_send(t, 0, msg_class, flags=flags) for t in cfg["targets"]]
    # Anything the hop said after WELCOME/JOIN (an ERROR for a JOIN, say).
    pre = loadgen.drain_inbox(sock, float(cfg.get("settle", 0.05)))
    emit("ready", welcome=welcome, pre=pre, headers=len(headers))
    wait_go(float(cfg.get("go_timeout", 60)))
    cpu0 = time.process_time()
    res = loadgen.run_sender(
        sock,
        headers,
        int(cfg["count"]),
        payload_size=int(cfg.get("payload", 200)),
        rate=float(cfg.get("rate", 0)),
        first_id=int(cfg.get("first_id", 1)),
        drain=bool(cfg.get("drain", True)),
        window=int(cfg.get("window", 0)),
        wait_terminal=bool(cfg.get("wait_terminal", False)),
        deadline_s=float(cfg.get("deadline", 60)),
        heartbeat_s=heartbeat_s(welcome),
    )
    res["cpu_s"] = time.process_time() - cpu0
    if cfg.get("hold"):
        # Keep the connection until the orchestrator says the receivers are done, so the
        # hop never sees this sender leave while its messages are still queued.
        emit("sent", sent=res["sent"])
        wait_go(float(cfg.get("deadline", 60)) + 60, word="close")
    # Closing flushes what libzmq still queues (bounded by linger).
    t = time.monotonic()
    sock.close()
    ctx.term()
    res["close_s"] = time.monotonic() - t
    res["pre"] = pre
    emit("result", **res)


def receiver_options(cfg: dict, count: int, n_addresses: int, heartbeat: float, *,
                     reliable: bool = False, deadline: float = 60.0) -> dict:
    """Keyword arguments of ``loadgen.run_receiver`` from a receiver config (the keys in
    this module's docstring); ``reliable`` and ``deadline`` are the defaults."""
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


def run_receiver(cfg: dict) -> None:
    """Receive on one connection, or on several from this one process: ``hellos`` lists
    one HELLO per connection (gateways), ``hello`` is the single-connection form."""
    ctx = zmq.Context()
    cfg.setdefault("linger_ms", 1000)
    hellos = cfg.get("hellos") or [cfg.get("hello")]
    socks, welcome = [], None
    for hello in hellos:
        sock = make_socket(ctx, cfg)
        socks.append(sock)
        if hello is not None:
            role = P.Role[hello.get("role", "ENDPOINT")]
            cursors = [(a, 0) for a in hello.get("addresses", [])]
            welcome = handshake(
                sock, P.encode_hello(role, hello.get("name", "bench-receiver"), cursors),
                float(cfg.get("connect_timeout", 30)),
            )
    emit("ready", welcome=welcome)
    wait_go(float(cfg.get("go_timeout", 60)))
    count = int(cfg["count"])
    lat_file = cfg.get("lat_file")
    n_addresses = sum(len((h or {}).get("addresses", [])) for h in hellos)
    cpu0 = time.process_time()
    res = loadgen.run_receiver(socks if len(socks) > 1 else socks[0], count,
                               **receiver_options(cfg, count, n_addresses, heartbeat_s(welcome)))
    res["cpu_s"] = time.process_time() - cpu0
    res["connections"] = len(socks)
    lat = res.pop("latencies")
    if lat_file:
        with open(lat_file, "wb") as fh:
            lat.tofile(fh)
    res["samples"] = len(lat)
    for sock in socks:
        sock.close()
    ctx.term()
    emit("result", **res)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in ("sender", "receiver"):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        with open(argv[1]) as fh:
            cfg = json.load(fh)
        (run_sender if argv[0] == "sender" else run_receiver)(cfg)
    except Exception as exc:  # report, never hang the orchestrator
        emit("error", error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
