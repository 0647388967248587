/*
 * receiver._packet_index: the packet index's per-record work, in C.
 *
 * A capture file's index (receiver.packet_index says what it is for and holds the
 * format) is one fixed-size record per packet: where the packet is in the file, its time
 * and lengths, and the summary fields a list of stored packets is filtered by (addresses,
 * ports, IP protocol, TCP flags). Two things touch every packet:
 *
 *   index_records(buffer, offset, linktype, pcapng)
 *                 the index records of the whole pcap records (or pcapng blocks) in
 *                 `buffer`, which starts at byte `offset` of the file. The store calls it
 *                 once per flush, on the buffer it is about to write, so the receive loop
 *                 pays a few tens of nanoseconds per packet, not a Python call.
 *   select_records(index, first, last, criteria...)
 *                 the numbers of the records in [first, last) that match, as packed
 *                 uint32s: a filtered page of a session of millions of packets scans its
 *                 index in milliseconds.
 *
 * receiver.packet_index has the same two in Python (used where this module cannot be
 * built); tests/receiver/test_packet_index.py holds the two to each other.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#define RECORD_SIZE 64
#define LINKTYPE_ETHERNET 1
#define LINKTYPE_PPP_HDLC 50
#define LINKTYPE_RAW 101
#define MAX_VLAN_TAGS 8
#define MAX_IPV6_EXTENSIONS 8
/* Record flags (receiver.packet_index.Flag). */
#define FLAG_PPP 1
#define FLAG_NAME_CANDIDATE 2
#define FLAG_LATER_FRAGMENT 4
#define FLAG_MALFORMED 8
/* select_records' protocol criterion for "not an IP packet" (link control). */
#define PROTOCOL_LINK 256

static inline unsigned be16(const unsigned char *p) { return ((unsigned)p[0] << 8) | p[1]; }
static inline uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline void put16(unsigned char *p, unsigned v) {
    p[0] = v & 0xFF;
    p[1] = (v >> 8) & 0xFF;
}
static inline void put32(unsigned char *p, uint32_t v) {
    for (int k = 0; k < 4; k++) p[k] = (v >> (8 * k)) & 0xFF;
}
static inline void put64(unsigned char *p, uint64_t v) {
    for (int k = 0; k < 8; k++) p[k] = (v >> (8 * k)) & 0xFF;
}

/* HTTP request methods a name candidate's TCP payload may start with (4 bytes each). */
static const char *const HTTP_STARTS[] = {"GET ", "POST", "HEAD", "PUT ", "CONN",
                                          "DELE", "OPTI", "PATC"};

static int name_candidate_tcp(const unsigned char *t, unsigned n) {
    if (n < 20) return 0;
    unsigned offset = (t[12] >> 4) * 4u;
    if (offset < 20 || offset >= n) return 0;
    const unsigned char *payload = t + offset;
    unsigned left = n - offset;
    if (payload[0] == 0x16) return 1; /* a TLS handshake record: maybe a Client Hello */
    if (left < 4) return 0;
    for (size_t k = 0; k < sizeof HTTP_STARTS / sizeof *HTTP_STARTS; k++) {
        if (memcmp(payload, HTTP_STARTS[k], 4) == 0) return 1;
    }
    return 0;
}

/* The transport fields of an IP packet's payload `t` (n bytes) of protocol `proto`. */
static void transport(unsigned char *r, unsigned proto, const unsigned char *t, unsigned n) {
    if ((proto == 6 || proto == 17 || proto == 132 || proto == 136) && n >= 4) {
        put16(r + 28, be16(t));
        put16(r + 30, be16(t + 2));
        if (proto == 6) {
            if (n >= 14) r[26] = t[13];
            if (name_candidate_tcp(t, n)) r[27] |= FLAG_NAME_CANDIDATE;
        } else if (proto == 17 && n >= 20 && (be16(t) == 53 || be16(t + 2) == 53)) {
            r[27] |= FLAG_NAME_CANDIDATE; /* a DNS message of at least a header */
        }
    }
}

