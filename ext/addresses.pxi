# The address table and bindings: addresses by name, created on first use within the
# limit, bound to one peer at a time (the newest binding wins). Included by core.pyx.

cdef int _address_slot(Core self, int pi, const uint8_t *name, uint8_t ln) noexcept nogil:
    """Find or create an address; on a bad name or a full table, refuse and return -1."""
    if not valid_address(name, ln):
        _error(self, pi, E_BAD_ADDRESS, 0,
                    "an address is <kind>:<id> (both parts non-empty), 1..255 "
                    "printable ASCII bytes without spaces")
        return -1
    return _address_of(self, pi, string(<const char *>name, ln))


cdef int _address_of(Core self, int pi, const string &key) noexcept nogil:
    """Find or create the address ``key`` (already validated); -1 if the table is full."""
    cdef int ai = self.addr_by_name.find(key)
    if ai >= 0:
        return ai
    if self.addrs.size() >= self.max_addresses:
        _error(self, pi, E_ADDRESS_LIMIT, 0, "the router's address table is full")
        return -1
    return _new_address(self, key)


cdef int _new_address(Core self, const string &key) noexcept nogil:
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


cdef void _bind(Core self, int pi, int ai, uint64_t cursor) noexcept nogil:
    """Bind an address to a peer; ``cursor`` is the last sequence the peer holds."""
    cdef Address *a = self.addrs[ai]
    if a.peer >= 0 and a.peer != pi:
        _taken_over(self, a.peer, pi, ai)  # the newest binding wins
    if a.peer != pi:
        self.peers[pi].addrs.push_back(ai)
        a.online_since_us = self.wall_now_us  # the pass clock, as accepted_us
    a.peer = pi
    a.attempts = 0
    if cursor > a.next_seq:
        # The peer holds sequences this router never issued (its state was lost):
        # continue numbering above the cursor so nothing new looks like a repeat.
        a.next_seq = cursor
    _ack_to(self, ai, cursor)
    a.sent = 0  # anything unacked goes again, in order
    _mark_dirty(self, ai)


cdef void _taken_over(Core self, int old, int pi, int ai) noexcept nogil:
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
    _error(self, old, E_ADDRESS_TAKEN, 0, text)
    cdef size_t logged = self.events.size()
    if first:
        _event(self, EV_TAKEOVER, old, 0)
        if self.events.size() > logged:  # not dropped by the events cap
            self.events.back().detail = a.name + string(b" by ") + self.peers[pi].name


cdef void _unbind(Core self, int pi, int ai) noexcept nogil:
    cdef Address *a = self.addrs[ai]
    remove_int(self.peers[pi].addrs, ai)
    a.peer = -1
    a.sent = 0


cdef void _unbind_all(Core self, int pi) noexcept nogil:
    cdef Peer *p = self.peers[pi]
    cdef size_t i
    cdef Address *a
    for i in range(p.addrs.size()):
        a = self.addrs[p.addrs[i]]
        if a.peer == pi:
            a.peer = -1
            a.sent = 0
    p.addrs.clear()
