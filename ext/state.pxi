# Routing state, included by core.pyx.
#
# Routing state the hot loop works on: messages, per-address queues, peers, counters.
#
# Plain C++ objects with no Python references, so the loop in core.pyx runs without the
# GIL. Ownership: a Msg is owned by the queue entries that point to it (``refs``); it is
# freed when the last entry goes. Peers and addresses live in slot vectors and are named
# by index; a peer slot is reused, so references to a peer carry its ``gen``.

cdef extern from "fifo.h" nogil:
    cdef cppclass Fifo[T]:
        size_t size()
        bint empty()
        T &front()
        T &back()
        T &operator[](size_t)
        void push_back(const T &)
        void pop_back()
        void pop_front()
        void erase_at(size_t)
        void clear()

cdef extern from "timers.h" nogil:
    cdef struct Timer:
        uint64_t due_ms
        uint64_t seq
        int addr
    cdef cppclass TimerHeap:
        bint empty()
        size_t size()
        const Timer &top()
        void push(uint64_t, int, uint64_t)
        void pop()
        Timer *slots()
        void keep_first(size_t)

cdef extern from "names.h" nogil:
    cdef cppclass NameIndex:
        size_t size()
        void set_seed(uint64_t)
        int find(const char *, size_t)
        int find(const string &)
        void insert(const string *)
        void insert_at(const string *, size_t)
        void erase(size_t)
        uint64_t hash(const char *, size_t)
        void prefetch(uint64_t)
        int peek(uint64_t)

cdef enum:
    TMPL_INLINE = 96        # most templates (33 bytes + kind + sender + channel) fit here
    N_BOUNDS = 62           # latency histogram bounds (core.pyx BOUNDS); +1 bucket: +Inf
    N_BUCKETS = 63

cdef cppclass Msg:
    zmq_msg_t payload       # the payload frame as received, shared by zmq_msg_copy
    char tmpl_short[TMPL_INLINE]  # DELIVER header without seq and address (build_template),
    string tmpl_long        # ... here instead when longer than TMPL_INLINE
    uint16_t tmpl_len
    uint64_t msg_id
    uint64_t accepted_us    # wall clock, microseconds, when the router took it
    uint64_t expire_us      # monotonic deadline, 0 = no TTL
    uint64_t recv_us        # monotonic microseconds when the router read it (hop latency)
    int sender              # peer slot of the sender
    uint32_t sender_gen     # that slot's generation when the message arrived
    string sender_name      # receipts follow the sender's name across reconnects
    uint32_t sender_id      # the name interned (Core._intern): dedup keys stay 12 bytes
    uint32_t quota_sid      # whose quota it counts against: sender_id, or its principal's
    string order            # order:<id> this message belongs to ("" = none): history
    uint32_t segment        # journal segment holding it (reliable classes)
    int refs                # queue entries that point here
    int pending             # reliable deliveries not yet acked
    uint8_t cls
    bool finished           # a final receipt (DELIVERED/EXPIRED/FAILED) went out

cdef struct Entry:
    uint64_t seq
    Msg *msg

cdef extern from "dedup.h" nogil:
    cdef struct DedupEntry:
        uint64_t msg_id
        uint32_t sender
        uint16_t stamp      # window end, seconds mod 2**16 (stamp_of)
        uint8_t status      # latest receipt status given for the id
        uint8_t code
    cdef cppclass DedupTable:
        size_t size()
        void set_seed(uint64_t)
        void reserve(size_t)
        DedupEntry *find(uint32_t, uint64_t)
        DedupEntry *upsert(uint32_t, uint64_t)
        void erase(DedupEntry *)
        size_t capacity()
        bint growing()

cdef struct DedupExp:
    uint64_t expires_ms     # monotonic end of the dedup window
    uint64_t msg_id
    uint32_t sender

cdef struct Grant:
    uint64_t key            # (auth epoch << 32) | (principal + 1) it was computed for
    uint32_t mask           # the rights (router/auth/grants.py Action bits)

