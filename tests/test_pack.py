"""PACK: several SENDs/ACKs in one frame to the router, several DELIVERs in one frame
from it (docs/PROTOCOL.md, PACK), through a real router process and raw sockets."""

from __future__ import annotations

import contextlib
import threading
import time

import router.protocol as P
from router.protocol import Command, ErrorCode, Flag, MsgClass, Role, Status

from support import Peer, free_port, gauge, wait_until


def _sends(n: int, target: str, cls: MsgClass = MsgClass.ORDER, first_id: int = 1,
           size: int = 50) -> list[tuple[bytes, bytes]]:
    return [(P.encode_send(target, first_id + i, cls, kind="order.created"),
             b"%06d" % i + b"x" * (size - 6)) for i in range(n)]


def _deliveries(peer: Peer, n: int, timeout: float = 5.0) -> tuple[list[P.Delivery], int]:
    """``n`` deliveries, unpacked, and how many PACK frames carried them."""
    got, packs = [], 0
    while len(got) < n:
        frames = _next_data(peer, timeout)
        if frames[0][2] == Command.PACK:
            packs += 1
            assert len(frames) == 1
            got += [P.decode_deliver(h, b) for h, b in P.decode_pack(frames[0])]
        else:
            got.append(P.decode_deliver(*frames))
    return got, packs


def _next_data(peer: Peer, timeout: float) -> list[bytes]:
    """The next DELIVER or PACK, past heartbeats and receipts."""
    while True:
        frames = peer.recv(timeout)
        assert frames is not None, f"no delivery within {timeout}s"
        if frames[0][2] in (Command.DELIVER, Command.PACK):
            return frames


def _receipts(peer: Peer, status: Status, n: int, timeout: float = 5.0) -> list[int]:
    """Message ids of the next ``n`` receipts with ``status`` (others skipped)."""
    ids: list[int] = []
    while len(ids) < n:
        frames = peer.recv_command(Command.RECEIPT, timeout=timeout, skip_others=True)
        ids += [r.msg_id for r in P.decode_receipts(frames[0]) if r.status == status]
    return ids


def _error(peer: Peer, timeout: float = 2.0) -> tuple[ErrorCode, int, str]:
    frames = peer.recv_command(Command.ERROR, timeout=timeout, skip_others=True)
    return P.decode_error(*frames)


def test_the_welcome_says_the_router_reads_packs(router):
    with Peer(router.url) as p:
        welcome = p.hello(Role.SENDER, "orders")
        assert P.check_prefix(welcome[0])[1] & Flag.PACK


def test_packed_sends_reach_a_plain_endpoint_one_by_one_in_order(url):
    with Peer(url) as merchant, Peer(url) as orders:
        merchant.hello(Role.ENDPOINT, "m881", [("merchant:881", 0)])
        orders.hello(Role.SENDER, "orders")
        orders.send(P.encode_pack(_sends(40, "merchant:881")))
        assert _receipts(orders, Status.ACCEPTED, 40) == list(range(1, 41))
        got, packs = _deliveries(merchant, 40)
        assert packs == 0  # it did not ask for packs
        assert [d.seq for d in got] == list(range(1, 41))
        assert [d.payload[:6] for d in got] == [b"%06d" % i for i in range(40)]
        assert {d.msg_id for d in got} == set(range(1, 41))


def test_an_endpoint_that_asks_gets_packs_and_its_packed_ack_completes_them(url):
    with Peer(url) as merchant, Peer(url) as orders:
        merchant.hello(Role.ENDPOINT, "m881", [("merchant:881", 0)], flags=Flag.PACK)
        orders.hello(Role.SENDER, "orders")
        orders.send(P.encode_pack(_sends(200, "merchant:881")))
        got, packs = _deliveries(merchant, 200)
        assert [d.seq for d in got] == list(range(1, 201))
        assert [d.payload[:6] for d in got] == [b"%06d" % i for i in range(200)]
        assert 1 <= packs < 200
        merchant.send(P.encode_pack([(P.encode_ack([("merchant:881", 200)]), b"")]))
        assert sorted(_receipts(orders, Status.DELIVERED, 200)) == list(range(1, 201))


