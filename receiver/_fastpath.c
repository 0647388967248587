/*
 * receiver._fastpath: the receive loop's per-datagram work for the common case, in C.
 *
 * Why C: the receiver must keep up with tcpdump on the same stream. In Python the loop measured
 * about 3.0 us per 128-byte datagram (recvmmsg through ctypes, classify, gate cache,
 * counters, pcap record append), of which the kernel's own receive is about 1.2 us; the
 * rest is interpreter work per datagram. This module does that rest in C for datagrams
 * of streams already known to be claimed and stored, and hands everything else back to
 * Python one datagram at a time, so the rules (gate, sessions, rotation, flush, errors)
 * stay written once, in Python (receiver.pipeline, receiver.store).
 *
 * One FastReceiver per socket:
 *
 *   receive()        one recvmmsg(2): up to `batch` datagrams, with the kernel's receive
 *                    timestamps (SO_TIMESTAMPNS) and source addresses. Returns the count.
 *   store(start)     from datagram `start` on, every datagram whose stream is bound (see
 *                    bind) and whose packet the Python store would simply append is
 *                    appended here: a pcap record into the open file's buffer, and the
 *                    session's and file's counts. Stops at the first datagram it cannot
 *                    take and returns its index (the count when done), after writing the
 *                    counts back to the Python objects, so Python sees them whole.
 *   datagram(i)      (payload bytes, raw source key, receive time) for Python's path.
 *   bind(i, ..., watched)
 *                    after Python stored datagram i: its stream's session delta, open
 *                    file and the span of receive times over which the gate's answer
 *                    holds. Later datagrams of that stream then stay in C, until the
 *                    file closes (C sees its descriptor gone and hands the datagram back),
 *                    the span ends or the gate changes. The latest datagrams are kept for
 *                    the live view only when `watched`.
 *   hand_over(map, complete)
 *                    at a tick: each bound stream's latest datagrams go to its delta, and
 *                    the deltas the snapshot takes are replaced by their successors; the
 *                    bindings stay, so the cost of a tick does not grow into a rebinding
 *                    of every session through Python.
 *   clear(complete)  forget every binding and verdict: Python calls it when the gate or
 *                    what browsers watch changes, or idle sessions are let go; `complete`
 *                    when its unclaimed table for this tick is empty and fed by no other
 *                    receiver (C may aggregate then).
 *   set_gate(ids, n) the gate's claimed intercept ids (mid & 0x3FFFFFFF): from then on C
 *                    also decides datagrams that will be dropped (below).
 *   refuse(i, ...)   after Python dropped datagram i as unclaimed: the reason and the
 *                    span it holds for. Its source's verdict (unknown router, or router)
 *                    is remembered, and for a claimed intercept id the stream's too.
 *   take_dropped()   what C dropped since the last call: counts per reason, and the
 *                    unclaimed streams with their counts, in order of first datagram.
 *
 * Dropped datagrams (junk from anyone who can send UDP must cost no more than
 * a stored packet, or it crowds the claimed streams out of the socket buffer). Once
 * set_gate was called, C drops without Python: a datagram classify_datagram would refuse
 * (malformed: jmirror_valid mirrors receiver.jmirror.decode_datagram's checks); one from
 * a source Python found unregistered (unknown_router, whatever the mid); one from a
 * registered router whose intercept id the gate does not know (no_intercept); one of a
 * stream Python refused, inside the span of that answer. Their unclaimed streams are
 * counted in a bounded table (PENDING_LIMIT), a row per stream, and once a source has `n`
 * streams apart this tick its others in the source's aggregate, as
 * receiver.pipeline.admit_unclaimed would do with them (count_unclaimed says when C can be
 * sure of that); a full table hands the datagram to Python, which takes it first. Python takes it before it handles
 * any datagram itself and at every tick, so the unclaimed streams reach it in the order
 * they came, and its results are those of handling each datagram (property test).
 *
 * Contrail (FastReceiver(..., contrail=True), one per CN2 analyzer socket): store() takes
 * a vRouter's datagram when bind_contrail bound its source for exactly its Juniper header
 * (Python found a claim by analyzer port, which holds whatever the frame, and made the
 * header's pcapng options), contrail_fast says decode_contrail accepts it, and the file
 * takes the block; it appends the Enhanced Packet Block PcapStore.write_block would. A
 * flow's two directions are two headers, so two bindings of one session. Nothing is
 * dropped in C on such a socket; claims by virtual network or target stay in Python. The
 * property test in tests/receiver/test_fastpath_contrail.py holds it to
 * DatagramPipeline.handle_contrail.
 *
 * What C takes (anything else goes to Python, in order, so the files are the same):
 * a bound stream (source address, mirror id, session id) inside its span; an inner
 * packet that receiver.jmirror.classify_datagram recognises on its fast paths (IPv4 and
 * IPv6 without extension headers, IPv4 in HDLC-framed PPP), with a file bound for its
 * link type; a file below its rotation size and age; and room in the file's buffer for
 * the record without reaching the flush threshold. The property test in
 * tests/receiver/test_fastpath.py holds this module to DatagramPipeline.handle's results.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

/* receiver.pcap's LinkType.PPP_HDLC and RAW and RECORD_HEADER_LENGTH, exposed as module
 * constants that a test holds to them. */
#define LINKTYPE_PPP_HDLC 50
#define LINKTYPE_RAW 101
#define LINKTYPE_ETHERNET 1
#define RECORD_HEADER 16
/* pcapng Enhanced Packet Block: type, length, interface, time high and low, captured and
 * original length; after the data and options, the end of options and the length again. */
#define EPB_HEAD 28
#define EPB_TAIL 8
#define MAX_VLAN_TAGS 8
/* Streams bound at once. Bounded so junk cannot grow it; a full table is cleared and
 * streams rebind through Python on their next datagram. Sized for the concurrent sessions
 * of a busy mediation host (10,000 at 100,000 datagrams/s): a table smaller
 * than the sessions in flight is cleared over and over and every datagram goes through
 * Python. Three quarters full at most, for short probe runs; an entry is about 150
 * bytes, the recent-packet rings are allocated only for watched streams. */
#define TABLE_SIZE 32768
#define TABLE_LIMIT 24576
/* The most recent stored packets per session kept for the live view, as
 * receiver.pipeline.RECENT_PACKETS. */
#define RECENT 16
#define MAX_BATCH 1024
#define NS 1000000000LL
/* Sources with a verdict, and unclaimed streams counted between two take_dropped()
 * calls: bounded, so junk from many sources cannot grow them; a full source table is
 * forgotten (verdicts are relearned through Python), a full pending table sends the
 * datagram to Python. */
#define SOURCE_SIZE 2048
#define SOURCE_LIMIT 1024
#define PENDING_LIMIT 1024
#define PENDING_SLOTS 2048
#define MAX_CLAIMED_IDS (1 << 20)
/* A source's streams remembered as handed to Python apart (see count_unclaimed). */
#define KNOWN_MAX 64
#define INTERCEPT_ID_MASK 0x3FFFFFFFu
/* Drop reasons, as receiver.gate names them; 0 in an Entry is a stored binding. */
#define UNKNOWN_ROUTER 1
#define NO_INTERCEPT 2
#define OUTSIDE_WINDOW 3
#define VERDICT_UNKNOWN 1
#define VERDICT_ROUTER 2

typedef struct {
    PyObject *file;   /* the store's _OpenFile (borrowed from the entry) */
    PyObject *buffer; /* its bytearray (new reference while the call runs) */
    long long size;   /* file.size as of now, including this call's records */
    long long added_size;
    long long added_packets;
    long long last_ns;
    long long deadline_ns;
} CallFile;

typedef struct {
    int used;
    int key_length; /* 4 (IPv4 address) or 20 (IPv6 address and scope id) */
    unsigned char source[20];
    uint32_t mid;
    uint32_t sid;
    long long low, high; /* the gate's answer holds for receive times in [low, high) */
    int drop;            /* 0: stored (delta, files); else the reason it is dropped */
    PyObject *delta;     /* SessionDelta */
    PyObject *files[2];  /* the open file per link type: [0] raw IP, [1] PPP */
    /* This store() call's accumulation, written back at its end. */
    int touched;
    int call_file[2]; /* index into the call's CallFile array, -1 until first use */
    long long packets, bytes, last_ns;
    /* Whether a browser watches the session (bind's argument): only then are its latest
     * datagrams kept for the live view (a sample of every session cost the
     * receiver per session and tick). */
    int watched;
    /* The ring of those datagrams; allocated on first use and kept with the slot. */
    struct Recent *recent;
    /* Contrail (a FastReceiver made with contrail=True): the Juniper header (TLV bytes)
     * this binding is for, and the pcapng options Python made for it. The entry's key is
     * then (source, a hash of the header, its length), and a datagram is taken only when
     * its header is exactly these bytes. */
    unsigned char *header;
    unsigned header_length;
    unsigned char *options;
    unsigned options_length;
} Entry;

/* A stream's latest stored datagrams, copied here rather than made Python objects per
 * datagram (that measured a third of the receiver's time at small batches, most of it
 * the garbage collector's); handed to the delta's `recent` only by flush_recent: at
 * clear and hand_over, on a new delta, and before Python stores one of the stream's
 * datagrams. */
typedef struct Recent {
    int count, next;
    long long time[RECENT];
    unsigned length[RECENT];
    unsigned capacity[RECENT];
    unsigned char *data[RECENT];
} Recent;

