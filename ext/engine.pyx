# cython: language_level=3
"""The client engine: one DEALER connection to the router, driven by a native I/O thread.

The blocking and asyncio SDKs (router.client, router.aio) and the service workers sit on
this. The I/O thread owns the DEALER socket and its monitor socket; without the
application's help it says HELLO once per connection (again when the router stays
silent past its liveness), sends heartbeats, reads and checks every frame, drops
redelivered sequences, sends cumulative ACKs, tracks reliable messages until the router
confirms them and resends them in order after a re-HELLO. Between a dropped
connection (or a re-HELLO) and the router's WELCOME, sends wait in the engine rather
than reach a new connection ahead of its HELLO (best effort: at most MAX_HELD). It runs
without the GIL.

The application thread and the I/O thread meet in a few queues guarded by one mutex:
- out-queue items (sends, control frames, binds), appended by the application;
- in-events (deliveries, replies, requests, errors, link changes) and receipts, appended
  by the I/O thread once per pass and taken by the application in batches;
- counters and the latest status of each recent message id.
The application waits on a condition variable (blocking SDK) or on an eventfd that the
I/O thread signals (asyncio SDK: ``loop.add_reader(engine.fileno(), ...)``).

Out-queue items (one std::string each): a kind byte, a u32 header length, the header,
then the body. Kinds: ``S`` reliable SEND, ``s`` best-effort SEND, ``F`` one frame,
``G`` two frames, ``B`` bind (body: entries of u8 length, address, u64 cursor), ``U``
unbind (entries of u8 length, address).

In-events: a tag byte, then ``D`` deliver / ``Q`` request / ``R`` reply: u32 header
length, header, payload; ``E`` error: header, then the text after a u32 header length;
``W`` welcome: the WELCOME header; ``L`` link: one byte, 1 up and 0 down.
"""

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy
from libcpp.deque cimport deque
from libcpp.string cimport string
from libcpp.unordered_map cimport unordered_map
from libcpp.unordered_set cimport unordered_set
from libcpp.utility cimport pair
from libcpp.vector cimport vector
from cython.operator cimport dereference as deref

from zmqapi cimport *

import zmq.backend.cython._zmq

include "protocol.pxi"

cdef extern from "engine.h" nogil:
    cdef cppclass Pending:
        string item
        uint64_t sent_ms
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    int pthread_mutex_init(pthread_mutex_t *, void *)
    int pthread_mutex_lock(pthread_mutex_t *)
    int pthread_mutex_unlock(pthread_mutex_t *)
    int pthread_cond_broadcast(pthread_cond_t *)
    int eng_cond_init(pthread_cond_t *)
    int eng_cond_wait_ms(pthread_cond_t *, pthread_mutex_t *, long)
    uint64_t eng_now_ms()
    void eng_put16(unsigned char *, uint16_t)
    void eng_put32(unsigned char *, uint32_t)
    void eng_put64(unsigned char *, uint64_t)
    uint16_t eng_get16(const unsigned char *)
    uint32_t eng_get32(const unsigned char *)
    uint64_t eng_get64(const unsigned char *)
    int eng_eventfd()
    void eng_signal(int)
    void eng_drain(int)
    int close(int)


cdef char _err[512]
if zmqapi_load(zmq.backend.cython._zmq.__file__.encode(), _err, sizeof(_err)) != 0:
    raise ImportError(f"router client engine: {_err.decode()}")

cdef enum:
    PREFIX_SIZE = SEND_ID           # every header starts with the 4-byte prefix
    ITEM_HEAD = 5                   # out-queue item: kind byte + u32 header length
    RECV_BUDGET = 2048              # messages read per pass before other work
    MAX_HELD = 100000               # best-effort sends held while the link is down
    MAX_LIST_ENTRIES = 0xFFFF       # protocol.MAX_LIST
    EVENT_HANDSHAKE_SUCCEEDED = 0x1000
    EVENT_DISCONNECTED = 0x0200


cdef struct Rcpt:
    uint64_t mid
    uint8_t status
    uint16_t code


cdef inline void put_prefix(unsigned char *p, uint8_t cmd, uint8_t flags) noexcept nogil:
    p[0] = SIGNATURE
    p[1] = VERSION
    p[2] = cmd
    p[3] = flags


cdef inline bint is_reliable(uint8_t cls) noexcept nogil:
    return cls == CLASS_ORDER or cls == CLASS_DISPATCH or cls == CLASS_CHAT


cdef inline bint name_ok(const unsigned char *p, Py_ssize_t n, bint address) noexcept nogil:
    """The SDK's name rule (router.session.check_address / check_channel)."""
    cdef Py_ssize_t i, colon = -1
    if n < 1 or n > MAX_NAME:
        return False
    for i in range(n):
        if p[i] < 0x21 or p[i] > 0x7E:
            return False
        if p[i] == 0x3A and colon < 0:
            colon = i
    if not address:
        return True
    return 0 < colon < n - 1


