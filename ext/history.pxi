# Order history rows from the core's history buffer, included by core.pyx.
#
# The buffer (Core._hist writes it) is decoded into the rows router/history.py inserts.
# Decoding it in Python cost more than SQLite's insert and held the GIL the routing
# loop needs between slices; here it is one pass over the bytes. router/history.py's
# parse_events is the readable reference, and tests check the two agree.

from cpython.unicode cimport PyUnicode_DecodeUTF8

cdef enum:
    HIST_FIXED = 29     # kind u8, ts u64, msg id u64, seq u64, status u8, code u16, class u8


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
        kind, st, code, cls = p[0], p[25], get16(p + 26), p[28]
        ts, mid, seq = get64(p + 1), get64(p + 9), get64(p + 17)
        off += HIST_FIXED
        names = []
        for i in range(5):  # order, sender, address, kind, channel
            if off >= n or off + 1 + blob[off] > n:
                raise ValueError(f"history buffer cut short at byte {off} of {n}")
            ln = blob[off]
            names.append(PyUnicode_DecodeUTF8(<const char *>&blob[off + 1], ln, "replace"))
            off += 1 + ln
        if off + 4 > n:
            raise ValueError(f"history buffer cut short at byte {off} of {n}")
        plen = get32(&blob[off])
        if off + 4 + plen > n:
            raise ValueError(f"history payload runs past the buffer at byte {off}")
        payload = bytes(blob[off + 4: off + 4 + plen]) if plen else None
        off += 4 + plen
        rows.append((names[0], ts, events.get(kind, str(kind)), _signed64(mid),
                     _signed64(seq), statuses.get(st, str(st)) if st else None,
                     codes.get(code, str(code)) if code else None,
                     classes.get(cls, str(cls)), names[1], names[2] or None, names[3],
                     names[4] or None, payload))
    return rows
