# Acks, redelivery and expiry of reliable entries: cumulative acks, go-back-N with
# backoff, TTL deadlines from a heap, max attempts. Included by core.pyx.

cdef void _ack_to(Core self, int ai, uint64_t seq) noexcept nogil:
    cdef Address *a = self.addrs[ai]
    cdef Msg *m
    if seq > a.next_seq:
        seq = a.next_seq
    if seq <= a.acked:
        return
    _journal_small(self, REC_ACK, seq, a.name, 0, 0)
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
            _hist(self, H_ACKED, m, a.name, a.rel.front().seq, 0, 0)
        a.rel.pop_front()
        if a.sent > 0:
            a.sent -= 1
        m.pending -= 1
        if m.pending == 0 and not m.finished:
            m.finished = True
            _settle(self, m, ST_DELIVERED, 0)
        _unqueued(self, m)
        _release(self, m)
    a.acked = seq
    a.last_used_ms = self.now_us // 1000
    a.attempts = 0  # progress: the redelivery backoff starts over
    a.inflight_ms = self.now_us // 1000 if a.sent > 0 else 0
    if a.peer >= 0 and a.sent < a.rel.size():
        _mark_dirty(self, ai)


cdef void _expire_entry(Core self, Address *a, size_t idx, uint8_t status,
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
        _settle(self, m, status, code)
    if status == ST_EXPIRED:
        self.c.expired += 1
    _unqueued(self, m)
    _release(self, m)


cdef void _redeliver(Core self, uint64_t now) noexcept nogil:
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
            _expire_entry(self, a, 0, ST_FAILED, E_MAX_ATTEMPTS)
            self.c.failed += 1
            a.attempts = 0
            resent -= 1  # ... but the head, which failed
        self.c.redeliveries += resent
        a.sent = 0
        a.inflight_ms = 0
        _mark_dirty(self, self.inflight[i])
    self.inflight.swap(keep)


cdef void _expire_ttls(Core self, uint64_t now) noexcept nogil:
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
        idx = _entry_index(self, a, t.seq)
        if idx < 0 or a.rel[idx].msg.expire_us == 0 or a.rel[idx].msg.expire_us > now:
            continue
        _expire_entry(self, a, <size_t>idx, ST_EXPIRED, E_EXPIRED)
        if a.peer >= 0:
            _mark_dirty(self, t.addr)  # the window has room for the next entry
        n += 1
    if self.timers.size() > 2 * self.c.queued + 65536:
        _compact_timers(self)


cdef long _entry_index(Core self, Address *a, uint64_t seq) noexcept nogil:
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


cdef void _compact_timers(Core self) noexcept nogil:
    """Drop the timers of entries that are gone (acked before their deadline)."""
    cdef size_t i, kept = 0
    cdef Timer *ts = self.timers.slots()
    for i in range(self.timers.size()):
        if _entry_index(self, self.addrs[ts[i].addr], ts[i].seq) >= 0:
            ts[kept] = ts[i]
            kept += 1
    self.timers.keep_first(kept)
