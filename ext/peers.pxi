# Peers: connection slots by routing id, the HELLO budget, WELCOME, leaving, and the
# events Python reads. Included by core.pyx.

cdef inline uint32_t count_hello(Peer *p, uint64_t now) noexcept nogil:
    """Count one HELLO in the peer's one-second HELLO window; the count so far."""
    if now - p.hello_window_ms >= 1000:
        p.hello_window_ms = now
        p.hellos = 0
    p.hellos += 1
    return p.hellos


cdef void _welcome(Core self, int pi) noexcept nogil:
    """WELCOME: heartbeat, liveness and payload cap, then the extension (layout 1,
    router/protocol.py WELCOME_EXT) with the tunables a client needs to behave:
    window, retry interval and cap, max attempts, dedup window, error rate."""
    cdef Peer *p = self.peers[pi]
    cdef uint8_t hdr[WELCOME_FIXED]
    put_prefix(hdr, CMD_WELCOME, FLAG_PACK)  # this router reads PACK
    put32(hdr + WELCOME_HEARTBEAT, self.hb_ms)
    hdr[WELCOME_LIVENESS] = <uint8_t>self.liveness
    put32(hdr + WELCOME_MAX_PAYLOAD, self.max_payload)
    hdr[WELCOME_LAYOUT] = WELCOME_EXT_VERSION
    put32(hdr + WELCOME_WINDOW, self.window)
    put32(hdr + WELCOME_RETRY, self.retry_ms)
    put32(hdr + WELCOME_RETRY_MAX, self.retry_max_ms)
    put32(hdr + WELCOME_MAX_ATTEMPTS, self.max_attempts)
    put32(hdr + WELCOME_DEDUP, <uint32_t>self.dedup_ms)
    put32(hdr + WELCOME_ERRORS_PER_SECOND, self.errors_per_second)
    _pack_close(self)
    if zmqapi.send(self.sock, p.identity.data(), p.identity.size(),
                   ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0:
        zmqapi.send(self.sock, hdr, WELCOME_FIXED, 0)


cdef int _peer_slot(Core self, const char *ident, size_t n, uint64_t now) noexcept nogil:
    # Messages come in bursts from one peer: check the last one before hashing.
    cdef Peer *last
    if self.last_pi >= 0:
        last = self.peers[self.last_pi]
        if last.identity.size() == n and memcmp(last.identity.data(), ident, n) == 0:
            return self.last_pi
    self.last_pi = _find_or_add_peer(self, string(ident, n), now)
    return self.last_pi


cdef int _find_or_add_peer(Core self, const string &ident, uint64_t now) noexcept nogil:
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
    p.conn = NULL
    p.has_conn = False
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
    p.packs = False
    p.packs_sent = 0
    p.packs_read = 0
    p.principal = -1
    p.key.clear()
    p.fd = -1
    p.fd_inode = 0
    self.peer_by_id[ident] = pi
    return pi


cdef void _drop_peer(Core self, int pi, int reason) noexcept nogil:
    """Forget a peer: its addresses go offline and keep their queues."""
    cdef Peer *p = self.peers[pi]
    if not p.live:
        return
    if p.role != 0 and not p.gone:
        _event(self, EV_DISCONNECT, pi, reason)
        if reason != REASON_BYE:
            self.c.peers_lost += 1
    _unbind_all(self, pi)
    _forget_name(self, pi)
    _release_sender(self, p)
    self.c.receipts_dropped += p.nreceipts
    p.nreceipts = 0
    p.live = False
    p.gen += 1
    self.last_pi = -1
    self.peer_by_id.erase(p.identity)
    self.free_peers.push_back(pi)


cdef uint32_t _intern(Core self, const string &name) noexcept nogil:
    """A small number for a sender name: the dedup key and the quota's index. Kept
    while the name is in use (see _reclaim_senders), then its number is reused."""
    it = self.sender_ids.find(name)
    if it != self.sender_ids.end():
        self.sender_last_ms[deref(it).second] = self.now_us // 1000
        return deref(it).second
    cdef uint32_t sid
    if not self.free_sids.empty():
        sid = self.free_sids.back()
        self.free_sids.pop_back()
    else:
        sid = <uint32_t>self.sender_names.size()
        self.sender_names.push_back(string())
        self.sender_queued.push_back(0)
        self.sender_last_ms.push_back(0)
        self.sender_refs.push_back(0)
        self.sender_limit.push_back(0)
    self.sender_ids[name] = sid
    self.sender_names[sid] = name
    self.sender_limit[sid] = 0
    self.sender_last_ms[sid] = self.now_us // 1000
    return sid


cdef inline void _hold_sender(Core self, Peer *p) noexcept nogil:
    """The peer sends as its name: intern it, and count the peer as a holder."""
    if p.sender_id == 0:
        p.sender_id = _intern(self, p.name)
        self.sender_refs[p.sender_id] += 1


cdef inline void _release_sender(Core self, Peer *p) noexcept nogil:
    """The peer no longer sends as its name (it left, or said HELLO again)."""
    if p.sender_id != 0:
        self.sender_refs[p.sender_id] -= 1
        p.sender_id = 0


cdef void _reclaim_senders(Core self, uint64_t now) noexcept nogil:
    """Forget sender names nobody sends as: no live connection holds the name's
    number, none of its messages is queued, and the dedup window of its last message
    has ended and been expired (so no dedup entry carries the number when it is reused).
    Walks RECLAIM_WALK_PER_TICK numbers a tick, after address_idle_ms of disuse."""
    if self.address_idle_ms == 0 or self.sender_names.size() <= 1:
        return
    cdef size_t n = min(<size_t>RECLAIM_WALK_PER_TICK, self.sender_names.size() - 1)
    cdef size_t k
    cdef uint32_t sid
    cdef uint64_t window_end
    for k in range(n):
        if self.sender_pos == 0 or self.sender_pos >= self.sender_names.size():
            self.sender_pos = 1  # number 0 is "no sender"
        sid = <uint32_t>self.sender_pos
        self.sender_pos += 1
        if (self.sender_names[sid].empty() or self.sender_refs[sid] or self.sender_queued[sid]
                or now - self.sender_last_ms[sid] < self.dedup_ms + self.address_idle_ms):
            continue
        window_end = self.sender_last_ms[sid] + self.dedup_ms
        if not self.dedup_exp.empty() and self.dedup_exp.front().expires_ms <= window_end:
            continue  # dedup expiry is behind: entries with this number may remain
        self.sender_ids.erase(self.sender_names[sid])
        self.sender_names[sid].clear()
        self.free_sids.push_back(sid)
        self.c.senders_reclaimed += 1


cdef void _forget_name(Core self, int pi) noexcept nogil:
    it = self.peer_by_name.find(self.peers[pi].name)
    if it != self.peer_by_name.end() and deref(it).second == pi:
        self.peer_by_name.erase(it)


cdef void _event(Core self, int kind, int pi, int code) noexcept nogil:
    cdef Event e
    cdef Peer *p = self.peers[pi]
    if self.events.size() >= EVENTS_MAX and (kind != EV_CONNECT and kind != EV_DISCONNECT
                                             or self.events.size() >= LIFECYCLE_EVENTS_MAX):
        # Python is not draining: drop rather than grow. Connects and disconnects are
        # kept far longer (one per connection at most): a lost disconnect would leave
        # the broker holding a worker that is gone.
        return
    e.kind = kind
    e.code = code
    e.role = p.role
    e.naddrs = <uint32_t>p.addrs.size()
    e.name = p.name
    e.identity = p.identity
    self.events.push_back(e)


cdef int _same_conn(Core self, int pi, zmq_msg_t *f, const char *ident, size_t n,
                    uint64_t now) noexcept nogil:
    """The slot for this message's connection: ``pi`` when the message came on the
    connection the slot was made for, else a new slot for the same routing id.

    A client-chosen routing id comes back on a new connection once libzmq has freed
    it (the old peer may still be listed until its liveness runs out), and with
    ROUTER_HANDOVER a new connection takes it from a live one (libzmq stops reading
    the old one). A connection is not the peer that said HELLO on another, so the old
    peer is dropped as on a disconnect (its addresses go offline and keep their
    queues) and the new one must say HELLO. One pointer load and compare per message
    (zmqapi_msg_conn)."""
    cdef Peer *p = self.peers[pi]
    cdef const void *conn = zmqapi_msg_conn(f)
    if p.has_conn:
        if conn == p.conn:
            return pi
        self.c.replaced += 1
        _drop_peer(self, pi, REASON_REPLACED)
        pi = _peer_slot(self, ident, n, now)
        if pi < 0:
            return -1
        p = self.peers[pi]
    p.conn = conn
    p.has_conn = True
    return pi
