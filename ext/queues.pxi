# Per-address queues: admission of reliable messages, enqueue by class (sequenced,
# best effort, conflated), quota accounting and the Msg pool. Included by core.pyx.

cdef inline const char *admit_text(int code) noexcept nogil:
    """The human message of a refusal by Core._admit."""
    if code == E_QUEUE_FULL:
        return "recipient queue full, retry later"
    if code == E_SENDER_QUOTA:
        return ("this sender has max_queued_per_sender messages waiting"
                " (recipients offline?), retry later")
    return "router overloaded, retry later"


cdef inline uint64_t quota_of(Core self, uint32_t sid) noexcept nogil:
    """The most deliveries the sender (or principal) number ``sid`` may have waiting."""
    return self.sender_limit[sid] if self.sender_limit[sid] else self.max_queued_per_sender


cdef int _admit(Core self, const int *targets, size_t ntargets, uint8_t cls,
                uint32_t sid) noexcept nogil:
    """0 to accept, or E_QUEUE_FULL / E_SENDER_QUOTA / E_OVERLOADED to refuse a
    reliable message.

    Best-effort traffic is never refused: it is shed on enqueue instead."""
    cdef size_t i
    if cls > CLASS_CHAT:
        return 0
    if self.sender_queued[sid] + ntargets > quota_of(self, sid):
        return E_SENDER_QUOTA  # one sender cannot take the whole queue from the rest
    if self.c.queued + ntargets > self.max_queued:
        return E_OVERLOADED
    for i in range(ntargets):
        if self.addrs[targets[i]].rel.size() >= self.max_queue:
            return E_QUEUE_FULL
    return 0


cdef void _enqueue(Core self, int ai, Msg *m, const string &key) noexcept nogil:
    cdef Address *a = self.addrs[ai]
    cdef Entry e
    a.last_used_ms = self.now_us // 1000
    if m.cls <= CLASS_CHAT:
        a.next_seq += 1
        e.seq = a.next_seq
        e.msg = m
        a.rel.push_back(e)
        m.pending += 1
        if m.expire_us:
            self.timers.push(m.expire_us, ai, e.seq)
        if self.store is not None:
            _journal_msg(self, a, m, e.seq)
            self.uncommitted_addrs.push_back(ai)
            m.refs += 1
            _queued(self, m)
            return  # sent once the journal commit succeeds
    elif m.cls == CLASS_NOTICE:
        if self.sender_queued[m.quota_sid] >= quota_of(self, m.quota_sid):
            self.c.shed += 1  # this sender's backlog is at its quota: drop its newest
            return
        if a.notices.size() >= self.max_queue or self.c.queued >= self.max_queued:
            self.c.shed += 1  # best effort: the oldest notice makes room
            if a.notices.empty():
                return
            _unqueued(self, a.notices.front())
            _release(self, a.notices.front())
            a.notices.pop_front()
        a.notices.push_back(m)
    else:
        it = a.latest.find(key)
        if it != a.latest.end():
            _unqueued(self, deref(it).second)
            _release(self, deref(it).second)  # conflate: newest position wins
            deref(it).second = m
            self.c.conflated += 1
        else:
            a.latest[key] = m
            a.latest_order.push_back(key)
    m.refs += 1
    _queued(self, m)
    if a.peer >= 0:
        _mark_dirty(self, ai)


cdef inline void _queued(Core self, Msg *m) noexcept nogil:
    """Count one more queue entry of ``m``: in all, and against its sender's quota."""
    self.c.queued += 1
    self.sender_queued[m.quota_sid] += 1


cdef inline void _unqueued(Core self, Msg *m) noexcept nogil:
    """Count one queue entry of ``m`` gone (call before releasing it)."""
    self.c.queued -= 1
    self.sender_queued[m.quota_sid] -= 1


cdef void _mark_dirty(Core self, int ai) noexcept nogil:
    cdef Address *a = self.addrs[ai]
    if not a.dirty:
        a.dirty = True
        self.dirty.push_back(ai)


cdef void _release(Core self, Msg *m) noexcept nogil:
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


cdef Msg *_new_msg(Core self) noexcept nogil:
    """A Msg from the pool of released ones (every message needs one: reusing them
    saves a malloc and a free per message), or a new one. The caller sets every
    field; ``order`` comes back empty."""
    cdef Msg *m
    if self.msg_pool.empty():
        return new Msg()
    m = self.msg_pool.back()
    self.msg_pool.pop_back()
    return m


cdef void _drop_latest(Core self, Address *a) noexcept nogil:
    it = a.latest.begin()
    while it != a.latest.end():
        _release(self, deref(it).second)
        inc(it)
    a.latest.clear()
    a.latest_order.clear()
