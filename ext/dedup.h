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
 * seeded per process, since message ids are chosen by senders. The table doubles when
 * 3/4 full; that rehash stops the loop, so it is sized up front for the expected
 * number of ids in one window (Settings.dedup_capacity). */
#ifndef ROUTER_DEDUP_H
#define ROUTER_DEDUP_H

#include <sys/mman.h>

#include <cstdint>
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
    DedupEntry *slots = nullptr;
    size_t mask = 0;
    size_t used = 0;
    uint64_t seed = 0x2545f4914f6cdd1dULL;

    DedupTable() = default;
    DedupTable(const DedupTable &) = delete;
    DedupTable &operator=(const DedupTable &) = delete;
    ~DedupTable() { release(slots, mask + 1); }

    size_t size() const { return used; }

    void set_seed(uint64_t s) { seed = s; }

    /* Room for ``n`` ids before the first doubling. */
    void reserve(size_t n) {
        size_t cap = 1024;
        while (cap * 3 / 4 < n) cap <<= 1;
        if (cap > mask + 1 || slots == nullptr) rebuild(cap);
    }

    DedupEntry *find(uint32_t sender, uint64_t msg_id) {
        if (slots == nullptr) return nullptr;
        for (size_t i = home(sender, msg_id);; i = (i + 1) & mask) {
            DedupEntry &e = slots[i];
            if (e.sender == 0) return nullptr;
            if (e.sender == sender && e.msg_id == msg_id) return &e;
        }
    }

    /* The entry of the id, added (status 0) if it was not there. */
    DedupEntry *upsert(uint32_t sender, uint64_t msg_id) {
        if ((used + 1) * 4 > (mask + 1) * 3) rebuild((mask + 1) * 2);
        size_t i = home(sender, msg_id);
        while (slots[i].sender != 0) {
            if (slots[i].sender == sender && slots[i].msg_id == msg_id) return &slots[i];
            i = (i + 1) & mask;
        }
        slots[i].sender = sender;
        slots[i].msg_id = msg_id;
        slots[i].stamp = 0;
        slots[i].status = 0;
        slots[i].code = 0;
        ++used;
        return &slots[i];
    }

    /* Remove an entry returned by find/upsert; later entries of its probe run move back
     * into the gap, so lookups never need to skip deleted slots. */
    void erase(DedupEntry *e) {
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

  private:
    size_t home(uint32_t sender, uint64_t msg_id) const {
        uint64_t h = (msg_id ^ seed) * 0x9fb21c651e98df25ULL;
        h ^= (h >> 32) ^ (static_cast<uint64_t>(sender) * 0xc4ceb9fe1a85ec53ULL);
        h *= 0xff51afd7ed558ccdULL;
        h ^= h >> 29;
        return static_cast<size_t>(h) & mask;
    }

    /* Zeroed memory straight from the kernel, on huge pages where it allows (THP in
     * "madvise" mode): ids land at random over tens of MB, and with 4 KiB pages nearly
     * every lookup would also miss the TLB. Faulted in here, at start-up or growth,
     * not by the first ids that land on each page: a fault on a huge page zeroes 2 MiB
     * and may compact memory first, a stall of milliseconds under load (perf once put
     * clear_page at 11% of a reliable run). */
    static DedupEntry *allocate(size_t cap) {
        size_t bytes = cap * sizeof(DedupEntry);
        void *p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                       -1, 0);
        if (p == MAP_FAILED) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
        madvise(p, bytes, MADV_HUGEPAGE);
#endif
        volatile char *c = static_cast<volatile char *>(p);
        for (size_t off = 0; off < bytes; off += 4096) c[off] = 0;  /* fault every page in */
        return static_cast<DedupEntry *>(p);
    }

    static void release(DedupEntry *p, size_t cap) {
        if (p != nullptr) munmap(p, cap * sizeof(DedupEntry));
    }

    void rebuild(size_t cap) {
        DedupEntry *old = slots;
        size_t old_cap = old ? mask + 1 : 0;
        slots = allocate(cap);
        mask = cap - 1;
        used = 0;
        for (size_t i = 0; i < old_cap; ++i) {
            if (old[i].sender == 0) continue;
            DedupEntry *e = upsert(old[i].sender, old[i].msg_id);
            *e = old[i];
        }
        release(old, old_cap);
    }
};

#endif