def test_a_pack_never_outgrows_its_limit_and_a_large_message_goes_alone_in_order(url):
    big = P.PACK_MAX  # cannot fit in a PACK with its headers
    with Peer(url) as merchant, Peer(url) as orders:
        merchant.hello(Role.ENDPOINT, "m881", [("merchant:881", 0)], flags=Flag.PACK)
        orders.hello(Role.SENDER, "orders")
        entries = _sends(300, "merchant:881", size=1000)
        orders.send(P.encode_pack(entries[:150]))
        orders.send(P.encode_send("merchant:881", 1000, MsgClass.ORDER), b"B" * big)
        orders.send(P.encode_pack(entries[150:]))
        sizes, got = [], []
        while len(got) < 301:
            frames = _next_data(merchant, 5.0)
            sizes.append(sum(len(f) for f in frames))
            if frames[0][2] == Command.PACK:
                got += [P.decode_deliver(h, b) for h, b in P.decode_pack(frames[0])]
            else:
                got.append(P.decode_deliver(*frames))
        assert max(s for s in sizes if s < big) <= P.PACK_MAX
        assert [d.seq for d in got] == list(range(1, 302))
        assert got[150].msg_id == 1000 and len(got[150].payload) == big


def test_a_pack_that_does_not_parse_is_refused_whole(router):
    with Peer(router.url) as m, Peer(router.url) as orders:
        m.hello(Role.ENDPOINT, "m1", [("merchant:1", 0)])
        orders.hello(Role.SENDER, "orders")
        good = P.encode_pack(_sends(3, "merchant:1"))
        orders.send(good[:-1])  # the last payload one byte short
        assert _error(orders)[0] == ErrorCode.MALFORMED
        orders.send(good + b"\x00")  # a stray byte after the last entry
        assert _error(orders)[0] == ErrorCode.MALFORMED
        assert all(f is None or f[0][2] == Command.HEARTBEAT for f in (m.recv(0.3),))


def test_a_pack_is_one_frame_and_comes_after_hello(router):
    with Peer(router.url) as stranger:
        stranger.send(P.encode_pack(_sends(2, "merchant:1")))
        assert _error(stranger)[0] == ErrorCode.NOT_READY
    with Peer(router.url) as orders:
        orders.hello(Role.SENDER, "orders")
        orders.send(P.encode_pack(_sends(2, "merchant:1")), b"payload")
        assert _error(orders)[0] == ErrorCode.MALFORMED


def test_bad_entries_are_refused_one_by_one_and_the_good_ones_delivered(router):
    with Peer(router.url) as m, Peer(router.url) as orders:
        m.hello(Role.ENDPOINT, "m1", [("merchant:1", 0)])
        welcome = orders.hello(Role.SENDER, "orders")
        cap = P.decode_welcome(welcome[0]).max_payload
        entries = [
            _sends(1, "merchant:1", first_id=1)[0],
            (P.encode_hello(Role.SENDER, "again"), b""),  # not packable
            (P.encode_send("merchant:1", 2, MsgClass.ORDER), b"x" * (cap + 1)),  # too large
            (b"\xd5\x09" + P.encode_send("merchant:1", 3, MsgClass.ORDER)[2:], b"v"),  # version
            (P.encode_ack([("merchant:1", 1)]), b"stray"),  # an ACK with a payload
            (P.encode_pack(_sends(1, "merchant:1", first_id=4)), b""),  # nested
            (P.encode_send("nobody", 5, MsgClass.ORDER), b"bad address"),
            _sends(1, "merchant:1", first_id=6)[0],
        ]
        orders.send(P.encode_pack(entries))
        codes, refused = [], {}
        while len(codes) < 6 or len(refused) < 2:  # errors go at once, receipts per pass
            frames = orders.recv(3.0)
            assert frames is not None, (codes, refused)
            if frames[0][2] == Command.ERROR:
                codes.append(P.decode_error(*frames)[0])
            elif frames[0][2] == Command.RECEIPT:
                refused.update({r.msg_id: r.code for r in P.decode_receipts(frames[0])
                                if r.status == Status.REFUSED})
        assert codes == [ErrorCode.UNKNOWN_COMMAND, ErrorCode.TOO_LARGE,
                         ErrorCode.BAD_VERSION, ErrorCode.MALFORMED,
                         ErrorCode.UNKNOWN_COMMAND, ErrorCode.BAD_ADDRESS]
        assert refused == {2: ErrorCode.TOO_LARGE, 5: ErrorCode.BAD_ADDRESS}
        got, _ = _deliveries(m, 2)
        assert [d.msg_id for d in got] == [1, 6]



