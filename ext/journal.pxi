# Journal record encoding, included by core.pyx. The file layout (segments, rolling,
# compaction) is Python's business (router/journal.py); the core only produces and
# consumes records, so a remote engine can store the same bytes.
#
# Record: u32 body length | u32 CRC-32C (Castagnoli) of the body | body.
# Body, by its first byte (all integers big-endian, names u8-length-prefixed):
#   REC_MSG    seq u64, msg_id u64, accepted_us u64, expire_wall_us u64 (0 = none),
#              class u8, flags u8, then names: address, sender, kind, channel, order;
#              the payload is the rest of the body
#   REC_ACK    seq u64, address                  (cumulative ack)
#   REC_CURSOR next_seq u64, acked u64, address  (checkpoint at the head of a segment)
#   REC_FIN    msg_id u64, status u8, code u16, sender  (final receipt, for dedup)
#   REC_FLOOR  seq u64  (new addresses number above it: reclaimed ones reached it)
#
# Record kinds (REC_*), the head's offsets (REC_LEN, REC_CRC, REC_HEAD) and each kind's
# fixed fields after its kind byte (JMSG_*, JACK_*, JCURSOR_*, JFIN_*, JFLOOR_*) come
# from router/protocol.py (protocol.pxi).

cdef extern from "crc32c.h" nogil:
    void crc32c_init()
    uint32_t crc32c(const uint8_t *p, size_t n)
    uint32_t crc32c_soft(const uint8_t *p, size_t n)


crc32c_init()


cdef inline size_t rec_begin(string &buf, uint8_t kind) noexcept nogil:
    """Open a record; returns its start offset for rec_end."""
    cdef size_t start = buf.size()
    buf.append(REC_HEAD, <char>0)
    buf.push_back(<char>kind)
    return start


cdef inline void rec_end(string &buf, size_t start) noexcept nogil:
    cdef uint8_t *p = <uint8_t *>buf.data() + start
    cdef size_t body = buf.size() - start - REC_HEAD
    put32(p + REC_LEN, <uint32_t>body)
    put32(p + REC_CRC, crc32c(p + REC_HEAD, body))


cdef inline void rec_name(string &buf, const string &s) noexcept nogil:
    buf.push_back(<char><uint8_t>s.size())
    buf.append(s)


cdef inline const uint8_t *rd_name(const uint8_t *p, const uint8_t *end, string &out) noexcept nogil:
    """Read one u8-length-prefixed name; NULL if it runs past ``end``."""
    if p >= end or p + NAME_HEAD + p[0] > end:
        return NULL
    out.assign(<const char *>p + NAME_HEAD, p[0])
    return p + NAME_HEAD + p[0]
