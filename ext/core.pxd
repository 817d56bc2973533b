# The routing core's state: what one Core holds, grouped by concern.
#
# ext/core.pyx defines the class's Python API (construction, run, snapshots, replay);
# the hot path is module-level functions over a typed Core, one file per concern
# (core.pyx lists them). Everything here is plain C/C++ except the three Python
# references at the end, so the loop runs without the GIL.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libcpp cimport bool
from libcpp.string cimport string
from libcpp.vector cimport vector
from libcpp.deque cimport deque
from libcpp.unordered_map cimport unordered_map

from zmqapi cimport *

include "state.pxi"

# Tuning of the loop and bounds on what the router holds. Wire layouts and numbering
# are not here: they come from router/protocol.py through protocol.pxi.
cdef enum:
    OUTBOX_MAX = 100000       # receipts kept per disconnected sender name
    OUTBOX_NAMES = 10000      # disconnected sender names with kept receipts
    OUTBOX_KEEP_MS = 3600000  # ... for at most an hour after the first one
    DEDUP_EXPIRE_PER_TICK = 20000  # dedup entries ended per tick at most (~7 ms)
    EXPIRE_PER_TICK = 20000        # TTL expiries per tick at most (the rest: next tick)
    WALK_PER_SNAPSHOT = 100000     # addresses summed per metrics snapshot (~1-2 ms)
    RECEIPT_FLUSH = 4096      # entries per RECEIPT frame at most
    TICK_MS = 50              # housekeeping period: liveness, heartbeats
    N_CLASSES = 5
    LOOKAHEAD = 4             # messages received ahead of the one handled (prefetching)
    PREFETCH_GAP = 2          # ... of which the newest have only their slot prefetched
    RING = 8                  # > LOOKAHEAD: frames of received, unhandled messages
    MSG_POOL = 4096           # released Msgs kept for reuse (~1.3 MB)
    HELLOS_PER_SECOND = 4     # per connection: a correct peer sends one per connection
    BROKER_BATCH = 256        # service commands handed to the broker at most per return
    BROKER_WAIT_MS = 5        # ... and the longest one waits for it while input flows
    ADDRESS_LINES = 5         # cache lines of an Address (sizeof ~ 300 bytes)
    EVENTS_MAX = 10000        # events kept for Python at most (it drains them each slice)
    LIFECYCLE_EVENTS_MAX = 1000000  # ... connects and disconnects kept at most
    RECLAIM_WALK_PER_TICK = 4096   # addresses looked at per tick for idle reclaim (~50 us)
    RECLAIM_BUDGET_US = 1500       # ... and freed until this much time went (~2-4 us each)
    REVOKE_CLOSE_MS = 200          # a revoked connection is closed after its ERROR went
    CHANNEL_CHECKS_PER_TICK = 1024 # channels looked at per tick for idle close
    CHANNEL_RECHECK_MS = 60000     # ... each checked again this often while open

# What Core.drain_events reports, and why a peer went away.
cdef enum:
    EV_CONNECT = 1
    EV_DISCONNECT = 2
    EV_ERROR = 3
    EV_STORAGE = 4
    EV_TAKEOVER = 5
    REASON_BYE = 1
    REASON_TIMEOUT = 2
    REASON_UNREACHABLE = 3
    REASON_REPLACED = 4
    REASON_REVOKED = 5


