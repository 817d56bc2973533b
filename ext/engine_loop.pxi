# The I/O thread's loop: one pass, its timers, housekeeping (heartbeats, re-HELLO,
# resends) and the connection events from libzmq's monitor.
# Included by engine.pyx: module-level functions over the typed Engine.


cdef void _loop(Engine self) noexcept nogil:
    cdef zmq_pollitem_t items[3]
    cdef long timeout
    cdef bint busy = False
    items[0].socket = self.sock
    items[0].fd = 0
    items[0].events = ZMQ_POLLIN
    items[1].socket = self.monitor
    items[1].fd = 0
    items[1].events = ZMQ_POLLIN
    items[2].socket = NULL
    items[2].fd = self.wake_fd
    items[2].events = ZMQ_POLLIN
    _hello(self, eng_now_ms())
    while True:
        timeout = 0 if (busy or self.reack.size()
                        or ((self.backlog.size() or self.pack_n) and not _holding(self))) \
            else _timer_ms(self, eng_now_ms())
        pthread_mutex_lock(&self.mu)
        if self.stopping:
            pthread_mutex_unlock(&self.mu)
            break
        if timeout and (self.out_q.size() or self.ack_q.size()):
            timeout = 0
        self.io_sleeping = timeout != 0
        pthread_mutex_unlock(&self.mu)
        items[0].revents = items[1].revents = items[2].revents = 0
        zmqapi.poll(items, 3, timeout)
        if items[2].revents:
            eng_drain(self.wake_fd)
        if items[1].revents:
            _read_monitor(self)
        _send_queued(self)
        _pack_flush(self)  # now: not after a read of up to RECV_BUDGET messages
        busy = _read_socket(self)
        _housekeeping(self, eng_now_ms())
        _pack_flush(self)
        _publish(self)
    _send_queued(self)
    _pack_flush(self)
    if self.say_bye:
        _send_bye(self)
    pthread_mutex_lock(&self.mu)
    self.stopped = True
    pthread_cond_broadcast(&self.cv)
    pthread_mutex_unlock(&self.mu)


cdef long _timer_ms(Engine self, uint64_t now) noexcept nogil:
    """How long the loop may sleep: until the next heartbeat is due, at most."""
    cdef uint64_t hb = max(self.heartbeat_ms // 2, 1)
    cdef uint64_t due = self.last_sent + hb
    if due <= now:
        return 1
    return <long>min(due - now, hb)


cdef void _housekeeping(Engine self, uint64_t now) noexcept nogil:
    """A heartbeat when idle; a re-HELLO when the router stays silent past its
    liveness while the link is up (at most once per liveness period); resends of
    reliable messages unconfirmed for resend_after."""
    if not self.link:
        if self.endpoints.size() > 1 and now - self.down_since >= self.failover_ms:
            _fail_over(self, now)
        return
    if now - self.last_heard > <uint64_t>self.heartbeat_ms * (self.liveness + 1):
        self.last_heard = now
        if self.endpoints.size() > 1:
            _fail_over(self, now)   # a paused or partitioned router: try the next
            return
        if not _hello_pending(self, now):
            _hello(self, now)
        return
    if now - self.last_sent >= self.heartbeat_ms // 2:
        _send_heartbeat(self)
    if (not self.resend_due and self.unconfirmed.size()
            and now - self.last_resend_scan >= self.resend_after_ms // 4 + 1):
        self.last_resend_scan = now
        _resend(self, now, self.resend_after_ms)


cdef void _fail_over(Engine self, uint64_t now) noexcept nogil:
    """Leave the current endpoint for the next one (its router is gone, paused or a
    standby): what libzmq still queued for the old connection is dropped with it, and
    the reliable messages among it are resent after the next WELCOME."""
    zmqapi.disconnect(self.sock, self.endpoints[self.current_ep].c_str())
    self.current_ep = (self.current_ep + 1) % self.endpoints.size()
    zmqapi.connect(self.sock, self.endpoints[self.current_ep].c_str())
    self.n_failovers += 1
    self.down_since = now
    if self.link:
        self.link = False
        self.hello_since_down = False
        self.n_disconnects += 1
        _event_link(self, 0)


cdef bint _hello_pending(Engine self, uint64_t now) noexcept nogil:
    return (not self.welcome_seen and self.hello_since_down
            and now - self.hello_at < <uint64_t>self.heartbeat_ms * self.liveness)


cdef void _resend(Engine self, uint64_t now, uint64_t older_than) noexcept nogil:
    """Send again, in send order, every unconfirmed message last sent at least
    ``older_than`` ms ago (and compact the order list)."""
    cdef deque[uint64_t] kept
    cdef Pending *pend
    for mid in self.send_order:
        if self.unconfirmed.count(mid) == 0:
            continue
        kept.push_back(mid)
        pend = &self.unconfirmed[mid]
        if pend.sent_ms == 0 or now - pend.sent_ms >= older_than:
            if _send_item(self, pend.item):
                if pend.sent_ms:
                    self.n_resent += 1
                else:
                    self.n_sent += 1
                pend.sent_ms = now
    self.send_order.swap(kept)


cdef void _read_monitor(Engine self) noexcept nogil:
    cdef zmq_msg_t m
    cdef uint16_t event
    cdef const unsigned char *p
    cdef uint64_t now
    cdef string where
    while True:
        zmqapi.msg_init(&m)
        if zmqapi.msg_recv(&m, self.monitor, ZMQ_DONTWAIT) < 0:
            zmqapi.msg_close(&m)
            return
        event = 0
        if zmqapi.msg_size(&m) >= 2:
            p = <const unsigned char *>zmqapi.msg_data(&m)
            event = <uint16_t>(p[0] | p[1] << 8)     # little-endian, as libzmq writes it
        where.clear()
        while zmqapi.msg_more(&m):
            zmqapi.msg_close(&m)
            zmqapi.msg_init(&m)
            if zmqapi.msg_recv(&m, self.monitor, ZMQ_DONTWAIT) < 0:
                break
            where.assign(<const char *>zmqapi.msg_data(&m), zmqapi.msg_size(&m))
        zmqapi.msg_close(&m)
        now = eng_now_ms()
        if self.endpoints.size() > 1 and where != self.endpoints[self.current_ep]:
            continue    # a late event of an endpoint this engine already left
        if event == EVENT_DISCONNECTED and self.link:
            self.down_since = now
            self.link = False
            self.hello_since_down = False
            self.n_disconnects += 1
            _event_link(self, 0)
        elif event == EVENT_HANDSHAKE_SUCCEEDED:
            self.link = True
            self.packs_conn = self.packs_reported = 0  # counted per connection
            self.last_heard = now
            self.n_connects += 1
            # one HELLO per connection: unless one already went out since the drop
            # (libzmq carries it on this new connection)
            if not self.hello_since_down:
                _hello(self, now)
            _event_link(self, 2 if self.ever_connected else 1)
            self.ever_connected = True
        elif (event == EVENT_HANDSHAKE_FAILED_AUTH
              or event == EVENT_HANDSHAKE_FAILED_PROTOCOL):
            _event_link(self, 3)  # the router refused our credentials (ZAP)


cdef void _event_link(Engine self, uint8_t up) noexcept nogil:
    cdef string ev
    ev.push_back(b'L')
    ev.push_back(<char>up)
    self.ev_local.push_back(ev)
