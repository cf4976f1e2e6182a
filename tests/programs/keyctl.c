/* Hostile: keyctl(KEYCTL_GET_KEYRING_ID, session keyring).
 * Blocked by every shipped policy (fork: by strict); prints "survived" only if the call returned. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

int main(void)
{
    long r = syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* KEY_SPEC_SESSION_KEYRING */, 0);
    printf("survived: %ld %s\n", r, r < 0 ? strerror(errno) : "ok");
    return 0;
}