/* A source's verdict: unregistered (everything it sends is unknown_router) or a
 * registered router; and its streams handed to Python apart since the sources were last
 * reset (a superset of those Python's unclaimed table lists apart, when `complete`):
 * `tainted` when there were more than KNOWN_MAX. */
typedef struct {
    int used;
    int key_length;
    unsigned char source[20];
    int verdict;
    int known_count, tainted;
    uint32_t known[KNOWN_MAX][2];
} Source;

/* An unclaimed stream counted in C since the last take_dropped(); `aggregate` is the
 * source's row for its streams past the per-source limit (mid and sid unused). */
typedef struct {
    int key_length;
    unsigned char source[20];
    uint32_t mid, sid;
    int aggregate;
    int reason;
    long long count, first_ns, last_ns;
} Pending;

typedef struct {
    PyObject_HEAD
    int fd;
    int family;
    int batch;
    int max_datagram;
    int timestamps;
    Py_ssize_t rotate_bytes;
    Py_ssize_t buffer_bytes;
    unsigned char *data;     /* batch * max_datagram */
    unsigned char *names;    /* batch * sizeof(struct sockaddr_in6) */
    unsigned char *control;  /* batch * CONTROL_SPACE */
    struct iovec *iovecs;
    struct mmsghdr *messages;
    /* The last receive(): count, lengths, times, and which were truncated. */
    int count;
    unsigned int *lengths;
    long long *times;
    /* Bound streams. */
    Entry *table;
    int entries;
    int last_hit;
    int *touched;
    int touched_count;
    CallFile *call_files;
    int call_file_count;
    /* Since the last take_counts(). */
    long long received, received_bytes, fast, fast_bytes;
    long long truncated;
    /* Where the last failed store() stopped: datagrams before it were stored. */
    int failed_at;
    int initialised;
    /* Dropped datagrams (set_gate, refuse, take_dropped). */
    int deciding;
    uint32_t *claimed_ids; /* sorted */
    int claimed_count;
    int streams_per_source;
    Source *sources;
    int source_entries;
    /* Whether Python's unclaimed table was empty when the sources were last reset (clear's
     * argument), so that each source's `known` holds every stream it lists apart. */
    int complete;
    Pending *pending;
    int pending_count;
    int *pending_slots; /* index into pending, -1 when empty */
    long long malformed, dropped[4];
    /* A socket of CN2 / Contrail: store() takes bound Contrail datagrams (pcapng blocks)
     * instead of jmirror ones; nothing is dropped in C (see store_contrail). */
    int contrail;
} FastReceiver;

#define CONTROL_SPACE CMSG_SPACE(sizeof(struct timespec))
#define NAME_SPACE ((int)sizeof(struct sockaddr_in6))

static PyObject *s_size, *s_packets, *s_last_ns, *s_bytes, *s_stored, *s_recent,
    *s_buffer, *s_deadline_ns, *s_extend, *s_fd;

/* ---- helpers ------------------------------------------------------------------------ */

static inline uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void put_le32(unsigned char *p, uint32_t value) {
    p[0] = (unsigned char)value;
    p[1] = (unsigned char)(value >> 8);
    p[2] = (unsigned char)(value >> 16);
    p[3] = (unsigned char)(value >> 24);
}

static inline unsigned be16(const unsigned char *p) { return ((unsigned)p[0] << 8) | p[1]; }

/* IPv6 extension headers and fragment/authentication: classify_datagram's fast path
 * refuses these next headers (receiver.ip.IPV6_HEADER_CHAIN; the module's
 * IPV6_HEADER_CHAIN is this function's answer, tested equal to it). */
static inline int ipv6_header_chain(unsigned proto) {
    return proto == 0 || proto == 43 || proto == 44 || proto == 51 || proto == 60 ||
           proto == 135 || proto == 139 || proto == 140;
}

/* The link type classify_datagram's fast paths give this datagram, or 0 when they do
 * not recognise it (Python decides then). Mirrors receiver.jmirror.classify_datagram. */
static inline int fast_linktype(const unsigned char *p, unsigned n) {
    if (n >= 32 && p[8] == 0x45) {
        return be16(p + 10) == n - 8 ? LINKTYPE_RAW : 0;
    }
    if (n >= 52 && (p[8] >> 4) == 6) {
        return (be16(p + 12) + 48 == n && !ipv6_header_chain(p[14])) ? LINKTYPE_RAW : 0;
    }
    if (n >= 32 && p[8] == 0xFF) {
        return (be16(p + 8) == 0xFF03 && be16(p + 10) == 0x0021 && p[12] == 0x45 &&
                be16(p + 14) == n - 12)
                   ? LINKTYPE_PPP_HDLC
                   : 0;
    }
    return 0;
}

static inline int slot_of(int linktype) { return linktype == LINKTYPE_PPP_HDLC ? 1 : 0; }

/* The raw source key of datagram i: 4 bytes of IPv4 address, or 16 of IPv6 and the
 * 4-byte scope id. */
static inline const unsigned char *source_key(FastReceiver *self, int i, int *length) {
    unsigned char *name = self->names + (size_t)i * NAME_SPACE;
    if (self->family == AF_INET) {
        *length = 4;
        return (unsigned char *)&((struct sockaddr_in *)name)->sin_addr;
    }
    *length = 20;
    return (unsigned char *)&((struct sockaddr_in6 *)name)->sin6_addr; /* addr, then scope */
}

static inline unsigned hash_key(const unsigned char *key, int length, uint32_t mid, uint32_t sid) {
    uint64_t h = 1469598103934665603ULL;
    for (int k = 0; k < length; k++) h = (h ^ key[k]) * 1099511628211ULL;
    h = (h ^ mid) * 1099511628211ULL;
    h = (h ^ sid) * 1099511628211ULL;
    return (unsigned)(h ^ (h >> 29));
}

static inline int entry_matches(const Entry *e, const unsigned char *key, int length,
                                uint32_t mid, uint32_t sid) {
    return e->used && e->mid == mid && e->sid == sid && e->key_length == length &&
           memcmp(e->source, key, length) == 0;
}

/* The entry of a stream, or -1. */
static inline int find_entry(FastReceiver *self, const unsigned char *key, int length,
                             uint32_t mid, uint32_t sid) {
    if (self->last_hit >= 0 && entry_matches(&self->table[self->last_hit], key, length, mid, sid))
        return self->last_hit;
    unsigned index = hash_key(key, length, mid, sid) & (TABLE_SIZE - 1);
    for (int probe = 0; probe < TABLE_SIZE; probe++) {
        Entry *e = &self->table[index];
        if (!e->used) return -1;
        if (entry_matches(e, key, length, mid, sid)) {
            self->last_hit = (int)index;
            return (int)index;
        }
        index = (index + 1) & (TABLE_SIZE - 1);
    }
    return -1;
}

/* ---- Contrail ------------------------------------------------------------------------ */

/* The length of a Contrail datagram's Juniper header (its TLVs and the FF 00 end marker)
 * when receiver.contrail.decode_contrail accepts the TLVs as it does (a capture host or
 * flags TLV of 4 bytes, no known TLV twice, an end marker without a value, nothing past
 * the datagram); else 0. */
static unsigned contrail_header_length(const unsigned char *p, unsigned n) {
    unsigned position = 0, seen = 0;
    for (;;) {
        if (position + 2 > n) return 0;
        unsigned kind = p[position], length = p[position + 1];
        position += 2 + length;
        if (kind == 255) return length ? 0 : position;
        if (position > n) return 0;
        if (kind >= 1 && kind <= 4) {
            if (seen & (1u << kind)) return 0;
            seen |= 1u << kind;
            if (kind <= 2 && length != 4) return 0;
        }
    }
}

/* The header length of a Contrail datagram C may store: decode_contrail accepts it (its
 * checks of the frame, on the frames C looks at: Ethernet with up to 8 VLAN tags, then
 * IPv4, IPv6 without extension headers, or no IP at all), else 0 and Python decides. */
static unsigned contrail_fast(const unsigned char *p, unsigned n) {
    unsigned header = contrail_header_length(p, n);
    if (header == 0) return 0;
    const unsigned char *f = p + header;
    unsigned L = n - header;
    if (L < 14) return 0;
    unsigned type = be16(f + 12), at = 14, tags = 0;
    while (type == 0x8100 || type == 0x88A8 || type == 0x9100) {
        if (tags == MAX_VLAN_TAGS || at + 4 > L) return 0;
        type = be16(f + at + 2);
        at += 4;
        tags++;
    }
    if (type == 0x0800) {
        if (L - at < 20) return 0;
        unsigned version_ihl = f[at], header_length = (version_ihl & 15) * 4;
        unsigned total = be16(f + at + 2);
        if ((version_ihl >> 4) != 4 || header_length < 20) return 0;
        return (total <= L - at && total >= header_length) ? header : 0;
    }
    if (type == 0x86DD) {
        if (L - at < 40 || (f[at] >> 4) != 6) return 0;
        if (be16(f + at + 4) + 40u > L - at) return 0;
        return ipv6_header_chain(f[at + 6]) ? 0 : header; /* Python walks the chain */
    }
    return header;
}

static inline unsigned hash_bytes(const unsigned char *p, unsigned n) {
    uint32_t h = 2166136261u;
    for (unsigned k = 0; k < n; k++) h = (h ^ p[k]) * 16777619u;
    return h;
}

