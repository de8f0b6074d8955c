/*
 * loadgen: the load generator of mailsvc's bench (bench/README.md).
 *
 * One process, one thread, epoll, non-blocking sockets to 127.0.0.1. It
 * drives the server and measures it: latency from the moment a line is
 * written to the moment its reply or delivery is read (CLOCK_MONOTONIC, one
 * clock, one process), and the CPU time of the server (utime + stime in
 * /proc/<pid>/stat) and of itself over the same measuring window.
 *
 *   loadgen chat  ...   N clients join one room (HELLO, NICK, READY); S of
 *                       them send. Saturated (--window W messages in flight
 *                       per sender, a message being done once all N-1 others
 *                       have it) or open-loop at --rate deliveries/s.
 *                       --dialect irc: the clients speak IRC instead (NICK and
 *                       USER, 001, JOIN #chat, 366; PRIVMSG #chat; PING is
 *                       answered); --dialect mixed: every other client speaks
 *                       IRC to --irc-port, the others the line chat to --port.
 *   loadgen mail  ...   C connections send --request over and over, --depth
 *                       of them outstanding on each (1: not pipelined).
 *   loadgen idle  ...   N connections that each read a greeting and/or make
 *                       one request, then hold still until stdin closes.
 *
 *   --ws: chat over the web front's /ws instead (see "WebSocket dialect"):
 *   the HTTP upgrade, then JSON in frames, {"type": "join"}, {"type": "say"}.
 *
 * Every phase has a deadline and the whole run an alarm(): it always stops
 * by itself. The result is one JSON object on stdout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_SENDERS 64
#define SLOTS 4096 /* messages a sender may have in flight, open-loop */
#define ID_TIMER 0xFFFFFFF0u
#define ID_STDIN 0xFFFFFFF1u

/* ---- options ---- */

static const char *mode = NULL;
static int port = 0;
static int port2 = 0; /* chat: a second node; odd connections go there */
static int cross = 0; /* with --port2: every receiver there, every sender on --port */
static int extra_pids[4]; /* processes whose CPU the window also reports (redis, node 2) */
static int n_extra = 0;
static int nconns = 0;
static int senders = 10;
static int window = 4;
static double rate = 0;      /* chat: offered deliveries per second; 0: saturated */
static double warmup = 1.0;  /* seconds of load before the window opens */
static double duration = 3.0;
static double setup_timeout = 120.0;
static double hold_timeout = 120.0;
static int server_pid = 0;
static int msg_size = 64; /* bytes of a chat line the client sends, LF included */
static int depth = 1;
static int reply_lines = 1;
static char *request = NULL;
static size_t request_len = 0;
static int greeting = 0; /* idle: read one line on connect */
static int join = 0;     /* idle: NICK after the greeting */
static int concurrency = 32; /* connections being set up at once */
enum { D_LINE, D_IRC, D_MIXED };
static int dialect = D_LINE; /* chat: what the clients speak */
static int irc_port = 0;     /* chat, --dialect mixed: the IRC clients' port */
static int ws = 0;           /* chat: the web front's WebSocket dialect */

/* ---- clocks and CPU ---- */

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + t.tv_nsec;
}

static double self_cpu_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* utime and stime of a process, all threads, in seconds; -1 if unknown. */
static void proc_cpu(int pid, double *user, double *sys) {
    *user = *sys = -1;
    if (pid <= 0) return;
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return;
    p += 2; /* the state field */
    unsigned long long utime = 0, stime = 0;
    for (int field = 3; field <= 15 && *p; field++) {
        if (field == 14) utime = strtoull(p, NULL, 10);
        if (field == 15) stime = strtoull(p, NULL, 10);
        p = strchr(p, ' ');
        if (!p) break;
        p++;
    }
    *user = (double)utime / sysconf(_SC_CLK_TCK);
    *sys = (double)stime / sysconf(_SC_CLK_TCK);
}

/* Busy and total CPU seconds of the whole machine (all CPUs), from /proc/stat. */
static void machine_cpu_s(double *busy, double *total) {
    unsigned long long v[10] = {0};
    *busy = *total = -1;
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return;
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    if (n < 8) return;
    double tck = sysconf(_SC_CLK_TCK);
    /* user nice system idle iowait irq softirq steal */
    *busy = (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / tck;
    *total = (v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7]) / tck;
}

/* ---- latency histogram: 1 us steps to 100 ms, 100 us steps to 10 s ---- */

#define FINE 100000
#define COARSE 99000
static uint32_t hist[FINE + COARSE + 1];
static uint64_t hist_n = 0, hist_max_ns = 0;
static double hist_sum_us = 0;

static void record(uint64_t ns) {
    uint64_t us = ns / 1000;
    size_t b;
    if (us < FINE) b = us;
    else if (us < FINE + (uint64_t)COARSE * 100) b = FINE + (us - FINE) / 100;
    else b = FINE + COARSE;
    hist[b]++;
    hist_n++;
    hist_sum_us += ns / 1000.0;
    if (ns > hist_max_ns) hist_max_ns = ns;
}

static double bucket_us(size_t b) {
    if (b < FINE) return b + 0.5;
    if (b < FINE + COARSE) return FINE + (b - FINE) * 100.0 + 50;
    return hist_max_ns / 1000.0;
}

