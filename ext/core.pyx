# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# distutils: language = c++
"""Native routing core: the per-message path of the router.

One ROUTER socket, served by a loop that runs without the GIL: receive a multipart
message with zmq_msg_recv, parse the binary header (docs/PROTOCOL.md), look up the route,
assign the per-address sequence, send DELIVER frames, track acks and batch receipts.
Payloads are never decoded: the payload frame is moved into the queue and shared with
zmq_msg_copy for every delivery. Everything else (configuration, sockets, logging,
metrics) is Python in the ``router`` package, which owns a :class:`Core`.
"""

import zmq  # loads libzmq into the process before we resolve its symbols

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy, memset
from libc.stdio cimport snprintf
from libc.errno cimport EAGAIN, EINTR, EHOSTUNREACH
from libcpp cimport bool
from libcpp.string cimport string
from libcpp.vector cimport vector
from libcpp.deque cimport deque
from libcpp.unordered_map cimport unordered_map
from cython.operator cimport dereference as deref, preincrement as inc

from zmqapi cimport *

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int, timespec *)
    enum:
        CLOCK_MONOTONIC
        CLOCK_REALTIME

include "protocol.pxi"
include "state.pxi"
include "wire.pxi"

cdef enum:
    EV_CONNECT = 1
    EV_DISCONNECT = 2
    EV_ERROR = 3
    REASON_BYE = 1
    REASON_TIMEOUT = 2
    REASON_UNREACHABLE = 3
    RECV_BATCH = 512          # messages drained before flushing sends and receipts
    RECEIPT_FLUSH = 4096      # entries per RECEIPT frame at most
    TICK_MS = 50              # housekeeping period: liveness, heartbeats
    DELIVER_FIXED = 33        # prefix + seq, msg id, accepted_us, class, 4 lengths
    N_CLASSES = 5

cdef char _err[512]
if zmqapi_load(zmq.backend.cython._zmq.__file__.encode(), _err, sizeof(_err)) != 0:
    raise ImportError(f"router native core: {_err.decode()}")


