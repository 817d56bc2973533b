# Trust: each connection's principal (from the ZAP handler's User-Id at HELLO), its
# rights on names, its send budget, and revocation. Included by core.pyx.
#
# The credentials file (router/auth/credentials.py) is compiled by Python into rules:
# (rights mask, name pattern). A principal's rights on a name are the OR of the masks
# of every rule that matches it. They are computed once per (principal, name) and kept
# in the address's or channel's Grant, keyed by the reload epoch, so a SEND pays a
# compare, not a pattern match. With no credentials (auth off) every right is given.

cdef extern from "<sys/socket.h>" nogil:
    int shutdown(int fd, int how)
    int SHUT_RDWR

cdef extern from "auth.h" nogil:
    uint64_t socket_inode(int fd)


cdef inline bint rule_matches(const Rule &r, const string &name) noexcept nogil:
    if r.prefix:
        return (name.size() >= r.pattern.size()
                and memcmp(name.data(), r.pattern.data(), r.pattern.size()) == 0)
    return name == r.pattern


cdef uint32_t match_rules(const vector[Rule] &rules, const string &name) noexcept nogil:
    """The OR of the masks of every rule that matches ``name``."""
    cdef uint32_t mask = 0
    cdef size_t i
    for i in range(rules.size()):
        if rule_matches(rules[i], name):
            mask |= rules[i].mask
    return mask


cdef inline uint32_t _rights(Core self, int pr, const string &name, Grant *g) noexcept nogil:
    """Principal ``pr``'s rights on ``name``, through the name's cache slot ``g`` (or
    none: a name with no table entry yet, e.g. an address a SEND would create)."""
    cdef uint64_t key = (<uint64_t>self.auth_epoch << 32) | <uint32_t>(pr + 1)
    if g != NULL and g.key == key:
        return g.mask
    cdef uint32_t mask = match_rules(self.principals[pr].rules, name)
    if g != NULL:
        g.key = key
        g.mask = mask
    return mask


cdef inline bint _may(Core self, int pi, uint32_t right, const string &name,
                      Grant *g) noexcept nogil:
    """Whether peer ``pi`` may do ``right`` on ``name``. Open router: yes."""
    if not self.auth:
        return True
    cdef int pr = self.peers[pi].principal
    return pr >= 0 and (_rights(self, pr, name, g) & right) != 0


cdef inline Grant *_address_grant(Core self, const string &name) noexcept nogil:
    cdef int ai = self.addr_by_name.find(name)
    return &self.addrs[ai].grant if ai >= 0 else NULL


cdef bint _may_bind(Core self, int pi, const uint8_t *name, uint8_t ln) noexcept nogil:
    """BIND (or a HELLO cursor) of one address; refuses with FORBIDDEN, naming it."""
    cdef string a = string(<const char *>name, ln)
    cdef char text[400]
    if _may(self, pi, self.right_bind, a, _address_grant(self, a)):
        return True
    snprintf(text, sizeof(text), "your credentials do not allow binding %.255s "
             "(see 'bind'): not bound, its holder keeps it", a.c_str())
    _error(self, pi, E_FORBIDDEN, 0, text)
    return False


cdef bint _may_send(Core self, int pi, const string &target, bint channel,
                    uint8_t cls) noexcept nogil:
    """SEND of class ``cls`` to an address or a channel."""
    if not self.auth:
        return True
    cdef Grant *g = NULL
    if channel:
        it = self.channels.find(target)
        if it != self.channels.end():
            g = &deref(it).second.grant
        return _may(self, pi, self.right_channel[cls], target, g)
    return _may(self, pi, self.right_send[cls], target, _address_grant(self, target))


cdef bint _hello_allowed(Core self, int pi, zmq_msg_t *header, uint8_t role,
                         const string &name) noexcept nogil:
    """Auth on: the connection's principal (the ZAP User-Id of its messages) exists and
    may declare this role and name; records the principal, key and socket. Refuses
    with ERROR FORBIDDEN otherwise."""
    cdef Peer *p = self.peers[pi]
    p.principal = -1
    if not self.auth:
        return True
    cdef const char *uid = zmqapi.msg_gets(header, "User-Id")
    if uid == NULL or uid[0] == 0:
        _error(self, pi, E_FORBIDDEN, 0, "this router requires credentials: connect "
               "with CURVE keys listed in its credentials file")
        return False
    p.key = string(uid)
    it = self.principal_by_key.find(p.key)
    if it == self.principal_by_key.end():
        _error(self, pi, E_FORBIDDEN, 0, "your key is not (or no longer) in the "
               "router's credentials file")
        return False
    cdef int pr = deref(it).second
    cdef Principal *who = &self.principals[pr]
    if not (who.roles >> role) & 1:
        _error(self, pi, E_FORBIDDEN, 0, "your credentials do not allow this HELLO role")
        return False
    if match_rules(who.names, name) == 0:
        _error(self, pi, E_FORBIDDEN, 0, "your credentials do not allow this HELLO "
               "name (see 'names' of your principal)")
        return False
    p.principal = pr
    p.fd = zmqapi.msg_get(header, ZMQ_SRCFD)
    p.fd_inode = socket_inode(p.fd)
    return True


