/*
 * sendcost: what one small send() costs the kernel on this machine, the floor
 * under every unbatched chat delivery (bench/README.md).
 *
 * A child on CPU 1 accepts 1000 loopback TCP connections and reads them with
 * epoll. The parent, on CPU 0, sends 64-byte lines to each in turn, one
 * round every GAP seconds (as a chat message fans out), with send() alone
 * and with the two epoll_ctl() calls around it that a Twisted transport
 * makes for each write, the two in turn. It prints its own user and system time per
 * send as JSON. Bounded: alarm(), and the child stops when the parent closes.
 *
 *   sendcost [ROUNDS] [GAP_SECONDS]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define N 1000

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set); /* one CPU only: then no pinning */
}

static double cpu_s(int who_user) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    struct timeval t = who_user ? r.ru_utime : r.ru_stime;
    return t.tv_sec + t.tv_usec / 1e6;
}

static void reader(int listener) {
    pin(1);
    int ep = epoll_create1(0);
    for (int i = 0; i < N; i++) {
        int c = accept(listener, NULL, NULL);
        if (c < 0) _exit(1);
        struct epoll_event e = {.events = EPOLLIN, .data.fd = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c, &e);
    }
    static char buf[65536];
    struct epoll_event ev[1024];
    for (;;) {
        int n = epoll_wait(ep, ev, 1024, 5000);
        if (n <= 0) _exit(0);
        for (int i = 0; i < n; i++)
            if (read(ev[i].data.fd, buf, sizeof buf) <= 0) _exit(0);
    }
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 20;
    double gap = argc > 2 ? atof(argv[2]) : 0.05;
    alarm(120);
    int one = 1, listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) || listen(listener, 4096) ||
        getsockname(listener, (struct sockaddr *)&addr, &len)) {
        printf("{\"error\": \"cannot listen on 127.0.0.1\"}\n");
        return 2;
    }
    pid_t child = fork();
    if (child == 0) reader(listener);
    pin(0);
    int fd[N], ep = epoll_create1(0);
    for (int i = 0; i < N; i++) {
        fd[i] = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(fd[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd[i], (struct sockaddr *)&addr, sizeof addr)) {
            printf("{\"error\": \"connect failed at %d\"}\n", i);
            kill(child, SIGKILL);
            return 2;
        }
        struct epoll_event e = {.events = 0, .data.fd = fd[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd[i], &e);
    }
    usleep(200000);
    char line[64];
    memset(line, 'x', sizeof line - 1);
    line[sizeof line - 1] = '\n';
    /* The two variants in turn, twice, after a round that warms up. */
    double result[2][2] = {{0, 0}, {0, 0}};
    for (int i = 0; i < N; i++)
        if (send(fd[i], line, sizeof line, 0) != sizeof line) return 2;
    for (int phase = 0; phase < 4; phase++) {
        int with_epoll = phase % 2;
        double u0 = cpu_s(1), s0 = cpu_s(0);
        for (int k = 0; k < rounds; k++) {
            for (int i = 0; i < N; i++) {
                struct epoll_event out = {.events = EPOLLOUT, .data.fd = fd[i]};
                struct epoll_event none = {.events = 0, .data.fd = fd[i]};
                if (with_epoll) epoll_ctl(ep, EPOLL_CTL_MOD, fd[i], &out);
                if (send(fd[i], line, sizeof line, 0) != sizeof line) {
                    printf("{\"error\": \"short send\"}\n");
                    kill(child, SIGKILL);
                    return 2;
                }
                if (with_epoll) epoll_ctl(ep, EPOLL_CTL_MOD, fd[i], &none);
            }
            usleep((useconds_t)(gap * 1e6));
        }
        result[with_epoll][0] += (cpu_s(1) - u0) * 1e6 / (2 * rounds * N);
        result[with_epoll][1] += (cpu_s(0) - s0) * 1e6 / (2 * rounds * N);
    }
    for (int i = 0; i < N; i++) close(fd[i]);
    waitpid(child, NULL, 0);
    printf("{\"sends\": %d, \"bytes\": %zu, \"user_us\": %.2f, \"sys_us\": %.2f,"
           " \"with_epoll_ctl_user_us\": %.2f, \"with_epoll_ctl_sys_us\": %.2f}\n",
           4 * rounds * N, sizeof line, result[0][0], result[0][1], result[1][0], result[1][1]);
    return 0;
}
