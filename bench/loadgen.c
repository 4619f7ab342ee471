/*
 * MQTT 3.1.1 load generator for bench/ (one thread, epoll, all connections in one loop).
 *
 * Why C: on a 2-core machine the generator shares the CPU with the broker under
 * test, so it must cost far less per message than the fastest broker measured
 * (mosquitto). Publishers copy a pre-encoded PUBLISH template into large
 * buffers (only packet id, sequence number and timestamp change) and write
 * tens of kilobytes per send(); subscribers read large chunks and walk fixed
 * headers; acknowledgements are batched per read.
 *
 * Modes (output: one JSON object on stdout; diagnostics on stderr):
 *   loadgen run  --port P [--publishers N] [--subscribers M] [--qos 0|1|2]
 *                [--filter wildcard|exact] [--payload BYTES] [--warmup S]
 *                [--duration S] [--window N] [--transit N (0: no limit)] [--rate MSG_PER_S]
 *                [--persistent 0|1] [--broker-pid PID] [--tag STR]
 *                [--drain-timeout S] [--drain-idle S] [--messages N] [--slow-rate MSG_PER_S]
 *     --messages N: publish N messages in all, then drain (the window ends when they are out).
 *     --slow-rate R: subscriber 0 reads at most R messages per second; with more than one
 *                subscriber it subscribes to publisher 0's topic only (the others keep the
 *                wildcard): a slow consumer next to fast ones. The result has per-publisher and per-subscriber figures.
 *   loadgen idle --port P --connections N [--concurrency C] [--tag STR]
 *                prints "ready ESTABLISHED FAILED SECONDS" once connected, holds the
 *                connections until a line or EOF on stdin, then disconnects.
 *   Both modes take --tls CAFILE: MQTT over TLS (OpenSSL), the broker's certificate
 *   checked against CAFILE; each connection's handshake is done before its CONNECT.
 *   run takes --ws PATH: MQTT over WebSockets. After the TCP connect, an HTTP upgrade
 *   to PATH with the subprotocol "mqtt" (the 101 answer and its Sec-WebSocket-Accept
 *   are checked); then every MQTT packet goes out in a masked binary frame of its own
 *   (as browsers and paho send them; still batched into large send() calls), and the
 *   broker's frames are unwrapped before the MQTT parser sees the bytes (binary and
 *   continuation frames, 16/64-bit lengths; ping answered with pong; close ends the
 *   connection).
 *
 * Payload layout (little endian, native): u32 publisher index, u32 sequence
 * number, u64 CLOCK_MONOTONIC send time in ns, then filler up to --payload.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>

#define OUT_CHUNK (64 * 1024)   /* bytes of PUBLISH packets generated per send() */
#define IN_CHUNK (256 * 1024)   /* bytes read per recv() */
#define KEEPALIVE 300           /* seconds; runs never idle that long */
#define PAYLOAD_HEADER 16

/* ------------------------------------------------------------------ utilities */

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loadgen: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n);
    if (!q && n) die("out of memory (%zu bytes)", n);
    return q;
}

static void *xcalloc(size_t n, size_t size) {
    void *q = calloc(n ? n : 1, size ? size : 1);
    if (!q) die("out of memory");
    return q;
}

static int64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* This process's CPU seconds in user space and in the kernel. */
static void self_cpu(double *user, double *sys) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    *user = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6;
    *sys = ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* CPU seconds (all threads) of another process in user space and in the kernel; -1 if unreadable. */
static void proc_cpu(int pid, double *user, double *sys) {
    *user = *sys = -1;
    if (pid <= 0) return;
    char path[64], buf[2048];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* the command name may contain spaces */
    if (!p) return;
    p += 2;
    unsigned long long utime = 0, stime = 0;
    /* fields after ')': state(3) ppid(4) ... utime(14) stime(15) */
    for (int field = 3; field <= 15 && *p; field++) {
        char *end;
        if (field == 14) utime = strtoull(p, &end, 10);
        else if (field == 15) stime = strtoull(p, &end, 10);
        else end = strchr(p, ' ');
        if (!end) return;
        p = end + (*end == ' ');
    }
    *user = (double)utime / (double)sysconf(_SC_CLK_TCK);
    *sys = (double)stime / (double)sysconf(_SC_CLK_TCK);
}

/* Busy CPU seconds of the whole machine (all cores) from /proc/stat. */
static double machine_busy_s(void) {
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return -1;
    unsigned long long v[10] = {0};
    int got = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                     &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]);
    fclose(f);
    if (got < 7) return -1;
    /* user nice system idle iowait irq softirq steal guest guest_nice: busy = all but idle+iowait
       (guest time is already counted in user) */
    unsigned long long busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    return (double)busy / (double)sysconf(_SC_CLK_TCK);
}

static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* ------------------------------------------------------------------ buffers */

typedef struct {
    unsigned char *data;
    size_t len; /* bytes held */
    size_t off; /* bytes already consumed/sent from the front */
    size_t cap;
} buf_t;

static void buf_reserve(buf_t *b, size_t extra) {
    if (b->off && b->off == b->len) b->off = b->len = 0;
    if (b->len + extra <= b->cap) return;
    if (b->off) { /* compact first */
        memmove(b->data, b->data + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
        if (b->len + extra <= b->cap) return;
    }
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) cap *= 2;
    b->data = xrealloc(b->data, cap);
    b->cap = cap;
}

static void buf_put(buf_t *b, const void *src, size_t n) {
    buf_reserve(b, n);
    memcpy(b->data + b->len, src, n);
    b->len += n;
}

static size_t buf_pending(const buf_t *b) { return b->len - b->off; }

/* ------------------------------------------------------------------ WebSocket frames (--ws PATH) */

static const char *ws_path; /* NULL: MQTT straight on the stream */
/* Client frames must be masked (RFC 6455 5.3); a fixed key is allowed and keeps templates fixed. */
static const unsigned char ws_mask[4] = {0x5a, 0xc3, 0x17, 0x8e};

/* The header of a masked frame (FIN set) carrying n bytes; returns its length (at most 14). */
static size_t ws_header(unsigned char *h, unsigned char opcode, size_t n) {
    size_t i = 0;
    h[i++] = (unsigned char)(0x80 | opcode);
    if (n < 126) {
        h[i++] = (unsigned char)(0x80 | n);
    } else if (n <= 0xffff) {
        h[i++] = 0x80 | 126;
        h[i++] = (unsigned char)(n >> 8);
        h[i++] = (unsigned char)n;
    } else {
        h[i++] = 0x80 | 127;
        for (int k = 7; k >= 0; k--) h[i++] = (unsigned char)((uint64_t)n >> (8 * k));
    }
    memcpy(h + i, ws_mask, 4);
    return i + 4;
}

/* XOR with the mask; offset is the position of p[0] within the frame's payload. */
static void ws_apply_mask(unsigned char *p, size_t n, size_t offset) {
    for (size_t i = 0; i < n; i++) p[i] ^= ws_mask[(offset + i) & 3];
}

/* Append one frame (opcode, payload) to b. */
static void ws_put_frame(buf_t *b, unsigned char opcode, const void *data, size_t n) {
    unsigned char h[14];
    size_t hl = ws_header(h, opcode, n);
    buf_reserve(b, hl + n);
    memcpy(b->data + b->len, h, hl);
    memcpy(b->data + b->len + hl, data, n);
    ws_apply_mask(b->data + b->len + hl, n, 0);
    b->len += hl + n;
}

/* Append one MQTT packet to an output buffer: as it is, or in a binary frame with --ws. */
static void put_packet(buf_t *b, const void *pkt, size_t n) {
    if (ws_path) ws_put_frame(b, 0x2, pkt, n);
    else buf_put(b, pkt, n);
}

/* Parse a server frame header: 1 and its fields if complete, 0 if incomplete, -1 if not allowed
   (masked, reserved bits, an oversized or fragmented control frame). */
static int ws_parse_header(const unsigned char *p, size_t avail, int *opcode, uint64_t *len, size_t *hl) {
    if (avail < 2) return 0;
    if ((p[0] & 0x70) || (p[1] & 0x80)) return -1;
    *opcode = p[0] & 0x0f;
    uint64_t n = p[1] & 0x7f;
    size_t h = 2;
    if (n == 126) {
        if (avail < 4) return 0;
        n = ((uint64_t)p[2] << 8) | p[3];
        h = 4;
    } else if (n == 127) {
        if (avail < 10) return 0;
        n = 0;
        for (int k = 0; k < 8; k++) n = (n << 8) | p[2 + k];
        h = 10;
    }
    if (*opcode >= 8 && (n > 125 || !(p[0] & 0x80))) return -1;
    *len = n;
    *hl = h;
    return 1;
}

