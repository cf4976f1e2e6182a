/* Hostile: open_by_handle_at with a garbage handle.
 * Blocked by every shipped policy (fork: by strict); prints "survived" only if the call returned. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <fcntl.h>

int main(void)
{
    struct { unsigned int bytes; int type; unsigned char h[8]; } fh = {8, 1, {0}};
    long r = syscall(SYS_open_by_handle_at, AT_FDCWD, &fh, O_RDONLY);
    printf("survived: %ld %s\n", r, r < 0 ? strerror(errno) : "ok");
    return 0;
}
