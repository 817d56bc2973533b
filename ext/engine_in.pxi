# What comes from the router: reading, checking and handling each command, and
# publishing a pass's events and receipts to the application.
# Included by engine.pyx: module-level functions over the typed Engine.


cdef bint _read_socket(Engine self) noexcept nogil:
    """Read and handle up to RECV_BUDGET messages; True if more may be waiting."""
    cdef zmq_msg_t h, b
    cdef int budget = RECV_BUDGET
    cdef bint two
    while budget > 0:
        zmqapi.msg_init(&h)
        if zmqapi.msg_recv(&h, self.sock, ZMQ_DONTWAIT) < 0:
            zmqapi.msg_close(&h)
            return False
        budget -= 1
        zmqapi.msg_init(&b)
        two = False
        if zmqapi.msg_more(&h):
            two = zmqapi.msg_recv(&b, self.sock, 0) >= 0
            if two and zmqapi.msg_more(&b):
                _skip_rest(self, &b)
                two = False
                self.n_malformed += 1
        self.last_heard = eng_now_ms()
        _handle(self, <const unsigned char *>zmqapi.msg_data(&h), zmqapi.msg_size(&h),
                     <const unsigned char *>zmqapi.msg_data(&b) if two else NULL,
                     zmqapi.msg_size(&b) if two else 0, two)
        zmqapi.msg_close(&h)
        zmqapi.msg_close(&b)
    return True


cdef void _skip_rest(Engine self, zmq_msg_t *m) noexcept nogil:
    while zmqapi.msg_more(m):
        zmqapi.msg_close(m)
        zmqapi.msg_init(m)
        if zmqapi.msg_recv(m, self.sock, 0) < 0:
            return


cdef void _handle(Engine self, const unsigned char *h, size_t hn, const unsigned char *b,
                  size_t bn, bint two) noexcept nogil:
    if (hn < PREFIX_SIZE or h[PREFIX_SIGNATURE] != SIGNATURE
            or h[PREFIX_VERSION] != VERSION):
        self.n_malformed += 1
        return
    cdef uint8_t cmd = h[PREFIX_COMMAND]
    if cmd == CMD_DELIVER and two:
        _on_deliver(self, h, hn, b, bn)
    elif cmd == CMD_PACK and not two:
        _on_pack(self, h, hn)
    elif cmd == CMD_RECEIPT:
        _on_receipt(self, h, hn)
    elif cmd == CMD_HEARTBEAT:
        pass
    elif cmd == CMD_WELCOME:
        _on_welcome(self, h, hn)
    elif cmd == CMD_ERROR:
        _on_error(self, h, hn, b, bn)
    elif (cmd == CMD_REPLY or cmd == CMD_REQUEST) and two:
        _event(self, b'R' if cmd == CMD_REPLY else b'Q', h, hn, b, bn)
    else:
        self.n_malformed += 1


cdef void _event(Engine self, char tag, const unsigned char *h, size_t hn,
                 const unsigned char *b, size_t bn) noexcept nogil:
    cdef string ev
    cdef unsigned char len4[4]
    eng_put32(len4, <uint32_t>hn)
    ev.reserve(5 + hn + bn)
    ev.push_back(tag)
    ev.append(<const char *>len4, 4)
    ev.append(<const char *>h, hn)
    if bn:
        ev.append(<const char *>b, bn)
    self.ev_local.push_back(ev)


cdef void _on_deliver(Engine self, const unsigned char *h, size_t hn,
                      const unsigned char *b, size_t bn) noexcept nogil:
    if hn < DELIVER_FIXED:
        self.n_malformed += 1
        return
    cdef size_t lk = h[DELIVER_KIND_LEN], lf = h[DELIVER_SENDER_LEN]
    cdef size_t lc = h[DELIVER_CHANNEL_LEN], la = h[DELIVER_ADDRESS_LEN]
    cdef size_t lo = h[DELIVER_ORDER_LEN]
    if DELIVER_FIXED + lk + lf + lc + lo + la != hn or la == 0:
        self.n_malformed += 1
        return
    cdef uint64_t seq = eng_get64(h + DELIVER_SEQ)
    cdef string address
    cdef unordered_map[string, uint64_t].iterator it
    if seq:
        address.assign(<const char *>h + hn - la, la)
        it = self.cursors.find(address)
        if it != self.cursors.end() and seq <= deref(it).second:
            # A redelivery of what was already handed over: drop it. If the
            # application acked it, the router lost that ack: send it again. If not,
            # the application still holds it and acks when done: an ack now would
            # tell the sender DELIVERED for what nobody has processed.
            self.n_duplicates += 1
            it = self.app_acked.find(address)
            if it != self.app_acked.end() and seq <= deref(it).second:
                self.reack[address] = deref(it).second
            return
        self.cursors[address] = seq
        self.n_cursors = self.cursors.size()
    self.n_delivered += 1
    _event(self, b'D', h, hn, b, bn)


cdef void _on_pack(Engine self, const unsigned char *h, size_t hn) noexcept nogil:
    """Each DELIVER of a PACK, in order (the router packs nothing else); an entry
    that is not one, or framing that does not add up, counts as malformed."""
    cdef size_t off = PREFIX_SIZE, eh, ep
    cdef const unsigned char *e
    self.n_packs_in += 1
    self.packs_conn += 1
    if self.packs_conn - self.packs_reported >= PACK_REPORT:
        _send_heartbeat(self)  # the router sends at most PACK_WINDOW packs unreported
    while off < hn:
        if off + PACK_HEADER_LEN_SIZE > hn:
            self.n_malformed += 1
            return
        eh = eng_get16(h + off)
        e = h + off + PACK_HEADER_LEN_SIZE
        if off + PACK_ENTRY_SIZE + eh > hn:
            self.n_malformed += 1
            return
        ep = eng_get32(e + eh)
        off += PACK_ENTRY_SIZE + eh + ep
        if off > hn:
            self.n_malformed += 1
            return
        if eh >= PREFIX_SIZE and e[PREFIX_COMMAND] == CMD_DELIVER:
            _on_deliver(self, e, eh, e + eh + PACK_PAYLOAD_LEN_SIZE, ep)
        else:
            self.n_malformed += 1