/* ------------------------------------------------------------------ MQTT encoding */

static size_t put_varint(unsigned char *p, size_t v) {
    size_t i = 0;
    do {
        unsigned char byte = v % 128;
        v /= 128;
        if (v) byte |= 0x80;
        p[i++] = byte;
    } while (v);
    return i;
}

static size_t put_str(unsigned char *p, const char *s, size_t n) {
    p[0] = (unsigned char)(n >> 8);
    p[1] = (unsigned char)n;
    memcpy(p + 2, s, n);
    return n + 2;
}

/* CONNECT for MQTT 3.1.1 with a client id, no will, no credentials. */
static size_t encode_connect(unsigned char *out, const char *client_id, int clean) {
    unsigned char body[512];
    size_t n = 0;
    n += put_str(body + n, "MQTT", 4);
    body[n++] = 4; /* protocol level 3.1.1 */
    body[n++] = clean ? 0x02 : 0x00;
    body[n++] = KEEPALIVE >> 8;
    body[n++] = KEEPALIVE & 0xff;
    n += put_str(body + n, client_id, strlen(client_id));
    size_t h = 0;
    out[h++] = 0x10;
    h += put_varint(out + h, n);
    memcpy(out + h, body, n);
    return h + n;
}

static size_t encode_subscribe(unsigned char *out, uint16_t pid, const char *filter, int qos) {
    unsigned char body[512];
    size_t n = 0;
    body[n++] = pid >> 8;
    body[n++] = pid & 0xff;
    n += put_str(body + n, filter, strlen(filter));
    body[n++] = (unsigned char)qos;
    size_t h = 0;
    out[h++] = 0x82;
    h += put_varint(out + h, n);
    memcpy(out + h, body, n);
    return h + n;
}

static void put_ack(buf_t *b, unsigned char type_byte, uint16_t pid) {
    unsigned char p[4] = {type_byte, 2, (unsigned char)(pid >> 8), (unsigned char)pid};
    put_packet(b, p, 4);
}

/* Parse a fixed header: returns header length (type byte + varint), 0 if incomplete, -1 if malformed. */
static int parse_fixed_header(const unsigned char *p, size_t avail, size_t *remaining) {
    if (avail < 2) return 0;
    size_t value = 0, mult = 1;
    for (int i = 1; i <= 4; i++) {
        if ((size_t)i >= avail) return 0;
        value += (p[i] & 0x7f) * mult;
        if (!(p[i] & 0x80)) {
            *remaining = value;
            return i + 1;
        }
        mult *= 128;
    }
    return -1;
}

/* ------------------------------------------------------------------ blocking setup helpers */

static int connect_tcp(const char *host, int port, int nonblocking) {
    int fd = socket(AF_INET, SOCK_STREAM | (nonblocking ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) die("bad host %s", host);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* ------------------------------------------------------------------ TLS (--tls CAFILE) */

static SSL_CTX *tls_ctx;  /* NULL: plain TCP */
static SSL **tls_of_fd;   /* the TLS session on each descriptor, NULL for plain ones */
static int tls_fd_limit;

static void tls_init(const char *cafile) {
    tls_ctx = SSL_CTX_new(TLS_client_method());
    if (!tls_ctx || SSL_CTX_load_verify_locations(tls_ctx, cafile, NULL) != 1)
        die("--tls %s: cannot load the CA certificates", cafile);
    SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_PEER, NULL);
    /* Non-blocking writes of large buffers: partial writes, and a retry may pass a moved buffer. */
    SSL_CTX_set_mode(tls_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    tls_fd_limit = rl.rlim_cur == RLIM_INFINITY ? 1 << 20 : (int)rl.rlim_cur;
    tls_of_fd = calloc((size_t)tls_fd_limit, sizeof(SSL *));
    if (!tls_of_fd) die("out of memory");
}

/* The TLS handshake on a connected blocking socket; returns 0 or an error message. */
static const char *tls_attach(int fd) {
    if (!tls_ctx) return NULL;
    if (fd >= tls_fd_limit) return "descriptor beyond the open-file limit";
    SSL *ssl = SSL_new(tls_ctx);
    if (!ssl || SSL_set_fd(ssl, fd) != 1) return "SSL_new failed";
    if (SSL_connect(ssl) != 1) {
        static char why[200];
        unsigned long e = ERR_get_error();
        snprintf(why, sizeof why, "TLS handshake: %s", e ? ERR_reason_error_string(e) : strerror(errno));
        SSL_free(ssl);
        return why;
    }
    tls_of_fd[fd] = ssl;
    return NULL;
}

/* send()/recv() on plain or TLS descriptors; -1 with errno EAGAIN when TLS must wait for the socket. */
static ssize_t io_send(int fd, const void *data, size_t n, int flags) {
    SSL *ssl = tls_ctx ? tls_of_fd[fd] : NULL;
    if (!ssl) return send(fd, data, n, flags);
    int w = SSL_write(ssl, data, n > INT32_MAX ? INT32_MAX : (int)n);
    if (w > 0) return w;
    int err = SSL_get_error(ssl, w);
    if (err == SSL_ERROR_WANT_WRITE || err == SSL_ERROR_WANT_READ) errno = EAGAIN;
    else if (err != SSL_ERROR_SYSCALL || errno == 0) errno = EIO;
    return -1;
}

static ssize_t io_recv(int fd, void *data, size_t n) {
    SSL *ssl = tls_ctx ? tls_of_fd[fd] : NULL;
    if (!ssl) return recv(fd, data, n, 0);
    int r = SSL_read(ssl, data, n > INT32_MAX ? INT32_MAX : (int)n);
    if (r > 0) return r;
    int err = SSL_get_error(ssl, r);
    if (err == SSL_ERROR_ZERO_RETURN) return 0;
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) { errno = EAGAIN; return -1; }
    if (err == SSL_ERROR_SYSCALL && errno == 0) return 0; /* EOF without close_notify */
    if (err != SSL_ERROR_SYSCALL) errno = EIO;
    return -1;
}

static void io_close(int fd) {
    if (tls_ctx && fd >= 0 && fd < tls_fd_limit && tls_of_fd[fd]) {
        SSL_free(tls_of_fd[fd]);
        tls_of_fd[fd] = NULL;
    }
    close(fd);
}

static void send_all_blocking(int fd, const void *data, size_t n) {
    const unsigned char *p = data;
    while (n) {
        ssize_t w = io_send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            die("send during setup: %s", strerror(errno));
        }
        p += w;
        n -= (size_t)w;
    }
}

static void recv_exact(int fd, unsigned char *p, size_t n, const char *what) {
    while (n) {
        ssize_t r = io_recv(fd, p, n);
        if (r == 0) die("broker closed the connection while waiting for %s", what);
        if (r < 0) {
            if (errno == EINTR) continue;
            die("waiting for %s: %s", what, strerror(errno));
        }
        p += r;
        n -= (size_t)r;
    }
}

/* Send one MQTT packet (blocking), in a frame with --ws. */
static void send_packet_blocking(int fd, const void *pkt, size_t n) {
    if (!ws_path) {
        send_all_blocking(fd, pkt, n);
        return;
    }
    buf_t b = {0};
    ws_put_frame(&b, 0x2, pkt, n);
    send_all_blocking(fd, b.data, b.len);
    free(b.data);
}

/* Payload bytes of the current server frame not yet read by a blocking reader; handed to the
   connection's own frame state when it goes non-blocking (ws_adopt_setup_frame). */
static uint64_t ws_setup_left;