static double percentile(double q) {
    if (!hist_n) return 0;
    uint64_t rank = (uint64_t)(q * hist_n);
    if (rank >= hist_n) rank = hist_n - 1;
    uint64_t seen = 0;
    for (size_t b = 0; b <= FINE + COARSE; b++) {
        seen += hist[b];
        if (seen > rank) {
            double v = bucket_us(b);
            return v > hist_max_ns / 1000.0 ? hist_max_ns / 1000.0 : v;
        }
    }
    return hist_max_ns / 1000.0;
}

/* ---- output ---- */

static char out[8192];
static size_t outlen = 0;
static void emit(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out + outlen, sizeof out - outlen, fmt, ap);
    va_end(ap);
    if (n > 0) outlen += (size_t)n < sizeof out - outlen ? (size_t)n : sizeof out - outlen - 1;
}

static void die(const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* JSON, so the harness reports it as it reports a result. */
    printf("{\"error\": \"");
    for (char *c = msg; *c; c++) {
        if (*c == '"' || *c == '\\') putchar('\\');
        putchar(*c);
    }
    printf("\"}\n");
    fflush(stdout);
    exit(2);
}

static void on_alarm(int sig) {
    (void)sig;
    static const char m[] = "{\"error\": \"loadgen: overall time limit reached\"}\n";
    if (write(1, m, sizeof m - 1) < 0) {}
    _exit(3);
}

/* ---- connections ---- */

enum { C_FREE, C_CONNECTING, C_HELLO, C_READY_WAIT, C_REPLY_WAIT, C_JOIN_WAIT, C_UP, C_FAILED,
       C_UPGRADE };

typedef struct {
    int fd;
    int state;
    /* a line split across reads */
    char *carry;
    size_t carry_len, carry_cap;
    /* what the socket would not take yet */
    char *pend;
    size_t pend_len, pend_cap;
    int want_out;
    /* mail: send times of the outstanding requests (a ring of depth) */
    uint64_t *sent;
    int head, count;
    int lines_in_reply;
    int irc; /* chat: this client speaks IRC */
} conn_t;

static conn_t *conns;
static int epfd;
static struct sockaddr_in target, irc_target, target2;
static int setting_up = 0, up = 0, failed = 0, next_to_open = 0;
static int closed_by_server = 0;

static void set_events(conn_t *c, int idx, uint32_t ev) {
    struct epoll_event e = {.events = ev, .data.u32 = (uint32_t)idx};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &e);
}

static void fail_conn(int idx, const char *why) {
    conn_t *c = &conns[idx];
    if (c->state == C_FAILED) return;
    if (c->state != C_UP) setting_up--;
    else up--;
    c->state = C_FAILED;
    failed++;
    if (failed <= 3) fprintf(stderr, "loadgen: connection %d: %s\n", idx, why);
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
}

static void open_conn(int idx) {
    conn_t *c = &conns[idx];
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket: %s (connection %d)", strerror(errno), idx);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* Close with a reset: no TIME_WAIT left behind by thousands of sockets. */
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    c->fd = fd;
    c->state = C_CONNECTING;
    setting_up++;
    struct epoll_event e = {.events = EPOLLOUT, .data.u32 = (uint32_t)idx};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &e) < 0) die("epoll_ctl: %s", strerror(errno));
    int second = port2 && (cross ? idx >= senders : idx % 2);
    struct sockaddr_in *to = c->irc && dialect == D_MIXED ? &irc_target
                             : second ? &target2 : &target;
    if (connect(fd, (struct sockaddr *)to, sizeof *to) < 0 && errno != EINPROGRESS)
        fail_conn(idx, strerror(errno));
}

/* Queue and write; what the socket does not take is kept and sent on EPOLLOUT. */
static void send_bytes(int idx, const char *data, size_t len) {
    conn_t *c = &conns[idx];
    if (c->fd < 0) return;
    if (c->pend_len == 0) {
        ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno != EAGAIN) { fail_conn(idx, strerror(errno)); return; }
            n = 0;
        }
        data += n;
        len -= n;
        if (!len) return;
    }
    if (c->pend_len + len > c->pend_cap) {
        c->pend_cap = (c->pend_len + len) * 2;
        c->pend = realloc(c->pend, c->pend_cap);
        if (!c->pend) die("out of memory");
    }
    memcpy(c->pend + c->pend_len, data, len);
    c->pend_len += len;
    if (!c->want_out) {
        c->want_out = 1;
        set_events(c, idx, EPOLLIN | EPOLLOUT);
    }
}

static void flush_pending(int idx) {
    conn_t *c = &conns[idx];
    while (c->pend_len) {
        ssize_t n = send(c->fd, c->pend, c->pend_len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) return;
            fail_conn(idx, strerror(errno));
            return;
        }
        memmove(c->pend, c->pend + n, c->pend_len - n);
        c->pend_len -= n;
    }
    c->want_out = 0;
    set_events(c, idx, EPOLLIN);
}

/* ---- chat state ---- */

typedef struct {
    uint64_t next_seq;
    uint64_t outstanding;
    uint32_t got[SLOTS]; /* deliveries counted, per message slot */
} sender_t;

static sender_t sender_state[MAX_SENDERS];
static int measuring = 0, loading = 0;
static uint64_t deliveries = 0, deliveries_all = 0, messages_sent = 0, messages_done = 0;
static uint64_t notices = 0, errors = 0, skipped = 0, stray = 0;
static uint64_t reads = 0, lines_read = 0; /* in the window: how much arrives per recv */
static char errline[200] = "";
static char *pad;

