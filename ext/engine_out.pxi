# What goes to the router: the out-queue and its items (SENDs packed when the router
# reads PACK), HELLO, BIND/UNBIND and ACK lists, and the application side of the queue
# (enqueue, room under max_pending).
# Included by engine.pyx: module-level functions over the typed Engine.


cdef bint _send2(Engine self, const char *h, size_t hn, const char *b, size_t bn, bint two) noexcept nogil:
    _pack_flush(self)  # what was packed before this goes before it
    if zmqapi.send(self.sock, h, hn, ZMQ_DONTWAIT | (ZMQ_SNDMORE if two else 0)) < 0:
        self.n_send_errors += 1
        return False
    if two:
        zmqapi.send(self.sock, b, bn, 0)
    self.last_sent = eng_now_ms()
    return True


cdef bint _send_item(Engine self, const string &item) noexcept nogil:
    cdef const char *p = item.data()
    cdef uint32_t hn = eng_get32(<const unsigned char *>p + ITEM_LEN)
    cdef char kind = p[ITEM_KIND]
    cdef size_t pn = item.size() - ITEM_HEAD - hn
    if kind == b'F':
        return _send2(self, p + ITEM_HEAD, hn, NULL, 0, False)
    if ((kind == b'S' or kind == b's') and self.router_packs
            and PREFIX_SIZE + PACK_ENTRY_SIZE + hn + pn <= PACK_MAX):
        return _pack_add(self, p + ITEM_HEAD, hn, p + ITEM_HEAD + hn, pn)
    return _send2(self, p + ITEM_HEAD, hn, p + ITEM_HEAD + hn, pn, True)


cdef bint _pack_add(Engine self, const char *h, size_t hn, const char *b, size_t bn) noexcept nogil:
    """Add one SEND to the pack the loop writes once it has taken the out-queue (or
    sooner, when full or when another command must follow it); False if a full pack
    could not go."""
    cdef unsigned char lens[PACK_PAYLOAD_LEN_SIZE]
    if self.pack.size() + PACK_ENTRY_SIZE + hn + bn > PACK_MAX and not _pack_flush(self):
        return False
    if self.pack_n == 0:
        self.pack.resize(PREFIX_SIZE)
        put_prefix(<unsigned char *>self.pack.data(), CMD_PACK, 0)
    eng_put16(lens, <uint16_t>hn)
    self.pack.append(<const char *>lens, PACK_HEADER_LEN_SIZE)
    self.pack.append(h, hn)
    eng_put32(lens, <uint32_t>bn)
    self.pack.append(<const char *>lens, PACK_PAYLOAD_LEN_SIZE)
    self.pack.append(b, bn)
    self.pack_n += 1
    return True


cdef bint _pack_flush(Engine self) noexcept nogil:
    """Write the pack to libzmq; False if it has to wait. It waits while the engine
    holds (between a drop or a HELLO and the WELCOME: it follows the HELLO then) and
    when the socket refuses it; it is kept, in order, for the next try: nothing in it
    is lost, and a repeat of a reliable message that was also resent is dropped by the
    router's dedup."""
    if self.pack_n == 0:
        return True
    if _holding(self):
        return False
    if zmqapi.send(self.sock, self.pack.data(), self.pack.size(), ZMQ_DONTWAIT) < 0:
        self.n_send_errors += 1
        return False
    self.n_packs_out += 1
    self.n_packed_out += self.pack_n
    self.pack_n = 0
    self.pack.clear()
    self.last_sent = eng_now_ms()
    return True


cdef void _send_queued(Engine self) noexcept nogil:
    """Take the out-queue and acks from the application and act on them."""
    cdef vector[string] items
    cdef unordered_map[string, uint64_t] acks
    pthread_mutex_lock(&self.mu)
    items.swap(self.out_q)
    acks.swap(self.ack_q)
    pthread_mutex_unlock(&self.mu)
    _take_items(self, items)
    for kv in acks:
        if self.app_acked[kv.first] < kv.second:
            self.app_acked[kv.first] = kv.second
    for kv in self.reack:
        if acks.count(kv.first) == 0 or acks[kv.first] < kv.second:
            acks[kv.first] = kv.second
    self.reack.clear()
    if acks.size():
        _send_acks(self, acks)


