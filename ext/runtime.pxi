# libzmq (pyzmq's own copy, resolved at import), clocks, and what the build reports.
# Included by core.pyx.

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int, timespec *)
    enum:
        CLOCK_MONOTONIC
        CLOCK_REALTIME


cdef char _err[512]
if zmqapi_load(zmq.backend.cython._zmq.__file__.encode(), _err, sizeof(_err)) != 0:
    raise ImportError(f"router native core: {_err.decode()}")


cdef enum:
    LEASE_GONE = -2     # _run: the leadership lease ran out (Core.set_lease_until)


class LeaseExpired(RuntimeError):
    """The core's leadership lease ran out: it no longer serves (router/lease.py)."""


cdef inline uint64_t mono_ms() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000 + <uint64_t>(ts.tv_nsec // 1000000)


cdef inline uint64_t mono_us() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000 + <uint64_t>(ts.tv_nsec // 1000)


cdef inline uint64_t wall_us() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <uint64_t>ts.tv_sec * 1000000 + <uint64_t>(ts.tv_nsec // 1000)


def libzmq_path() -> str:
    """Path of the libzmq the core resolved its symbols from (pyzmq's own copy)."""
    return zmqapi_path.decode()


def libzmq_version() -> tuple:
    """(major, minor, patch) of that libzmq."""
    cdef int a, b, c
    zmqapi.version(&a, &b, &c)
    return (a, b, c)


def cython_version() -> str:
    """The Cython version this core was compiled with."""
    return CYTHON_VERSION


def constants() -> dict:
    """The protocol constants as compiled into the core (checked against router.protocol)."""
    return dict(NATIVE_CONSTANTS)