/* ---- dropped datagrams ---------------------------------------------------------------- */

/* Whether receiver.jmirror._decode_ipv4 accepts the IPv4 packet at d + off filling the
 * rest of d (length L). */
static int ipv4_valid(const unsigned char *d, unsigned L, unsigned off) {
    if (off > L || L - off < 20) return 0;
    unsigned length = L - off;
    unsigned version_ihl = d[off];
    unsigned header_length = (version_ihl & 15) * 4;
    if ((version_ihl >> 4) != 4 || header_length < 20) return 0;
    if (be16(d + off + 2) != length) return 0;
    return header_length <= length;
}

/* The same for receiver.jmirror._decode_ipv6, extension headers included. */
static int ipv6_valid(const unsigned char *d, unsigned L, unsigned off) {
    if (off > L || L - off < 40) return 0;
    if ((d[off] >> 4) != 6) return 0;
    if (be16(d + off + 4) + 40u != L - off) return 0;
    unsigned proto = d[off + 6];
    size_t position = (size_t)off + 40;
    /* Each header moves on by at least 8 bytes: bounded by the packet. */
    while (ipv6_header_chain(proto)) {
        if (position + 8 > L) return 0;
        unsigned next = d[position];
        if (proto == 44) {
            position += 8;
        } else if (proto == 51) {
            position += ((size_t)d[position + 1] + 2) * 4;
        } else {
            position += ((size_t)d[position + 1] + 1) * 8;
        }
        proto = next;
    }
    return position <= L;
}

/* Whether receiver.jmirror.decode_datagram accepts the datagram (else it is malformed). */
static int jmirror_valid(const unsigned char *p, unsigned n) {
    if (n <= 8) return 0; /* too short, or nothing after the header */
    const unsigned char *d = p + 8;
    unsigned L = n - 8;
    unsigned version = d[0] >> 4;
    if (version == 4) return ipv4_valid(d, L, 0);
    if (version == 6) return ipv6_valid(d, L, 0);
    if (d[0] == 0xFF && L >= 2 && d[1] == 0x03) {
        unsigned protocol, offset;
        if (L >= 3 && (d[2] & 1)) {
            protocol = d[2]; /* compressed protocol field */
            offset = 3;
        } else {
            if (L < 4) return 0;
            protocol = be16(d + 2);
            offset = 4;
        }
        if (protocol == 0x0021) return ipv4_valid(d, L, offset);
        if (protocol == 0x0057) return ipv6_valid(d, L, offset);
        return 1;
    }
    return 1; /* neither IP nor PPP: decodes as "unknown" */
}