cdef void _on_receipt(Engine self, const unsigned char *h, size_t hn) noexcept nogil:
    if hn < RECEIPT_HEAD:
        self.n_malformed += 1
        return
    cdef size_t count = eng_get16(h + RECEIPT_COUNT), i
    cdef const unsigned char *e
    cdef Rcpt r
    if hn != RECEIPT_HEAD + count * RECEIPT_ENTRY_SIZE:
        self.n_malformed += 1
        return
    for i in range(count):
        e = h + RECEIPT_HEAD + i * RECEIPT_ENTRY_SIZE
        r.mid = eng_get64(e + RECEIPT_ID)
        r.status = e[RECEIPT_STATUS]
        r.code = eng_get16(e + RECEIPT_CODE)
        if self.unconfirmed.erase(r.mid):
            self.confirmed_local += 1
        self.rc_local.push_back(r)
    self.n_receipts += count


cdef void _on_welcome(Engine self, const unsigned char *h, size_t hn) noexcept nogil:
    if hn < WELCOME_BASE:
        self.n_malformed += 1
        return
    self.heartbeat_ms = max(eng_get32(h + WELCOME_HEARTBEAT), 2)
    self.liveness = max(h[WELCOME_LIVENESS], 1)
    self.router_packs = (h[PREFIX_FLAGS] & FLAG_PACK) != 0
    self.welcome_seen = True
    if self.resend_due:
        # the WELCOME that answers a (re-)HELLO: everything unconfirmed goes again,
        # in send order, before anything new
        self.resend_due = False
        _resend(self, eng_now_ms(), 0)
        _take_items(self, self.scratch)   # then what waited in the backlog
        self.scratch.clear()
    cdef string extra
    pthread_mutex_lock(&self.mu)
    extra = self.welcome_frame
    self.welcomed_flag = True
    self.w_heartbeat_ms = self.heartbeat_ms
    self.w_liveness = self.liveness
    self.w_max_payload = eng_get32(h + WELCOME_MAX_PAYLOAD)
    pthread_mutex_unlock(&self.mu)
    if extra.size():
        _send2(self, extra.data(), extra.size(), NULL, 0, False)
    _event(self, b'W', h, hn, NULL, 0)


cdef void _on_error(Engine self, const unsigned char *h, size_t hn,
                    const unsigned char *b, size_t bn) noexcept nogil:
    if hn < ERROR_FIXED:
        self.n_malformed += 1
        return
    cdef uint16_t code = eng_get16(h + ERROR_CODE)
    if code == E_RATE_LIMITED and not self.welcome_seen:
        # the router's summary of the NOT_READYs below, before our HELLO landed
        self.n_quiet_errors += 1
        return
    if code == E_NOT_READY:
        # one HELLO answers a burst of NOT_READY (one per message in flight when the
        # connection changed): none while one is pending
        if not _hello_pending(self, eng_now_ms()):
            _hello(self, eng_now_ms())
        return
    _event(self, b'E', h, hn, b, bn)


cdef void _publish(Engine self) noexcept nogil:
    """Hand this pass's events and receipts to the application."""
    cdef size_t i
    cdef uint32_t st
    if self.ev_local.empty() and self.rc_local.empty() and not self.confirmed_local:
        return
    pthread_mutex_lock(&self.mu)
    for i in range(self.ev_local.size()):
        self.in_q.push_back(string())
        self.in_q.back().swap(self.ev_local[i])
    for i in range(self.rc_local.size()):
        st = <uint32_t>self.rc_local[i].status << 16 | self.rc_local[i].code
        if self.status.count(self.rc_local[i].mid) == 0:
            self.status_order.push_back(self.rc_local[i].mid)
        self.status[self.rc_local[i].mid] = st
        self.rcpt_q.push_back(self.rc_local[i])
    while self.status_order.size() > self.keep_receipts:
        self.status.erase(self.status_order.front())
        self.status_order.pop_front()
    while self.rcpt_q.size() > self.keep_receipts:
        self.rcpt_q.pop_front()
        self.n_dropped_receipts += 1
    self.pending -= min(self.pending, self.confirmed_local)
    if self.app_waiting:
        pthread_cond_broadcast(&self.cv)
    pthread_mutex_unlock(&self.mu)
    if self.use_app_fd:
        eng_signal(self.app_fd)
    self.ev_local.clear()
    self.rc_local.clear()
    self.confirmed_local = 0


cdef void _wait_for(Engine self, double timeout, uint64_t mid) noexcept nogil:
    """Wait until events are queued (or, with ``mid``, any receipt arrives), the
    engine stops, or ``timeout`` s pass (negative: no limit)."""
    cdef uint64_t deadline = eng_now_ms() + <uint64_t>(max(timeout, 0.0) * 1000)
    cdef uint64_t now
    pthread_mutex_lock(&self.mu)
    while self.in_q.empty() and not self.stopped and (mid == 0 or self.rcpt_q.empty()):
        now = eng_now_ms()
        if timeout >= 0 and now >= deadline:
            break
        self.app_waiting += 1
        eng_cond_wait_ms(&self.cv, &self.mu, 1000 if timeout < 0 else <long>(deadline - now))
        self.app_waiting -= 1
    pthread_mutex_unlock(&self.mu)