static void note_error(const char *line, size_t len) {
    errors++;
    if (!errline[0]) {
        size_t n = len < sizeof errline - 1 ? len : sizeof errline - 1;
        memcpy(errline, line, n);
        errline[n] = 0;
        for (char *p = errline; *p; p++)
            if (*p == '"' || *p == '\\' || (unsigned char)*p < 32) *p = '?';
    }
}

static void ws_say(int idx, const char *text, size_t len);

static void chat_send(int s) {
    sender_t *st = &sender_state[s];
    char line[4096 + 32];
    uint64_t seq = st->next_seq++;
    /* The same text in either dialect: --size counts it with its LF. */
    int head = conns[s].irc ? snprintf(line, sizeof line, "PRIVMSG #chat :") : 0;
    int n = head + snprintf(line + head, sizeof line - head, "%" PRIu64 " %" PRIu64 " ", seq,
                            now_ns());
    int fill = msg_size - (n - head) - 1;
    if (fill > 0) {
        memcpy(line + n, pad, fill);
        n += fill;
    }
    if (conns[s].irc) line[n++] = '\r';
    line[n++] = '\n';
    st->got[seq % SLOTS] = 0;
    st->outstanding++;
    messages_sent++;
    if (ws) ws_say(s, line, n - 1);
    else send_bytes(s, line, n);
}

static void chat_fill_window(int s) {
    while (loading && sender_state[s].outstanding < (uint64_t)window && conns[s].state == C_UP)
        chat_send(s);
}

static void delivered(unsigned s, const char *p, const char *end, uint64_t now);
static void chat_delivered(unsigned s, uint64_t seq, uint64_t ts, uint64_t now);

/* A line from the room: "S<i>: <seq> <ns> ..." or a notice. */
static void irc_line(int idx, const char *line, size_t len, uint64_t now);

static void chat_line(int idx, const char *line, size_t len, uint64_t now) {
    conn_t *c = &conns[idx];
    if (c->irc) {
        irc_line(idx, line, len, now);
        return;
    }
    if (c->state == C_HELLO) {
        if (len >= 5 && memcmp(line, "HELLO", 5) == 0) {
            char nick[48];
            int n = snprintf(nick, sizeof nick, "NICK %s%d\n", idx < senders ? "S" : "r", idx);
            c->state = C_READY_WAIT;
            send_bytes(idx, nick, n);
        } else note_error(line, len);
        return;
    }
    if (c->state == C_READY_WAIT) {
        if (len >= 5 && memcmp(line, "READY", 5) == 0) {
            c->state = C_UP;
            setting_up--;
            up++;
        } else if (len >= 5 && memcmp(line, "RETRY", 5) == 0) {
            note_error(line, len);
            fail_conn(idx, "nickname refused");
        }
        return;
    }
    if (line[0] != 'S') {
        /* "* x joined", "[history] ...", "* error: ..." */
        if (len > 9 && memcmp(line, "* error: ", 9) == 0) note_error(line, len);
        else notices++;
        return;
    }
    const char *p = line + 1, *end = line + len;
    unsigned s = 0;
    while (p < end && *p >= '0' && *p <= '9') s = s * 10 + (*p++ - '0');
    if (p + 2 > end || p[0] != ':' || p[1] != ' ' || s >= (unsigned)senders) { stray++; return; }
    delivered(s, p + 2, end, now);
}

/* Sender s's message "<seq> <ns> ..." (from p to end) arrived. */
static void delivered(unsigned s, const char *p, const char *end, uint64_t now) {
    uint64_t seq = 0, ts = 0;
    while (p < end && *p >= '0' && *p <= '9') seq = seq * 10 + (*p++ - '0');
    if (p < end) p++;
    while (p < end && *p >= '0' && *p <= '9') ts = ts * 10 + (*p++ - '0');
    chat_delivered(s, seq, ts, now);
}

/* Sender s's message seq, sent at ts, reached one more client. */
static void chat_delivered(unsigned s, uint64_t seq, uint64_t ts, uint64_t now) {
    deliveries_all++;
    if (measuring) {
        deliveries++;
        record(now - ts);
    }
    sender_t *st = &sender_state[s];
    if (++st->got[seq % SLOTS] == (uint32_t)(nconns - 1)) {
        st->outstanding--;
        messages_done++;
        if (rate == 0) chat_fill_window(s);
    }
}

/* ---- the IRC dialect of the chat mode ---- */

static void irc_register(int idx) {
    char reg[96];
    int n = snprintf(reg, sizeof reg, "NICK %s%d\r\nUSER b 0 * :bench\r\n",
                     idx < senders ? "S" : "r", idx);
    conns[idx].state = C_READY_WAIT;
    send_bytes(idx, reg, n);
}

static int word_is(const char *p, const char *end, const char *word) {
    size_t n = strlen(word);
    return (size_t)(end - p) >= n && memcmp(p, word, n) == 0 && (p + n == end || p[n] == ' ');
}

/*
 * A line from an IRC server: ":S<i>!... PRIVMSG #chat :<seq> <ns> ..." is a
 * delivery; 001 and 366 move registration on; PING is answered; an error
 * numeric (4xx, 5xx) or ERROR is counted; anything else is a notice.
 */