@cython.final
cdef class Engine:
    """One connection's protocol engine (see the module docstring). Made and driven by
    router.client.Client; not for direct use."""

    # set at construction, read by both threads
    cdef void *sock
    cdef void *monitor
    cdef uint8_t role
    cdef string name
    cdef uint64_t resend_after_ms
    cdef size_t keep_receipts
    cdef int wake_fd      # application -> I/O thread
    cdef int app_fd       # I/O thread -> asyncio application
    cdef bint use_app_fd

    # shared, under mu
    cdef pthread_mutex_t mu
    cdef pthread_cond_t cv
    cdef vector[string] out_q
    cdef string welcome_frame   # sent after every WELCOME (a worker's READY)
    cdef unordered_map[string, uint64_t] ack_q
    cdef vector[string] in_q
    cdef deque[Rcpt] rcpt_q
    cdef unordered_map[uint64_t, uint32_t] status
    cdef deque[uint64_t] status_order
    cdef uint64_t pending          # reliable messages queued or unconfirmed
    cdef int app_waiting
    cdef bint io_sleeping
    cdef bint stopping
    cdef bint say_bye
    cdef bint stopped
    cdef uint64_t n_sent, n_delivered, n_duplicates, n_receipts, n_resent
    cdef uint64_t n_hellos, n_heartbeats, n_connects, n_disconnects, n_dropped_receipts
    cdef uint64_t n_malformed, n_send_errors, n_dropped_held, n_quiet_errors
    cdef bint welcomed_flag
    cdef uint32_t w_heartbeat_ms, w_liveness, w_max_payload

    # owned by the I/O thread
    cdef unordered_map[uint64_t, Pending] unconfirmed
    cdef deque[uint64_t] send_order
    cdef unordered_map[string, uint64_t] cursors
    cdef unordered_set[string] unbound
    cdef unordered_map[string, uint64_t] reack
    cdef vector[string] ev_local
    cdef vector[Rcpt] rc_local
    cdef vector[string] backlog
    cdef vector[string] scratch
    cdef uint64_t confirmed_local
    cdef bint link, welcome_seen, hello_since_down, resend_due, ever_connected
    cdef uint64_t hello_at, last_heard, last_sent, last_resend_scan
    cdef uint32_t heartbeat_ms, liveness

    def __cinit__(self, size_t socket, size_t monitor, int role, bytes name, *,
                  double resend_after=3.0, size_t keep_receipts=100_000,
                  bint use_app_fd=False):
        self.sock = <void *>socket
        self.monitor = <void *>monitor
        self.role = <uint8_t>role
        self.name = name
        self.resend_after_ms = <uint64_t>(resend_after * 1000)
        self.keep_receipts = max(keep_receipts, 1)
        pthread_mutex_init(&self.mu, NULL)
        eng_cond_init(&self.cv)
        self.wake_fd = eng_eventfd()
        self.app_fd = eng_eventfd()
        if self.wake_fd < 0 or self.app_fd < 0:
            raise OSError("router client engine: eventfd failed (too many open files?)")
        self.use_app_fd = use_app_fd
        self.link = True
        self.heartbeat_ms = 1000
        self.liveness = 3
        self.last_heard = eng_now_ms()

    def __dealloc__(self):
        if self.wake_fd >= 0:
            close(self.wake_fd)
        if self.app_fd >= 0:
            close(self.app_fd)

    # ---------------------------------------------------------------- I/O thread

    def run(self) -> None:
        """The I/O thread's body: returns after :meth:`stop` (sockets untouched after)."""
        with nogil:
            self._loop()

    cdef void _loop(self) noexcept nogil:
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
        self._hello(eng_now_ms())
        while True:
            timeout = 0 if (busy or self.reack.size()
                            or (self.backlog.size() and not self._holding())) \
                else self._timer_ms(eng_now_ms())
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
                self._read_monitor()
            self._send_queued()
            busy = self._read_socket()
            self._housekeeping(eng_now_ms())
            self._publish()
        self._send_queued()
        if self.say_bye:
            self._send_bye()
        pthread_mutex_lock(&self.mu)
        self.stopped = True
        pthread_cond_broadcast(&self.cv)
        pthread_mutex_unlock(&self.mu)

    cdef long _timer_ms(self, uint64_t now) noexcept nogil:
        """How long the loop may sleep: until the next heartbeat is due, at most."""
        cdef uint64_t hb = max(self.heartbeat_ms // 2, 1)
        cdef uint64_t due = self.last_sent + hb
        if due <= now:
            return 1
        return <long>min(due - now, hb)

    # --- sending

    cdef bint _send2(self, const char *h, size_t hn, const char *b, size_t bn, bint two) noexcept nogil:
        if zmqapi.send(self.sock, h, hn, ZMQ_DONTWAIT | (ZMQ_SNDMORE if two else 0)) < 0:
            self.n_send_errors += 1
            return False
        if two:
            zmqapi.send(self.sock, b, bn, 0)
        self.last_sent = eng_now_ms()
        return True

    cdef bint _send_item(self, const string &item) noexcept nogil:
        cdef const char *p = item.data()
        cdef uint32_t hn = eng_get32(<const unsigned char *>p + 1)
        cdef char kind = p[0]
        if kind == b'F':
            return self._send2(p + ITEM_HEAD, hn, NULL, 0, False)
        return self._send2(p + ITEM_HEAD, hn, p + ITEM_HEAD + hn,
                           item.size() - ITEM_HEAD - hn, True)

    cdef void _send_queued(self) noexcept nogil:
        """Take the out-queue and acks from the application and act on them."""
        cdef vector[string] items
        cdef unordered_map[string, uint64_t] acks
        pthread_mutex_lock(&self.mu)
        items.swap(self.out_q)
        acks.swap(self.ack_q)
        pthread_mutex_unlock(&self.mu)
        self._take_items(items)
        for kv in self.reack:
            if acks.count(kv.first) == 0 or acks[kv.first] < kv.second:
                acks[kv.first] = kv.second
        self.reack.clear()
        if acks.size():
            self._send_acks(acks)

    cdef bint _holding(self) noexcept nogil:
        """Between a drop or a (re-)HELLO and its WELCOME, sends wait in the engine:
        written to libzmq they would reach a new connection before its HELLO and be
        refused (NOT_READY)."""
        return self.resend_due or not self.link

    cdef void _take_items(self, vector[string] &items) noexcept nogil:
        """Act on ``items`` after what waits in the backlog, in order; what cannot go
        now (holding, or the socket said EAGAIN) joins the backlog."""
        cdef size_t i
        cdef bint stuck = False
        if self.backlog.size():
            self.backlog.insert(self.backlog.end(), items.begin(), items.end())
            items.swap(self.backlog)
            self.backlog.clear()
        for i in range(items.size()):
            if stuck or not self._take_item(items[i]):
                stuck = True
                if items[i][0] != b's' or self.backlog.size() < MAX_HELD:
                    self.backlog.push_back(string())
                    self.backlog.back().swap(items[i])
                else:
                    self.n_dropped_held += 1   # best effort over the bound while held

    cdef bint _take_item(self, string &item) noexcept nogil:
        """Act on one out-queue item; False if the socket refused it (retry later)."""
        cdef char kind = item[0]
        cdef uint64_t mid
        cdef Pending *pend
        if kind == b'S':
            mid = eng_get64(<const unsigned char *>item.data() + ITEM_HEAD + SEND_ID)
            pend = &self.unconfirmed[mid]
            if pend.item.size() == 0:
                self.send_order.push_back(mid)
            else:
                self.confirmed_local += 1   # the same id again: one pending message
            pend.item.swap(item)
            pend.sent_ms = 0
            if self._holding():
                return True         # goes out after the WELCOME, behind older ones
            if not self._send_item(pend.item):
                return True         # stays unconfirmed: the resend timer retries it
            pend.sent_ms = eng_now_ms()
            self.n_sent += 1
            return True
        if kind == b'B':
            self._bind(item)
            return True
        if kind == b'U':
            self._unbind(item)
            return True
        if self._holding() or not self._send_item(item):
            return False
        if kind == b's':
            self.n_sent += 1
        return True

    cdef void _send_acks(self, unordered_map[string, uint64_t] &acks) noexcept nogil:
        cdef string frame
        cdef size_t n = 0
        self._list_start(frame, CMD_ACK)
        for kv in acks:
            if n == MAX_LIST_ENTRIES:
                self._list_send(frame, n)
                self._list_start(frame, CMD_ACK)
                n = 0
            self._entry(frame, kv.first, kv.second, True)
            n += 1
        self._list_send(frame, n)

    cdef void _list_start(self, string &frame, uint8_t cmd) noexcept nogil:
        """Start a BIND/UNBIND/ACK frame: the prefix and a count that _list_send fills."""
        cdef unsigned char head[6]
        put_prefix(head, cmd, 0)
        frame.assign(<const char *>head, 6)

    cdef void _entry(self, string &frame, const string &name, uint64_t seq, bint with_seq) noexcept nogil:
        cdef unsigned char b[8]
        b[0] = <unsigned char>name.size()
        frame.append(<const char *>b, 1)
        frame.append(name)
        if with_seq:
            eng_put64(b, seq)
            frame.append(<const char *>b, 8)

    cdef void _list_send(self, string &frame, size_t n, size_t at=PREFIX_SIZE) noexcept nogil:
        """Write the entry count ``n`` at offset ``at`` and send the frame."""
        eng_put16(<unsigned char *>frame.data() + at, <uint16_t>n)
        self._send2(frame.data(), frame.size(), NULL, 0, False)

    cdef void _hello(self, uint64_t now) noexcept nogil:
        """HELLO with every bound address and its cursor (BINDs for more than a list
        holds); what the router never confirmed goes again after its WELCOME."""
        cdef string frame
        cdef unsigned char head[8]
        cdef size_t n = 0, at = PREFIX_SIZE + 2 + self.name.size()
        put_prefix(head, CMD_HELLO, 0)
        head[4] = self.role
        head[5] = <unsigned char>self.name.size()
        frame.assign(<const char *>head, 6)
        frame.append(self.name)
        frame.append(b"\0\0", 2)
        for kv in self.cursors:
            if self.unbound.count(kv.first):
                continue
            if n == MAX_LIST_ENTRIES:
                self._list_send(frame, n, at)
                self._list_start(frame, CMD_BIND)
                n, at = 0, PREFIX_SIZE
            self._entry(frame, kv.first, kv.second, True)
            n += 1
        self._list_send(frame, n, at)
        self.welcome_seen = False
        self.hello_at = now
        self.hello_since_down = True
        self.resend_due = True
        self.n_hellos += 1

    cdef void _bind(self, const string &item) noexcept nogil:
        cdef const unsigned char *p = <const unsigned char *>item.data() + ITEM_HEAD
        cdef const unsigned char *end = <const unsigned char *>item.data() + item.size()
        cdef string frame, name
        cdef size_t n = 0
        cdef uint64_t seq
        self._list_start(frame, CMD_BIND)
        while p < end:
            name.assign(<const char *>p + 1, p[0])
            seq = eng_get64(p + 1 + p[0])
            p += 9 + p[0]
            if self.cursors.count(name) == 0:
                self.cursors[name] = seq
            self.unbound.erase(name)
            if n == MAX_LIST_ENTRIES:
                self._list_send(frame, n)
                self._list_start(frame, CMD_BIND)
                n = 0
            self._entry(frame, name, self.cursors[name], True)
            n += 1
        if n:
            self._list_send(frame, n)

    cdef void _unbind(self, const string &item) noexcept nogil:
        cdef const unsigned char *p = <const unsigned char *>item.data() + ITEM_HEAD
        cdef const unsigned char *end = <const unsigned char *>item.data() + item.size()
        cdef string frame, name
        cdef size_t n = 0
        self._list_start(frame, CMD_UNBIND)
        while p < end:
            name.assign(<const char *>p + 1, p[0])
            p += 1 + p[0]
            self.unbound.insert(name)   # the cursor stays: a later BIND resumes there
            if n == MAX_LIST_ENTRIES:
                self._list_send(frame, n)
                self._list_start(frame, CMD_UNBIND)
                n = 0
            self._entry(frame, name, 0, False)
            n += 1
        if n:
            self._list_send(frame, n)

    cdef void _send_bye(self) noexcept nogil:
        cdef unsigned char head[4]
        put_prefix(head, CMD_BYE, 0)
        self._send2(<const char *>head, 4, NULL, 0, False)

    # --- housekeeping

    cdef bint _hello_pending(self, uint64_t now) noexcept nogil:
        return (not self.welcome_seen and self.hello_since_down
                and now - self.hello_at < <uint64_t>self.heartbeat_ms * self.liveness)

    cdef void _housekeeping(self, uint64_t now) noexcept nogil:
        """A heartbeat when idle; a re-HELLO when the router stays silent past its
        liveness while the link is up (at most once per liveness period); resends of
        reliable messages unconfirmed for resend_after."""
        cdef unsigned char head[4]
        if not self.link:
            return
        if now - self.last_heard > <uint64_t>self.heartbeat_ms * (self.liveness + 1):
            self.last_heard = now
            if not self._hello_pending(now):
                self._hello(now)
            return
        if now - self.last_sent >= self.heartbeat_ms // 2:
            put_prefix(head, CMD_HEARTBEAT, 0)
            self._send2(<const char *>head, 4, NULL, 0, False)
            self.n_heartbeats += 1
        if (not self.resend_due and self.unconfirmed.size()
                and now - self.last_resend_scan >= self.resend_after_ms // 4 + 1):
            self.last_resend_scan = now
            self._resend(now, self.resend_after_ms)

    cdef void _resend(self, uint64_t now, uint64_t older_than) noexcept nogil:
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
                if self._send_item(pend.item):
                    if pend.sent_ms:
                        self.n_resent += 1
                    else:
                        self.n_sent += 1
                    pend.sent_ms = now
        self.send_order.swap(kept)

    cdef void _read_monitor(self) noexcept nogil:
        cdef zmq_msg_t m
        cdef uint16_t event
        cdef const unsigned char *p
        cdef uint64_t now
        while True:
            zmqapi.msg_init(&m)
            if zmqapi.msg_recv(&m, self.monitor, ZMQ_DONTWAIT) < 0:
                zmqapi.msg_close(&m)
                return
            event = 0
            if zmqapi.msg_size(&m) >= 2:
                p = <const unsigned char *>zmqapi.msg_data(&m)
                event = <uint16_t>(p[0] | p[1] << 8)     # little-endian, as libzmq writes it
            while zmqapi.msg_more(&m):
                zmqapi.msg_close(&m)
                zmqapi.msg_init(&m)
                if zmqapi.msg_recv(&m, self.monitor, ZMQ_DONTWAIT) < 0:
                    break
            zmqapi.msg_close(&m)
            now = eng_now_ms()
            if event == EVENT_DISCONNECTED and self.link:
                self.link = False
                self.hello_since_down = False
                self.n_disconnects += 1
                self._event_link(0)
            elif event == EVENT_HANDSHAKE_SUCCEEDED:
                self.link = True
                self.last_heard = now
                self.n_connects += 1
                # one HELLO per connection: unless one already went out since the drop
                # (libzmq carries it on this new connection)
                if not self.hello_since_down:
                    self._hello(now)
                self._event_link(2 if self.ever_connected else 1)
                self.ever_connected = True

    cdef void _event_link(self, uint8_t up) noexcept nogil:
        cdef string ev
        ev.push_back(b'L')
        ev.push_back(<char>up)
        self.ev_local.push_back(ev)

    # --- receiving

    cdef bint _read_socket(self) noexcept nogil:
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
                    self._skip_rest(&b)
                    two = False
                    self.n_malformed += 1
            self.last_heard = eng_now_ms()
            self._handle(<const unsigned char *>zmqapi.msg_data(&h), zmqapi.msg_size(&h),
                         <const unsigned char *>zmqapi.msg_data(&b) if two else NULL,
                         zmqapi.msg_size(&b) if two else 0, two)
            zmqapi.msg_close(&h)
            zmqapi.msg_close(&b)
        return True

    cdef void _skip_rest(self, zmq_msg_t *m) noexcept nogil:
        while zmqapi.msg_more(m):
            zmqapi.msg_close(m)
            zmqapi.msg_init(m)
            if zmqapi.msg_recv(m, self.sock, 0) < 0:
                return

    cdef void _handle(self, const unsigned char *h, size_t hn, const unsigned char *b,
                      size_t bn, bint two) noexcept nogil:
        if hn < PREFIX_SIZE or h[0] != SIGNATURE or h[1] != VERSION:
            self.n_malformed += 1
            return
        cdef uint8_t cmd = h[2]
        if cmd == CMD_DELIVER and two:
            self._on_deliver(h, hn, b, bn)
        elif cmd == CMD_RECEIPT:
            self._on_receipt(h, hn)
        elif cmd == CMD_HEARTBEAT:
            pass
        elif cmd == CMD_WELCOME:
            self._on_welcome(h, hn)
        elif cmd == CMD_ERROR:
            self._on_error(h, hn, b, bn)
        elif (cmd == CMD_REPLY or cmd == CMD_REQUEST) and two:
            self._event(b'R' if cmd == CMD_REPLY else b'Q', h, hn, b, bn)
        else:
            self.n_malformed += 1

    cdef void _event(self, char tag, const unsigned char *h, size_t hn,
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

    cdef void _on_deliver(self, const unsigned char *h, size_t hn,
                          const unsigned char *b, size_t bn) noexcept nogil:
        if hn < DELIVER_FIXED:
            self.n_malformed += 1
            return
        cdef size_t lk = h[DELIVER_KIND_LEN], lf = h[DELIVER_SENDER_LEN]
        cdef size_t lc = h[DELIVER_CHANNEL_LEN], la = h[DELIVER_ADDRESS_LEN]
        if DELIVER_FIXED + lk + lf + lc + la != hn or la == 0:
            self.n_malformed += 1
            return
        cdef uint64_t seq = eng_get64(h + DELIVER_SEQ)
        cdef string address
        cdef unordered_map[string, uint64_t].iterator it
        if seq:
            address.assign(<const char *>h + hn - la, la)
            it = self.cursors.find(address)
            if it != self.cursors.end() and seq <= deref(it).second:
                # a redelivery of what was already handed over: ack it again, drop it
                self.n_duplicates += 1
                self.reack[address] = deref(it).second
                return
            self.cursors[address] = seq
        self.n_delivered += 1
        self._event(b'D', h, hn, b, bn)

    cdef void _on_receipt(self, const unsigned char *h, size_t hn) noexcept nogil:
        if hn < RECEIPT_HEAD:
            self.n_malformed += 1
            return
        cdef size_t count = eng_get16(h + PREFIX_SIZE), i
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

    cdef void _on_welcome(self, const unsigned char *h, size_t hn) noexcept nogil:
        if hn < PREFIX_SIZE + 9:
            self.n_malformed += 1
            return
        self.heartbeat_ms = max(eng_get32(h + PREFIX_SIZE), 2)
        self.liveness = max(h[PREFIX_SIZE + 4], 1)
        self.welcome_seen = True
        if self.resend_due:
            # the WELCOME that answers a (re-)HELLO: everything unconfirmed goes again,
            # in send order, before anything new
            self.resend_due = False
            self._resend(eng_now_ms(), 0)
            self._take_items(self.scratch)   # then what waited in the backlog
            self.scratch.clear()
        cdef string extra
        pthread_mutex_lock(&self.mu)
        extra = self.welcome_frame
        self.welcomed_flag = True
        self.w_heartbeat_ms = self.heartbeat_ms
        self.w_liveness = self.liveness
        self.w_max_payload = eng_get32(h + PREFIX_SIZE + 5)
        pthread_mutex_unlock(&self.mu)
        if extra.size():
            self._send2(extra.data(), extra.size(), NULL, 0, False)
        self._event(b'W', h, hn, NULL, 0)

    cdef void _on_error(self, const unsigned char *h, size_t hn,
                        const unsigned char *b, size_t bn) noexcept nogil:
        if hn < ERROR_FIXED:
            self.n_malformed += 1
            return
        cdef uint16_t code = eng_get16(h + PREFIX_SIZE)
        if code == E_RATE_LIMITED and not self.welcome_seen:
            # the router's summary of the NOT_READYs below, before our HELLO landed
            self.n_quiet_errors += 1
            return
        if code == E_NOT_READY:
            # one HELLO answers a burst of NOT_READY (one per message in flight when the
            # connection changed): none while one is pending
            if not self._hello_pending(eng_now_ms()):
                self._hello(eng_now_ms())
            return
        self._event(b'E', h, hn, b, bn)

    cdef void _publish(self) noexcept nogil:
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

    # ---------------------------------------------------------------- application side

    cdef void _enqueue(self, string &item, bint reliable) noexcept nogil:
        cdef bint wake
        pthread_mutex_lock(&self.mu)
        self.out_q.push_back(string())
        self.out_q.back().swap(item)
        if reliable:
            self.pending += 1
        wake = self.io_sleeping
        self.io_sleeping = False
        pthread_mutex_unlock(&self.mu)
        if wake:
            eng_signal(self.wake_fd)

    cdef bint _room(self, uint64_t max_pending, double timeout) noexcept nogil:
        """Wait up to ``timeout`` s for fewer than ``max_pending`` pending messages."""
        cdef uint64_t deadline = eng_now_ms() + <uint64_t>(timeout * 1000)
        cdef uint64_t now
        cdef bint ok
        pthread_mutex_lock(&self.mu)
        while self.pending >= max_pending and not self.stopped:
            now = eng_now_ms()
            if now >= deadline:
                break
            self.app_waiting += 1
            eng_cond_wait_ms(&self.cv, &self.mu, <long>(deadline - now))
            self.app_waiting -= 1
        ok = self.pending < max_pending
        pthread_mutex_unlock(&self.mu)
        return ok

    def send(self, bytes target, bytes payload, uint64_t msg_id, int msg_class,
             bytes kind, bytes key, uint32_t ttl_ms, int flags, bint channel,
             uint64_t max_pending=0, double block=0.0) -> bool:
        """Queue a SEND; True once queued. None if ``target`` breaks the name rule (the
        caller raises, naming the rule); with ``max_pending``, a reliable send first
        waits up to ``block`` s for room and returns False if there is none."""
        cdef Py_ssize_t tn = PyBytes_GET_SIZE(target), kn = PyBytes_GET_SIZE(kind)
        cdef Py_ssize_t cn = PyBytes_GET_SIZE(key), pn = PyBytes_GET_SIZE(payload)
        cdef const unsigned char *t = <const unsigned char *>PyBytes_AS_STRING(target)
        if not name_ok(t, tn, not channel):
            return None
        if kn > MAX_NAME or cn > MAX_NAME:
            raise ValueError(f"kind and key must be at most {MAX_NAME} bytes "
                             f"(got {kn} and {cn})")
        if msg_class < 0 or msg_class > CLASS_LOCATION:
            raise ValueError(f"message class {msg_class} is not defined")
        cdef bint reliable = is_reliable(<uint8_t>msg_class)
        if reliable and max_pending:
            with nogil:
                ok = self._room(max_pending, block)
            if not ok:
                return False
        cdef size_t hn = SEND_FIXED + tn + kn + cn
        cdef string item
        item.resize(ITEM_HEAD + hn + pn)
        cdef unsigned char *p = <unsigned char *>item.data()
        p[0] = b'S' if reliable else b's'
        eng_put32(p + 1, <uint32_t>hn)
        p += ITEM_HEAD
        put_prefix(p, CMD_SEND, <uint8_t>(flags | (FLAG_CHANNEL if channel else 0)))
        eng_put64(p + SEND_ID, msg_id)
        eng_put32(p + SEND_TTL, ttl_ms)
        p[SEND_CLASS] = <uint8_t>msg_class
        p[SEND_TARGET_LEN] = <uint8_t>tn
        p[SEND_KIND_LEN] = <uint8_t>kn
        p[SEND_KEY_LEN] = <uint8_t>cn
        memcpy(p + SEND_FIXED, t, tn)
        memcpy(p + SEND_FIXED + tn, PyBytes_AS_STRING(kind), kn)
        memcpy(p + SEND_FIXED + tn + kn, PyBytes_AS_STRING(key), cn)
        memcpy(p + hn, PyBytes_AS_STRING(payload), pn)
        with nogil:
            self._enqueue(item, reliable)
        return True

    def send_frames(self, bytes header, payload=None) -> None:
        """Queue a control message (JOIN, LEAVE, READY, REQUEST, REPLY...): its header
        frame and, if given, one payload frame."""
        cdef string item
        cdef unsigned char head[5]
        head[0] = b'F' if payload is None else b'G'
        eng_put32(head + 1, <uint32_t>len(header))
        item.assign(<const char *>head, 5)
        item.append(<const char *>PyBytes_AS_STRING(header), PyBytes_GET_SIZE(header))
        if payload is not None:
            item.append(<const char *>PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload))
        with nogil:
            self._enqueue(item, False)

    def preset(self, list cursors) -> None:
        """Addresses for the first HELLO, ``[(address bytes, cursor)]``: call before
        the I/O thread starts."""
        for name, seq in cursors:
            self.cursors[<string>name] = <uint64_t>seq

    def after_welcome(self, bytes frame) -> None:
        """A one-frame message to send after every WELCOME (a worker's READY)."""
        cdef string f = frame
        with nogil:
            pthread_mutex_lock(&self.mu)
            self.welcome_frame.swap(f)
            pthread_mutex_unlock(&self.mu)

    def bind(self, list cursors) -> None:
        """Bind ``[(address bytes, cursor)]`` (checked by the caller)."""
        cdef string item
        cdef unsigned char b[8]
        item.assign(b"B\0\0\0\0", 5)
        for name, seq in cursors:
            b[0] = <unsigned char>len(name)
            item.append(<const char *>b, 1)
            item.append(<const char *>PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name))
            eng_put64(b, <uint64_t>seq)
            item.append(<const char *>b, 8)
        with nogil:
            self._enqueue(item, False)

    def unbind(self, list names) -> None:
        """Release ``[address bytes]``; their cursors are kept for a later bind."""
        cdef string item
        cdef unsigned char b[1]
        item.assign(b"U\0\0\0\0", 5)
        for name in names:
            b[0] = <unsigned char>len(name)
            item.append(<const char *>b, 1)
            item.append(<const char *>PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name))
        with nogil:
            self._enqueue(item, False)

    def ack(self, bytes address, uint64_t seq) -> None:
        """Ack everything up to ``seq`` on ``address`` (sent on the I/O thread's next
        pass, merged with other acks into one cumulative ACK)."""
        cdef string a = address
        cdef bint wake
        with nogil:
            pthread_mutex_lock(&self.mu)
            if self.ack_q.count(a) == 0 or self.ack_q[a] < seq:
                self.ack_q[a] = seq
            wake = self.io_sleeping
            self.io_sleeping = False
            pthread_mutex_unlock(&self.mu)
            if wake:
                eng_signal(self.wake_fd)

    def take(self, double timeout=0.0) -> list:
        """The events published since the last call, oldest first: a Delivery for each
        DELIVER (payload decompressed), else ``(tag, header, payload)`` with the tags
        of the module docstring. Waits up to ``timeout`` s for the first (negative:
        no limit)."""
        cdef vector[string] got
        cdef size_t i
        with nogil:
            self._wait_for(timeout, 0)
            pthread_mutex_lock(&self.mu)
            got.swap(self.in_q)
            pthread_mutex_unlock(&self.mu)
        out = []
        for i in range(got.size()):
            out.append(_decode_event(<const unsigned char *>got[i].data(), got[i].size()))
        return out

    cdef void _wait_for(self, double timeout, uint64_t mid) noexcept nogil:
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

    def wait_any(self, double timeout) -> None:
        """Wait up to ``timeout`` s until an event or a receipt is queued."""
        with nogil:
            self._wait_for(timeout, 1)

    def take_receipts(self) -> list:
        """Receipts queued since the last call: ``[(msg_id, status, code)]``."""
        cdef deque[Rcpt] got
        with nogil:
            pthread_mutex_lock(&self.mu)
            got.swap(self.rcpt_q)
            pthread_mutex_unlock(&self.mu)
        return [(r.mid, r.status, r.code) for r in got]

    def status_of(self, uint64_t msg_id):
        """``(status, code)`` of the latest receipt for ``msg_id``, or None."""
        cdef uint32_t st = 0
        cdef bint found
        with nogil:
            pthread_mutex_lock(&self.mu)
            found = self.status.count(msg_id) != 0
            if found:
                st = self.status[msg_id]
            pthread_mutex_unlock(&self.mu)
        return (st >> 16, st & 0xFFFF) if found else None

    def wait_status(self, uint64_t msg_id, int until, int first_final, double timeout):
        """Wait up to ``timeout`` s until ``msg_id``'s latest status is ``until`` or at
        least ``first_final``; return ``(status, code)`` or None."""
        cdef uint64_t deadline = eng_now_ms() + <uint64_t>(max(timeout, 0.0) * 1000)
        cdef uint64_t now
        cdef uint32_t st = 0
        cdef int s
        with nogil:
            pthread_mutex_lock(&self.mu)
            while True:
                if self.status.count(msg_id):
                    st = self.status[msg_id]
                    s = <int>(st >> 16)
                    if s == until or s >= first_final:
                        break
                st = 0
                now = eng_now_ms()
                if now >= deadline or self.stopped:
                    break
                self.app_waiting += 1
                eng_cond_wait_ms(&self.cv, &self.mu, <long>(deadline - now))
                self.app_waiting -= 1
            pthread_mutex_unlock(&self.mu)
        return (st >> 16, st & 0xFFFF) if st else None

    def flush(self, double timeout) -> bool:
        """Wait up to ``timeout`` s until no reliable message is pending; True if none is."""
        cdef uint64_t deadline = eng_now_ms() + <uint64_t>(max(timeout, 0.0) * 1000)
        cdef uint64_t now
        cdef bint done
        with nogil:
            pthread_mutex_lock(&self.mu)
            while self.pending and not self.stopped:
                now = eng_now_ms()
                if now >= deadline:
                    break
                self.app_waiting += 1
                eng_cond_wait_ms(&self.cv, &self.mu, <long>(deadline - now))
                self.app_waiting -= 1
            done = self.pending == 0
            pthread_mutex_unlock(&self.mu)
        return done

    @property
    def pending(self) -> int:
        """Reliable messages sent and not yet accepted (or refused) by the router."""
        with nogil:
            pthread_mutex_lock(&self.mu)
            n = self.pending
            pthread_mutex_unlock(&self.mu)
        return n

    @property
    def welcome(self):
        """``(heartbeat_ms, liveness, max_payload)`` of the latest WELCOME, or None."""
        if not self.welcomed_flag:
            return None
        return (self.w_heartbeat_ms, self.w_liveness, self.w_max_payload)

    def fileno(self) -> int:
        """An eventfd the I/O thread signals after publishing (asyncio: add_reader)."""
        return self.app_fd

    def clear_signal(self) -> None:
        """Reset the eventfd after a wake-up."""
        eng_drain(self.app_fd)

    def stop(self, bint bye=True) -> None:
        """Ask the I/O thread to send what is queued (then BYE) and return from run()."""
        with nogil:
            pthread_mutex_lock(&self.mu)
            self.stopping = True
            self.say_bye = bye
            pthread_mutex_unlock(&self.mu)
            eng_signal(self.wake_fd)

    def stats(self) -> dict:
        """Counters of this connection."""
        with nogil:
            pthread_mutex_lock(&self.mu)
        out = dict(sent=self.n_sent, delivered=self.n_delivered,
                   duplicates=self.n_duplicates, receipts=self.n_receipts,
                   resent=self.n_resent, hellos=self.n_hellos, heartbeats=self.n_heartbeats,
                   connects=self.n_connects, disconnects=self.n_disconnects,
                   dropped_receipts=self.n_dropped_receipts, malformed=self.n_malformed,
                   send_errors=self.n_send_errors, pending=self.pending,
                   dropped_held=self.n_dropped_held, quiet_errors=self.n_quiet_errors,
                   queued_events=self.in_q.size())
        pthread_mutex_unlock(&self.mu)
        return out


