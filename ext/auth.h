/* Which socket an fd is now: its inode in the kernel's socket filesystem, unique per
 * socket while it exists (0 if the fd is not open). Recorded at HELLO and compared
 * before a revocation shuts the fd down, so a number the kernel has since given to
 * another connection is left alone. */
#ifndef ROUTER_AUTH_H
#define ROUTER_AUTH_H

#include <stdint.h>
#include <sys/stat.h>

static inline uint64_t socket_inode(int fd) {
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode))
        return 0;
    return (uint64_t)st.st_ino;
}

#endif
