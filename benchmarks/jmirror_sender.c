/*
 * jmirror_sender: sends one UDP datagram N times at a fixed rate, for the lossless-rate
 * search in benchmarks/lossless_search.py (which compiles it with gcc at run time).
 *
 *   jmirror_sender --port PORT --count N --rate R (--hex HEX | --file PATH)
 *                  [--host 127.0.0.1] [--batch B] [--bind ADDRESS] [--random none|mid|all]
 *                  [--sessions N] [--ramp SECONDS] [--pace spin|sleep]
 *
 * --bind sends from that local IPv4 address (on loopback any 127.0.0.x), so one machine
 * plays several routers. --random varies each datagram, for the junk benchmark
 * (benchmarks/junk_benchmark.py): "mid" puts a random 32-bit mirror id (and session id)
 * in front of the given datagram, "all" replaces every byte with random ones (same
 * length); xorshift64, seeded from the clock.
 *
 * --sessions N (default 1) spreads the datagrams evenly over N mirror ids, for the
 * concurrent-sessions benchmark (benchmarks/sessions_benchmark.py): datagram i carries
 * mirror id (bytes 0..3 of the jmirror header, big endian, the V bits included) = the
 * given datagram's + (i % N), so N sessions get equal shares, evenly interleaved, at the
 * same pacing. Not with --random (which replaces the mirror id itself).
 *
 * --ramp S (with --sessions and a rate) starts the sessions over the first S seconds of
 * the schedule instead of all at once: datagram i rotates over the first
 * min(N, 1 + N * (i / rate) / S) mirror ids, as subscribers log in one after another.
 *
 * --rate 0 sends as fast as it can. Pacing: datagram i is due at start + i / rate; the
 * sender busy-waits on CLOCK_MONOTONIC until the first datagram of a batch is due and
 * sends the batch with one sendmmsg(). The default batch spans about 20 us of the
 * schedule (1 at 50k/s, 20 at 1M/s, at most 64), so the offered rate is even at any
 * scale above a few tens of microseconds. A sender that falls behind does not burst to
 * catch up by more than one batch at a time: it simply sends back to back, and the
 * achieved rate it prints shows the shortfall.
 *
 * --pace sleep sleeps until each batch is due instead (clock_nanosleep to an absolute
 * time, timer slack 1 ns), with batches of about 100 us of schedule: the sender's CPU is
 * left to other processes between batches (the evidence store in lossless_search.py
 * --store-idle), at the price of batches a few microseconds late.
 *
 * Prints one line on stdout, key=value pairs:
 *   sent=N bytes=SIZE seconds=T rate=R asked=R0 batch=B errors=E max_lag_us=L sessions=S
 * Exit status 0 when every datagram was handed to the kernel, 1 otherwise, 2 on usage.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 64
#define MAX_DATAGRAM 65507

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static size_t parse_hex(const char *text, unsigned char *out, size_t room) {
    size_t length = strlen(text);
    if (length % 2 || length / 2 > room) return 0;
    for (size_t i = 0; i < length / 2; i++) {
        int high = hex_value(text[2 * i]), low = hex_value(text[2 * i + 1]);
        if (high < 0 || low < 0) return 0;
        out[i] = (unsigned char)(high << 4 | low);
    }
    return length / 2;
}

static size_t read_file(const char *path, unsigned char *out, size_t room) {
    FILE *stream = fopen(path, "rb");
    if (!stream) return 0;
    size_t length = fread(out, 1, room, stream);
    fclose(stream);
    return length;
}

static void usage(void) {
    fprintf(stderr,
            "usage: jmirror_sender --port PORT --count N --rate R (--hex HEX | --file PATH)"
            " [--host 127.0.0.1] [--batch B] [--bind ADDRESS] [--random none|mid|all]"
            " [--sessions N] [--ramp SECONDS] [--pace spin|sleep]\n");
    exit(2);
}

int main(int argc, char **argv) {
    static unsigned char payload[MAX_DATAGRAM];
    size_t size = 0;
    const char *host = "127.0.0.1";
    long port = -1, batch = 0;
    unsigned long long count = 0, sessions = 1;
    double ramp = 0;
    double rate = -1;
    const char *bind_to = NULL, *random_mode = "none", *pace = "spin";

    for (int i = 1; i < argc; i++) {
        const char *option = argv[i];
        if (i + 1 >= argc) usage();
        const char *value = argv[++i];
        if (!strcmp(option, "--port")) port = strtol(value, NULL, 10);
        else if (!strcmp(option, "--count")) count = strtoull(value, NULL, 10);
        else if (!strcmp(option, "--rate")) rate = strtod(value, NULL);
        else if (!strcmp(option, "--hex")) size = parse_hex(value, payload, sizeof payload);
        else if (!strcmp(option, "--file")) size = read_file(value, payload, sizeof payload);
        else if (!strcmp(option, "--host")) host = value;
        else if (!strcmp(option, "--batch")) batch = strtol(value, NULL, 10);
        else if (!strcmp(option, "--bind")) bind_to = value;
        else if (!strcmp(option, "--random")) random_mode = value;
        else if (!strcmp(option, "--ramp")) ramp = strtod(value, NULL);
        else if (!strcmp(option, "--pace")) pace = value;
        else if (!strcmp(option, "--sessions")) {
            char *end = NULL;
            sessions = strtoull(value, &end, 10);
            if (end == value || *end != '\0' || value[0] == '-') usage();
        }
        else usage();
    }
    int randomise = !strcmp(random_mode, "mid") ? 1 : !strcmp(random_mode, "all") ? 2 : 0;
    if (port <= 0 || port > 65535 || count == 0 || rate < 0 || size == 0) usage();
    if (!randomise && strcmp(random_mode, "none")) usage();
    if (randomise == 1 && size < 8) usage();
    /* The mirror id is a 32-bit field: more sessions than ids would repeat ids. */
    if (sessions == 0 || sessions > 0xFFFFFFFFull || (sessions > 1 && (randomise || size < 4)))
        usage();
    if (ramp < 0 || (ramp > 0 && (sessions < 2 || rate <= 0))) usage();
    if (strcmp(pace, "spin") && strcmp(pace, "sleep")) usage();
    const int sleeping = !strcmp(pace, "sleep");
    if (sleeping) prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
    const uint32_t first_mid = (uint32_t)payload[0] << 24 | (uint32_t)payload[1] << 16 |
                               (uint32_t)payload[2] << 8 | (uint32_t)payload[3];
    if (batch <= 0) {
        /* About 20 us of schedule per batch (100 us when sleeping); flat out, the
         * largest batch. */
        batch = rate > 0 ? (long)(rate * (sleeping ? 100e-6 : 20e-6)) : MAX_BATCH;
        if (batch < 1) batch = 1;
    }
    if (batch > MAX_BATCH) batch = MAX_BATCH;

    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &address.sin_addr) != 1) {
        fprintf(stderr, "jmirror_sender: %s is not an IPv4 address\n", host);
        return 2;
    }
    int sock = socket(AF_INET, SOCK_DGRAM, 0);
    if (sock < 0) {
        perror("jmirror_sender: socket");
        return 1;
    }
    if (bind_to != NULL) {
        struct sockaddr_in local = {.sin_family = AF_INET};
        if (inet_pton(AF_INET, bind_to, &local.sin_addr) != 1 ||
            bind(sock, (struct sockaddr *)&local, sizeof local) < 0) {
            fprintf(stderr, "jmirror_sender: cannot send from %s\n", bind_to);
            return 2;
        }
    }
    if (connect(sock, (struct sockaddr *)&address, sizeof address) < 0) {
        perror("jmirror_sender: connect");
        return 1;
    }
    int sndbuf = 4 << 20;
    setsockopt(sock, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);

    /* One buffer per message of a batch when each datagram differs. */
    const int differ = randomise || sessions > 1;
    static unsigned char varied[MAX_BATCH][MAX_DATAGRAM];
    struct iovec iovs[MAX_BATCH];
    struct mmsghdr messages[MAX_BATCH];
    memset(messages, 0, sizeof messages);
    for (int i = 0; i < MAX_BATCH; i++) {
        if (differ) memcpy(varied[i], payload, size);
        iovs[i].iov_base = differ ? varied[i] : payload;
        iovs[i].iov_len = size;
        messages[i].msg_hdr.msg_iov = &iovs[i];
        messages[i].msg_hdr.msg_iovlen = 1;
    }
    uint64_t state = now_ns() | 1;

    const double interval_ns = rate > 0 ? 1e9 / rate : 0;
    unsigned long long sent = 0, errors = 0;
    uint64_t max_lag = 0;
    const uint64_t start = now_ns();
    while (sent < count) {
        if (interval_ns > 0) {
            uint64_t due = start + (uint64_t)((double)sent * interval_ns);
            uint64_t now = now_ns();
            if (sleeping && due > now) {
                struct timespec until = {(time_t)(due / 1000000000ull),
                                         (long)(due % 1000000000ull)};
                clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL);
                now = now_ns();
            }
            /* Far from due (a slow stream): sleep most of the way, so that a second
             * sender pinned to the same CPU (benchmarks/junk_benchmark.py) gets it. */
            if (due > now + 200000) {
                struct timespec pause = {0, (long)(due - now - 100000)};
                nanosleep(&pause, NULL);
                now = now_ns();
            }
            while (now < due) now = now_ns();
            if (now - due > max_lag) max_lag = now - due;
        }
        unsigned long long left = count - sent;
        unsigned int want = left < (unsigned long long)batch ? (unsigned int)left
                                                             : (unsigned int)batch;
        for (unsigned int m = 0; randomise && m < want; m++) {
            size_t bytes = randomise == 1 ? 8 : size;
            for (size_t k = 0; k < bytes; k += 8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                size_t n = bytes - k < 8 ? bytes - k : 8;
                memcpy(varied[m] + k, &state, n);
            }
        }
        /* Message m of the batch is datagram sent + m: its session's mirror id. A batch
         * sent only in part is rebuilt from the first unsent datagram next time round. */
        for (unsigned int m = 0; sessions > 1 && m < want; m++) {
            unsigned long long rotation = sessions;
            if (ramp > 0) {
                double started = 1.0 + (double)sessions * ((double)(sent + m) / rate) / ramp;
                if (started < (double)sessions) rotation = (unsigned long long)started;
            }
            uint32_t mid = first_mid + (uint32_t)((sent + m) % rotation);
            varied[m][0] = (unsigned char)(mid >> 24);
            varied[m][1] = (unsigned char)(mid >> 16);
            varied[m][2] = (unsigned char)(mid >> 8);
            varied[m][3] = (unsigned char)mid;
        }
        int done = sendmmsg(sock, messages, want, 0);
        if (done < 0) {
            /* A pending ICMP error (ECONNREFUSED) or a full queue: that datagram was not
             * sent; count it and try again, giving up after many failures in a row. */
            errors++;
            if (errors > 1000000) {
                fprintf(stderr, "jmirror_sender: giving up: %s\n", strerror(errno));
                break;
            }
            continue;
        }
        sent += (unsigned long long)done;
    }
    const double seconds = (double)(now_ns() - start) / 1e9;
    printf("sent=%llu bytes=%zu seconds=%.6f rate=%.0f asked=%.0f batch=%ld errors=%llu "
           "max_lag_us=%.1f sessions=%llu\n",
           sent, size, seconds, seconds > 0 ? (double)sent / seconds : 0.0, rate, batch,
           errors, (double)max_lag / 1e3, sessions);
    close(sock);
    return sent == count ? 0 : 1;
}
