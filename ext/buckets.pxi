# Latency histogram buckets shared by every histogram the core counts: the bounds and
# observe(). Included by core.pyx (and checks.pyx, which tests observe()).

# Histogram bucket upper bounds, microseconds (router/metrics.py exports them in seconds),
# shared by every latency histogram: the R10 preferred numbers (steps of 10**0.1, about
# 1.26x) from 50 us to 50 s, then 60 s. A quantile read from them is off by at most one
# step, so a p99 near 100 ms reads within about 25%.
cdef uint64_t BOUNDS[N_BOUNDS]
# FIRST[b]: the first bound >= 2**(b-1), where a value of bit length b can land; each
# power of two holds about three R10 bounds, so observe() compares a few times only.
cdef int FIRST[65]
_R10 = (100, 125, 160, 200, 250, 315, 400, 500, 630, 800)
_bounds = [50, 63, 80] + [v * 10 ** k for k in range(5) for v in _R10] + \
    [v * 10 ** 5 for v in _R10[:8]] + [60000000]
assert len(_bounds) == N_BOUNDS and _bounds == sorted(_bounds)
for _i, _v in enumerate(_bounds):
    BOUNDS[_i] = _v
for _b in range(65):
    FIRST[_b] = next((i for i, v in enumerate(_bounds) if v >= (1 << _b) >> 1), N_BOUNDS)


cdef extern from *:
    """
    static inline int bit_length64(unsigned long long v) {
        return v ? 64 - __builtin_clzll(v) : 0;
    }
    """
    int bit_length64(uint64_t v) nogil


cdef inline void observe(uint64_t *buckets, uint64_t v) noexcept nogil:
    """Count ``v`` (us) into the first bucket whose bound holds it (the last: +Inf)."""
    cdef int i = FIRST[bit_length64(v)]
    while i < N_BOUNDS and v > BOUNDS[i]:
        i += 1
    buckets[i] += 1


def histogram_bounds() -> dict:
    """Bucket upper bounds in seconds, as the core counts them (one list for every
    histogram: hop, delivery and commit)."""
    bounds = [BOUNDS[i] / 1e6 for i in range(N_BOUNDS)]
    return {"hop": bounds, "delivery": list(bounds), "commit": list(bounds)}