static int is_claimed_id(FastReceiver *self, uint32_t id) {
    int low = 0, high = self->claimed_count;
    while (low < high) {
        int middle = low + (high - low) / 2;
        if (self->claimed_ids[middle] < id) {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    return low < self->claimed_count && self->claimed_ids[low] == id;
}

/* Forget every source's verdict and streams; `complete` as that field says. */
static void reset_sources(FastReceiver *self, int complete) {
    memset(self->sources, 0, SOURCE_SIZE * sizeof(Source));
    self->source_entries = 0;
    self->complete = complete;
}

static int is_known(const Source *s, uint32_t mid, uint32_t sid) {
    for (int k = 0; k < s->known_count; k++)
        if (s->known[k][0] == mid && s->known[k][1] == sid) return 1;
    return 0;
}

/* Stream (mid, sid) of source s goes to Python apart (a row of its own, or decided there). */
static void remember_stream(Source *s, uint32_t mid, uint32_t sid) {
    if (is_known(s, mid, sid)) return;
    if (s->known_count < KNOWN_MAX) {
        s->known[s->known_count][0] = mid;
        s->known[s->known_count][1] = sid;
        s->known_count++;
    } else {
        s->tainted = 1;
    }
}

static Source *find_source(FastReceiver *self, const unsigned char *key, int length, int add) {
    if (self->sources == NULL) return NULL;
    if (add && self->source_entries >= SOURCE_LIMIT) reset_sources(self, 0);
    unsigned index = hash_key(key, length, 0, 0) & (SOURCE_SIZE - 1);
    for (int probe = 0; probe < SOURCE_SIZE; probe++) {
        Source *s = &self->sources[index];
        if (!s->used) {
            if (!add) return NULL;
            memset(s, 0, sizeof *s);
            s->used = 1;
            s->key_length = length;
            memcpy(s->source, key, (size_t)length);
            self->source_entries++;
            return s;
        }
        if (s->key_length == length && memcmp(s->source, key, (size_t)length) == 0) return s;
        index = (index + 1) & (SOURCE_SIZE - 1);
    }
    return NULL;
}

/* Count a dropped datagram of stream (key, mid, sid) in the pending table: 0 when the
 * table is full (Python takes the datagram, after taking the table). A new stream goes to
 * the source's aggregate row only when receiver.pipeline.admit_unclaimed would surely put
 * it there: the source has `streams_per_source` streams listed apart this tick (it never
 * has fewer while Python's table is below nine tenths of its limit; above, a new stream
 * is aggregated or not listed there anyway) and this is none of them. That needs every
 * stream the source handed to Python apart this tick (here, or decided by Python: see
 * refuse) in `known`: else the stream has a row of its own, which Python admits. */
static int count_unclaimed(FastReceiver *self, Source *s, const unsigned char *key, int length,
                           uint32_t mid, uint32_t sid, int reason, long long time_ns) {
    int aggregate = 0;
    for (int attempt = 0; attempt < 2; attempt++) {
        uint32_t hmid = aggregate ? 0xFFFFFFFFu : mid, hsid = aggregate ? 0xFFFFFFFFu : sid;
        unsigned slot = hash_key(key, length, hmid, hsid) & (PENDING_SLOTS - 1);
        /* At most PENDING_LIMIT of the PENDING_SLOTS slots are used: an empty one is found. */
        for (int probe = 0; probe < PENDING_SLOTS; probe++) {
            int at = self->pending_slots[slot];
            if (at < 0) break;
            Pending *q = &self->pending[at];
            if (q->aggregate == aggregate && q->key_length == length &&
                (aggregate || (q->mid == mid && q->sid == sid)) &&
                memcmp(q->source, key, (size_t)length) == 0) {
                q->count++;
                q->last_ns = time_ns;
                q->reason = reason;
                return 1;
            }
            slot = (slot + 1) & (PENDING_SLOTS - 1);
        }
        if (!aggregate && self->complete && !s->tainted &&
            self->streams_per_source <= KNOWN_MAX &&
            s->known_count >= self->streams_per_source && !is_known(s, mid, sid)) {
            aggregate = 1;
            continue;
        }
        if (self->pending_count >= PENDING_LIMIT) return 0;
        Pending *q = &self->pending[self->pending_count];
        q->key_length = length;
        memcpy(q->source, key, (size_t)length);
        q->mid = aggregate ? 0 : mid;
        q->sid = aggregate ? 0 : sid;
        q->aggregate = aggregate;
        q->reason = reason;
        q->count = 1;
        q->first_ns = q->last_ns = time_ns;
        self->pending_slots[slot] = self->pending_count++;
        if (!aggregate) remember_stream(s, mid, sid);
        return 1;
    }
    return 0;
}

/* Drop datagram i in C when the answer is known (see the header): 1 when counted, 0
 * when Python must decide. `index` is its stream's entry, or -1. */
static int decide_drop(FastReceiver *self, int i, const unsigned char *p, unsigned n, int index) {
    if (!fast_linktype(p, n) && !jmirror_valid(p, n)) {
        self->malformed++;
        self->fast++;
        self->fast_bytes += n;
        return 1;
    }
    int key_length;
    const unsigned char *key = source_key(self, i, &key_length);
    Source *s = find_source(self, key, key_length, 0);
    if (s == NULL) return 0;
    uint32_t mid = be32(p), sid = be32(p + 4);
    long long time_ns = self->times[i];
    int reason;
    if (s->verdict == VERDICT_UNKNOWN) {
        reason = UNKNOWN_ROUTER;
    } else if (!is_claimed_id(self, mid & INTERCEPT_ID_MASK)) {
        reason = NO_INTERCEPT;
    } else {
        if (index < 0) return 0;
        Entry *e = &self->table[index];
        if (!e->drop || time_ns < e->low || time_ns >= e->high) return 0;
        reason = e->drop;
    }
    if (!count_unclaimed(self, s, key, key_length, mid, sid, reason, time_ns)) return 0;
    self->dropped[reason]++;
    self->fast++;
    self->fast_bytes += n;
    return 1;
}

/* Keeps the first error of a sequence of C API calls that must all be attempted: the
 * pending exception is set aside while the next call runs and restored at the end. */
typedef struct {
    PyObject *type, *value, *traceback;
} FirstError;

static void remember_error(FirstError *first) {
    if (!PyErr_Occurred()) return;
    if (first->type == NULL) {
        PyErr_Fetch(&first->type, &first->value, &first->traceback);
    } else {
        PyErr_Clear();
    }
}

static int restore_error(FirstError *first) {
    if (first->type == NULL) return 0;
    PyErr_Restore(first->type, first->value, first->traceback);
    return -1;
}

static int flush_recent(Entry *e);

static void free_recent(Entry *e) {
    if (e->recent == NULL) return;
    for (int k = 0; k < RECENT; k++) PyMem_Free(e->recent->data[k]);
    PyMem_Free(e->recent);
    e->recent = NULL;
}

static inline void forget_recent(Entry *e) {
    if (e->recent != NULL) e->recent->count = e->recent->next = 0;
}

static void forget_header(Entry *e) {
    PyMem_Free(e->header);
    PyMem_Free(e->options);
    e->header = e->options = NULL;
    e->header_length = e->options_length = 0;
}

/* Forget every binding, handing each stream's latest datagrams to its delta first. -1
 * when that failed (the table is cleared all the same). */
static int clear_table(FastReceiver *self, int flush) {
    FirstError first = {NULL, NULL, NULL};
    for (int i = 0; i < TABLE_SIZE; i++) {
        Entry *e = &self->table[i];
        if (!e->used) continue;
        if (flush && flush_recent(e) < 0) remember_error(&first);
        /* The ring's buffers stay for the next stream bound to this slot. */
        forget_recent(e);
        Py_CLEAR(e->delta);
        Py_CLEAR(e->files[0]);
        Py_CLEAR(e->files[1]);
        forget_header(e);
        e->used = 0;
        e->drop = 0;
    }
    self->entries = 0;
    self->last_hit = -1;
    return restore_error(&first);
}

/* obj.name += amount, for Python ints. */
static int add_to(PyObject *obj, PyObject *name, long long amount) {
    if (amount == 0) return 0;
    PyObject *old = PyObject_GetAttr(obj, name);
    if (old == NULL) return -1;
    PyObject *step = PyLong_FromLongLong(amount);
    if (step == NULL) {
        Py_DECREF(old);
        return -1;
    }
    PyObject *sum = PyNumber_Add(old, step);
    Py_DECREF(old);
    Py_DECREF(step);
    if (sum == NULL) return -1;
    int result = PyObject_SetAttr(obj, name, sum);
    Py_DECREF(sum);
    return result;
}

static int set_long(PyObject *obj, PyObject *name, long long value) {
    PyObject *number = PyLong_FromLongLong(value);
    if (number == NULL) return -1;
    int result = PyObject_SetAttr(obj, name, number);
    Py_DECREF(number);
    return result;
}

static long long get_long(PyObject *obj, PyObject *name, int *failed) {
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL) {
        *failed = 1;
        return 0;
    }
    long long result = PyLong_AsLongLong(value);
    Py_DECREF(value);
    if (result == -1 && PyErr_Occurred()) *failed = 1;
    return result;
}

/* The CallFile of an entry's file for this call, loading the file's state on first use
 * (two entries may share a file: they then share its CallFile). -1 on error; -2 when the
 * store has closed the file since it was bound (its descriptor is -1): the datagram goes
 * to Python, which opens the session's next file and binds it. Bindings outlive file
 * changes elsewhere this way, rather than every stream rebinding whenever any file opens
 * or closes. */
static int call_file_of(FastReceiver *self, Entry *e, int slot) {
    if (e->call_file[slot] >= 0) return e->call_file[slot];
    PyObject *file = e->files[slot];
    for (int k = 0; k < self->call_file_count; k++) {
        if (self->call_files[k].file == file) return e->call_file[slot] = k;
    }
    CallFile *c = &self->call_files[self->call_file_count];
    int failed = 0;
    long long fd = get_long(file, s_fd, &failed);
    if (failed) return -1;
    /* -1 is receiver.store's CLOSED_FD; -2, a file whose open is deferred, takes records
     * into its buffer like any other. */
    if (fd == -1) return -2;
    c->size = get_long(file, s_size, &failed);
    c->deadline_ns = get_long(file, s_deadline_ns, &failed);
    if (failed) return -1;
    PyObject *buffer = PyObject_GetAttr(file, s_buffer);
    if (buffer == NULL) return -1;
    if (!PyByteArray_CheckExact(buffer)) {
        Py_DECREF(buffer);
        PyErr_SetString(PyExc_TypeError, "an open file's buffer must be a bytearray");
        return -1;
    }
    c->file = file;
    c->buffer = buffer;
    c->added_size = c->added_packets = 0;
    c->last_ns = 0;
    return e->call_file[slot] = self->call_file_count++;
}

/* Hand the stream's latest datagrams to its delta's `recent` (a deque with a maxlen),
 * oldest first. In order: store() calls this before Python stores one of the stream's
 * datagrams, so whatever the deque holds came before. */
static int flush_recent(Entry *e) {
    Recent *r = e->recent;
    if (r == NULL || r->count == 0 || e->delta == NULL) return 0;
    int status = 0;
    PyObject *recent = PyObject_GetAttr(e->delta, s_recent);
    PyObject *items = recent == NULL ? NULL : PyList_New(0);
    if (items == NULL) status = -1;
    int start = r->count < RECENT ? 0 : r->next;
    for (int k = 0; status == 0 && k < r->count; k++) {
        int slot = (start + k) % RECENT;
        PyObject *item = Py_BuildValue("(Ly#)", r->time[slot], (const char *)r->data[slot],
                                       (Py_ssize_t)r->length[slot]);
        if (item == NULL || PyList_Append(items, item) < 0) status = -1;
        Py_XDECREF(item);
    }
    r->count = r->next = 0;
    if (status == 0) {
        PyObject *done = PyObject_CallMethodOneArg(recent, s_extend, items);
        if (done == NULL) status = -1;
        Py_XDECREF(done);
    }
    Py_XDECREF(items);
    Py_XDECREF(recent);
    return status;
}

/* Copy datagram i into the stream's ring of latest datagrams. -1 when out of memory. */
static inline int keep_recent(FastReceiver *self, Entry *e, int i) {
    Recent *r = e->recent;
    if (r == NULL) {
        r = e->recent = PyMem_Calloc(1, sizeof(Recent));
        if (r == NULL) return -1;
    }
    int slot = r->next;
    unsigned n = self->lengths[i];
    if (r->capacity[slot] < n) {
        /* Room for any datagram of this size class, so a stream reallocates rarely. */
        unsigned capacity = n < 2048 ? 2048 : n;
        unsigned char *grown = PyMem_Realloc(r->data[slot], capacity);
        if (grown == NULL) return -1;
        r->data[slot] = grown;
        r->capacity[slot] = capacity;
    }
    memcpy(r->data[slot], self->data + (size_t)i * self->max_datagram, n);
    r->length[slot] = n;
    r->time[slot] = self->times[i];
    r->next = (slot + 1) % RECENT;
    if (r->count < RECENT) r->count++;
    return 0;
}

/* Write this call's counts back into the Python objects and reset the accumulators.
 * Runs before store() returns, also on error, so Python never sees half the counts. */
static int write_back(FastReceiver *self) {
    FirstError first = {NULL, NULL, NULL};
    remember_error(&first); /* whatever failed in store() itself */
    /* The files first: their sizes must match the records in their buffers, or a later
     * cut back to the last whole record would land inside one. */
    for (int k = 0; k < self->call_file_count; k++) {
        CallFile *c = &self->call_files[k];
        if (c->added_packets) {
            if (add_to(c->file, s_size, c->added_size) < 0) remember_error(&first);
            if (add_to(c->file, s_packets, c->added_packets) < 0) remember_error(&first);
            if (set_long(c->file, s_last_ns, c->last_ns) < 0) remember_error(&first);
        }
        Py_CLEAR(c->buffer);
    }
    self->call_file_count = 0;
    for (int t = 0; t < self->touched_count; t++) {
        Entry *e = &self->table[self->touched[t]];
        e->touched = 0;
        e->call_file[0] = e->call_file[1] = -1;
        if (e->packets) {
            PyObject *delta = e->delta;
            if (add_to(delta, s_packets, e->packets) < 0) remember_error(&first);
            if (add_to(delta, s_bytes, e->bytes) < 0) remember_error(&first);
            if (add_to(delta, s_stored, e->packets) < 0) remember_error(&first);
            if (set_long(delta, s_last_ns, e->last_ns) < 0) remember_error(&first);
        }
        e->packets = e->bytes = 0;
    }
    self->touched_count = 0;
    return restore_error(&first);
}

/* ---- the type ----------------------------------------------------------------------- */

static void FastReceiver_dealloc(FastReceiver *self) {
    if (self->table) {
        clear_table(self, 0);
        for (int i = 0; i < TABLE_SIZE; i++) free_recent(&self->table[i]);
    }
    PyMem_Free(self->data);
    PyMem_Free(self->names);
    PyMem_Free(self->control);
    PyMem_Free(self->iovecs);
    PyMem_Free(self->messages);
    PyMem_Free(self->lengths);
    PyMem_Free(self->times);
    PyMem_Free(self->table);
    PyMem_Free(self->touched);
    PyMem_Free(self->call_files);
    PyMem_Free(self->claimed_ids);
    PyMem_Free(self->sources);
    PyMem_Free(self->pending);
    PyMem_Free(self->pending_slots);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int FastReceiver_init(FastReceiver *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"fd",           "family",       "batch",      "max_datagram",
                               "rotate_bytes", "buffer_bytes", "timestamps", "contrail",
                               NULL};
    int fd, family, batch, max_datagram, timestamps = 1, contrail = 0;
    Py_ssize_t rotate_bytes, buffer_bytes;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iiiinn|pp", keywords, &fd, &family, &batch,
                                     &max_datagram, &rotate_bytes, &buffer_bytes, &timestamps,
                                     &contrail))
        return -1;
    if (self->initialised || self->data != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "FastReceiver is already initialised");
        return -1;
    }
    if (family != AF_INET && family != AF_INET6) {
        PyErr_SetString(PyExc_ValueError, "family must be AF_INET or AF_INET6");
        return -1;
    }
    if (batch < 1 || batch > MAX_BATCH) {
        PyErr_SetString(PyExc_ValueError, "batch must be between 1 and 1024");
        return -1;
    }
    if (max_datagram < 1 || max_datagram > 65535) {
        PyErr_SetString(PyExc_ValueError, "max_datagram must be between 1 and 65535");
        return -1;
    }
    if (rotate_bytes < 1 || buffer_bytes < 1) {
        PyErr_SetString(PyExc_ValueError, "rotate_bytes and buffer_bytes must be positive");
        return -1;
    }
    self->fd = fd;
    self->family = family;
    self->batch = batch;
    self->max_datagram = max_datagram;
    self->timestamps = timestamps;
    self->contrail = contrail;
    self->rotate_bytes = rotate_bytes;
    self->buffer_bytes = buffer_bytes;
    self->data = PyMem_Calloc((size_t)batch, (size_t)max_datagram);
    self->names = PyMem_Calloc((size_t)batch, NAME_SPACE);
    self->control = PyMem_Calloc((size_t)batch, CONTROL_SPACE);
    self->iovecs = PyMem_Calloc((size_t)batch, sizeof(struct iovec));
    self->messages = PyMem_Calloc((size_t)batch, sizeof(struct mmsghdr));
    self->lengths = PyMem_Calloc((size_t)batch, sizeof(unsigned int));
    self->times = PyMem_Calloc((size_t)batch, sizeof(long long));
    self->table = PyMem_Calloc(TABLE_SIZE, sizeof(Entry));
    self->touched = PyMem_Calloc((size_t)batch, sizeof(int));
    self->call_files = PyMem_Calloc((size_t)batch * 2, sizeof(CallFile));
    self->sources = PyMem_Calloc(SOURCE_SIZE, sizeof(Source));
    self->pending = PyMem_Calloc(PENDING_LIMIT, sizeof(Pending));
    self->pending_slots = PyMem_Calloc(PENDING_SLOTS, sizeof(int));
    if (!self->data || !self->names || !self->control || !self->iovecs || !self->messages ||
        !self->lengths || !self->times || !self->table || !self->touched || !self->call_files ||
        !self->sources || !self->pending || !self->pending_slots) {
        /* Left half built, the object stays unusable (every method checks initialised);
         * dealloc frees what was allocated. */
        PyErr_NoMemory();
        return -1;
    }
    for (int i = 0; i < TABLE_SIZE; i++) self->table[i].call_file[0] = self->table[i].call_file[1] = -1;
    for (int i = 0; i < PENDING_SLOTS; i++) self->pending_slots[i] = -1;
    for (int i = 0; i < batch; i++) {
        self->iovecs[i].iov_base = self->data + (size_t)i * max_datagram;
        self->iovecs[i].iov_len = (size_t)max_datagram;
        self->messages[i].msg_hdr.msg_iov = &self->iovecs[i];
        self->messages[i].msg_hdr.msg_iovlen = 1;
    }
    self->last_hit = -1;
    self->initialised = 1;
    return 0;
}

