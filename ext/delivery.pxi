# Sending: each pass flushes the addresses that have something to send, grouped by
# peer, within the in-flight window; a full pipe is retried, a gone peer goes offline.
# A peer that asked for packs gets its DELIVERs of a pass in PACK frames.
# Included by core.pyx.

cdef void _flush(Core self) noexcept nogil:
    cdef size_t i
    cdef vector[int] keep
    if _lease_gone(self):
        return  # a stale leader: another router delivers these now
    for i in range(self.blocked_peers.size()):
        self.peers[self.blocked_peers[i]].blocked = False
    self.blocked_peers.clear()
    if not self.dirty.empty():
        if self.dirty.size() > 1:
            _group_by_peer(self)
        for i in range(self.dirty.size()):
            if _lease_gone(self):    # a pause can land mid-pass: check before each
                keep.insert(keep.end(), self.dirty.begin() + i, self.dirty.end())
                break
            if _flush_address(self, self.dirty[i]):
                keep.push_back(self.dirty[i])
            else:
                self.addrs[self.dirty[i]].dirty = False  # off the list: may rejoin
        _pack_close(self)
        self.dirty.swap(keep)
    if not self.receipt_peers.empty():
        keep.clear()
        for i in range(self.receipt_peers.size()):
            if not _flush_receipts(self, self.receipt_peers[i]):
                keep.push_back(self.receipt_peers[i])
        self.receipt_peers.swap(keep)


cdef void _group_by_peer(Core self) noexcept nogil:
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


cdef bint _flush_address(Core self, int ai) noexcept nogil:
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
            _expire_entry(self, a, a.sent, ST_EXPIRED, E_EXPIRED)
            continue
        rc = _deliver(self, p, a, m, a.rel[a.sent].seq)
        if rc != 0:
            return _send_failed(self, pi, rc)
        if not m.order.empty():
            _hist(self, H_SENT, m, a.name, a.rel[a.sent].seq, 0, 0)
        if a.sent == 0:
            a.inflight_ms = now  # the redelivery timer runs from the head's send
            if not a.tracked:
                a.tracked = True
                self.inflight.push_back(ai)
        a.sent += 1
    while not a.notices.empty():
        rc = _deliver(self, p, a, a.notices.front(), 0)
        if rc != 0:
            return _send_failed(self, pi, rc)
        _unqueued(self, a.notices.front())
        _release(self, a.notices.front())
        a.notices.pop_front()
    while not a.latest_order.empty():
        it = a.latest.find(a.latest_order.front())
        m = deref(it).second
        rc = _deliver(self, p, a, m, 0)
        if rc != 0:
            return _send_failed(self, pi, rc)
        a.latest.erase(it)
        a.latest_order.pop_front()
        _unqueued(self, m)
        _release(self, m)
    return False


cdef bint _send_failed(Core self, int pi, int rc) noexcept nogil:
    if rc > 0:
        self.peers[pi].blocked = True
        self.blocked_peers.push_back(pi)
        self.c.blocked_sends += 1
        return True
    _unreachable(self, pi)
    return False


cdef void _unreachable(Core self, int pi) noexcept nogil:
    """The peer's connection is gone, but what it sent before leaving may still be
    queued for us (a sender that sends and exits): its addresses go offline and
    nothing more is sent to it (sending to a departed identity can make libzmq
    drop that queue), yet its messages are still read until its liveness runs out."""
    cdef Peer *p = self.peers[pi]
    if p.gone:
        return
    p.gone = True
    if p.role != 0:
        _event(self, EV_DISCONNECT, pi, REASON_UNREACHABLE)
        self.c.peers_lost += 1
    _unbind_all(self, pi)
    _forget_name(self, pi)


