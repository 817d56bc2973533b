# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Native load drivers for the hop benchmarks.

A Python sender tops out near 100k msg/s, below what a bare ``zmq.proxy`` hop moves, so
both ends of every benchmark run here with the GIL released, calling the libzmq that
pyzmq already loaded through the function table of ``ext/zmqapi.h``. Sockets are created,
configured and connected in Python; the loops take ``sock.underlying``.

Payload layout (both ends run on one machine, so native byte order):
    bytes 0..7   CLOCK_MONOTONIC nanoseconds when the sender handed the message to libzmq
    bytes 8..15  the sender's message index (0..count-1)
    rest         zeros

Every protocol number comes from ``router/protocol.py`` at import time.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memmove, memset
from posix.time cimport CLOCK_MONOTONIC, TIMER_ABSTIME, clock_gettime, clock_nanosleep, timespec

from zmqapi cimport (
    ZMQ_DONTWAIT, ZMQ_POLLIN, ZMQ_POLLOUT, ZMQ_SNDMORE, zmq_msg_t, zmq_pollitem_t, zmqapi,
    zmqapi_load, zmqapi_path,
)

import array
import errno
import os

import zmq
import zmq.backend.cython._zmq as _zmq_backend

cdef char _load_err[512]
if zmqapi_load(os.fsencode(_zmq_backend.__file__), _load_err, sizeof(_load_err)) != 0:
    raise ImportError("loadgen: " + _load_err.decode(errors="replace"))

from benchmarks.proto import protocol as _P

#: Path of the libzmq whose functions the loops call (pyzmq's own copy).
LIBZMQ_PATH = zmqapi_path.decode(errors="replace")

cdef int EAGAIN_ = errno.EAGAIN
cdef int EINTR_ = errno.EINTR
cdef uint8_t SIG = _P.SIGNATURE
cdef uint8_t VER = _P.VERSION
cdef uint8_t CMD_DELIVER = _P.Command.DELIVER
cdef uint8_t CMD_RECEIPT = _P.Command.RECEIPT
cdef uint8_t CMD_ERROR = _P.Command.ERROR
cdef uint8_t CMD_ACK = _P.Command.ACK
cdef uint8_t CMD_HEARTBEAT = _P.Command.HEARTBEAT
cdef uint8_t CMD_PACK = _P.Command.PACK
cdef uint8_t CMD_SEND = _P.Command.SEND
cdef size_t PACK_HEAD = _P.PACK_HEADER_LEN.size
cdef size_t PACK_PAYLOAD_HEAD = _P.PACK_PAYLOAD_LEN.size
cdef size_t PACK_MAX = _P.PACK_MAX
cdef int64_t PACK_REPORT = _P.PACK_REPORT
cdef bytes _HB = _P.prefix(_P.Command.HEARTBEAT)
cdef const uint8_t *HB_PREFIX = _HB
cdef Py_ssize_t PREFIX_SIZE = _P.PREFIX.size
cdef Py_ssize_t COUNT_SIZE = _P.COUNT.size
cdef Py_ssize_t SEQ_SIZE = _P.SEQ.size
cdef Py_ssize_t RECEIPT_SIZE = _P.RECEIPT_ENTRY.size
cdef Py_ssize_t DELIVER_SIZE = _P.DELIVER.size
cdef Py_ssize_t ERROR_SIZE = _P.ERROR.size
# Offsets inside the fixed layouts, derived from the struct formats rather than typed in.
cdef Py_ssize_t SEND_ID_OFF = PREFIX_SIZE  # SEND: msg id is the first field (">Q...")
cdef Py_ssize_t DELIVER_SEQ_OFF = PREFIX_SIZE  # DELIVER: seq is the first field
cdef Py_ssize_t DELIVER_LENS_OFF = PREFIX_SIZE + DELIVER_SIZE - 5  # kind/from/channel/order/addr lens
cdef Py_ssize_t RECEIPT_STATUS_OFF = 8  # entry: msg id (Q), status (B), code (H)
cdef Py_ssize_t RECEIPT_CODE_OFF = 9

if not (_P.SEND.format.lstrip("<>!=@").startswith("Q")
        and _P.DELIVER.format.lstrip("<>!=@") == "QQQBBBBBB"
        and _P.RECEIPT_ENTRY.format.lstrip("<>!=@") == "QBH"
        and _P.ERROR.format.lstrip("<>!=@").startswith("H")
        and _P.HEARTBEAT.format.lstrip("<>!=@") == "Q"):
    raise ImportError("loadgen: router/protocol.py layouts changed; update benchmarks/drivers/loadgen.pyx")

cdef enum:
    MAX_STATUS = 16
    MAX_CODE = 64
    HDR_COPY = 2048  # a DELIVER header is at most 4 + 30 + 5 * 255 bytes
    ACK_FRAME_MAX = 65536

cdef uint8_t ST_ACCEPTED = _P.Status.ACCEPTED


cdef inline int64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline void sleep_until(int64_t t) noexcept nogil:
    cdef timespec ts
    ts.tv_sec = t // 1000000000
    ts.tv_nsec = t % 1000000000
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL)