static void irc_line(int idx, const char *line, size_t len, uint64_t now) {
    conn_t *c = &conns[idx];
    const char *p = line, *end = line + len, *nick = NULL, *nick_end = NULL;
    if (p < end && *p == '@') { /* tags */
        while (p < end && *p != ' ') p++;
        while (p < end && *p == ' ') p++;
    }
    if (p < end && *p == ':') {
        nick = ++p;
        while (p < end && *p != ' ' && *p != '!') p++;
        nick_end = p;
        while (p < end && *p != ' ') p++;
        while (p < end && *p == ' ') p++;
    }
    if (word_is(p, end, "PRIVMSG") && nick && c->state == C_UP) {
        const char *text = memchr(p, ':', end - p);
        unsigned s = 0;
        const char *q = nick + 1;
        if (*nick == 'S')
            while (q < nick_end && *q >= '0' && *q <= '9') s = s * 10 + (*q++ - '0');
        if (!text || *nick != 'S' || q != nick_end || s >= (unsigned)senders) { stray++; return; }
        /* "[history] ..." on JOIN is a notice, as on the line chat. */
        if (text + 1 < end && (text[1] < '0' || text[1] > '9')) { notices++; return; }
        delivered(s, text + 1, end, now);
        return;
    }
    if (word_is(p, end, "PING")) {
        char pong[600];
        size_t rest = end - (p + 4);
        if (rest > sizeof pong - 8) rest = sizeof pong - 8;
        memcpy(pong, "PONG", 4);
        memcpy(pong + 4, p + 4, rest);
        memcpy(pong + 4 + rest, "\r\n", 2);
        send_bytes(idx, pong, rest + 6);
        return;
    }
    if (end - p >= 3 && p[0] >= '0' && p[0] <= '9' && (p + 3 == end || p[3] == ' ')) {
        /* 422: no MOTD, which is no error. */
        if ((p[0] == '4' || p[0] == '5') && !word_is(p, end, "422")) {
            note_error(line, len);
            if (c->state != C_UP) fail_conn(idx, "refused at registration or JOIN");
        } else if (c->state == C_READY_WAIT && word_is(p, end, "001")) {
            c->state = C_JOIN_WAIT;
            send_bytes(idx, "JOIN #chat\r\n", 12);
        } else if (c->state == C_JOIN_WAIT && word_is(p, end, "366")) {
            c->state = C_UP;
            setting_up--;
            up++;
        }
        return;
    }
    if (word_is(p, end, "ERROR")) note_error(line, len);
    else notices++;
}

/* ---- WebSocket dialect (chat --ws) ----
 *
 * The web front's /ws (docs/protocol.md, "The web front"): an HTTP upgrade,
 * then one JSON object per text frame. Frames to the server are masked, as a
 * browser's are, with the key 0 (the server unmasks them all the same);
 * those from it are not. Only what the chat needs is parsed: the hello,
 * the join's answer, and "said" events whose text is "<seq> <ns> ...".
 */

static void ws_frame(int idx, const char *payload, size_t len) {
    char frame[4200];
    size_t h = 0;
    frame[h++] = (char)0x81; /* FIN, text */
    if (len < 126) {
        frame[h++] = (char)(0x80 | len);
    } else {
        frame[h++] = (char)(0x80 | 126);
        frame[h++] = (char)(len >> 8);
        frame[h++] = (char)(len & 0xFF);
    }
    memset(frame + h, 0, 4); /* the masking key */
    h += 4;
    if (h + len > sizeof frame) die("ws: frame too long");
    memcpy(frame + h, payload, len);
    send_bytes(idx, frame, h + len);
}

static void ws_say(int idx, const char *text, size_t len) {
    char json[4200];
    int n = snprintf(json, sizeof json, "{\"type\":\"say\",\"text\":\"%.*s\"}", (int)len, text);
    ws_frame(idx, json, n);
}

static void ws_upgrade(int idx) {
    char req[256];
    int n = snprintf(req, sizeof req,
                     "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n", port);
    conns[idx].state = C_UPGRADE;
    send_bytes(idx, req, n);
}

static const char *after(const char *p, const char *end, const char *what) {
    size_t n = strlen(what);
    for (; p + n <= end; p++)
        if (memcmp(p, what, n) == 0) return p + n;
    return NULL;
}

static void ws_message(int idx, const char *m, size_t len, uint64_t now) {
    conn_t *c = &conns[idx];
    const char *end = m + len, *p;
    if (c->state == C_HELLO) {
        if (!after(m, end, "\"type\":\"hello\"")) { note_error(m, len); return; }
        char join[80];
        int n = snprintf(join, sizeof join, "{\"type\":\"join\",\"nick\":\"%s%d\"}",
                         idx < senders ? "S" : "r", idx);
        c->state = C_READY_WAIT;
        ws_frame(idx, join, n);
        return;
    }
    if (c->state == C_READY_WAIT) {
        if (after(m, end, "\"type\":\"ok\"")) {
            c->state = C_UP;
            setting_up--;
            up++;
        } else {
            note_error(m, len);
            fail_conn(idx, "join refused");
        }
        return;
    }
    if (!(p = after(m, end, "{\"type\":\"said\",\"nick\":\"S"))) {
        /* joins, answers to "say", errors */
        if (after(m, end, "\"type\":\"error\"")) note_error(m, len);
        else notices++;
        return;
    }
    unsigned s = 0;
    while (p < end && *p >= '0' && *p <= '9') s = s * 10 + (*p++ - '0');
    if (s >= (unsigned)senders || !(p = after(p, end, "\"text\":\""))) { stray++; return; }
    uint64_t seq = 0, ts = 0;
    while (p < end && *p >= '0' && *p <= '9') seq = seq * 10 + (*p++ - '0');
    if (p < end) p++;
    while (p < end && *p >= '0' && *p <= '9') ts = ts * 10 + (*p++ - '0');
    chat_delivered(s, seq, ts, now);
}