cdef inline uint32_t _quota_sid(Core self, Peer *p) noexcept nogil:
    """The counter a peer's queued messages count against: its principal's, or (open
    router) its sender name's."""
    if p.principal >= 0:
        return self.principals[p.principal].quota_sid
    return p.sender_id


cdef bint _within_rate(Core self, int pi, size_t nbytes) noexcept nogil:
    """Take one message and ``nbytes`` from the principal's buckets, if both hold
    enough (token buckets refilled by elapsed time, capped at rate x burst)."""
    cdef int pr = self.peers[pi].principal
    if pr < 0:
        return True
    cdef Principal *who = &self.principals[pr]
    if who.msg_rate == 0 and who.byte_rate == 0:
        return True
    cdef double dt = (self.now_us - who.refill_us) / 1e6 if self.now_us > who.refill_us else 0
    who.refill_us = self.now_us
    if who.msg_rate:
        who.msg_tokens = min(who.msg_burst, who.msg_tokens + dt * who.msg_rate)
        if who.msg_tokens < 1:
            return False
    if who.byte_rate:
        who.byte_tokens = min(who.byte_burst, who.byte_tokens + dt * who.byte_rate)
        if who.byte_tokens < nbytes:
            return False
        who.byte_tokens -= nbytes
    if who.msg_rate:
        who.msg_tokens -= 1
    return True


cdef void _revoke(Core self, int pi, uint16_t code, const char *text) noexcept nogil:
    """Tell the peer why, forget it, and close its connection a moment later, once
    libzmq's I/O thread has written the ERROR (_close_revoked)."""
    cdef Peer *p = self.peers[pi]
    cdef Closing c
    c.fd = p.fd
    c.inode = p.fd_inode
    c.due_ms = self.now_us // 1000 + REVOKE_CLOSE_MS
    _error(self, pi, code, 0, text)
    _drop_peer(self, pi, REASON_REVOKED)
    self.c.revoked += 1
    if c.inode != 0:
        self.closing.push_back(c)


cdef void _close_revoked(Core self, uint64_t now) noexcept nogil:
    """Shut down the sockets of revoked connections that are due: libzmq then sees
    the peer hang up and closes its side. The fd is checked against the socket
    recorded at HELLO, so a number the kernel has reused is left alone."""
    while not self.closing.empty() and self.closing.front().due_ms <= now:
        if socket_inode(self.closing.front().fd) == self.closing.front().inode:
            shutdown(self.closing.front().fd, SHUT_RDWR)
        self.closing.pop_front()


cdef void _recheck_peer(Core self, int pi) noexcept nogil:
    """After a reload: revoke a peer whose key or HELLO is no longer allowed, and
    unbind the addresses it may no longer bind."""
    cdef Peer *p = self.peers[pi]
    it = self.principal_by_key.find(p.key)
    if it == self.principal_by_key.end():
        _revoke(self, pi, E_REVOKED, "your key was revoked: the connection is closed")
        return
    p.principal = deref(it).second
    cdef Principal *who = &self.principals[p.principal]
    if not (who.roles >> p.role) & 1 or match_rules(who.names, p.name) == 0:
        _revoke(self, pi, E_REVOKED, "your credentials no longer allow this HELLO role "
                "or name: the connection is closed")
        return
    cdef size_t i = 0
    cdef int ai
    while i < p.addrs.size():
        ai = p.addrs[i]
        if _may(self, pi, self.right_bind, self.addrs[ai].name, &self.addrs[ai].grant):
            i += 1
            continue
        _error(self, pi, E_FORBIDDEN, 0, "your credentials no longer allow binding one "
               "of your addresses: it was unbound")
        _unbind(self, pi, ai)  # removes it from p.addrs


cdef void _recheck_peers(Core self) noexcept nogil:
    cdef size_t pi
    for pi in range(self.peers.size()):
        if self.peers[pi].live and self.peers[pi].role != 0 and self.peers[pi].principal >= 0:
            _recheck_peer(self, <int>pi)
