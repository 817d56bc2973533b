/* Small C helpers of the client engine (ext/engine.pyx): byte order, a monotonic
 * condition variable, eventfd wake-ups, and the record of one unconfirmed message. */
#ifndef ROUTER_ENGINE_H
#define ROUTER_ENGINE_H

#include <stdint.h>
#include <string>
#include <pthread.h>
#include <time.h>
#include <unistd.h>
#include <sys/eventfd.h>

/* A reliable message the router has not confirmed: its encoded out-queue item (see
 * engine.pyx, "Out-queue items") and when it last went out (0: never, held for the
 * resend that follows the next WELCOME). */
struct Pending {
    std::string item;
    uint64_t sent_ms;
};

static inline uint64_t eng_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)(ts.tv_nsec / 1000000);
}

static inline void eng_put16(unsigned char *p, uint16_t v) { p[0] = v >> 8; p[1] = v; }
static inline void eng_put32(unsigned char *p, uint32_t v) {
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}
static inline void eng_put64(unsigned char *p, uint64_t v) {
    eng_put32(p, (uint32_t)(v >> 32)); eng_put32(p + 4, (uint32_t)v);
}
static inline uint16_t eng_get16(const unsigned char *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t eng_get32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t eng_get64(const unsigned char *p) {
    return (uint64_t)eng_get32(p) << 32 | eng_get32(p + 4);
}

/* pthread condition variables time out on CLOCK_REALTIME by default: a wall-clock step
 * would stretch or cut a wait. These use the monotonic clock. */
static inline int eng_cond_init(pthread_cond_t *c) {
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(c, &a);
    pthread_condattr_destroy(&a);
    return rc;
}

static inline int eng_cond_wait_ms(pthread_cond_t *c, pthread_mutex_t *m, long ms) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) { ts.tv_sec += 1; ts.tv_nsec -= 1000000000L; }
    return pthread_cond_timedwait(c, m, &ts);
}

static inline int eng_eventfd(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }
static inline void eng_signal(int fd) { uint64_t one = 1; (void)!write(fd, &one, 8); }
static inline void eng_drain(int fd) { uint64_t v; (void)!read(fd, &v, 8); }

#endif