static void ipv4(unsigned char *r, const unsigned char *d, unsigned n) {
    if (n < 20) {
        r[27] |= FLAG_MALFORMED;
        return;
    }
    unsigned header = (d[0] & 0x0F) * 4u;
    if ((d[0] >> 4) != 4 || header < 20 || header > n) {
        r[27] |= FLAG_MALFORMED;
        return;
    }
    r[24] = 4;
    r[25] = d[9];
    memcpy(r + 32, d + 12, 4);
    memcpy(r + 48, d + 16, 4);
    if (be16(d + 6) & 0x1FFF) {
        r[27] |= FLAG_LATER_FRAGMENT;
        return;
    }
    /* The IP length bounds the payload when it is shorter than what was captured. */
    unsigned total = be16(d + 2);
    unsigned end = total >= header && total < n ? total : n;
    transport(r, d[9], d + header, end - header);
}

static void ipv6(unsigned char *r, const unsigned char *d, unsigned n) {
    if (n < 40 || (d[0] >> 4) != 6) {
        r[27] |= FLAG_MALFORMED;
        return;
    }
    r[24] = 6;
    memcpy(r + 32, d + 8, 16);
    memcpy(r + 48, d + 24, 16);
    unsigned end = 40 + be16(d + 4);
    if (end > n) end = n;
    unsigned next = d[6], at = 40;
    for (int k = 0; k < MAX_IPV6_EXTENSIONS; k++) {
        if (next == 0 || next == 43 || next == 60) {
            if (at + 8 > end) break;
            next = d[at];
            at += (d[at + 1] + 1u) * 8;
        } else if (next == 44) {
            if (at + 8 > end) break;
            unsigned fragment = be16(d + at + 2) >> 3;
            next = d[at];
            at += 8;
            if (fragment) {
                r[25] = next;
                r[27] |= FLAG_LATER_FRAGMENT;
                return;
            }
        } else if (next == 51) {
            if (at + 8 > end) break;
            next = d[at];
            at += (d[at + 1] + 2u) * 4;
        } else {
            break;
        }
    }
    r[25] = next;
    if (at <= end) transport(r, next, d + at, end - at);
}

/* The IP layer (or the link protocol) of a packet of `linktype`. */
static void network(unsigned char *r, int linktype, const unsigned char *d, unsigned n) {
    unsigned protocol;
    if (linktype == LINKTYPE_RAW) {
        if (n >= 1 && (d[0] >> 4) == 6) ipv6(r, d, n);
        else ipv4(r, d, n);
        return;
    }
    if (linktype == LINKTYPE_PPP_HDLC) {
        r[27] |= FLAG_PPP;
        unsigned at = 0;
        if (n >= 2 && d[0] == 0xFF && d[1] == 0x03) at = 2;
        if (at < n && (d[at] & 1)) { /* a compressed (one byte) protocol field */
            protocol = d[at];
            at += 1;
        } else if (at + 2 <= n) {
            protocol = be16(d + at);
            at += 2;
        } else {
            r[27] |= FLAG_MALFORMED;
            return;
        }
        if (protocol == 0x21) ipv4(r, d + at, n - at);
        else if (protocol == 0x57) ipv6(r, d + at, n - at);
        else put16(r + 28, protocol);
        return;
    }
    if (linktype == LINKTYPE_ETHERNET) {
        if (n < 14) {
            r[27] |= FLAG_MALFORMED;
            return;
        }
        unsigned at = 12;
        unsigned type = be16(d + at);
        for (int k = 0; k < MAX_VLAN_TAGS && (type == 0x8100 || type == 0x88A8) && at + 6 <= n;
             k++) {
            at += 4;
            type = be16(d + at);
        }
        at += 2;
        if (type == 0x0800) ipv4(r, d + at, n - at);
        else if (type == 0x86DD) ipv6(r, d + at, n - at);
        else put16(r + 28, type);
        return;
    }
    /* Another link type: offsets and times only. */
}

/* The records of the whole pcap records (pcapng blocks) at the start of `buffer`, as
 * bytes; *consumed says how many bytes of it they are. */
