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

import os
import zmq  # loads libzmq into the process before we resolve its symbols

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcmp, memcpy, memset
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
include "journal.pxi"
include "history.pxi"

cdef enum:
    EV_CONNECT = 1
    EV_DISCONNECT = 2
    EV_ERROR = 3
    EV_STORAGE = 4
    EV_TAKEOVER = 5
    OUTBOX_MAX = 100000       # receipts kept per disconnected sender name
    OUTBOX_NAMES = 10000      # disconnected sender names with kept receipts
    DEDUP_EXPIRE_PER_TICK = 20000  # dedup entries ended per tick at most (~7 ms)
    EXPIRE_PER_TICK = 20000        # TTL expiries per tick at most (the rest: next tick)
    WALK_PER_SNAPSHOT = 100000     # addresses summed per metrics snapshot (~1-2 ms)
    H_ACCEPTED = 1            # history event kinds (router/history.py reads them)
    H_SENT = 2
    H_ACKED = 3
    H_FINAL = 4
    REASON_BYE = 1
    REASON_TIMEOUT = 2
    REASON_UNREACHABLE = 3
    RECEIPT_FLUSH = 4096      # entries per RECEIPT frame at most
    TICK_MS = 50              # housekeeping period: liveness, heartbeats
    DELIVER_FIXED = 33        # prefix + seq, msg id, accepted_us, class, 4 lengths
    N_CLASSES = 5
    LOOKAHEAD = 4             # messages received ahead of the one handled (prefetching)
    PREFETCH_GAP = 2          # ... of which the newest have only their slot prefetched
    RING = 8                  # > LOOKAHEAD: frames of received, unhandled messages
    MSG_POOL = 4096           # released Msgs kept for reuse (~1.3 MB)
    HELLOS_PER_SECOND = 4     # per connection: a correct peer sends one per connection
    BROKER_BATCH = 256        # service commands handed to the broker at most per return
    BROKER_WAIT_MS = 5        # ... and the longest one waits for it while input flows
    ADDRESS_LINES = 5         # cache lines of an Address (sizeof ~ 300 bytes)

cdef inline const char *admit_text(int code) noexcept nogil:
    """The human message of a refusal by Core._admit."""
    if code == E_QUEUE_FULL:
        return "recipient queue full, retry later"
    if code == E_SENDER_QUOTA:
        return ("this sender has max_queued_per_sender messages waiting"
                " (recipients offline?), retry later")
    return "router overloaded, retry later"


cdef inline uint32_t count_hello(Peer *p, uint64_t now) noexcept nogil:
    """Count one HELLO in the peer's one-second HELLO window; the count so far."""
    if now - p.hello_window_ms >= 1000:
        p.hello_window_ms = now
        p.hellos = 0
    p.hellos += 1
    return p.hellos


cdef inline bint is_peer_fault(int code) noexcept nogil:
    """Errors only a broken or hostile peer causes: what quarantine counts. Not the
    router's notices (ADDRESS_TAKEN, STORAGE_FAILED, ...), load refusals, routing
    refusals a correct sender can meet (UNKNOWN_CHANNEL), nor NOT_READY (a reconnect's
    first messages can race its HELLO)."""
    return (code == E_MALFORMED or code == E_BAD_VERSION or code == E_UNKNOWN_COMMAND
            or code == E_TOO_LARGE or code == E_BAD_ADDRESS or code == E_BAD_CLASS
            or code == E_BAD_ROLE or code == E_BAD_CURSOR or code == E_RATE_LIMITED)


cdef inline bint is_load_refusal(int code) noexcept nogil:
    """Refusals that say "retry later" (not a fault of the peer): not logged as errors."""
    return code == E_QUEUE_FULL or code == E_OVERLOADED or code == E_SENDER_QUOTA


# Histogram bucket upper bounds, microseconds (router/metrics.py exports them in seconds),
# shared by every latency histogram: the R10 preferred numbers (steps of 10**0.1, about
# 1.26x) from 50 us to 50 s, then 60 s. A quantile read from them is off by at most one
# step, so a p99 near 100 ms reads within about 25%.
cdef uint64_t BOUNDS[N_BOUNDS]
# FIRST[b]: the first bound >= 2**(b-1), where a value of bit length b can land; each
# power of two holds about three R10 bounds, so observe() compares a few times only.
cdef int FIRST[65]
_R10 = (100, 125, 160, 200, 250, 315, 400, 500, 630, 800)
_bounds = [50, 63, 80] + [v * 10 ** k for k in range(5) for v in _R10] + \
    [v * 10 ** 5 for v in _R10[:8]] + [60000000]
assert len(_bounds) == N_BOUNDS and _bounds == sorted(_bounds)
for _i, _v in enumerate(_bounds):
    BOUNDS[_i] = _v
for _b in range(65):
    FIRST[_b] = next((i for i, v in enumerate(_bounds) if v >= (1 << _b) >> 1), N_BOUNDS)


cdef extern from *:
    """
    static inline int bit_length64(unsigned long long v) {
        return v ? 64 - __builtin_clzll(v) : 0;
    }
    """
    int bit_length64(uint64_t v) nogil


cdef inline void observe(uint64_t *buckets, uint64_t v) noexcept nogil:
    """Count ``v`` (us) into the first bucket whose bound holds it (the last: +Inf)."""
    cdef int i = FIRST[bit_length64(v)]
    while i < N_BOUNDS and v > BOUNDS[i]:
        i += 1
    buckets[i] += 1


def _observe_check(values) -> list:
    """The bucket index observe() picks for each value (a test checks it against a
    plain search over histogram_bounds())."""
    cdef uint64_t b[N_BUCKETS]
    cdef int i
    out = []
    for v in values:
        memset(b, 0, sizeof(b))
        observe(b, v)
        out.append(next(i for i in range(N_BUCKETS) if b[i]))
    return out


def _dedup_check(int ops, int keys, uint64_t seed) -> int:
    """Random upserts, lookups and erasures on a DedupTable (ext/dedup.h) checked against
    a dict; returns the number of disagreements (a test expects 0). Few keys in a small
    table force collisions, probe runs that wrap around, erasures inside runs, growth."""
    import random
    cdef DedupTable *t = new DedupTable()
    cdef DedupEntry *e
    cdef uint32_t sender
    cdef uint64_t mid
    cdef int i, bad = 0
    rng = random.Random(seed)
    ref = {}
    t.reserve(16)
    for i in range(ops):
        sender = rng.randrange(1, 4)
        mid = rng.randrange(keys)
        e = t.find(sender, mid)
        if (e != NULL) != ((sender, mid) in ref) or (e != NULL and e.status != ref[sender, mid]):
            bad += 1
        if rng.random() < 0.55:
            e = t.upsert(sender, mid)
            e.status = i & 0xFF
            ref[sender, mid] = i & 0xFF
        elif e != NULL:
            t.erase(e)
            del ref[sender, mid]
    for (sender, mid), v in ref.items():
        e = t.find(sender, mid)
        bad += e == NULL or e.status != v
    bad += t.size() != len(ref)
    del t
    return bad


def histogram_bounds() -> dict:
    """Bucket upper bounds in seconds, as the core counts them (one list for every
    histogram: hop, delivery and commit)."""
    bounds = [BOUNDS[i] / 1e6 for i in range(N_BOUNDS)]
    return {"hop": bounds, "delivery": list(bounds), "commit": list(bounds)}


cdef char _err[512]
if zmqapi_load(zmq.backend.cython._zmq.__file__.encode(), _err, sizeof(_err)) != 0:
    raise ImportError(f"router native core: {_err.decode()}")