cdef bint _holding(Engine self) noexcept nogil:
    """Between a drop or a (re-)HELLO and its WELCOME, sends wait in the engine:
    written to libzmq they would reach a new connection before its HELLO and be
    refused (NOT_READY)."""
    return self.resend_due or not self.link


cdef void _take_items(Engine self, vector[string] &items) noexcept nogil:
    """Act on ``items`` after what waits in the backlog, in order; what cannot go
    now (holding, or the socket said EAGAIN) joins the backlog."""
    cdef size_t i
    cdef bint stuck = False
    if self.backlog.size():
        self.backlog.insert(self.backlog.end(), items.begin(), items.end())
        items.swap(self.backlog)
        self.backlog.clear()
    for i in range(items.size()):
        if stuck or not _take_item(self, items[i]):
            stuck = True
            if items[i][0] != b's' or self.backlog.size() < MAX_HELD:
                self.backlog.push_back(string())
                self.backlog.back().swap(items[i])
            else:
                self.n_dropped_held += 1   # best effort over the bound while held


cdef bint _take_item(Engine self, string &item) noexcept nogil:
    """Act on one out-queue item; False if the socket refused it (retry later)."""
    cdef char kind = item[0]
    cdef uint64_t mid
    cdef Pending *pend
    if kind == b'S':
        mid = eng_get64(<const unsigned char *>item.data() + ITEM_HEAD + SEND_ID)
        pend = &self.unconfirmed[mid]
        if pend.item.size() == 0:
            self.send_order.push_back(mid)
        else:
            self.confirmed_local += 1   # the same id again: one pending message
        pend.item.swap(item)
        pend.sent_ms = 0
        if _holding(self):
            return True         # goes out after the WELCOME, behind older ones
        if not _send_item(self, pend.item):
            return True         # stays unconfirmed: the resend timer retries it
        pend.sent_ms = eng_now_ms()
        self.n_sent += 1
        return True
    if kind == b'B' or kind == b'R':
        _bind(self, item, kind == b'R')
        return True
    if kind == b'U':
        _unbind(self, item)
        return True
    if _holding(self) or not _send_item(self, item):
        return False
    if kind == b's':
        self.n_sent += 1
    return True


cdef void _send_acks(Engine self, unordered_map[string, uint64_t] &acks) noexcept nogil:
    cdef string frame
    cdef size_t n = 0
    _list_start(self, frame, CMD_ACK)
    for kv in acks:
        if n == MAX_LIST_ENTRIES:
            _list_send(self, frame, n)
            _list_start(self, frame, CMD_ACK)
            n = 0
        _entry(self, frame, kv.first, kv.second, True)
        n += 1
    _list_send(self, frame, n)


cdef void _list_start(Engine self, string &frame, uint8_t cmd) noexcept nogil:
    """Start a BIND/UNBIND/ACK frame: the prefix and a count that _list_send fills."""
    cdef unsigned char head[PREFIX_SIZE + COUNT_SIZE]
    put_prefix(head, cmd, 0)
    frame.assign(<const char *>head, PREFIX_SIZE + COUNT_SIZE)


cdef void _entry(Engine self, string &frame, const string &name, uint64_t seq, bint with_seq) noexcept nogil:
    cdef unsigned char b[SEQ_SIZE]
    frame.push_back(<char>name.size())   # the name's length byte (NAME_HEAD)
    frame.append(name)
    if with_seq:
        eng_put64(b, seq)
        frame.append(<const char *>b, SEQ_SIZE)