static PyObject *index_whole(PyObject *args, Py_ssize_t *consumed, Py_ssize_t *length_out) {
    Py_buffer view;
    long long offset;
    int linktype, pcapng;
    if (!PyArg_ParseTuple(args, "y*Lip", &view, &offset, &linktype, &pcapng)) return NULL;
    const unsigned char *p = view.buf;
    Py_ssize_t length = view.len;
    /* A pcap record is at least 16 bytes, a block at least 12: the output's bound. */
    Py_ssize_t most = length / (pcapng ? 12 : 16) + 1;
    unsigned char *out = PyMem_Calloc((size_t)most, RECORD_SIZE);
    if (out == NULL) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    Py_ssize_t at = 0, count = 0;
    while (at < length) {
        const unsigned char *data;
        uint32_t captured, original;
        uint64_t time_ns;
        Py_ssize_t size;
        if (pcapng) {
            if (length - at < 12) break;
            uint32_t type = le32(p + at);
            size = le32(p + at + 4);
            if (size < 12 || size > length - at) break;
            if (type != 6 || size < 32) {
                at += size; /* not a packet */
                continue;
            }
            time_ns = ((uint64_t)le32(p + at + 12) << 32) | le32(p + at + 16);
            captured = le32(p + at + 20);
            original = le32(p + at + 24);
            if ((Py_ssize_t)captured > size - 32) break;
            data = p + at + 28;
        } else {
            if (length - at < 16) break;
            captured = le32(p + at + 8);
            original = le32(p + at + 12);
            if ((Py_ssize_t)captured > length - at - 16) break;
            time_ns = (uint64_t)le32(p + at) * 1000000000ULL + le32(p + at + 4);
            data = p + at + 16;
            size = 16 + (Py_ssize_t)captured;
        }
        unsigned char *r = out + count * RECORD_SIZE;
        put64(r, (uint64_t)(offset + at));
        put64(r + 8, time_ns);
        put32(r + 16, captured);
        put32(r + 20, original);
        network(r, linktype, data, captured);
        count++;
        at += size;
    }
    PyBuffer_Release(&view);
    *consumed = at;
    *length_out = length;
    PyObject *result = PyBytes_FromStringAndSize((const char *)out, count * RECORD_SIZE);
    PyMem_Free(out);
    return result;
}

static PyObject *index_records(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_ssize_t consumed = 0, length = 0;
    PyObject *records = index_whole(args, &consumed, &length);
    if (records != NULL && consumed != length) {
        Py_DECREF(records);
        int pcapng = PyObject_IsTrue(PyTuple_GET_ITEM(args, 3));
        PyErr_Format(PyExc_ValueError,
                     "the buffer does not end on a whole %s (%zd of %zd bytes are whole)",
                     pcapng ? "block" : "record", consumed, length);
        return NULL;
    }
    return records;
}

static PyObject *index_prefix(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_ssize_t consumed = 0, length = 0;
    PyObject *records = index_whole(args, &consumed, &length);
    if (records == NULL) return NULL;
    return Py_BuildValue("(Nn)", records, consumed);
}

static inline int64_t record_time(const unsigned char *r) {
    uint64_t v = 0;
    for (int k = 7; k >= 0; k--) v = (v << 8) | r[8 + k];
    return (int64_t)v;
}

