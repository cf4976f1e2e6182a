/* Hostile: stack a seccomp filter of its own that fails mount with EPERM, then mount.
 * The kernel ranks a filter's ERRNO above a user notification, so if the stacking
 * went through, the mount would fail quietly instead of being reported.
 * With an argument, stacks through prctl(PR_SET_SECCOMP) instead of seccomp(2).
 * Prints "survived" only if the mount call returned. */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

int main(int argc, char **argv)
{
    (void)argv;
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_mount, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { sizeof code / sizeof code[0], code };
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    long s = argc > 1 ? prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0)
                      : syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog);
    long r = mount("none", "/tmp", "tmpfs", 0, NULL);
    printf("survived: filter %ld, mount %ld %s\n", s, r, r < 0 ? strerror(errno) : "ok");
    return 0;
}