cdef cppclass Rule:
    uint32_t mask           # rights given to names that match
    string pattern          # exact name, or a prefix when `prefix`
    bool prefix

cdef cppclass Principal:
    string name
    uint32_t roles          # 1 << role for each HELLO role it may declare
    vector[Rule] names      # HELLO names it may use (mask unused)
    vector[Rule] rules      # rights by name pattern, OR-ed over every match
    double msg_rate         # SEND budget per second (0: unlimited) ...
    double byte_rate        # ... payload bytes per second (0: unlimited)
    double msg_burst        # bucket sizes: rate x burst seconds
    double byte_burst
    double msg_tokens
    double byte_tokens
    uint64_t refill_us      # monotonic time the buckets were last topped up
    uint64_t quota          # deliveries it may have waiting (0: max_queued_per_sender)
    uint32_t quota_sid      # its name interned: the quota's counter (Core.sender_queued)

cdef cppclass Address:
    string name
    int peer                # bound peer slot, -1 = offline
    uint64_t online_since_us  # wall clock of the current binding (presence; latency split)
    uint64_t inflight_ms    # when the in-flight head was (re)sent; 0 = nothing in flight
    uint32_t attempts       # redeliveries of the in-flight head without ack progress
    bool tracked            # listed in Core.inflight (redelivery timer)
    uint64_t next_seq       # last sequence assigned
    uint64_t acked          # cumulative ack from the endpoint
    size_t sent             # entries at the front of `rel` already sent, unacked
    Fifo[Entry] rel         # reliable entries, in seq order, not yet acked
    Fifo[Msg*] notices      # best-effort entries
    unordered_map[string, Msg*] latest   # conflated location per key
    Fifo[string] latest_order            # keys in arrival order
    bool dirty              # listed in Core.dirty
    uint64_t last_used_ms   # last bind, unbind, enqueue or ack (idle reclaim)
    uint32_t nchannels      # channels it is a member of (a member is never reclaimed)
    bool free               # reclaimed: the slot waits in Core.free_addrs for a new name
    Grant grant             # the last principal's rights on this name (auth.pxi)

cdef cppclass Channel:
    vector[int] members     # member address slots
    Grant grant             # the last principal's rights on this channel (auth.pxi)
    uint64_t last_used_ms   # last JOIN, LEAVE or SEND (idle close)
    bool checked            # has an entry in Core.channel_checks

cdef struct OutboxAge:
    uint64_t since_ms       # first receipt held for the name
    string name

cdef struct Closing:
    int fd                  # a revoked connection's socket (auth.pxi _revoke) ...
    uint64_t inode          # ... which socket it was (auth.h socket_inode)
    uint64_t due_ms         # shut down then: its ERROR REVOKED has been written

cdef struct ChannelCheck:
    uint64_t due_ms         # look at the channel again then
    string name

cdef cppclass Peer:
    string identity         # ROUTER routing id
    const void *conn        # the connection it came on (zmqapi_msg_conn); see _same_conn
    bool has_conn           # conn is set (the slot has seen a message)
    string name             # from HELLO; senders' dedup scope
    uint32_t sender_id      # the name interned at its first SEND (0 until then)
    uint8_t role            # 0 until HELLO
    uint32_t gen
    bool live
    uint64_t last_seen_ms
    vector[int] addrs       # bound address slots
    vector[int] flushq      # this pass's dirty addresses of this peer (_group_by_peer)
    string receipts         # pending RECEIPT entries, flushed per loop pass
    uint32_t nreceipts
    uint64_t err_window_ms  # error rate limit window start
    uint32_t errs           # errors sent in the window
    uint32_t bad            # ... of them the peer's own fault (is_peer_fault)
    uint32_t hellos         # HELLOs in hello_window_ms's second
    uint64_t hello_window_ms
    bool blocked            # last send hit the HWM: retry on the next pass
    bool gone               # unreachable: nothing more is sent to it, what it sent is read
    bool packs              # its HELLO asked for packed DELIVERs (Flag.PACK)
    uint64_t packs_sent     # PACK frames sent on this connection
    uint64_t packs_read     # ... of which its HEARTBEATs say it has read
    int principal           # index in Core.principals from its HELLO; -1: none (open)
    string key              # the ZAP User-Id it authenticated with (its public key)
    int fd                  # its connection's socket (ZMQ_SRCFD at HELLO): revocation
    uint64_t fd_inode       # ... and which socket that was (auth.h socket_inode)

