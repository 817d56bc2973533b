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
    if self.addr_by_name.size() >= self.max_addresses:
        _error(self, pi, E_ADDRESS_LIMIT, 0, "the router's address table is full")
        return -1
    # numbering starts above every reclaimed address's: a name that was here before
    # continues above what it held
    return _new_address(self, key, self.seq_floor)


cdef int _new_address(Core self, const string &key, uint64_t first_seq) noexcept nogil:
    """A new address (in a reclaimed slot if there is one) whose first message gets
    sequence ``first_seq + 1``."""
    cdef Address *a
    cdef int ai
    if not self.free_addrs.empty():
        ai = self.free_addrs.back()
        self.free_addrs.pop_back()
        a = self.addrs[ai]
    else:
        a = new Address()
        ai = <int>self.addrs.size()
        self.addrs.push_back(a)
    a.name = key
    a.peer = -1
    a.next_seq = first_seq
    a.acked = first_seq
    a.sent = 0
    a.dirty = False
    a.tracked = False
    a.inflight_ms = 0
    a.attempts = 0
    a.online_since_us = 0
    a.last_used_ms = self.now_us // 1000
    a.nchannels = 0
    a.free = False
    self.addr_by_name.insert_at(&a.name, ai)
    self.c.addresses_created += 1
    return ai


cdef inline bint _reclaimable(Core self, Address *a, uint64_t now) noexcept nogil:
    """Nothing queued, in flight or bound, in no channel, unused for address_idle_ms."""
    return (not a.free and a.peer < 0 and not a.dirty and not a.tracked
            and a.nchannels == 0 and a.rel.empty() and a.notices.empty()
            and a.latest.empty() and now - a.last_used_ms >= self.address_idle_ms)


cdef void _reclaim_idle(Core self, uint64_t now) noexcept nogil:
    """Free idle addresses, walking at most RECLAIM_WALK_PER_TICK slots per tick (a
    million addresses are looked at every ~12 s). Numbering never goes back: seq_floor
    keeps the highest sequence any reclaimed address reached (the journal's checkpoints
    carry it), and every address created afterwards numbers above it, so a returning
    name continues above what it held and its old cursor reads as already delivered."""
    if self.address_idle_ms == 0:
        return
    cdef size_t n = min(<size_t>RECLAIM_WALK_PER_TICK, self.addrs.size())
    cdef size_t k, ai, freed = 0
    cdef uint64_t deadline = mono_us() + RECLAIM_BUDGET_US
    cdef Address *a
    for k in range(n):
        if freed and freed % 64 == 0 and mono_us() > deadline:
            break  # each one costs a name-index erase: keep the tick short
        if self.reclaim_pos >= self.addrs.size():
            self.reclaim_pos = 0
        ai = self.reclaim_pos
        self.reclaim_pos += 1
        a = self.addrs[ai]
        if not _reclaimable(self, a, now):
            continue
        if a.next_seq > self.seq_floor:
            self.seq_floor = a.next_seq
        self.addr_by_name.erase(ai)
        a.free = True
        a.name.clear()
        self.free_addrs.push_back(<int>ai)
        self.c.addresses_reclaimed += 1
        freed += 1


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
    a.last_used_ms = self.now_us // 1000
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
    a.last_used_ms = self.now_us // 1000


cdef void _unbind_all(Core self, int pi) noexcept nogil:
    cdef Peer *p = self.peers[pi]
    cdef size_t i
    cdef Address *a
    for i in range(p.addrs.size()):
        a = self.addrs[p.addrs[i]]
        if a.peer == pi:
            a.peer = -1
            a.sent = 0
            a.last_used_ms = self.now_us // 1000
    p.addrs.clear()


cdef void _close_channel(Core self, const string &chan) noexcept nogil:
    """Forget a channel; its members may be reclaimed once idle."""
    it = self.channels.find(chan)
    if it == self.channels.end():
        return
    cdef vector[int] *members = &deref(it).second.members
    cdef size_t i
    for i in range(members.size()):
        self.addrs[deref(members)[i]].nchannels -= 1
    self.channels.erase(it)


cdef Channel *_open_channel(Core self, const string &chan) noexcept nogil:
    """The channel named ``chan``, created empty if new (with its idle-close check)."""
    cdef Channel *ch = &self.channels[chan]
    cdef ChannelCheck check
    ch.last_used_ms = self.now_us // 1000
    if not ch.checked and self.channel_idle_ms:
        ch.checked = True
        check.due_ms = ch.last_used_ms + _channel_recheck_ms(self)
        check.name = chan
        self.channel_checks.push_back(check)
    return ch


cdef inline uint64_t _channel_recheck_ms(Core self) noexcept nogil:
    """How long after it is queued a channel's check is due: short, so that the checks
    of channels closed meanwhile (most orders close theirs) leave the queue soon, and
    the same for every check, so that the queue stays in due order."""
    return min(self.channel_idle_ms, <uint64_t>CHANNEL_RECHECK_MS)


cdef void _close_idle_channels(Core self, uint64_t now) noexcept nogil:
    """Close channels nobody has used (JOIN, LEAVE, SEND) for channel_idle_ms: an order
    whose service never closed its channel. Each open channel has one check in a queue
    kept in due order (each is due CHANNEL_RECHECK_MS after it was queued, at most); a
    channel still in use is checked again later, a closed one's check is dropped, so
    the queue holds about a minute of channel openings. At most
    CHANNEL_CHECKS_PER_TICK a tick; a channel closes at most a recheck late."""
    cdef int n = 0
    cdef ChannelCheck check
    while (n < CHANNEL_CHECKS_PER_TICK and not self.channel_checks.empty()
           and self.channel_checks.front().due_ms <= now):
        check = self.channel_checks.front()
        self.channel_checks.pop_front()
        n += 1
        it = self.channels.find(check.name)
        if it == self.channels.end():
            continue  # closed meanwhile
        if now - deref(it).second.last_used_ms >= self.channel_idle_ms:
            _close_channel(self, check.name)
            self.c.channels_closed_idle += 1
        else:
            check.due_ms = now + _channel_recheck_ms(self)
            self.channel_checks.push_back(check)