cdef inline uint64_t rd_be64(const uint8_t *p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(8):
        v = (v << 8) | p[i]
    return v


cdef inline void wr_be64(uint8_t *p, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(7, -1, -1):
        p[i] = <uint8_t>(v & 0xFF)
        v >>= 8


cdef inline uint32_t rd_be32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline void wr_be32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 24)
    p[1] = <uint8_t>(v >> 16)
    p[2] = <uint8_t>(v >> 8)
    p[3] = <uint8_t>v


cdef inline uint16_t rd_be16(const uint8_t *p) noexcept nogil:
    return <uint16_t>((p[0] << 8) | p[1])


cdef inline void wr_be16(uint8_t *p, uint16_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 8)
    p[1] = <uint8_t>(v & 0xFF)


cdef void *handle_of(sock) except NULL:
    """The libzmq socket pointer of a pyzmq socket (its ``underlying`` address)."""
    if getattr(sock, "closed", False):
        raise ValueError("socket is closed")
    cdef size_t addr = <size_t>sock.underlying
    if addr == 0:
        raise ValueError("socket has no underlying libzmq handle")
    return <void *>addr


def _zmq_error(int err, str where):
    return zmq.ZMQError(err, f"{where}: {zmqapi.strerror(err).decode(errors='replace')}")


# ---------------------------------------------------------------------------------------
# Incoming control traffic at the sender: RECEIPT, ERROR, anything else.

cdef struct Inbox:
    int64_t frames
    int64_t messages
    int64_t receipt_frames
    int64_t receipt_entries
    int64_t status[MAX_STATUS]
    int64_t codes[MAX_CODE]  # codes carried by receipts (REFUSED/FAILED/EXPIRED reasons)
    int64_t terminal  # entries whose status ends a message (anything but ACCEPTED)
    int64_t last_terminal_ns
    int64_t errors  # ERROR commands
    int64_t error_codes[MAX_CODE]
    int64_t malformed
    int64_t other  # any other command (WELCOME, HEARTBEAT, ...)
    int in_multipart
    # Per-message receipt times (run_sender(track_receipts=True)): index = msg id - base.
    int64_t *t_acc  # first ACCEPTED receipt
    int64_t *t_term  # first terminal receipt (DELIVERED, EXPIRED, REFUSED, FAILED)
    uint8_t *st_term  # its status
    uint64_t track_base
    int64_t track_n
    int64_t confirmed  # tracked messages with at least one receipt
    int64_t untracked  # receipt entries whose id is outside the tracked range
    int64_t repeated  # a second receipt of the same status for one tracked message
    int64_t last_accepted_ns


cdef void inbox_classify(Inbox *ib, const uint8_t *p, size_t n, int64_t now) noexcept nogil:
    cdef size_t count, i, off
    cdef uint8_t st
    cdef uint16_t code
    ib.messages += 1
    if n < <size_t>PREFIX_SIZE or p[0] != SIG or p[1] != VER:
        ib.malformed += 1
        return
    if p[2] == CMD_RECEIPT:
        ib.receipt_frames += 1
        if n < <size_t>(PREFIX_SIZE + COUNT_SIZE):
            ib.malformed += 1
            return
        count = rd_be16(p + PREFIX_SIZE)
        off = PREFIX_SIZE + COUNT_SIZE
        if off + count * RECEIPT_SIZE > n:
            ib.malformed += 1
            count = (n - off) // RECEIPT_SIZE
        for i in range(count):
            st = p[off + RECEIPT_STATUS_OFF]
            code = rd_be16(p + off + RECEIPT_CODE_OFF)
            ib.status[st if st < MAX_STATUS else 0] += 1
            ib.codes[code if code < MAX_CODE else 0] += 1
            if st != ST_ACCEPTED:
                ib.terminal += 1
            else:
                ib.last_accepted_ns = now
            if ib.track_n > 0:
                inbox_track(ib, rd_be64(p + off), st, now)
            off += RECEIPT_SIZE
        ib.receipt_entries += count
        if count:
            ib.last_terminal_ns = now
    elif p[2] == CMD_ERROR:
        ib.errors += 1
        if n >= <size_t>(PREFIX_SIZE + 2):
            code = rd_be16(p + PREFIX_SIZE)
            ib.error_codes[code if code < MAX_CODE else 0] += 1
    else:
        ib.other += 1



cdef inline void inbox_track(Inbox *ib, uint64_t mid, uint8_t st, int64_t now) noexcept nogil:
    cdef uint64_t k = mid - ib.track_base  # wraps to a huge value below the base
    if mid < ib.track_base or k >= <uint64_t>ib.track_n:
        ib.untracked += 1
        return
    if ib.t_acc[k] == 0 and ib.t_term[k] == 0:
        ib.confirmed += 1
    if st == ST_ACCEPTED:
        if ib.t_acc[k] == 0:
            ib.t_acc[k] = now
        else:
            ib.repeated += 1
    elif ib.t_term[k] == 0:
        ib.t_term[k] = now
        ib.st_term[k] = st
    else:
        ib.repeated += 1


cdef int inbox_drain(void *s, Inbox *ib, zmq_msg_t *msg) noexcept nogil:
    """Read every frame already queued at ``s`` without blocking; -errno on failure."""
    cdef int rc, first, e
    cdef int64_t now
    while True:
        rc = zmqapi.msg_recv(msg, s, ZMQ_DONTWAIT)
        if rc < 0:
            e = zmqapi.errno_()
            if e == EAGAIN_ or e == EINTR_:
                return 0
            return -e
        ib.frames += 1
        first = not ib.in_multipart
        ib.in_multipart = zmqapi.msg_more(msg)
        if first:
            now = now_ns()
            inbox_classify(ib, <const uint8_t *>zmqapi.msg_data(msg), zmqapi.msg_size(msg), now)


cdef dict _by_name(const int64_t *counts, int n, enum, str unknown, int first=0):
    """{enum member name (or unknown_<i>): count} for the non-zero counts from ``first``."""
    out = {}
    cdef int i
    for i in range(first, n):
        if counts[i]:
            try:
                out[enum(i).name] = counts[i]
            except ValueError:
                out[f"{unknown}_{i}"] = counts[i]
    return out


cdef object _inbox_dict(Inbox *ib):
    statuses = _by_name(ib.status, MAX_STATUS, _P.Status, "status")
    codes = _by_name(ib.codes, MAX_CODE, _P.ErrorCode, "code", 1)  # 0: no code
    errors = _by_name(ib.error_codes, MAX_CODE, _P.ErrorCode, "code")
    return {
        "frames_in": ib.frames,
        "messages_in": ib.messages,
        "receipt_frames": ib.receipt_frames,
        "receipt_entries": ib.receipt_entries,
        "receipts": statuses,
        "receipt_codes": codes,
        "terminal": ib.terminal,
        "last_terminal_ns": ib.last_terminal_ns,
        "error_frames": ib.errors,
        "errors": errors,
        "malformed_in": ib.malformed,
        "other_in": ib.other,
        "last_accepted_ns": ib.last_accepted_ns,
    }


# ---------------------------------------------------------------------------------------
# Sender

def run_sender(sock, headers, long long count, *, int payload_size=200, double rate=0.0,
               bint patch_id=True, unsigned long long first_id=1, bint drain=True,
               long long window=0, bint wait_terminal=False, double deadline_s=60.0,
               double heartbeat_s=0.0, bint track_receipts=False,
               bint window_confirmed=False, bint wait_confirmed=False, int pack=0):
    """Send ``count`` messages [header][payload] through the DEALER ``sock``.

    headers: prebuilt SEND header frames, used round-robin (message i takes
        ``headers[i % len(headers)]``); with ``patch_id`` the msg id field of each copy is
        set to ``first_id + i`` so that every message has its own id (dedup).
    payload_size: bytes per payload frame (>= 16; see the module doc for the layout).
    rate: offered rate in msg/s (open loop: message i is due at t0 + i/rate and a late
        sender catches up); 0 sends as fast as libzmq accepts.
    drain: read incoming frames (RECEIPT, ERROR) without blocking while sending.
    window: if > 0, at most this many messages without a terminal receipt in flight.
    wait_terminal: after the last send, wait (up to the deadline) for a terminal receipt
        for every message sent.
    heartbeat_s: if > 0, send a HEARTBEAT frame when nothing was sent for this long.
    deadline_s: hard bound on the whole call.
    track_receipts: keep per-message times (needs ``patch_id``; message i has id
        ``first_id + i``): the result gets ``t_send_ns``, ``t_accepted_ns`` (first
        ACCEPTED receipt) and ``t_terminal_ns`` (first terminal receipt), array('q') of
        ``count`` CLOCK_MONOTONIC ns, 0 where none came, and ``terminal_status``
        (array('B'), 0 where none came), plus the counters ``confirmed`` (messages with
        any receipt), ``untracked_receipts``, ``repeated_receipts``.
    window_confirmed: the window counts messages without any receipt yet (not yet
        ACCEPTED or refused) instead of messages without a terminal receipt; needs
        ``track_receipts``.
    wait_confirmed: after the last send, wait (up to the deadline) until every message
        has a receipt (ACCEPTED or a refusal); needs ``track_receipts``.
    pack: if > 1, send up to this many messages per PACK frame (docs/PROTOCOL.md, PACK;
        the hop must have said it reads packs), within PACK_MAX bytes; a pack goes out
        when full, before the sender waits (pacing, window) and at the end.

    Returns a dict: sent, t_first_ns, t_last_ns, t_end_ns (CLOCK_MONOTONIC), reason,
    eagain (times the socket pushed back), max_lag_ns (pacing), and the inbox counters.
    """
    cdef void *s = handle_of(sock)
    cdef Py_ssize_t nh = len(headers)
    if nh == 0:
        raise ValueError("need at least one header")
    if payload_size < 16:
        raise ValueError("payload_size must be >= 16 (timestamp + index)")
    if count < 0:
        raise ValueError("count must be >= 0")
    if (window_confirmed or wait_confirmed) and not track_receipts:
        raise ValueError("window_confirmed/wait_confirmed need track_receipts=True")
    if track_receipts and not patch_id:
        raise ValueError("track_receipts needs patch_id (message i has id first_id + i)")
    if pack < 0:
        raise ValueError("pack must be >= 0")
    cdef Py_ssize_t total = 0, maxlen = 0, i
    for h in headers:
        if not isinstance(h, bytes):
            raise TypeError("headers must be bytes")
        if len(h) < PREFIX_SIZE + 8:
            raise ValueError(f"header of {len(h)} bytes is too short for a SEND")
        total += len(h)
        maxlen = max(maxlen, len(h))
    cdef uint8_t *hbuf = <uint8_t *>malloc(total)
    cdef Py_ssize_t *offs = <Py_ssize_t *>malloc(nh * sizeof(Py_ssize_t))
    cdef Py_ssize_t *lens = <Py_ssize_t *>malloc(nh * sizeof(Py_ssize_t))
    cdef uint8_t *hcur = <uint8_t *>malloc(maxlen)
    cdef uint8_t *pay = <uint8_t *>calloc(payload_size, 1)
    cdef Inbox *ib = <Inbox *>calloc(1, sizeof(Inbox))
    cdef int64_t *t_send = NULL
    cdef Pack pk
    memset(&pk, 0, sizeof(Pack))
    pk.most = pack if pack > 1 else 0
    if pk.most and PREFIX_SIZE + PACK_HEAD + maxlen + PACK_PAYLOAD_HEAD + payload_size > PACK_MAX:
        pk.most = 0  # messages this large go one by one
    cdef size_t entry_max = PACK_HEAD + maxlen + PACK_PAYLOAD_HEAD + payload_size
    cdef bytes pack_prefix = _P.prefix(_P.Command.PACK)
    if pk.most:
        pk.buf = <uint8_t *>malloc(PACK_MAX)
        if pk.buf != NULL:
            memcpy(pk.buf, <const unsigned char *>pack_prefix, PREFIX_SIZE)
        pk.size = PREFIX_SIZE
    if not (hbuf and offs and lens and hcur and pay and ib) or (pk.most and not pk.buf):
        free(hbuf); free(offs); free(lens); free(hcur); free(pay); free(ib); free(pk.buf)
        raise MemoryError()
    if track_receipts and count > 0:
        t_send = <int64_t *>calloc(count, sizeof(int64_t))
        ib.t_acc = <int64_t *>calloc(count, sizeof(int64_t))
        ib.t_term = <int64_t *>calloc(count, sizeof(int64_t))
        ib.st_term = <uint8_t *>calloc(count, 1)
        ib.track_base = first_id
        ib.track_n = count
        if not (t_send and ib.t_acc and ib.t_term and ib.st_term):
            free(t_send); free(ib.t_acc); free(ib.t_term); free(ib.st_term)
            free(hbuf); free(offs); free(lens); free(hcur); free(pay); free(ib)
            raise MemoryError()
    cdef Py_ssize_t pos = 0
    cdef const unsigned char *src
    for i, h in enumerate(headers):
        src = h
        memcpy(hbuf + pos, src, len(h))
        offs[i] = pos
        lens[i] = len(h)
        pos += len(h)
    cdef bytes hb_frame = _P.prefix(_P.Command.HEARTBEAT)
    cdef const unsigned char *hb_ptr = hb_frame
    cdef size_t hb_len = len(hb_frame)

    cdef zmq_msg_t msg
    zmqapi.msg_init(&msg)
    cdef zmq_pollitem_t item
    item.socket = s
    item.fd = 0
    cdef long long sent = 0, eagain = 0, heartbeats = 0
    cdef int64_t t0, deadline, interval_num = 0, target, now, ts, max_lag = 0, lag
    cdef int64_t t_first = 0, t_last = 0, t_end = 0, last_out, hb_ns
    cdef int64_t idx
    cdef int rc, e, err = 0
    cdef Py_ssize_t h_i
    cdef const char *reason = "done"
    cdef double ns_per_msg = (1e9 / rate) if rate > 0 else 0.0
    hb_ns = <int64_t>(heartbeat_s * 1e9)

    with nogil:
        t0 = now_ns()
        last_out = t0
        deadline = t0 + <int64_t>(deadline_s * 1e9)
        while sent < count:
            now = now_ns()
            if now >= deadline:
                reason = "deadline"
                break
            if ns_per_msg > 0:
                target = t0 + <int64_t>(sent * ns_per_msg)
                if now < target:
                    rc = pack_flush(s, &pk)
                    if rc != 0:
                        if rc != EAGAIN_:
                            err = rc
                            break
                        eagain += 1
                        item.events = ZMQ_POLLOUT
                        zmqapi.poll(&item, 1, 1)
                        continue
                    if drain:
                        rc = inbox_drain(s, ib, &msg)
                        if rc < 0:
                            err = -rc
                            break
                    sleep_until(target)
                else:
                    lag = now - target
                    if lag > max_lag:
                        max_lag = lag
            if pk.entries and (pk.entries >= pk.most or pk.size + entry_max > PACK_MAX
                               or (window > 0 and sent - (
                    ib.confirmed if window_confirmed else ib.terminal) >= window)):
                rc = pack_flush(s, &pk)  # full, or the window waits on what it holds
                if rc != 0:
                    if rc != EAGAIN_:
                        err = rc
                        break
                    eagain += 1
                    item.events = ZMQ_POLLOUT | ZMQ_POLLIN
                    zmqapi.poll(&item, 1, 10)
                    if drain:
                        rc = inbox_drain(s, ib, &msg)
                        if rc < 0:
                            err = -rc
                            break
                    continue
            if window > 0 and sent - (ib.confirmed if window_confirmed else ib.terminal) >= window:
                item.events = ZMQ_POLLIN
                zmqapi.poll(&item, 1, 1)
                rc = inbox_drain(s, ib, &msg)
                if rc < 0:
                    err = -rc
                    break
                continue
            h_i = sent % nh
            memcpy(hcur, hbuf + offs[h_i], lens[h_i])
            if patch_id:
                wr_be64(hcur + SEND_ID_OFF, first_id + <uint64_t>sent)
            ts = now_ns()
            memcpy(pay, &ts, 8)
            idx = sent
            memcpy(pay + 8, &idx, 8)
            if pk.most:
                pack_put(&pk, hcur, lens[h_i], pay, payload_size)
                rc = 0
            else:
                rc = zmqapi.send(s, hcur, lens[h_i], ZMQ_DONTWAIT | ZMQ_SNDMORE)
            if rc < 0:
                e = zmqapi.errno_()
                if e != EAGAIN_ and e != EINTR_:
                    err = e
                    break
                eagain += 1
                if drain:
                    rc = inbox_drain(s, ib, &msg)
                    if rc < 0:
                        err = -rc
                        break
                    item.events = ZMQ_POLLOUT | ZMQ_POLLIN
                else:
                    item.events = ZMQ_POLLOUT
                zmqapi.poll(&item, 1, 10)
                continue
            # The first frame was queued, so the rest of this message is queued too
            # (libzmq checks the high-water mark per message, not per frame).
            if not pk.most and zmqapi.send(s, pay, payload_size, 0) < 0:
                err = zmqapi.errno_()
                break
            if sent == 0:
                t_first = ts
            t_last = ts
            if t_send != NULL:
                t_send[sent] = ts
            last_out = ts
            sent += 1
            if drain and (sent & 63) == 0:
                rc = inbox_drain(s, ib, &msg)
                if rc < 0:
                    err = -rc
                    break
        while err == 0 and pk.entries:
            rc = pack_flush(s, &pk)  # the last pack
            if rc == 0:
                break
            if rc != EAGAIN_ or now_ns() >= deadline:
                err = rc
                break
            item.events = ZMQ_POLLOUT
            zmqapi.poll(&item, 1, 10)
        t_end = now_ns()
        if err == 0 and (wait_terminal or drain):
            # Collect what is already queued; with wait_terminal, wait for every outcome.
            while True:
                rc = inbox_drain(s, ib, &msg)
                if rc < 0:
                    err = -rc
                    break
                if wait_terminal:
                    if ib.terminal >= sent:
                        break
                elif not wait_confirmed or ib.confirmed >= sent:
                    break
                now = now_ns()
                if now >= deadline:
                    reason = "deadline"
                    break
                if hb_ns > 0 and now - last_out >= hb_ns:
                    if zmqapi.send(s, hb_ptr, hb_len, ZMQ_DONTWAIT) >= 0:
                        heartbeats += 1
                    last_out = now
                item.events = ZMQ_POLLIN
                zmqapi.poll(&item, 1, 10)
    zmqapi.msg_close(&msg)
    out = {
        "sent": sent,
        "t_start_ns": t0,
        "t_first_ns": t_first,
        "t_last_ns": t_last,
        "t_end_ns": t_end,
        "t_done_ns": now_ns(),
        "reason": reason.decode(),
        "eagain": eagain,
        "max_lag_ns": max_lag,
        "heartbeats": heartbeats,
    }
    out.update(_inbox_dict(ib))
    if track_receipts:
        out["confirmed"] = ib.confirmed
        out["untracked_receipts"] = ib.untracked
        out["repeated_receipts"] = ib.repeated
        out["t_send_ns"] = _int64_array(t_send, count)
        out["t_accepted_ns"] = _int64_array(ib.t_acc, count)
        out["t_terminal_ns"] = _int64_array(ib.t_term, count)
        out["terminal_status"] = array.array("B", PyBytes_FromStringAndSize(
            <char *>ib.st_term, count)) if count else array.array("B")
    free(t_send); free(ib.t_acc); free(ib.t_term); free(ib.st_term)
    free(hbuf); free(offs); free(lens); free(hcur); free(pay); free(ib); free(pk.buf)
    if err:
        raise _zmq_error(err, f"sender after {sent} messages")
    return out


cdef struct Pack:
    # run_sender(pack=N): the PACK frame being filled
    uint8_t *buf
    size_t size
    int entries
    int most


cdef inline void pack_put(Pack *pk, const uint8_t *h, size_t hn, const uint8_t *b,
                          size_t bn) noexcept nogil:
    """Append one message; the caller flushes first when it would not fit PACK_MAX."""
    wr_be16(pk.buf + pk.size, <uint16_t>hn)
    memcpy(pk.buf + pk.size + PACK_HEAD, h, hn)
    wr_be32(pk.buf + pk.size + PACK_HEAD + hn, <uint32_t>bn)
    memcpy(pk.buf + pk.size + PACK_HEAD + hn + PACK_PAYLOAD_HEAD, b, bn)
    pk.size += PACK_HEAD + hn + PACK_PAYLOAD_HEAD + bn
    pk.entries += 1


cdef int pack_flush(void *s, Pack *pk) noexcept nogil:
    """Send the pack if it holds anything: 0, or the errno (EAGAIN: kept, retry)."""
    if pk.entries == 0:
        return 0
    if zmqapi.send(s, pk.buf, pk.size, ZMQ_DONTWAIT) < 0:
        return zmqapi.errno_()
    pk.size = PREFIX_SIZE
    pk.entries = 0
    return 0


cdef object _int64_array(int64_t *p, long long n):
    arr = array.array("q")
    if n > 0 and p != NULL:
        arr.frombytes(PyBytes_FromStringAndSize(<char *>p, n * sizeof(int64_t)))
    return arr


def drain_inbox(sock, double wait_s=0.0):
    """Read incoming frames at ``sock`` for up to ``wait_s`` seconds; return the counters."""
    cdef void *s = handle_of(sock)
    cdef Inbox *ib = <Inbox *>calloc(1, sizeof(Inbox))
    if ib == NULL:
        raise MemoryError()
    cdef zmq_msg_t msg
    cdef zmq_pollitem_t item
    item.socket = s
    item.fd = 0
    item.events = ZMQ_POLLIN
    cdef int rc = 0
    cdef int64_t end
    zmqapi.msg_init(&msg)
    with nogil:
        end = now_ns() + <int64_t>(wait_s * 1e9)
        while True:
            rc = inbox_drain(s, ib, &msg)
            if rc < 0 or now_ns() >= end:
                break
            zmqapi.poll(&item, 1, 1)
    zmqapi.msg_close(&msg)
    out = _inbox_dict(ib)
    free(ib)
    if rc < 0:
        raise _zmq_error(-rc, "drain_inbox")
    return out


# ---------------------------------------------------------------------------------------
# Receiver: cumulative ack table (address -> highest sequence seen)

cdef struct AckSlot:
    uint64_t hash
    uint64_t seq
    uint8_t used
    uint8_t dirty
    uint8_t length
    char addr[255]


cdef struct AckTable:
    AckSlot *slots
    uint32_t *dirty
    size_t mask
    size_t used
    size_t limit
    size_t ndirty
    int64_t full  # updates dropped because the table was full
    int64_t acks_sent  # ACK frames
    int64_t ack_entries
    int64_t ack_eagain
    uint8_t *frame


cdef inline uint64_t fnv1a(const uint8_t *p, size_t n) noexcept nogil:
    cdef uint64_t h = 1469598103934665603ULL
    cdef size_t i
    for i in range(n):
        h ^= p[i]
        h *= 1099511628211ULL
    return h


cdef void ack_note(AckTable *t, const uint8_t *addr, size_t n, uint64_t seq) noexcept nogil:
    cdef uint64_t h = fnv1a(addr, n)
    cdef size_t i = h & t.mask
    cdef AckSlot *sl
    while True:
        sl = &t.slots[i]
        if not sl.used:
            if t.used >= t.limit:
                t.full += 1
                return
            sl.used = 1
            sl.hash = h
            sl.length = <uint8_t>n
            memcpy(sl.addr, addr, n)
            sl.seq = seq
            sl.dirty = 1
            t.dirty[t.ndirty] = <uint32_t>i
            t.ndirty += 1
            t.used += 1
            return
        if sl.hash == h and sl.length == n and memcmp(sl.addr, addr, n) == 0:
            if seq > sl.seq:
                sl.seq = seq
                if not sl.dirty:
                    sl.dirty = 1
                    t.dirty[t.ndirty] = <uint32_t>i
                    t.ndirty += 1
            return
        i = (i + 1) & t.mask


cdef int ack_flush(void *s, AckTable *t) noexcept nogil:
    """Send every dirty (address, seq) as cumulative ACK frames; 0, or -errno."""
    cdef size_t k = 0, start, off, entries, j
    cdef AckSlot *sl
    cdef int rc, e
    while k < t.ndirty:
        start = k
        off = PREFIX_SIZE + COUNT_SIZE
        entries = 0
        while k < t.ndirty and entries < 65535:
            sl = &t.slots[t.dirty[k]]
            if off + 1 + sl.length + SEQ_SIZE > ACK_FRAME_MAX:
                break
            t.frame[off] = sl.length
            memcpy(t.frame + off + 1, sl.addr, sl.length)
            wr_be64(t.frame + off + 1 + sl.length, sl.seq)
            off += 1 + sl.length + SEQ_SIZE
            entries += 1
            k += 1
        wr_be16(t.frame + PREFIX_SIZE, <uint16_t>entries)
        rc = zmqapi.send(s, t.frame, off, ZMQ_DONTWAIT)
        if rc < 0:
            e = zmqapi.errno_()
            if e == EAGAIN_ or e == EINTR_:
                # Keep these entries (and the ones after them) dirty for the next flush.
                t.ack_eagain += 1
                memmove(t.dirty, t.dirty + start, (t.ndirty - start) * sizeof(uint32_t))
                t.ndirty -= start
                return 0
            return -e
        t.acks_sent += 1
        t.ack_entries += entries
        for j in range(start, k):
            t.slots[t.dirty[j]].dirty = 0
    t.ndirty = 0
    return 0


# ---------------------------------------------------------------------------------------
# Receiver

cdef struct Recv:
    # what run_receiver counts per message (take_message), plain or packed
    long long received, short_payload, dups, out_of_order, out_of_space, nsamples
    long long max_samples, index_space, not_deliver, bad_deliver, packs, bad_packs
    int64_t t_first, t_last
    int64_t *last_idx   # per connection: the previous message's index
    int64_t *packs_read # per connection: PACK frames read, and reported (HEARTBEAT)
    int64_t *packs_told
    int64_t *lat
    uint8_t *bitmap
    AckTable *tab       # reliable: the cumulative acks owed
    uint64_t max_dseq, min_dseq


cdef void take_message(Recv *r, const uint8_t *hdr, size_t hsize, const uint8_t *data,
                       size_t size, int cur, int64_t now) noexcept nogil:
    """One delivered message: its header frame ``hdr`` (the DELIVER, or hsize > HDR_COPY
    when it was too long to keep) and its payload."""
    cdef int64_t ts, idx
    cdef size_t la, lk, lf, lc, lo
    cdef uint64_t dseq
    r.received += 1
    if r.received == 1:
        r.t_first = now
    r.t_last = now
    if size >= 16:
        memcpy(&ts, data, 8)
        memcpy(&idx, data + 8, 8)
        if idx <= r.last_idx[cur]:
            r.out_of_order += 1  # per connection: one sender, so order holds on each
        r.last_idx[cur] = idx
        if r.nsamples < r.max_samples:
            r.lat[r.nsamples] = now - ts
            r.nsamples += 1
        if r.bitmap != NULL:
            if idx >= 0 and idx < r.index_space:
                if r.bitmap[idx >> 3] & (1 << (idx & 7)):
                    r.dups += 1
                else:
                    r.bitmap[idx >> 3] |= <uint8_t>(1 << (idx & 7))
            else:
                r.out_of_space += 1
    else:
        r.short_payload += 1
    if r.tab == NULL:
        return
    if (hsize < <size_t>(PREFIX_SIZE + DELIVER_SIZE) or hsize > HDR_COPY
            or hdr[0] != SIG or hdr[2] != CMD_DELIVER):
        r.not_deliver += 1
        return
    lk = hdr[DELIVER_LENS_OFF]
    lf = hdr[DELIVER_LENS_OFF + 1]
    lc = hdr[DELIVER_LENS_OFF + 2]
    lo = hdr[DELIVER_LENS_OFF + 3]
    la = hdr[DELIVER_LENS_OFF + 4]
    if PREFIX_SIZE + DELIVER_SIZE + lk + lf + lc + lo + la != hsize or la == 0:
        r.bad_deliver += 1
        return
    dseq = rd_be64(hdr + DELIVER_SEQ_OFF)
    if dseq > r.max_dseq:
        r.max_dseq = dseq
    if dseq < r.min_dseq:
        r.min_dseq = dseq
    ack_note(r.tab, hdr + hsize - la, la, dseq)


cdef void take_pack(Recv *r, const uint8_t *p, size_t n, int cur, int64_t now) noexcept nogil:
    """Every DELIVER in a PACK frame (docs/PROTOCOL.md, PACK), in order; a frame that
    does not parse counts in ``bad_packs`` after the entries before the fault."""
    cdef size_t off = PREFIX_SIZE, hn, pn
    r.packs += 1
    r.packs_read[cur] += 1
    while off < n:
        if off + PACK_HEAD > n:
            r.bad_packs += 1
            return
        hn = rd_be16(p + off)
        off += PACK_HEAD
        if off + hn + PACK_PAYLOAD_HEAD > n:
            r.bad_packs += 1
            return
        pn = rd_be32(p + off + hn)
        if off + hn + PACK_PAYLOAD_HEAD + pn > n:
            r.bad_packs += 1
            return
        take_message(r, p + off, hn, p + off + hn + PACK_PAYLOAD_HEAD, pn, cur, now)
        off += hn + PACK_PAYLOAD_HEAD + pn


cdef int acks_now(void *s, AckTable *tab, int64_t now, int64_t *last_ack,
                  int64_t *last_out) noexcept nogil:
    """Send the acks owed and note when: 0, or the errno that stops the receiver."""
    cdef int rc = ack_flush(s, tab)
    if rc < 0:
        return -rc
    last_ack[0] = now
    last_out[0] = now
    return 0


cdef void report_packs(void *s, int64_t n) noexcept nogil:
    """HEARTBEAT with the packs read on this connection: the router keeps at most
    PACK_WINDOW unreported (docs/PROTOCOL.md, PACK). Best effort: a refused report is
    followed by the next one."""
    cdef uint8_t hb[32]
    memcpy(hb, HB_PREFIX, PREFIX_SIZE)
    wr_be64(hb + PREFIX_SIZE, <uint64_t>n)
    zmqapi.send(s, hb, PREFIX_SIZE + 8, ZMQ_DONTWAIT)


def run_receiver(sock, long long count, *, double deadline_s=60.0, double idle_s=2.0,
                 bint reliable=False, double ack_interval_s=0.001, bint ack_on_drain=True,
                 long long max_samples=-1, long long index_space=0, long max_addresses=16384,
                 double heartbeat_s=0.0, bint packed=False):
    """Receive until ``count`` messages arrived, the deadline passed, or nothing came for
    ``idle_s`` after the first message.

    ``sock`` is one socket, or a list of sockets served by this one process (several
    gateway connections whose driver cost must match a single-connection trial's); each
    is drained in turn and all are polled together when none has anything.

    A message is the final frame of a multipart (the payload), or one entry of a PACK
    frame (the receiver asked for packs in its HELLO); other single-frame messages are
    control traffic (HEARTBEAT, ERROR, ...) and only counted. With ``packed`` (a sender
    packing through a bare proxy, which forwards its PACKs as payload frames) the last
    frame of a multipart message is read as a PACK. Latency = receive time minus
    the payload's timestamp, one sample per message, up to ``max_samples`` (-1: count).
    ``index_space`` > 0 enables a bitmap over the payload's message index to count
    duplicates; ``out_of_order`` counts messages whose index is not above the previous
    one's (one sender, so per-connection order is checked).

    reliable: parse the DELIVER header (the frame before the payload), track the highest
    seq per address, and send cumulative ACKs for every address that moved: when the
    socket has been drained (``ack_on_drain``) and at least every ``ack_interval_s``.

    Returns a dict with counters, CLOCK_MONOTONIC times and ``latencies`` (array('q'), ns).
    """
    socks = list(sock) if isinstance(sock, (list, tuple)) else [sock]
    cdef int nsock = len(socks), cur = 0, dry = 0, si
    if nsock < 1:
        raise ValueError("run_receiver needs at least one socket")
    if reliable and nsock > 1:
        raise ValueError("reliable receiving (acks) takes one socket")
    cdef Recv r
    memset(&r, 0, sizeof(Recv))
    r.min_dseq = <uint64_t>-1
    cdef zmq_pollitem_t *items = <zmq_pollitem_t *>calloc(nsock, sizeof(zmq_pollitem_t))
    r.last_idx = <int64_t *>malloc(nsock * sizeof(int64_t))
    r.packs_read = <int64_t *>calloc(nsock, sizeof(int64_t))
    r.packs_told = <int64_t *>calloc(nsock, sizeof(int64_t))
    if items == NULL or r.last_idx == NULL or r.packs_read == NULL or r.packs_told == NULL:
        free(items); free(r.last_idx); free(r.packs_read); free(r.packs_told)
        raise MemoryError()
    for si in range(nsock):
        items[si].socket = handle_of(socks[si])
        items[si].events = ZMQ_POLLIN
        r.last_idx[si] = -1
    cdef void *s = items[0].socket
    if max_samples < 0:
        max_samples = count
    r.max_samples = max_samples
    r.index_space = index_space
    cdef AckTable *tab = NULL
    cdef size_t cap
    cdef uint8_t *hdr = <uint8_t *>malloc(HDR_COPY)
    if hdr == NULL:
        raise MemoryError()
    if max_samples > 0:
        r.lat = <int64_t *>malloc(max_samples * sizeof(int64_t))
    if index_space > 0:
        r.bitmap = <uint8_t *>calloc((index_space + 7) // 8, 1)
    if reliable:
        cap = 16
        while cap < <size_t>(2 * max_addresses):
            cap <<= 1
        tab = <AckTable *>calloc(1, sizeof(AckTable))
        if tab != NULL:
            tab.slots = <AckSlot *>calloc(cap, sizeof(AckSlot))
            tab.dirty = <uint32_t *>malloc(cap * sizeof(uint32_t))
            tab.frame = <uint8_t *>malloc(ACK_FRAME_MAX)
            tab.mask = cap - 1
            tab.limit = <size_t>max_addresses
        r.tab = tab
    if ((max_samples > 0 and r.lat == NULL) or (index_space > 0 and r.bitmap == NULL)
            or (reliable and (tab == NULL or tab.slots == NULL or tab.dirty == NULL
                              or tab.frame == NULL))):
        free(hdr); free(r.lat); free(r.bitmap); free(items); free(r.last_idx)
        if tab != NULL:
            free(tab.slots); free(tab.dirty); free(tab.frame); free(tab)
        raise MemoryError()
    cdef bytes ack_prefix = _P.prefix(_P.Command.ACK)
    if reliable:
        memcpy(tab.frame, <const unsigned char *>ack_prefix, PREFIX_SIZE)
    cdef bytes hb_frame = _P.prefix(_P.Command.HEARTBEAT)
    cdef const unsigned char *hb_ptr = hb_frame
    cdef size_t hb_len = len(hb_frame)

    cdef zmq_msg_t msg
    zmqapi.msg_init(&msg)
    cdef long long frames = 0, control = 0
    cdef long long heartbeats = 0, frames_in_msg = 0, multi_frame_max = 0
    cdef int64_t t0, deadline, idle_ns, ack_ns, hb_ns, now
    cdef int64_t last_ack, last_out, tmo
    cdef size_t size, hsize = 0
    cdef const uint8_t *data
    cdef int rc, e, more, err = 0
    cdef const char *reason = "count"
    idle_ns = <int64_t>(idle_s * 1e9)
    ack_ns = <int64_t>(ack_interval_s * 1e9)
    hb_ns = <int64_t>(heartbeat_s * 1e9)

    with nogil:
        t0 = now_ns()
        last_ack = t0
        last_out = t0
        deadline = t0 + <int64_t>(deadline_s * 1e9)
        while r.received < count:
            rc = zmqapi.msg_recv(&msg, items[cur].socket, ZMQ_DONTWAIT)
            if rc < 0:
                e = zmqapi.errno_()
                if e != EAGAIN_ and e != EINTR_:
                    err = e
                    break
                # A multipart message arrives whole, so a dry socket is between messages:
                # try the next one, and wait only when every socket is dry.
                cur = (cur + 1) % nsock
                dry += 1
                if dry < nsock:
                    continue
                dry = 0
                now = now_ns()
                if reliable and tab.ndirty and (ack_on_drain or now - last_ack >= ack_ns):
                    err = acks_now(s, tab, now, &last_ack, &last_out)
                    if err:
                        break
                if hb_ns > 0 and now - last_out >= hb_ns:
                    for si in range(nsock):
                        if zmqapi.send(items[si].socket, hb_ptr, hb_len, ZMQ_DONTWAIT) >= 0:
                            heartbeats += 1
                    last_out = now
                if now >= deadline:
                    reason = "deadline"
                    break
                if r.received > 0 and now - r.t_last >= idle_ns:
                    reason = "idle"
                    break
                tmo = 100
                if reliable and tab.ndirty:
                    tmo = 1
                zmqapi.poll(items, nsock, tmo)
                continue
            dry = 0
            frames += 1
            data = <const uint8_t *>zmqapi.msg_data(&msg)
            size = zmqapi.msg_size(&msg)
            more = zmqapi.msg_more(&msg)
            if more:
                # Not the last frame: keep a copy; the one before the payload is the header.
                frames_in_msg += 1
                hsize = size if size < HDR_COPY else HDR_COPY
                memcpy(hdr, data, hsize)
                if size > HDR_COPY:
                    hsize = HDR_COPY + 1  # mark as truncated
                continue
            now = now_ns()
            if frames_in_msg == 0:
                if size >= <size_t>PREFIX_SIZE and data[0] == SIG and data[2] == CMD_PACK:
                    take_pack(&r, data, size, cur, now)
                    if r.packs_read[cur] - r.packs_told[cur] >= PACK_REPORT:
                        report_packs(items[cur].socket, r.packs_read[cur])
                        r.packs_told[cur] = r.packs_read[cur]
                else:
                    control += 1
                    continue
            else:
                if frames_in_msg + 1 > multi_frame_max:
                    multi_frame_max = frames_in_msg + 1
                frames_in_msg = 0
                if packed and size >= <size_t>PREFIX_SIZE and data[2] == CMD_PACK:
                    take_pack(&r, data, size, cur, now)
                else:
                    take_message(&r, hdr, hsize, data, size, cur, now)
            if reliable and tab.ndirty and now - last_ack >= ack_ns:
                err = acks_now(s, tab, now, &last_ack, &last_out)
                if err:
                    break
        if err == 0 and reliable and tab.ndirty:
            # Final acks: retry pushed-back frames until the deadline.
            while tab.ndirty:
                rc = ack_flush(s, tab)
                if rc < 0:
                    err = -rc
                    break
                if tab.ndirty == 0 or now_ns() >= deadline:
                    break
                items[0].events = ZMQ_POLLOUT
                zmqapi.poll(items, 1, 10)
    zmqapi.msg_close(&msg)
    lat_arr = array.array("q")
    if r.nsamples:
        lat_arr.frombytes(PyBytes_FromStringAndSize(<char *>r.lat, r.nsamples * sizeof(int64_t)))
    out = {
        "received": r.received,
        "frames": frames,
        "control": control,
        "packs": r.packs,
        "bad_packs": r.bad_packs,
        "short_payload": r.short_payload,
        "duplicates": r.dups,
        "out_of_order": r.out_of_order,
        "index_out_of_space": r.out_of_space,
        "frames_per_message": multi_frame_max,
        "t_start_ns": t0,
        "t_first_ns": r.t_first,
        "t_last_ns": r.t_last,
        "reason": reason.decode(),
        "heartbeats": heartbeats,
        "latencies": lat_arr,
    }
    if reliable:
        out.update({
            "not_deliver": r.not_deliver,
            "bad_deliver": r.bad_deliver,
            "addresses": tab.used,
            "ack_table_full": tab.full,
            "acks_sent": tab.acks_sent,
            "ack_entries": tab.ack_entries,
            "ack_eagain": tab.ack_eagain,
            "ack_pending": tab.ndirty,
            "max_seq": r.max_dseq,
            "min_seq": r.min_dseq if r.received else 0,
        })
        free(tab.slots); free(tab.dirty); free(tab.frame); free(tab)
    free(hdr); free(r.lat); free(r.bitmap); free(items); free(r.last_idx)
    free(r.packs_read); free(r.packs_told)
    if err:
        raise _zmq_error(err, f"receiver after {r.received} messages")
    return out


# ---------------------------------------------------------------------------------------
# Raw frames, no protocol: what libzmq alone costs per frame and per byte
# (benchmarks/curve_frames.py). A message is ``len(sizes)`` frames of those sizes; an
# empty single frame ends the stream.

def send_frames(sock, sizes, long long count):
    """Send ``count`` messages of frames sized ``sizes`` (bytes each) as fast as libzmq
    takes them, then the empty end frame. Returns CLOCK_MONOTONIC ns (start, end)."""
    cdef void *s = handle_of(sock)
    cdef int nf = len(sizes), i, err = 0
    if nf < 1 or nf > 16:
        raise ValueError("send_frames takes 1 to 16 frame sizes")
    cdef size_t size[16]
    cdef size_t biggest = 0
    for i in range(nf):
        size[i] = sizes[i]
        biggest = max(biggest, size[i])
    cdef uint8_t *buf = <uint8_t *>calloc(biggest + 1, 1)
    if buf == NULL:
        raise MemoryError()
    cdef long long k = 0
    cdef int64_t t0, t1
    with nogil:
        t0 = now_ns()
        for k in range(count):
            for i in range(nf):
                if zmqapi.send(s, buf, size[i], ZMQ_SNDMORE if i < nf - 1 else 0) < 0:
                    err = zmqapi.errno_()
                    break
            if err:
                break
        if not err and zmqapi.send(s, buf, 0, 0) < 0:
            err = zmqapi.errno_()
        t1 = now_ns()
    free(buf)
    if err:
        raise _zmq_error(err, f"send_frames after {k} messages")
    return t0, t1


def count_messages(sock, double deadline_s=60.0):
    """Receive until the empty end frame (or ``deadline_s``); a message is a frame
    without MORE, an empty one is the end. Returns (messages, first ns, last ns)."""
    cdef void *s = handle_of(sock)
    cdef zmq_msg_t m
    cdef zmq_pollitem_t item
    cdef long long got = 0
    cdef int64_t first = 0, last = 0, deadline
    cdef int err = 0, rc
    item.socket = s
    item.fd = 0
    item.events = ZMQ_POLLIN
    zmqapi.msg_init(&m)
    with nogil:
        deadline = now_ns() + <int64_t>(deadline_s * 1e9)
        while now_ns() < deadline:
            rc = zmqapi.msg_recv(&m, s, ZMQ_DONTWAIT)
            if rc < 0:
                err = zmqapi.errno_()
                if err != EAGAIN_ and err != EINTR_:
                    break
                err = 0
                item.revents = 0
                zmqapi.poll(&item, 1, 100)
                continue
            if first == 0:
                first = now_ns()
            if not zmqapi.msg_more(&m):
                if rc == 0:
                    break
                got += 1
                last = now_ns()
    zmqapi.msg_close(&m)
    if err:
        raise _zmq_error(err, f"count_messages after {got} messages")
    return got, first, last