cdef struct Counters:
    uint64_t msgs_in[5]         # SEND accepted, by class
    uint64_t msgs_out[5]        # DELIVER sent, by class
    uint64_t bytes_in
    uint64_t bytes_out
    uint64_t fanout             # extra deliveries made by channel fan-out
    uint64_t receipts[6]        # by status
    uint64_t receipts_dropped   # sender gone before its receipt
    uint64_t acks_in
    uint64_t errors[32]         # ERRORs decided, by code (before the rate limit)
    uint64_t errors_suppressed  # ... of which not sent: over the peer's rate limit
    uint64_t refused[32]        # REFUSED receipts, by code
    uint64_t takeovers          # addresses moved to another connection while bound
    uint64_t rate_exceeded      # SENDs refused: their principal's rate budget was spent
    uint64_t revoked            # peers dropped: their key was revoked by a reload
    uint64_t quarantined        # messages ignored: their peer was far over its error budget
    uint64_t replaced           # peers dropped: a new connection came under their routing id
    uint64_t shed               # best-effort dropped for space
    uint64_t conflated          # location replaced by a newer one
    uint64_t expired
    uint64_t blocked_sends      # sends that hit a peer's HWM
    uint64_t packs_in           # PACK frames read
    uint64_t packed_in          # ... and the commands they carried
    uint64_t packs_out          # PACK frames of DELIVERs sent
    uint64_t packed_out         # ... and the DELIVERs they carried
    uint64_t pack_window_full   # DELIVERs sent alone: their peer had PACK_WINDOW packs unread
    uint64_t peers_connected
    uint64_t peers_lost
    uint64_t queued             # messages held (all queues)
    uint64_t loops
    uint64_t dedup_hits
    uint64_t redeliveries       # in-flight messages sent again after no ack
    uint64_t failed             # given up after max attempts
    uint64_t commits            # journal group commits
    uint64_t commit_failures
    uint64_t journal_bytes      # bytes handed to the store
    uint64_t replayed           # messages restored from the journal at start
    uint64_t addresses_created
    uint64_t addresses_reclaimed  # idle addresses whose slot was freed
    uint64_t channels_closed_idle # channels closed for lack of use
    uint64_t senders_reclaimed    # sender names forgotten (their numbers reused)
    uint64_t reclaim_max_us       # longest reclaim step of a tick (reset by metrics())
    # histogram buckets over BOUNDS (core.pyx), per class
    uint64_t hop[5][N_BUCKETS]  # read -> DELIVER sent, recipient online, first send
    uint64_t hop_sum_us[5]
    uint64_t delivery[5][N_BUCKETS]  # accepted -> ack, recipient bound throughout
    uint64_t delivery_sum_us[5]
    uint64_t delivery_offline[5][N_BUCKETS]  # accepted -> ack, recipient was away
    uint64_t delivery_offline_sum_us[5]
    uint64_t commit[N_BUCKETS]  # journal commit time
    uint64_t commit_sum_us

cdef struct Event:
    int kind                    # EV_CONNECT / EV_DISCONNECT / EV_ERROR / EV_TAKEOVER
    int code                    # error code, or disconnect reason
    uint8_t role
    uint32_t naddrs
    string name
    string identity
    string detail               # EV_TAKEOVER: "<address> by <new holder's name>"

cdef struct BrokerMsg:
    string identity             # routing id of the peer
    int principal               # its principal (Core.principals), -1: none
    string header
    string payload