from router.protocol import Delivery, Flag, MsgClass
import lz4.frame

_CLASSES = tuple(MsgClass)
_FLAGS = tuple(Flag(i) for i in range(4))
_decompress = lz4.frame.decompress


cdef inline str _text(const unsigned char *p, size_t n):
    return p[:n].decode("utf-8", "replace")


cdef object _decode_event(const unsigned char *p, size_t n):
    """One in-event as the application sees it (see Engine.take)."""
    cdef char tag = p[0]
    if tag == b'L':
        return ("L", p[1], b"")
    cdef size_t hn = eng_get32(p + 1)
    cdef const unsigned char *h = p + 5
    cdef bytes payload = PyBytes_FromStringAndSize(<const char *>h + hn, n - 5 - hn)
    if tag != b'D':
        return (chr(tag), PyBytes_FromStringAndSize(<const char *>h, hn), payload)
    cdef size_t lk = h[DELIVER_KIND_LEN], lf = h[DELIVER_SENDER_LEN]
    cdef size_t lc = h[DELIVER_CHANNEL_LEN], la = h[DELIVER_ADDRESS_LEN]
    cdef const unsigned char *v = h + DELIVER_FIXED
    cdef uint8_t flags = h[3], cls = h[DELIVER_CLASS]
    if flags & FLAG_LZ4:
        payload = _decompress(payload)
    return Delivery(_text(v + lk + lf + lc, la), eng_get64(h + DELIVER_SEQ),
                    eng_get64(h + DELIVER_ID), eng_get64(h + DELIVER_ACCEPTED),
                    _CLASSES[cls] if cls < len(_CLASSES) else cls,
                    _text(v, lk), _text(v + lk, lf), _text(v + lk + lf, lc),
                    _FLAGS[flags] if flags < 4 else flags, payload)
