# Commands from peers: the header frame is checked, then each command goes to its
# handler (HELLO, BIND, UNBIND, JOIN/LEAVE, ACK, SEND; service commands are handed to
# the Python broker; a PACK's SENDs and ACKs to theirs, in order). Included by core.pyx.

cdef int _handle(Core self, zmq_msg_t *f, int n, int extra) noexcept nogil:
    """Handle one message; how many commands it carried (a PACK's entries, else 1)."""
    cdef uint64_t now = self.now_us // 1000
    cdef const char *ident = <const char *>zmqapi.msg_data(&f[0])
    cdef size_t idlen = zmqapi.msg_size(&f[0])
    cdef int pi = _peer_slot(self, ident, idlen, now)
    if pi >= 0:
        pi = _same_conn(self, pi, &f[n - 1], ident, idlen, now)
    if pi < 0:
        return 1  # peer table full: strangers are ignored until slots free up
    cdef Peer *p = self.peers[pi]
    p.last_seen_ms = now
    if p.bad > self.errors_per_second and now < p.err_window_ms + 1000:
        # A peer past its error budget (a fuzzer, a client in a loop) has the rest
        # of its second ignored unread: its flood costs the others a receive, not a
        # parse, a refusal and a log line per message. (Measured: with 5x the
        # budget the well-behaved pair beside 24 fuzzers had p99 29 s; with 1x,
        # 35 ms, and the router's memory stayed flat.)
        self.c.quarantined += 1
        return 1
    if n < 2:
        _error(self, pi, E_MALFORMED, 0, "empty message: expected a header frame")
        return 1
    cdef const uint8_t *h = <const uint8_t *>zmqapi.msg_data(&f[1])
    cdef size_t hlen = zmqapi.msg_size(&f[1])
    if hlen < PREFIX_SIZE:
        _error(self, pi, E_MALFORMED, 0, "header frame shorter than the 4-byte prefix")
        return 1
    if h[PREFIX_SIGNATURE] != SIGNATURE or h[PREFIX_VERSION] != VERSION:
        _error(self, pi, E_BAD_VERSION, 0,
                    "signature/version not understood: this router speaks version 1")
        return 1
    cdef uint8_t cmd = h[PREFIX_COMMAND]
    if cmd == CMD_PACK:
        if n != 2 or extra:
            _error(self, pi, E_MALFORMED, 0, "PACK is one frame: its entries carry the payloads")
        elif p.role == 0:
            _error(self, pi, E_NOT_READY, 0, "send HELLO first (the router may have restarted)")
        else:
            return _on_pack(self, pi, h, hlen, now)
        return 1
    if cmd == CMD_SEND or cmd == CMD_REQUEST or cmd == CMD_REPLY:
        if n != 3 or extra:
            if cmd == CMD_SEND and hlen >= SEND_TTL:
                # the id is readable: refuse it like any other SEND, so the sender
                # can tell which message failed
                _refuse(self, pi, get64(h + SEND_ID), h[SEND_CLASS] if hlen > SEND_CLASS else 255, E_MALFORMED,
                             "SEND takes a header frame and a payload frame")
            else:
                _error(self, pi, E_MALFORMED, 0,
                            "SEND/REQUEST/REPLY take a header frame and a payload frame")
            return 1
    elif n != 2 or extra:
        _error(self, pi, E_MALFORMED, 0, "this command takes exactly one header frame")
        return 1
    if p.role == 0 and cmd != CMD_HELLO:
        _error(self, pi, E_NOT_READY, 0, "send HELLO first (the router may have restarted)")
        return 1
    if cmd == CMD_SEND:
        _on_send(self, pi, h, hlen, &f[2], now)
    elif cmd == CMD_ACK:
        _on_ack(self, pi, h, hlen)
    elif cmd == CMD_HEARTBEAT:
        if hlen >= HEARTBEAT_FIXED:
            _packs_read(p, get64(h + HEARTBEAT_PACKS_READ))
    elif cmd == CMD_HELLO:
        _on_hello(self, pi, h, hlen, &f[1])
    elif cmd == CMD_BIND:
        _on_bind(self, pi, h, hlen, BIND_LIST)
    elif cmd == CMD_UNBIND:
        _on_unbind(self, pi, h, hlen)
    elif cmd == CMD_JOIN or cmd == CMD_LEAVE:
        _on_join(self, pi, h, hlen, cmd == CMD_LEAVE)
    elif cmd == CMD_BYE:
        _drop_peer(self, pi, REASON_BYE)
    elif cmd == CMD_READY or cmd == CMD_REQUEST or cmd == CMD_REPLY:
        _to_broker(self, pi, f, n)
    else:
        _error(self, pi, E_UNKNOWN_COMMAND, 0, "unknown command, or one only the router sends")
    return 1


