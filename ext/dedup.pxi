# Dedup windows: a reliable message id is remembered (with its latest receipt) until
# its window ends; windows end a bounded number per tick. Included by core.pyx.

cdef void _remember(Core self, uint32_t sender, uint64_t msg_id,
                    uint64_t expires_ms) noexcept nogil:
    """Start the dedup window of a reliable message id (status ACCEPTED), ending at
    ``expires_ms`` (monotonic)."""
    cdef DedupEntry *e
    cdef DedupExp x
    if self.dedup_ms == 0:
        return
    self.sender_last_ms[sender] = self.now_us // 1000
    e = self.dedup.upsert(sender, msg_id)
    e.status = ST_ACCEPTED
    e.code = 0
    e.stamp = stamp_of(expires_ms)
    x.expires_ms = expires_ms
    x.msg_id = msg_id
    x.sender = sender
    self.dedup_exp.push_back(x)


cdef void _expire_dedup(Core self, uint64_t now) noexcept nogil:
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
