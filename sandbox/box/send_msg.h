/*
 * One message with at most one fd alongside, on a SOCK_SEQPACKET socket: what the starter and the spawner send
 * the supervisor (sandbox/box/protocol.py reads it).  Included by both; each is one static binary.
 */
#ifndef SBX_SEND_MSG_H
#define SBX_SEND_MSG_H

#include <errno.h>
#include <string.h>
#include <sys/socket.h>

static void send_msg(int sock, const char *msg, int fd)
{
    struct iovec iov = {(void *)msg, strlen(msg)};
    union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int))]; } anc;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (fd >= 0) {
        memset(&anc, 0, sizeof anc);
        mh.msg_control = anc.buf;
        mh.msg_controllen = sizeof anc.buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof fd);
    }
    while (sendmsg(sock, &mh, MSG_NOSIGNAL) < 0 && errno == EINTR)
        ;
}

#endif
