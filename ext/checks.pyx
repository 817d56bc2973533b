# cython: language_level=3, boundscheck=False, wraparound=False
# distutils: language = c++
"""Checks of the core's native building blocks, for the tests: kept out of the
production module (router.core). Built from the same sources the core includes."""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memset
from libcpp.string cimport string

cdef extern from "dedup.h" nogil:
    cdef struct DedupEntry:
        uint64_t msg_id
        uint32_t sender
        uint16_t stamp
        uint8_t status
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

cdef extern from "crc32c.h" nogil:
    void crc32c_init()
    uint32_t crc32c(const uint8_t *p, size_t n)
    uint32_t crc32c_soft(const uint8_t *p, size_t n)

cdef enum:
    N_BOUNDS = 62
    N_BUCKETS = 63

include "buckets.pxi"

crc32c_init()


def crc32c_check(data: bytes) -> tuple:
    """(hardware-or-table CRC, table CRC) of ``data``: a test checks they agree."""
    return crc32c(data, len(data)), crc32c_soft(data, len(data))


def observe_check(values) -> list:
    """The bucket index observe() picks for each value (a test checks it against a
    plain search over histogram_bounds())."""
    cdef uint64_t b[N_BUCKETS]
    cdef int i
    out = []
    for v in values:
        memset(b, 0, sizeof(b))
        observe(b, v)
        out.append(next(i for i in range(N_BUCKETS) if b[i]))
    return out


def dedup_check(int ops, int keys, uint64_t seed) -> int:
    """Random upserts, lookups and erasures on a DedupTable (ext/dedup.h) checked against
    a dict; returns the number of disagreements (a test expects 0). Few keys in a small
    table force collisions, probe runs that wrap around, erasures inside runs, growth."""
    import random
    cdef DedupTable *t = new DedupTable()
    cdef DedupEntry *e
    cdef uint32_t sender
    cdef uint64_t mid
    cdef int i, bad = 0
    rng = random.Random(seed)
    ref = {}
    t.reserve(16)
    for i in range(ops):
        sender = rng.randrange(1, 4)
        mid = rng.randrange(keys)
        e = t.find(sender, mid)
        if (e != NULL) != ((sender, mid) in ref) or (e != NULL and e.status != ref[sender, mid]):
            bad += 1
        if rng.random() < 0.55:
            e = t.upsert(sender, mid)
            e.status = i & 0xFF
            ref[sender, mid] = i & 0xFF
        elif e != NULL:
            t.erase(e)
            del ref[sender, mid]
    for (sender, mid), v in ref.items():
        e = t.find(sender, mid)
        bad += e == NULL or e.status != v
    bad += t.size() != len(ref)
    del t
    return bad


def dedup_growth_check(int keys, uint64_t seed) -> tuple:
    """Insert ``keys`` ids into a small table (so it grows several times, moving entries
    a few at a time), erasing and looking up as it goes; returns (disagreements with a
    dict, final capacity, operations done while an old table was still being moved)."""
    import random
    cdef DedupTable *t = new DedupTable()
    cdef DedupEntry *e
    cdef int i, bad = 0, during = 0
    rng = random.Random(seed)
    live = {}
    t.reserve(16)
    for i in range(keys):
        e = t.upsert(1 + i % 3, i)
        e.status = i & 0xFF
        live[(1 + i % 3, i)] = i & 0xFF
        during += t.growing()
        if i % 3 == 0:  # erase an older one, wherever it is now (old table or new)
            k = rng.choice(list(live)) if len(live) < 64 else next(iter(live))
            e = t.find(k[0], k[1])
            if e == NULL:
                bad += 1
            else:
                t.erase(e)
                del live[k]
    for (s, mid), v in live.items():
        e = t.find(s, mid)
        bad += e == NULL or e.status != v
    bad += t.size() != len(live)
    cap = t.capacity()
    del t
    return bad, cap, during
