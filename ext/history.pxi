# Order history rows from the core's history buffer, included by core.pyx.
#
# The buffer (Core._hist writes it) is decoded into the rows router/history.py inserts.
# Decoding it in Python cost more than SQLite's insert and held the GIL the routing
# loop needs between slices; here it is one pass over the bytes. router/history.py's
# parse_events is the readable reference, and tests check the two agree.

from cpython.unicode cimport PyUnicode_DecodeUTF8

# Event kinds (H_*) and the event layout (HIST_* offsets, HIST_FIXED, HIST_NAMES,
# HIST_PAYLOAD_HEAD) come from router/protocol.py (protocol.pxi).


cdef inline object _signed64(uint64_t v):
    """SQLite integers are 64-bit signed; ids and sequences use all 64 bits."""
    return <int64_t>v


def history_rows(const uint8_t[::1] blob, dict events, dict statuses, dict codes,
                 dict classes) -> list:
    """The rows of one drained history buffer, as router.history.parse_events gives
    them: names come from the dicts (number -> name), unknown numbers as text."""
    cdef size_t off = 0, n = blob.shape[0], ln
    cdef const uint8_t *p
    cdef uint32_t plen
    cdef int i
    rows = []
    while off < n:
        if off + HIST_FIXED > n:
            raise ValueError(f"history buffer cut short at byte {off} of {n}")
        p = &blob[off]
        kind, st, code, cls = p[HIST_KIND], p[HIST_STATUS], get16(p + HIST_CODE), p[HIST_CLASS]
        ts, mid, seq = get64(p + HIST_TS), get64(p + HIST_ID), get64(p + HIST_SEQ)
        off += HIST_FIXED
        names = []
        for i in range(HIST_NAMES):  # order, sender, address, kind, channel
            if off >= n or off + NAME_HEAD + blob[off] > n:
                raise ValueError(f"history buffer cut short at byte {off} of {n}")
            ln = blob[off]
            names.append(PyUnicode_DecodeUTF8(<const char *>&blob[off + NAME_HEAD], ln, "replace"))
            off += NAME_HEAD + ln
        if off + HIST_PAYLOAD_HEAD > n:
            raise ValueError(f"history buffer cut short at byte {off} of {n}")
        plen = get32(&blob[off])
        if off + HIST_PAYLOAD_HEAD + plen > n:
            raise ValueError(f"history payload runs past the buffer at byte {off}")
        payload = (bytes(blob[off + HIST_PAYLOAD_HEAD: off + HIST_PAYLOAD_HEAD + plen])
                   if plen else None)
        off += HIST_PAYLOAD_HEAD + plen
        rows.append((names[0], ts, events.get(kind, str(kind)), _signed64(mid),
                     _signed64(seq), statuses.get(st, str(st)) if st else None,
                     codes.get(code, str(code)) if code else None,
                     classes.get(cls, str(cls)), names[1], names[2] or None, names[3],
                     names[4] or None, payload))
    return rows


cdef void _hist(Core self, uint8_t kind, Msg *m, const string &address, uint64_t seq,
                uint8_t status, uint16_t code) noexcept nogil:
    """One history event of an order-linked message (router/history.py parses it):
    kind u8, ts_us u64, msg_id u64, seq u64, status u8, code u16, class u8, then
    names order, sender, address, kind, channel, and u32 payload length + payload
    (ACCEPTED only): router/protocol.py HISTORY_EVENT."""
    if self.replaying:
        return
    cdef const char *t = tmpl(m)
    cdef size_t lk = <uint8_t>t[DELIVER_KIND_LEN], lf = <uint8_t>t[DELIVER_SENDER_LEN]
    cdef size_t lc = <uint8_t>t[DELIVER_CHANNEL_LEN]
    cdef uint8_t head[HIST_FIXED]
    cdef uint8_t plen[HIST_PAYLOAD_HEAD]
    head[HIST_KIND] = kind
    put64(head + HIST_TS, wall_us())
    put64(head + HIST_ID, m.msg_id)
    put64(head + HIST_SEQ, seq)
    head[HIST_STATUS] = status
    put16(head + HIST_CODE, code)
    head[HIST_CLASS] = m.cls
    self.history.append(<const char *>head, HIST_FIXED)
    rec_name(self.history, m.order)
    rec_name(self.history, m.sender_name)
    rec_name(self.history, address)
    self.history.push_back(<char>lk)
    self.history.append(t + DELIVER_FIXED, lk)
    self.history.push_back(<char>lc)
    self.history.append(t + DELIVER_FIXED + lk + lf, lc)
    if kind == H_ACCEPTED:
        put32(plen, <uint32_t>zmqapi.msg_size(&m.payload))
        self.history.append(<const char *>plen, HIST_PAYLOAD_HEAD)
        self.history.append(<const char *>zmqapi.msg_data(&m.payload),
                            zmqapi.msg_size(&m.payload))
    else:
        self.history.append(HIST_PAYLOAD_HEAD, <char>0)
