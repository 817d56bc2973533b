# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# distutils: language = c++
"""Native routing core: the per-message path of the router.

One ROUTER socket, served by a loop that runs without the GIL: receive a multipart
message with zmq_msg_recv, parse the binary header (docs/PROTOCOL.md), look up the route,
assign the per-address sequence, send DELIVER frames, track acks and batch receipts.
Payloads are never decoded: the payload frame is moved into the queue and shared with
zmq_msg_copy for every delivery. Everything else (configuration, sockets, logging,
metrics) is Python in the ``router`` package, which owns a :class:`Core`.

The state is declared in core.pxd. This file is the class's Python API; the hot path is
module-level functions over a typed Core, one file per concern, included below in the
order a message meets them.
"""

import os
import zmq  # loads libzmq into the process before we resolve its symbols

from libc.string cimport memcmp, memcpy, memset
from libc.stdio cimport snprintf
from libc.errno cimport EAGAIN, EINTR, EHOSTUNREACH
from cython.operator cimport dereference as deref, preincrement as inc

include "protocol.pxi"    # wire constants and layouts, generated from router/protocol.py
include "runtime.pxi"     # libzmq resolution, clocks, build facts
include "wire.pxi"        # byte order, name and list validation, DELIVER templates
include "buckets.pxi"     # histogram bucket bounds, observe()
include "observe.pxi"     # gauges walked over the address table
include "loop.pxi"        # one pass: receive, commit, send, tick
include "commands.pxi"    # each command's handler
include "peers.pxi"       # connection slots, HELLO budget, WELCOME, events
include "addresses.pxi"   # address table and bindings
include "queues.pxi"      # admission, enqueue by class, quotas, the Msg pool
include "journal.pxi"     # journal record layout and CRC
include "durable.pxi"     # group commit, rollback, replay
include "dedup.pxi"       # dedup windows
include "delivery.pxi"    # flushing addresses to their peers
include "acks.pxi"        # acks, redelivery, TTL expiry
include "receipts.pxi"    # receipts, batches, the outbox
include "errors.pxi"      # ERROR / REFUSED, rate limit, quarantine faults
include "auth.pxi"        # principals, rights per name, send budgets, revocation
include "history.pxi"     # order history events