cdef void _list_send(Engine self, string &frame, size_t n, size_t at=PREFIX_SIZE) noexcept nogil:
    """Write the entry count ``n`` at offset ``at`` and send the frame."""
    eng_put16(<unsigned char *>frame.data() + at, <uint16_t>n)
    _send2(self, frame.data(), frame.size(), NULL, 0, False)


cdef void _hello(Engine self, uint64_t now) noexcept nogil:
    """HELLO with every bound address and its cursor (BINDs for more than a list
    holds); what the router never confirmed goes again after its WELCOME."""
    cdef string frame
    cdef unsigned char head[HELLO_FIXED]
    cdef size_t n = 0, at = HELLO_FIXED + self.name.size()
    self.resend_due = True  # holding from here: a kept pack goes after the WELCOME
    put_prefix(head, CMD_HELLO, FLAG_PACK)  # this engine reads packed DELIVERs
    head[HELLO_ROLE] = self.role
    head[HELLO_NAME_LEN] = <unsigned char>self.name.size()
    frame.assign(<const char *>head, HELLO_FIXED)
    frame.append(self.name)
    frame.append(b"\0\0", COUNT_SIZE)
    for kv in self.cursors:
        if self.unbound.count(kv.first):
            continue
        if n == MAX_LIST_ENTRIES:
            _list_send(self, frame, n, at)
            _list_start(self, frame, CMD_BIND)
            n, at = 0, PREFIX_SIZE
        _entry(self, frame, kv.first, kv.second, True)
        n += 1
    _list_send(self, frame, n, at)
    self.welcome_seen = False
    self.hello_at = now
    self.hello_since_down = True
    self.n_hellos += 1


cdef void _bind(Engine self, const string &item, bint reset) noexcept nogil:
    cdef const unsigned char *p = <const unsigned char *>item.data() + ITEM_HEAD
    cdef const unsigned char *end = <const unsigned char *>item.data() + item.size()
    cdef string frame, name
    cdef size_t n = 0
    cdef uint64_t seq
    _list_start(self, frame, CMD_BIND)
    while p < end:
        name.assign(<const char *>p + NAME_HEAD, p[0])
        seq = eng_get64(p + NAME_HEAD + p[0])
        p += NAME_HEAD + p[0] + SEQ_SIZE
        if reset or self.cursors.count(name) == 0:
            self.cursors[name] = seq
            self.app_acked[name] = seq  # the application has everything up to it
            self.reack.erase(name)  # nothing above the new cursor is re-acked
        self.unbound.erase(name)
        if n == MAX_LIST_ENTRIES:
            _list_send(self, frame, n)
            _list_start(self, frame, CMD_BIND)
            n = 0
        _entry(self, frame, name, self.cursors[name], True)
        n += 1
    if n:
        _list_send(self, frame, n)
    self.n_cursors = self.cursors.size()


cdef void _unbind(Engine self, const string &item) noexcept nogil:
    cdef const unsigned char *p = <const unsigned char *>item.data() + ITEM_HEAD
    cdef const unsigned char *end = <const unsigned char *>item.data() + item.size()
    cdef string frame, name
    cdef size_t n = 0
    _list_start(self, frame, CMD_UNBIND)
    while p < end:
        name.assign(<const char *>p + NAME_HEAD, p[0])
        p += NAME_HEAD + p[0]
        self.unbind_serial += 1      # the cursor stays: a later BIND resumes there
        self.unbound[name] = self.unbind_serial
        self.unbound_order.push_back(pair[uint64_t, string](self.unbind_serial, name))
        if n == MAX_LIST_ENTRIES:
            _list_send(self, frame, n)
            _list_start(self, frame, CMD_UNBIND)
            n = 0
        _entry(self, frame, name, 0, False)
        n += 1
    if n:
        _list_send(self, frame, n)
    _forget_released(self)
    self.n_cursors = self.cursors.size()


cdef bint _current(Engine self, const pair[uint64_t, string] &entry) noexcept nogil:
    """Whether ``entry`` of unbound_order is its address's latest release, still in force."""
    cdef unordered_map[string, uint64_t].iterator it = self.unbound.find(entry.second)
    return it != self.unbound.end() and deref(it).second == entry.first