static PyObject *not_initialised(void) {
    PyErr_SetString(PyExc_RuntimeError, "FastReceiver is not initialised");
    return NULL;
}

static PyObject *FastReceiver_receive(FastReceiver *self, PyObject *Py_UNUSED(ignored)) {
    if (!self->initialised) return not_initialised();
    int batch = self->batch;
    /* The kernel overwrites the name and control lengths of every message it fills. */
    for (int i = 0; i < batch; i++) {
        struct msghdr *h = &self->messages[i].msg_hdr;
        h->msg_name = self->names + (size_t)i * NAME_SPACE;
        h->msg_namelen = NAME_SPACE;
        if (self->timestamps) {
            h->msg_control = self->control + (size_t)i * CONTROL_SPACE;
            h->msg_controllen = CONTROL_SPACE;
        } else {
            h->msg_control = NULL;
            h->msg_controllen = 0;
        }
        h->msg_flags = 0;
    }
    int got;
    int error = 0;
    self->count = 0;
    /* The interpreter lock is kept: the call never blocks (MSG_DONTWAIT), and releasing it
     * once per batch let the bookkeeping and live threads take it for up to a switch
     * interval (5 ms) each time, the loop waiting while the socket buffer overflowed
     * (profiled: three threads each busy a third of the time). */
    got = recvmmsg(self->fd, self->messages, (unsigned)batch, MSG_DONTWAIT | MSG_TRUNC, NULL);
    if (got < 0) error = errno;
    if (got < 0) {
        if (error == EAGAIN || error == EWOULDBLOCK || error == EINTR) return PyLong_FromLong(0);
        errno = error;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    long long now_ns = (long long)now.tv_sec * NS + now.tv_nsec;
    for (int i = 0; i < got; i++) {
        struct msghdr *h = &self->messages[i].msg_hdr;
        unsigned length = self->messages[i].msg_len;
        self->lengths[i] = length;
        long long stamp = now_ns;
        if (self->timestamps) {
            for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c != NULL; c = CMSG_NXTHDR(h, c)) {
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_TIMESTAMPNS &&
                    c->cmsg_len >= CMSG_LEN(sizeof(struct timespec))) {
                    struct timespec ts;
                    memcpy(&ts, CMSG_DATA(c), sizeof ts);
                    stamp = (long long)ts.tv_sec * NS + ts.tv_nsec;
                    break;
                }
            }
        }
        self->times[i] = stamp;
        if (length > (unsigned)self->max_datagram) {
            self->truncated++;
        } else {
            self->received++;
            self->received_bytes += length;
        }
    }
    self->count = got;
    return PyLong_FromLong(got);
}

/* Whether datagram i was cut short (longer than max_datagram): skipped entirely. */
static inline int is_truncated(FastReceiver *self, int i) {
    return self->lengths[i] > (unsigned)self->max_datagram;
}

/* The entry bound to Contrail datagram p (header of `header` bytes) from source key, or -1. */
static int contrail_entry(FastReceiver *self, const unsigned char *key, int key_length,
                          const unsigned char *p, unsigned header) {
    int index = find_entry(self, key, key_length, hash_bytes(p, header), header);
    if (index < 0) return -1;
    Entry *e = &self->table[index];
    if (e->header == NULL || e->header_length != header || memcmp(e->header, p, header) != 0)
        return -1; /* another header with the same hash: Python's, which rebinds */
    return index;
}

/* store() on a Contrail socket. A datagram is taken when its stream (source) is bound for
 * exactly its Juniper header (bind_contrail: Python found the claim holds for the whole
 * stream, by analyzer port, and made the header's pcapng options), contrail_fast accepts it,
 * and the file takes the block as PcapStore.write_block would (no rotation, no flush due).
 * The block is receiver.pcap.enhanced_packet_block's: the frame, then the bound options.
 * Nothing is dropped in C: a Contrail port's junk and unclaimed frames go to Python. */
static PyObject *store_contrail(FastReceiver *self, int i) {
    int count = self->count;
    int failed = 0;
    for (; i < count; i++) {
        unsigned n = self->lengths[i];
        if (n > (unsigned)self->max_datagram) continue; /* truncated: dropped, counted */
        if (!self->entries) break;
        const unsigned char *p = self->data + (size_t)i * self->max_datagram;
        unsigned header = contrail_fast(p, n);
        if (header == 0) break;
        int key_length;
        const unsigned char *key = source_key(self, i, &key_length);
        int index = contrail_entry(self, key, key_length, p, header);
        if (index < 0) break;
        Entry *e = &self->table[index];
        long long time_ns = self->times[i];
        if (e->delta == NULL || time_ns < e->low || time_ns >= e->high) break;
        if (e->files[0] == NULL) break;
        int c_index = call_file_of(self, e, 0);
        if (c_index == -2) break; /* closed by the store: Python opens the next one */
        if (c_index < 0) {
            failed = 1;
            break;
        }
        if (!e->touched) {
            e->touched = 1;
            self->touched[self->touched_count++] = index;
        }
        CallFile *c = &self->call_files[c_index];
        unsigned frame_length = n - header;
        unsigned pad = (4 - (frame_length & 3)) & 3;
        Py_ssize_t block =
            EPB_HEAD + (Py_ssize_t)frame_length + pad + e->options_length + EPB_TAIL;
        Py_ssize_t held = PyByteArray_GET_SIZE(c->buffer);
        if (c->size >= self->rotate_bytes || time_ns >= c->deadline_ns ||
            held + block >= self->buffer_bytes)
            break;
        if (PyByteArray_Resize(c->buffer, held + block) < 0) {
            failed = 1;
            break;
        }
        unsigned char *out = (unsigned char *)PyByteArray_AS_STRING(c->buffer) + held;
        put_le32(out, 6); /* Enhanced Packet Block */
        put_le32(out + 4, (uint32_t)block);
        put_le32(out + 8, 0); /* interface 0: the file's only one */
        put_le32(out + 12, (uint32_t)((unsigned long long)time_ns >> 32));
        put_le32(out + 16, (uint32_t)((unsigned long long)time_ns & 0xFFFFFFFFu));
        put_le32(out + 20, frame_length);
        put_le32(out + 24, frame_length);
        memcpy(out + EPB_HEAD, p + header, frame_length);
        unsigned char *tail = out + EPB_HEAD + frame_length;
        memset(tail, 0, pad);
        memcpy(tail + pad, e->options, e->options_length);
        tail += pad + e->options_length;
        put_le32(tail, 0); /* end of options */
        put_le32(tail + 4, (uint32_t)block);
        c->size += block;
        c->added_size += block;
        c->added_packets++;
        c->last_ns = time_ns;
        e->packets++;
        e->bytes += n;
        e->last_ns = time_ns;
        if (e->watched && keep_recent(self, e, i) < 0) PyErr_Clear();
        self->fast++;
        self->fast_bytes += n;
    }
    if (i < count && !failed && self->entries && self->lengths[i] <= (unsigned)self->max_datagram) {
        /* Python stores this one: the latest datagrams C kept for its header go first.
         * (A session's other headers flush at the tick: the live sample may then show
         * an ingress and an egress datagram out of order; the files never are.) */
        const unsigned char *p = self->data + (size_t)i * self->max_datagram;
        unsigned header = contrail_header_length(p, self->lengths[i]);
        if (header) {
            int key_length;
            const unsigned char *key = source_key(self, i, &key_length);
            int index = contrail_entry(self, key, key_length, p, header);
            if (index >= 0 && flush_recent(&self->table[index]) < 0) failed = 1;
        }
    }
    self->failed_at = i;
    if (write_back(self) < 0) {
        self->failed_at = i;
        return NULL;
    }
    if (failed) return NULL;
    return PyLong_FromLong(i);
}