def test_the_sdk_packs_a_batch_and_reads_packed_deliveries_in_order(url):
    from router.client import Endpoint, Sender, payload_json
    from support import drain
    with Endpoint(url, ["merchant:881"]) as merchant, Sender(url, "orders") as orders:
        ids = orders.send_many((("merchant:881", {"i": i}) for i in range(3000)),
                               kind="order.created")
        got = drain(merchant, 3000, timeout=20)
        assert [payload_json(d)["i"] for d in got] == list(range(3000))
        assert [d.seq for d in got] == list(range(1, 3001))
        assert orders.wait(ids[-1], Status.DELIVERED, timeout=10).status == Status.DELIVERED
        sent, received = orders.stats(), merchant.stats()
        assert sent["packs_out"] >= 1 and sent["packed_out"] == 3000, sent
        assert received["packs_in"] >= 1 and received["malformed"] == 0, received
        assert received["packs_in"] < 3000  # several deliveries per frame


# The SDK's engine against a raw ROUTER socket playing the router: what it asks for,
# what it sends to a router that reads packs and to one that does not (an older one),
# and what it makes of a PACK that is not right.

def _fake_router():
    import zmq
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.linger = 0
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    return sock, f"tcp://127.0.0.1:{port}"


def _welcome(sock, packs: bool) -> tuple[bytes, bytes]:
    """Answer the next HELLO with a WELCOME (saying it reads PACK, or not); (routing id,
    HELLO)."""
    assert sock.poll(5000), "no HELLO"
    ident, hello = sock.recv_multipart()
    assert hello[2] == Command.HELLO
    welcome = bytearray(P.encode_welcome(1000, 3, 1 << 20))
    welcome[3] |= Flag.PACK if packs else 0
    sock.send_multipart([ident, bytes(welcome)])
    return ident, hello


@contextlib.contextmanager
def _answering(sock, packs: bool):
    """The client's constructor waits for its WELCOME: answer it from a thread (the
    only user of ``sock`` until the client is up); yields a getter of (id, HELLO)."""
    box: list = []
    t = threading.Thread(target=lambda: box.append(_welcome(sock, packs)), daemon=True)
    t.start()

    def hello_of():
        t.join(10)
        assert box, "the fake router saw no HELLO"
        return box[0]
    yield hello_of
    hello_of()


def _frames(sock, n_messages: int) -> list[list[bytes]]:
    """Messages from the client until ``n_messages`` SENDs came, packed or not."""
    out, sends = [], 0
    while sends < n_messages:
        assert sock.poll(5000), f"{sends} of {n_messages} SENDs"
        frames = sock.recv_multipart()[1:]
        if frames[0][2] == Command.PACK:
            sends += len(P.decode_pack(frames[0]))
        elif frames[0][2] == Command.SEND:
            sends += 1
        else:
            continue
        out.append(frames)
    return out