/* The frames (or, first, the upgrade's answer) in buf; returns how much was used. */
static size_t ws_input(int idx, const char *buf, size_t total, uint64_t now) {
    conn_t *c = &conns[idx];
    size_t start = 0;
    if (c->state == C_UPGRADE) {
        const char *end = after(buf, buf + total, "\r\n\r\n");
        if (!end) return 0;
        if (total < 12 || memcmp(buf, "HTTP/1.1 101", 12) != 0) {
            note_error(buf, (size_t)(end - buf));
            fail_conn(idx, "upgrade refused");
            return total;
        }
        c->state = C_HELLO;
        start = end - buf;
    }
    while (total - start >= 2) {
        const unsigned char *f = (const unsigned char *)buf + start;
        size_t h = 2, len = f[1] & 0x7F;
        if (len == 126) {
            if (total - start < 4) break;
            len = ((size_t)f[2] << 8) | f[3];
            h = 4;
        } else if (len == 127) {
            if (total - start < 10) break;
            len = 0;
            for (int i = 2; i < 10; i++) len = (len << 8) | f[i];
            h = 10;
        }
        if (total - start < h + len) break;
        if (measuring) lines_read++;
        int opcode = f[0] & 0x0F;
        if (opcode == 1) ws_message(idx, (const char *)f + h, len, now);
        else if (opcode == 8) { closed_by_server++; fail_conn(idx, "closed by the server"); }
        start += h + len;
        if (c->fd < 0) return total;
    }
    return start;
}

/* ---- mail state ---- */

static uint64_t ops = 0, ops_all = 0;
static char *burst; /* request repeated depth times */

static void mail_send(int idx, int k) {
    conn_t *c = &conns[idx];
    uint64_t t = now_ns();
    for (int i = 0; i < k; i++) {
        c->sent[(c->head + c->count) % depth] = t;
        c->count++;
    }
    send_bytes(idx, burst, request_len * k);
}

static int mail_line(int idx, const char *line, size_t len, uint64_t now) {
    conn_t *c = &conns[idx];
    if (len >= 3 && memcmp(line, "KO ", 3) == 0) note_error(line, len);
    if (++c->lines_in_reply < reply_lines) return 0;
    c->lines_in_reply = 0;
    if (!c->count) { stray++; return 0; }
    uint64_t t = c->sent[c->head];
    c->head = (c->head + 1) % depth;
    c->count--;
    ops_all++;
    if (measuring) {
        ops++;
        record(now - t);
    }
    return loading;
}

/* ---- idle state ---- */

static void idle_line(int idx, const char *line, size_t len) {
    conn_t *c = &conns[idx];
    if (c->state == C_HELLO) {
        if (!(len >= 5 && memcmp(line, "HELLO", 5) == 0)) note_error(line, len);
        if (join) {
            char nick[48];
            int n = snprintf(nick, sizeof nick, "NICK i%d\n", idx);
            c->state = C_READY_WAIT;
            send_bytes(idx, nick, n);
            return;
        }
    } else if (c->state == C_READY_WAIT) {
        if (!(len >= 5 && memcmp(line, "READY", 5) == 0)) { note_error(line, len); return; }
    } else if (c->state == C_REPLY_WAIT) {
        if (len >= 3 && memcmp(line, "KO ", 3) == 0) note_error(line, len);
    } else {
        return; /* a notice to a joined client */
    }
    if (c->state != C_REPLY_WAIT && request) {
        c->state = C_REPLY_WAIT;
        send_bytes(idx, request, request_len);
        return;
    }
    c->state = C_UP;
    setting_up--;
    up++;
}

/* ---- the loop ---- */

static char rbuf[1 << 18];

static void connected(int idx) {
    conn_t *c = &conns[idx];
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) { fail_conn(idx, strerror(err)); return; }
    set_events(c, idx, EPOLLIN);
    if (mode[0] == 'c' && c->irc) {
        irc_register(idx);
    } else if (ws) {
        ws_upgrade(idx);
    } else if (mode[0] == 'c' || greeting) {
        c->state = C_HELLO;
    } else if (mode[0] == 'i' && request) {
        c->state = C_REPLY_WAIT;
        send_bytes(idx, request, request_len);
    } else {
        c->state = C_UP;
        setting_up--;
        up++;
    }
}