/* Read n bytes of MQTT stream (blocking): with --ws, unwrapped from the server's frames. */
static void recv_mqtt_exact(int fd, unsigned char *p, size_t n, const char *what) {
    if (!ws_path) {
        recv_exact(fd, p, n, what);
        return;
    }
    while (n) {
        if (ws_setup_left) {
            size_t m = n < ws_setup_left ? n : (size_t)ws_setup_left;
            recv_exact(fd, p, m, what);
            p += m;
            n -= m;
            ws_setup_left -= m;
            continue;
        }
        unsigned char h[10], payload[125];
        int opcode = 0;
        uint64_t len = 0;
        size_t hl = 0, got = 2;
        recv_exact(fd, h, 2, what);
        int ok;
        while ((ok = ws_parse_header(h, got, &opcode, &len, &hl)) == 0) {
            recv_exact(fd, h + got, 1, what);
            got++;
        }
        if (ok < 0) die("malformed WebSocket frame while waiting for %s", what);
        if (opcode == 0 || opcode == 2) {
            ws_setup_left = len;
            continue;
        }
        if (opcode < 8) die("WebSocket frame with opcode %d while waiting for %s", opcode, what);
        recv_exact(fd, payload, (size_t)len, what);
        if (opcode == 8) die("WebSocket close frame from the broker while waiting for %s", what);
        if (opcode == 9) { /* ping: pong with the same payload */
            buf_t b = {0};
            ws_put_frame(&b, 0xa, payload, (size_t)len);
            send_all_blocking(fd, b.data, b.len);
            free(b.data);
        }
    }
}

/* The HTTP upgrade to WebSocket on a connected blocking socket; returns 0 or an error message. */
static const char *ws_upgrade(int fd, const char *host, int port) {
    static char why[300];
    unsigned char nonce[16];
    char key[32], request[1024], response[4096];
    for (int i = 0; i < 16; i++) nonce[i] = (unsigned char)random();
    EVP_EncodeBlock((unsigned char *)key, nonce, 16);
    int n = snprintf(request, sizeof request,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n",
                     ws_path, host, port, key);
    send_all_blocking(fd, request, (size_t)n);
    size_t got = 0; /* byte by byte: nothing after the header may be consumed */
    while (got < 4 || memcmp(response + got - 4, "\r\n\r\n", 4)) {
        if (got == sizeof response - 1) return "WebSocket upgrade: response header too long";
        ssize_t r = io_recv(fd, response + got, 1);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            snprintf(why, sizeof why, "WebSocket upgrade: %s after %zu bytes of response",
                     r == 0 ? "connection closed" : strerror(errno), got);
            return why;
        }
        got++;
    }
    response[got] = 0;
    if (strncmp(response, "HTTP/1.1 101", 12)) {
        snprintf(why, sizeof why, "WebSocket upgrade refused: %.*s", (int)strcspn(response, "\r\n"), response);
        return why;
    }
    /* Sec-WebSocket-Accept = base64(SHA-1(key + the RFC 6455 GUID)) */
    char keyed[128], accept[64];
    unsigned char digest[SHA_DIGEST_LENGTH];
    snprintf(keyed, sizeof keyed, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", key);
    SHA1((const unsigned char *)keyed, strlen(keyed), digest);
    EVP_EncodeBlock((unsigned char *)accept, digest, SHA_DIGEST_LENGTH);
    const char *field = strcasestr(response, "\r\nSec-WebSocket-Accept:");
    if (!field) return "WebSocket upgrade: no Sec-WebSocket-Accept";
    field += strlen("\r\nSec-WebSocket-Accept:");
    field += strspn(field, " \t");
    if (strncmp(field, accept, strlen(accept))) return "WebSocket upgrade: wrong Sec-WebSocket-Accept";
    const char *proto = strcasestr(response, "\r\nSec-WebSocket-Protocol:");
    if (!proto || strncmp(proto + strlen("\r\nSec-WebSocket-Protocol:") + strspn(proto + strlen("\r\nSec-WebSocket-Protocol:"), " \t"), "mqtt", 4))
        return "WebSocket upgrade: the broker did not choose the subprotocol mqtt";
    return NULL;
}

/* Read one whole packet (blocking, with the socket's receive timeout); returns its first byte. */
static unsigned char read_packet(int fd, unsigned char *body, size_t cap, size_t *len, const char *what) {
    unsigned char head[5];
    recv_mqtt_exact(fd, head, 2, what);
    size_t hl = 2;
    while (head[hl - 1] & 0x80) {
        if (hl == 5) die("malformed remaining length while waiting for %s", what);
        recv_mqtt_exact(fd, head + hl, 1, what);
        hl++;
    }
    size_t remaining = 0;
    parse_fixed_header(head, hl, &remaining);
    if (remaining > cap) die("packet of %zu bytes while waiting for %s", remaining, what);
    recv_mqtt_exact(fd, body, remaining, what);
    *len = remaining;
    return head[0];
}

static void set_timeout(int fd, double seconds) {
    struct timeval tv = {(time_t)seconds, (suseconds_t)((seconds - (time_t)seconds) * 1e6)};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

/* Connect and complete the MQTT handshake with blocking I/O; returns the socket. */
static int mqtt_connect_blocking(const char *host, int port, const char *client_id, int clean) {
    int fd = connect_tcp(host, port, 0);
    if (fd < 0) die("connect to %s:%d: %s", host, port, strerror(errno));
    set_timeout(fd, 30);
    const char *tls_error = tls_attach(fd);
    if (tls_error) die("%s:%d: %s", host, port, tls_error);
    const char *ws_error = ws_path ? ws_upgrade(fd, host, port) : NULL;
    if (ws_error) die("%s:%d: %s", host, port, ws_error);
    unsigned char pkt[600], body[64];
    size_t n = encode_connect(pkt, client_id, clean), len;
    send_packet_blocking(fd, pkt, n);
    unsigned char type = read_packet(fd, body, sizeof body, &len, "CONNACK");
    if (type != 0x20 || len != 2) die("expected CONNACK, got packet 0x%02x", type);
    if (body[1] != 0) die("CONNACK refused %s with return code %d", client_id, body[1]);
    return fd;
}

static void set_nonblocking(int fd, int on) {
    int flags = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK);
}

/* DISCONNECT, then wait (briefly) for the broker to close its side, so that a later
   connection with the same client id does not race with this one. */
static void disconnect_and_close(int fd) {
    static const unsigned char disconnect[2] = {0xe0, 0};
    set_nonblocking(fd, 0);
    set_timeout(fd, 2);
    buf_t b = {0};
    put_packet(&b, disconnect, 2);
    ssize_t sent = io_send(fd, b.data, b.len, MSG_NOSIGNAL);
    free(b.data);
    if (sent == (ssize_t)(ws_path ? 8 : 2)) {
        shutdown(fd, SHUT_WR);
        unsigned char junk[4096];
        while (io_recv(fd, junk, sizeof junk) > 0) {
        }
    }
    io_close(fd);
}

/* ------------------------------------------------------------------ bitmaps of seen sequence numbers */

typedef struct {
    uint64_t *words;
    size_t nwords;
} bitmap_t;

/* Sets bit i; returns whether it was already set. */
static int bitmap_test_set(bitmap_t *b, uint32_t i) {
    size_t w = i >> 6;
    if (w >= b->nwords) {
        size_t n = b->nwords ? b->nwords : 1024;
        while (n <= w) n *= 2;
        b->words = xrealloc(b->words, n * sizeof(uint64_t));
        memset(b->words + b->nwords, 0, (n - b->nwords) * sizeof(uint64_t));
        b->nwords = n;
    }
    uint64_t mask = 1ULL << (i & 63);
    int was = (b->words[w] & mask) != 0;
    b->words[w] |= mask;
    return was;
}

/* ------------------------------------------------------------------ run mode */

enum { ROLE_PUB, ROLE_SUB };

typedef struct conn {
    int fd;
    int role;
    int index;
    int write_armed; /* EPOLLOUT registered: waiting for room in the socket */
    int closed;
    buf_t in, out;
    buf_t raw;        /* --ws: bytes as received, before the frames are unwrapped into in */
    uint64_t ws_left; /* --ws: payload bytes of the current data frame still to come */
    size_t ws_hdr;    /* --ws: frame header bytes in front of the PUBLISH template (0 without) */
    /* publisher */
    unsigned char *tmpl; /* pre-encoded PUBLISH */
    size_t tmpl_len, pid_off, payload_off;
    uint32_t seq;         /* messages generated */
    uint64_t acked;       /* PUBACK (QoS 1) or PUBCOMP (QoS 2) received */
    uint64_t pubrec;
    int outstanding;
    uint16_t next_pid;
    unsigned char *pid_state; /* 0 free, 1 awaiting PUBACK/PUBREC, 2 awaiting PUBCOMP */
    /* subscriber */
    uint64_t received; /* PUBLISH packets received */
    uint64_t distinct;
    uint64_t dups;
    uint64_t reordered;
    bitmap_t *seen;    /* per publisher */
    int64_t *max_seq;  /* per publisher, -1 = none */
    int read_off;      /* --slow-rate: EPOLLIN removed until the rate allows more */
} conn_t;