cdef int _deliver(Core self, Peer *p, Address *a, Msg *m, uint64_t seq) noexcept nogil:
    """Send one DELIVER, or add it to the peer's PACK: 0 done, 1 peer's pipe full,
    -1 peer unreachable."""
    cdef char buf[DELIVER_MAX]
    cdef size_t tl = m.tmpl_len
    cdef size_t la = a.name.size()
    cdef size_t pn = zmqapi.msg_size(&m.payload)
    cdef int rc
    memcpy(buf, tmpl(m), tl)
    put64(<uint8_t *>buf + DELIVER_SEQ, seq)
    buf[DELIVER_ADDRESS_LEN] = <char>la
    memcpy(buf + tl, a.name.data(), la)
    if _may_pack(self, p, PACK_ENTRY_SIZE + tl + la + pn):
        rc = _pack_put(self, p, buf, tl + la, &m.payload)
    else:
        _pack_close(self)  # a message too large to pack goes alone, after the open pack
        rc = _send_deliver(self, p, buf, tl + la, &m.payload)
    if rc != 0:
        return rc
    self.c.msgs_out[m.cls] += 1
    self.c.bytes_out += pn
    cdef uint64_t hop
    if a.online_since_us <= m.accepted_us and a.attempts == 0:
        # the hop proper: recipient online when it came, first send (time spent
        # waiting for an offline recipient or a retry is not the router's hop)
        hop = self.send_us - m.recv_us if self.send_us > m.recv_us else 0
        observe(self.c.hop[m.cls], hop)
        self.c.hop_sum_us[m.cls] += hop
    return 0


cdef inline bint _may_pack(Core self, Peer *p, size_t entry) noexcept nogil:
    """Whether a DELIVER of ``entry`` bytes goes into a PACK for ``p``: it asked for
    packs, the entry fits one, and the pack is open already or the peer has fewer than
    PACK_WINDOW unread. A peer that stops reading then holds PACK_WINDOW packs in its
    pipe at most, and single DELIVERs up to the high-water mark after them, as a peer
    that never asked for packs would: packs do not multiply what a stuck peer holds."""
    if not p.packs or PREFIX_SIZE + entry > PACK_MAX:
        return False
    if self.pack_to == p or p.packs_sent - p.packs_read < PACK_WINDOW:
        return True
    self.c.pack_window_full += 1
    return False


cdef int _send_deliver(Core self, Peer *p, const char *h, size_t hn,
                       zmq_msg_t *payload) noexcept nogil:
    """One DELIVER as its own message (header frame, payload frame shared, not copied)."""
    cdef zmq_msg_t body
    if zmqapi.send(self.sock, p.identity.data(), p.identity.size(),
                   ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0:
        return 1 if zmqapi.errno_() == EAGAIN else -1
    # after the routing frame is accepted the rest of the message cannot block
    zmqapi.send(self.sock, h, hn, ZMQ_SNDMORE)
    zmqapi.msg_init(&body)
    zmqapi.msg_copy(&body, payload)
    if zmqapi.msg_send(&body, self.sock, 0) < 0:
        zmqapi.msg_close(&body)
    return 0


cdef int _pack_put(Core self, Peer *p, const char *h, size_t hn,
                   zmq_msg_t *payload) noexcept nogil:
    """Add one DELIVER to ``p``'s open PACK, first opening one (its routing frame sent
    now: a full pipe shows here, before anything is committed to the pack) when none
    is open for ``p`` or this entry would take it past PACK_MAX."""
    cdef size_t pn = zmqapi.msg_size(payload)
    cdef uint8_t lens[PACK_PAYLOAD_LEN_SIZE]
    if self.pack_to != p or self.pack_buf.size() + PACK_ENTRY_SIZE + hn + pn > PACK_MAX:
        _pack_close(self)
        if zmqapi.send(self.sock, p.identity.data(), p.identity.size(),
                       ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0:
            return 1 if zmqapi.errno_() == EAGAIN else -1
        self.pack_to = p
        p.packs_sent += 1
        self.pack_buf.resize(PREFIX_SIZE)
        put_prefix(<uint8_t *>self.pack_buf.data(), CMD_PACK, 0)
    put16(lens, <uint16_t>hn)
    self.pack_buf.append(<const char *>lens, PACK_HEADER_LEN_SIZE)
    self.pack_buf.append(h, hn)
    put32(lens, <uint32_t>pn)
    self.pack_buf.append(<const char *>lens, PACK_PAYLOAD_LEN_SIZE)
    self.pack_buf.append(<const char *>zmqapi.msg_data(payload), pn)
    self.pack_entries += 1
    return 0


cdef inline void _pack_close(Core self) noexcept nogil:
    """Send the open PACK, if any. Called at the end of each flush and before anything
    else goes out on the socket: its routing frame is already sent, so no other
    message may start until this frame ends it."""
    if self.pack_to == NULL:
        return
    zmqapi.send(self.sock, self.pack_buf.data(), self.pack_buf.size(), 0)
    self.c.packs_out += 1
    self.c.packed_out += self.pack_entries
    self.pack_to = NULL
    self.pack_entries = 0
