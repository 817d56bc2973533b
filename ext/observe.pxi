# Gauges for metrics snapshots, summed by walking the address table a bounded part at a
# time. Included by core.pyx.

cdef void _walk_addresses(Core self, size_t limit) noexcept nogil:
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
            _walk_oldest(self, a.rel.front().msg.accepted_us)
        if not a.notices.empty():
            _walk_oldest(self, a.notices.front().accepted_us)
        self.walk_pos += 1
    if self.walk_pos >= self.addrs.size():
        for k in range(6):
            self.gauges[k] = self.walk[k]
            self.walk[k] = 0
        self.oldest_us = self.walk_oldest_us
        self.walk_oldest_us = 0
        self.walk_pos = 0


cdef inline void _walk_oldest(Core self, uint64_t accepted_us) noexcept nogil:
    if self.walk_oldest_us == 0 or accepted_us < self.walk_oldest_us:
        self.walk_oldest_us = accepted_us