cdef void _forget_released(Engine self) noexcept nogil:
    """Keep the cursors of the ``keep_unbound`` latest released addresses only. A
    gateway releases every app address it ever served; kept forever, their cursors
    grow with the distinct parties it has seen."""
    cdef size_t n
    cdef string name
    while self.unbound.size() > self.keep_unbound and not self.unbound_order.empty():
        if _current(self, self.unbound_order.front()):
            name = self.unbound_order.front().second
            self.unbound.erase(name)
            self.cursors.erase(name)
            self.app_acked.erase(name)
            self.reack.erase(name)
            self.n_forgotten += 1
        self.unbound_order.pop_front()
    if self.unbound_order.size() > 2 * self.unbound.size() + 1024:
        # addresses bound and released again left stale entries: drop them, in order
        n = self.unbound_order.size()
        while n:
            n -= 1
            if _current(self, self.unbound_order.front()):
                self.unbound_order.push_back(self.unbound_order.front())
            self.unbound_order.pop_front()


cdef void _send_heartbeat(Engine self) noexcept nogil:
    """HEARTBEAT, with the PACK frames read on this connection (docs/PROTOCOL.md, PACK:
    the router keeps at most PACK_WINDOW unreported; an older router ignores it)."""
    cdef unsigned char head[HEARTBEAT_FIXED]
    put_prefix(head, CMD_HEARTBEAT, 0)
    eng_put64(head + HEARTBEAT_PACKS_READ, self.packs_conn)
    _send2(self, <const char *>head, HEARTBEAT_FIXED, NULL, 0, False)
    self.packs_reported = self.packs_conn
    self.n_heartbeats += 1


cdef void _send_bye(Engine self) noexcept nogil:
    cdef unsigned char head[PREFIX_SIZE]
    put_prefix(head, CMD_BYE, 0)
    _send2(self, <const char *>head, PREFIX_SIZE, NULL, 0, False)


cdef void _enqueue(Engine self, string &item, bint reliable) noexcept nogil:
    cdef bint wake
    pthread_mutex_lock(&self.mu)
    self.out_q.push_back(string())
    self.out_q.back().swap(item)
    if reliable:
        self.pending += 1
    wake = self.io_sleeping
    self.io_sleeping = False
    pthread_mutex_unlock(&self.mu)
    if wake:
        eng_signal(self.wake_fd)


cdef void _enqueue_many(Engine self, vector[string] &items, bint reliable) noexcept nogil:
    """Move ``items`` to the out-queue under one lock (``items`` is left empty)."""
    cdef bint wake
    cdef size_t i
    if items.size() == 0:
        return
    pthread_mutex_lock(&self.mu)
    for i in range(items.size()):
        self.out_q.push_back(string())
        self.out_q.back().swap(items[i])
    if reliable:
        self.pending += items.size()
    wake = self.io_sleeping
    self.io_sleeping = False
    pthread_mutex_unlock(&self.mu)
    items.clear()
    if wake:
        eng_signal(self.wake_fd)


cdef uint64_t _room(Engine self, uint64_t max_pending, double timeout) noexcept nogil:
    """Wait up to ``timeout`` s for fewer than ``max_pending`` pending messages;
    return how many more fit (0: none within ``timeout``)."""
    cdef uint64_t deadline = eng_now_ms() + <uint64_t>(timeout * 1000)
    cdef uint64_t now, room
    pthread_mutex_lock(&self.mu)
    while self.pending >= max_pending and not self.stopped:
        now = eng_now_ms()
        if now >= deadline:
            break
        self.app_waiting += 1
        eng_cond_wait_ms(&self.cv, &self.mu, <long>(deadline - now))
        self.app_waiting -= 1
    room = max_pending - self.pending if self.pending < max_pending else 0
    pthread_mutex_unlock(&self.mu)
    return room
