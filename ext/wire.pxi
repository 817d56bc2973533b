# Byte-level helpers for the wire format (docs/PROTOCOL.md), included by core.pyx.
# All integers are big-endian; the compiler turns these shifts into bswap.

cdef extern from *:
    """
    static inline void prefetch_lines(const void *p, int lines) {
        for (int i = 0; i < lines; ++i) __builtin_prefetch((const char *)p + 64 * i);
    }
    """
    void prefetch_lines(const void *p, int lines) nogil


cdef inline uint16_t get16(const uint8_t *p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]


cdef inline uint32_t get32(const uint8_t *p) noexcept nogil:
    return ((<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) |
            (<uint32_t>p[2] << 8) | p[3])


cdef inline uint64_t get64(const uint8_t *p) noexcept nogil:
    return (<uint64_t>get32(p) << 32) | get32(p + 4)


cdef inline void put16(uint8_t *p, uint16_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 8)
    p[1] = <uint8_t>v


cdef inline void put32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 24)
    p[1] = <uint8_t>(v >> 16)
    p[2] = <uint8_t>(v >> 8)
    p[3] = <uint8_t>v


cdef inline void put64(uint8_t *p, uint64_t v) noexcept nogil:
    put32(p, <uint32_t>(v >> 32))
    put32(p + 4, <uint32_t>v)


cdef inline void put_prefix(uint8_t *p, uint8_t command, uint8_t flags) noexcept nogil:
    """The common prefix of a header frame the router writes (PREFIX_SIZE bytes)."""
    p[PREFIX_SIGNATURE] = SIGNATURE
    p[PREFIX_VERSION] = VERSION
    p[PREFIX_COMMAND] = command
    p[PREFIX_FLAGS] = flags


cdef inline bint valid_name(const uint8_t *p, size_t n) noexcept nogil:
    """Addresses and channels: printable ASCII, no spaces (0x21..0x7e)."""
    cdef size_t i
    for i in range(n):
        if p[i] < 0x21 or p[i] > 0x7e:
            return False
    return True


cdef inline bint valid_address(const uint8_t *p, size_t n) noexcept nogil:
    """An address is ``<kind>:<id>``: a valid name with a colon that has at least one
    byte on each side (``merchant:881``; not ``merchant``, ``merchant:`` or ``:881``)."""
    cdef size_t i
    if not valid_name(p, n):
        return False
    for i in range(1, n - 1 if n > 1 else 1):
        if p[i] == 0x3a:
            return True
    return False


cdef inline bint valid_cursor_list(const uint8_t *h, size_t hlen, size_t off) noexcept nogil:
    """A count, then that many [len][name][u64 seq] entries, ending exactly at hlen."""
    if off + COUNT_SIZE > hlen:
        return False
    cdef uint16_t count = get16(h + off)
    cdef uint16_t i
    off += COUNT_SIZE
    for i in range(count):
        if off >= hlen or off + NAME_HEAD + <size_t>h[off] + SEQ_SIZE > hlen:
            return False
        off += NAME_HEAD + <size_t>h[off] + SEQ_SIZE
    return off == hlen


cdef inline bint valid_address_list(const uint8_t *h, size_t hlen, size_t off) noexcept nogil:
    """A count, then that many [len][name] entries, ending exactly at hlen."""
    if off + COUNT_SIZE > hlen:
        return False
    cdef uint16_t count = get16(h + off)
    cdef uint16_t i
    off += COUNT_SIZE
    for i in range(count):
        if off >= hlen or off + NAME_HEAD + <size_t>h[off] > hlen:
            return False
        off += NAME_HEAD + <size_t>h[off]
    return off == hlen


cdef inline bint valid_pack(const uint8_t *h, size_t hlen) noexcept nogil:
    """PACK entries ([u16 hn][header][u32 pn][payload]) ending exactly at hlen."""
    cdef size_t off = PREFIX_SIZE, hn
    while off < hlen:
        if off + PACK_HEADER_LEN_SIZE > hlen:
            return False
        hn = get16(h + off)
        off += PACK_HEADER_LEN_SIZE + hn
        if off + PACK_PAYLOAD_LEN_SIZE > hlen:
            return False
        off += PACK_PAYLOAD_LEN_SIZE + <size_t>get32(h + off)
    return off == hlen


cdef inline void build_template(Msg *m, uint8_t flags, const string &sender,
                                const string &channel, const uint8_t *kind,
                                uint8_t lk) noexcept nogil:
    """The DELIVER header of ``m`` without its seq (at DELIVER_SEQ) and address (length
    at DELIVER_ADDRESS_LEN, bytes appended): both are filled per delivery. ``m.order``
    must be set: it travels in the header."""
    cdef uint8_t fixed[DELIVER_FIXED]
    memset(fixed, 0, DELIVER_FIXED)
    put_prefix(fixed, CMD_DELIVER, flags & FLAG_LZ4)
    put64(fixed + DELIVER_ID, m.msg_id)
    put64(fixed + DELIVER_ACCEPTED, m.accepted_us)
    fixed[DELIVER_CLASS] = m.cls
    fixed[DELIVER_KIND_LEN] = lk
    fixed[DELIVER_SENDER_LEN] = <uint8_t>sender.size()
    fixed[DELIVER_CHANNEL_LEN] = <uint8_t>channel.size()
    fixed[DELIVER_ORDER_LEN] = <uint8_t>m.order.size()
    cdef size_t n = DELIVER_FIXED + lk + sender.size() + channel.size() + m.order.size()
    cdef char *t = m.tmpl_short
    if n > TMPL_INLINE:  # rare: long names; the common case costs no allocation
        m.tmpl_long.resize(n)
        t = &m.tmpl_long[0]
    memcpy(t, fixed, DELIVER_FIXED)
    memcpy(t + DELIVER_FIXED, kind, lk)
    memcpy(t + DELIVER_FIXED + lk, sender.data(), sender.size())
    memcpy(t + DELIVER_FIXED + lk + sender.size(), channel.data(), channel.size())
    memcpy(t + DELIVER_FIXED + lk + sender.size() + channel.size(), m.order.data(),
           m.order.size())
    m.tmpl_len = <uint16_t>n


cdef inline const char *tmpl(Msg *m) noexcept nogil:
    """The message's DELIVER template (see build_template)."""
    if m.tmpl_len <= TMPL_INLINE:
        return <const char *>m.tmpl_short
    return m.tmpl_long.data()


cdef inline bint contains_int(vector[int] &v, int x) noexcept nogil:
    cdef size_t i
    for i in range(v.size()):
        if v[i] == x:
            return True
    return False


cdef inline void remove_int(vector[int] &v, int x) noexcept nogil:
    cdef size_t i
    for i in range(v.size()):
        if v[i] == x:
            v[i] = v.back()
            v.pop_back()
            return


cdef inline uint16_t stamp_of(uint64_t expires_ms) noexcept nogil:
    """A dedup window's end as stored in its entry: seconds, modulo 2**16 (18 hours,
    far beyond any window), enough to tell which remember a FIFO record belongs to."""
    return <uint16_t>(expires_ms // 1000)


cdef inline bint is_order(const string &name) noexcept nogil:
    """Names of the form order:<id> link a message to that order's history."""
    return name.size() > 6 and name.compare(0, 6, b"order:") == 0