static PyObject *FastReceiver_store(FastReceiver *self, PyObject *arg) {
    if (!self->initialised) return not_initialised();
    long start = PyLong_AsLong(arg);
    if (start == -1 && PyErr_Occurred()) return NULL;
    int count = self->count;
    if (start < 0 || start > count) {
        PyErr_SetString(PyExc_IndexError, "start is outside the last batch");
        return NULL;
    }
    if (self->contrail) return store_contrail(self, (int)start);
    int i = (int)start;
    int failed = 0;
    for (; i < count; i++) {
        unsigned n = self->lengths[i];
        if (n > (unsigned)self->max_datagram) continue; /* truncated: dropped, counted */
        const unsigned char *p = self->data + (size_t)i * self->max_datagram;
        int index = -1;
        if (n >= 8 && self->entries) {
            int key_length;
            const unsigned char *key = source_key(self, i, &key_length);
            index = find_entry(self, key, key_length, be32(p), be32(p + 4));
        }
        if (index < 0 || self->table[index].drop) {
            if (self->deciding && decide_drop(self, i, p, n, index)) continue;
            break;
        }
        Entry *e = &self->table[index];
        long long time_ns = self->times[i];
        if (time_ns < e->low || time_ns >= e->high) break;
        int linktype = fast_linktype(p, n);
        if (linktype == 0) break;
        int slot = slot_of(linktype);
        if (e->files[slot] == NULL) break;
        int c_index = call_file_of(self, e, slot);
        if (c_index == -2) break; /* closed by the store: Python opens the next one */
        if (c_index < 0) {
            failed = 1;
            break;
        }
        /* Touched from its first CallFile on, so that write_back resets its indexes
         * even when this datagram goes to Python. */
        if (!e->touched) {
            e->touched = 1;
            self->touched[self->touched_count++] = index;
        }
        CallFile *c = &self->call_files[c_index];
        unsigned data_length = n - 8;
        Py_ssize_t record = RECORD_HEADER + (Py_ssize_t)data_length;
        Py_ssize_t held = PyByteArray_GET_SIZE(c->buffer);
        /* What PcapStore.write would do otherwise: rotate (size or age) or flush. */
        if (c->size >= self->rotate_bytes || time_ns >= c->deadline_ns ||
            held + record >= self->buffer_bytes)
            break;
        if (PyByteArray_Resize(c->buffer, held + record) < 0) {
            failed = 1;
            break;
        }
        unsigned char *out = (unsigned char *)PyByteArray_AS_STRING(c->buffer) + held;
        /* The record header as receiver.store writes it: seconds, nanoseconds, included
         * and original length, little-endian (the file header's byte order). */
        put_le32(out, (uint32_t)(time_ns / NS));
        put_le32(out + 4, (uint32_t)(time_ns % NS));
        put_le32(out + 8, data_length);
        put_le32(out + 12, data_length);
        memcpy(out + RECORD_HEADER, p + 8, data_length);
        c->size += record;
        c->added_size += record;
        c->added_packets++;
        c->last_ns = time_ns;
        e->packets++;
        e->bytes += n;
        e->last_ns = time_ns;
        if (e->watched && keep_recent(self, e, i) < 0) {
            /* The record is in the buffer and counted: only the live sample misses it. */
            PyErr_Clear();
        }
        self->fast++;
        self->fast_bytes += n;
    }
    if (i < count && !failed && self->entries && self->lengths[i] >= 8) {
        /* Python stores this one: if its stream is bound, the latest datagrams C kept go
         * to the delta first, so that `recent` stays in order. */
        const unsigned char *p = self->data + (size_t)i * self->max_datagram;
        int key_length;
        const unsigned char *key = source_key(self, i, &key_length);
        int index = find_entry(self, key, key_length, be32(p), be32(p + 4));
        if (index >= 0 && flush_recent(&self->table[index]) < 0) failed = 1;
    }
    self->failed_at = i;
    if (write_back(self) < 0) {
        /* The records are in the buffers but their counts are not all back: a bug or
         * no memory. Python starts again after them. */
        self->failed_at = i;
        return NULL;
    }
    if (failed) return NULL;
    return PyLong_FromLong(i);
}

static PyObject *FastReceiver_datagram(FastReceiver *self, PyObject *arg) {
    if (!self->initialised) return not_initialised();
    long i = PyLong_AsLong(arg);
    if (i == -1 && PyErr_Occurred()) return NULL;
    if (i < 0 || i >= self->count) {
        PyErr_SetString(PyExc_IndexError, "no such datagram in the last batch");
        return NULL;
    }
    if (is_truncated(self, (int)i)) {
        PyErr_SetString(PyExc_ValueError, "that datagram was truncated");
        return NULL;
    }
    /* A copy, not a view: Python keeps what it stores past the next receive(). */
    PyObject *view = PyBytes_FromStringAndSize(
        (const char *)(self->data + (size_t)i * self->max_datagram), (Py_ssize_t)self->lengths[i]);
    if (view == NULL) return NULL;
    int key_length;
    const unsigned char *key = source_key(self, (int)i, &key_length);
    PyObject *source;
    if (key_length == 4) {
        uint32_t address;
        memcpy(&address, key, 4);
        source = PyLong_FromUnsignedLong(address); /* as receiver.batch_receive keys it */
    } else {
        source = PyBytes_FromStringAndSize((const char *)key, 20);
    }
    if (source == NULL) {
        Py_DECREF(view);
        return NULL;
    }
    return Py_BuildValue("(NNL)", view, source, self->times[i]);
}

/* The datagram `i` of the last receive() that Python has just decided (bind, refuse):
 * its bytes, or NULL with an exception set when there is no such whole jmirror datagram
 * or a store() is under way (`during` says which call). */
static const unsigned char *decided_datagram(FastReceiver *self, int i, const char *during) {
    if (i < 0 || i >= self->count || is_truncated(self, i) || self->lengths[i] < 8) {
        PyErr_SetString(PyExc_IndexError, "no such datagram in the last batch");
        return NULL;
    }
    if (self->touched_count) {
        PyErr_SetString(PyExc_RuntimeError, during);
        return NULL;
    }
    return self->data + (size_t)i * self->max_datagram;
}

/* The table entry of a stream (source, mid, sid): the one it has, or a fresh one (the
 * table cleared first when full; the slot's ring buffers kept for reuse). -1 with an
 * exception set when clearing a full table failed. */
static int stream_entry(
    FastReceiver *self, const unsigned char *key, int key_length, uint32_t mid, uint32_t sid) {
    int index = find_entry(self, key, key_length, mid, sid);
    if (index >= 0) return index;
    if (self->entries >= TABLE_LIMIT && clear_table(self, 1) < 0) return -1;
    unsigned slot = hash_key(key, key_length, mid, sid) & (TABLE_SIZE - 1);
    while (self->table[slot].used) slot = (slot + 1) & (TABLE_SIZE - 1);
    Entry *e = &self->table[slot];
    Recent *recent = e->recent;
    memset(e, 0, sizeof *e);
    e->recent = recent;
    e->used = 1;
    e->key_length = key_length;
    memcpy(e->source, key, (size_t)key_length);
    e->mid = mid;
    e->sid = sid;
    e->call_file[0] = e->call_file[1] = -1;
    self->entries++;
    return (int)slot;
}