cdef inline uint64_t mono_ms() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000 + <uint64_t>(ts.tv_nsec // 1000000)


cdef inline uint64_t wall_us() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <uint64_t>ts.tv_sec * 1000000 + <uint64_t>(ts.tv_nsec // 1000)


def libzmq_path() -> str:
    """Path of the libzmq the core resolved its symbols from (pyzmq's own copy)."""
    return zmqapi_path.decode()


def libzmq_version() -> tuple:
    """(major, minor, patch) of that libzmq."""
    cdef int a, b, c
    zmqapi.version(&a, &b, &c)
    return (a, b, c)


def cython_version() -> str:
    """The Cython version this core was compiled with."""
    return CYTHON_VERSION


def constants() -> dict:
    """The protocol constants as compiled into the core (checked against router.protocol)."""
    return dict(NATIVE_CONSTANTS)


cdef class Core:
    """The routing state and loop for one ROUTER socket.

    Create it with a bound pyzmq ROUTER socket (``ROUTER_MANDATORY`` set) and call
    :meth:`run` repeatedly; each call serves for at most ``timeout_ms`` and returns so
    that Python can handle signals, logs and metrics.
    """

    cdef void *sock
    cdef object _socket
    cdef vector[Peer*] peers
    cdef unordered_map[string, int] peer_by_id
    cdef vector[int] free_peers
    cdef vector[Address*] addrs
    cdef unordered_map[string, int] addr_by_name
    cdef unordered_map[string, vector[int]] channels
    cdef vector[int] dirty
    cdef vector[int] receipt_peers
    cdef vector[int] blocked_peers
    cdef vector[Event] events
    cdef Counters c
    cdef uint64_t next_tick_ms
    cdef uint64_t next_hb_ms
    # settings, see router.config.Settings
    cdef uint32_t max_payload
    cdef uint32_t window
    cdef uint32_t max_queue
    cdef uint32_t max_addresses
    cdef uint32_t max_peers
    cdef uint32_t hb_ms
    cdef uint32_t liveness
    cdef uint32_t errors_per_second
    cdef uint64_t max_queued

    def __cinit__(self, socket, *, uint32_t max_payload=1 << 20, uint32_t window=1024,
                  uint32_t max_queue=100000, uint32_t max_addresses=1000000,
                  uint32_t max_peers=100000, uint32_t heartbeat_ms=1000,
                  uint32_t liveness=3, uint32_t errors_per_second=20,
                  uint64_t max_queued=5000000):
        if socket.type != zmq.ROUTER:
            raise ValueError(f"Core needs a ROUTER socket, got socket type {socket.type}")
        if heartbeat_ms == 0 or liveness == 0 or window == 0:
            raise ValueError("heartbeat_ms, liveness and window must be positive")
        self._socket = socket
        self.sock = <void *><size_t>socket.underlying
        memset(&self.c, 0, sizeof(Counters))
        self.max_payload = max_payload
        self.window = window
        self.max_queue = max_queue
        self.max_addresses = max_addresses
        self.max_peers = max_peers
        self.hb_ms = heartbeat_ms
        self.liveness = liveness
        self.errors_per_second = errors_per_second
        self.max_queued = max_queued
        self.next_tick_ms = mono_ms() + TICK_MS
        self.next_hb_ms = mono_ms() + heartbeat_ms

    def __dealloc__(self):
        cdef size_t i
        cdef Address *a
        for i in range(self.addrs.size()):
            a = self.addrs[i]
            while not a.rel.empty():
                self._release(a.rel.front().msg)
                a.rel.pop_front()
            while not a.notices.empty():
                self._release(a.notices.front())
                a.notices.pop_front()
            self._drop_latest(a)
            del a
        for i in range(self.peers.size()):
            del self.peers[i]

    # ---- Python API (off the hot path) ----------------------------------------------

    def run(self, int timeout_ms) -> int:
        """Serve for up to ``timeout_ms``; return the number of messages handled.

        Returns early when a signal interrupts the wait, so the caller's handlers run.
        """
        cdef long n
        with nogil:
            n = self._run(timeout_ms)
        if n < 0:
            raise zmq.ZMQError(zmqapi.errno_())
        return n

    def stats(self) -> dict:
        """A snapshot of the native counters and table sizes."""
        cdef int i
        classes = ("order", "dispatch", "chat", "notice", "location")
        d = {
            "msgs_in": {classes[i]: self.c.msgs_in[i] for i in range(N_CLASSES)},
            "msgs_out": {classes[i]: self.c.msgs_out[i] for i in range(N_CLASSES)},
            "receipts": {s: self.c.receipts[i] for i, s in enumerate(
                ("none", "accepted", "delivered", "expired", "refused", "failed"))},
            "errors": {i: self.c.errors[i] for i in range(17) if self.c.errors[i]},
        }
        for name in ("bytes_in", "bytes_out", "fanout", "receipts_dropped", "acks_in",
                     "errors_suppressed", "shed", "conflated", "expired", "blocked_sends",
                     "peers_connected", "peers_lost", "queued", "loops"):
            d[name] = getattr(self, "_c_" + name)()
        d["peers"] = self.peer_by_id.size()
        d["addresses"] = self.addr_by_name.size()
        d["channels"] = self.channels.size()
        return d

    def _c_bytes_in(self): return self.c.bytes_in
    def _c_bytes_out(self): return self.c.bytes_out
    def _c_fanout(self): return self.c.fanout
    def _c_receipts_dropped(self): return self.c.receipts_dropped
    def _c_acks_in(self): return self.c.acks_in
    def _c_errors_suppressed(self): return self.c.errors_suppressed
    def _c_shed(self): return self.c.shed
    def _c_conflated(self): return self.c.conflated
    def _c_expired(self): return self.c.expired
    def _c_blocked_sends(self): return self.c.blocked_sends
    def _c_peers_connected(self): return self.c.peers_connected
    def _c_peers_lost(self): return self.c.peers_lost
    def _c_queued(self): return self.c.queued
    def _c_loops(self): return self.c.loops

    def drain_events(self) -> list:
        """Connects, disconnects and errors since the last call, as tuples
        ``(kind, name, role, identity, code, naddrs)`` with kind in
        ``"connect" | "disconnect" | "error"``."""
        kinds = {EV_CONNECT: "connect", EV_DISCONNECT: "disconnect", EV_ERROR: "error"}
        out = [(kinds[e.kind], e.name.decode(errors="replace"), e.role, bytes(e.identity),
                e.code, e.naddrs) for e in self.events]
        self.events.clear()
        return out

    def address(self, name) -> dict | None:
        """State of one address, or None if the router has never seen it."""
        cdef string key = name.encode() if isinstance(name, str) else name
        it = self.addr_by_name.find(key)
        if it == self.addr_by_name.end():
            return None
        cdef Address *a = self.addrs[deref(it).second]
        peer = None if a.peer < 0 else self.peers[a.peer].name.decode(errors="replace")
        return {"peer": peer, "last_seq": a.next_seq, "acked": a.acked,
                "unacked": a.rel.size(), "in_flight": a.sent,
                "notices": a.notices.size(), "locations": a.latest.size()}

    def channel(self, name) -> list | None:
        """Member addresses of a channel, or None if it does not exist."""
        cdef string key = name.encode() if isinstance(name, str) else name
        it = self.channels.find(key)
        if it == self.channels.end():
            return None
        return [self.addrs[i].name.decode() for i in deref(it).second]

    # ---- the loop ----------------------------------------------------------------------

    cdef long _run(self, int timeout_ms) noexcept nogil:
        cdef uint64_t now = mono_ms()
        cdef uint64_t deadline = now + <uint64_t>timeout_ms
        cdef long total = 0
        cdef int k, r
        cdef long wait
        cdef zmq_pollitem_t item
        while True:
            k = 0
            while k < RECV_BATCH:
                r = self._recv_one()
                if r == 0:
                    break
                if r < 0:
                    return -1
                k += 1
            total += k
            self.c.loops += 1
            self._flush()
            now = mono_ms()
            if now >= self.next_tick_ms:
                self._tick(now)
            if now >= deadline:
                break
            if k == RECV_BATCH:
                continue
            wait = <long>(min(deadline, self.next_tick_ms) - now)
            if not self.blocked_peers.empty() and wait > 1:
                wait = 1  # a peer's pipe was full: retry soon
            item.socket = self.sock
            item.fd = 0
            item.events = ZMQ_POLLIN
            item.revents = 0
            if zmqapi.poll(&item, 1, wait) < 0:
                if zmqapi.errno_() == EINTR:
                    break  # a signal: let Python run its handler
                return -1
        return total

    cdef int _recv_one(self) noexcept nogil:
        """Receive and handle one message: 1 handled, 0 nothing waiting, -1 socket error."""
        cdef zmq_msg_t f[3]
        cdef zmq_msg_t junk
        cdef int n = 1, extra = 0, more, i
        zmqapi.msg_init(&f[0])
        if zmqapi.msg_recv(&f[0], self.sock, ZMQ_DONTWAIT) < 0:
            zmqapi.msg_close(&f[0])
            i = zmqapi.errno_()
            return 0 if (i == EAGAIN or i == EINTR) else -1
        more = zmqapi.msg_more(&f[0])
        while more:
            # the rest of a multipart message is already queued: these never block
            if n < 3:
                zmqapi.msg_init(&f[n])
                zmqapi.msg_recv(&f[n], self.sock, 0)
                more = zmqapi.msg_more(&f[n])
                n += 1
            else:
                zmqapi.msg_init(&junk)
                zmqapi.msg_recv(&junk, self.sock, 0)
                more = zmqapi.msg_more(&junk)
                zmqapi.msg_close(&junk)
                extra += 1
        self._handle(f, n, extra)
        for i in range(n):
            zmqapi.msg_close(&f[i])
        return 1

    cdef void _handle(self, zmq_msg_t *f, int n, int extra) noexcept nogil:
        cdef string ident = string(<char *>zmqapi.msg_data(&f[0]), zmqapi.msg_size(&f[0]))
        cdef uint64_t now = mono_ms()
        cdef int pi = self._peer_slot(ident, now)
        if pi < 0:
            return  # peer table full: strangers are ignored until slots free up
        cdef Peer *p = self.peers[pi]
        p.last_seen_ms = now
        if n < 2:
            self._error(pi, E_MALFORMED, 0, "empty message: expected a header frame")
            return
        cdef const uint8_t *h = <const uint8_t *>zmqapi.msg_data(&f[1])
        cdef size_t hlen = zmqapi.msg_size(&f[1])
        if hlen < 4:
            self._error(pi, E_MALFORMED, 0, "header frame shorter than the 4-byte prefix")
            return
        if h[0] != SIGNATURE or h[1] != VERSION:
            self._error(pi, E_BAD_VERSION, 0,
                        "signature/version not understood: this router speaks version 1")
            return
        cdef uint8_t cmd = h[2]
        if cmd == CMD_SEND:
            if n != 3 or extra:
                self._error(pi, E_MALFORMED, 0, "SEND takes a header frame and a payload frame")
                return
        elif n != 2 or extra:
            self._error(pi, E_MALFORMED, 0, "this command takes exactly one header frame")
            return
        if p.role == 0 and cmd != CMD_HELLO:
            self._error(pi, E_NOT_READY, 0, "send HELLO first (the router may have restarted)")
            return
        if cmd == CMD_SEND:
            self._on_send(pi, h, hlen, &f[2], now)
        elif cmd == CMD_ACK:
            self._on_ack(pi, h, hlen)
        elif cmd == CMD_HEARTBEAT:
            pass
        elif cmd == CMD_HELLO:
            self._on_hello(pi, h, hlen)
        elif cmd == CMD_BIND:
            self._on_bind(pi, h, hlen, 4)
        elif cmd == CMD_UNBIND:
            self._on_unbind(pi, h, hlen)
        elif cmd == CMD_JOIN or cmd == CMD_LEAVE:
            self._on_join(pi, h, hlen, cmd == CMD_LEAVE)
        elif cmd == CMD_BYE:
            self._drop_peer(pi, REASON_BYE)
        else:
            self._error(pi, E_UNKNOWN_COMMAND, 0, "unknown command, or one only the router sends")

    # ---- commands ----------------------------------------------------------------------

    cdef void _on_hello(self, int pi, const uint8_t *h, size_t hlen) noexcept nogil:
        cdef Peer *p = self.peers[pi]
        if hlen < 6 or 6 + <size_t>h[5] > hlen or h[5] == 0:
            self._error(pi, E_MALFORMED, 0, "HELLO needs role, a 1..255 byte name, cursor list")
            return
        if h[4] < ROLE_SENDER or h[4] > ROLE_WORKER:
            self._error(pi, E_BAD_ROLE, 0, "HELLO role must be 1 (sender) .. 4 (worker)")
            return
        if not valid_cursor_list(h, hlen, 6 + h[5]):
            self._error(pi, E_MALFORMED, 0, "HELLO cursor list does not match its length")
            return
        if p.role != 0:
            self._unbind_all(pi)  # a repeated HELLO replaces the previous bindings
        else:
            self.c.peers_connected += 1
        p.role = h[4]
        p.name = string(<const char *>h + 6, h[5])
        if not self._bind_cursors(pi, h, hlen, 6 + h[5]):
            return
        self._welcome(pi)
        self._event(EV_CONNECT, pi, 0)

    cdef void _on_bind(self, int pi, const uint8_t *h, size_t hlen, size_t off) noexcept nogil:
        if not valid_cursor_list(h, hlen, off):
            self._error(pi, E_MALFORMED, 0, "BIND cursor list does not match its length")
            return
        self._bind_cursors(pi, h, hlen, off)

    cdef bint _bind_cursors(self, int pi, const uint8_t *h, size_t hlen, size_t off) noexcept nogil:
        cdef uint16_t count = get16(h + off)
        cdef uint16_t i
        cdef int ai
        cdef uint8_t ln
        off += 2
        for i in range(count):
            ln = h[off]
            ai = self._address_slot(pi, h + off + 1, ln)
            if ai < 0:
                return False
            self._bind(pi, ai, get64(h + off + 1 + ln))
            off += 1 + ln + 8
        return True

    cdef void _on_unbind(self, int pi, const uint8_t *h, size_t hlen) noexcept nogil:
        if not valid_address_list(h, hlen, 4):
            self._error(pi, E_MALFORMED, 0, "UNBIND address list does not match its length")
            return
        cdef uint16_t count = get16(h + 4)
        cdef size_t off = 6
        cdef uint16_t i
        for i in range(count):
            it = self.addr_by_name.find(string(<const char *>h + off + 1, h[off]))
            if it != self.addr_by_name.end() and self.addrs[deref(it).second].peer == pi:
                self._unbind(pi, deref(it).second)
            off += 1 + h[off]

    cdef void _on_join(self, int pi, const uint8_t *h, size_t hlen, bint leave) noexcept nogil:
        if hlen < 5 or h[4] == 0 or not valid_address_list(h, hlen, 5 + <size_t>h[4]):
            self._error(pi, E_MALFORMED, 0, "JOIN/LEAVE needs a channel name and an address list")
            return
        if not valid_name(h + 5, h[4]):
            self._error(pi, E_BAD_ADDRESS, 0, "channel names are printable ASCII without spaces")
            return
        cdef string chan = string(<const char *>h + 5, h[4])
        cdef size_t off = 5 + <size_t>h[4]
        cdef uint16_t count = get16(h + off)
        cdef uint16_t i
        cdef int ai
        off += 2
        if leave and count == 0:
            self.channels.erase(chan)  # LEAVE with no addresses closes the channel
            return
        cdef vector[int] *members = &self.channels[chan]
        for i in range(count):
            ai = self._address_slot(pi, h + off + 1, h[off])
            if ai < 0:
                break
            if leave:
                remove_int(deref(members), ai)
            elif not contains_int(deref(members), ai):
                members.push_back(ai)
            off += 1 + h[off]
        if members.empty():
            self.channels.erase(chan)

    cdef void _on_ack(self, int pi, const uint8_t *h, size_t hlen) noexcept nogil:
        if not valid_cursor_list(h, hlen, 4):
            self._error(pi, E_MALFORMED, 0, "ACK cursor list does not match its length")
            return
        cdef uint16_t count = get16(h + 4)
        cdef size_t off = 6
        cdef uint16_t i
        for i in range(count):
            it = self.addr_by_name.find(string(<const char *>h + off + 1, h[off]))
            if it != self.addr_by_name.end():
                self._ack_to(deref(it).second, get64(h + off + 1 + h[off]))
            off += 1 + h[off] + 8
        self.c.acks_in += count

    cdef void _on_send(self, int pi, const uint8_t *h, size_t hlen, zmq_msg_t *payload,
                       uint64_t now) noexcept nogil:
        if hlen < 20:
            self._error(pi, E_MALFORMED, 0, "SEND header shorter than its 20 fixed bytes")
            return
        cdef uint64_t msg_id = get64(h + 4)
        cdef uint32_t ttl_ms = get32(h + 12)
        cdef uint8_t cls = h[16], lt = h[17], lk = h[18], lkey = h[19]
        cdef uint8_t flags = h[3]
        if hlen != 20 + <size_t>lt + lk + lkey:
            self._error(pi, E_MALFORMED, msg_id, "SEND header length does not match its fields")
            return
        if cls >= N_CLASSES:
            self._refuse(pi, msg_id, cls, E_BAD_CLASS, "message class must be 0..4")
            return
        if zmqapi.msg_size(payload) > self.max_payload:
            self._refuse(pi, msg_id, cls, E_TOO_LARGE,
                         "payload over the router's cap (see WELCOME max_payload)")
            return
        if lt == 0 or not valid_name(h + 20, lt):
            self._refuse(pi, msg_id, cls, E_BAD_ADDRESS,
                         "target must be 1..255 printable ASCII bytes without spaces")
            return
        cdef vector[int] single
        cdef vector[int] *targets = &single
        cdef string tname = string(<const char *>h + 20, lt)
        if flags & FLAG_CHANNEL:
            it = self.channels.find(tname)
            if it == self.channels.end():
                self._refuse(pi, msg_id, cls, E_UNKNOWN_CHANNEL, "no such channel: JOIN first")
                return
            targets = &deref(it).second
        else:
            single.push_back(self._address_slot(pi, h + 20, lt))
            if single[0] < 0:
                return  # _address_slot already refused
        cdef int code = self._admit(deref(targets), cls)
        if code != 0:
            self._refuse(pi, msg_id, cls, code,
                         "recipient queue full, retry later" if code == E_QUEUE_FULL
                         else "router overloaded, retry later")
            return
        cdef Msg *m = new Msg()
        zmqapi.msg_init(&m.payload)
        zmqapi.msg_move(&m.payload, payload)
        m.msg_id = msg_id
        m.accepted_us = wall_us()
        m.expire_us = now + ttl_ms if ttl_ms else 0
        m.sender = pi
        m.sender_gen = self.peers[pi].gen
        m.cls = cls
        m.refs = 0
        m.pending = 0
        m.finished = False
        build_template(m, flags, self.peers[pi].name,
                       tname if flags & FLAG_CHANNEL else string(), h + 20 + lt, lk)
        self.c.msgs_in[cls] += 1
        self.c.bytes_in += zmqapi.msg_size(&m.payload)
        if deref(targets).size() > 1:
            self.c.fanout += deref(targets).size() - 1
        cdef string key
        if cls == CLASS_LOCATION:
            key = string(<const char *>h + 20 + lt + lk, lkey) if lkey else self.peers[pi].name
        cdef size_t i
        m.refs = 1  # hold it while fanning out
        for i in range(deref(targets).size()):
            self._enqueue(deref(targets)[i], m, key)
        if cls <= CLASS_CHAT:
            self._receipt(m, ST_ACCEPTED, 0)
        self._release(m)

    cdef int _admit(self, vector[int] &targets, uint8_t cls) noexcept nogil:
        """0 to accept, or E_QUEUE_FULL / E_OVERLOADED to refuse a reliable message.

        Best-effort traffic is never refused: it is shed on enqueue instead."""
        cdef size_t i
        if cls > CLASS_CHAT:
            return 0
        if self.c.queued + targets.size() > self.max_queued:
            return E_OVERLOADED
        for i in range(targets.size()):
            if self.addrs[targets[i]].rel.size() >= self.max_queue:
                return E_QUEUE_FULL
        return 0

    cdef void _enqueue(self, int ai, Msg *m, const string &key) noexcept nogil:
        cdef Address *a = self.addrs[ai]
        cdef Entry e
        if m.cls <= CLASS_CHAT:
            a.next_seq += 1
            e.seq = a.next_seq
            e.msg = m
            a.rel.push_back(e)
            m.pending += 1
        elif m.cls == CLASS_NOTICE:
            if a.notices.size() >= self.max_queue or self.c.queued >= self.max_queued:
                self.c.shed += 1  # best effort: the oldest notice makes room
                if a.notices.empty():
                    return
                self._release(a.notices.front())
                a.notices.pop_front()
                self.c.queued -= 1
            a.notices.push_back(m)
        else:
            it = a.latest.find(key)
            if it != a.latest.end():
                self._release(deref(it).second)  # conflate: newest position wins
                deref(it).second = m
                self.c.conflated += 1
                self.c.queued -= 1
            else:
                a.latest[key] = m
                a.latest_order.push_back(key)
        m.refs += 1
        self.c.queued += 1
        if a.peer >= 0:
            self._mark_dirty(ai)

    # ---- sending -----------------------------------------------------------------------

    cdef void _flush(self) noexcept nogil:
        cdef size_t i
        cdef vector[int] keep
        for i in range(self.blocked_peers.size()):
            self.peers[self.blocked_peers[i]].blocked = False
        self.blocked_peers.clear()
        if not self.dirty.empty():
            for i in range(self.dirty.size()):
                if self._flush_address(self.dirty[i]):
                    keep.push_back(self.dirty[i])
            self.dirty.swap(keep)
        if not self.receipt_peers.empty():
            keep.clear()
            for i in range(self.receipt_peers.size()):
                if not self._flush_receipts(self.receipt_peers[i]):
                    keep.push_back(self.receipt_peers[i])
            self.receipt_peers.swap(keep)

    cdef bint _flush_address(self, int ai) noexcept nogil:
        """Send what the window allows; True if the address must be retried later."""
        cdef Address *a = self.addrs[ai]
        cdef int pi = a.peer
        cdef int rc
        cdef Msg *m
        cdef uint64_t now = mono_ms()
        if pi < 0:
            a.dirty = False
            return False
        cdef Peer *p = self.peers[pi]
        if p.blocked:
            return True
        while a.sent < a.rel.size() and a.sent < self.window:
            m = a.rel[a.sent].msg
            if m.expire_us and now >= m.expire_us:
                self._expire_entry(a, a.sent)
                continue
            rc = self._deliver(p, a, m, a.rel[a.sent].seq)
            if rc != 0:
                return self._send_failed(pi, rc)
            a.sent += 1
        while not a.notices.empty():
            rc = self._deliver(p, a, a.notices.front(), 0)
            if rc != 0:
                return self._send_failed(pi, rc)
            self._release(a.notices.front())
            a.notices.pop_front()
            self.c.queued -= 1
        while not a.latest_order.empty():
            it = a.latest.find(a.latest_order.front())
            m = deref(it).second
            rc = self._deliver(p, a, m, 0)
            if rc != 0:
                return self._send_failed(pi, rc)
            a.latest.erase(it)
            a.latest_order.pop_front()
            self._release(m)
            self.c.queued -= 1
        a.dirty = False
        return False

    cdef bint _send_failed(self, int pi, int rc) noexcept nogil:
        if rc > 0:
            self.peers[pi].blocked = True
            self.blocked_peers.push_back(pi)
            self.c.blocked_sends += 1
            return True
        self._drop_peer(pi, REASON_UNREACHABLE)
        return False

    cdef int _deliver(self, Peer *p, Address *a, Msg *m, uint64_t seq) noexcept nogil:
        """Send one DELIVER: 0 sent, 1 peer's pipe full, -1 peer unreachable."""
        cdef char buf[DELIVER_FIXED + 4 * 255]
        cdef size_t tl = m.tmpl.size()
        cdef size_t la = a.name.size()
        cdef zmq_msg_t body
        cdef int err
        memcpy(buf, m.tmpl.data(), tl)
        put64(<uint8_t *>buf + 4, seq)
        buf[32] = <char>la
        memcpy(buf + tl, a.name.data(), la)
        if zmqapi.send(self.sock, p.identity.data(), p.identity.size(),
                       ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0:
            err = zmqapi.errno_()
            return 1 if err == EAGAIN else -1
        # after the routing frame is accepted the rest of the message cannot block
        zmqapi.send(self.sock, buf, tl + la, ZMQ_SNDMORE)
        zmqapi.msg_init(&body)
        zmqapi.msg_copy(&body, &m.payload)
        if zmqapi.msg_send(&body, self.sock, 0) < 0:
            zmqapi.msg_close(&body)
        self.c.msgs_out[m.cls] += 1
        self.c.bytes_out += zmqapi.msg_size(&m.payload)
        return 0

    cdef void _mark_dirty(self, int ai) noexcept nogil:
        cdef Address *a = self.addrs[ai]
        if not a.dirty:
            a.dirty = True
            self.dirty.push_back(ai)

    # ---- acks, expiry and receipts -------------------------------------------------------

    cdef void _ack_to(self, int ai, uint64_t seq) noexcept nogil:
        cdef Address *a = self.addrs[ai]
        cdef Msg *m
        if seq > a.next_seq:
            seq = a.next_seq
        if seq <= a.acked:
            return
        while not a.rel.empty() and a.rel.front().seq <= seq:
            m = a.rel.front().msg
            a.rel.pop_front()
            if a.sent > 0:
                a.sent -= 1
            m.pending -= 1
            if m.pending == 0 and not m.finished:
                m.finished = True
                self._receipt(m, ST_DELIVERED, 0)
            self._release(m)
            self.c.queued -= 1
        a.acked = seq
        if a.peer >= 0 and a.sent < a.rel.size():
            self._mark_dirty(ai)

    cdef void _expire_entry(self, Address *a, size_t idx) noexcept nogil:
        """Drop an unsent entry whose TTL passed; its seq is skipped, never reused."""
        cdef Msg *m = a.rel[idx].msg
        a.rel.erase(a.rel.begin() + idx)
        m.pending -= 1
        if not m.finished:
            m.finished = True
            self._receipt(m, ST_EXPIRED, E_EXPIRED)
        self.c.expired += 1
        self.c.queued -= 1
        self._release(m)

    cdef void _receipt(self, Msg *m, uint8_t status, uint16_t code) noexcept nogil:
        self._receipt_to(m.sender, m.sender_gen, m.msg_id, status, code)

    cdef void _receipt_to(self, int pi, uint32_t gen, uint64_t msg_id, uint8_t status,
                          uint16_t code) noexcept nogil:
        cdef Peer *p = self.peers[pi]
        cdef uint8_t entry[11]
        self.c.receipts[status] += 1
        if not p.live or p.gen != gen:
            self.c.receipts_dropped += 1
            return
        put64(entry, msg_id)
        entry[8] = status
        put16(entry + 9, code)
        if p.nreceipts == 0:
            p.receipts.assign(<const char *>b"\xd5\x01\x13\x00\x00\x00", 6)
            self.receipt_peers.push_back(pi)
        p.receipts.append(<const char *>entry, 11)
        p.nreceipts += 1
        if p.nreceipts >= RECEIPT_FLUSH:
            self._flush_receipts(pi)

    cdef bint _flush_receipts(self, int pi) noexcept nogil:
        """Send the peer's batched receipts; False if its pipe is full (kept for later)."""
        cdef Peer *p = self.peers[pi]
        if p.nreceipts == 0 or not p.live:
            return True
        put16(<uint8_t *>p.receipts.data() + 4, <uint16_t>p.nreceipts)
        if zmqapi.send(self.sock, p.identity.data(), p.identity.size(),
                       ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0:
            if zmqapi.errno_() == EAGAIN and p.nreceipts < 60000:
                return False
            self.c.receipts_dropped += p.nreceipts
        else:
            zmqapi.send(self.sock, p.receipts.data(), p.receipts.size(), 0)
        p.nreceipts = 0
        return True

    cdef void _refuse(self, int pi, uint64_t msg_id, uint8_t cls, uint16_t code,
                      const char *text) noexcept nogil:
        """Refuse one SEND: a REFUSED receipt for reliable (or unknown) classes, and an ERROR."""
        if cls <= CLASS_CHAT or cls >= N_CLASSES:
            self._receipt_to(pi, self.peers[pi].gen, msg_id, ST_REFUSED, code)
        self._error(pi, code, msg_id, text)

    cdef void _error(self, int pi, uint16_t code, uint64_t msg_id, const char *text) noexcept nogil:
        """Send ERROR to one peer, at most errors_per_second of them per second."""
        cdef Peer *p = self.peers[pi]
        cdef uint64_t now = mono_ms()
        cdef uint8_t hdr[14]
        cdef size_t tl = 0
        if now - p.err_window_ms >= 1000:
            p.err_window_ms = now
            p.errs = 0
        p.errs += 1
        if p.errs > self.errors_per_second + 1:
            self.c.errors_suppressed += 1
            return
        if p.errs == self.errors_per_second + 1:
            code = E_RATE_LIMITED
            msg_id = 0
            text = "too many bad requests: further errors this second are not reported"
        hdr[0] = SIGNATURE
        hdr[1] = VERSION
        hdr[2] = CMD_ERROR
        hdr[3] = 0
        put16(hdr + 4, code)
        put64(hdr + 6, msg_id)
        while text[tl] != 0:
            tl += 1
        if code < 17:
            self.c.errors[code] += 1
        if zmqapi.send(self.sock, p.identity.data(), p.identity.size(),
                       ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0:
            return
        zmqapi.send(self.sock, hdr, 14, ZMQ_SNDMORE)
        zmqapi.send(self.sock, text, tl, 0)
        if code != E_RATE_LIMITED and code != E_QUEUE_FULL and code != E_OVERLOADED:
            self._event(EV_ERROR, pi, code)

    cdef void _welcome(self, int pi) noexcept nogil:
        cdef Peer *p = self.peers[pi]
        cdef uint8_t hdr[13]
        hdr[0] = SIGNATURE
        hdr[1] = VERSION
        hdr[2] = CMD_WELCOME
        hdr[3] = 0
        put32(hdr + 4, self.hb_ms)
        hdr[8] = <uint8_t>self.liveness
        put32(hdr + 9, self.max_payload)
        if zmqapi.send(self.sock, p.identity.data(), p.identity.size(),
                       ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0:
            zmqapi.send(self.sock, hdr, 13, 0)

    # ---- peers and addresses -------------------------------------------------------------

    cdef int _peer_slot(self, const string &ident, uint64_t now) noexcept nogil:
        it = self.peer_by_id.find(ident)
        if it != self.peer_by_id.end():
            return deref(it).second
        cdef int pi
        cdef Peer *p
        if self.peer_by_id.size() >= self.max_peers:
            return -1
        if not self.free_peers.empty():
            pi = self.free_peers.back()
            self.free_peers.pop_back()
            p = self.peers[pi]
        else:
            pi = <int>self.peers.size()
            p = new Peer()
            p.gen = 0
            self.peers.push_back(p)
        p.identity = ident
        p.name.clear()
        p.role = 0
        p.live = True
        p.last_seen_ms = now
        p.addrs.clear()
        p.receipts.clear()
        p.nreceipts = 0
        p.err_window_ms = 0
        p.errs = 0
        p.blocked = False
        self.peer_by_id[ident] = pi
        return pi

    cdef int _address_slot(self, int pi, const uint8_t *name, uint8_t ln) noexcept nogil:
        """Find or create an address; on a bad name or a full table, refuse and return -1."""
        if ln == 0 or not valid_name(name, ln):
            self._error(pi, E_BAD_ADDRESS, 0,
                        "addresses are 1..255 printable ASCII bytes without spaces")
            return -1
        cdef string key = string(<const char *>name, ln)
        it = self.addr_by_name.find(key)
        if it != self.addr_by_name.end():
            return deref(it).second
        if self.addrs.size() >= self.max_addresses:
            self._error(pi, E_ADDRESS_LIMIT, 0, "the router's address table is full")
            return -1
        cdef Address *a = new Address()
        a.name = key
        a.peer = -1
        a.next_seq = 0
        a.acked = 0
        a.sent = 0
        a.dirty = False
        cdef int ai = <int>self.addrs.size()
        self.addrs.push_back(a)
        self.addr_by_name[key] = ai
        return ai

    cdef void _bind(self, int pi, int ai, uint64_t cursor) noexcept nogil:
        """Bind an address to a peer; ``cursor`` is the last sequence the peer holds."""
        cdef Address *a = self.addrs[ai]
        if a.peer >= 0 and a.peer != pi:
            remove_int(self.peers[a.peer].addrs, ai)  # the newest binding wins
        if a.peer != pi:
            self.peers[pi].addrs.push_back(ai)
        a.peer = pi
        if cursor > a.next_seq:
            # The peer holds sequences this router never issued (its state was lost):
            # continue numbering above the cursor so nothing new looks like a repeat.
            a.next_seq = cursor
        self._ack_to(ai, cursor)
        a.sent = 0  # anything unacked goes again, in order
        self._mark_dirty(ai)

    cdef void _unbind(self, int pi, int ai) noexcept nogil:
        cdef Address *a = self.addrs[ai]
        remove_int(self.peers[pi].addrs, ai)
        a.peer = -1
        a.sent = 0

    cdef void _unbind_all(self, int pi) noexcept nogil:
        cdef Peer *p = self.peers[pi]
        cdef size_t i
        cdef Address *a
        for i in range(p.addrs.size()):
            a = self.addrs[p.addrs[i]]
            if a.peer == pi:
                a.peer = -1
                a.sent = 0
        p.addrs.clear()

    cdef void _drop_peer(self, int pi, int reason) noexcept nogil:
        """Forget a peer: its addresses go offline and keep their queues."""
        cdef Peer *p = self.peers[pi]
        if not p.live:
            return
        if p.role != 0:
            self._event(EV_DISCONNECT, pi, reason)
            if reason != REASON_BYE:
                self.c.peers_lost += 1
        self._unbind_all(pi)
        self.c.receipts_dropped += p.nreceipts
        p.nreceipts = 0
        p.live = False
        p.gen += 1
        self.peer_by_id.erase(p.identity)
        self.free_peers.push_back(pi)

    cdef void _tick(self, uint64_t now) noexcept nogil:
        """Liveness and heartbeats, every TICK_MS."""
        cdef size_t i
        cdef Peer *p
        cdef uint64_t dead_after = <uint64_t>self.hb_ms * self.liveness
        cdef bint beat = now >= self.next_hb_ms
        cdef uint8_t hb[4]
        hb[0] = SIGNATURE
        hb[1] = VERSION
        hb[2] = CMD_HEARTBEAT
        hb[3] = 0
        self.next_tick_ms = now + TICK_MS
        if beat:
            self.next_hb_ms = now + self.hb_ms
        for i in range(self.peers.size()):
            p = self.peers[i]
            if not p.live:
                continue
            if now - p.last_seen_ms > dead_after:
                self._drop_peer(<int>i, REASON_TIMEOUT)
            elif beat and p.role != 0:
                if zmqapi.send(self.sock, p.identity.data(), p.identity.size(),
                               ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0:
                    zmqapi.send(self.sock, hb, 4, 0)
                elif zmqapi.errno_() == EHOSTUNREACH:
                    self._drop_peer(<int>i, REASON_UNREACHABLE)

    cdef void _release(self, Msg *m) noexcept nogil:
        m.refs -= 1
        if m.refs <= 0:
            zmqapi.msg_close(&m.payload)
            del m

    cdef void _drop_latest(self, Address *a) noexcept nogil:
        it = a.latest.begin()
        while it != a.latest.end():
            self._release(deref(it).second)
            inc(it)
        a.latest.clear()
        a.latest_order.clear()

    cdef void _event(self, int kind, int pi, int code) noexcept nogil:
        cdef Event e
        cdef Peer *p = self.peers[pi]
        if self.events.size() >= 10000:
            return  # Python is not draining: drop rather than grow
        e.kind = kind
        e.code = code
        e.role = p.role
        e.naddrs = <uint32_t>p.addrs.size()
        e.name = p.name
        e.identity = p.identity
        self.events.push_back(e)
