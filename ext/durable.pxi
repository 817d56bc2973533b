# Durability: journal records of reliable messages, acks and final outcomes, the group
# commit that precedes every send, the rollback of a failed commit, and the replay of
# records at start-up. The record layout is journal.pxi's. Included by core.pyx.

cdef void _journal_msg(Core self, Address *a, Msg *m, uint64_t seq) noexcept nogil:
    """Append the MSG record of one (address, seq) delivery to this pass's batch."""
    cdef const char *t = tmpl(m)
    cdef size_t lk = <uint8_t>t[DELIVER_KIND_LEN], lf = <uint8_t>t[DELIVER_SENDER_LEN]
    cdef size_t lc = <uint8_t>t[DELIVER_CHANNEL_LEN]
    cdef size_t start = rec_begin(self.jbuf, REC_MSG)
    cdef uint64_t expire_wall = 0
    cdef uint8_t fixed[JMSG_FIXED]
    if m.expire_us:
        expire_wall = m.accepted_us + (m.expire_us - mono_ms()) * 1000
    put64(fixed + JMSG_SEQ, seq)
    put64(fixed + JMSG_ID, m.msg_id)
    put64(fixed + JMSG_ACCEPTED, m.accepted_us)
    put64(fixed + JMSG_EXPIRE, expire_wall)
    fixed[JMSG_CLASS] = m.cls
    fixed[JMSG_FLAGS] = <uint8_t>t[PREFIX_FLAGS]  # the template's flags: LZ4 or none
    self.jbuf.append(<const char *>fixed, JMSG_FIXED)
    rec_name(self.jbuf, a.name)
    rec_name(self.jbuf, m.sender_name)
    self.jbuf.push_back(<char>lk)
    self.jbuf.append(t + DELIVER_FIXED, lk)
    self.jbuf.push_back(<char>lc)
    self.jbuf.append(t + DELIVER_FIXED + lk + lf, lc)
    rec_name(self.jbuf, m.order)
    self.jbuf.append(<const char *>zmqapi.msg_data(&m.payload), zmqapi.msg_size(&m.payload))
    rec_end(self.jbuf, start)
    self.jsync = True


cdef void _journal_small(Core self, uint8_t kind, uint64_t v, const string &name,
                         uint8_t status, uint16_t code) noexcept nogil:
    """Append an ACK (v = seq) or FIN (v = msg id) record; these need no fsync:
    losing one only means a redelivery the endpoint drops, or a weaker dedup reply."""
    if self.store is None or self.replaying:
        return
    cdef size_t start = rec_begin(self.jbuf, kind)
    cdef uint8_t ack[JACK_FIXED]
    cdef uint8_t fin[JFIN_FIXED]
    if kind == REC_FIN:
        put64(fin + JFIN_ID, v)
        fin[JFIN_STATUS] = status
        put16(fin + JFIN_CODE, code)
        self.jbuf.append(<const char *>fin, JFIN_FIXED)
    else:
        put64(ack + JACK_SEQ, v)
        self.jbuf.append(<const char *>ack, JACK_FIXED)
    rec_name(self.jbuf, name)
    rec_end(self.jbuf, start)


cdef void _commit(Core self) noexcept nogil:
    """Group commit: hand this pass's records to the store; only then accept and
    send the messages in it. On failure they are taken back and refused."""
    cdef bint ok
    cdef size_t i
    cdef uint64_t t0 = mono_us()
    with gil:
        ok = _store_commit(self)
    t0 = mono_us() - t0
    observe(self.c.commit, t0)
    self.c.commit_sum_us += t0
    self.jbuf.clear()
    self.jsync = False
    if ok:
        self.c.commits += 1
        for i in range(self.uncommitted_addrs.size()):
            _mark_dirty(self, self.uncommitted_addrs[i])
        for i in range(self.uncommitted.size()):
            _accepted(self, self.uncommitted[i])
            _release(self, self.uncommitted[i])
    else:
        self.c.commit_failures += 1
        _rollback(self)
    self.uncommitted.clear()
    self.uncommitted_addrs.clear()


cdef bint _store_commit(Core self):
    try:
        self.store.commit(<bytes>self.jbuf, self.jsync)
        self.c.journal_bytes += self.jbuf.size()
        return True
    except Exception as exc:
        self._store_error = exc
        return False