static PyObject *FastReceiver_bind(FastReceiver *self, PyObject *args) {
    int i, linktype, watched = 1;
    long long low, high;
    PyObject *delta, *file;
    if (!self->initialised) return not_initialised();
    if (!PyArg_ParseTuple(args, "iiLLOO|p", &i, &linktype, &low, &high, &delta, &file, &watched))
        return NULL;
    if (linktype != LINKTYPE_RAW && linktype != LINKTYPE_PPP_HDLC) {
        PyErr_SetString(PyExc_ValueError, "linktype must be 101 (raw IP) or 50 (PPP)");
        return NULL;
    }
    const unsigned char *p = decided_datagram(self, i, "bind during store");
    if (p == NULL) return NULL;
    uint32_t mid = be32(p), sid = be32(p + 4);
    int key_length;
    const unsigned char *key = source_key(self, i, &key_length);
    int index = stream_entry(self, key, key_length, mid, sid);
    if (index < 0) return NULL;
    Entry *e = &self->table[index];
    e->drop = 0;
    if (e->delta != delta) {
        /* Another session delta: whatever was bound for the old one is stale, and its
         * latest datagrams are the old delta's. */
        if (flush_recent(e) < 0) return NULL;
        Py_CLEAR(e->files[0]);
        Py_CLEAR(e->files[1]);
        Py_INCREF(delta);
        Py_XSETREF(e->delta, delta);
    }
    e->low = low;
    e->high = high;
    e->watched = watched;
    if (!watched) forget_recent(e);
    Py_INCREF(file);
    Py_XSETREF(e->files[slot_of(linktype)], file);
    self->last_hit = index;
    Py_RETURN_NONE;
}

/* bind_contrail's work: -1 with an exception set when it cannot bind. */
static int bind_contrail_entry(FastReceiver *self, int i, unsigned header, const Py_buffer *options,
                               long long low, long long high, PyObject *delta, PyObject *file,
                               int watched) {
    const unsigned char *p = decided_datagram(self, i, "bind_contrail during store");
    if (p == NULL) return -1;
    if (header == 0 || header != contrail_header_length(p, self->lengths[i])) {
        PyErr_SetString(PyExc_ValueError, "header is not that datagram's Juniper header");
        return -1;
    }
    if (options->len > 65536) {
        PyErr_SetString(PyExc_ValueError, "options are longer than a block holds");
        return -1;
    }
    int key_length;
    const unsigned char *key = source_key(self, i, &key_length);
    int index = stream_entry(self, key, key_length, hash_bytes(p, header), header);
    if (index < 0) return -1;
    Entry *e = &self->table[index];
    size_t options_length = (size_t)options->len;
    if (e->header == NULL || e->header_length != header || memcmp(e->header, p, header) != 0 ||
        e->options_length != options_length ||
        memcmp(e->options, options->buf, options_length) != 0) {
        /* A new binding, or another header with the same hash taking the slot over. */
        if (flush_recent(e) < 0) return -1;
        unsigned char *copy = PyMem_Malloc(header);
        unsigned char *made = PyMem_Malloc(options_length ? options_length : 1);
        if (copy == NULL || made == NULL) {
            PyMem_Free(copy);
            PyMem_Free(made);
            PyErr_NoMemory();
            return -1;
        }
        forget_header(e);
        memcpy(copy, p, header);
        memcpy(made, options->buf, options_length);
        e->header = copy;
        e->header_length = header;
        e->options = made;
        e->options_length = (unsigned)options_length;
    }
    e->drop = 0;
    if (e->delta != delta) {
        if (flush_recent(e) < 0) return -1;
        Py_CLEAR(e->files[0]);
        Py_INCREF(delta);
        Py_XSETREF(e->delta, delta);
    }
    e->low = low;
    e->high = high;
    e->watched = watched;
    if (!watched) forget_recent(e);
    Py_INCREF(file);
    Py_XSETREF(e->files[0], file);
    self->last_hit = index;
    return 0;
}