static PyObject *select_records(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_buffer index, address;
    Py_ssize_t first, last;
    long long start_ns, end_ns;
    int version, port, protocol, names_only;
    if (!PyArg_ParseTuple(args, "y*nnLLiy*iip", &index, &first, &last, &start_ns, &end_ns,
                          &version, &address, &port, &protocol, &names_only))
        return NULL;
    PyObject *result = NULL;
    uint32_t *out = NULL;
    if (index.len % RECORD_SIZE || (version && address.len != 16)) {
        PyErr_SetString(PyExc_ValueError,
                        "an index is whole 64-byte records and an address 16 bytes");
        goto done;
    }
    Py_ssize_t records = index.len / RECORD_SIZE;
    if (first < 0) first = 0;
    if (last > records) last = records;
    if (last > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "more records than a uint32 numbers");
        goto done;
    }
    Py_ssize_t count = 0;
    out = PyMem_Malloc(sizeof(uint32_t) * (size_t)(last > first ? last - first : 1));
    if (out == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    const unsigned char *base = index.buf;
    const unsigned char *wanted = address.buf;
    for (Py_ssize_t i = first; i < last; i++) {
        const unsigned char *r = base + i * RECORD_SIZE;
        int64_t t = record_time(r);
        if (t < start_ns || t >= end_ns) continue;
        if (names_only && !(r[27] & FLAG_NAME_CANDIDATE)) continue;
        if (protocol >= 0) {
            if (protocol == PROTOCOL_LINK ? r[24] != 0 : (r[24] == 0 || r[25] != protocol))
                continue;
        }
        if (version) {
            if (r[24] != version) continue;
            if (memcmp(r + 32, wanted, 16) != 0 && memcmp(r + 48, wanted, 16) != 0) continue;
        }
        if (port >= 0) {
            if (r[24] == 0 || (r[27] & FLAG_LATER_FRAGMENT)) continue;
            if ((unsigned)(r[28] | (r[29] << 8)) != (unsigned)port &&
                (unsigned)(r[30] | (r[31] << 8)) != (unsigned)port)
                continue;
        }
        out[count++] = (uint32_t)i;
    }
    result = PyBytes_FromStringAndSize((const char *)out, count * (Py_ssize_t)sizeof(uint32_t));
done:
    PyMem_Free(out);
    PyBuffer_Release(&index);
    PyBuffer_Release(&address);
    return result;
}

static PyObject *index_times(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_buffer index;
    if (!PyArg_ParseTuple(args, "y*", &index)) return NULL;
    if (index.len % RECORD_SIZE) {
        PyBuffer_Release(&index);
        PyErr_SetString(PyExc_ValueError, "an index is whole 64-byte records");
        return NULL;
    }
    Py_ssize_t records = index.len / RECORD_SIZE;
    PyObject *times = PyBytes_FromStringAndSize(NULL, records * (Py_ssize_t)sizeof(int64_t));
    if (times == NULL) {
        PyBuffer_Release(&index);
        return NULL;
    }
    int64_t *out = (int64_t *)PyBytes_AS_STRING(times);
    const unsigned char *base = index.buf;
    int ordered = 1;
    for (Py_ssize_t i = 0; i < records; i++) {
        out[i] = record_time(base + i * RECORD_SIZE);
        if (i && out[i] < out[i - 1]) ordered = 0;
    }
    PyBuffer_Release(&index);
    return Py_BuildValue("(NO)", times, ordered ? Py_True : Py_False);
}

static PyMethodDef methods[] = {
    {"index_times", index_times, METH_VARARGS,
     "index_times(index) -> (bytes, ordered): every record's time as native int64s, and "
     "whether they never decrease."},
    {"index_records", index_records, METH_VARARGS,
     "index_records(buffer, offset, linktype, pcapng) -> bytes: the index records of the "
     "whole pcap records (pcapng blocks) in buffer, which starts at byte offset of its file."},
    {"index_prefix", index_prefix, METH_VARARGS,
     "index_prefix(buffer, offset, linktype, pcapng) -> (bytes, consumed): as index_records, "
     "for the whole records at the start of buffer, and how many bytes they are."},
    {"select_records", select_records, METH_VARARGS,
     "select_records(index, first, last, start_ns, end_ns, version, address, port, "
     "protocol, names_only) -> bytes: the numbers (native uint32) of the matching records."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef packet_index_module = {
    PyModuleDef_HEAD_INIT, .m_name = "receiver._packet_index",
    .m_doc = "The packet index's per-record work in C (see receiver/_packet_index.c).",
    .m_size = -1, .m_methods = methods,
};

PyMODINIT_FUNC PyInit__packet_index(void) {
    PyObject *module = PyModule_Create(&packet_index_module);
    if (module == NULL) return NULL;
    if (PyModule_AddIntConstant(module, "RECORD_SIZE", RECORD_SIZE) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