typedef struct {
    const char *host;
    int port;
    int publishers, subscribers, qos;
    int exact_filter;
    int payload;
    double warmup, duration, drain_timeout, drain_idle;
    int window;      /* QoS 1/2: unacknowledged messages per publisher */
    int transit;     /* messages in transit (published, not yet received) per subscriber */
    int refill;      /* QoS 1/2: free window slots needed before a publisher sends again */
    double rate;     /* total messages per second over all publishers; 0 = as fast as possible */
    int persistent;
    int broker_pid;
    const char *tag;
    uint64_t messages; /* 0: publish for --duration */
    double slow_rate;  /* subscriber 0's reading rate (msg/s); 0 = as fast as it can */
} run_opts;

static run_opts O;
static conn_t *pubs, *subs;
static int epfd;
static uint64_t protocol_errors;
static char first_error[256];
static int64_t *latencies;
static size_t nlat, cap_lat;
static int64_t t_warm_ns, t_end_ns;
static int in_window; /* between the warm-up snapshot and the end snapshot */
static int64_t last_rx_ns;     /* last bytes from the broker */
static int64_t last_pub_rx_ns; /* last PUBLISH delivered to a subscriber */

static void note_error(const char *fmt, ...) {
    protocol_errors++;
    if (!first_error[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(first_error, sizeof first_error, fmt, ap);
        va_end(ap);
        fprintf(stderr, "loadgen: %s\n", first_error);
    }
}

static uint32_t *seq_at_warm, *seq_at_end; /* per publisher, at the window's snapshots */

static void note_publisher_seqs(uint32_t *into) {
    for (int i = 0; i < O.publishers; i++) into[i] = pubs[i].seq;
}

static void epoll_set(conn_t *c) {
    struct epoll_event ev = {.events = (c->read_off ? 0 : EPOLLIN) | (c->write_armed ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void arm(conn_t *c, int want_write) {
    if (c->closed || c->write_armed == want_write) return;
    c->write_armed = want_write;
    epoll_set(c);
}

static void conn_closed(conn_t *c, const char *why) {
    if (c->closed) return;
    note_error("%s %d: %s", c->role == ROLE_PUB ? "publisher" : "subscriber", c->index, why);
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    c->closed = 1;
}

/* Write as much of the output buffer as the socket takes; arm EPOLLOUT if some is left. */
static void flush_out(conn_t *c) {
    while (!c->closed && buf_pending(&c->out)) {
        ssize_t w = io_send(c->fd, c->out.data + c->out.off, buf_pending(&c->out), MSG_NOSIGNAL);
        if (w > 0) {
            c->out.off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            arm(c, 1);
            return;
        }
        conn_closed(c, w < 0 ? strerror(errno) : "send returned 0");
        return;
    }
    if (buf_pending(&c->out) == 0) {
        c->out.off = c->out.len = 0;
        arm(c, 0);
    }
}

/* A connection set up with blocking reads takes over the frame they were in the middle of. */
static void ws_adopt_setup_frame(conn_t *c) {
    c->ws_left = ws_setup_left;
    ws_setup_left = 0;
}

/* --ws: move the payload of the server's data frames from raw to in; answers pings.
   Returns -1 if the connection ended (a close frame, a malformed frame). */
static int ws_unwrap(conn_t *c) {
    buf_t *raw = &c->raw;
    while (buf_pending(raw)) {
        unsigned char *p = raw->data + raw->off;
        size_t avail = buf_pending(raw);
        if (c->ws_left) {
            size_t m = avail < c->ws_left ? avail : (size_t)c->ws_left;
            buf_put(&c->in, p, m);
            raw->off += m;
            c->ws_left -= m;
            continue;
        }
        int opcode;
        uint64_t len;
        size_t hl;
        int ok = ws_parse_header(p, avail, &opcode, &len, &hl);
        if (ok < 0) { conn_closed(c, "malformed WebSocket frame from broker"); return -1; }
        if (ok == 0) break;
        if (opcode == 0 || opcode == 2) {
            raw->off += hl;
            c->ws_left = len;
            continue;
        }
        if (opcode < 8) { conn_closed(c, "WebSocket frame that is not binary from broker"); return -1; }
        if (avail < hl + len) break; /* control frames are handled whole (at most 125 bytes) */
        if (opcode == 8) { conn_closed(c, "WebSocket close frame from broker"); return -1; }
        if (opcode == 9) ws_put_frame(&c->out, 0xa, p + hl, (size_t)len); /* ping -> pong */
        raw->off += hl + len;
    }
    if (raw->off == raw->len) raw->off = raw->len = 0;
    return 0;
}

static void sub_on_publish(conn_t *s, const unsigned char *p, size_t hl, size_t rl, int64_t now) {
    unsigned char flags = p[0] & 0x0f;
    int qos = (flags >> 1) & 3;
    const unsigned char *v = p + hl, *end = p + hl + rl;
    if (rl < 2) { note_error("short PUBLISH"); return; }
    size_t tl = ((size_t)v[0] << 8) | v[1];
    v += 2 + tl;
    uint16_t pid = 0;
    if (qos) {
        if (v + 2 > end) { note_error("short PUBLISH"); return; }
        pid = (uint16_t)((v[0] << 8) | v[1]);
        v += 2;
    }
    s->received++;
    last_pub_rx_ns = now;
    if (end - v >= PAYLOAD_HEADER) {
        uint32_t pub, seq;
        int64_t ts;
        memcpy(&pub, v, 4);
        memcpy(&seq, v + 4, 4);
        memcpy(&ts, v + 8, 8);
        if (pub < (uint32_t)O.publishers) {
            if (bitmap_test_set(&s->seen[pub], seq)) {
                s->dups++;
            } else {
                s->distinct++;
                if ((int64_t)seq < s->max_seq[pub]) s->reordered++;
                else s->max_seq[pub] = seq;
            }
            if (ts >= t_warm_ns && ts < t_end_ns && latencies) {
                if (nlat == cap_lat) {
                    cap_lat = cap_lat ? cap_lat * 2 : 65536;
                    latencies = xrealloc(latencies, cap_lat * sizeof(int64_t));
                }
                latencies[nlat++] = now - ts;
            }
        } else {
            note_error("PUBLISH from unknown publisher %u", pub);
        }
    } else {
        note_error("PUBLISH payload shorter than %d bytes", PAYLOAD_HEADER);
    }
    if (qos == 1) put_ack(&s->out, 0x40, pid);
    else if (qos == 2) put_ack(&s->out, 0x50, pid);
}

static void pub_free_pid(conn_t *c, uint16_t pid, int expect_state, const char *what) {
    if (c->pid_state[pid] != expect_state) {
        note_error("unexpected %s for packet id %u on publisher %d", what, pid, c->index);
        return;
    }
    c->pid_state[pid] = 0;
    c->outstanding--;
    c->acked++;
}

static void handle_packet(conn_t *c, const unsigned char *p, size_t hl, size_t rl, int64_t now) {
    int type = p[0] >> 4;
    uint16_t pid = rl >= 2 ? (uint16_t)((p[hl] << 8) | p[hl + 1]) : 0;
    if (c->role == ROLE_SUB) {
        switch (type) {
        case 3: sub_on_publish(c, p, hl, rl, now); break;
        case 6: put_ack(&c->out, 0x70, pid); break;        /* PUBREL -> PUBCOMP */
        case 9: case 13: break;                            /* SUBACK, PINGRESP */
        default: note_error("subscriber got packet type %d", type);
        }
    } else {
        switch (type) {
        case 4: pub_free_pid(c, pid, 1, "PUBACK"); break;
        case 5:
            if (c->pid_state[pid] != 1) { note_error("unexpected PUBREC %u", pid); break; }
            c->pid_state[pid] = 2;
            c->pubrec++;
            put_ack(&c->out, 0x62, pid); /* PUBREL */
            break;
        case 7: pub_free_pid(c, pid, 2, "PUBCOMP"); break;
        case 13: break;
        default: note_error("publisher got packet type %d", type);
        }
    }
}

static int64_t slow_start_ns; /* when the slow subscriber started reading */

/* --slow-rate: how many bytes subscriber 0 may read now (0: none until later). */
static size_t slow_allowance(conn_t *c) {
    double due = (double)(mono_ns() - slow_start_ns) / 1e9 * O.slow_rate - (double)c->received;
    if (due < 1) return 0;
    double bytes = due * (double)(O.payload + 64);
    return bytes > IN_CHUNK ? IN_CHUNK : (size_t)bytes;
}

static void handle_read(conn_t *c) {
    int slow = O.slow_rate > 0 && c->role == ROLE_SUB && c->index == 0;
    for (int round = 0; round < 2 && !c->closed; round++) {
        size_t want = IN_CHUNK;
        if (slow) {
            want = slow_allowance(c);
            if (!want) { c->read_off = 1; epoll_set(c); break; }
        }
        buf_t *dst = ws_path ? &c->raw : &c->in;
        buf_reserve(dst, IN_CHUNK);
        ssize_t r = io_recv(c->fd, dst->data + dst->len, want < dst->cap - dst->len ? want : dst->cap - dst->len);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) conn_closed(c, strerror(errno));
            break;
        }
        if (r == 0) { conn_closed(c, "closed by the broker"); break; }
        int64_t now = mono_ns();
        last_rx_ns = now;
        dst->len += (size_t)r;
        if (ws_path && ws_unwrap(c) < 0) return;
        while (1) {
            const unsigned char *p = c->in.data + c->in.off;
            size_t avail = c->in.len - c->in.off, rl;
            int hl = parse_fixed_header(p, avail, &rl);
            if (hl < 0) { conn_closed(c, "malformed packet from broker"); return; }
            if (hl == 0 || avail < hl + rl) break;
            handle_packet(c, p, (size_t)hl, rl, now);
            c->in.off += hl + rl;
        }
        if (c->in.off == c->in.len) c->in.off = c->in.len = 0;
        if ((size_t)r < IN_CHUNK / 2) break; /* the socket is probably empty */
    }
    if (buf_pending(&c->out)) flush_out(c);
}

/* Write n bytes into a copy of the PUBLISH template; with --ws masked as the frame's payload. */
static inline void patch_template(const conn_t *c, unsigned char *p, size_t off, const void *v, size_t n) {
    if (!c->ws_hdr) {
        memcpy(p + off, v, n);
        return;
    }
    const unsigned char *src = v;
    for (size_t i = 0; i < n; i++) p[off + i] = src[i] ^ ws_mask[(off - c->ws_hdr + i) & 3];
}

static uint64_t total_generated(void) {
    uint64_t n = 0;
    for (int i = 0; i < O.publishers; i++) n += pubs[i].seq;
    return n;
}

/* What subscriber j must receive: everything, or publisher 0's messages for a --slow-rate subscriber. */
static uint64_t sub_expected(int j) {
    return O.slow_rate > 0 && j == 0 && O.subscribers > 1 ? pubs[0].seq : total_generated();
}

static uint64_t min_sub_received(void) {
    uint64_t m = UINT64_MAX;
    for (int j = 0; j < O.subscribers; j++)
        if (!subs[j].closed && subs[j].received < m) m = subs[j].received;
    return m == UINT64_MAX ? 0 : m;
}

static uint64_t presumed_dropped; /* in transit when the broker went quiet (so the window cannot stall) */
static int64_t window_blocked_since;

/* Generate new PUBLISH packets into each publisher's buffer within its budget, then send.
   Returns 1 if some publisher could do more right away (so the caller should not sleep). */
static int pump_publishers(int64_t now, int generating, int64_t t0) {
    int more = 0;
    int64_t transit_budget = INT64_MAX;
    if (generating && O.transit > 0) { /* --transit 0: free-running publishers */
        /* End-to-end flow control: brokers queue (and may drop past a limit) what a subscriber
           cannot take yet, so publishers wait while too much is in transit. */
        uint64_t gen = total_generated(), rec = min_sub_received() + presumed_dropped;
        transit_budget = (int64_t)O.transit - (int64_t)(gen > rec ? gen - rec : 0);
        /* Refill only once a quarter of the window is free: fewer, larger writes (the
           generator must cost far less than the broker), at a small cost in queue depth. */
        int64_t min_batch = O.rate > 0 ? 1 : (O.transit / 4 > 1 ? O.transit / 4 : 1);
        if (transit_budget < min_batch) transit_budget = 0;
        if (transit_budget <= 0) {
            if (!window_blocked_since) window_blocked_since = now;
            else if (now - window_blocked_since > 2000000000LL && now - last_rx_ns > 2000000000LL) {
                /* Nothing arrived for two seconds: the broker dropped what is in transit
                   (counted as lost at the end). */
                presumed_dropped += gen - rec;
                window_blocked_since = 0;
            }
        } else {
            window_blocked_since = 0;
        }
    }
    static int first; /* rotates, so that no publisher always gets the budget first */
    first = (first + 1) % O.publishers;
    for (int k = 0; k < O.publishers; k++) {
        conn_t *c = &pubs[(first + k) % O.publishers];
        if (c->closed) continue;
        if (generating && !c->write_armed && buf_pending(&c->out) < OUT_CHUNK / 2) {
            int64_t budget = (int64_t)((OUT_CHUNK - buf_pending(&c->out)) / c->tmpl_len);
            int limited_by_space = 1;
            if (O.rate > 0) {
                /* Publisher i starts i/N of an interval late, so that many slow publishers (devices
                   reporting every few seconds) spread their messages evenly instead of all at once. */
                double per_pub = O.rate / O.publishers, phase = 1.0 - (double)c->index / O.publishers;
                int64_t due = (int64_t)floor((double)(now - t0) / 1e9 * per_pub + phase) - (int64_t)c->seq;
                if (due < budget) { budget = due; limited_by_space = 0; }
            }
            if (transit_budget < budget) { budget = transit_budget; limited_by_space = 0; }
            if (O.messages) {
                uint64_t gen = total_generated();
                int64_t left = gen >= O.messages ? 0 : (int64_t)(O.messages - gen);
                if (left < budget) { budget = left; limited_by_space = 0; }
            }
            if (O.qos) {
                int64_t room = O.window - c->outstanding;
                if (room < O.refill) room = 0;
                if (room < budget) { budget = room; limited_by_space = 0; }
            }
            if (budget > 0) {
                buf_reserve(&c->out, (size_t)budget * c->tmpl_len);
                int64_t ts = mono_ns();
                for (int64_t k = 0; k < budget; k++) {
                    unsigned char *p = c->out.data + c->out.len;
                    memcpy(p, c->tmpl, c->tmpl_len);
                    if (O.qos) {
                        while (c->pid_state[c->next_pid] || c->next_pid == 0) c->next_pid++;
                        uint16_t pid = c->next_pid++;
                        c->pid_state[pid] = 1;
                        c->outstanding++;
                        unsigned char be[2] = {(unsigned char)(pid >> 8), (unsigned char)pid};
                        patch_template(c, p, c->pid_off, be, 2);
                    }
                    uint32_t seq = c->seq++;
                    patch_template(c, p, c->payload_off + 4, &seq, 4);
                    patch_template(c, p, c->payload_off + 8, &ts, 8);
                    c->out.len += c->tmpl_len;
                }
                transit_budget -= budget;
                if (limited_by_space) more = 1;
            }
        }
        if (buf_pending(&c->out) && !c->write_armed) flush_out(c);
    }
    return more;
}

typedef struct {
    int64_t t;
    uint64_t received, generated, acked;
    double self_user, self_sys, broker_user, broker_sys, machine_busy;
} snapshot_t;

static snapshot_t take_snapshot(void) {
    snapshot_t s;
    s.t = mono_ns();
    s.received = 0;
    for (int j = 0; j < O.subscribers; j++) s.received += subs[j].received;
    s.generated = total_generated();
    s.acked = 0;
    for (int i = 0; i < O.publishers; i++) s.acked += pubs[i].acked;
    self_cpu(&s.self_user, &s.self_sys);
    proc_cpu(O.broker_pid, &s.broker_user, &s.broker_sys);
    s.machine_busy = machine_busy_s();
    return s;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double percentile_us(double q) {
    if (!nlat) return -1;
    size_t i = (size_t)ceil(q * (double)nlat);
    if (i > 0) i--;
    if (i >= nlat) i = nlat - 1;
    return latencies[i] / 1000.0;
}

static void run_mode(void) {
    if (O.payload < PAYLOAD_HEADER) die("--payload must be at least %d", PAYLOAD_HEADER);
    if (O.publishers < 1 || O.subscribers < 1) die("need at least one publisher and one subscriber");
    if (O.qos < 0 || O.qos > 2) die("--qos must be 0, 1 or 2");
    if (O.qos && (O.window < 1 || O.window > 60000)) die("--window must be 1..60000");
    if (O.rate > 0) { /* latencies are kept for paced runs only (under saturation they measure the window) */
        cap_lat = (size_t)(O.rate * (O.duration + 1) * O.subscribers) + 1024;
        latencies = xrealloc(NULL, cap_lat * sizeof(int64_t));
    }
    pubs = xcalloc((size_t)O.publishers, sizeof(conn_t));
    seq_at_warm = xcalloc((size_t)O.publishers, sizeof(uint32_t));
    seq_at_end = xcalloc((size_t)O.publishers, sizeof(uint32_t));
    subs = xcalloc((size_t)O.subscribers, sizeof(conn_t));
    epfd = epoll_create1(0);
    char id[256], topic[200], filter[200];

    /* Subscribers first, so nothing published is missed. */
    if (O.exact_filter) snprintf(filter, sizeof filter, "bench/%s/p0", O.tag);
    else snprintf(filter, sizeof filter, "bench/%s/#", O.tag);
    if (O.exact_filter && O.publishers != 1) die("--filter exact needs exactly one publisher");
    char slow_filter[200];
    snprintf(slow_filter, sizeof slow_filter, "bench/%s/p0", O.tag);
    for (int j = 0; j < O.subscribers; j++) {
        conn_t *s = &subs[j];
        s->role = ROLE_SUB;
        s->index = j;
        snprintf(id, sizeof id, "bench-%s-s%d", O.tag, j);
        s->fd = mqtt_connect_blocking(O.host, O.port, id, !O.persistent);
        unsigned char pkt[600], body[64];
        size_t n = encode_subscribe(pkt, 1, O.slow_rate > 0 && j == 0 && O.subscribers > 1 ? slow_filter : filter, O.qos), len;
        send_packet_blocking(s->fd, pkt, n);
        unsigned char type = read_packet(s->fd, body, sizeof body, &len, "SUBACK");
        ws_adopt_setup_frame(s);
        if (type != 0x90 || len != 3) die("expected SUBACK, got packet 0x%02x", type);
        if (body[2] == 0x80) die("SUBSCRIBE %s refused", filter);
        if (body[2] != O.qos) die("SUBSCRIBE %s granted QoS %d instead of %d", filter, body[2], O.qos);
        s->seen = xcalloc((size_t)O.publishers, sizeof(bitmap_t));
        s->max_seq = xcalloc((size_t)O.publishers, sizeof(int64_t));
        for (int i = 0; i < O.publishers; i++) s->max_seq[i] = -1;
    }
    for (int i = 0; i < O.publishers; i++) {
        conn_t *c = &pubs[i];
        c->role = ROLE_PUB;
        c->index = i;
        snprintf(id, sizeof id, "bench-%s-p%d", O.tag, i);
        c->fd = mqtt_connect_blocking(O.host, O.port, id, 1);
        ws_adopt_setup_frame(c);
        c->pid_state = xcalloc(65536, 1);
        c->next_pid = 1;
        /* The pre-encoded PUBLISH: fixed header, topic, [packet id], payload. */
        snprintf(topic, sizeof topic, "bench/%s/p%d", O.tag, i);
        size_t tl = strlen(topic), rl = 2 + tl + (O.qos ? 2 : 0) + (size_t)O.payload;
        c->tmpl = xcalloc(rl + 5, 1);
        size_t h = 0;
        c->tmpl[h++] = (unsigned char)(0x30 | (O.qos << 1));
        h += put_varint(c->tmpl + h, rl);
        h += put_str(c->tmpl + h, topic, tl);
        c->pid_off = h;
        if (O.qos) h += 2;
        c->payload_off = h;
        uint32_t idx = (uint32_t)i;
        memcpy(c->tmpl + h, &idx, 4);
        memset(c->tmpl + h + PAYLOAD_HEADER, 'x', (size_t)O.payload - PAYLOAD_HEADER);
        c->tmpl_len = h + (size_t)O.payload;
        if (ws_path) { /* the template becomes a whole masked frame; offsets move behind its header */
            buf_t framed = {0};
            ws_put_frame(&framed, 0x2, c->tmpl, c->tmpl_len);
            c->ws_hdr = framed.len - c->tmpl_len;
            free(c->tmpl);
            c->tmpl = framed.data;
            c->tmpl_len = framed.len;
            c->pid_off += c->ws_hdr;
            c->payload_off += c->ws_hdr;
        }
    }
    conn_t *all[2] = {subs, pubs};
    int counts[2] = {O.subscribers, O.publishers};
    for (int g = 0; g < 2; g++)
        for (int k = 0; k < counts[g]; k++) {
            conn_t *c = &all[g][k];
            set_nonblocking(c->fd, 1);
            struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
            if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
        }

    int64_t t0 = mono_ns();
    slow_start_ns = t0;
    t_warm_ns = t0 + (int64_t)(O.warmup * 1e9);
    t_end_ns = t_warm_ns + (int64_t)(O.duration * 1e9);
    last_rx_ns = t0;
    snapshot_t s_warm = {0}, s_end = {0};
    int phase = 0; /* 0 warm-up, 1 window, 2 drain */
    int64_t drain_start = 0;
    struct epoll_event events[512];
    int drained = 0;
    int64_t last_nudge_ns = 0;
    uint64_t nudges = 0, missing_before_nudge = 0;
    int nudges_sent_once = 0, reconnected = 0;
    uint64_t reconnects = 0, missing_before_reconnect = 0;
    while (1) {
        int64_t now = mono_ns();
        if (phase == 0 && now >= t_warm_ns) {
            s_warm = take_snapshot();
            note_publisher_seqs(seq_at_warm);
            phase = 1;
            in_window = 1;
        }
        if (phase == 1 && O.messages && total_generated() >= O.messages) t_end_ns = now;
        if (phase == 1 && now >= t_end_ns) {
            s_end = take_snapshot();
            note_publisher_seqs(seq_at_end);
            phase = 2;
            in_window = 0;
            drain_start = now;
            last_pub_rx_ns = now;
        }
        if (phase == 2) {
            int done = 1;
            for (int i = 0; i < O.publishers && done; i++)
                if (!pubs[i].closed && (buf_pending(&pubs[i].out) || pubs[i].outstanding)) done = 0;
            uint64_t expected = total_generated();
            for (int j = 0; j < O.subscribers && done; j++)
                if (!subs[j].closed && subs[j].distinct < sub_expected(j)) done = 0;
            if (done) { drained = 1; break; }
            if (now - drain_start > (int64_t)(O.drain_timeout * 1e9)) break;
            if (now - last_pub_rx_ns > (int64_t)(O.drain_idle * 1e9)) {
                if (!O.persistent || reconnected) break;
                /* A persistent session keeps what the broker still owes: reconnect (clean session 0)
                   and wait once more, so messages held back are told apart from messages lost. */
                reconnected = 1;
                for (int j = 0; j < O.subscribers; j++) {
                    conn_t *c = &subs[j];
                    if (c->distinct >= sub_expected(j)) continue;
                    missing_before_reconnect += sub_expected(j) - c->distinct;
                    if (!c->closed) epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
                    io_close(c->fd);
                    c->in.off = c->in.len = c->out.off = c->out.len = 0;
                    c->write_armed = 0;
                    c->read_off = 0;
                    c->closed = 0;
                    snprintf(id, sizeof id, "bench-%s-s%d", O.tag, j);
                    c->raw.off = c->raw.len = 0;
                    c->fd = mqtt_connect_blocking(O.host, O.port, id, 0);
                    ws_adopt_setup_frame(c);
                    set_nonblocking(c->fd, 1);
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
                    reconnects++;
                }
                fprintf(stderr, "loadgen: %" PRIu64 " messages missing after %.1fs without deliveries;"
                        " reconnected %" PRIu64 " persistent subscriber(s)\n",
                        missing_before_reconnect, O.drain_idle, reconnects);
                last_pub_rx_ns = now;
                continue;
            }
            if (now - last_pub_rx_ns > 500000000LL && now - last_nudge_ns > 500000000LL) {
                /* Quiet for half a second with messages missing: a PINGREQ, as a client's keep-alive
                   would send, gives a broker that holds back queued messages a chance to go on. */
                unsigned char pingreq[2] = {0xc0, 0};
                for (int j = 0; j < O.subscribers; j++)
                    if (!subs[j].closed && subs[j].distinct < sub_expected(j)) {
                        put_packet(&subs[j].out, pingreq, 2);
                        flush_out(&subs[j]);
                        nudges++;
                    }
                if (!nudges_sent_once) {
                    for (int j = 0; j < O.subscribers; j++)
                        if (subs[j].distinct < sub_expected(j)) missing_before_nudge += sub_expected(j) - subs[j].distinct;
                    nudges_sent_once = 1;
                }
                last_nudge_ns = now;
            }
        }
        if (O.slow_rate > 0 && subs[0].read_off && !subs[0].closed && slow_allowance(&subs[0])) {
            subs[0].read_off = 0;
            epoll_set(&subs[0]);
        }
        int more = pump_publishers(now, phase < 2, t0);
        int timeout_ms;
        if (more) timeout_ms = 0;
        else {
            int64_t next = now + 10000000LL; /* wake at least every 10 ms */
            if (phase == 0 && t_warm_ns < next) next = t_warm_ns;
            if (phase == 1 && t_end_ns < next) next = t_end_ns;
            if (O.rate > 0 && phase < 2) {
                /* the next message due from any publisher */
                double per_pub = O.rate / O.publishers;
                for (int i = 0; i < O.publishers; i++) {
                    double phase = (double)i / O.publishers;
                    int64_t due = t0 + (int64_t)(((double)pubs[i].seq + phase) / per_pub * 1e9);
                    if (due < next) next = due;
                }
            }
            int64_t wait = next - now;
            timeout_ms = wait <= 0 ? 0 : (int)((wait + 999999) / 1000000);
        }
        int n = epoll_wait(epfd, events, 512, timeout_ms);
        if (n < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
        for (int k = 0; k < n; k++) {
            conn_t *c = events[k].data.ptr;
            if (events[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) handle_read(c);
            if ((events[k].events & EPOLLOUT) && !c->closed) flush_out(c);
        }
    }
    int64_t drain_end = mono_ns();
    if (!drained)
        for (int j = 0; j < O.subscribers; j++)
            fprintf(stderr, "loadgen: not drained: subscriber %d received %" PRIu64 " (distinct %" PRIu64
                    ") of %" PRIu64 ", %zu bytes of acks unsent, write_armed %d, closed %d\n",
                    j, subs[j].received, subs[j].distinct, total_generated(), buf_pending(&subs[j].out),
                    subs[j].write_armed, subs[j].closed);

    /* Results. */
    uint64_t generated = total_generated(), acked = 0, unacked = 0, pubrec = 0;
    for (int i = 0; i < O.publishers; i++) {
        acked += pubs[i].acked;
        pubrec += pubs[i].pubrec;
        unacked += (uint64_t)pubs[i].outstanding;
    }
    uint64_t received = 0, distinct = 0, dups = 0, reordered = 0, lost = 0;
    for (int j = 0; j < O.subscribers; j++) {
        received += subs[j].received;
        distinct += subs[j].distinct;
        dups += subs[j].dups;
        reordered += subs[j].reordered;
        /* Every generated message must reach every subscriber (QoS 1/2: the publisher waited
           for all acknowledgements above, so unacked messages are counted separately). */
        uint64_t want = sub_expected(j);
        lost += want - (subs[j].distinct < want ? subs[j].distinct : want);
    }
    uint64_t expected_all = 0;
    for (int j = 0; j < O.subscribers; j++) expected_all += sub_expected(j);
    double window_s = (s_end.t - s_warm.t) / 1e9;
    if (nlat) qsort(latencies, nlat, sizeof(int64_t), cmp_i64);

    /* Disconnect; a persistent subscriber's session is then discarded with a clean reconnect. */
    for (int g = 0; g < 2; g++)
        for (int k = 0; k < counts[g]; k++) {
            conn_t *c = &all[g][k];
            if (c->closed) io_close(c->fd);
            else disconnect_and_close(c->fd);
        }
    if (O.persistent)
        for (int j = 0; j < O.subscribers; j++) {
            snprintf(id, sizeof id, "bench-%s-s%d", O.tag, j);
            disconnect_and_close(mqtt_connect_blocking(O.host, O.port, id, 1));
        }

    printf("{\"mode\": \"run\", \"qos\": %d, \"publishers\": %d, \"subscribers\": %d, \"payload\": %d,"
           " \"window_s\": %.6f, \"received_window\": %" PRIu64 ", \"rate\": %.1f,"
           " \"published_window\": %" PRIu64 ", \"published\": %" PRIu64 ", \"acked\": %" PRIu64
           ", \"pubrec\": %" PRIu64 ", \"unacked\": %" PRIu64 ", \"received\": %" PRIu64
           ", \"distinct\": %" PRIu64 ", \"expected\": %" PRIu64 ", \"lost\": %" PRIu64
           ", \"duplicates\": %" PRIu64 ", \"reordered\": %" PRIu64 ", \"presumed_dropped\": %" PRIu64
           ", \"drained\": %s, \"drain_s\": %.3f, \"drain_pings\": %" PRIu64 ", \"missing_before_ping\": %" PRIu64 ","
           " \"reconnects\": %" PRIu64 ", \"missing_before_reconnect\": %" PRIu64 ","
           " \"loadgen_user_s\": %.4f, \"loadgen_sys_s\": %.4f, \"broker_user_s\": %.4f,"
           " \"broker_sys_s\": %.4f, \"machine_busy_cpu_s\": %.4f, \"cpu_count\": %ld,",
           O.qos, O.publishers, O.subscribers, O.payload, window_s, s_end.received - s_warm.received,
           window_s > 0 ? (s_end.received - s_warm.received) / window_s : 0.0, s_end.generated - s_warm.generated,
           generated, acked, pubrec, unacked, received, distinct, expected_all, lost, dups,
           reordered, presumed_dropped, drained ? "true" : "false", (drain_end - drain_start) / 1e9, nudges,
           missing_before_nudge, reconnects, missing_before_reconnect,
           s_end.self_user - s_warm.self_user, s_end.self_sys - s_warm.self_sys,
           s_warm.broker_user >= 0 && s_end.broker_user >= 0 ? s_end.broker_user - s_warm.broker_user : -1.0,
           s_warm.broker_sys >= 0 && s_end.broker_sys >= 0 ? s_end.broker_sys - s_warm.broker_sys : -1.0,
           s_end.machine_busy - s_warm.machine_busy, sysconf(_SC_NPROCESSORS_ONLN));
    printf(" \"latency_us\": {\"count\": %zu, \"p50\": %.1f, \"p90\": %.1f, \"p99\": %.1f, \"p999\": %.1f,"
           " \"max\": %.1f},",
           nlat, percentile_us(0.50), percentile_us(0.90), percentile_us(0.99), percentile_us(0.999),
           nlat ? latencies[nlat - 1] / 1000.0 : -1.0);
    printf(" \"per_publisher\": [");
    for (int i = 0; i < O.publishers; i++) printf("%s%" PRIu32, i ? ", " : "", pubs[i].seq);
    printf("], \"per_publisher_window\": [");
    for (int i = 0; i < O.publishers; i++) printf("%s%" PRIu32, i ? ", " : "", seq_at_end[i] - seq_at_warm[i]);
    printf("], \"per_subscriber\": [");
    for (int j = 0; j < O.subscribers; j++) printf("%s%" PRIu64, j ? ", " : "", subs[j].distinct);
    printf("], \"per_subscriber_expected\": [");
    for (int j = 0; j < O.subscribers; j++) printf("%s%" PRIu64, j ? ", " : "", sub_expected(j));
    printf("],");
    printf(" \"protocol_errors\": %" PRIu64 ", \"first_error\": \"", protocol_errors);
    for (const char *p = first_error; *p; p++) putchar(*p == '"' || *p == '\\' ? '\'' : *p);
    printf("\"}\n");
}

/* ------------------------------------------------------------------ idle mode */

typedef struct {
    int fd;
    int stage; /* 0 connecting, 1 CONNECT sent, 2 established, 3 gone */
    unsigned char got[4];
    int ngot;
} idle_conn;

static void idle_mode(const char *host, int port, int total, int concurrency, const char *tag, double timeout) {
    idle_conn *cs = xcalloc((size_t)total, sizeof(idle_conn));
    epfd = epoll_create1(0);
    int next = 0, active = 0, established = 0, failed = 0;
    char first_err[200] = "";
    int64_t t0 = mono_ns();
    struct epoll_event events[512];
    while (established + failed < total) {
        while (active < concurrency && next < total) {
            idle_conn *c = &cs[next];
            c->fd = connect_tcp(host, port, 1);
            if (c->fd < 0) {
                if (!first_err[0]) snprintf(first_err, sizeof first_err, "connect: %s", strerror(errno));
                c->stage = 3;
                failed++;
                next++;
                continue;
            }
            struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u32 = (uint32_t)next};
            epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
            active++;
            next++;
        }
        if (mono_ns() - t0 > (int64_t)(timeout * 1e9)) {
            if (!first_err[0]) snprintf(first_err, sizeof first_err, "timed out connecting");
            break;
        }
        int n = epoll_wait(epfd, events, 512, 100);
        for (int k = 0; k < n; k++) {
            int i = (int)events[k].data.u32;
            idle_conn *c = &cs[i];
            int bad = 0;
            if (c->stage == 0 && (events[k].events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err) {
                    if (!first_err[0]) snprintf(first_err, sizeof first_err, "connect: %s", strerror(err));
                    bad = 1;
                } else {
                    char id[128];
                    unsigned char pkt[300];
                    snprintf(id, sizeof id, "idle-%s-%d", tag, i);
                    size_t len2 = encode_connect(pkt, id, 1);
                    if (tls_ctx) { /* the handshake blocking, one connection at a time */
                        set_nonblocking(c->fd, 0);
                        set_timeout(c->fd, timeout);
                        const char *tls_error = tls_attach(c->fd);
                        set_nonblocking(c->fd, 1);
                        if (tls_error) {
                            if (!first_err[0]) snprintf(first_err, sizeof first_err, "%s", tls_error);
                            bad = 1;
                        }
                    }
                    if (!bad && io_send(c->fd, pkt, len2, MSG_NOSIGNAL) != (ssize_t)len2) bad = 1;
                    c->stage = 1;
                    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
                    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
                }
            } else if (c->stage == 1 && (events[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) {
                ssize_t r = io_recv(c->fd, c->got + c->ngot, (size_t)(4 - c->ngot));
                if (r <= 0 && !(r < 0 && errno == EAGAIN)) {
                    if (!first_err[0]) snprintf(first_err, sizeof first_err, "closed before CONNACK");
                    bad = 1;
                } else if (r > 0) {
                    c->ngot += (int)r;
                    if (c->ngot == 4) {
                        if (c->got[0] != 0x20 || c->got[3] != 0) {
                            if (!first_err[0])
                                snprintf(first_err, sizeof first_err, "CONNACK %02x rc %d", c->got[0], c->got[3]);
                            bad = 1;
                        } else {
                            c->stage = 2;
                            established++;
                            active--;
                        }
                    }
                }
            }
            if (bad) {
                epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
                io_close(c->fd);
                c->fd = -1;
                c->stage = 3;
                failed++;
                active--;
            }
        }
    }
    double connect_s = (mono_ns() - t0) / 1e9;
    printf("ready %d %d %.3f\n", established, failed, connect_s);
    fflush(stdout);

    /* Hold the connections (watching for the broker closing any) until told to stop. */
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
    epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev);
    int dropped = 0, stop = 0;
    while (!stop) {
        int n = epoll_wait(epfd, events, 512, 1000);
        for (int k = 0; k < n; k++) {
            if (events[k].data.u32 == UINT32_MAX) { stop = 1; continue; }
            idle_conn *c = &cs[events[k].data.u32];
            unsigned char junk[256];
            ssize_t r = io_recv(c->fd, junk, sizeof junk);
            if (r == 0 || (r < 0 && errno != EAGAIN)) {
                epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
                if (c->stage == 2) dropped++;
                c->stage = 3;
            }
        }
    }
    unsigned char disconnect[2] = {0xe0, 0};
    for (int i = 0; i < next; i++) {
        if (cs[i].stage == 2) io_send(cs[i].fd, disconnect, 2, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (cs[i].fd >= 0) io_close(cs[i].fd);
    }
    printf("{\"mode\": \"idle\", \"connections\": %d, \"established\": %d, \"failed\": %d, \"dropped\": %d,"
           " \"connect_s\": %.3f, \"first_error\": \"%s\"}\n",
           total, established, failed, dropped, connect_s, first_err);
}

/* ------------------------------------------------------------------ arguments */

static const char *arg_value(int argc, char **argv, int *i) {
    if (*i + 1 >= argc) die("%s needs a value", argv[*i]);
    return argv[++*i];
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    if (argc < 2) die("usage: loadgen run|idle --port P [options] (see the comment at the top of loadgen.c)");
    const char *mode = argv[1];
    O = (run_opts){.host = "127.0.0.1", .port = 0, .publishers = 4, .subscribers = 1, .qos = 0,
                   .payload = 64, .warmup = 1, .duration = 5, .drain_timeout = 60, .drain_idle = 5,
                   .window = 20, .transit = 1000, .refill = 1, .rate = 0, .persistent = 0, .broker_pid = 0,
                   .tag = "t"};
    int connections = 1000, concurrency = 100;
    double connect_timeout = 120;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--host")) O.host = arg_value(argc, argv, &i);
        else if (!strcmp(a, "--port")) O.port = atoi(arg_value(argc, argv, &i));
        else if (!strcmp(a, "--publishers")) O.publishers = atoi(arg_value(argc, argv, &i));
        else if (!strcmp(a, "--subscribers")) O.subscribers = atoi(arg_value(argc, argv, &i));
        else if (!strcmp(a, "--qos")) O.qos = atoi(arg_value(argc, argv, &i));
        else if (!strcmp(a, "--filter")) O.exact_filter = !strcmp(arg_value(argc, argv, &i), "exact");
        else if (!strcmp(a, "--payload")) O.payload = atoi(arg_value(argc, argv, &i));
        else if (!strcmp(a, "--warmup")) O.warmup = atof(arg_value(argc, argv, &i));
        else if (!strcmp(a, "--duration")) O.duration = atof(arg_value(argc, argv, &i));
        else if (!strcmp(a, "--drain-timeout")) O.drain_timeout = atof(arg_value(argc, argv, &i));
        else if (!strcmp(a, "--drain-idle")) O.drain_idle = atof(arg_value(argc, argv, &i));
        else if (!strcmp(a, "--window")) O.window = atoi(arg_value(argc, argv, &i));
        else if (!strcmp(a, "--transit")) O.transit = atoi(arg_value(argc, argv, &i));
        else if (!strcmp(a, "--refill")) O.refill = atoi(arg_value(argc, argv, &i));
        else if (!strcmp(a, "--rate")) O.rate = atof(arg_value(argc, argv, &i));
        else if (!strcmp(a, "--persistent")) O.persistent = atoi(arg_value(argc, argv, &i));
        else if (!strcmp(a, "--broker-pid")) O.broker_pid = atoi(arg_value(argc, argv, &i));
        else if (!strcmp(a, "--tag")) O.tag = arg_value(argc, argv, &i);
        else if (!strcmp(a, "--messages")) O.messages = strtoull(arg_value(argc, argv, &i), NULL, 10);
        else if (!strcmp(a, "--slow-rate")) O.slow_rate = atof(arg_value(argc, argv, &i));
        else if (!strcmp(a, "--connections")) connections = atoi(arg_value(argc, argv, &i));
        else if (!strcmp(a, "--concurrency")) concurrency = atoi(arg_value(argc, argv, &i));
        else if (!strcmp(a, "--connect-timeout")) connect_timeout = atof(arg_value(argc, argv, &i));
        else if (!strcmp(a, "--tls")) tls_init(arg_value(argc, argv, &i));
        else if (!strcmp(a, "--ws")) ws_path = arg_value(argc, argv, &i);
        else die("unknown option %s", a);
    }
    if (O.port <= 0) die("--port is required");
    if (ws_path && strcmp(mode, "run")) die("--ws is for run mode only");
    srandom((unsigned)mono_ns());
    if (!strcmp(mode, "run")) run_mode();
    else if (!strcmp(mode, "idle")) idle_mode(O.host, O.port, connections, concurrency, O.tag, connect_timeout);
    else die("unknown mode %s (run or idle)", mode);
    return 0;
}