/* Read what there is; hand over each complete line (CRLF or LF removed). */
static void readable(int idx) {
    conn_t *c = &conns[idx];
    for (;;) {
        size_t have = c->carry_len;
        if (have) memcpy(rbuf, c->carry, have);
        ssize_t n = recv(c->fd, rbuf + have, sizeof rbuf - have, 0);
        if (n == 0) {
            closed_by_server++;
            fail_conn(idx, "closed by the server");
            return;
        }
        if (n < 0) {
            if (errno == EAGAIN) return;
            fail_conn(idx, strerror(errno));
            return;
        }
        uint64_t now = now_ns();
        size_t total = have + n, start = 0;
        if (measuring) reads++;
        int more = 0;
        if (ws) {
            start = ws_input(idx, rbuf, total, now);
            if (c->fd < 0) return;
        }
        while (!ws) {
            char *nl = memchr(rbuf + start, '\n', total - start);
            if (!nl) break;
            size_t end = nl - rbuf, len = end - start;
            if (len && rbuf[end - 1] == '\r') len--;
            const char *line = rbuf + start;
            start = end + 1;
            if (measuring) lines_read++;
            if (mode[0] == 'c') chat_line(idx, line, len, now);
            else if (mode[0] == 'm') more += mail_line(idx, line, len, now);
            else idle_line(idx, line, len);
            if (c->fd < 0) return;
        }
        if (more) mail_send(idx, more);
        c->carry_len = total - start;
        if (c->carry_len) {
            if (c->carry_len > c->carry_cap) {
                c->carry_cap = c->carry_len * 2;
                c->carry = realloc(c->carry, c->carry_cap);
                if (!c->carry) die("out of memory");
            }
            memcpy(c->carry, rbuf + start, c->carry_len);
        }
        if ((size_t)n < sizeof rbuf - have) return;
    }
}

static struct epoll_event events[1024];

/* One epoll_wait and what it reports; the timer's expirations are returned. */
static uint64_t poll_once(int timeout_ms, int timer_fd) {
    uint64_t fired = 0;
    int n = epoll_wait(epfd, events, 1024, timeout_ms);
    if (n < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
    for (int i = 0; i < n; i++) {
        uint32_t id = events[i].data.u32;
        if (id == ID_TIMER) {
            uint64_t k;
            if (read(timer_fd, &k, sizeof k) == sizeof k) fired += k;
            continue;
        }
        if (id == ID_STDIN) {
            hold_timeout = 0;
            continue;
        }
        conn_t *c = &conns[id];
        if (c->fd < 0) continue;
        if (c->state == C_CONNECTING) {
            connected(id);
            continue;
        }
        if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) readable(id);
        if (c->fd >= 0 && (events[i].events & EPOLLOUT)) flush_pending(id);
    }
    return fired;
}

/* Open every connection, a few at a time, until all are up or the deadline. */
static double setup_all(void) {
    uint64_t t0 = now_ns(), deadline = t0 + (uint64_t)(setup_timeout * 1e9);
    while (up + failed < nconns) {
        while (next_to_open < nconns && setting_up < concurrency) open_conn(next_to_open++);
        if (now_ns() > deadline)
            die("setup: %d of %d connections up, %d failed, after %.0f s%s%s", up, nconns,
                failed, setup_timeout, errline[0] ? "; first error: " : "", errline);
        poll_once(100, -1);
    }
    if (failed) die("setup: %d of %d connections failed; first error: %s", failed, nconns, errline);
    return (now_ns() - t0) / 1e9;
}

/* Read until nothing arrives for quiet_ms (join notices still on their way). */
static void settle(int quiet_ms, double limit_s) {
    uint64_t end = now_ns() + (uint64_t)(limit_s * 1e9);
    uint64_t before = notices + deliveries_all;
    uint64_t last = now_ns();
    while (now_ns() < end) {
        poll_once(20, -1);
        if (notices + deliveries_all != before) {
            before = notices + deliveries_all;
            last = now_ns();
        } else if (now_ns() - last > (uint64_t)quiet_ms * 1000000u) {
            return;
        }
    }
}

static void raise_nofile(void) {
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
        r.rlim_cur = r.rlim_max;
        setrlimit(RLIMIT_NOFILE, &r);
    }
    getrlimit(RLIMIT_NOFILE, &r);
    if (r.rlim_cur < (rlim_t)nconns + 16)
        die("RLIMIT_NOFILE is %lu: too low for %d connections", (unsigned long)r.rlim_cur, nconns);
}

