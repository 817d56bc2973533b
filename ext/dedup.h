/* The dedup table: (sender, message id) -> the latest receipt given for it.
 *
 * Every reliable message is looked up when it arrives, remembered, updated when it is
 * final and forgotten when its window ends: four operations per message. As a
 * std::unordered_map<string, ...> sized for two million ids this was 18% of the router's
 * time on the reliable path (perf): a bucket array of 16 MB and a heap node per id, a
 * cache miss or two per operation. Here an entry is 16 bytes stored in the table itself,
 * open addressing with linear probing, and deletion shifts the following entries back
 * (no tombstones, so probe runs stay short however many ids come and go).
 *
 * Sender ids start at 1 (Core._intern): sender 0 marks an empty slot. The hash is
 * seeded per process, since message ids are chosen by senders. The table is sized up
 * front (Settings.dedup_capacity) and grows by itself with the observed load: at 3/4
 * full a table twice the size takes over, and the entries of the old one move over a
 * few slots per insert (MIGRATE_PER_OP), so growing never stops the loop for a rehash.
 * While both exist, lookups try the new table, then the part of the old one not yet
 * moved; an entry erased from the old table becomes a tombstone (sender TOMBSTONE)
 * there, so the old table's probe runs stay intact until it is released. */
#ifndef ROUTER_DEDUP_H
#define ROUTER_DEDUP_H

#include <sys/mman.h>

#include <cstdint>
#include <cstddef>
#include <cstdlib>
#include <new>

struct DedupEntry {
    uint64_t msg_id;
    uint32_t sender;     /* 0 = empty slot */
    uint16_t stamp;      /* window end, seconds mod 2^16: tells a FIFO record if it is this one's */
    uint8_t status;      /* latest receipt status given for the id */
    uint8_t code;        /* and its code (error codes fit 8 bits) */
};

struct DedupTable {
    static const uint32_t TOMBSTONE = 0xFFFFFFFFu;
    static const size_t MIGRATE_PER_OP = 64;

    DedupEntry *slots = nullptr;
    size_t mask = 0;
    size_t used = 0;
    DedupEntry *old = nullptr;  /* the table being moved out of, while growing */
    size_t old_mask = 0;
    size_t old_pos = 0;         /* old slots below this have been moved */
    size_t old_used = 0;        /* live entries left in the old table */
    uint64_t seed = 0x2545f4914f6cdd1dULL;

    DedupTable() = default;
    DedupTable(const DedupTable &) = delete;
    DedupTable &operator=(const DedupTable &) = delete;
    ~DedupTable() {
        release(slots, mask + 1);
        release(old, old_mask + 1);
    }

    size_t size() const { return used + old_used; }
    size_t capacity() const { return mask + 1; }
    bool growing() const { return old != nullptr; }

    void set_seed(uint64_t s) { seed = s; }

    /* Room for ``n`` ids before the first growth (at start-up: a full rebuild). */
    void reserve(size_t n) {
        size_t cap = 1024;
        while (cap * 3 / 4 < n) cap <<= 1;
        if (cap > mask + 1 || slots == nullptr) {
            finish_growth();
            rebuild(cap);
        }
    }

    DedupEntry *find(uint32_t sender, uint64_t msg_id) {
        if (slots == nullptr) return nullptr;
        DedupEntry *e = find_in(slots, mask, sender, msg_id);
        if (e == nullptr && old != nullptr) e = find_old(sender, msg_id);
        return e;
    }

    /* The entry of the id, added (status 0) if it was not there. Moves a few entries of
     * an old table first, when growing. */
    DedupEntry *upsert(uint32_t sender, uint64_t msg_id) {
        if (old != nullptr) migrate(MIGRATE_PER_OP);
        else if ((used + 1) * 4 > (mask + 1) * 3) start_growth();
        DedupEntry *e = find(sender, msg_id);
        if (e != nullptr) return e;
        e = place(sender, msg_id);
        e->stamp = 0;
        e->status = 0;
        e->code = 0;
        return e;
    }

    /* Remove an entry returned by find/upsert. In the current table later entries of its
     * probe run move back into the gap, so lookups never need to skip deleted slots; in
     * an old table being moved out of, it becomes a tombstone. */
    void erase(DedupEntry *e) {
        if (old != nullptr && e >= old && e <= old + old_mask) {
            e->sender = TOMBSTONE;
            --old_used;
            return;
        }
        size_t i = static_cast<size_t>(e - slots);
        size_t j = i;
        for (;;) {
            j = (j + 1) & mask;
            if (slots[j].sender == 0) break;
            size_t k = home(slots[j].sender, slots[j].msg_id);
            /* slots[j] may fill the gap at i unless its home lies cyclically in (i, j] */
            bool stays = (i <= j) ? (i < k && k <= j) : (i < k || k <= j);
            if (!stays) {
                slots[i] = slots[j];
                i = j;
            }
        }
        slots[i].sender = 0;
        --used;
    }