def test_the_sdk_packs_only_for_a_router_that_reads_packs():
    from router.client import Sender
    for packs in (True, False):
        sock, url = _fake_router()
        with _answering(sock, packs), Sender(url, "orders") as orders:
            orders.send_many((("merchant:1", b"%d" % i) for i in range(10)),
                             msg_class=MsgClass.NOTICE)
            got = _frames(sock, 10)
        sock.close()
        if packs:
            entries = [e for f in got for e in P.decode_pack(f[0])]
            assert all(len(f) == 1 for f in got) and len(got) < 10
        else:
            entries = [tuple(f) for f in got]
            assert all(f[0][2] == Command.SEND for f in got)
        assert [b for _, b in entries] == [b"%d" % i for i in range(10)]


def _packed_deliver(address: str, seq: int, payload: bytes) -> tuple[bytes, bytes]:
    fixed = P.DELIVER.pack(seq, seq, 0, MsgClass.ORDER, 0, 1, 0, 0, len(address))
    return P.prefix(Command.DELIVER) + fixed + b"o" + address.encode(), payload


def test_the_sdk_reads_a_pack_and_counts_what_is_wrong_in_one():
    from router.client import Endpoint
    sock, url = _fake_router()
    with _answering(sock, True) as hello_of, Endpoint(url, ["merchant:1"]) as merchant:
        ident, hello = hello_of()
        assert hello[3] & Flag.PACK  # it asks for packed deliveries
        good = [_packed_deliver("merchant:1", s, b"p%d" % s) for s in (1, 2, 3)]
        sock.send_multipart([ident, P.encode_pack(
            [good[0], (P.encode_ack([("merchant:1", 1)]), b""), good[1]])])
        sock.send_multipart([ident, P.encode_pack([good[2]])[:-1]])  # cut short
        sock.send_multipart([ident, P.encode_pack([good[2]])])
        got = [merchant.recv(timeout=5) for _ in range(3)]
        assert [(d.seq, d.payload) for d in got] == [(1, b"p1"), (2, b"p2"), (3, b"p3")]
        wait_until(lambda: merchant.stats()["malformed"] == 2, 5, "malformed not counted")
        assert merchant.stats()["packs_in"] == 3
    sock.close()


def test_a_peer_that_does_not_report_its_reads_gets_a_window_of_packs_then_single_ones(
        make_router):
    """PACK_WINDOW packs unread at most: a stuck reader holds no more than a peer that
    never asked for packs would, and packs come back once it reports what it read."""
    port = free_port()
    router = make_router("--heartbeat-ms", "500", "--metrics-port", str(port))
    with Peer(router.url) as m, Peer(router.url) as orders:
        m.hello(Role.ENDPOINT, "m1", [("merchant:1", 0)], flags=Flag.PACK)
        orders.hello(Role.SENDER, "orders")
        packs = plain = sent = 0
        beat = time.monotonic()
        while plain == 0 and sent < 4 * P.PACK_WINDOW:
            # one message at a time: the router packs what one pass has, here one
            orders.send(P.encode_send("merchant:1", 0, MsgClass.NOTICE), b"n%d" % sent)
            sent += 1
            time.sleep(0.0003)
            while (frames := m.recv(0)) is not None:
                packs += frames[0][2] == Command.PACK
                plain += frames[0][2] == Command.DELIVER
            if time.monotonic() - beat > 0.2:  # alive, but no count: nothing read
                m.send(P.encode_heartbeat())
                beat = time.monotonic()
        assert packs == P.PACK_WINDOW and plain >= 1, (packs, plain, sent)
        m.send(P.encode_heartbeat(packs_read=packs))
        time.sleep(0.1)
        orders.send(P.encode_send("merchant:1", 0, MsgClass.NOTICE), b"after")
        frames = _next_data(m, 3.0)
        while frames[0][2] == Command.DELIVER and frames[1] != b"after":
            frames = _next_data(m, 3.0)  # the rest of the single ones
        assert frames[0][2] == Command.PACK, frames
        assert P.decode_pack(frames[0])[-1][1] == b"after"
        wait_until(lambda: gauge(port, "router_pack_window_full_total") >= plain, 5,
                   "router_pack_window_full_total does not count the single ones")
