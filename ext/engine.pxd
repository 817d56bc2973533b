# cython: language_level=3
"""The client engine's state (ext/engine.pyx): what the application thread and the
I/O thread share under ``mu``, and what only the I/O thread touches."""

cimport cython
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libcpp.deque cimport deque
from libcpp.string cimport string
from libcpp.unordered_map cimport unordered_map
from libcpp.unordered_set cimport unordered_set
from libcpp.utility cimport pair
from libcpp.vector cimport vector

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


cdef struct Rcpt:
    uint64_t mid
    uint8_t status
    uint16_t code


@cython.final
cdef class Engine:

    # set at construction, read by both threads
    cdef void *sock
    cdef void *monitor
    cdef uint8_t role
    cdef string name
    cdef uint64_t resend_after_ms
    cdef size_t keep_receipts
    cdef size_t keep_unbound  # released addresses whose cursors are kept
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
    cdef uint64_t n_malformed, n_send_errors, n_dropped_held, n_quiet_errors, n_failovers
    cdef uint64_t n_forgotten    # released addresses whose cursors were dropped
    cdef uint64_t n_cursors      # addresses with a cursor, bound or kept after release
    cdef uint64_t n_packs_out, n_packed_out, n_packs_in  # PACK frames sent / read
    cdef bint welcomed_flag
    cdef uint32_t w_heartbeat_ms, w_liveness, w_max_payload

    # owned by the I/O thread
    cdef unordered_map[uint64_t, Pending] unconfirmed
    cdef deque[uint64_t] send_order
    cdef unordered_map[string, uint64_t] cursors
    cdef unordered_map[string, uint64_t] unbound  # released address -> its release's serial
    # releases, oldest first, to forget the cursors of the oldest past keep_unbound; an
    # entry whose serial is not the address's in ``unbound`` is stale (bound again since)
    cdef deque[pair[uint64_t, string]] unbound_order
    cdef uint64_t unbind_serial
    cdef unordered_map[string, uint64_t] reack
    cdef unordered_map[string, uint64_t] app_acked  # what the application acked, by address
    cdef vector[string] ev_local
    cdef vector[Rcpt] rc_local
    cdef vector[string] backlog
    cdef vector[string] scratch
    cdef uint64_t confirmed_local
    cdef bint link, welcome_seen, hello_since_down, resend_due, ever_connected
    cdef uint64_t hello_at, last_heard, last_sent, last_resend_scan
    cdef uint32_t heartbeat_ms, liveness
    cdef vector[string] endpoints  # routers to try in turn (an active one and standbys)
    cdef size_t current_ep         # the one connected now
    cdef uint64_t failover_ms, down_since
    cdef bint router_packs         # the last WELCOME said the router reads PACK
    cdef string pack               # SENDs packed, not yet written to libzmq
    cdef uint32_t pack_n           # ... how many
    cdef uint64_t packs_conn       # PACKs read on this connection (HEARTBEAT reports it)
    cdef uint64_t packs_reported   # ... as of the last report