    /* Move every remaining entry of an old table now (before a full rebuild). */
    void finish_growth() {
        while (old != nullptr) migrate(SIZE_MAX);
    }

  private:
    size_t home(uint32_t sender, uint64_t msg_id, size_t m) const {
        uint64_t h = (msg_id ^ seed) * 0x9fb21c651e98df25ULL;
        h ^= (h >> 32) ^ (static_cast<uint64_t>(sender) * 0xc4ceb9fe1a85ec53ULL);
        h *= 0xff51afd7ed558ccdULL;
        h ^= h >> 29;
        return static_cast<size_t>(h) & m;
    }

    size_t home(uint32_t sender, uint64_t msg_id) const { return home(sender, msg_id, mask); }

    DedupEntry *find_in(DedupEntry *t, size_t m, uint32_t sender, uint64_t msg_id) const {
        for (size_t i = home(sender, msg_id, m);; i = (i + 1) & m) {
            DedupEntry &e = t[i];
            if (e.sender == 0) return nullptr;
            if (e.sender == sender && e.msg_id == msg_id) return &e;
        }
    }

    /* In the old table, only slots not yet moved count (moved ones are found in the
     * new table, or were erased there). */
    DedupEntry *find_old(uint32_t sender, uint64_t msg_id) const {
        DedupEntry *e = find_in(old, old_mask, sender, msg_id);
        if (e == nullptr || static_cast<size_t>(e - old) < old_pos) return nullptr;
        return e;
    }

    /* Insert an id known to be in neither table into the current one. */
    DedupEntry *place(uint32_t sender, uint64_t msg_id) {
        size_t i = home(sender, msg_id);
        while (slots[i].sender != 0) i = (i + 1) & mask;
        slots[i].sender = sender;
        slots[i].msg_id = msg_id;
        ++used;
        return &slots[i];
    }

    /* A table twice the size takes over; the old one is moved by migrate(). Its pages
     * are not faulted in here (that would stall for the whole table): they fault as
     * entries land. */
    void start_growth() {
        old = slots;
        old_mask = mask;
        old_pos = 0;
        old_used = used;
        size_t cap = (mask + 1) * 2;
        slots = allocate(cap, false);
        mask = cap - 1;
        used = 0;
    }

    void migrate(size_t budget) {
        size_t end = old_mask + 1;
        while (budget-- > 0 && old_pos < end) {
            DedupEntry &e = old[old_pos++];
            if (e.sender == 0 || e.sender == TOMBSTONE) continue;
            DedupEntry *n = place(e.sender, e.msg_id);
            *n = e;
            --old_used;
        }
        if (old_pos >= end) {
            release(old, end);
            old = nullptr;
            old_used = 0;
        }
    }

    /* Zeroed memory straight from the kernel, on huge pages where it allows (THP in
     * "madvise" mode): ids land at random over tens of MB, and with 4 KiB pages nearly
     * every lookup would also miss the TLB. Faulted in here, at start-up or growth,
     * not by the first ids that land on each page: a fault on a huge page zeroes 2 MiB
     * and may compact memory first, a stall of milliseconds under load (perf once put
     * clear_page at 11% of a reliable run). */
    static DedupEntry *allocate(size_t cap, bool prefault = true) {
        size_t bytes = cap * sizeof(DedupEntry);
        void *p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                       -1, 0);
        if (p == MAP_FAILED) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
        madvise(p, bytes, MADV_HUGEPAGE);
#endif
        volatile char *c = static_cast<volatile char *>(p);
        if (prefault)
            for (size_t off = 0; off < bytes; off += 4096) c[off] = 0;  /* fault every page in */
        return static_cast<DedupEntry *>(p);
    }

    static void release(DedupEntry *p, size_t cap) {
        if (p != nullptr) munmap(p, cap * sizeof(DedupEntry));
    }

    void rebuild(size_t cap) {
        DedupEntry *prev = slots;
        size_t prev_cap = prev ? mask + 1 : 0;
        slots = allocate(cap);
        mask = cap - 1;
        used = 0;
        for (size_t i = 0; i < prev_cap; ++i) {
            if (prev[i].sender == 0) continue;
            DedupEntry *e = place(prev[i].sender, prev[i].msg_id);
            *e = prev[i];
        }
        release(prev, prev_cap);
    }
};

#endif
