/* The few libzmq entry points the native core calls, resolved at import time from the
 * libzmq that pyzmq already loaded.
 *
 * Why not link against libzmq: pyzmq wheels bundle their own libzmq under a mangled
 * soname (pyzmq.libs/libzmq-<hash>.so.5) loaded RTLD_LOCAL. Linking our extension
 * against a system libzmq would put a second copy in the process, and sockets created by
 * one copy handed to the other is undefined behaviour. Linking against the bundled file
 * by path ties the build to one wheel's hash. Instead we find the copy that is already
 * mapped (dl_iterate_phdr), re-open it with RTLD_NOLOAD so that nothing new is loaded,
 * and take function pointers with dlsym. No zmq.h is needed at build time either: the
 * declarations below follow the stable libzmq 4.x ABI.
 */
#ifndef ROUTER_ZMQAPI_H
#define ROUTER_ZMQAPI_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <link.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>

typedef struct zmq_msg_t {
    unsigned char _[64];
} __attribute__((aligned(8))) zmq_msg_t;

typedef struct {
    void *socket;
    int fd;
    short events;
    short revents;
} zmq_pollitem_t;

#define ZMQ_DONTWAIT 1
#define ZMQ_SNDMORE 2
#define ZMQ_POLLIN 1
#define ZMQ_POLLOUT 2
#define ZMQ_SRCFD 2

/* The connection a received message came from, as one pointer load: the msg_t's
 * metadata (libzmq's per-connection property set, created once per connection by its
 * engine at the handshake and attached to every message it decodes, the ROUTER's
 * routing-id frame included). It is the first field of every variant of libzmq's
 * msg_t union from 4.1 to 4.3.5 (src/msg.hpp); zmq_msg_t is opaque, so this is an
 * assumption about libzmq's layout, used only for those versions (zmqapi_load sets
 * zmqapi_conn_by_pointer) and checked by the tests. NULL for inproc (no engine).
 * Other versions use the official way, zmq_msg_get(ZMQ_SRCFD): a string-keyed
 * std::map lookup plus atoi on the same metadata (research/srcfd_cost.c), and an fd
 * number that the kernel reuses as soon as it is closed. */
static int zmqapi_conn_by_pointer;
static int (*zmqapi_msg_get_fn)(const zmq_msg_t *, int);
static inline const void *zmqapi_msg_conn(const zmq_msg_t *m) {
    if (zmqapi_conn_by_pointer)
        return *(const void *const *)m;
    return (const void *)(long)(zmqapi_msg_get_fn(m, ZMQ_SRCFD) + 2);
}

typedef struct {
    int (*msg_init)(zmq_msg_t *);
    int (*msg_init_size)(zmq_msg_t *, size_t);
    void *(*msg_data)(zmq_msg_t *);
    size_t (*msg_size)(const zmq_msg_t *);
    int (*msg_close)(zmq_msg_t *);
    int (*msg_copy)(zmq_msg_t *, zmq_msg_t *);
    int (*msg_move)(zmq_msg_t *, zmq_msg_t *);
    int (*msg_more)(const zmq_msg_t *);
    int (*msg_get)(const zmq_msg_t *, int);
    int (*msg_recv)(zmq_msg_t *, void *, int);
    int (*msg_send)(zmq_msg_t *, void *, int);
    int (*send)(void *, const void *, size_t, int);
    int (*poll)(zmq_pollitem_t *, int, long);
    int (*errno_)(void);
    const char *(*strerror)(int);
    void (*version)(int *, int *, int *);
    const char *(*msg_gets)(const zmq_msg_t *, const char *);
    int (*connect)(void *, const char *);
    int (*disconnect)(void *, const char *);
} zmqapi_t;

static zmqapi_t zmqapi;
static char zmqapi_path[512];
static int zmqapi_copies;

static int zmqapi_find(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    (void)data;
    const char *name = info->dlpi_name;
    const char *base = name ? strrchr(name, '/') : NULL;
    base = base ? base + 1 : name;
    if (base && strncmp(base, "libzmq", 6) == 0) {
        if (zmqapi_copies == 0) {
            snprintf(zmqapi_path, sizeof zmqapi_path, "%s", name);
        }
        zmqapi_copies++;
    }
    return 0;
}

/* Resolve the table. `fallback` is pyzmq's backend module path, used when libzmq is
 * linked statically into it. Returns 0, or -1 with a message in `err`. */
static int zmqapi_load(const char *fallback, char *err, size_t errlen) {
    zmqapi_copies = 0;
    zmqapi_path[0] = 0;
    dl_iterate_phdr(zmqapi_find, NULL);
    if (zmqapi_copies > 1) {
        snprintf(err, errlen, "%d copies of libzmq are mapped in this process (first: %s); "
                 "exactly one is allowed", zmqapi_copies, zmqapi_path);
        return -1;
    }
    if (zmqapi_copies == 0) {
        snprintf(zmqapi_path, sizeof zmqapi_path, "%s", fallback ? fallback : "");
    }
    void *h = dlopen(zmqapi_path, RTLD_NOW | RTLD_NOLOAD);
    if (!h) {
        snprintf(err, errlen, "libzmq is not loaded (tried %s): import zmq before the core",
                 zmqapi_path[0] ? zmqapi_path : "<nothing found>");
        return -1;
    }
#define ZMQAPI_SYM(field, name)                                                   \
    do {                                                                          \
        *(void **)(&zmqapi.field) = dlsym(h, name);                               \
        if (!zmqapi.field) {                                                      \
            snprintf(err, errlen, "symbol %s not found in %s", name, zmqapi_path); \
            return -1;                                                            \
        }                                                                         \
    } while (0)
    ZMQAPI_SYM(msg_init, "zmq_msg_init");
    ZMQAPI_SYM(msg_init_size, "zmq_msg_init_size");
    ZMQAPI_SYM(msg_data, "zmq_msg_data");
    ZMQAPI_SYM(msg_size, "zmq_msg_size");
    ZMQAPI_SYM(msg_close, "zmq_msg_close");
    ZMQAPI_SYM(msg_copy, "zmq_msg_copy");
    ZMQAPI_SYM(msg_move, "zmq_msg_move");
    ZMQAPI_SYM(msg_more, "zmq_msg_more");
    ZMQAPI_SYM(msg_get, "zmq_msg_get");
    ZMQAPI_SYM(msg_recv, "zmq_msg_recv");
    ZMQAPI_SYM(msg_send, "zmq_msg_send");
    ZMQAPI_SYM(send, "zmq_send");
    ZMQAPI_SYM(poll, "zmq_poll");
    ZMQAPI_SYM(errno_, "zmq_errno");
    ZMQAPI_SYM(strerror, "zmq_strerror");
    ZMQAPI_SYM(version, "zmq_version");
    ZMQAPI_SYM(msg_gets, "zmq_msg_gets");
    ZMQAPI_SYM(connect, "zmq_connect");
    ZMQAPI_SYM(disconnect, "zmq_disconnect");
#undef ZMQAPI_SYM
    {
        int major, minor, patch;
        zmqapi.version(&major, &minor, &patch);
        zmqapi_conn_by_pointer = major == 4 && minor >= 1 && minor <= 3;
        zmqapi_msg_get_fn = zmqapi.msg_get;
    }
    /* The RTLD_NOLOAD handle only added a reference; pyzmq keeps the library mapped. */
    return 0;
}

#endif
