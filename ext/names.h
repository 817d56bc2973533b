/* The address table's name index: address name -> address slot.
 *
 * Every SEND to an address looks its name up here, so with tens of thousands of bound
 * addresses this lookup is on the hot path. std::unordered_map keeps one heap node per
 * name and walks a bucket chain to reach it: a cache miss or two before the address
 * itself is touched (perf put it at ~9% of the router's time with 10,000 addresses).
 * This index is open addressing with linear probing over 8-byte slots holding a hash tag
 * and the slot number, so a lookup reads one or two adjacent slots and then the name
 * it has to compare anyway, which lives in the Address the caller touches next.
 *
 * An idle address is reclaimed (addresses.pxi) and its slot reused for another name:
 * erase() takes its entry out by shifting the rest of its probe run back (no
 * tombstones, so lookups never slow down with churn). The hash is seeded per process so
 * that a peer cannot pick names that all land in one probe run. Names are owned by the
 * caller: the index keeps pointers to them, which must stay valid while indexed. */
#ifndef ROUTER_NAMES_H
#define ROUTER_NAMES_H

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

struct NameIndex {
    std::vector<uint64_t> slots;            /* (tag << 32) | (slot + 1); 0 = empty */
    std::vector<const std::string *> names; /* by address slot; nullptr = free slot */
    uint64_t seed = 0x9e3779b97f4a7c15ULL;
    size_t mask = 0;
    size_t live = 0;

    size_t size() const { return live; }

    void set_seed(uint64_t s) { seed = s | 1; }

    uint64_t hash(const char *p, size_t n) const {
        /* 8 bytes per step, multiply-xorshift mixing; names are short (user:123456). */
        uint64_t h = seed ^ (n * 0xff51afd7ed558ccdULL);
        uint64_t w;
        while (n >= 8) {
            std::memcpy(&w, p, 8);
            h = (h ^ w) * 0x9fb21c651e98df25ULL;
            h ^= h >> 29;
            p += 8;
            n -= 8;
        }
        if (n) {
            w = 0;
            std::memcpy(&w, p, n);
            h = (h ^ w) * 0x9fb21c651e98df25ULL;
        }
        h ^= h >> 32;
        h *= 0xc4ceb9fe1a85ec53ULL;
        h ^= h >> 29;
        return h;
    }

    /* The slot of the name, or -1. */
    int find(const char *p, size_t n) const {
        if (slots.empty()) return -1;
        uint64_t h = hash(p, n);
        uint32_t tag = static_cast<uint32_t>(h >> 32);
        for (size_t i = h & mask;; i = (i + 1) & mask) {
            uint64_t s = slots[i];
            if (s == 0) return -1;
            if (static_cast<uint32_t>(s >> 32) == tag) {
                int ai = static_cast<int>(static_cast<uint32_t>(s) - 1);
                const std::string *k = names[ai];
                if (k->size() == n && std::memcmp(k->data(), p, n) == 0) return ai;
            }
        }
    }

    int find(const std::string &k) const { return find(k.data(), k.size()); }

    /* Ask the CPU for the slot a name with hash h starts probing at. */
    void prefetch(uint64_t h) const {
        if (!slots.empty()) __builtin_prefetch(&slots[h & mask]);
    }

    /* The first slot whose tag matches h, name not compared: a hint for prefetching
     * the address, or -1. */
    int peek(uint64_t h) const {
        if (slots.empty()) return -1;
        uint32_t tag = static_cast<uint32_t>(h >> 32);
        for (size_t i = h & mask;; i = (i + 1) & mask) {
            uint64_t s = slots[i];
            if (s == 0) return -1;
            if (static_cast<uint32_t>(s >> 32) == tag)
                return static_cast<int>(static_cast<uint32_t>(s) - 1);
        }
    }

    /* Add a name not present yet, as the next slot number (names.size()). */
    void insert(const std::string *name) {
        insert_at(name, names.size());
    }

    /* Add a name not present yet for address slot ``ai`` (a new slot, or a free one). */
    void insert_at(const std::string *name, size_t ai) {
        if (ai >= names.size()) names.resize(ai + 1, nullptr);
        if ((live + 1) * 2 > slots.size()) grow();
        names[ai] = name;
        ++live;
        place(*name, static_cast<uint32_t>(ai + 1));
    }

    /* Remove address slot ``ai``'s name; later entries of its probe run move back so
     * that every name stays reachable from its home slot. */
    void erase(size_t ai) {
        if (ai >= names.size() || names[ai] == nullptr) return;
        const std::string *k = names[ai];
        size_t i = hash(k->data(), k->size()) & mask;
        while (static_cast<uint32_t>(slots[i]) != ai + 1) i = (i + 1) & mask;
        for (size_t j = (i + 1) & mask; slots[j] != 0; j = (j + 1) & mask) {
            const std::string *o = names[static_cast<uint32_t>(slots[j]) - 1];
            size_t home = hash(o->data(), o->size()) & mask;
            /* move j back into the hole at i unless its home lies in (i, j] */
            bool stays = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
            if (!stays) {
                slots[i] = slots[j];
                i = j;
            }
        }
        slots[i] = 0;
        names[ai] = nullptr;
        --live;
    }

  private:
    void place(const std::string &k, uint32_t slot_plus_one) {
        uint64_t h = hash(k.data(), k.size());
        size_t i = h & mask;
        while (slots[i] != 0) i = (i + 1) & mask;
        slots[i] = ((h >> 32) << 32) | slot_plus_one;
    }

    void grow() {
        /* at most half full: probe runs stay short */
        size_t n = slots.empty() ? 1024 : slots.size() * 2;
        slots.assign(n, 0);
        mask = n - 1;
        for (size_t ai = 0; ai < names.size(); ++ai)
            if (names[ai] != nullptr) place(*names[ai], static_cast<uint32_t>(ai + 1));
    }
};

#endif