cdef class Core:
    """The routing state and loop for one ROUTER socket.

    Create it with a bound pyzmq ROUTER socket (``ROUTER_MANDATORY`` set) and call
    :meth:`run` repeatedly; each call serves for at most ``timeout_ms`` and returns so
    that Python can handle signals, logs and metrics.
    """

    def __cinit__(self, socket, *, uint32_t max_payload=1 << 20, uint32_t window=1024,
                  uint32_t max_queue=100000, uint32_t max_addresses=1000000,
                  uint32_t max_peers=100000, uint32_t heartbeat_ms=1000,
                  uint32_t liveness=3, uint32_t errors_per_second=20,
                  uint64_t max_queued=5000000, uint64_t max_queued_per_sender=1000000,
                  store=None, uint32_t dedup_ms=120000,
                  uint32_t retry_ms=1000, uint32_t retry_max_ms=30000,
                  uint32_t max_attempts=20, int batch=512, size_t dedup_capacity=2000000,
                  uint64_t address_idle_ms=600000, uint64_t channel_idle_ms=7200000):
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
        self.max_queued_per_sender = max_queued_per_sender
        self.store = store
        self.dedup_ms = dedup_ms
        self.retry_ms = max(retry_ms, 1)
        self.retry_max_ms = max(retry_max_ms, retry_ms)
        self.max_attempts = max_attempts
        self.address_idle_ms = address_idle_ms
        self.channel_idle_ms = channel_idle_ms
        self.batch = max(batch, 1)
        self.seg_live.push_back(0)
        # sender number 0: no sender (never interned)
        self.sender_queued.push_back(0)
        self.sender_names.push_back(string())
        self.sender_last_ms.push_back(0)
        self.sender_refs.push_back(0)
        self.sender_limit.push_back(0)
        # Sized once: growing a hash table rehashes every entry in one step, which would
        # stop the loop for ~0.2 us per entry (100 ms at 500k entries).
        self.dedup.reserve(dedup_capacity)
        self.dedup.set_seed(int.from_bytes(os.urandom(8), "little"))
        self.addr_by_name.set_seed(int.from_bytes(os.urandom(8), "little"))
        _clock(self)
        self.last_pi = -1
        self.next_tick_ms = mono_ms() + TICK_MS
        self.next_hb_ms = mono_ms() + heartbeat_ms

    def __dealloc__(self):
        cdef size_t i
        cdef Address *a
        for i in range(self.addrs.size()):
            a = self.addrs[i]
            while not a.rel.empty():
                _release(self, a.rel.front().msg)
                a.rel.pop_front()
            while not a.notices.empty():
                _release(self, a.notices.front())
                a.notices.pop_front()
            _drop_latest(self, a)
            del a
        for i in range(self.peers.size()):
            del self.peers[i]
        for i in range(self.msg_pool.size()):
            del self.msg_pool[i]

    # ---- Python API (off the hot path) ----------------------------------------------

    def run(self, int timeout_ms) -> int:
        """Serve for up to ``timeout_ms``; return the number of messages handled.

        Returns early when a signal interrupts the wait, so the caller's handlers run.
        """
        cdef long n
        with nogil:
            n = _run(self, timeout_ms)
        if n == LEASE_GONE:
            raise LeaseExpired("the leadership lease ran out: this core no longer serves")
        if n < 0:
            raise zmq.ZMQError(zmqapi.errno_())
        return n

    def set_lease_until(self, double monotonic_s) -> None:
        """Serve only before ``monotonic_s`` (time.monotonic()); 0: no lease. Past it
        the core sends nothing and :meth:`run` raises LeaseExpired."""
        self.lease_until_ms = <uint64_t>(monotonic_s * 1000) if monotonic_s > 0 else 0

    def stats(self) -> dict:
        """A snapshot of the native counters and table sizes."""
        cdef int i
        cdef Counters *c
        # Lists indexed by the protocol's numbers (MsgClass, Status, ErrorCode): names
        # come from router.protocol, the one table, where they are shown.
        d = {
            "msgs_in": [self.c.msgs_in[i] for i in range(N_CLASSES)],
            "msgs_out": [self.c.msgs_out[i] for i in range(N_CLASSES)],
            "receipts": [self.c.receipts[i] for i in range(6)],
            "errors": {i: self.c.errors[i] for i in range(32) if self.c.errors[i]},
            "refused": {i: self.c.refused[i] for i in range(32) if self.c.refused[i]},
        }
        c = &self.c
        d.update(bytes_in=c.bytes_in, bytes_out=c.bytes_out, fanout=c.fanout,
                 receipts_dropped=c.receipts_dropped, acks_in=c.acks_in,
                 errors_suppressed=c.errors_suppressed, shed=c.shed, conflated=c.conflated,
                 expired=c.expired, blocked_sends=c.blocked_sends,
                 peers_connected=c.peers_connected, peers_lost=c.peers_lost,
                 queued=c.queued, loops=c.loops, dedup_hits=c.dedup_hits,
                 redeliveries=c.redeliveries, failed=c.failed, commits=c.commits,
                 commit_failures=c.commit_failures, journal_bytes=c.journal_bytes,
                 replayed=c.replayed, takeovers=c.takeovers, quarantined=c.quarantined,
                 addresses_created=c.addresses_created,
                 addresses_reclaimed=c.addresses_reclaimed,
                 channels_closed_idle=c.channels_closed_idle, replaced=c.replaced,
                 senders_reclaimed=c.senders_reclaimed, rate_exceeded=c.rate_exceeded,
                 revoked=c.revoked, packs_in=c.packs_in, packed_in=c.packed_in,
                 packs_out=c.packs_out, packed_out=c.packed_out,
                 pack_window_full=c.pack_window_full)
        d["peers"] = self.peer_by_id.size()
        d["addresses"] = self.addr_by_name.size()
        d["address_slots"] = self.addrs.size()  # live + reclaimed slots waiting for reuse
        d["seq_floor"] = self.seq_floor
        d["sender_names"] = self.sender_ids.size()
        d["dedup_entries"] = self.dedup.size()
        d["dedup_capacity"] = self.dedup.capacity()
        d["channels"] = self.channels.size()
        return d

    def metrics(self) -> dict:
        """Everything the Prometheus collector exports: counters, histogram buckets
        (non-cumulative, microsecond sums) and gauges computed from the tables. Call it
        from the thread that runs the loop (router.metrics snapshots between slices)."""
        cdef size_t i
        _walk_addresses(self, WALK_PER_SNAPSHOT)
        roles = [0] * (ROLE_WORKER + 1)  # by Role; 0: not said HELLO yet
        for i in range(self.peers.size()):
            if (self.peers[i].live and not self.peers[i].gone
                    and self.peers[i].role <= ROLE_WORKER):
                roles[self.peers[i].role] += 1
        d = self.stats()
        d.update({
            "hop": [[self.c.hop[k][i] for i in range(N_BUCKETS)] for k in range(N_CLASSES)],
            "hop_sum_us": [self.c.hop_sum_us[k] for k in range(N_CLASSES)],
            "delivery": [[self.c.delivery[k][i] for i in range(N_BUCKETS)]
                         for k in range(N_CLASSES)],
            "delivery_sum_us": [self.c.delivery_sum_us[k] for k in range(N_CLASSES)],
            "delivery_offline": [[self.c.delivery_offline[k][i] for i in range(N_BUCKETS)]
                                 for k in range(N_CLASSES)],
            "delivery_offline_sum_us": [self.c.delivery_offline_sum_us[k]
                                        for k in range(N_CLASSES)],
            "commit": [self.c.commit[i] for i in range(N_BUCKETS)],
            "commit_sum_us": self.c.commit_sum_us,
            "queued_by_kind": {"reliable": self.gauges[0], "notice": self.gauges[1],
                               "location": self.gauges[2]},
            "offline_backlog": self.gauges[3],
            "bound_addresses": self.gauges[4],
            "offline_addresses": self.gauges[5],
            "oldest_queued_us": (wall_us() - self.oldest_us
                                 if self.oldest_us and wall_us() > self.oldest_us else 0),
            "ttl_timers": self.timers.size(),
            "reclaim_max_us": self.c.reclaim_max_us,
            "addresses": self.addr_by_name.size(),
            "address_limit": self.max_addresses,
            "peers_by_role": {"sender": roles[ROLE_SENDER], "endpoint": roles[ROLE_ENDPOINT],
                              "gateway": roles[ROLE_GATEWAY], "worker": roles[ROLE_WORKER]},
        })
        self.c.reclaim_max_us = 0  # a fresh maximum for the next snapshot
        return d

    def send(self, bytes identity, bytes header, bytes payload) -> bool:
        """Send one message the broker composed (a REQUEST to a worker, a REPLY, an
        ERROR) to a connected peer, through the core's view of its peers: nothing goes
        to a peer known to be gone, and one found unreachable is marked gone (its
        disconnect reaches the broker as an event), as for the core's own sends.
        False if it was not sent (gone, unknown, or its pipe is full)."""
        it = self.peer_by_id.find(identity)
        if it == self.peer_by_id.end():
            return False
        cdef int pi = deref(it).second
        cdef Peer *p = self.peers[pi]
        if not p.live or p.gone:
            return False
        if zmqapi.send(self.sock, p.identity.data(), p.identity.size(),
                       ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0:
            if zmqapi.errno_() == EHOSTUNREACH:
                _unreachable(self, pi)
            else:
                self.c.blocked_sends += 1
            return False
        # after the routing frame is accepted the rest of the message cannot block
        zmqapi.send(self.sock, <const char *>header, len(header), ZMQ_SNDMORE)
        zmqapi.send(self.sock, <const char *>payload, len(payload), 0)
        return True

    def peer_alive(self, bytes identity) -> bool:
        """Whether the connection with this routing id is a live peer (the broker
        checks its workers against it, in case a disconnect event was lost)."""
        it = self.peer_by_id.find(identity)
        if it == self.peer_by_id.end():
            return False
        cdef Peer *p = self.peers[deref(it).second]
        return p.live and not p.gone

    def drain_broker(self) -> list:
        """Service commands since the last call: ``(identity, header, payload,
        principal)``, the principal an index in the list given to set_auth (-1: none)."""
        out = [(bytes(b.identity), bytes(b.header), bytes(b.payload), b.principal)
               for b in self.broker_inbox]
        self.broker_inbox.clear()
        return out

    # ---- trust (auth.pxi) -----------------------------------------------------------

    def set_auth(self, list principals, dict keys, dict rights) -> int:
        """Load compiled credentials, replacing any before (a reload), and apply them
        to the connected peers: a peer whose key is gone, or whose role or name is no
        longer allowed, is revoked (ERROR REVOKED, dropped, its socket shut down); an
        address a peer may no longer bind is unbound. Returns the peers revoked.

        ``principals``: ``(name, roles, names, rules, msg_rate, byte_rate, burst_s,
        quota)`` each, ``roles`` a mask of 1 << Role, ``names`` HELLO name patterns,
        ``rules`` ``(rights mask, pattern)``; a pattern (bytes) ending in ``*`` is a
        prefix. ``keys``: ZAP User-Id (bytes) -> index in ``principals``. ``rights``:
        the Action bits, ``{"bind": int, "join": int, "send": [5 ints by class],
        "channel": [5 ints by class]}``."""
        cdef Principal who
        cdef size_t i
        cdef uint64_t before = self.c.revoked
        for i in range(self.principals.size()):
            self.sender_refs[self.principals[i].quota_sid] -= 1
        self.principals.clear()
        for entry in principals:
            self.principals.push_back(who)
            _load_principal(self, &self.principals.back(), entry)
        self.principal_by_key.clear()
        for key, index in keys.items():
            if not 0 <= index < len(principals):
                raise ValueError(f"key {key!r} names principal {index}: out of range")
            self.principal_by_key[<string>key] = <int>index
        self.right_bind = rights["bind"]
        self.right_join = rights["join"]
        for i in range(N_CLASSES):
            self.right_send[i] = rights["send"][i]
            self.right_channel[i] = rights["channel"][i]
        self.auth = True
        self.auth_epoch += 1  # every cached grant is stale
        _recheck_peers(self)
        return self.c.revoked - before

    def drain_events(self) -> list:
        """Connects, disconnects and errors since the last call, as tuples
        ``(kind, name, role, identity, code, naddrs)`` with kind in
        ``"connect" | "disconnect" | "error" | "storage" | "takeover"``; for a disconnect
        ``code`` is the reason: ``"bye" | "heartbeat timeout" | "unreachable" | "replaced by a new connection" |
        "credentials revoked"``; for a
        takeover (another connection bound one of this peer's addresses) it is the text
        ``"<address> by <new holder's name>"``."""
        kinds = {EV_CONNECT: "connect", EV_DISCONNECT: "disconnect", EV_ERROR: "error",
                 EV_STORAGE: "storage", EV_TAKEOVER: "takeover"}
        reasons = {REASON_BYE: "bye", REASON_TIMEOUT: "heartbeat timeout",
                   REASON_UNREACHABLE: "unreachable",
                   REASON_REPLACED: "replaced by a new connection",
                   REASON_REVOKED: "credentials revoked"}
        out = [(kinds[e.kind], e.name.decode(errors="replace"), e.role, bytes(e.identity),
                reasons[e.code] if e.kind == EV_DISCONNECT else
                e.detail.decode(errors="replace") if e.kind == EV_TAKEOVER else e.code,
                e.naddrs)
               for e in self.events]
        self.events.clear()
        return out

    def online(self) -> dict:
        """Presence: bound address -> when it came online, Unix time in seconds."""
        out = {}
        for i in range(self.addrs.size()):
            if self.addrs[i].peer >= 0:
                out[self.addrs[i].name.decode(errors="replace")] = \
                    self.addrs[i].online_since_us / 1e6
        return out

    # ---- journal and history (called by router.journal / router.history) ---------------

    def set_segment(self, uint32_t segment) -> None:
        """Records appended from now on belong to journal segment ``segment``."""
        while self.seg_live.size() <= segment:
            self.seg_live.push_back(0)
        self.segment = segment

    def segment_live(self, uint32_t segment) -> int:
        """Messages of ``segment`` still held (not acked, expired or failed)."""
        return self.seg_live[segment] if segment < self.seg_live.size() else 0

    def checkpoint(self) -> bytes:
        """The head of a new segment: the numbering floor of new addresses, and CURSOR
        records for every address with a sequence, so that compacting older segments
        never loses an address's numbering."""
        cdef string buf
        cdef size_t i, start
        cdef Address *a
        cdef uint8_t floor[JFLOOR_FIXED]
        cdef uint8_t cursor[JCURSOR_FIXED]
        if self.seq_floor:
            start = rec_begin(buf, REC_FLOOR)
            put64(floor + JFLOOR_SEQ, self.seq_floor)
            buf.append(<const char *>floor, JFLOOR_FIXED)
            rec_end(buf, start)
        for i in range(self.addrs.size()):
            a = self.addrs[i]
            if a.next_seq == 0 or a.free:
                continue
            start = rec_begin(buf, REC_CURSOR)
            put64(cursor + JCURSOR_NEXT_SEQ, a.next_seq)
            put64(cursor + JCURSOR_ACKED, a.acked)
            buf.append(<const char *>cursor, JCURSOR_FIXED)
            rec_name(buf, a.name)
            rec_end(buf, start)
        return buf

    def replay(self, const uint8_t[::1] data, uint32_t segment) -> tuple:
        """Restore state from journal records (one segment's bytes, in order).

        Returns ``(good_bytes, records)``: parsing stops at the first record that is
        truncated or fails its CRC; everything before it has been applied.
        """
        cdef size_t off = 0, n = data.shape[0]
        cdef uint32_t blen
        cdef long records = 0
        cdef const uint8_t *p
        if n == 0:
            return (0, 0)
        self.set_segment(segment)
        self.replay_sid = 0
        self.replay_msg = NULL
        self.replaying = True
        try:
            while off + REC_HEAD <= n:
                p = &data[off]
                blen = get32(p + REC_LEN)
                if (blen == 0 or off + REC_HEAD + blen > n
                        or crc32c(p + REC_HEAD, blen) != get32(p + REC_CRC)):
                    break
                if not _replay_record(self, p + REC_HEAD, blen):
                    break
                off += REC_HEAD + blen
                records += 1
        finally:
            self.replaying = False
        return (off, records)

    def drain_history(self) -> bytes:
        """History events (order-linked messages) since the last call, as bytes."""
        out = <bytes>self.history
        self.history.clear()
        return out

    @property
    def store_error(self):
        """The last exception the store raised on commit, or None."""
        return self._store_error

cdef void _rule(Rule *r, bytes pattern, uint32_t mask):
    r.mask = mask
    r.prefix = pattern.endswith(b"*")
    r.pattern = pattern[:len(pattern) - 1] if r.prefix else pattern


cdef void _load_principal(Core self, Principal *who, tuple entry):
    """One compiled principal (Core.set_auth) into the table; its budgets start full."""
    cdef Rule r
    name, roles, names, rules, msg_rate, byte_rate, burst, quota = entry
    who.name = name
    who.roles = roles
    for pattern in names:
        _rule(&r, pattern, 1)
        who.names.push_back(r)
    for mask, pattern in rules:
        _rule(&r, pattern, mask)
        who.rules.push_back(r)
    who.msg_rate = msg_rate
    who.byte_rate = byte_rate
    who.msg_burst = max(msg_rate * burst, 1.0)
    who.byte_burst = max(byte_rate * burst, 1.0)
    who.msg_tokens = who.msg_burst
    who.byte_tokens = who.byte_burst
    who.refill_us = self.now_us
    # the quota's counter: a name no HELLO can give (\x01 first), held while loaded
    who.quota_sid = _intern(self, b"\x01principal:" + name)
    self.sender_refs[who.quota_sid] += 1
    self.sender_limit[who.quota_sid] = quota


    # ---- the loop ----------------------------------------------------------------------

    # ---- commands ----------------------------------------------------------------------

    # ---- durability ----------------------------------------------------------------------

    # ---- sending -----------------------------------------------------------------------

    # ---- acks, expiry and receipts -------------------------------------------------------

    # ---- peers and addresses -------------------------------------------------------------