cdef inline uint64_t mono_ms() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000 + <uint64_t>(ts.tv_nsec // 1000000)


cdef inline uint64_t mono_us() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000 + <uint64_t>(ts.tv_nsec // 1000)


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
    cdef int last_pi           # the peer of the previous message (see _peer_slot)
    cdef vector[Address*] addrs
    cdef NameIndex addr_by_name   # address name -> slot in addrs (ext/names.h)
    cdef unordered_map[string, vector[int]] channels
    cdef vector[int] dirty
    cdef vector[int] flush_peers   # _group_by_peer: peers with dirty addresses this pass
    cdef TimerHeap timers          # TTL deadlines of queued reliable entries (timers.h)
    cdef vector[Msg*] msg_pool     # released Msgs kept for reuse (_new_msg)
    cdef vector[int] receipt_peers
    cdef vector[int] blocked_peers
    cdef vector[Event] events
    cdef vector[BrokerMsg] broker_inbox
    cdef uint64_t broker_since_ms   # when the oldest command in broker_inbox arrived
    # metrics gauges from the address table: reliable, notice, location, offline backlog,
    # bound addresses, offline addresses holding reliable entries; and the oldest
    # accepted_us of any queued message (0: none)
    cdef uint64_t gauges[6]
    cdef uint64_t walk[6]
    cdef uint64_t oldest_us
    cdef uint64_t walk_oldest_us
    cdef size_t walk_pos
    cdef Counters c
    cdef uint64_t next_tick_ms
    cdef uint64_t now_us       # monotonic clock, read once per pass (not per message)
    cdef uint64_t send_us      # monotonic clock when the current address flush began
    cdef uint64_t wall_now_us  # wall clock, read with it
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
    cdef uint64_t max_queued_per_sender
    cdef vector[uint64_t] sender_queued  # queue entries held per sender id (_intern)
    cdef uint64_t dedup_ms
    cdef int batch             # messages drained per pass (= at most per group commit)
    cdef uint32_t retry_ms
    cdef uint32_t retry_max_ms
    cdef uint32_t max_attempts
    # durability: records of this pass, committed to the store before anything is sent
    cdef object store
    cdef object _store_error
    cdef string jbuf
    cdef bint jsync
    cdef bint replaying
    cdef uint32_t replay_sid        # sender and id of replay_msg: the next records of
    cdef uint64_t replay_id         # the same channel send share its Msg
    cdef Msg *replay_msg
    cdef vector[Msg*] uncommitted
    cdef vector[int] uncommitted_addrs
    cdef uint32_t segment
    cdef vector[int64_t] seg_live
    cdef DedupTable dedup           # (sender, msg id) -> latest receipt (ext/dedup.h)
    cdef deque[DedupExp] dedup_exp  # windows in the order they end
    cdef unordered_map[string, int] peer_by_name
    cdef unordered_map[string, uint32_t] sender_ids  # interned sender names (dedup keys)
    cdef unordered_map[string, string] outbox   # receipts for senders not connected now
    cdef vector[int] inflight
    cdef string history

    def __cinit__(self, socket, *, uint32_t max_payload=1 << 20, uint32_t window=1024,
                  uint32_t max_queue=100000, uint32_t max_addresses=1000000,
                  uint32_t max_peers=100000, uint32_t heartbeat_ms=1000,
                  uint32_t liveness=3, uint32_t errors_per_second=20,
                  uint64_t max_queued=5000000, uint64_t max_queued_per_sender=1000000,
                  store=None, uint32_t dedup_ms=120000,
                  uint32_t retry_ms=1000, uint32_t retry_max_ms=30000,
                  uint32_t max_attempts=20, int batch=512, size_t dedup_capacity=2000000):
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
        self.batch = max(batch, 1)
        self.seg_live.push_back(0)
        self.sender_queued.push_back(0)  # sender id 0: no sender (never interned)
        # Sized once: growing a hash table rehashes every entry in one step, which would
        # stop the loop for ~0.2 us per entry (100 ms at 500k entries).
        self.dedup.reserve(dedup_capacity)
        self.dedup.set_seed(int.from_bytes(os.urandom(8), "little"))
        self.addr_by_name.set_seed(int.from_bytes(os.urandom(8), "little"))
        self._clock()
        self.last_pi = -1
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
        for i in range(self.msg_pool.size()):
            del self.msg_pool[i]

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
                 replayed=c.replayed, takeovers=c.takeovers, quarantined=c.quarantined)
        d["peers"] = self.peer_by_id.size()
        d["addresses"] = self.addr_by_name.size()
        d["sender_names"] = self.sender_ids.size()
        d["channels"] = self.channels.size()
        return d

    def metrics(self) -> dict:
        """Everything the Prometheus collector exports: counters, histogram buckets
        (non-cumulative, microsecond sums) and gauges computed from the tables. Call it
        from the thread that runs the loop (router.metrics snapshots between slices)."""
        cdef size_t i
        self._walk_addresses(WALK_PER_SNAPSHOT)
        roles = [0, 0, 0, 0, 0]
        for i in range(self.peers.size()):
            if self.peers[i].live and not self.peers[i].gone and self.peers[i].role <= 4:
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
            "addresses": self.addrs.size(),
            "address_limit": self.max_addresses,
            "peers_by_role": {"sender": roles[1], "endpoint": roles[2], "gateway": roles[3],
                              "worker": roles[4]},
        })
        return d

    cdef void _walk_addresses(self, size_t limit) noexcept nogil:
        """Advance the gauge walk over the address table by at most ``limit`` entries;
        when it wraps, publish the sums. A table of a million addresses is walked over
        several snapshots instead of stalling the loop for tens of ms in one."""
        cdef size_t end = min(self.walk_pos + limit, self.addrs.size())
        cdef Address *a
        cdef int k
        while self.walk_pos < end:
            a = self.addrs[self.walk_pos]
            self.walk[0] += a.rel.size()
            self.walk[1] += a.notices.size()
            self.walk[2] += a.latest.size()
            if a.peer >= 0:
                self.walk[4] += 1
            elif not a.rel.empty():
                self.walk[3] += a.rel.size()
                self.walk[5] += 1
            # queues are in arrival order: each one's oldest message is at its front
            if not a.rel.empty():
                self._walk_oldest(a.rel.front().msg.accepted_us)
            if not a.notices.empty():
                self._walk_oldest(a.notices.front().accepted_us)
            self.walk_pos += 1
        if self.walk_pos >= self.addrs.size():
            for k in range(6):
                self.gauges[k] = self.walk[k]
                self.walk[k] = 0
            self.oldest_us = self.walk_oldest_us
            self.walk_oldest_us = 0
            self.walk_pos = 0

    cdef inline void _walk_oldest(self, uint64_t accepted_us) noexcept nogil:
        if self.walk_oldest_us == 0 or accepted_us < self.walk_oldest_us:
            self.walk_oldest_us = accepted_us


    def drain_broker(self) -> list:
        """Service commands since the last call: ``(identity, header, payload)``."""
        out = [(bytes(b.identity), bytes(b.header), bytes(b.payload)) for b in self.broker_inbox]
        self.broker_inbox.clear()
        return out

    def drain_events(self) -> list:
        """Connects, disconnects and errors since the last call, as tuples
        ``(kind, name, role, identity, code, naddrs)`` with kind in
        ``"connect" | "disconnect" | "error" | "storage" | "takeover"``; for a disconnect
        ``code`` is the reason: ``"bye" | "heartbeat timeout" | "unreachable"``; for a
        takeover (another connection bound one of this peer's addresses) it is the text
        ``"<address> by <new holder's name>"``."""
        kinds = {EV_CONNECT: "connect", EV_DISCONNECT: "disconnect", EV_ERROR: "error",
                 EV_STORAGE: "storage", EV_TAKEOVER: "takeover"}
        reasons = {REASON_BYE: "bye", REASON_TIMEOUT: "heartbeat timeout",
                   REASON_UNREACHABLE: "unreachable"}
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
        """CURSOR records for every address with a sequence: the head of a new segment,
        so that compacting older segments never loses an address's numbering."""
        cdef string buf
        cdef size_t i, start
        cdef Address *a
        for i in range(self.addrs.size()):
            a = self.addrs[i]
            if a.next_seq == 0:
                continue
            start = rec_begin(buf, REC_CURSOR)
            rec_u64(buf, a.next_seq)
            rec_u64(buf, a.acked)
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
                blen = get32(p)
                if blen == 0 or off + REC_HEAD + blen > n or crc32c(p + REC_HEAD, blen) != get32(p + 4):
                    break
                if not self._replay_record(p + REC_HEAD, blen):
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

    # ---- the loop ----------------------------------------------------------------------

    cdef long _run(self, int timeout_ms) noexcept nogil:
        cdef uint64_t now = mono_ms()
        cdef uint64_t deadline = now + <uint64_t>timeout_ms
        cdef long total = 0
        cdef int k
        cdef long wait
        cdef zmq_pollitem_t item
        while True:
            self._clock()
            k = self._receive_pass()
            if k < 0:
                return -1
            total += k
            self.c.loops += 1
            if not self.jbuf.empty():
                self._commit()
            self._clock()
            self._flush()
            now = mono_ms()
            if now >= self.next_tick_ms:
                self._tick(now)
                if not self.receipt_peers.empty():
                    self._flush()  # expiries and failures of this tick: tell them now
            if now >= deadline:
                break
            if not self.broker_inbox.empty() and (
                    k < self.batch or self.broker_inbox.size() >= BROKER_BATCH
                    or now - self.broker_since_ms >= BROKER_WAIT_MS):
                # The socket is drained, or the broker's share is due: hand it over.
                # Not after every pass that read a service command: under a flood of
                # them each return to Python cost more than the pass (3 messages a
                # pass, measured), and the SENDs behind them waited.
                break
            if k == self.batch:
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

    cdef inline void _clock(self) noexcept nogil:
        """Read the clocks for this pass: messages received in one pass share a receive
        time, which is when the router started reading them (hop latency includes the
        time they waited in the socket)."""
        self.now_us = mono_us()
        self.wall_now_us = wall_us()

    cdef int _receive_pass(self) noexcept nogil:
        """Receive and handle up to ``batch`` messages; the count, or -1 on a socket error.

        Messages are handled in arrival order, LOOKAHEAD behind the newest one received:
        with tens of thousands of addresses the index slot and the Address a SEND needs
        are cold in cache, so their loads are started (prefetched) for the next messages
        while the current one is handled, instead of stalling on each in turn."""
        cdef zmq_msg_t f[RING][3]
        cdef int n[RING]
        cdef int extra[RING]
        cdef uint64_t hint[RING]
        cdef int k = 0, head = 0, tail = 0, r, i, j
        cdef bint more = True
        while True:
            while more and tail - head <= LOOKAHEAD and k + tail - head < self.batch:
                j = tail % RING
                r = self._recv_frames(f[j], &n[j], &extra[j])
                if r <= 0:
                    more = False
                    if r < 0:
                        k = -1
                    break
                hint[j] = self._prefetch_slot(f[j], n[j])
                if tail - head >= PREFETCH_GAP:
                    self._prefetch_address(hint[(tail - PREFETCH_GAP) % RING])
                tail += 1
            if head == tail:
                return k
            j = head % RING
            if k >= 0:
                self._handle(f[j], n[j], extra[j])
                k += 1
            for i in range(n[j]):
                zmqapi.msg_close(&f[j][i])
            head += 1

    cdef int _recv_frames(self, zmq_msg_t *f, int *n, int *extra) noexcept nogil:
        """Receive one message's frames (at most 3 kept, the rest counted in ``extra``):
        1 received, 0 nothing waiting, -1 socket error."""
        cdef zmq_msg_t junk
        cdef int more, i
        n[0] = 1
        extra[0] = 0
        zmqapi.msg_init(&f[0])
        if zmqapi.msg_recv(&f[0], self.sock, ZMQ_DONTWAIT) < 0:
            zmqapi.msg_close(&f[0])
            i = zmqapi.errno_()
            return 0 if (i == EAGAIN or i == EINTR) else -1
        more = zmqapi.msg_more(&f[0])
        while more:
            # the rest of a multipart message is already queued: these never block
            if n[0] < 3:
                zmqapi.msg_init(&f[n[0]])
                zmqapi.msg_recv(&f[n[0]], self.sock, 0)
                more = zmqapi.msg_more(&f[n[0]])
                n[0] += 1
            else:
                zmqapi.msg_init(&junk)
                zmqapi.msg_recv(&junk, self.sock, 0)
                more = zmqapi.msg_more(&junk)
                zmqapi.msg_close(&junk)
                extra[0] += 1
        return 1

    cdef uint64_t _prefetch_slot(self, zmq_msg_t *f, int n) noexcept nogil:
        """For a SEND to an address: hash its name, prefetch the index slot, and return
        the hash (0 otherwise). A hint only: _handle validates everything again."""
        if n != 3:
            return 0
        cdef const uint8_t *h = <const uint8_t *>zmqapi.msg_data(&f[1])
        cdef size_t hlen = zmqapi.msg_size(&f[1])
        if hlen < 20 or h[2] != CMD_SEND or h[3] & FLAG_CHANNEL or 20 + <size_t>h[17] > hlen:
            return 0
        cdef uint64_t hv = self.addr_by_name.hash(<const char *>h + 20, h[17])
        self.addr_by_name.prefetch(hv)
        return hv

    cdef void _prefetch_address(self, uint64_t hv) noexcept nogil:
        """The slot is (nearly) in cache now: start loading the Address it points to."""
        if hv == 0:
            return
        cdef int ai = self.addr_by_name.peek(hv)
        if ai >= 0:
            prefetch_lines(self.addrs[ai], ADDRESS_LINES)

    cdef void _handle(self, zmq_msg_t *f, int n, int extra) noexcept nogil:
        cdef uint64_t now = self.now_us // 1000
        cdef int pi = self._peer_slot(<const char *>zmqapi.msg_data(&f[0]),
                                      zmqapi.msg_size(&f[0]), now)
        if pi < 0:
            return  # peer table full: strangers are ignored until slots free up
        cdef Peer *p = self.peers[pi]
        p.last_seen_ms = now
        if p.bad > self.errors_per_second and now < p.err_window_ms + 1000:
            # A peer past its error budget (a fuzzer, a client in a loop) has the rest
            # of its second ignored unread: its flood costs the others a receive, not a
            # parse, a refusal and a log line per message. (Measured: with 5x the
            # budget the well-behaved pair beside 24 fuzzers had p99 29 s; with 1x,
            # 35 ms, and the router's memory stayed flat.)
            self.c.quarantined += 1
            return
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
        if cmd == CMD_SEND or cmd == CMD_REQUEST or cmd == CMD_REPLY:
            if n != 3 or extra:
                if cmd == CMD_SEND and hlen >= 12:
                    # the id is readable: refuse it like any other SEND, so the sender
                    # can tell which message failed
                    self._refuse(pi, get64(h + 4), h[16] if hlen > 16 else 255, E_MALFORMED,
                                 "SEND takes a header frame and a payload frame")
                else:
                    self._error(pi, E_MALFORMED, 0,
                                "SEND/REQUEST/REPLY take a header frame and a payload frame")
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
        elif cmd == CMD_READY or cmd == CMD_REQUEST or cmd == CMD_REPLY:
            self._to_broker(pi, f, n)
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
        if count_hello(p, self.now_us // 1000) > HELLOS_PER_SECOND:
            # every HELLO rebinds addresses and may move their queues: a flood of them
            # is the costliest thing a peer can send
            self._error(pi, E_RATE_LIMITED, 0, "more than 4 HELLOs a second on one "
                        "connection: say HELLO once, then BIND and UNBIND")
            return
        if p.role != 0:
            self._unbind_all(pi)  # a repeated HELLO replaces the previous bindings
        else:
            self.c.peers_connected += 1
        p.role = h[4]
        if not p.name.empty():
            self._forget_name(pi)
        p.name = string(<const char *>h + 6, h[5])
        # interned at the peer's first SEND: most peers (users', riders', merchants'
        # endpoints) never send, and interned names are kept for the router's life
        p.sender_id = 0
        self.peer_by_name[p.name] = pi  # receipts for this name now come here
        if not self._bind_cursors(pi, h, hlen, 6 + h[5]):
            return
        self._welcome(pi)
        self._deliver_outbox(pi)
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
        cdef uint64_t cursor
        off += 2
        for i in range(count):
            ln = h[off]
            cursor = get64(h + off + 1 + ln)
            if cursor > MAX_CURSOR:
                # numbering would continue above it and wrap at 2**64
                self._error(pi, E_BAD_CURSOR, 0, "cursor above 2**62 (MAX_CURSOR): "
                            "sequences start at 1 and cannot get there; send the last "
                            "sequence you hold, or 0")
                return False
            ai = self._address_slot(pi, h + off + 1, ln)
            if ai < 0:
                return False
            self._bind(pi, ai, cursor)
            off += 1 + ln + 8
        return True

    cdef void _on_unbind(self, int pi, const uint8_t *h, size_t hlen) noexcept nogil:
        if not valid_address_list(h, hlen, 4):
            self._error(pi, E_MALFORMED, 0, "UNBIND address list does not match its length")
            return
        cdef uint16_t count = get16(h + 4)
        cdef size_t off = 6
        cdef uint16_t i
        cdef int ai
        for i in range(count):
            ai = self.addr_by_name.find(<const char *>h + off + 1, h[off])
            if ai >= 0 and self.addrs[ai].peer == pi:
                self._unbind(pi, ai)
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
        cdef int ai
        for i in range(count):
            ai = self.addr_by_name.find(<const char *>h + off + 1, h[off])
            if ai >= 0:
                self._ack_to(ai, get64(h + off + 1 + h[off]))
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
        if flags & FLAG_CHANNEL:
            if lt == 0 or not valid_name(h + 20, lt):
                self._refuse(pi, msg_id, cls, E_BAD_ADDRESS,
                             "channel must be 1..255 printable ASCII bytes without spaces")
                return
        elif not valid_address(h + 20, lt):
            self._refuse(pi, msg_id, cls, E_BAD_ADDRESS,
                         "target must be an address <kind>:<id> (both parts non-empty), "
                         "1..255 printable ASCII bytes without spaces")
            return
        cdef int single
        cdef const int *targets = &single    # one address, or a channel's members
        cdef size_t ntargets = 1
        cdef string tname = string(<const char *>h + 20, lt)
        if flags & FLAG_CHANNEL:
            it = self.channels.find(tname)
            if it == self.channels.end():
                self._refuse(pi, msg_id, cls, E_UNKNOWN_CHANNEL, "no such channel: JOIN first")
                return
            targets = deref(it).second.data()
            ntargets = deref(it).second.size()
        else:
            single = self._address_of(pi, tname)  # validated above
            if single < 0:
                return  # _address_of already refused
        cdef DedupEntry *seen
        if self.peers[pi].sender_id == 0:
            self.peers[pi].sender_id = self._intern(self.peers[pi].name)
        if cls <= CLASS_CHAT:
            seen = self.dedup.find(self.peers[pi].sender_id, msg_id)
            if seen != NULL:
                # a repeat inside the window: same receipt, nothing delivered twice
                self.c.dedup_hits += 1
                self._receipt_to(pi, self.peers[pi].gen, msg_id, seen.status, seen.code)
                return
        cdef int code = self._admit(targets, ntargets, cls, self.peers[pi].sender_id)
        if code != 0:
            self._refuse(pi, msg_id, cls, code, admit_text(code))
            return
        cdef Msg *m = self._new_msg()
        m.recv_us = mono_us()  # per message: the pass clock would hide the hop's own time
        zmqapi.msg_init(&m.payload)
        zmqapi.msg_move(&m.payload, payload)
        m.msg_id = msg_id
        m.accepted_us = self.wall_now_us
        m.expire_us = now + ttl_ms if ttl_ms else 0
        m.sender = pi
        m.sender_gen = self.peers[pi].gen
        m.sender_name = self.peers[pi].name
        m.sender_id = self.peers[pi].sender_id
        m.cls = cls
        m.refs = 0
        m.pending = 0
        m.finished = False
        m.segment = self.segment
        cdef string key
        if lkey:
            key = string(<const char *>h + 20 + lt + lk, lkey)
        if cls <= CLASS_CHAT:
            if flags & FLAG_CHANNEL and is_order(tname):
                m.order = tname
            elif is_order(key):
                m.order = key
        build_template(m, flags, self.peers[pi].name,
                       tname if flags & FLAG_CHANNEL else string(), h + 20 + lt, lk)
        self.c.msgs_in[cls] += 1
        self.c.bytes_in += zmqapi.msg_size(&m.payload)
        if ntargets > 1:
            self.c.fanout += ntargets - 1
        if cls == CLASS_LOCATION and key.empty():
            key = self.peers[pi].name
        cdef size_t i
        m.refs = 1  # hold it while fanning out
        for i in range(ntargets):
            self._enqueue(targets[i], m, key)
        if cls <= CLASS_CHAT:
            self._remember(m.sender_id, msg_id, self.now_us // 1000 + self.dedup_ms)
            if self.store is not None:
                self.seg_live[self.segment] += 1
                m.refs += 1  # held by `uncommitted` until _commit
                self.uncommitted.push_back(m)
            else:
                self._accepted(m)
        self._release(m)

    cdef int _admit(self, const int *targets, size_t ntargets, uint8_t cls,
                    uint32_t sid) noexcept nogil:
        """0 to accept, or E_QUEUE_FULL / E_SENDER_QUOTA / E_OVERLOADED to refuse a
        reliable message.

        Best-effort traffic is never refused: it is shed on enqueue instead."""
        cdef size_t i
        if cls > CLASS_CHAT:
            return 0
        if self.sender_queued[sid] + ntargets > self.max_queued_per_sender:
            return E_SENDER_QUOTA  # one sender cannot take the whole queue from the rest
        if self.c.queued + ntargets > self.max_queued:
            return E_OVERLOADED
        for i in range(ntargets):
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
            if m.expire_us:
                self.timers.push(m.expire_us, ai, e.seq)
            if self.store is not None:
                self._journal_msg(a, m, e.seq)
                self.uncommitted_addrs.push_back(ai)
                m.refs += 1
                self._queued(m)
                return  # sent once the journal commit succeeds
        elif m.cls == CLASS_NOTICE:
            if self.sender_queued[m.sender_id] >= self.max_queued_per_sender:
                self.c.shed += 1  # this sender's backlog is at its quota: drop its newest
                return
            if a.notices.size() >= self.max_queue or self.c.queued >= self.max_queued:
                self.c.shed += 1  # best effort: the oldest notice makes room
                if a.notices.empty():
                    return
                self._unqueued(a.notices.front())
                self._release(a.notices.front())
                a.notices.pop_front()
            a.notices.push_back(m)
        else:
            it = a.latest.find(key)
            if it != a.latest.end():
                self._unqueued(deref(it).second)
                self._release(deref(it).second)  # conflate: newest position wins
                deref(it).second = m
                self.c.conflated += 1
            else:
                a.latest[key] = m
                a.latest_order.push_back(key)
        m.refs += 1
        self._queued(m)
        if a.peer >= 0:
            self._mark_dirty(ai)

    cdef inline void _queued(self, Msg *m) noexcept nogil:
        """Count one more queue entry of ``m``: in all, and against its sender's quota."""
        self.c.queued += 1
        self.sender_queued[m.sender_id] += 1

    cdef inline void _unqueued(self, Msg *m) noexcept nogil:
        """Count one queue entry of ``m`` gone (call before releasing it)."""
        self.c.queued -= 1
        self.sender_queued[m.sender_id] -= 1

    # ---- durability ----------------------------------------------------------------------

    cdef void _journal_msg(self, Address *a, Msg *m, uint64_t seq) noexcept nogil:
        """Append the MSG record of one (address, seq) delivery to this pass's batch."""
        cdef const char *t = tmpl(m)
        cdef size_t lk = <uint8_t>t[29], lf = <uint8_t>t[30], lc = <uint8_t>t[31]
        cdef size_t start = rec_begin(self.jbuf, REC_MSG)
        cdef uint64_t expire_wall = 0
        if m.expire_us:
            expire_wall = m.accepted_us + (m.expire_us - mono_ms()) * 1000
        rec_u64(self.jbuf, seq)
        rec_u64(self.jbuf, m.msg_id)
        rec_u64(self.jbuf, m.accepted_us)
        rec_u64(self.jbuf, expire_wall)
        self.jbuf.push_back(<char>m.cls)
        self.jbuf.push_back(t[3])
        rec_name(self.jbuf, a.name)
        rec_name(self.jbuf, m.sender_name)
        self.jbuf.push_back(<char>lk)
        self.jbuf.append(t + 33, lk)
        self.jbuf.push_back(<char>lc)
        self.jbuf.append(t + 33 + lk + lf, lc)
        rec_name(self.jbuf, m.order)
        self.jbuf.append(<const char *>zmqapi.msg_data(&m.payload), zmqapi.msg_size(&m.payload))
        rec_end(self.jbuf, start)
        self.jsync = True

    cdef void _journal_small(self, uint8_t kind, uint64_t v, const string &name,
                             uint8_t status, uint16_t code) noexcept nogil:
        """Append an ACK (v = seq) or FIN (v = msg id) record; these need no fsync:
        losing one only means a redelivery the endpoint drops, or a weaker dedup reply."""
        if self.store is None or self.replaying:
            return
        cdef size_t start = rec_begin(self.jbuf, kind)
        cdef uint8_t sc[3]
        rec_u64(self.jbuf, v)
        if kind == REC_FIN:
            sc[0] = status
            put16(sc + 1, code)
            self.jbuf.append(<const char *>sc, 3)
        rec_name(self.jbuf, name)
        rec_end(self.jbuf, start)

    cdef void _commit(self) noexcept nogil:
        """Group commit: hand this pass's records to the store; only then accept and
        send the messages in it. On failure they are taken back and refused."""
        cdef bint ok
        cdef size_t i
        cdef uint64_t t0 = mono_us()
        with gil:
            ok = self._store_commit()
        t0 = mono_us() - t0
        observe(self.c.commit, t0)
        self.c.commit_sum_us += t0
        self.jbuf.clear()
        self.jsync = False
        if ok:
            self.c.commits += 1
            for i in range(self.uncommitted_addrs.size()):
                self._mark_dirty(self.uncommitted_addrs[i])
            for i in range(self.uncommitted.size()):
                self._accepted(self.uncommitted[i])
                self._release(self.uncommitted[i])
        else:
            self.c.commit_failures += 1
            self._rollback()
        self.uncommitted.clear()
        self.uncommitted_addrs.clear()

    cdef bint _store_commit(self):
        try:
            self.store.commit(<bytes>self.jbuf, self.jsync)
            self.c.journal_bytes += self.jbuf.size()
            return True
        except Exception as exc:
            self._store_error = exc
            return False

    cdef void _rollback(self) noexcept nogil:
        """Undo the uncommitted tail: those entries are the newest of their addresses."""
        cdef size_t i = self.uncommitted_addrs.size()
        cdef Address *a
        cdef Msg *m
        while i > 0:
            i -= 1
            a = self.addrs[self.uncommitted_addrs[i]]
            m = a.rel.back().msg
            a.rel.pop_back()
            a.next_seq -= 1
            m.pending -= 1
            self._unqueued(m)
            self._release(m)
        for i in range(self.uncommitted.size()):
            m = self.uncommitted[i]
            m.finished = True
            seen = self.dedup.find(m.sender_id, m.msg_id)
            if seen != NULL:
                self.dedup.erase(seen)
            self._receipt(m, ST_REFUSED, E_STORAGE_FAILED)
            if m.sender >= 0 and self.peers[m.sender].live and self.peers[m.sender].gen == m.sender_gen:
                self._error(m.sender, E_STORAGE_FAILED, m.msg_id,
                            "the journal could not store the message (disk full?): retry later")
            self._release(m)
        if not self.uncommitted.empty():
            self._event(EV_STORAGE, self.uncommitted[0].sender, E_STORAGE_FAILED)

    cdef void _accepted(self, Msg *m) noexcept nogil:
        self._receipt(m, ST_ACCEPTED, 0)
        if not m.order.empty():
            self._hist(H_ACCEPTED, m, string(), 0, ST_ACCEPTED, 0)

    cdef void _remember(self, uint32_t sender, uint64_t msg_id,
                        uint64_t expires_ms) noexcept nogil:
        """Start the dedup window of a reliable message id (status ACCEPTED), ending at
        ``expires_ms`` (monotonic)."""
        cdef DedupEntry *e
        cdef DedupExp x
        if self.dedup_ms == 0:
            return
        e = self.dedup.upsert(sender, msg_id)
        e.status = ST_ACCEPTED
        e.code = 0
        e.stamp = stamp_of(expires_ms)
        x.expires_ms = expires_ms
        x.msg_id = msg_id
        x.sender = sender
        self.dedup_exp.push_back(x)

    cdef void _hist(self, uint8_t kind, Msg *m, const string &address, uint64_t seq,
                    uint8_t status, uint16_t code) noexcept nogil:
        """One history event of an order-linked message (router/history.py parses it):
        kind u8, ts_us u64, msg_id u64, seq u64, status u8, code u16, class u8, then
        names order, sender, address, kind, channel, and u32 payload length + payload
        (ACCEPTED only)."""
        if self.replaying:
            return
        cdef const char *t = tmpl(m)
        cdef size_t lk = <uint8_t>t[29], lf = <uint8_t>t[30], lc = <uint8_t>t[31]
        cdef uint8_t b[4]
        self.history.push_back(<char>kind)
        rec_u64(self.history, wall_us())
        rec_u64(self.history, m.msg_id)
        rec_u64(self.history, seq)
        b[0] = status
        put16(b + 1, code)
        b[3] = m.cls
        self.history.append(<const char *>b, 4)
        rec_name(self.history, m.order)
        rec_name(self.history, m.sender_name)
        rec_name(self.history, address)
        self.history.push_back(<char>lk)
        self.history.append(t + 33, lk)
        self.history.push_back(<char>lc)
        self.history.append(t + 33 + lk + lf, lc)
        if kind == H_ACCEPTED:
            put32(b, <uint32_t>zmqapi.msg_size(&m.payload))
            self.history.append(<const char *>b, 4)
            self.history.append(<const char *>zmqapi.msg_data(&m.payload),
                                zmqapi.msg_size(&m.payload))
        else:
            self.history.append(4, <char>0)

    cdef bint _replay_record(self, const uint8_t *p, uint32_t n):
        """Apply one journal record during start-up; False if it does not parse."""
        cdef const uint8_t *end = p + n
        cdef uint8_t kind = p[0]
        cdef string addr, sender, kindname, chan, order, dkey
        cdef uint64_t seq, v2 = 0
        cdef int ai
        p += 1
        if kind != REC_MSG:
            self.replay_msg = NULL  # channel members' records are contiguous
        if kind == REC_ACK or kind == REC_CURSOR or kind == REC_FIN:
            if p + 8 > end:
                return False
            seq = get64(p)
            p += 8
            if kind == REC_CURSOR:
                if p + 8 > end:
                    return False
                v2 = get64(p)
                p += 8
            elif kind == REC_FIN:
                if p + 3 > end:
                    return False
                v2 = p[0] | (<uint64_t>get16(p + 1) << 8)
                p += 3
            p = rd_name(p, end, addr)
            if p == NULL or p != end:
                return False
            if kind == REC_FIN:
                seen = self.dedup.find(self._intern(addr), seq)
                if seen != NULL:
                    seen.status = <uint8_t>(v2 & 0xFF)
                    seen.code = <uint8_t>(v2 >> 8)
                return True
            ai = self._restore_address(addr)
            if kind == REC_CURSOR:
                if seq > self.addrs[ai].next_seq:
                    self.addrs[ai].next_seq = seq
                self._ack_to(ai, v2)
            else:
                self._ack_to(ai, seq)
            return True
        if kind != REC_MSG or p + 34 > end:
            return False
        return self._replay_msg(p, end)

    cdef bint _replay_msg(self, const uint8_t *p, const uint8_t *end):
        cdef uint64_t seq = get64(p), msg_id = get64(p + 8), acc = get64(p + 16)
        cdef uint64_t expire_wall = get64(p + 24)
        cdef uint8_t cls = p[32], flags = p[33]
        cdef string addr, sender, kind, chan, order
        p += 34
        p = rd_name(p, end, addr)
        if p != NULL:
            p = rd_name(p, end, sender)
        if p != NULL:
            p = rd_name(p, end, kind)
        if p != NULL:
            p = rd_name(p, end, chan)
        if p != NULL:
            p = rd_name(p, end, order)
        if p == NULL or cls > CLASS_CHAT:
            return False
        cdef int ai = self._restore_address(addr)
        cdef Address *a = self.addrs[ai]
        cdef uint64_t now_wall = wall_us()
        cdef uint32_t sid = self._intern(sender)
        if (self.dedup_ms and acc + self.dedup_ms * 1000 > now_wall
                and self.dedup.find(sid, msg_id) == NULL):
            # the rest of its window, counted from when it was first accepted
            self._remember(sid, msg_id,
                           mono_ms() + (acc + self.dedup_ms * 1000 - now_wall) // 1000)
        if seq > a.next_seq:
            a.next_seq = seq
        if seq <= a.acked or (not a.rel.empty() and seq <= a.rel.back().seq):
            return True  # already acked, or a repeated record
        cdef Msg *m
        if self.replay_msg != NULL and self.replay_sid == sid and self.replay_id == msg_id:
            m = self.replay_msg  # another member of the same channel send
        else:
            m = self._new_msg()
            zmqapi.msg_init_size(&m.payload, <size_t>(end - p))
            memcpy(zmqapi.msg_data(&m.payload), p, <size_t>(end - p))
            m.msg_id = msg_id
            m.accepted_us = acc
            m.recv_us = mono_us()
            m.expire_us = 0
            if expire_wall:
                m.expire_us = mono_ms() + (expire_wall - now_wall) // 1000 if expire_wall > now_wall else 1
            m.sender = -1
            m.sender_gen = 0
            m.sender_name = sender
            m.sender_id = sid
            m.order = order
            m.cls = cls
            m.refs = 0
            m.pending = 0
            m.finished = False
            m.segment = self.segment
            build_template(m, flags, sender, chan, <const uint8_t *>kind.data(),
                           <uint8_t>kind.size())
            self.seg_live[self.segment] += 1
            self.replay_sid = sid
            self.replay_id = msg_id
            self.replay_msg = m
            self.c.replayed += 1
        cdef Entry e
        e.seq = seq
        e.msg = m
        a.rel.push_back(e)
        if m.expire_us:
            self.timers.push(m.expire_us, ai, seq)
        m.pending += 1
        m.refs += 1
        self._queued(m)
        return True

    cdef int _restore_address(self, const string &name) noexcept nogil:
        """Find or create an address named in the journal (no table limit at start-up)."""
        cdef int ai = self.addr_by_name.find(name)
        return ai if ai >= 0 else self._new_address(name)

    # ---- sending -----------------------------------------------------------------------

    cdef void _flush(self) noexcept nogil:
        cdef size_t i
        cdef vector[int] keep
        for i in range(self.blocked_peers.size()):
            self.peers[self.blocked_peers[i]].blocked = False
        self.blocked_peers.clear()
        if not self.dirty.empty():
            if self.dirty.size() > 1:
                self._group_by_peer()
            for i in range(self.dirty.size()):
                if self._flush_address(self.dirty[i]):
                    keep.push_back(self.dirty[i])
                else:
                    self.addrs[self.dirty[i]].dirty = False  # off the list: may rejoin
            self.dirty.swap(keep)
        if not self.receipt_peers.empty():
            keep.clear()
            for i in range(self.receipt_peers.size()):
                if not self._flush_receipts(self.receipt_peers[i]):
                    keep.push_back(self.receipt_peers[i])
            self.receipt_peers.swap(keep)

    cdef void _group_by_peer(self) noexcept nogil:
        """Order this pass's dirty addresses by peer, keeping arrival order within a
        peer: consecutive sends then go down the same pipe, which libzmq batches; with
        addresses of several gateways interleaved, each send would switch pipes.
        Linear: each peer collects its addresses, then the peers are walked in the
        order they first appeared (offline addresses go first; they send nothing)."""
        cdef vector[int] ordered
        cdef size_t i, j
        cdef int ai, pi
        cdef Peer *p
        ordered.reserve(self.dirty.size())
        for i in range(self.dirty.size()):
            ai = self.dirty[i]
            pi = self.addrs[ai].peer
            if pi < 0:
                ordered.push_back(ai)
                continue
            p = self.peers[pi]
            if p.flushq.empty():
                self.flush_peers.push_back(pi)
            p.flushq.push_back(ai)
        for i in range(self.flush_peers.size()):
            p = self.peers[self.flush_peers[i]]
            for j in range(p.flushq.size()):
                ordered.push_back(p.flushq[j])
            p.flushq.clear()
        self.flush_peers.clear()
        self.dirty.swap(ordered)

    cdef bint _flush_address(self, int ai) noexcept nogil:
        """Send what the window allows; True if the address must be retried later."""
        cdef Address *a = self.addrs[ai]
        cdef int pi = a.peer
        cdef int rc
        cdef Msg *m
        cdef uint64_t now = self.now_us // 1000
        if pi < 0:
            return False
        cdef Peer *p = self.peers[pi]
        if p.blocked:
            return True
        self.send_us = mono_us()
        while a.sent < a.rel.size() and a.sent < self.window:
            m = a.rel[a.sent].msg
            if m.expire_us and now >= m.expire_us:
                self._expire_entry(a, a.sent, ST_EXPIRED, E_EXPIRED)
                continue
            rc = self._deliver(p, a, m, a.rel[a.sent].seq)
            if rc != 0:
                return self._send_failed(pi, rc)
            if not m.order.empty():
                self._hist(H_SENT, m, a.name, a.rel[a.sent].seq, 0, 0)
            if a.sent == 0:
                a.inflight_ms = now  # the redelivery timer runs from the head's send
                if not a.tracked:
                    a.tracked = True
                    self.inflight.push_back(ai)
            a.sent += 1
        while not a.notices.empty():
            rc = self._deliver(p, a, a.notices.front(), 0)
            if rc != 0:
                return self._send_failed(pi, rc)
            self._unqueued(a.notices.front())
            self._release(a.notices.front())
            a.notices.pop_front()
        while not a.latest_order.empty():
            it = a.latest.find(a.latest_order.front())
            m = deref(it).second
            rc = self._deliver(p, a, m, 0)
            if rc != 0:
                return self._send_failed(pi, rc)
            a.latest.erase(it)
            a.latest_order.pop_front()
            self._unqueued(m)
            self._release(m)
        return False

    cdef bint _send_failed(self, int pi, int rc) noexcept nogil:
        if rc > 0:
            self.peers[pi].blocked = True
            self.blocked_peers.push_back(pi)
            self.c.blocked_sends += 1
            return True
        self._unreachable(pi)
        return False

    cdef void _unreachable(self, int pi) noexcept nogil:
        """The peer's connection is gone, but what it sent before leaving may still be
        queued for us (a sender that sends and exits): its addresses go offline and
        nothing more is sent to it (sending to a departed identity can make libzmq
        drop that queue), yet its messages are still read until its liveness runs out."""
        cdef Peer *p = self.peers[pi]
        if p.gone:
            return
        p.gone = True
        if p.role != 0:
            self._event(EV_DISCONNECT, pi, REASON_UNREACHABLE)
            self.c.peers_lost += 1
        self._unbind_all(pi)
        self._forget_name(pi)

    cdef int _deliver(self, Peer *p, Address *a, Msg *m, uint64_t seq) noexcept nogil:
        """Send one DELIVER: 0 sent, 1 peer's pipe full, -1 peer unreachable."""
        cdef char buf[DELIVER_FIXED + 4 * 255]
        cdef size_t tl = m.tmpl_len
        cdef size_t la = a.name.size()
        cdef zmq_msg_t body
        cdef int err
        memcpy(buf, tmpl(m), tl)
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
        cdef uint64_t hop
        if a.online_since_us <= m.accepted_us and a.attempts == 0:
            # the hop proper: recipient online when it came, first send (time spent
            # waiting for an offline recipient or a retry is not the router's hop)
            hop = self.send_us - m.recv_us if self.send_us > m.recv_us else 0
            observe(self.c.hop[m.cls], hop)
            self.c.hop_sum_us[m.cls] += hop
        return 0

    cdef void _to_broker(self, int pi, zmq_msg_t *f, int n) noexcept nogil:
        """Service traffic (READY/REQUEST/REPLY) goes to the Python broker
        (router/broker.py): the loop hands it over once the socket is drained, or after
        BROKER_BATCH commands or BROKER_WAIT_MS, whichever comes first."""
        cdef BrokerMsg b
        b.identity = self.peers[pi].identity
        b.header = string(<const char *>zmqapi.msg_data(&f[1]), zmqapi.msg_size(&f[1]))
        if n > 2:
            b.payload = string(<const char *>zmqapi.msg_data(&f[2]), zmqapi.msg_size(&f[2]))
        if self.broker_inbox.empty():
            self.broker_since_ms = self.now_us // 1000
        self.broker_inbox.push_back(b)

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
        self._journal_small(REC_ACK, seq, a.name, 0, 0)
        cdef uint64_t now_wall = wall_us(), lat
        while not a.rel.empty() and a.rel.front().seq <= seq:
            m = a.rel.front().msg
            if not self.replaying:
                lat = now_wall - m.accepted_us if now_wall > m.accepted_us else 0
                if a.peer >= 0 and a.online_since_us <= m.accepted_us:
                    observe(self.c.delivery[m.cls], lat)  # bound since before it came
                    self.c.delivery_sum_us[m.cls] += lat
                else:
                    observe(self.c.delivery_offline[m.cls], lat)  # waited for the recipient
                    self.c.delivery_offline_sum_us[m.cls] += lat
            if not m.order.empty() and not self.replaying:
                self._hist(H_ACKED, m, a.name, a.rel.front().seq, 0, 0)
            a.rel.pop_front()
            if a.sent > 0:
                a.sent -= 1
            m.pending -= 1
            if m.pending == 0 and not m.finished:
                m.finished = True
                self._receipt(m, ST_DELIVERED, 0)
            self._unqueued(m)
            self._release(m)
        a.acked = seq
        a.attempts = 0  # progress: the redelivery backoff starts over
        a.inflight_ms = self.now_us // 1000 if a.sent > 0 else 0
        if a.peer >= 0 and a.sent < a.rel.size():
            self._mark_dirty(ai)

    cdef void _expire_entry(self, Address *a, size_t idx, uint8_t status,
                            uint16_t code) noexcept nogil:
        """Drop one entry (TTL passed, or too many attempts); its seq is skipped, never
        reused, and the endpoint's next ack covers it."""
        cdef Msg *m = a.rel[idx].msg
        a.rel.erase_at(idx)
        if idx < a.sent:
            a.sent -= 1
        m.pending -= 1
        if not m.finished:
            m.finished = True
            self._receipt(m, status, code)
        if status == ST_EXPIRED:
            self.c.expired += 1
        self._unqueued(m)
        self._release(m)

    cdef void _receipt(self, Msg *m, uint8_t status, uint16_t code) noexcept nogil:
        """A receipt for ``m``: to the connection that sent it, or else to whichever
        connection now carries the sender's name (it reconnected, or we restarted)."""
        cdef int pi = m.sender
        cdef uint32_t gen = m.sender_gen
        if status != ST_ACCEPTED and status != ST_REFUSED:
            self._finish(m, status, code)
        if self.replaying:
            return
        if pi < 0 or not self.peers[pi].live or self.peers[pi].gen != gen or self.peers[pi].gone:
            it = self.peer_by_name.find(m.sender_name)
            if it == self.peer_by_name.end():
                self._hold_receipt(m, status, code)
                return
            pi = deref(it).second
            gen = self.peers[pi].gen
        self._receipt_to(pi, gen, m.msg_id, status, code)

    cdef void _hold_receipt(self, Msg *m, uint8_t status, uint16_t code) noexcept nogil:
        """Keep a receipt for a sender that is not connected; its next HELLO gets it.
        Bounded: at most OUTBOX_MAX entries per sender name, OUTBOX_NAMES names."""
        cdef uint8_t entry[11]
        self.c.receipts[status] += 1
        if not self.outbox.count(m.sender_name) and self.outbox.size() >= OUTBOX_NAMES:
            self.c.receipts_dropped += 1
            return
        cdef string *box = &self.outbox[m.sender_name]
        if box.size() >= OUTBOX_MAX * 11:
            self.c.receipts_dropped += 1
            return
        put64(entry, m.msg_id)
        entry[8] = status
        put16(entry + 9, code)
        box.append(<const char *>entry, 11)

    cdef void _deliver_outbox(self, int pi) noexcept nogil:
        """Hand a (re)connected sender the receipts kept while it was away."""
        it = self.outbox.find(self.peers[pi].name)
        if it == self.outbox.end():
            return
        cdef const uint8_t *e = <const uint8_t *>deref(it).second.data()
        cdef size_t i, n = deref(it).second.size() // 11
        cdef Peer *p = self.peers[pi]
        for i in range(n):  # counted when they were held
            self._append_receipt(p, pi, get64(e + i * 11), e[i * 11 + 8], get16(e + i * 11 + 9))
        self.outbox.erase(it)

    cdef void _finish(self, Msg *m, uint8_t status, uint16_t code) noexcept nogil:
        """Record a final outcome: dedup replies, the journal, the order's history."""
        cdef DedupEntry *seen = self.dedup.find(m.sender_id, m.msg_id)
        if seen != NULL:
            seen.status = status
            seen.code = <uint8_t>code
        self._journal_small(REC_FIN, m.msg_id, m.sender_name, status, code)
        if not m.order.empty():
            self._hist(H_FINAL, m, string(), 0, status, code)

    cdef void _receipt_to(self, int pi, uint32_t gen, uint64_t msg_id, uint8_t status,
                          uint16_t code) noexcept nogil:
        cdef Peer *p = self.peers[pi]
        self.c.receipts[status] += 1
        if not p.live or p.gen != gen or p.gone:
            self.c.receipts_dropped += 1
            return
        self._append_receipt(p, pi, msg_id, status, code)

    cdef void _append_receipt(self, Peer *p, int pi, uint64_t msg_id, uint8_t status,
                              uint16_t code) noexcept nogil:
        """Add one entry to the peer's RECEIPT batch (flushed once per loop pass)."""
        cdef uint8_t entry[11]
        cdef uint8_t head[6]
        put64(entry, msg_id)
        entry[8] = status
        put16(entry + 9, code)
        if p.nreceipts == 0:
            head[0] = SIGNATURE
            head[1] = VERSION
            head[2] = CMD_RECEIPT
            head[3] = 0
            put16(head + 4, 0)  # the count, set at flush
            p.receipts.assign(<const char *>head, 6)
            self.receipt_peers.push_back(pi)
        p.receipts.append(<const char *>entry, 11)
        p.nreceipts += 1
        if p.nreceipts >= RECEIPT_FLUSH:
            self._flush_receipts(pi)

    cdef bint _flush_receipts(self, int pi) noexcept nogil:
        """Send the peer's batched receipts; False if its pipe is full (kept for later)."""
        cdef Peer *p = self.peers[pi]
        if p.nreceipts == 0 or not p.live or p.gone:
            p.nreceipts = 0
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
            if code < 32:
                self.c.refused[code] += 1
        self._error(pi, code, msg_id, text)

    cdef void _error(self, int pi, uint16_t code, uint64_t msg_id, const char *text) noexcept nogil:
        """Send ERROR to one peer, at most errors_per_second of them per second."""
        cdef Peer *p = self.peers[pi]
        cdef uint64_t now = mono_ms()
        cdef uint8_t hdr[14]
        cdef size_t tl = 0
        if p.gone:
            return  # nothing is sent to a departed connection
        if code < 32:
            self.c.errors[code] += 1  # counted whether or not the limit lets it out
        if now - p.err_window_ms >= 1000:
            p.err_window_ms = now
            p.errs = 0
            p.bad = 0
        p.errs += 1
        if is_peer_fault(code):
            p.bad += 1
        if p.errs > self.errors_per_second:
            self.c.errors_suppressed += 1
            if p.errs > self.errors_per_second + 1:
                return
            # the first one over the limit is replaced by a notice that the rest are quiet
            code = E_RATE_LIMITED
            msg_id = 0
            text = "too many bad requests: further errors this second are not reported"
            self.c.errors[code] += 1
        hdr[0] = SIGNATURE
        hdr[1] = VERSION
        hdr[2] = CMD_ERROR
        hdr[3] = 0
        put16(hdr + 4, code)
        put64(hdr + 6, msg_id)
        while text[tl] != 0:
            tl += 1
        if zmqapi.send(self.sock, p.identity.data(), p.identity.size(),
                       ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0:
            return
        zmqapi.send(self.sock, hdr, 14, ZMQ_SNDMORE)
        zmqapi.send(self.sock, text, tl, 0)
        if p.errs == 1 and not is_load_refusal(code):
            self._event(EV_ERROR, pi, code)  # one log line per peer per second at most

    cdef void _welcome(self, int pi) noexcept nogil:
        """WELCOME: heartbeat, liveness and payload cap, then the extension (layout 1,
        router/protocol.py WELCOME_EXT) with the tunables a client needs to behave:
        window, retry interval and cap, max attempts, dedup window, error rate."""
        cdef Peer *p = self.peers[pi]
        cdef uint8_t hdr[38]
        hdr[0] = SIGNATURE
        hdr[1] = VERSION
        hdr[2] = CMD_WELCOME
        hdr[3] = 0
        put32(hdr + 4, self.hb_ms)
        hdr[8] = <uint8_t>self.liveness
        put32(hdr + 9, self.max_payload)
        hdr[13] = WELCOME_EXT_VERSION
        put32(hdr + 14, self.window)
        put32(hdr + 18, self.retry_ms)
        put32(hdr + 22, self.retry_max_ms)
        put32(hdr + 26, self.max_attempts)
        put32(hdr + 30, <uint32_t>self.dedup_ms)
        put32(hdr + 34, self.errors_per_second)
        if zmqapi.send(self.sock, p.identity.data(), p.identity.size(),
                       ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0:
            zmqapi.send(self.sock, hdr, 38, 0)

    # ---- peers and addresses -------------------------------------------------------------

    cdef int _peer_slot(self, const char *ident, size_t n, uint64_t now) noexcept nogil:
        # Messages come in bursts from one peer: check the last one before hashing.
        cdef Peer *last
        if self.last_pi >= 0:
            last = self.peers[self.last_pi]
            if last.identity.size() == n and memcmp(last.identity.data(), ident, n) == 0:
                return self.last_pi
        self.last_pi = self._find_or_add_peer(string(ident, n), now)
        return self.last_pi

    cdef int _find_or_add_peer(self, const string &ident, uint64_t now) noexcept nogil:
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
        p.bad = 0
        p.hellos = 0
        p.hello_window_ms = 0
        p.blocked = False
        p.gone = False
        self.peer_by_id[ident] = pi
        return pi

    cdef int _address_slot(self, int pi, const uint8_t *name, uint8_t ln) noexcept nogil:
        """Find or create an address; on a bad name or a full table, refuse and return -1."""
        if not valid_address(name, ln):
            self._error(pi, E_BAD_ADDRESS, 0,
                        "an address is <kind>:<id> (both parts non-empty), 1..255 "
                        "printable ASCII bytes without spaces")
            return -1
        return self._address_of(pi, string(<const char *>name, ln))

    cdef int _address_of(self, int pi, const string &key) noexcept nogil:
        """Find or create the address ``key`` (already validated); -1 if the table is full."""
        cdef int ai = self.addr_by_name.find(key)
        if ai >= 0:
            return ai
        if self.addrs.size() >= self.max_addresses:
            self._error(pi, E_ADDRESS_LIMIT, 0, "the router's address table is full")
            return -1
        return self._new_address(key)

    cdef int _new_address(self, const string &key) noexcept nogil:
        cdef Address *a = new Address()
        a.name = key
        a.peer = -1
        a.next_seq = 0
        a.acked = 0
        a.sent = 0
        a.dirty = False
        a.online_since_us = 0
        cdef int ai = <int>self.addrs.size()
        self.addrs.push_back(a)
        self.addr_by_name.insert(&a.name)
        return ai

    cdef void _bind(self, int pi, int ai, uint64_t cursor) noexcept nogil:
        """Bind an address to a peer; ``cursor`` is the last sequence the peer holds."""
        cdef Address *a = self.addrs[ai]
        if a.peer >= 0 and a.peer != pi:
            self._taken_over(a.peer, pi, ai)  # the newest binding wins
        if a.peer != pi:
            self.peers[pi].addrs.push_back(ai)
            a.online_since_us = self.wall_now_us  # the pass clock, as accepted_us
        a.peer = pi
        a.attempts = 0
        if cursor > a.next_seq:
            # The peer holds sequences this router never issued (its state was lost):
            # continue numbering above the cursor so nothing new looks like a repeat.
            a.next_seq = cursor
        self._ack_to(ai, cursor)
        a.sent = 0  # anything unacked goes again, in order
        self._mark_dirty(ai)

    cdef void _taken_over(self, int old, int pi, int ai) noexcept nogil:
        """Another connection binds an address ``old`` holds: tell the old holder (an
        ERROR it can show, rate-limited like any other) and log it once per second per
        old holder, naming both peers."""
        cdef Peer *o = self.peers[old]
        cdef Address *a = self.addrs[ai]
        cdef char text[600]
        cdef bint first = o.errs == 0 or mono_ms() - o.err_window_ms >= 1000
        remove_int(o.addrs, ai)
        self.c.takeovers += 1
        snprintf(text, sizeof(text), "address %s was bound by another connection (%s): "
                 "deliveries for it go there now", a.name.c_str(), self.peers[pi].name.c_str())
        self._error(old, E_ADDRESS_TAKEN, 0, text)
        cdef size_t logged = self.events.size()
        if first:
            self._event(EV_TAKEOVER, old, 0)
            if self.events.size() > logged:  # not dropped by the events cap
                self.events.back().detail = a.name + string(b" by ") + self.peers[pi].name

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
        if p.role != 0 and not p.gone:
            self._event(EV_DISCONNECT, pi, reason)
            if reason != REASON_BYE:
                self.c.peers_lost += 1
        self._unbind_all(pi)
        self._forget_name(pi)
        self.c.receipts_dropped += p.nreceipts
        p.nreceipts = 0
        p.live = False
        p.gen += 1
        self.last_pi = -1
        self.peer_by_id.erase(p.identity)
        self.free_peers.push_back(pi)

    cdef uint32_t _intern(self, const string &name) noexcept nogil:
        """A small stable number for a sender name (never forgotten: names are few)."""
        it = self.sender_ids.find(name)
        if it != self.sender_ids.end():
            return deref(it).second
        cdef uint32_t sid = <uint32_t>self.sender_ids.size() + 1
        self.sender_ids[name] = sid
        self.sender_queued.resize(sid + 1, 0)
        return sid

    cdef void _forget_name(self, int pi) noexcept nogil:
        it = self.peer_by_name.find(self.peers[pi].name)
        if it != self.peer_by_name.end() and deref(it).second == pi:
            self.peer_by_name.erase(it)

    cdef void _redeliver(self, uint64_t now) noexcept nogil:
        """Go-back-N: an address whose in-flight head got no ack within the backoff
        has its whole window sent again, in order; after max_attempts the head fails."""
        cdef size_t i
        cdef vector[int] keep
        cdef Address *a
        cdef uint64_t backoff, resent
        for i in range(self.inflight.size()):
            a = self.addrs[self.inflight[i]]
            if a.peer < 0 or a.sent == 0 or a.inflight_ms == 0:
                a.tracked = False
                a.inflight_ms = 0
                continue
            keep.push_back(self.inflight[i])
            backoff = min(<uint64_t>self.retry_ms << min(a.attempts, 20u), <uint64_t>self.retry_max_ms)
            if now - a.inflight_ms < backoff:
                continue
            a.attempts += 1
            resent = a.sent  # every message of the window goes again
            if self.max_attempts and a.attempts > self.max_attempts:
                a.sent = 1
                self._expire_entry(a, 0, ST_FAILED, E_MAX_ATTEMPTS)
                self.c.failed += 1
                a.attempts = 0
                resent -= 1  # ... but the head, which failed
            self.c.redeliveries += resent
            a.sent = 0
            a.inflight_ms = 0
            self._mark_dirty(self.inflight[i])
        self.inflight.swap(keep)

    cdef void _expire_dedup(self, uint64_t now) noexcept nogil:
        """End dedup windows that are over, at most DEDUP_EXPIRE_PER_TICK per tick, so
        expiry is spread over the ticks instead of stopping the loop once a second."""
        cdef int n = 0
        cdef DedupEntry *e
        while (n < DEDUP_EXPIRE_PER_TICK and not self.dedup_exp.empty()
               and self.dedup_exp.front().expires_ms <= now):
            e = self.dedup.find(self.dedup_exp.front().sender, self.dedup_exp.front().msg_id)
            # the entry may have been remembered again since (refused, then resent):
            # only the window this record opened ends here
            if e != NULL and e.stamp == stamp_of(self.dedup_exp.front().expires_ms):
                self.dedup.erase(e)
            self.dedup_exp.pop_front()
            n += 1

    cdef void _expire_ttls(self, uint64_t now) noexcept nogil:
        """Every tick: expire the reliable entries whose TTL has passed, queued or in
        flight, bound or not, from the deadline heap (at most EXPIRE_PER_TICK a tick).
        A timer whose entry was acked or dropped meanwhile finds nothing and is dropped."""
        cdef int n = 0
        cdef Timer t
        cdef Address *a
        cdef long idx
        while n < EXPIRE_PER_TICK and not self.timers.empty() and self.timers.top().due_ms <= now:
            t = self.timers.top()
            self.timers.pop()
            a = self.addrs[t.addr]
            idx = self._entry_index(a, t.seq)
            if idx < 0 or a.rel[idx].msg.expire_us == 0 or a.rel[idx].msg.expire_us > now:
                continue
            self._expire_entry(a, <size_t>idx, ST_EXPIRED, E_EXPIRED)
            if a.peer >= 0:
                self._mark_dirty(t.addr)  # the window has room for the next entry
            n += 1
        if self.timers.size() > 2 * self.c.queued + 65536:
            self._compact_timers()

    cdef long _entry_index(self, Address *a, uint64_t seq) noexcept nogil:
        """Index of the entry with ``seq`` in the address's reliable queue, or -1
        (binary search: the queue is in sequence order)."""
        cdef size_t lo = 0, hi = a.rel.size(), mid
        while lo < hi:
            mid = (lo + hi) // 2
            if a.rel[mid].seq < seq:
                lo = mid + 1
            else:
                hi = mid
        if lo < a.rel.size() and a.rel[lo].seq == seq:
            return <long>lo
        return -1

    cdef void _compact_timers(self) noexcept nogil:
        """Drop the timers of entries that are gone (acked before their deadline)."""
        cdef size_t i, kept = 0
        cdef Timer *ts = self.timers.slots()
        for i in range(self.timers.size()):
            if self._entry_index(self.addrs[ts[i].addr], ts[i].seq) >= 0:
                ts[kept] = ts[i]
                kept += 1
        self.timers.keep_first(kept)

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
        if not self.inflight.empty():
            self._redeliver(now)
        self._expire_dedup(now)
        self._expire_ttls(now)
        if beat:
            self.next_hb_ms = now + self.hb_ms
        for i in range(self.peers.size()):
            p = self.peers[i]
            if not p.live:
                continue
            if now - p.last_seen_ms > (dead_after if p.role != 0 and not p.gone
                                       else <uint64_t>self.hb_ms):
                # A connection that never said HELLO, or one known to be gone (its
                # leftovers read), holds a slot for one heartbeat only: the peer table
                # follows the live connections, however fast strangers come and go.
                self._drop_peer(<int>i, REASON_TIMEOUT)
            elif beat and p.role != 0 and not p.gone:
                if zmqapi.send(self.sock, p.identity.data(), p.identity.size(),
                               ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0:
                    zmqapi.send(self.sock, hb, 4, 0)
                elif zmqapi.errno_() == EHOSTUNREACH:
                    self._unreachable(<int>i)

    cdef void _release(self, Msg *m) noexcept nogil:
        m.refs -= 1
        if m.refs <= 0:
            if m.cls <= CLASS_CHAT and self.store is not None:
                self.seg_live[m.segment] -= 1
            zmqapi.msg_close(&m.payload)
            if self.msg_pool.size() < MSG_POOL:
                m.order.clear()  # the one field not always set when a Msg is reused
                self.msg_pool.push_back(m)
            else:
                del m

    cdef Msg *_new_msg(self) noexcept nogil:
        """A Msg from the pool of released ones (every message needs one: reusing them
        saves a malloc and a free per message), or a new one. The caller sets every
        field; ``order`` comes back empty."""
        cdef Msg *m
        if self.msg_pool.empty():
            return new Msg()
        m = self.msg_pool.back()
        self.msg_pool.pop_back()
        return m

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