static PyObject *FastReceiver_bind_contrail(FastReceiver *self, PyObject *args) {
    int i, watched = 1;
    unsigned header;
    long long low, high;
    Py_buffer options;
    PyObject *delta, *file;
    if (!self->initialised) return not_initialised();
    if (!self->contrail) {
        PyErr_SetString(PyExc_RuntimeError, "bind_contrail on a jmirror FastReceiver");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "iIy*LLOO|p", &i, &header, &options, &low, &high, &delta, &file,
                          &watched))
        return NULL;
    int status = bind_contrail_entry(self, i, header, &options, low, high, delta, file, watched);
    PyBuffer_Release(&options);
    if (status < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *FastReceiver_clear(FastReceiver *self, PyObject *args) {
    int complete = 0;
    if (!PyArg_ParseTuple(args, "|p", &complete)) return NULL;
    /* The verdicts were the gate's answers: relearned through Python. */
    if (self->sources) reset_sources(self, complete);
    if (self->table && clear_table(self, 1) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *FastReceiver_hand_over(FastReceiver *self, PyObject *args) {
    PyObject *replacements;
    int complete = 0;
    if (!self->initialised) return not_initialised();
    if (!PyArg_ParseTuple(args, "O!|p", &PyDict_Type, &replacements, &complete)) return NULL;
    if (self->touched_count) {
        PyErr_SetString(PyExc_RuntimeError, "hand_over during store");
        return NULL;
    }
    /* As clear(): the verdicts were this tick's; relearned through Python. */
    reset_sources(self, complete);
    FirstError first = {NULL, NULL, NULL};
    for (int i = 0; i < TABLE_SIZE; i++) {
        Entry *e = &self->table[i];
        if (!e->used || e->delta == NULL) continue;
        /* The latest datagrams belong to the delta being handed on. */
        if (flush_recent(e) < 0) remember_error(&first);
        PyObject *fresh = PyDict_GetItemWithError(replacements, e->delta); /* borrowed */
        if (fresh == Py_None) {
            /* An idle session let go: unbound (the slot stays taken until the next full
             * clear); its next datagram binds its new delta through Python. */
            Py_CLEAR(e->delta);
            Py_CLEAR(e->files[0]);
            Py_CLEAR(e->files[1]);
        } else if (fresh != NULL) {
            Py_INCREF(fresh);
            Py_SETREF(e->delta, fresh);
        } else if (PyErr_Occurred()) {
            /* Cannot tell its successor: unbound, the stream rebinds through Python. */
            remember_error(&first);
            Py_CLEAR(e->delta);
            Py_CLEAR(e->files[0]);
            Py_CLEAR(e->files[1]);
        }
    }
    if (restore_error(&first) < 0) return NULL;
    Py_RETURN_NONE;
}

static int compare_ids(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static PyObject *FastReceiver_set_gate(FastReceiver *self, PyObject *args) {
    PyObject *ids;
    int streams_per_source;
    if (!self->initialised) return not_initialised();
    /* Until this call succeeds, C decides nothing: ids of an older gate would be wrong. */
    self->deciding = 0;
    if (!PyArg_ParseTuple(args, "Oi", &ids, &streams_per_source)) return NULL;
    if (streams_per_source < 1) {
        PyErr_SetString(PyExc_ValueError, "streams_per_source must be positive");
        return NULL;
    }
    PyObject *sequence = PySequence_Fast(ids, "the claimed intercept ids must be a sequence");
    if (sequence == NULL) return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(sequence);
    if (count > MAX_CLAIMED_IDS) {
        Py_DECREF(sequence);
        PyErr_SetString(PyExc_ValueError, "too many claimed intercept ids");
        return NULL;
    }
    uint32_t *sorted = PyMem_Calloc((size_t)count + 1, sizeof(uint32_t));
    if (sorted == NULL) {
        Py_DECREF(sequence);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t k = 0; k < count; k++) {
        unsigned long value = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(sequence, k));
        if ((value == (unsigned long)-1 && PyErr_Occurred()) || value > INTERCEPT_ID_MASK) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "an intercept id is 30 bits at most");
            Py_DECREF(sequence);
            PyMem_Free(sorted);
            return NULL;
        }
        sorted[k] = (uint32_t)value;
    }
    Py_DECREF(sequence);
    qsort(sorted, (size_t)count, sizeof(uint32_t), compare_ids);
    PyMem_Free(self->claimed_ids);
    self->claimed_ids = sorted;
    self->claimed_count = (int)count;
    self->streams_per_source = streams_per_source;
    /* Nothing remembered since the last reset: what it was complete for, it still is. */
    reset_sources(self, self->complete && self->source_entries == 0);
    self->deciding = 1;
    Py_RETURN_NONE;
}

static PyObject *FastReceiver_refuse(FastReceiver *self, PyObject *args) {
    int i, reason;
    long long low, high;
    if (!self->initialised) return not_initialised();
    if (!PyArg_ParseTuple(args, "iiLL", &i, &reason, &low, &high)) return NULL;
    if (reason < UNKNOWN_ROUTER || reason > OUTSIDE_WINDOW) {
        PyErr_SetString(PyExc_ValueError, "reason must be 1, 2 or 3");
        return NULL;
    }
    const unsigned char *p = decided_datagram(self, i, "refuse during store");
    if (p == NULL) return NULL;
    uint32_t mid = be32(p), sid = be32(p + 4);
    int key_length;
    const unsigned char *key = source_key(self, i, &key_length);
    Source *s = find_source(self, key, key_length, 1);
    if (s == NULL) Py_RETURN_NONE; /* cannot happen: the table was just made room in */
    s->verdict = reason == UNKNOWN_ROUTER ? VERDICT_UNKNOWN : VERDICT_ROUTER;
    remember_stream(s, mid, sid); /* Python counted it, apart or not */
    if (reason == UNKNOWN_ROUTER || !is_claimed_id(self, mid & INTERCEPT_ID_MASK))
        Py_RETURN_NONE; /* the source's verdict and the claimed ids say it all */
    int index = stream_entry(self, key, key_length, mid, sid);
    if (index < 0) return NULL;
    /* If it was stored until now, what C kept of it goes to its delta, then the binding
     * goes (nothing to do for a fresh entry). */
    Entry *e = &self->table[index];
    if (flush_recent(e) < 0) return NULL;
    Py_CLEAR(e->delta);
    Py_CLEAR(e->files[0]);
    Py_CLEAR(e->files[1]);
    e->drop = reason;
    e->low = low;
    e->high = high;
    self->last_hit = index;
    Py_RETURN_NONE;
}

static PyObject *FastReceiver_take_dropped(FastReceiver *self, PyObject *Py_UNUSED(ignored)) {
    if (!self->initialised) return not_initialised();
    PyObject *streams = PyList_New(self->pending_count);
    if (streams == NULL) return NULL;
    for (int k = 0; k < self->pending_count; k++) {
        Pending *q = &self->pending[k];
        PyObject *source;
        if (q->key_length == 4) {
            uint32_t address;
            memcpy(&address, q->source, 4);
            source = PyLong_FromUnsignedLong(address);
        } else {
            source = PyBytes_FromStringAndSize((const char *)q->source, 20);
        }
        PyObject *item = source == NULL ? NULL
                                        : Py_BuildValue("(NkkiiLLL)", source, (unsigned long)q->mid,
                                                        (unsigned long)q->sid, q->aggregate,
                                                        q->reason, q->count, q->first_ns,
                                                        q->last_ns);
        if (item == NULL) {
            Py_DECREF(streams);
            return NULL; /* kept for the next call */
        }
        PyList_SET_ITEM(streams, k, item);
    }
    PyObject *result = Py_BuildValue("(LLLLN)", self->malformed, self->dropped[UNKNOWN_ROUTER],
                                     self->dropped[NO_INTERCEPT], self->dropped[OUTSIDE_WINDOW],
                                     streams);
    if (result == NULL) return NULL;
    self->malformed = 0;
    memset(self->dropped, 0, sizeof self->dropped);
    self->pending_count = 0;
    for (int k = 0; k < PENDING_SLOTS; k++) self->pending_slots[k] = -1;
    return result;
}

static PyObject *FastReceiver_get_pending(FastReceiver *self, void *Py_UNUSED(closure)) {
    return PyLong_FromLong(self->pending_count + (self->malformed || self->dropped[1] ||
                                                  self->dropped[2] || self->dropped[3]));
}

static PyObject *FastReceiver_take_counts(FastReceiver *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *result = Py_BuildValue("(LLLL)", self->received, self->received_bytes, self->fast,
                                     self->fast_bytes);
    self->received = self->received_bytes = self->fast = self->fast_bytes = 0;
    return result;
}

static PyObject *FastReceiver_get_truncated(FastReceiver *self, void *Py_UNUSED(closure)) {
    return PyLong_FromLongLong(self->truncated);
}

static PyObject *FastReceiver_get_failed_at(FastReceiver *self, void *Py_UNUSED(closure)) {
    return PyLong_FromLong(self->failed_at);
}

static PyObject *FastReceiver_get_streams(FastReceiver *self, void *Py_UNUSED(closure)) {
    return PyLong_FromLong(self->entries);
}

static PyMethodDef FastReceiver_methods[] = {
    {"receive", (PyCFunction)FastReceiver_receive, METH_NOARGS,
     "One recvmmsg: the number of datagrams received (0 when none is waiting)."},
    {"store", (PyCFunction)FastReceiver_store, METH_O,
     "Store bound streams' datagrams from index start on; the index of the first one "
     "left to Python (the count when none)."},
    {"datagram", (PyCFunction)FastReceiver_datagram, METH_O,
     "(payload bytes, raw source key, receive time ns) of datagram i."},
    {"bind", (PyCFunction)FastReceiver_bind, METH_VARARGS,
     "bind(i, linktype, low, high, delta, file): store datagram i's stream in C."},
    {"bind_contrail", (PyCFunction)FastReceiver_bind_contrail, METH_VARARGS,
     "bind_contrail(i, header_length, options, low, high, delta, file, watched=True): store "
     "datagram i's vRouter's datagrams with this Juniper header in C (a contrail receiver)."},
    {"clear", (PyCFunction)FastReceiver_clear, METH_VARARGS,
     "clear(complete=False): forget every bound stream and every verdict; complete when "
     "Python's unclaimed table for this tick is empty and only this receiver feeds it."},
    {"hand_over", (PyCFunction)FastReceiver_hand_over, METH_VARARGS,
     "hand_over(replacements, complete=False): at a tick, every bound stream's latest "
     "datagrams go to its delta, each delta that is a key of replacements is replaced by "
     "its value (None: the stream is unbound), and the verdicts are forgotten (as "
     "clear); the other bindings stay."},
    {"set_gate", (PyCFunction)FastReceiver_set_gate, METH_VARARGS,
     "set_gate(claimed intercept ids, streams per source): C decides dropped datagrams."},
    {"refuse", (PyCFunction)FastReceiver_refuse, METH_VARARGS,
     "refuse(i, reason 1-3, low, high): Python dropped datagram i as unclaimed."},
    {"take_dropped", (PyCFunction)FastReceiver_take_dropped, METH_NOARGS,
     "(malformed, unknown_router, no_intercept, outside_window, [(source key, mid, sid, "
     "aggregate, reason, count, first ns, last ns)]) since the last call."},
    {"take_counts", (PyCFunction)FastReceiver_take_counts, METH_NOARGS,
     "(received, received bytes, stored in C, their bytes) since the last call."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef FastReceiver_getset[] = {
    {"truncated", (getter)FastReceiver_get_truncated, NULL,
     "Datagrams longer than max_datagram, dropped.", NULL},
    {"failed_at", (getter)FastReceiver_get_failed_at, NULL,
     "After store() raised: the first datagram it did not store.", NULL},
    {"streams", (getter)FastReceiver_get_streams, NULL, "Streams bound now.", NULL},
    {"pending", (getter)FastReceiver_get_pending, NULL,
     "Nonzero when take_dropped() has something to hand over.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject FastReceiverType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "receiver._fastpath.FastReceiver",
    .tp_basicsize = sizeof(FastReceiver),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "recvmmsg and the pcap append of bound streams, for one socket.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)FastReceiver_init,
    .tp_dealloc = (destructor)FastReceiver_dealloc,
    .tp_methods = FastReceiver_methods,
    .tp_getset = FastReceiver_getset,
};

static struct PyModuleDef fastpath_module = {
    PyModuleDef_HEAD_INIT, .m_name = "receiver._fastpath",
    .m_doc = "The receive loop's common case in C (see receiver/_fastpath.c).", .m_size = -1,
};

PyMODINIT_FUNC PyInit__fastpath(void) {
    if (PyType_Ready(&FastReceiverType) < 0) return NULL;
#define INTERN(var, text) \
    if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL;
    INTERN(s_size, "size");
    INTERN(s_packets, "packets");
    INTERN(s_last_ns, "last_ns");
    INTERN(s_bytes, "bytes");
    INTERN(s_stored, "stored");
    INTERN(s_recent, "recent");
    INTERN(s_buffer, "buffer");
    INTERN(s_deadline_ns, "deadline_ns");
    INTERN(s_extend, "extend");
    INTERN(s_fd, "fd");
#undef INTERN
    PyObject *module = PyModule_Create(&fastpath_module);
    if (module == NULL) return NULL;
    Py_INCREF(&FastReceiverType);
    if (PyModule_AddObject(module, "FastReceiver", (PyObject *)&FastReceiverType) < 0) {
        Py_DECREF(&FastReceiverType);
        Py_DECREF(module);
        return NULL;
    }
    if (PyModule_AddIntConstant(module, "TABLE_LIMIT", TABLE_LIMIT) < 0 ||
        PyModule_AddIntConstant(module, "RECENT", RECENT) < 0 ||
        PyModule_AddIntConstant(module, "PENDING_LIMIT", PENDING_LIMIT) < 0 ||
        PyModule_AddIntConstant(module, "LINKTYPE_RAW", LINKTYPE_RAW) < 0 ||
        PyModule_AddIntConstant(module, "LINKTYPE_PPP_HDLC", LINKTYPE_PPP_HDLC) < 0 ||
        PyModule_AddIntConstant(module, "MAX_VLAN_TAGS", MAX_VLAN_TAGS) < 0 ||
        PyModule_AddIntConstant(module, "RECORD_HEADER", RECORD_HEADER) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    /* The next headers ipv6_header_chain() takes, as the function itself answers: a test
     * holds them to receiver.ip.IPV6_HEADER_CHAIN. */
    PyObject *chain = PyFrozenSet_New(NULL);
    if (chain == NULL) {
        Py_DECREF(module);
        return NULL;
    }
    for (unsigned proto = 0; proto < 256; proto++) {
        if (!ipv6_header_chain(proto)) continue;
        PyObject *number = PyLong_FromUnsignedLong(proto);
        if (number == NULL || PySet_Add(chain, number) < 0) {
            Py_XDECREF(number);
            Py_DECREF(chain);
            Py_DECREF(module);
            return NULL;
        }
        Py_DECREF(number);
    }
    if (PyModule_AddObject(module, "IPV6_HEADER_CHAIN", chain) < 0) {
        Py_DECREF(chain);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