cdef void _rollback(Core self) noexcept nogil:
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
        _unqueued(self, m)
        _release(self, m)
    for i in range(self.uncommitted.size()):
        m = self.uncommitted[i]
        m.finished = True
        seen = self.dedup.find(m.sender_id, m.msg_id)
        if seen != NULL:
            self.dedup.erase(seen)
        _receipt(self, m, ST_REFUSED, E_STORAGE_FAILED)
        if m.sender >= 0 and self.peers[m.sender].live and self.peers[m.sender].gen == m.sender_gen:
            _error(self, m.sender, E_STORAGE_FAILED, m.msg_id,
                        "the journal could not store the message (disk full?): retry later")
        _release(self, m)
    if not self.uncommitted.empty():
        _event(self, EV_STORAGE, self.uncommitted[0].sender, E_STORAGE_FAILED)


cdef void _accepted(Core self, Msg *m) noexcept nogil:
    _receipt(self, m, ST_ACCEPTED, 0)
    if not m.order.empty():
        _hist(self, H_ACCEPTED, m, string(), 0, ST_ACCEPTED, 0)


cdef bint _replay_record(Core self, const uint8_t *p, uint32_t n):
    """Apply one journal record during start-up; False if it does not parse."""
    cdef const uint8_t *end = p + n
    cdef uint8_t kind = p[JREC_KIND]
    cdef string addr
    cdef size_t fixed
    cdef int ai
    p += JREC_FIELDS
    if kind != REC_MSG:
        self.replay_msg = NULL  # channel members' records are contiguous
    if kind == REC_FLOOR:
        if p + JFLOOR_FIXED != end:
            return False
        if get64(p + JFLOOR_SEQ) > self.seq_floor:
            self.seq_floor = get64(p + JFLOOR_SEQ)
        return True
    if kind == REC_ACK or kind == REC_CURSOR or kind == REC_FIN:
        # fixed fields, then one name (the address; for FIN the sender), ending the body
        fixed = (JACK_FIXED if kind == REC_ACK else
                 JCURSOR_FIXED if kind == REC_CURSOR else JFIN_FIXED)
        if p + fixed > end:
            return False
        if rd_name(p + fixed, end, addr) != end:
            return False
        if kind == REC_FIN:
            seen = self.dedup.find(_intern(self, addr), get64(p + JFIN_ID))
            if seen != NULL:
                seen.status = p[JFIN_STATUS]
                seen.code = <uint8_t>get16(p + JFIN_CODE)  # error codes fit 8 bits
            return True
        ai = _restore_address(self, addr)
        if kind == REC_CURSOR:
            if get64(p + JCURSOR_NEXT_SEQ) > self.addrs[ai].next_seq:
                self.addrs[ai].next_seq = get64(p + JCURSOR_NEXT_SEQ)
            _ack_to(self, ai, get64(p + JCURSOR_ACKED))
        else:
            _ack_to(self, ai, get64(p + JACK_SEQ))
        return True
    if kind != REC_MSG or p + JMSG_FIXED > end:
        return False
    return _replay_msg(self, p, end)


cdef bint _replay_msg(Core self, const uint8_t *p, const uint8_t *end):
    cdef uint64_t seq = get64(p + JMSG_SEQ), msg_id = get64(p + JMSG_ID)
    cdef uint64_t acc = get64(p + JMSG_ACCEPTED), expire_wall = get64(p + JMSG_EXPIRE)
    cdef uint8_t cls = p[JMSG_CLASS], flags = p[JMSG_FLAGS]
    cdef string addr, sender, kind, chan, order
    p += JMSG_FIXED
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
    cdef int ai = _restore_address(self, addr)
    cdef Address *a = self.addrs[ai]
    cdef uint64_t now_wall = wall_us()
    cdef uint32_t sid = _intern(self, sender)
    if (self.dedup_ms and acc + self.dedup_ms * 1000 > now_wall
            and self.dedup.find(sid, msg_id) == NULL):
        # the rest of its window, counted from when it was first accepted
        _remember(self, sid, msg_id,
                       mono_ms() + (acc + self.dedup_ms * 1000 - now_wall) // 1000)
    if seq > a.next_seq:
        a.next_seq = seq
    if seq <= a.acked or (not a.rel.empty() and seq <= a.rel.back().seq):
        return True  # already acked, or a repeated record
    cdef Msg *m
    if self.replay_msg != NULL and self.replay_sid == sid and self.replay_id == msg_id:
        m = self.replay_msg  # another member of the same channel send
    else:
        m = _new_msg(self)
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
        m.quota_sid = sid
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
    _queued(self, m)
    return True


cdef int _restore_address(Core self, const string &name) noexcept nogil:
    """Find or create an address named in the journal (no table limit at start-up)."""
    cdef int ai = self.addr_by_name.find(name)
    return ai if ai >= 0 else _new_address(self, name, 0)