cdef void _on_hello(Core self, int pi, const uint8_t *h, size_t hlen,
                    zmq_msg_t *header) noexcept nogil:
    cdef Peer *p = self.peers[pi]
    if (hlen < HELLO_FIXED or HELLO_FIXED + <size_t>h[HELLO_NAME_LEN] > hlen
            or h[HELLO_NAME_LEN] == 0):
        _error(self, pi, E_MALFORMED, 0, "HELLO needs role, a 1..255 byte name, cursor list")
        return
    if h[HELLO_ROLE] < ROLE_SENDER or h[HELLO_ROLE] > ROLE_WORKER:
        _error(self, pi, E_BAD_ROLE, 0, "HELLO role must be 1 (sender) .. 4 (worker)")
        return
    cdef size_t cursors = HELLO_FIXED + <size_t>h[HELLO_NAME_LEN]  # the list, after the name
    if not valid_cursor_list(h, hlen, cursors):
        _error(self, pi, E_MALFORMED, 0, "HELLO cursor list does not match its length")
        return
    if count_hello(p, self.now_us // 1000) > HELLOS_PER_SECOND:
        # every HELLO rebinds addresses and may move their queues: a flood of them
        # is the costliest thing a peer can send
        _error(self, pi, E_RATE_LIMITED, 0, "more than 4 HELLOs a second on one "
                    "connection: say HELLO once, then BIND and UNBIND")
        return
    cdef string name = string(<const char *>h + HELLO_FIXED, h[HELLO_NAME_LEN])
    if not _hello_allowed(self, pi, header, h[HELLO_ROLE], name):
        return  # refused (auth.pxi); a previous HELLO's bindings stay as they were
    if p.role != 0:
        _unbind_all(self, pi)  # a repeated HELLO replaces the previous bindings
    else:
        self.c.peers_connected += 1
    p.role = h[HELLO_ROLE]
    p.packs = (h[PREFIX_FLAGS] & FLAG_PACK) != 0
    if not p.name.empty():
        _forget_name(self, pi)
    p.name = name
    # interned at the peer's first SEND: most peers (users', riders', merchants'
    # endpoints) never send, and interned names are kept for the router's life
    _release_sender(self, p)
    self.peer_by_name[p.name] = pi  # receipts for this name now come here
    if not _bind_cursors(self, pi, h, hlen, cursors):
        return
    _welcome(self, pi)
    _deliver_outbox(self, pi)
    _event(self, EV_CONNECT, pi, 0)


cdef void _on_bind(Core self, int pi, const uint8_t *h, size_t hlen, size_t off) noexcept nogil:
    if not valid_cursor_list(h, hlen, off):
        _error(self, pi, E_MALFORMED, 0, "BIND cursor list does not match its length")
        return
    _bind_cursors(self, pi, h, hlen, off)


cdef bint _bind_cursors(Core self, int pi, const uint8_t *h, size_t hlen, size_t off) noexcept nogil:
    cdef uint16_t count = get16(h + off)
    cdef uint16_t i
    cdef int ai
    cdef uint8_t ln
    cdef uint64_t cursor
    off += COUNT_SIZE
    for i in range(count):
        ln = h[off]
        cursor = get64(h + off + NAME_HEAD + ln)
        if cursor > MAX_CURSOR:
            # numbering would continue above it and wrap at 2**64
            _error(self, pi, E_BAD_CURSOR, 0, "cursor above 2**62 (MAX_CURSOR): "
                        "sequences start at 1 and cannot get there; send the last "
                        "sequence you hold, or 0")
            return False
        if self.auth and not _may_bind(self, pi, h + off + NAME_HEAD, ln):
            off += NAME_HEAD + ln + SEQ_SIZE
            continue  # refused with FORBIDDEN; whoever holds it keeps it
        ai = _address_slot(self, pi, h + off + NAME_HEAD, ln)
        if ai < 0:
            return False
        _bind(self, pi, ai, cursor)
        off += NAME_HEAD + ln + SEQ_SIZE
    return True


cdef void _on_unbind(Core self, int pi, const uint8_t *h, size_t hlen) noexcept nogil:
    if not valid_address_list(h, hlen, UNBIND_LIST):
        _error(self, pi, E_MALFORMED, 0, "UNBIND address list does not match its length")
        return
    cdef uint16_t count = get16(h + UNBIND_LIST)
    cdef size_t off = UNBIND_LIST + COUNT_SIZE
    cdef uint16_t i
    cdef int ai
    for i in range(count):
        ai = self.addr_by_name.find(<const char *>h + off + NAME_HEAD, h[off])
        if ai >= 0 and self.addrs[ai].peer == pi:
            _unbind(self, pi, ai)
        off += NAME_HEAD + h[off]


cdef void _on_join(Core self, int pi, const uint8_t *h, size_t hlen, bint leave) noexcept nogil:
    if (hlen < JOIN_FIXED or h[JOIN_CHANNEL_LEN] == 0
            or not valid_address_list(h, hlen, JOIN_FIXED + <size_t>h[JOIN_CHANNEL_LEN])):
        _error(self, pi, E_MALFORMED, 0, "JOIN/LEAVE needs a channel name and an address list")
        return
    if not valid_name(h + JOIN_FIXED, h[JOIN_CHANNEL_LEN]):
        _error(self, pi, E_BAD_ADDRESS, 0, "channel names are printable ASCII without spaces")
        return
    cdef string chan = string(<const char *>h + JOIN_FIXED, h[JOIN_CHANNEL_LEN])
    if self.auth and not _may(self, pi, self.right_join, chan, NULL):
        _error(self, pi, E_FORBIDDEN, 0, "your credentials do not allow joining "
               "addresses to this channel or leaving it (see 'join')")
        return
    cdef size_t off = JOIN_FIXED + <size_t>h[JOIN_CHANNEL_LEN]  # the address list
    cdef uint16_t count = get16(h + off)
    cdef uint16_t i
    cdef int ai
    off += COUNT_SIZE
    if leave and count == 0:
        _close_channel(self, chan)  # LEAVE with no addresses closes the channel
        return
    cdef Channel *ch = _open_channel(self, chan)
    cdef vector[int] *members = &ch.members
    for i in range(count):
        ai = _address_slot(self, pi, h + off + NAME_HEAD, h[off])
        if ai < 0:
            break
        if leave:
            if contains_int(deref(members), ai):
                remove_int(deref(members), ai)
                self.addrs[ai].nchannels -= 1
        elif not contains_int(deref(members), ai):
            members.push_back(ai)
            self.addrs[ai].nchannels += 1  # a member is never reclaimed
        off += NAME_HEAD + h[off]
    if members.empty():
        self.channels.erase(chan)


cdef inline void _packs_read(Peer *p, uint64_t n) noexcept nogil:
    """A HEARTBEAT's count of the packs the peer has read: more packs may follow (a
    count above what was sent, from a confused or hostile peer, counts as all read)."""
    if n > p.packs_sent:
        n = p.packs_sent
    if n > p.packs_read:
        p.packs_read = n


cdef int _on_pack(Core self, int pi, const uint8_t *h, size_t hlen, uint64_t now) noexcept nogil:
    """Each entry as if it had come alone, in order; how many there were. The framing
    is checked whole first: a PACK that does not parse is refused with none of its
    entries handled."""
    cdef int n = 0
    if not valid_pack(h, hlen):
        _error(self, pi, E_MALFORMED, 0, "PACK entries do not end exactly at the end of "
               "its frame (u16 header length, header, u32 payload length, payload)")
        return 1
    cdef Peer *p = self.peers[pi]
    cdef size_t off = PREFIX_SIZE, hn, pn
    cdef const uint8_t *e
    self.c.packs_in += 1
    while off < hlen:
        hn = get16(h + off)
        e = h + off + PACK_HEADER_LEN_SIZE
        pn = get32(e + hn)
        off += PACK_ENTRY_SIZE + hn + pn
        self.c.packed_in += 1
        n += 1
        if p.bad > self.errors_per_second and now < p.err_window_ms + 1000:
            self.c.quarantined += 1  # past its error budget mid-pack: as in _handle
            continue
        _on_packed(self, pi, e, hn, e + hn + PACK_PAYLOAD_LEN_SIZE, pn, now)
    return n if n > 0 else 1


cdef void _on_packed(Core self, int pi, const uint8_t *h, size_t hlen, const uint8_t *b,
                     size_t bn, uint64_t now) noexcept nogil:
    """One command out of a PACK: a SEND (its payload copied into a message of its
    own, which the queues keep) or an ACK; checked like one that came alone."""
    cdef zmq_msg_t body
    if hlen < PREFIX_SIZE:
        _error(self, pi, E_MALFORMED, 0, "packed header shorter than the 4-byte prefix")
        return
    if h[PREFIX_SIGNATURE] != SIGNATURE or h[PREFIX_VERSION] != VERSION:
        _error(self, pi, E_BAD_VERSION, 0,
               "signature/version not understood: this router speaks version 1")
        return
    if h[PREFIX_COMMAND] == CMD_SEND:
        if zmqapi.msg_init_size(&body, bn) != 0:
            _error(self, pi, E_OVERLOADED, 0, "out of memory for a packed payload")
            return
        memcpy(zmqapi.msg_data(&body), b, bn)
        _on_send(self, pi, h, hlen, &body, now)
        zmqapi.msg_close(&body)  # empty if _on_send kept the payload
    elif h[PREFIX_COMMAND] == CMD_ACK:
        if bn:
            _error(self, pi, E_MALFORMED, 0, "a packed ACK has no payload")
        else:
            _on_ack(self, pi, h, hlen)
    else:
        _error(self, pi, E_UNKNOWN_COMMAND, 0, "a PACK carries SEND and ACK only")


cdef void _on_ack(Core self, int pi, const uint8_t *h, size_t hlen) noexcept nogil:
    if not valid_cursor_list(h, hlen, ACK_LIST):
        _error(self, pi, E_MALFORMED, 0, "ACK cursor list does not match its length")
        return
    cdef uint16_t count = get16(h + ACK_LIST)
    cdef size_t off = ACK_LIST + COUNT_SIZE
    cdef uint16_t i
    cdef int ai
    for i in range(count):
        ai = self.addr_by_name.find(<const char *>h + off + NAME_HEAD, h[off])
        if ai >= 0:
            _ack_to(self, ai, get64(h + off + NAME_HEAD + h[off]))
        off += NAME_HEAD + h[off] + SEQ_SIZE
    self.c.acks_in += count


cdef void _on_send(Core self, int pi, const uint8_t *h, size_t hlen, zmq_msg_t *payload,
                   uint64_t now) noexcept nogil:
    if hlen < SEND_FIXED:
        _error(self, pi, E_MALFORMED, 0, "SEND header shorter than its 20 fixed bytes")
        return
    cdef uint64_t msg_id = get64(h + SEND_ID)
    cdef uint32_t ttl_ms = get32(h + SEND_TTL)
    cdef uint8_t cls = h[SEND_CLASS], lt = h[SEND_TARGET_LEN]
    cdef uint8_t lk = h[SEND_KIND_LEN], lkey = h[SEND_KEY_LEN]
    cdef uint8_t flags = h[PREFIX_FLAGS]
    if hlen != SEND_FIXED + <size_t>lt + lk + lkey:
        _error(self, pi, E_MALFORMED, msg_id, "SEND header length does not match its fields")
        return
    if cls >= N_CLASSES:
        _refuse(self, pi, msg_id, cls, E_BAD_CLASS, "message class must be 0..4")
        return
    if zmqapi.msg_size(payload) > self.max_payload:
        _refuse(self, pi, msg_id, cls, E_TOO_LARGE,
                     "payload over the router's cap (see WELCOME max_payload)")
        return
    if flags & FLAG_CHANNEL:
        if lt == 0 or not valid_name(h + SEND_FIXED, lt):
            _refuse(self, pi, msg_id, cls, E_BAD_ADDRESS,
                         "channel must be 1..255 printable ASCII bytes without spaces")
            return
    elif not valid_address(h + SEND_FIXED, lt):
        _refuse(self, pi, msg_id, cls, E_BAD_ADDRESS,
                     "target must be an address <kind>:<id> (both parts non-empty), "
                     "1..255 printable ASCII bytes without spaces")
        return
    cdef int single
    cdef const int *targets = &single    # one address, or a channel's members
    cdef size_t ntargets = 1
    cdef string tname = string(<const char *>h + SEND_FIXED, lt)
    if self.auth:
        if not _may_send(self, pi, tname, flags & FLAG_CHANNEL, cls):
            _refuse(self, pi, msg_id, cls, E_FORBIDDEN, "your credentials do not allow "
                    "sending this class to this target (see 'send', 'send_channels')")
            return
        if not _within_rate(self, pi, zmqapi.msg_size(payload)):
            self.c.rate_exceeded += 1
            _refuse(self, pi, msg_id, cls, E_RATE_EXCEEDED, "your principal's messages/s "
                    "or bytes/s budget is spent: retry in a moment")
            return
    if flags & FLAG_CHANNEL:
        it = self.channels.find(tname)
        if it == self.channels.end():
            _refuse(self, pi, msg_id, cls, E_UNKNOWN_CHANNEL, "no such channel: JOIN first")
            return
        deref(it).second.last_used_ms = now
        targets = deref(it).second.members.data()
        ntargets = deref(it).second.members.size()
    else:
        single = _address_of(self, pi, tname)  # validated above
        if single < 0:
            return  # _address_of already refused
    cdef DedupEntry *seen
    _hold_sender(self, self.peers[pi])
    if cls <= CLASS_CHAT:
        seen = self.dedup.find(self.peers[pi].sender_id, msg_id)
        if seen != NULL:
            # a repeat inside the window: same receipt, nothing delivered twice
            self.c.dedup_hits += 1
            _receipt_to(self, pi, self.peers[pi].gen, msg_id, seen.status, seen.code)
            return
    cdef uint32_t qsid = _quota_sid(self, self.peers[pi])
    cdef int code = _admit(self, targets, ntargets, cls, qsid)
    if code != 0:
        _refuse(self, pi, msg_id, cls, code, admit_text(code))
        return
    cdef Msg *m = _new_msg(self)
    m.recv_us = mono_us()  # per message: the pass clock would hide the hop's own time
    zmqapi.msg_init(&m.payload)
    zmqapi.msg_move(&m.payload, payload)
    m.msg_id = msg_id
    m.accepted_us = self.wall_now_us
    m.expire_us = now + ttl_ms if ttl_ms else 0
    m.sender = pi
    m.sender_gen = self.peers[pi].gen
    m.sender_name = self.peers[pi].name
    m.sender_id = self.peers[pi].sender_id
    m.quota_sid = qsid
    m.cls = cls
    m.refs = 0
    m.pending = 0
    m.finished = False
    m.segment = self.segment
    cdef string key
    if lkey:
        key = string(<const char *>h + SEND_FIXED + lt + lk, lkey)
    if cls <= CLASS_CHAT:
        if flags & FLAG_CHANNEL and is_order(tname):
            m.order = tname
        elif is_order(key):
            m.order = key
    build_template(m, flags, self.peers[pi].name,
                   tname if flags & FLAG_CHANNEL else string(), h + SEND_FIXED + lt, lk)
    self.c.msgs_in[cls] += 1
    self.c.bytes_in += zmqapi.msg_size(&m.payload)
    if ntargets > 1:
        self.c.fanout += ntargets - 1
    if cls == CLASS_LOCATION and key.empty():
        key = self.peers[pi].name
    cdef size_t i
    m.refs = 1  # hold it while fanning out
    for i in range(ntargets):
        _enqueue(self, targets[i], m, key)
    if cls <= CLASS_CHAT:
        _remember(self, m.sender_id, msg_id, self.now_us // 1000 + self.dedup_ms)
        if self.store is not None:
            self.seg_live[self.segment] += 1
            m.refs += 1  # held by `uncommitted` until _commit
            self.uncommitted.push_back(m)
        else:
            _accepted(self, m)
    _release(self, m)


cdef void _to_broker(Core self, int pi, zmq_msg_t *f, int n) noexcept nogil:
    """Service traffic (READY/REQUEST/REPLY) goes to the Python broker
    (router/broker.py): the loop hands it over once the socket is drained, or after
    BROKER_BATCH commands or BROKER_WAIT_MS, whichever comes first."""
    cdef BrokerMsg b
    b.identity = self.peers[pi].identity
    b.principal = self.peers[pi].principal
    b.header = string(<const char *>zmqapi.msg_data(&f[1]), zmqapi.msg_size(&f[1]))
    if n > 2:
        b.payload = string(<const char *>zmqapi.msg_data(&f[2]), zmqapi.msg_size(&f[2]))
    if self.broker_inbox.empty():
        self.broker_since_ms = self.now_us // 1000
    self.broker_inbox.push_back(b)