cdef class Core:
    # ---- the socket ------------------------------------------------------------------
    cdef void *sock                # libzmq handle of the ROUTER socket
    cdef object _socket            # ... and the pyzmq Socket that owns it

    # ---- peers (peers.pxi): connections, by slot; a slot is reused with a new gen ------
    cdef vector[Peer*] peers
    cdef unordered_map[string, int] peer_by_id    # routing id -> slot
    cdef unordered_map[string, int] peer_by_name  # HELLO name -> slot (receipts follow it)
    cdef vector[int] free_peers
    cdef int last_pi               # the peer of the previous message (see _peer_slot)
    cdef vector[Event] events      # for Python's logs and the broker (drain_events)

    # ---- addresses and channels (addresses.pxi) --------------------------------------
    cdef vector[Address*] addrs
    cdef NameIndex addr_by_name    # address name -> slot in addrs (ext/names.h)
    cdef unordered_map[string, Channel] channels  # channel name -> members, last use
    cdef deque[ChannelCheck] channel_checks  # idle-close checks, in due order
    cdef vector[int] free_addrs    # reclaimed slots, reused for new names
    cdef uint64_t seq_floor        # new addresses number above it (see _reclaim_idle)
    cdef size_t reclaim_pos        # where the idle-address walk goes on next tick

    # ---- queues and sending (queues.pxi, delivery.pxi) ------------------------------
    cdef vector[int] dirty         # addresses with something to send this pass
    cdef vector[int] flush_peers   # _group_by_peer: peers with dirty addresses this pass
    cdef vector[int] blocked_peers # peers whose pipe was full: retried next pass
    cdef vector[Msg*] msg_pool     # released Msgs kept for reuse (_new_msg)
    cdef Peer *pack_to             # the peer of the PACK being filled (NULL: none open);
    cdef string pack_buf           # ... its routing frame is sent, this frame follows
    cdef uint32_t pack_entries     # ... with this many DELIVERs (delivery.pxi)
    cdef unordered_map[string, uint32_t] sender_ids  # interned sender names (dedup keys)
    # by sender number (0: no sender): queue entries held, name, last use, live peers
    # sending as it; numbers of forgotten names wait in free_sids (peers.pxi)
    cdef vector[uint64_t] sender_queued
    cdef vector[string] sender_names
    cdef vector[uint64_t] sender_last_ms
    cdef vector[uint32_t] sender_refs
    cdef vector[uint32_t] free_sids
    cdef size_t sender_pos

    # ---- acks, redelivery and expiry (acks.pxi) --------------------------------------
    cdef vector[int] inflight      # addresses with a redelivery timer running
    cdef TimerHeap timers          # TTL deadlines of queued reliable entries (timers.h)

    # ---- receipts (receipts.pxi) -----------------------------------------------------
    cdef vector[int] receipt_peers # peers with a RECEIPT batch to flush this pass
    cdef unordered_map[string, string] outbox  # receipts for senders not connected now
    cdef unordered_map[string, uint64_t] outbox_since  # ... since when (its first)
    cdef deque[OutboxAge] outbox_ages  # boxes in the order they were opened

    # ---- dedup (dedup.pxi) -----------------------------------------------------------
    cdef DedupTable dedup          # (sender, msg id) -> latest receipt (ext/dedup.h)
    cdef deque[DedupExp] dedup_exp # windows in the order they end

    # ---- durability (durable.pxi): this pass's records, committed before any send ----
    cdef object store              # has .commit(records: bytes, sync: bool); or None
    cdef object _store_error       # the last exception the store raised
    cdef string jbuf               # records of this pass
    cdef bint jsync                # ... of which some need fsync (MSG records)
    cdef vector[Msg*] uncommitted  # messages of this pass, accepted once committed
    cdef vector[int] uncommitted_addrs
    cdef uint32_t segment          # journal segment records belong to (set_segment)
    cdef vector[int64_t] seg_live  # messages still held, per segment
    cdef bint replaying
    cdef uint32_t replay_sid       # sender and id of replay_msg: the next records of
    cdef uint64_t replay_id        # the same channel send share its Msg
    cdef Msg *replay_msg

    # ---- order history (history.pxi) -------------------------------------------------
    cdef string history            # encoded events, drained by Python (drain_history)

    # ---- service commands for the Python broker (commands.pxi) ----------------------
    cdef vector[BrokerMsg] broker_inbox
    cdef uint64_t broker_since_ms  # when the oldest command in broker_inbox arrived

    # ---- trust (auth.pxi): principals from the credentials file, rights per name -----
    cdef bint auth                 # credentials loaded: every peer must have a principal
    cdef vector[Principal] principals
    cdef unordered_map[string, int] principal_by_key  # ZAP User-Id -> principal
    cdef uint32_t auth_epoch       # bumped by every reload: cached grants go stale
    cdef uint32_t right_bind       # Action bits (router/auth/grants.py), from set_auth
    cdef uint32_t right_join
    cdef uint32_t right_send[5]    # SEND to an address, by class
    cdef uint32_t right_channel[5] # SEND to a channel, by class
    cdef vector[uint64_t] sender_limit  # by sender number: its quota (0: the default)
    cdef deque[Closing] closing    # revoked connections to shut down, in due order

    # ---- clocks and timers (loop.pxi) ------------------------------------------------
    cdef uint64_t now_us           # monotonic clock, read once per pass (not per message)
    cdef uint64_t send_us          # monotonic clock when the current address flush began
    cdef uint64_t wall_now_us      # wall clock, read with now_us
    cdef uint64_t next_tick_ms
    cdef uint64_t lease_until_ms   # 0, or serve (deliver, receipt) only before this instant
    cdef uint64_t next_hb_ms

    # ---- counters and gauges (observe.pxi) -------------------------------------------
    cdef Counters c
    # gauges from the address table: reliable, notice, location, offline backlog, bound
    # addresses, offline addresses holding reliable entries; and the oldest accepted_us
    # of any queued message (0: none). walk* accumulate the walk in progress.
    cdef uint64_t gauges[6]
    cdef uint64_t walk[6]
    cdef uint64_t oldest_us
    cdef uint64_t walk_oldest_us
    cdef size_t walk_pos

    # ---- settings (router.config.Settings) -------------------------------------------
    cdef uint32_t max_payload
    cdef uint32_t window
    cdef uint32_t max_queue
    cdef uint32_t max_addresses
    cdef uint32_t max_peers
    cdef uint32_t hb_ms
    cdef uint32_t liveness
    cdef uint32_t errors_per_second
    cdef uint64_t max_queued
    cdef uint64_t max_queued_per_sender
    cdef uint64_t dedup_ms
    cdef int batch                 # messages drained per pass (= at most per group commit)
    cdef uint32_t retry_ms
    cdef uint32_t retry_max_ms
    cdef uint32_t max_attempts
    cdef uint64_t address_idle_ms  # unused this long, an empty unbound address is reclaimed
    cdef uint64_t channel_idle_ms  # unused this long (no JOIN, LEAVE, SEND), a channel closes
