# ERROR and REFUSED: what a peer is told when its message cannot be taken, rate-limited
# per peer, and which faults count toward quarantine. Included by core.pyx.

cdef inline bint is_peer_fault(int code) noexcept nogil:
    """Errors only a broken or hostile peer causes: what quarantine counts. Not the
    router's notices (ADDRESS_TAKEN, STORAGE_FAILED, ...), load refusals, routing
    refusals a correct sender can meet (UNKNOWN_CHANNEL), nor NOT_READY (a reconnect's
    first messages can race its HELLO)."""
    return (code == E_MALFORMED or code == E_BAD_VERSION or code == E_UNKNOWN_COMMAND
            or code == E_TOO_LARGE or code == E_BAD_ADDRESS or code == E_BAD_CLASS
            or code == E_BAD_ROLE or code == E_BAD_CURSOR or code == E_RATE_LIMITED
            or code == E_FORBIDDEN)


cdef inline bint is_load_refusal(int code) noexcept nogil:
    """Refusals that say "retry later" (not a fault of the peer): not logged as errors."""
    return code == E_QUEUE_FULL or code == E_OVERLOADED or code == E_SENDER_QUOTA


cdef void _refuse(Core self, int pi, uint64_t msg_id, uint8_t cls, uint16_t code,
                  const char *text) noexcept nogil:
    """Refuse one SEND: a REFUSED receipt for reliable (or unknown) classes, and an ERROR."""
    if cls <= CLASS_CHAT or cls >= N_CLASSES:
        _receipt_to(self, pi, self.peers[pi].gen, msg_id, ST_REFUSED, code)
        if code < 32:
            self.c.refused[code] += 1
    _error(self, pi, code, msg_id, text)


cdef void _error(Core self, int pi, uint16_t code, uint64_t msg_id, const char *text) noexcept nogil:
    """Send ERROR to one peer, at most errors_per_second of them per second."""
    cdef Peer *p = self.peers[pi]
    cdef uint64_t now = mono_ms()
    cdef uint8_t hdr[ERROR_FIXED]
    cdef size_t tl = 0
    if p.gone:
        return  # nothing is sent to a departed connection
    _pack_close(self)
    if code < 32:
        self.c.errors[code] += 1  # counted whether or not the limit lets it out
    if now - p.err_window_ms >= 1000:
        p.err_window_ms = now
        p.errs = 0
        p.bad = 0
    p.errs += 1
    if is_peer_fault(code):
        p.bad += 1
    if p.errs > self.errors_per_second:
        self.c.errors_suppressed += 1
        if p.errs > self.errors_per_second + 1:
            return
        # the first one over the limit is replaced by a notice that the rest are quiet
        code = E_RATE_LIMITED
        msg_id = 0
        text = "too many bad requests: further errors this second are not reported"
        self.c.errors[code] += 1
    put_prefix(hdr, CMD_ERROR, 0)
    put16(hdr + ERROR_CODE, code)
    put64(hdr + ERROR_ID, msg_id)
    while text[tl] != 0:
        tl += 1
    if zmqapi.send(self.sock, p.identity.data(), p.identity.size(),
                   ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0:
        return
    zmqapi.send(self.sock, hdr, ERROR_FIXED, ZMQ_SNDMORE)
    zmqapi.send(self.sock, text, tl, 0)
    if p.errs == 1 and not is_load_refusal(code):
        _event(self, EV_ERROR, pi, code)  # one log line per peer per second at most
