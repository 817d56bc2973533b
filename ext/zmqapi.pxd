# cython: language_level=3
"""Cython view of ext/zmqapi.h: the libzmq function table resolved from pyzmq's copy."""

cdef extern from "zmqapi.h" nogil:
    ctypedef struct zmq_msg_t:
        pass
    ctypedef struct zmq_pollitem_t:
        void *socket
        int fd
        short events
        short revents
    enum:
        ZMQ_DONTWAIT
        ZMQ_SNDMORE
        ZMQ_POLLIN
        ZMQ_POLLOUT
        ZMQ_SRCFD
    ctypedef struct zmqapi_t:
        int (*msg_init)(zmq_msg_t *) noexcept nogil
        int (*msg_init_size)(zmq_msg_t *, size_t) noexcept nogil
        void *(*msg_data)(zmq_msg_t *) noexcept nogil
        size_t (*msg_size)(const zmq_msg_t *) noexcept nogil
        int (*msg_close)(zmq_msg_t *) noexcept nogil
        int (*msg_copy)(zmq_msg_t *, zmq_msg_t *) noexcept nogil
        int (*msg_move)(zmq_msg_t *, zmq_msg_t *) noexcept nogil
        int (*msg_more)(const zmq_msg_t *) noexcept nogil
        int (*msg_get)(const zmq_msg_t *, int) noexcept nogil
        int (*msg_recv)(zmq_msg_t *, void *, int) noexcept nogil
        int (*msg_send)(zmq_msg_t *, void *, int) noexcept nogil
        int (*send)(void *, const void *, size_t, int) noexcept nogil
        int (*poll)(zmq_pollitem_t *, int, long) noexcept nogil
        int (*errno_)() noexcept nogil
        const char *(*strerror)(int) noexcept nogil
        void (*version)(int *, int *, int *) noexcept nogil
        const char *(*msg_gets)(const zmq_msg_t *, const char *) noexcept nogil
        int (*connect)(void *, const char *) noexcept nogil
        int (*disconnect)(void *, const char *) noexcept nogil
    zmqapi_t zmqapi
    char zmqapi_path[512]
    int zmqapi_load(const char *fallback, char *err, size_t errlen)
    const void *zmqapi_msg_conn(const zmq_msg_t *m)
