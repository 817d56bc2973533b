# Receipts to senders: final outcomes recorded (dedup, journal, history), batched
# RECEIPT frames per peer and pass, and an outbox for senders that are away.
# Included by core.pyx.

cdef void _settle(Core self, Msg *m, uint8_t status, uint16_t code) noexcept nogil:
    """A final outcome (DELIVERED, EXPIRED, FAILED): recorded where it must outlive the
    message (dedup replies, the journal, the order's history), then told to the sender."""
    _record_outcome(self, m, status, code)
    _receipt(self, m, status, code)


cdef void _receipt(Core self, Msg *m, uint8_t status, uint16_t code) noexcept nogil:
    """A receipt for ``m``: to the connection that sent it, or else to whichever
    connection now carries the sender's name (it reconnected, or we restarted)."""
    cdef int pi = m.sender
    cdef uint32_t gen = m.sender_gen
    if self.replaying:
        return
    if pi < 0 or not self.peers[pi].live or self.peers[pi].gen != gen or self.peers[pi].gone:
        it = self.peer_by_name.find(m.sender_name)
        if it == self.peer_by_name.end():
            _hold_receipt(self, m, status, code)
            return
        pi = deref(it).second
        gen = self.peers[pi].gen
    _receipt_to(self, pi, gen, m.msg_id, status, code)


cdef void _hold_receipt(Core self, Msg *m, uint8_t status, uint16_t code) noexcept nogil:
    """Keep a receipt for a sender that is not connected; its next HELLO gets it.
    Bounded: at most OUTBOX_MAX entries per sender name, OUTBOX_NAMES names."""
    cdef uint8_t entry[RECEIPT_ENTRY_SIZE]
    self.c.receipts[status] += 1
    if not self.outbox.count(m.sender_name) and self.outbox.size() >= OUTBOX_NAMES:
        self.c.receipts_dropped += 1
        return
    cdef string *box = &self.outbox[m.sender_name]
    cdef OutboxAge age
    if box.empty():  # a new box: it is dropped OUTBOX_KEEP_MS from now if still unclaimed
        age.since_ms = self.now_us // 1000
        age.name = m.sender_name
        self.outbox_ages.push_back(age)
        self.outbox_since[m.sender_name] = age.since_ms
    if box.size() >= OUTBOX_MAX * RECEIPT_ENTRY_SIZE:
        self.c.receipts_dropped += 1
        return
    put64(entry + RECEIPT_ID, m.msg_id)
    entry[RECEIPT_STATUS] = status
    put16(entry + RECEIPT_CODE, code)
    box.append(<const char *>entry, RECEIPT_ENTRY_SIZE)


cdef void _deliver_outbox(Core self, int pi) noexcept nogil:
    """Hand a (re)connected sender the receipts kept while it was away."""
    it = self.outbox.find(self.peers[pi].name)
    if it == self.outbox.end():
        return
    cdef const uint8_t *e = <const uint8_t *>deref(it).second.data()
    cdef size_t i, n = deref(it).second.size() // RECEIPT_ENTRY_SIZE
    cdef Peer *p = self.peers[pi]
    for i in range(n):  # counted when they were held
        _append_receipt(self, p, pi, get64(e + RECEIPT_ID), e[RECEIPT_STATUS],
                        get16(e + RECEIPT_CODE))
        e += RECEIPT_ENTRY_SIZE
    self.outbox.erase(it)
    self.outbox_since.erase(self.peers[pi].name)


cdef void _expire_outbox(Core self, uint64_t now) noexcept nogil:
    """Drop receipts held for a sender name that has not come back within
    OUTBOX_KEEP_MS of its first held receipt (counted as dropped receipts)."""
    cdef int n = 0
    while (n < CHANNEL_CHECKS_PER_TICK and not self.outbox_ages.empty()
           and now - self.outbox_ages.front().since_ms >= OUTBOX_KEEP_MS):
        n += 1
        it = self.outbox_since.find(self.outbox_ages.front().name)
        if it != self.outbox_since.end() and deref(it).second == self.outbox_ages.front().since_ms:
            box = self.outbox.find(deref(it).first)
            if box != self.outbox.end():
                self.c.receipts_dropped += deref(box).second.size() // RECEIPT_ENTRY_SIZE
                self.outbox.erase(box)
            self.outbox_since.erase(it)
        self.outbox_ages.pop_front()


cdef void _record_outcome(Core self, Msg *m, uint8_t status, uint16_t code) noexcept nogil:
    """Keep a final outcome: for dedup replies, in the journal, in the order's history."""
    cdef DedupEntry *seen = self.dedup.find(m.sender_id, m.msg_id)
    if seen != NULL:
        seen.status = status
        seen.code = <uint8_t>code
    _journal_small(self, REC_FIN, m.msg_id, m.sender_name, status, code)
    if not m.order.empty():
        _hist(self, H_FINAL, m, string(), 0, status, code)


cdef void _receipt_to(Core self, int pi, uint32_t gen, uint64_t msg_id, uint8_t status,
                      uint16_t code) noexcept nogil:
    cdef Peer *p = self.peers[pi]
    self.c.receipts[status] += 1
    if not p.live or p.gen != gen or p.gone:
        self.c.receipts_dropped += 1
        return
    _append_receipt(self, p, pi, msg_id, status, code)


cdef void _append_receipt(Core self, Peer *p, int pi, uint64_t msg_id, uint8_t status,
                          uint16_t code) noexcept nogil:
    """Add one entry to the peer's RECEIPT batch (flushed once per loop pass)."""
    cdef uint8_t entry[RECEIPT_ENTRY_SIZE]
    cdef uint8_t head[RECEIPT_HEAD]
    put64(entry + RECEIPT_ID, msg_id)
    entry[RECEIPT_STATUS] = status
    put16(entry + RECEIPT_CODE, code)
    if p.nreceipts == 0:
        put_prefix(head, CMD_RECEIPT, 0)
        put16(head + RECEIPT_COUNT, 0)  # the count, set at flush
        p.receipts.assign(<const char *>head, RECEIPT_HEAD)
        self.receipt_peers.push_back(pi)
    p.receipts.append(<const char *>entry, RECEIPT_ENTRY_SIZE)
    p.nreceipts += 1
    if p.nreceipts >= RECEIPT_FLUSH:
        _flush_receipts(self, pi)


cdef bint _flush_receipts(Core self, int pi) noexcept nogil:
    """Send the peer's batched receipts; False if its pipe is full (kept for later)."""
    cdef Peer *p = self.peers[pi]
    if p.nreceipts == 0 or not p.live or p.gone:
        p.nreceipts = 0
        return True
    put16(<uint8_t *>p.receipts.data() + RECEIPT_COUNT, <uint16_t>p.nreceipts)
    _pack_close(self)
    if zmqapi.send(self.sock, p.identity.data(), p.identity.size(),
                   ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0:
        if zmqapi.errno_() == EAGAIN and p.nreceipts < 60000:
            return False
        self.c.receipts_dropped += p.nreceipts
    else:
        zmqapi.send(self.sock, p.receipts.data(), p.receipts.size(), 0)
    p.nreceipts = 0
    return True
