/*
 * client.c - minimal maskd subscriber (wire protocol version 1).
 *
 * Connects to maskd's Unix SOCK_SEQPACKET socket, sends one SUBSCRIBE with the
 * given prompts and encoding, prints the ids from SUBSCRIBED, then prints one
 * line per FRAME. Every mask of every encoding (varint RLE, COCO RLE, bitmask)
 * is fully decoded into a row-major pixel array and validated, and the
 * foreground pixel count and an index checksum are printed.
 *
 * This client was written from docs/PROTOCOL.md alone.
 *
 * Build (Linux, C11, libc only):
 *   cc -std=c11 -Wall -Wextra -Werror -O2 -o client docs/examples/client.c
 *
 * Usage:
 *   client [--socket PATH] --prompt TEXT [--prompt TEXT]...
 *          [--encoding default|rle|coco|bitmask] [--count N] [--timeout SECONDS]
 *
 *   --socket   socket path (default /run/maskd/maskd.sock)
 *   --prompt   prompt text; at least one, repeatable, order kept
 *   --encoding mask encoding to request (default: "default", the server's choice)
 *   --count    exit 0 after N FRAMEs (0 = never; default 0)
 *   --timeout  seconds to wait for any message (default 10, fractional allowed, > 0)
 *
 * Output (stdout, one line per event, flushed after each line):
 *   subscribed TEXT1=ID1 TEXT2=ID2 ...
 *   seq=S dropped=D latency_ms=L[ id=I score=SC coverage=CV ones=N checksum=C]...
 * where L = (CLOCK_REALTIME now - capture_ns) / 1e6 ("%.1f"), SC and CV are the
 * header's score and coverage ("%.3f"), N is the number of foreground pixels of
 * the decoded mask and C is the sum, modulo 2^32, of the row-major indices
 * (y * mask_width + x) of its foreground pixels. Masks are listed in message
 * order. Messages before SUBSCRIBED, and non-FRAME, non-ERROR messages after it,
 * are skipped (FRAMEs skipped before SUBSCRIBED are still validated).
 *
 * Errors go to stderr as "error: ..." with exit status 1: an ERROR from the
 * server (code and text), end of connection, ECONNRESET/EPIPE, receive
 * timeout, malformed message, failure to connect. Bad command line: exit 2.
 */

#define _GNU_SOURCE

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* Constants of PROTOCOL.md (sections 3, 4, 6.5, 8). */
#define PREFIX_LEN        8u
#define FRAME_HEADER_LEN  56u
#define MASK_HEADER_LEN   16u
#define ERROR_HEADER_LEN  14u
#define SUBSCRIBED_LEN    12u
#define MAX_MESSAGE_LEN   16777216u          /* largest server -> client message */
#define MAX_PROMPTS       32u                /* masks per FRAME: 0 ..= 32 */
#define MAX_MASK_PIXELS   (1u << 26)         /* decoder guard, section 8 */
#define DEFAULT_SOCKET    "/run/maskd/maskd.sock"

#define T_FRAME        0x0001u
#define T_SUBSCRIBED   0x0002u
#define T_UNSUBSCRIBED 0x0003u
#define T_PONG         0x0004u
#define T_ERROR        0x0005u
#define T_SUBSCRIBE    0x0101u

#define ENC_DEFAULT 0u
#define ENC_RLE     1u
#define ENC_COCO    2u
#define ENC_BITMASK 3u

static const char *progname = "client";
static int sock_fd = -1;

/* ------------------------------------------------------------------ */
/* helpers                                                              */

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...)
{
    va_list ap;
    fflush(stdout);
    fputs("error: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    if (sock_fd >= 0)
        close(sock_fd);
    exit(1);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: %s [--socket PATH] --prompt TEXT [--prompt TEXT]...\n"
            "       [--encoding default|rle|coco|bitmask] [--count N] [--timeout SECONDS]\n",
            progname);
}

static void usage_error(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void usage_error(const char *fmt, ...)
{
    va_list ap;
    fputs("error: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    usage(stderr);
    exit(2);
}

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static uint64_t rd64(const uint8_t *p)
{
    return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32);
}

static float rdf32(const uint8_t *p)
{
    uint32_t u = rd32(p);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static void wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v & 0xff);
    p[1] = (uint8_t)(v >> 8);
}

