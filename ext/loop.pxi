# The loop: one pass reads up to `batch` messages (prefetching ahead), commits their
# journal records, sends what became ready, and runs the tick's housekeeping.
# Included by core.pyx.

cdef long _run(Core self, int timeout_ms) noexcept nogil:
    cdef uint64_t now = mono_ms()
    cdef uint64_t deadline = now + <uint64_t>timeout_ms
    cdef long total = 0
    cdef int k
    cdef long wait
    cdef zmq_pollitem_t item
    while True:
        if _lease_gone(self):
            return LEASE_GONE
        _clock(self)
        k = _receive_pass(self)
        if k < 0:
            return -1
        total += k
        self.c.loops += 1
        if not self.jbuf.empty():
            _commit(self)
        _clock(self)
        _flush(self)
        now = mono_ms()
        if now >= self.next_tick_ms:
            _tick(self, now)
            if not self.receipt_peers.empty():
                _flush(self)  # expiries and failures of this tick: tell them now
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
        if k >= self.batch:
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


cdef inline bint _lease_gone(Core self) noexcept nogil:
    """Whether the leadership lease this core serves under has run out (a router on
    a shared store; router/lease.py): past it, nothing more may go out."""
    return self.lease_until_ms != 0 and mono_ms() >= self.lease_until_ms


cdef inline void _clock(Core self) noexcept nogil:
    """Read the clocks for this pass: messages received in one pass share a receive
    time, which is when the router started reading them (hop latency includes the
    time they waited in the socket)."""
    self.now_us = mono_us()
    self.wall_now_us = wall_us()


cdef int _receive_pass(Core self) noexcept nogil:
    """Receive and handle up to ``batch`` commands (a PACK counts its entries, so one
    sender's packs cannot make a pass, and the wait of every other peer, longer); the
    count, or -1 on a socket error.

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
            r = _recv_frames(self, f[j], &n[j], &extra[j])
            if r <= 0:
                more = False
                if r < 0:
                    k = -1
                break
            hint[j] = _prefetch_slot(self, f[j], n[j])
            if tail - head >= PREFETCH_GAP:
                _prefetch_address(self, hint[(tail - PREFETCH_GAP) % RING])
            tail += 1
        if head == tail:
            return k
        j = head % RING
        if k >= 0:
            k += _handle(self, f[j], n[j], extra[j])
        for i in range(n[j]):
            zmqapi.msg_close(&f[j][i])
        head += 1


cdef int _recv_frames(Core self, zmq_msg_t *f, int *n, int *extra) noexcept nogil:
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


cdef uint64_t _prefetch_slot(Core self, zmq_msg_t *f, int n) noexcept nogil:
    """For a SEND to an address: hash its name, prefetch the index slot, and return
    the hash (0 otherwise). A hint only: _handle validates everything again."""
    if n != 3:
        return 0
    cdef const uint8_t *h = <const uint8_t *>zmqapi.msg_data(&f[1])
    cdef size_t hlen = zmqapi.msg_size(&f[1])
    if (hlen < SEND_FIXED or h[PREFIX_COMMAND] != CMD_SEND or h[PREFIX_FLAGS] & FLAG_CHANNEL
            or SEND_FIXED + <size_t>h[SEND_TARGET_LEN] > hlen):
        return 0
    cdef uint64_t hv = self.addr_by_name.hash(<const char *>h + SEND_FIXED, h[SEND_TARGET_LEN])
    self.addr_by_name.prefetch(hv)
    return hv


cdef void _prefetch_address(Core self, uint64_t hv) noexcept nogil:
    """The slot is (nearly) in cache now: start loading the Address it points to."""
    if hv == 0:
        return
    cdef int ai = self.addr_by_name.peek(hv)
    if ai >= 0:
        prefetch_lines(self.addrs[ai], ADDRESS_LINES)


cdef void _tick(Core self, uint64_t now) noexcept nogil:
    """Liveness and heartbeats, every TICK_MS."""
    cdef size_t i
    cdef Peer *p
    cdef uint64_t dead_after = <uint64_t>self.hb_ms * self.liveness
    cdef bint beat = now >= self.next_hb_ms
    cdef uint8_t hb[PREFIX_SIZE]
    put_prefix(hb, CMD_HEARTBEAT, 0)
    _pack_close(self)
    self.next_tick_ms = now + TICK_MS
    if not self.inflight.empty():
        _redeliver(self, now)
    _expire_dedup(self, now)
    _expire_ttls(self, now)
    cdef uint64_t t0 = mono_us()
    _reclaim_idle(self, now)
    _close_idle_channels(self, now)
    _reclaim_senders(self, now)
    _expire_outbox(self, now)
    _close_revoked(self, now)
    t0 = mono_us() - t0
    if t0 > self.c.reclaim_max_us:
        self.c.reclaim_max_us = t0  # the longest since the last metrics snapshot
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
            _drop_peer(self, <int>i, REASON_TIMEOUT)
        elif beat and p.role != 0 and not p.gone:
            if zmqapi.send(self.sock, p.identity.data(), p.identity.size(),
                           ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0:
                zmqapi.send(self.sock, hb, PREFIX_SIZE, 0)
            elif zmqapi.errno_() == EHOSTUNREACH:
                _unreachable(self, <int>i)