static char *unescape(const char *s, size_t *len) {
    char *r = malloc(strlen(s) + 1), *w = r;
    for (; *s; s++) {
        if (*s == '\\' && s[1]) {
            s++;
            *w++ = *s == 'n' ? '\n' : *s == 'r' ? '\r' : *s == 't' ? '\t' : *s;
        } else *w++ = *s;
    }
    *len = w - r;
    return r;
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen chat|mail|idle --port P --conns N [options]\n"
            "  chat on two nodes: --port2 P2 (every other connection) [--cross: senders on P,"
            " receivers on P2]\n"
            "  --extra-pid PID (up to 4): CPU of other processes over the window\n"
            "  chat: --senders S --window W | --rate DELIVERIES_PER_S, --size BYTES\n"
            "        [--dialect line|irc|mixed] [--irc-port P (mixed)] [--ws]\n"
            "  mail: --request 'COUNT cookie\\n' --depth D --reply-lines K\n"
            "  idle: [--greeting] [--join] [--request STR] --hold S\n"
            "  all:  --warmup S --duration S --setup-timeout S --server-pid PID\n");
    exit(1);
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    mode = argv[1];
    if (strcmp(mode, "chat") && strcmp(mode, "mail") && strcmp(mode, "idle")) usage();
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define OPT(name) (strcmp(a, name) == 0 && v && ++i)
        if (OPT("--port")) port = atoi(v);
        else if (OPT("--port2")) port2 = atoi(v);
        else if (strcmp(a, "--cross") == 0) cross = 1;
        else if (OPT("--extra-pid")) {
            if (n_extra == 4) die("at most 4 --extra-pid");
            extra_pids[n_extra++] = atoi(v);
        }
        else if (OPT("--conns")) nconns = atoi(v);
        else if (OPT("--senders")) senders = atoi(v);
        else if (OPT("--window")) window = atoi(v);
        else if (OPT("--rate")) rate = atof(v);
        else if (OPT("--warmup")) warmup = atof(v);
        else if (OPT("--duration")) duration = atof(v);
        else if (OPT("--setup-timeout")) setup_timeout = atof(v);
        else if (OPT("--hold")) hold_timeout = atof(v);
        else if (OPT("--server-pid")) server_pid = atoi(v);
        else if (OPT("--size")) msg_size = atoi(v);
        else if (OPT("--depth")) depth = atoi(v);
        else if (OPT("--reply-lines")) reply_lines = atoi(v);
        else if (OPT("--concurrency")) concurrency = atoi(v);
        else if (OPT("--request")) request = unescape(v, &request_len);
        else if (OPT("--irc-port")) irc_port = atoi(v);
        else if (OPT("--dialect")) {
            if (strcmp(v, "line") == 0) dialect = D_LINE;
            else if (strcmp(v, "irc") == 0) dialect = D_IRC;
            else if (strcmp(v, "mixed") == 0) dialect = D_MIXED;
            else usage();
        }
        else if (strcmp(a, "--greeting") == 0) greeting = 1;
        else if (strcmp(a, "--join") == 0) greeting = join = 1;
        else if (strcmp(a, "--ws") == 0) ws = 1;
        else usage();
    }
    if (port <= 0 || nconns <= 0) usage();
    if (mode[0] == 'c' && (senders < 1 || senders > MAX_SENDERS || senders >= nconns))
        die("--senders must be 1 to %d and fewer than --conns", MAX_SENDERS);
    if (mode[0] == 'c' && (window < 1 || window >= SLOTS)) die("--window out of range");
    if (mode[0] == 'm' && (!request || depth < 1 || reply_lines < 1)) usage();
    if (ws && mode[0] != 'c') die("--ws is for chat");
    if (msg_size < 40 || msg_size > 4000) die("--size must be 40 to 4000");
    if (dialect == D_MIXED && (mode[0] != 'c' || irc_port <= 0))
        die("--dialect mixed is for chat, with --irc-port");
    if (dialect != D_LINE && mode[0] != 'c') die("--dialect is for chat");

    /* Every phase is bounded; this bounds them all together. */
    signal(SIGALRM, on_alarm);
    alarm((unsigned)(setup_timeout * 2 + warmup + duration + hold_timeout + 60));
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();

    conns = calloc(nconns, sizeof *conns);
    for (int i = 0; i < nconns; i++) {
        conns[i].fd = -1;
        conns[i].irc = dialect == D_IRC || (dialect == D_MIXED && i % 2 == 1);
    }
    pad = malloc(4096);
    memset(pad, 'x', 4096);
    if (mode[0] == 'm') {
        for (int i = 0; i < nconns; i++) conns[i].sent = calloc(depth, sizeof(uint64_t));
        burst = malloc(request_len * depth);
        for (int i = 0; i < depth; i++) memcpy(burst + i * request_len, request, request_len);
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    target.sin_family = AF_INET;
    target.sin_port = htons(port);
    target.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    irc_target = target;
    irc_target.sin_port = htons(irc_port);
    target2 = target;
    target2.sin_port = htons(port2);

    double setup_s = setup_all();

    if (mode[0] == 'i') {
        /* Hold every connection until stdin closes (or says anything). */
        emit("{\"mode\": \"idle\", \"conns\": %d, \"up\": %d, \"errors\": %" PRIu64
             ", \"setup_s\": %.3f}\n", nconns, up, errors, setup_s);
        fputs(out, stdout);
        fflush(stdout);
        struct epoll_event e = {.events = EPOLLIN, .data.u32 = ID_STDIN};
        epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &e);
        uint64_t end = now_ns() + (uint64_t)(hold_timeout * 1e9);
        while (hold_timeout > 0 && now_ns() < end) poll_once(100, -1);
        for (int i = 0; i < nconns; i++)
            if (conns[i].fd >= 0) close(conns[i].fd);
        return 0;
    }

    if (mode[0] == 'c') settle(300, setup_timeout);

    /* Load: warm up, then the measuring window. */
    int timer_fd = -1;
    double msg_rate = 0;
    if (mode[0] == 'c' && rate > 0) {
        msg_rate = rate / (nconns - 1);
        timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        uint64_t interval = (uint64_t)(1e9 / msg_rate);
        struct itimerspec its = {
            .it_interval = {interval / 1000000000u, interval % 1000000000u},
            .it_value = {0, 1000000}};
        timerfd_settime(timer_fd, 0, &its, NULL);
        struct epoll_event e = {.events = EPOLLIN, .data.u32 = ID_TIMER};
        epoll_ctl(epfd, EPOLL_CTL_ADD, timer_fd, &e);
    }
    loading = 1;
    uint64_t t_load = now_ns();
    if (mode[0] == 'c' && rate == 0)
        for (int s = 0; s < senders; s++) chat_fill_window(s);
    if (mode[0] == 'm')
        for (int i = 0; i < nconns; i++) mail_send(i, depth);

    uint64_t t_start = t_load + (uint64_t)(warmup * 1e9);
    uint64_t t_end = t_start + (uint64_t)(duration * 1e9);
    double user0 = 0, sys0 = 0, gen0 = 0, busy0 = 0, all0 = 0, extra0[4][2];
    uint64_t sent0 = 0, done0 = 0, skipped0 = 0, errors0 = 0;
    uint64_t next_msg = 0;
    int turn = 0;
    for (;;) {
        uint64_t now = now_ns();
        if (!measuring && now >= t_start) {
            measuring = 1;
            proc_cpu(server_pid, &user0, &sys0);
            for (int k = 0; k < n_extra; k++) proc_cpu(extra_pids[k], &extra0[k][0], &extra0[k][1]);
            gen0 = self_cpu_s();
            machine_cpu_s(&busy0, &all0);
            sent0 = messages_sent;
            done0 = messages_done;
            skipped0 = skipped;
            errors0 = errors;
            t_start = now;
            t_end = t_start + (uint64_t)(duration * 1e9);
        }
        if (measuring && now >= t_end) break;
        if (up == 0) die("every connection was lost; first error: %s", errline);
        uint64_t fired = poll_once(10, timer_fd);
        /* Open loop: one message per tick, senders in turn, never waiting. */
        for (uint64_t k = 0; k < fired; k++, next_msg++) {
            int s = turn++ % senders;
            if (sender_state[s].outstanding >= SLOTS - 1 || conns[s].state != C_UP) {
                skipped++;
                continue;
            }
            chat_send(s);
        }
    }
    uint64_t t_stop = now_ns();
    double user1, sys1, gen1 = self_cpu_s(), busy1, all1;
    proc_cpu(server_pid, &user1, &sys1);
    double extra_s[4];
    for (int k = 0; k < n_extra; k++) {
        double u, sy;
        proc_cpu(extra_pids[k], &u, &sy);
        extra_s[k] = u >= 0 && extra0[k][0] >= 0 ? (u - extra0[k][0]) + (sy - extra0[k][1]) : -1;
    }
    machine_cpu_s(&busy1, &all1);
    loading = 0;
    double secs = (t_stop - t_start) / 1e9;
    double srv = user0 >= 0 && user1 >= 0 ? (user1 - user0) + (sys1 - sys0) : -1;
    double gen = gen1 - gen0;
    uint64_t count = mode[0] == 'c' ? deliveries : ops;

    emit("{\"mode\": \"%s\", \"conns\": %d, \"seconds\": %.4f, \"setup_s\": %.3f", mode, nconns,
         secs, setup_s);
    if (mode[0] == 'c') {
        emit(", \"senders\": %d, \"window\": %d, \"offered_per_s\": %.1f, \"size\": %d", senders,
             rate > 0 ? 0 : window, rate, msg_size);
        emit(", \"dialect\": \"%s\"",
             dialect == D_IRC ? "irc" : dialect == D_MIXED ? "mixed" : "line");
        emit(", \"deliveries\": %" PRIu64 ", \"per_s\": %.1f", deliveries, deliveries / secs);
        emit(", \"messages_sent\": %" PRIu64 ", \"messages_done\": %" PRIu64
             ", \"skipped\": %" PRIu64 ", \"notices\": %" PRIu64 ", \"stray\": %" PRIu64,
             messages_sent - sent0, messages_done - done0, skipped - skipped0, notices, stray);
    } else {
        emit(", \"depth\": %d, \"ops\": %" PRIu64 ", \"per_s\": %.1f, \"stray\": %" PRIu64, depth,
             ops, ops / secs, stray);
    }
    emit(", \"errors\": %" PRIu64 ", \"first_error\": \"%s\", \"lost\": %d", errors - errors0, errline,
         failed);
    emit(", \"latency_us\": {\"n\": %" PRIu64 ", \"mean\": %.1f, \"p50\": %.1f, \"p90\": %.1f"
         ", \"p99\": %.1f, \"p999\": %.1f, \"max\": %.1f}",
         hist_n, hist_n ? hist_sum_us / hist_n : 0.0, percentile(0.5), percentile(0.9),
         percentile(0.99), percentile(0.999), hist_max_ns / 1000.0);
    emit(", \"server_cpu_s\": %.3f, \"server_user_s\": %.3f, \"server_sys_s\": %.3f", srv,
         user1 - user0, sys1 - sys0);
    emit(", \"gen_cpu_s\": %.3f, \"extra_cpu_s\": [", gen);
    for (int k = 0; k < n_extra; k++) emit("%s%.3f", k ? ", " : "", extra_s[k]);
    emit("]");
    emit(", \"machine_busy_s\": %.3f, \"machine_cpu_s\": %.3f", busy1 - busy0, all1 - all0);
    emit(", \"lines_per_read\": %.2f", reads ? (double)lines_read / reads : 0.0);
    emit(", \"server_cpu_us_per_op\": %.3f, \"gen_cpu_us_per_op\": %.3f}\n",
         count && srv >= 0 ? srv * 1e6 / count : -1.0, count ? gen * 1e6 / count : -1.0);
    fputs(out, stdout);
    fflush(stdout);
    for (int i = 0; i < nconns; i++)
        if (conns[i].fd >= 0) close(conns[i].fd);
    return 0;
}