static uint64_t now_ns(clockid_t clk)
{
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static const char *error_name(unsigned code)
{
    static const char *const names[] = {
        NULL,           "BadMagic",       "UnsupportedVersion", "UnknownType",
        "Malformed",    "BadUtf8",        "TooManyPrompts",     "PromptTooLong",
        "EmptyPrompt",  "UnknownEncoding", "MessageTooLarge",   "TooManyClients",
        "PromptRejected", "ShuttingDown",   "AccessDenied",
    };
    if (code < sizeof names / sizeof names[0] && names[code])
        return names[code];
    return "unknown code";
}

/* ------------------------------------------------------------------ */
/* receiving                                                            */

enum rx_status { RX_OK, RX_TIMEOUT, RX_EOF, RX_RESET, RX_FAIL };

static uint8_t *rxbuf;          /* MAX_MESSAGE_LEN bytes (section 2.1) */

/* Waits up to timeout_s seconds for one packet (poll, then a non-blocking recvmsg). */
static enum rx_status recv_packet(double timeout_s, size_t *len_out, int *err_out)
{
    uint64_t deadline = now_ns(CLOCK_MONOTONIC) + (uint64_t)(timeout_s * 1e9);

    for (;;) {
        uint64_t now = now_ns(CLOCK_MONOTONIC);
        if (now >= deadline)
            return RX_TIMEOUT;
        uint64_t left_ms = (deadline - now + 999999u) / 1000000u;
        int ms = left_ms > (uint64_t)INT_MAX ? INT_MAX : (int)left_ms;
        struct pollfd pfd = { .fd = sock_fd, .events = POLLIN, .revents = 0 };
        int pr = poll(&pfd, 1, ms);
        if (pr < 0) {
            if (errno == EINTR)
                continue;
            *err_out = errno;
            return RX_FAIL;
        }
        if (pr == 0)
            continue; /* re-check the deadline */

        struct iovec iov = { .iov_base = rxbuf, .iov_len = MAX_MESSAGE_LEN };
        struct msghdr mh;
        memset(&mh, 0, sizeof mh);
        mh.msg_iov = &iov;
        mh.msg_iovlen = 1;
        ssize_t n = recvmsg(sock_fd, &mh, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
                continue;
            if (errno == ECONNRESET)
                return RX_RESET;
            *err_out = errno;
            return RX_FAIL;
        }
        if (n == 0)
            return RX_EOF;
        if (mh.msg_flags & MSG_TRUNC)
            die("malformed message: packet longer than %u bytes (MAX_MESSAGE_LEN) was truncated",
                MAX_MESSAGE_LEN);
        *len_out = (size_t)n;
        return RX_OK;
    }
}

/* Prints an ERROR message (any version) and exits 1. len >= PREFIX_LEN. */
static void report_error_message(size_t len, const char *context) __attribute__((noreturn));
static void report_error_message(size_t len, const char *context)
{
    if (len < ERROR_HEADER_LEN)
        die("malformed message: ERROR of %zu bytes is shorter than its 14-byte header", len);
    unsigned code = rd16(rxbuf + 8);
    unsigned closing = rxbuf[10];
    size_t tlen = rd16(rxbuf + 12);
    if (tlen > len - ERROR_HEADER_LEN)
        die("malformed message: ERROR text of %zu bytes runs past the end of the %zu-byte message",
            tlen, len);
    /* bytes after the text are ignored (section 6.4) */
    char text[1024 * 4 + 1];
    size_t o = 0;
    for (size_t i = 0; i < tlen && o + 4 < sizeof text; i++) {
        uint8_t c = rxbuf[ERROR_HEADER_LEN + i];
        if (c < 0x20 || c == 0x7f) {
            o += (size_t)snprintf(text + o, sizeof text - o, "\\x%02x", c);
        } else {
            text[o++] = (char)c;
        }
    }
    text[o] = '\0';
    die("%smaskd sent ERROR %u (%s, closing=%u): %s", context, code, error_name(code),
        closing, text);
}

/* After ECONNRESET / EPIPE: a queued ERROR may still be readable (sections 2.4,
 * 10.5, 13 item 13). Read a little more; report that ERROR if one comes. */
static void report_dropped(const char *what) __attribute__((noreturn));
static void report_dropped(const char *what)
{
    char ctx[128];
    snprintf(ctx, sizeof ctx, "maskd refused or dropped the connection (%s); ", what);
    for (int tries = 0; tries < 4; tries++) {
        size_t len = 0;
        int err = 0;
        enum rx_status st = recv_packet(0.2, &len, &err);
        if (st == RX_RESET)
            continue;
        if (st != RX_OK)
            break;
        if (len >= PREFIX_LEN && memcmp(rxbuf, "MSKD", 4) == 0 && rd16(rxbuf + 6) == T_ERROR)
            report_error_message(len, ctx);
        /* anything else queued before the close: keep looking for the ERROR */
    }
    die("maskd refused or dropped the connection (%s)", what);
}

/* Receives the next message, handling every transport-level failure. */
static size_t recv_message(double timeout_s)
{
    size_t len = 0;
    int err = 0;
    switch (recv_packet(timeout_s, &len, &err)) {
    case RX_OK:
        return len;
    case RX_TIMEOUT:
        die("timeout: no message from maskd within %g s", timeout_s);
    case RX_EOF:
        die("maskd closed the connection");
    case RX_RESET:
        report_dropped("ECONNRESET");
    case RX_FAIL:
    default:
        die("recv failed: %s", strerror(err));
    }
}

/* ------------------------------------------------------------------ */
/* mask decoding (section 7)                                            */

static uint8_t *pixels;       /* row-major, one byte per pixel */
static size_t pixels_cap;

/* Varint RLE, row-major (7.2). Returns NULL or an error description. */
static const char *decode_rle(const uint8_t *p, size_t n, uint32_t w, uint32_t h)
{
    uint64_t total = (uint64_t)w * h, pos = 0;
    size_t i = 0;
    uint8_t value = 0;
    while (i < n) {
        uint64_t run = 0;
        unsigned shift = 0;
        for (;;) {
            if (i >= n)
                return "RLE varint is cut off at the end of the payload";
            if (shift >= 70)
                return "RLE varint longer than 10 bytes";
            uint8_t b = p[i++];
            uint64_t grp = (uint64_t)(b & 0x7f);
            if (shift == 63 && grp > 1)
                return "RLE varint overflows 64 bits";
            run |= grp << shift;
            shift += 7;
            if (!(b & 0x80))
                break;
        }
        if (run > total - pos)
            return "RLE runs go past the end of the mask";
        if (run)
            memset(pixels + pos, value, (size_t)run);
        pos += run;
        value ^= 1;
    }
    if (pos != total)
        return "RLE runs fall short of mask_width x mask_height";
    return NULL;
}

/* COCO RLE, column-major (7.3). */
static const char *decode_coco(const uint8_t *p, size_t n, uint32_t w, uint32_t h)
{
    int64_t total = (int64_t)w * h, pos = 0;
    int64_t c1 = 0, c2 = 0;   /* c[i-1], c[i-2] */
    size_t i = 0;
    uint64_t idx = 0;
    while (i < n) {
        uint64_t ux = 0;
        unsigned k = 0;
        unsigned g;
        do {
            if (i >= n)
                return "COCO value is cut off at the end of the payload";
            uint8_t b = p[i++];
            if (b < '0' || b > 'o')
                return "COCO byte outside '0'..'o'";
            if (k >= 13)
                return "COCO value longer than 64 bits";
            g = (unsigned)(b - '0');
            ux |= (uint64_t)(g & 0x1f) << (5 * k);
            k++;
        } while (g & 0x20);
        if ((g & 0x10) && 5 * k < 64)
            ux |= ~(uint64_t)0 << (5 * k);
        int64_t x;
        memcpy(&x, &ux, sizeof x);  /* two's complement reinterpretation */
        if (idx > 2) {
            if (x < -total || x > total)
                return "COCO count out of range";
            x += c2;
        }
        if (x < 0)
            return "COCO count is negative";
        if (x > total - pos)
            return "COCO counts go past the end of the mask";
        uint8_t value = (uint8_t)(idx & 1);
        for (int64_t q = pos; q < pos + x; q++) {
            uint64_t col = (uint64_t)q / h, row = (uint64_t)q % h;
            pixels[row * w + col] = value;
        }
        pos += x;
        c2 = c1;
        c1 = x;
        idx++;
    }
    if (pos != total)
        return "COCO counts fall short of mask_width x mask_height";
    return NULL;
}

/* Bitmask, row-major, MSB first, rows padded to bytes (7.4). */
static const char *decode_bitmask(const uint8_t *p, size_t n, uint32_t w, uint32_t h)
{
    size_t stride = ((size_t)w + 7) / 8;
    if (n != stride * h)
        return "bitmask payload is not ceil(mask_width/8) x mask_height bytes";
    for (uint32_t y = 0; y < h; y++) {
        const uint8_t *row = p + (size_t)y * stride;
        uint8_t *out = pixels + (size_t)y * w;
        for (uint32_t x = 0; x < w; x++)
            out[x] = (uint8_t)((row[x / 8] >> (7 - (x % 8))) & 1);
    }
    return NULL;
}

/* ------------------------------------------------------------------ */
/* FRAME (6.5)                                                          */

struct mask_result {
    uint32_t id;
    float score, coverage;
    uint64_t ones;
    uint32_t checksum;
};

/* Validates and decodes a FRAME in rxbuf; prints it if print != 0. */
static void handle_frame(size_t len, int print)
{
    const uint8_t *m = rxbuf;
    if (len < FRAME_HEADER_LEN)
        die("malformed message: FRAME of %zu bytes is shorter than its 56-byte header", len);
    uint64_t seq = rd64(m + 8);
    uint64_t capture = rd64(m + 16);
    uint32_t w = rd32(m + 40), h = rd32(m + 44);
    unsigned count = rd16(m + 48);
    unsigned enc = m[50];
    uint32_t dropped = rd32(m + 52);

    if (enc < ENC_RLE || enc > ENC_BITMASK)
        die("malformed message: FRAME seq %" PRIu64 " has unknown encoding %u", seq, enc);
    if (count > MAX_PROMPTS)
        die("malformed message: FRAME seq %" PRIu64 " has %u masks, at most %u allowed", seq,
            count, MAX_PROMPTS);
    if (count > 0) {
        if (w == 0 || h == 0)
            die("malformed message: FRAME seq %" PRIu64 " has a %" PRIu32 " x %" PRIu32 " mask",
                seq, w, h);
        if ((uint64_t)w * h > MAX_MASK_PIXELS)
            die("malformed message: FRAME seq %" PRIu64 " mask of %" PRIu32 " x %" PRIu32
                " pixels exceeds 2^26", seq, w, h);
        size_t need = (size_t)w * h;
        if (need > pixels_cap) {
            uint8_t *np = realloc(pixels, need);
            if (!np)
                die("out of memory for a %zu-pixel mask", need);
            pixels = np;
            pixels_cap = need;
        }
    }

    struct mask_result res[MAX_PROMPTS];
    size_t off = FRAME_HEADER_LEN;
    for (unsigned k = 0; k < count; k++) {
        if (len - off < MASK_HEADER_LEN)
            die("malformed message: FRAME seq %" PRIu64 " is truncated in the header of mask %u",
                seq, k);
        const uint8_t *mh = m + off;
        uint32_t plen = rd32(mh + 12);
        off += MASK_HEADER_LEN;
        if (plen > len - off)
            die("malformed message: FRAME seq %" PRIu64 " mask %u payload of %" PRIu32
                " bytes runs past the end of the message", seq, k, plen);
        const uint8_t *payload = m + off;
        off += plen;

        const char *err;
        if (enc == ENC_RLE)
            err = decode_rle(payload, plen, w, h);
        else if (enc == ENC_COCO)
            err = decode_coco(payload, plen, w, h);
        else
            err = decode_bitmask(payload, plen, w, h);
        if (err)
            die("bad payload: FRAME seq %" PRIu64 " mask %u (prompt id %" PRIu32 "): %s", seq,
                k, rd32(mh), err);

        uint64_t ones = 0;
        uint32_t sum = 0;
        size_t total = (size_t)w * h;
        for (size_t i = 0; i < total; i++) {
            if (pixels[i]) {
                ones++;
                sum += (uint32_t)i; /* wraps modulo 2^32 */
            }
        }
        res[k].id = rd32(mh);
        res[k].score = rdf32(mh + 4);
        res[k].coverage = rdf32(mh + 8);
        res[k].ones = ones;
        res[k].checksum = sum;
    }
    if (off != len)
        die("malformed message: FRAME seq %" PRIu64 " has %zu bytes after its last mask", seq,
            len - off);

    if (!print)
        return;

    uint64_t now = now_ns(CLOCK_REALTIME);
    double lat = now >= capture ? (double)(now - capture) / 1e6
                                : -((double)(capture - now) / 1e6);
    printf("seq=%" PRIu64 " dropped=%" PRIu32 " latency_ms=%.1f", seq, dropped, lat);
    for (unsigned k = 0; k < count; k++)
        printf(" id=%" PRIu32 " score=%.3f coverage=%.3f ones=%" PRIu64 " checksum=%" PRIu32,
               res[k].id, (double)res[k].score, (double)res[k].coverage, res[k].ones,
               res[k].checksum);
    putchar('\n');
    fflush(stdout);
}

/* ------------------------------------------------------------------ */
/* main                                                                 */

static int parse_encoding(const char *s)
{
    if (strcmp(s, "default") == 0) return ENC_DEFAULT;
    if (strcmp(s, "rle") == 0) return ENC_RLE;
    if (strcmp(s, "coco") == 0) return ENC_COCO;
    if (strcmp(s, "bitmask") == 0) return ENC_BITMASK;
    return -1;
}

int main(int argc, char **argv)
{
    const char *path = DEFAULT_SOCKET;
    const char **prompts = NULL;
    size_t nprompts = 0;
    int encoding = ENC_DEFAULT;
    unsigned long long count = 0;
    double timeout_s = 10.0;

    if (argc > 0 && argv[0] && argv[0][0])
        progname = argv[0];
    prompts = calloc((size_t)(argc > 0 ? argc : 1), sizeof *prompts);
    if (!prompts)
        die("out of memory");

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        const char *v = NULL;
        const char *name = a;
        size_t nl = strlen(a);
        const char *eq = strchr(a, '=');
        static const char *const opts[] = { "--socket", "--prompt", "--encoding", "--count",
                                            "--timeout" };
        int which = -1;
        for (int o = 0; o < 5; o++) {
            size_t ol = strlen(opts[o]);
            if (strcmp(a, opts[o]) == 0 || (eq && (size_t)(eq - a) == ol && nl > ol &&
                                            strncmp(a, opts[o], ol) == 0)) {
                which = o;
                name = opts[o];
                break;
            }
        }
        if (which < 0)
            usage_error("unknown argument '%s'", a);
        if (eq && (size_t)(eq - a) == strlen(name)) {
            v = eq + 1;
        } else {
            if (i + 1 >= argc)
                usage_error("%s needs a value", name);
            v = argv[++i];
        }
        switch (which) {
        case 0:
            path = v;
            break;
        case 1:
            prompts[nprompts++] = v;
            break;
        case 2:
            encoding = parse_encoding(v);
            if (encoding < 0)
                usage_error("--encoding must be default, rle, coco or bitmask, not '%s'", v);
            break;
        case 3: {
            char *end;
            errno = 0;
            if (v[0] < '0' || v[0] > '9')
                usage_error("--count must be a non-negative integer, not '%s'", v);
            count = strtoull(v, &end, 10);
            if (errno || *end)
                usage_error("--count must be a non-negative integer, not '%s'", v);
            break;
        }
        case 4: {
            char *end;
            errno = 0;
            timeout_s = strtod(v, &end);
            if (errno || *end || end == v || !isfinite(timeout_s) || timeout_s <= 0 ||
                timeout_s > 1e9)
                usage_error("--timeout must be a positive number of seconds, not '%s'", v);
            break;
        }
        }
    }
    if (nprompts == 0)
        usage_error("at least one --prompt is required");
    if (nprompts > 0xffff)
        usage_error("too many prompts to encode (%zu)", nprompts);

    /* Build SUBSCRIBE (5.1). Limits other than what the wire can encode are
     * left to the server, which answers with an ERROR. */
    size_t mlen = 12;
    for (size_t i = 0; i < nprompts; i++) {
        size_t l = strlen(prompts[i]);
        if (l > 0xffff)
            usage_error("prompt %zu is %zu bytes, too long to encode", i, l);
        mlen += 2 + l;
    }
    uint8_t *msg = malloc(mlen);
    if (!msg)
        die("out of memory");
    memcpy(msg, "MSKD", 4);
    wr16(msg + 4, 1);
    wr16(msg + 6, T_SUBSCRIBE);
    msg[8] = (uint8_t)encoding;
    msg[9] = 0;
    wr16(msg + 10, (uint16_t)nprompts);
    size_t off = 12;
    for (size_t i = 0; i < nprompts; i++) {
        size_t l = strlen(prompts[i]);
        wr16(msg + off, (uint16_t)l);
        memcpy(msg + off + 2, prompts[i], l);
        off += 2 + l;
    }

    rxbuf = malloc(MAX_MESSAGE_LEN);
    if (!rxbuf)
        die("out of memory for the %u-byte receive buffer", MAX_MESSAGE_LEN);

    /* Connect (2.1, 2.4, 13 item 1). */
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sa.sun_path)
        die("cannot connect to %s: %s (is maskd running?)", path,
            "path longer than 107 bytes");
    memcpy(sa.sun_path, path, strlen(path) + 1);
    sock_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (sock_fd < 0)
        die("cannot connect to %s: %s (is maskd running?)", path, strerror(errno));
    int rc;
    do {
        rc = connect(sock_fd, (struct sockaddr *)&sa, sizeof sa);
    } while (rc < 0 && errno == EINTR);
    if (rc < 0) {
        int e = errno;
        close(sock_fd);
        sock_fd = -1;
        die("cannot connect to %s: %s (is maskd running?)", path, strerror(e));
    }

    /* One message, one send(), no SIGPIPE (13 items 2, 3). */
    ssize_t sent;
    do {
        sent = send(sock_fd, msg, mlen, MSG_NOSIGNAL);
    } while (sent < 0 && errno == EINTR);
    if (sent < 0) {
        if (errno == EPIPE || errno == ECONNRESET)
            report_dropped(errno == EPIPE ? "EPIPE" : "ECONNRESET");
        die("cannot send SUBSCRIBE (%zu bytes): %s", mlen, strerror(errno));
    }
    if ((size_t)sent != mlen)
        die("SUBSCRIBE sent partially (%zd of %zu bytes)", sent, mlen);
    free(msg);

    int subscribed = 0;
    unsigned long long frames = 0;
    for (;;) {
        size_t len = recv_message(timeout_s);
        if (len < PREFIX_LEN)
            die("malformed message: %zu bytes is shorter than the 8-byte prefix", len);
        if (memcmp(rxbuf, "MSKD", 4) != 0)
            die("malformed message: bad magic %02x %02x %02x %02x", rxbuf[0], rxbuf[1],
                rxbuf[2], rxbuf[3]);
        unsigned version = rd16(rxbuf + 4);
        unsigned type = rd16(rxbuf + 6);
        if (type == T_ERROR)
            report_error_message(len, ""); /* any version (6.4) */
        if (version != 1)
            die("malformed message: unsupported protocol version %u (this client speaks 1)",
                version);

        if (type == T_FRAME) {
            handle_frame(len, subscribed);
            if (subscribed && count && ++frames >= count)
                break;
        } else if (type == T_SUBSCRIBED && !subscribed) {
            if (len < SUBSCRIBED_LEN)
                die("malformed message: SUBSCRIBED of %zu bytes is shorter than 12", len);
            unsigned enc = rxbuf[8];
            size_t ids = rd16(rxbuf + 10);
            if (len != SUBSCRIBED_LEN + 4 * ids)
                die("malformed message: SUBSCRIBED with %zu ids has %zu bytes, expected %zu",
                    ids, len, SUBSCRIBED_LEN + 4 * ids);
            if (ids != nprompts)
                die("malformed message: SUBSCRIBED has %zu ids for %zu prompts", ids, nprompts);
            if (enc < ENC_RLE || enc > ENC_BITMASK)
                die("malformed message: SUBSCRIBED with unknown encoding %u", enc);
            if (encoding != ENC_DEFAULT && enc != (unsigned)encoding)
                die("malformed message: SUBSCRIBED with encoding %u, requested %d", enc,
                    encoding);
            fputs("subscribed", stdout);
            for (size_t i = 0; i < ids; i++)
                printf(" %s=%" PRIu32, prompts[i], rd32(rxbuf + 12 + 4 * i));
            putchar('\n');
            fflush(stdout);
            subscribed = 1;
        } else {
            /* UNSUBSCRIBED, PONG, unknown types: skipped (11, 13 item 6). */
        }
    }

    close(sock_fd);
    sock_fd = -1;
    free(rxbuf);
    free(pixels);
    free(prompts);
    return 0;
}
