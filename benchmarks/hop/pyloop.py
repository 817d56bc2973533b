"""Contender (b): a tuned pure-Python ROUTER loop speaking the router's protocol.

    python -m benchmarks.hop.pyloop --bind tcp://127.0.0.1:5001

Best effort only: no journal, no sequence numbers (DELIVER seq is 0), no acks, no
receipts. It answers HELLO with WELCOME, keeps address -> identity from HELLO and BIND
cursors, channel -> members from JOIN/LEAVE, and for each SEND builds one DELIVER header
per recipient and sends [identity][header][payload]. It is the baseline "what the same
routing costs when every frame is a Python call": one ``recv()`` per frame in, one
``send()`` per frame out, no ``recv_multipart``/``Poller``.

Prints READY once bound; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import struct
import sys
import time

import zmq

from benchmarks.proto import protocol as P

#: What WELCOME announces: heartbeat interval (ms), liveness, max payload (bytes).
WELCOME_FIELDS = (1000, 3, 1 << 20)


def _addresses(frame: bytes, off: int, trailer: int = 0) -> list[bytes]:
    """Addresses of a list: count, then [len][addr] entries each followed by ``trailer``
    bytes (P.SEQ.size for a cursor list, 0 for an address list)."""
    (count,) = P.COUNT.unpack_from(frame, off)
    off += P.COUNT.size
    out = []
    for _ in range(count):
        n = frame[off]
        out.append(frame[off + 1 : off + 1 + n])
        off += 1 + n + trailer
    return out


def _cursor_addresses(frame: bytes, off: int) -> list[bytes]:
    """Addresses of a cursor list (count, then [len][addr][u64 seq] entries)."""
    return _addresses(frame, off, P.SEQ.size)


class Stats:
    __slots__ = ("sends", "deliveries", "no_route", "control", "bad")

    def __init__(self) -> None:
        self.sends = self.deliveries = self.no_route = self.control = self.bad = 0


def serve(sock: zmq.Socket, stats: Stats) -> None:
    """The loop. Locals are bound once; the SEND path does no attribute lookups on ``P``."""
    recv = sock.recv
    send = sock.send
    SNDMORE = zmq.SNDMORE
    RCVMORE = zmq.RCVMORE
    getsockopt = sock.getsockopt
    unpack_send = P.SEND.unpack_from
    pack_deliver = P.DELIVER.pack
    send_fixed = P.PREFIX.size + P.SEND.size
    sig = P.SIGNATURE
    cmd_send = int(P.Command.SEND)
    flag_channel = int(P.Flag.CHANNEL)
    deliver_prefix = [P.prefix(P.Command.DELIVER, f) for f in range(256)]
    welcome = P.prefix(P.Command.WELCOME) + P.WELCOME.pack(*WELCOME_FIELDS)
    time_ns = time.time_ns
    routes: dict[bytes, bytes] = {}  # address -> peer identity
    names: dict[bytes, bytes] = {}  # peer identity -> peer name (DELIVER "from")
    channels: dict[bytes, list[bytes]] = {}
    empty = b""

    while True:
        ident = recv()
        header = recv()
        if len(header) >= send_fixed and header[2] == cmd_send and header[0] == sig:
            payload = recv()
            msg_id, _ttl, cls, lt, lk, lc = unpack_send(header, 4)
            flags = header[3]
            target = header[send_fixed : send_fixed + lt]
            kind = header[send_fixed + lt : send_fixed + lt + lk]
            sender = names.get(ident, empty)
            stats.sends += 1
            if flags & flag_channel:
                members = channels.get(target)
                if not members:
                    stats.no_route += 1
                    continue
                chan = target
            else:
                members = (target,)
                chan = empty
            pre = deliver_prefix[flags & ~flag_channel]
            acc = time_ns() // 1000
            for addr in members:
                peer = routes.get(addr)
                if peer is None:
                    stats.no_route += 1
                    continue
                hdr = (
                    pre
                    + pack_deliver(0, msg_id, acc, cls, lk, len(sender), len(chan), 0, len(addr))
                    + kind + sender + chan + addr
                )
                send(peer, SNDMORE)
                send(hdr, SNDMORE)
                send(payload)
                stats.deliveries += 1
            continue
        # Control path: collect the rest of the message, then handle it.
        rest = []
        while getsockopt(RCVMORE):
            rest.append(recv())
        stats.control += 1
        try:
            cmd, _flags = P.check_prefix(header)
        except P.ProtocolError:
            stats.bad += 1
            continue
        off = P.PREFIX.size
        try:
            if cmd == P.Command.HELLO:
                role, n = P.HELLO.unpack_from(header, off)
                off += P.HELLO.size
                names[ident] = header[off : off + n]
                off += n
                for addr in _cursor_addresses(header, off):
                    routes[addr] = ident
                send(ident, SNDMORE)
                send(welcome)
            elif cmd == P.Command.BIND:
                for addr in _cursor_addresses(header, off):
                    routes[addr] = ident
            elif cmd == P.Command.UNBIND:
                for addr in _addresses(header, off):
                    if routes.get(addr) == ident:
                        del routes[addr]
            elif cmd in (P.Command.JOIN, P.Command.LEAVE):
                n = header[off]
                chan = header[off + 1 : off + 1 + n]
                addrs = _addresses(header, off + 1 + n)
                members = channels.setdefault(chan, [])
                if cmd == P.Command.JOIN:
                    members.extend(a for a in addrs if a not in members)
                else:
                    drop = set(addrs) if addrs else set(members)
                    members[:] = [a for a in members if a not in drop]
            elif cmd == P.Command.BYE:
                for addr in [a for a, peer in routes.items() if peer == ident]:
                    del routes[addr]
            # ACK, HEARTBEAT and anything else: nothing to do for a best-effort loop.
        except (IndexError, ValueError, struct.error):
            stats.bad += 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", required=True, help="ROUTER endpoint to bind")
    args = parser.parse_args(argv)
    stats = Stats()

    def stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    sock.bind(args.bind)
    print("READY", flush=True)
    try:
        serve(sock, stats)
    except KeyboardInterrupt:
        pass
    finally:
        sock.close(0)
        ctx.term()
        print(
            f"pyloop: sends={stats.sends} deliveries={stats.deliveries} "
            f"no_route={stats.no_route} control={stats.control} bad={stats.bad}",
            file=sys.stderr,
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
