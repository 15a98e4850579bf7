/* SPDX-License-Identifier: Apache-2.0 */
/*
 * RAUTA's XDP fast path: the maps shared between the XDP program (rauta_xdp.c) and the proxy
 * (data-plane/src/kernel/maps.rs mirrors every struct here with #[repr(C)]; change both
 * together, the Rust side's size assertions catch a mismatch).
 *
 * Bounds, and why:
 * - An answer is at most RAUTA_ANSWER_MAX = 536 bytes of HTTP response (status line, headers
 *   and body). 536 is the smallest MSS a SYN-cookie connection can have on IPv4 (the kernel's
 *   cookie MSS table starts at 536, and 536 is the default without an MSS option), and the
 *   client's MSS cannot be read back from the cookie, so any answer up to 536 bytes fits the
 *   one segment the program sends. Larger answers stay in user space.
 * - A request is at most RAUTA_REQ_MAX = 1024 bytes (one segment, the whole request); longer
 *   ones pass (counted as too large).
 * - A key's host is at most RAUTA_HOST_MAX, its request target at most RAUTA_TARGET_MAX bytes,
 *   zero-padded: user space never inserts longer ones, so longer requests find no entry.
 */
#ifndef RAUTA_XDP_H
#define RAUTA_XDP_H

#include <linux/types.h>

#define RAUTA_ANSWER_MAX 536
#define RAUTA_REQ_MAX 1024 /* a power of two: indexes are masked with it */
#define RAUTA_HOST_MAX 64  /* a power of two */
#define RAUTA_TARGET_MAX 128 /* a power of two */

#define RAUTA_MAX_ANSWERS 4096
#define RAUTA_MAX_FLOWS 65536
#define RAUTA_MAX_PORTS 64

/* Methods an answer allows (rauta_answer.methods). */
#define RAUTA_METHOD_GET 1
#define RAUTA_METHOD_HEAD 2

/*
 * Key of the `answers` map. All bytes not used by host and target are zero, so a key is
 * compared byte for byte.
 */
struct rauta_answer_key {
	__u16 port;  /* the local (bound) listener port, host byte order */
	__u16 _pad;  /* zero */
	/* lower-case host without port; all zero means "any host" (looked up after the exact
	 * host misses) */
	char host[RAUTA_HOST_MAX];
	char target[RAUTA_TARGET_MAX]; /* the request target exactly as sent: path and query */
};

/* Value of the `answers` map: a complete HTTP/1.1 response rendered by user space. */
struct rauta_answer {
	/* bpf_ktime_get_coarse_ns() (CLOCK_MONOTONIC_COARSE) after which the entry is not
	 * served, even if user space is late removing it; 0: never expires */
	__u64 expires_ns;
	__u32 methods;  /* RAUTA_METHOD_* bits */
	__u16 len;      /* bytes of data: the whole response (GET) */
	__u16 head_len; /* bytes of data up to and including the blank line (HEAD) */
	/* ones'-complement sum (16-bit words in host byte order, an odd last byte padded with
	 * zero, folded to 16 bits) of data[0..len] and of data[0..head_len]: added to the TCP
	 * checksum, so the program never sums the body */
	__u32 csum_full;
	__u32 csum_head;
	__u8 data[RAUTA_ANSWER_MAX];
};

/* Key of the `flows` LRU map: a connection the program answered (or saw go to user space). */
struct rauta_flow_key {
	__be32 client_addr;
	__be32 server_addr;
	__be16 client_port;
	__be16 server_port;
};

#define RAUTA_FLOW_ANSWERED 1 /* the program answered: it owns the connection */
#define RAUTA_FLOW_PASSED 2   /* the first request went to user space: never answer here */

/* Value of the `flows` map; sequence numbers in host byte order. */
struct rauta_flow {
	__u32 kind;        /* RAUTA_FLOW_* */
	__u32 request_seq; /* the client's first data byte (a retransmitted request has it) */
	__u32 client_next; /* the client's sequence number after the request (its FIN's) */
	__u32 server_seq;  /* our first byte (the cookie + 1) */
	__u32 server_end;  /* our sequence number after the answer and its FIN */
};

/* Indices of the per-CPU `counters` array (user space sums the CPUs). */
enum rauta_counter {
	RAUTA_ANSWERED = 0,         /* requests answered by the program */
	RAUTA_PASS_NO_ENTRY = 1,    /* eligible request, no answer for (port, host, target) */
	RAUTA_PASS_EXPIRED = 2,     /* the answer's expires_ns has passed */
	RAUTA_PASS_SHAPE = 3,       /* not one complete eligible GET/HEAD (method, version,
				     * headers, partial or extra bytes, method not allowed) */
	RAUTA_PASS_TCP_OPTIONS = 4, /* TCP options other than none or NOP,NOP,timestamps */
	RAUTA_PASS_TOO_LARGE = 5,   /* request over RAUTA_REQ_MAX, or answer over
				     * RAUTA_ANSWER_MAX */
	RAUTA_OWNED_FLOW = 6,       /* packets of connections the program answered: ACKs
				     * dropped, FINs acknowledged, RSTs */
	RAUTA_HANDSHAKE_ACK_DROPPED = 7, /* bare handshake ACKs with a valid SYN cookie */
	RAUTA_ERRORS = 8,           /* helper failures (tail adjust, checksums, copy) */
	RAUTA_COUNTER_MAX = 9,
};

#endif
