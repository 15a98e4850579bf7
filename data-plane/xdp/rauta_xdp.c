// SPDX-License-Identifier: Apache-2.0
/*
 * RAUTA's XDP fast path: answers exact GET/HEAD requests whose answer the proxy already knows,
 * on the first data segment of a SYN-cookie connection, before any socket exists.
 *
 * The proxy's network namespace runs with net.ipv4.tcp_syncookies=2, so the kernel keeps no
 * state for a connection until its first ACK. The program
 * - drops a bare handshake ACK whose ack number is a valid cookie (so the kernel creates no
 *   socket yet); other bare ACKs belong to connections the kernel owns and pass;
 * - on the first data segment (its seq and ack are the ones the cookie was made for, which
 *   bpf_tcp_raw_check_syncookie_ipv4 checks: a later segment of any connection fails), if it is
 *   one complete eligible request with an unexpired entry in `answers`, turns the segment
 *   into the answer (FIN|PSH|ACK, Connection: close is in the answer's bytes) and sends it
 *   back with XDP_TX; the flow is recorded in `flows`;
 * - for flows it answered: drops the client's ACKs, acknowledges its FIN, drops its RST, and
 *   answers a retransmitted request again (the cookie still validates it);
 * - passes everything else: the kernel's SYN-cookie code then creates the connection from the
 *   data segment, and the user-space proxy serves it as usual.
 * Only IPv4/TCP without IP options; everything else passes.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "rauta_xdp.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	/* Not preallocated: an update then frees the replaced value only after an RCU grace
	 * period, so the program never reads a value while user space's next update reuses it. */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, RAUTA_MAX_ANSWERS);
	__type(key, struct rauta_answer_key);
	__type(value, struct rauta_answer);
} answers SEC(".maps");

/* Local plain-HTTP listener ports (host byte order); the value is unused. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, RAUTA_MAX_PORTS);
	__type(key, __u16);
	__type(value, __u8);
} ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, RAUTA_MAX_FLOWS);
	__type(key, struct rauta_flow_key);
	__type(value, struct rauta_flow);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, RAUTA_COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 index)
{
	__u64 *n = bpf_map_lookup_elem(&counters, &index);

	if (n)
		*n += 1;
}

/* Counts why a packet passes and passes it. */
static __always_inline int pass(__u32 reason)
{
	count(reason);
	return XDP_PASS;
}

static __always_inline __u32 csum_add(__u32 a, __u32 b)
{
	__u32 sum = a + b;

	return sum + (sum < a);
}

static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* What the reply needs of the incoming headers (read before the packet changes). */
struct incoming {
	__u8 client_mac[ETH_ALEN];
	__u8 server_mac[ETH_ALEN];
	__be32 client_addr;
	__be32 server_addr;
	__be16 client_port;
	__be16 server_port;
	__u32 seq; /* host byte order */
	__u32 ack;
	__be32 tsval; /* the client's, when timestamps is set */
	__be32 tsecr;
	__u32 timestamps; /* the segment carries NOP,NOP,TS (and nothing else) */
	__u32 payload_len;
};

/*
 * Whether reply() may grow a frame at the front when its tail has no room. Set by the loader:
 * 1 in generic mode; 0 in native mode, where on a veth a frame grown at the front and sent
 * with XDP_TX never reaches the peer (seen on 6.18: the client only got the answer to its
 * retransmission, 200 ms later). Without room at the tail the request then passes to user
 * space; a NIC's page-sized frames have room.
 */
const volatile __u32 grow_front = 1;

/* reply() could not resize the frame: it is untouched, and can still pass. */
#define RESIZE_FAILED -2
/* What reply() takes from the headroom when the whole growth does not fit there. */
#define FRONT_GROWTH 128

/*
 * Rewrites the packet into our segment to the client: `len` bytes of `answer`'s data (0 for a
 * bare ACK), flags, seq and ack; timestamps echoed when the client sent them. Returns 0,
 * RESIZE_FAILED, or -1 when a helper failed after that (the packet is unusable: drop it).
 */
static __always_inline int reply(struct xdp_md *ctx, const struct incoming *in,
				 struct rauta_answer *answer, __u32 len, __u32 payload_sum,
				 __u8 flags, __u32 seq, __u32 ack)
{
	__u32 tcp_len = in->timestamps ? 32 : 20;
	__u32 headers = sizeof(struct ethhdr) + sizeof(struct iphdr) + tcp_len;
	int delta = (int)(headers + len) - (int)(ctx->data_end - ctx->data);

	if (delta < 0 && bpf_xdp_adjust_tail(ctx, delta))
		return RESIZE_FAILED;
	if (delta > 0 && bpf_xdp_adjust_tail(ctx, delta)) {
		if (!grow_front)
			return RESIZE_FAILED;
		/* Little tailroom (a small skb's buffer, in generic mode or a veth's native one):
		 * grow at the front instead, where XDP keeps 256 bytes of headroom, or at both
		 * ends. The whole frame is rewritten, so where it starts does not matter. */
		if (bpf_xdp_adjust_head(ctx, -delta)) {
			if (delta <= FRONT_GROWTH || bpf_xdp_adjust_head(ctx, -FRONT_GROWTH))
				return RESIZE_FAILED;
			if (bpf_xdp_adjust_tail(ctx, delta - FRONT_GROWTH)) {
				bpf_xdp_adjust_head(ctx, FRONT_GROWTH);
				return RESIZE_FAILED;
			}
		}
	}
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph = data + sizeof(*eth);
	struct tcphdr *th = (void *)iph + sizeof(*iph);
	__u8 *opts = (void *)th + sizeof(*th);

	if ((void *)(opts + 12) > data_end && in->timestamps)
		return -1;
	if ((void *)(th + 1) > data_end)
		return -1;
	__builtin_memcpy(eth->h_dest, in->client_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, in->server_mac, ETH_ALEN);

	iph->version = 4;
	iph->ihl = 5;
	iph->tos = 0;
	iph->tot_len = bpf_htons(sizeof(struct iphdr) + tcp_len + len);
	iph->id = 0;
	iph->frag_off = bpf_htons(0x4000); /* DF */
	iph->ttl = 64;
	iph->protocol = IPPROTO_TCP;
	iph->check = 0;
	iph->saddr = in->server_addr;
	iph->daddr = in->client_addr;
	__s64 ip_sum = bpf_csum_diff(0, 0, (__be32 *)iph, sizeof(*iph), 0);
	if (ip_sum < 0)
		return -1;
	iph->check = csum_fold((__u32)ip_sum);

	th->source = in->server_port;
	th->dest = in->client_port;
	th->seq = bpf_htonl(seq);
	th->ack_seq = bpf_htonl(ack);
	((__u8 *)th)[12] = (__u8)((tcp_len / 4) << 4);
	((__u8 *)th)[13] = flags;
	/* The client has nothing more to send but its FIN: any window will do. */
	th->window = bpf_htons(1024);
	th->check = 0;
	th->urg_ptr = 0;

	/* Pseudo-header: addresses, protocol, TCP length. */
	__be32 pseudo[3] = {
		in->server_addr,
		in->client_addr,
		bpf_htonl((IPPROTO_TCP << 16) | (tcp_len + len)),
	};
	__s64 sum = bpf_csum_diff(0, 0, pseudo, sizeof(pseudo), 0);
	if (sum < 0)
		return -1;
	__u32 tcp_sum = csum_add((__u32)sum, payload_sum);
	if (in->timestamps) {
		if ((void *)(opts + 12) > data_end)
			return -1;
		opts[0] = 1; /* NOP */
		opts[1] = 1;
		opts[2] = 8; /* timestamps */
		opts[3] = 10;
		/* Our value: the one the client echoed (the SYN-ACK's), so PAWS accepts it. */
		__builtin_memcpy(opts + 4, &in->tsecr, 4);
		__builtin_memcpy(opts + 8, &in->tsval, 4);
		sum = bpf_csum_diff(0, 0, (__be32 *)th, 32, 0);
	} else {
		sum = bpf_csum_diff(0, 0, (__be32 *)th, 20, 0);
	}
	if (sum < 0)
		return -1;
	th->check = csum_fold(csum_add(tcp_sum, (__u32)sum));

	if (len) {
		if (!answer || len > RAUTA_ANSWER_MAX)
			return -1;
		if (bpf_xdp_store_bytes(ctx, headers, answer->data, len))
			return -1;
	}
	return 0;
}

/* Request parser: one bpf_loop step per byte after the method. */
enum {
	S_TARGET,
	S_VERSION,
	S_LINE,
	S_NAME,
	S_VALUE,
	S_VALUE_LF,
	S_END_LF,
	S_DONE,
	S_BAD,
};

enum {
	H_OTHER,
	H_HOST,
};

#define NAME_BUF 32 /* a power of two; longer names are none we look for */

/*
 * The parser's state lives in the scratch map value, not on the stack: the verifier tracks
 * stack values exactly, and a bpf_loop callback that stores exact states (the parser state,
 * lengths) would be verified once per combination; map contents are unknown scalars to it.
 */
struct parse {
	__u32 start; /* first byte of the target */
	__u32 len;   /* request length */
	__u32 state;
	__u32 target_len;
	__u32 version_pos;
	__u32 name_len;
	__u32 kind;
	__u32 host_len;
	__u32 hosts;
	__u32 host_port;  /* in the port part of Host */
	__u32 host_ended; /* whitespace after the host */
	char name[NAME_BUF];
};

/* The request copied out of the packet, the key built from it, the parser: too big for the
 * stack. */
struct scratch {
	__u8 req[RAUTA_REQ_MAX];
	struct rauta_answer_key key;
	struct parse p;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch_space SEC(".maps");

/* bpf_loop's context: only the scratch pointer (the same in every iteration). */
struct parse_ctx {
	struct scratch *s;
};

static __always_inline int is_tchar(__u8 c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
		return 1;
	switch (c) {
	case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+':
	case '-': case '.': case '^': case '_': case '`': case '|': case '~':
		return 1;
	}
	return 0;
}

static __always_inline __u8 lower(__u8 c)
{
	return (c >= 'A' && c <= 'Z') ? c + 32 : c;
}

static __always_inline int version_byte(__u32 pos, __u8 c)
{
	switch (pos) {
	case 0: return c == 'H';
	case 1: case 2: return c == 'T';
	case 3: return c == 'P';
	case 4: return c == '/';
	case 5: return c == '1';
	case 6: return c == '.';
	case 7: return c == '1'; /* HTTP/1.0 passes: hyper answers it in HTTP/1.0 */
	case 8: return c == '\r';
	case 9: return c == '\n';
	}
	return 0;
}

static __always_inline int name_is(const char *name, const char *literal, __u32 n)
{

	for (__u32 i = 0; i < n; i++) {
		if (name[i] != literal[i])
			return 0;
	}
	return 1;
}

/* The header's kind, or -1 for a header that makes the request ineligible. */
static __always_inline int classify(const struct parse *p)
{
	const char *n = p->name;

	switch (p->name_len) {
	case 4:
		return name_is(n, "host", 4) ? H_HOST : H_OTHER;
	case 6:
		if (name_is(n, "cookie", 6) || name_is(n, "expect", 6))
			return -1;
		return name_is(n, "pragma", 6) ? -1 : H_OTHER;
	case 7:
		return name_is(n, "upgrade", 7) ? -1 : H_OTHER;
	case 13:
		if (name_is(n, "authorization", 13))
			return -1;
		/* Any Cache-Control or Pragma passes: user space reads their directives
		 * (no-cache, no-store, max-age=0 bypass its cache). */
		return name_is(n, "cache-control", 13) ? -1 : H_OTHER;
	case 14:
		return name_is(n, "content-length", 14) ? -1 : H_OTHER;
	case 17:
		return name_is(n, "transfer-encoding", 17) ? -1 : H_OTHER;
	}
	return H_OTHER;
}

/* One byte of a Host value: lower-case name, then an optional :port. */
static __always_inline int host_byte(struct scratch *s, __u8 c)
{
	struct parse *p = &s->p;

	if (c == ' ' || c == '\t') {
		if (p->host_len || p->host_port)
			p->host_ended = 1;
		return 0;
	}
	if (p->host_ended)
		return -1;
	if (p->host_port)
		return (c >= '0' && c <= '9') ? 0 : -1;
	if (c == ':') {
		p->host_port = 1;
		return p->host_len ? 0 : -1;
	}
	c = lower(c);
	if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-'))
		return -1;
	if (p->host_len >= RAUTA_HOST_MAX)
		return -1;
	s->key.host[p->host_len & (RAUTA_HOST_MAX - 1)] = c;
	p->host_len++;
	return 0;
}

static __always_inline long value_byte(struct scratch *s, __u8 c)
{
	struct parse *p = &s->p;

	if (c == '\r') {
		if (p->kind == H_HOST && !p->host_len)
			return -1;
		p->state = S_VALUE_LF;
		return 0;
	}
	if ((c < 0x20 && c != '\t') || c == 0x7f)
		return -1;
	if (p->kind == H_HOST)
		return host_byte(s, c);
	return 0;
}

static long parse_byte(__u32 i, struct parse_ctx *ctx)
{
	struct scratch *s = ctx->s;

	if (!s)
		return 1;
	struct parse *p = &s->p;
	__u32 pos = p->start + i;

	if (pos >= p->len || pos >= RAUTA_REQ_MAX)
		goto bad;
	__u8 c = s->req[pos & (RAUTA_REQ_MAX - 1)];

	switch (p->state) {
	case S_TARGET:
		if (c == ' ') {
			if (!p->target_len)
				goto bad;
			p->state = S_VERSION;
			return 0;
		}
		if (c <= 0x20 || c >= 0x7f || p->target_len >= RAUTA_TARGET_MAX)
			goto bad;
		if (!p->target_len && c != '/')
			goto bad; /* absolute-form and asterisk-form go to user space */
		s->key.target[p->target_len & (RAUTA_TARGET_MAX - 1)] = c;
		p->target_len++;
		return 0;
	case S_VERSION:
		if (!version_byte(p->version_pos, c))
			goto bad;
		if (++p->version_pos == 10)
			p->state = S_LINE;
		return 0;
	case S_LINE:
		if (c == '\r') {
			p->state = S_END_LF;
			return 0;
		}
		if (!is_tchar(c))
			goto bad; /* including obs-fold */
		p->name_len = 0;
		p->state = S_NAME;
		/* fall through */
	case S_NAME:
		if (c == ':') {
			int kind = classify(p);

			if (kind < 0)
				goto bad;
			p->kind = kind;
			if (kind == H_HOST && ++p->hosts > 1)
				goto bad;
			p->state = S_VALUE;
			return 0;
		}
		if (!is_tchar(c))
			goto bad;
		if (p->name_len < NAME_BUF)
			p->name[p->name_len & (NAME_BUF - 1)] = lower(c);
		p->name_len++;
		return 0;
	case S_VALUE:
		if (value_byte(s, c))
			goto bad;
		return 0;
	case S_VALUE_LF:
		if (c != '\n')
			goto bad;
		p->state = S_LINE;
		return 0;
	case S_END_LF:
		/* The blank line must end the segment: no body, no second request. */
		if (c != '\n' || pos + 1 != p->len)
			goto bad;
		p->state = S_DONE;
		return 1;
	}
bad:
	p->state = S_BAD;
	return 1;
}

/* Reads the TCP options: 0 for none, 1 for exactly NOP,NOP,TS (values returned), -1 else. */
static __always_inline int read_options(struct tcphdr *th, void *data_end, struct incoming *in)
{
	__u32 doff = th->doff * 4;

	if (doff == 20) {
		in->timestamps = 0;
		return 0;
	}
	__u8 *o = (void *)(th + 1);

	if (doff != 32 || (void *)(o + 12) > data_end)
		return -1;
	if (o[0] != 1 || o[1] != 1 || o[2] != 8 || o[3] != 10)
		return -1;
	__builtin_memcpy(&in->tsval, o + 4, 4);
	__builtin_memcpy(&in->tsecr, o + 8, 4);
	in->timestamps = 1;
	return 1;
}

#define TH_FIN 0x01
#define TH_SYN 0x02
#define TH_RST 0x04
#define TH_PSH 0x08
#define TH_ACK 0x10
#define TH_URG 0x20

/* A segment of a flow the program answered: handled here (XDP_DROP/XDP_TX), or -1 to go on. */
static __always_inline int owned(struct xdp_md *ctx, struct rauta_flow_key *fk,
				 struct rauta_flow *flow, struct incoming *in, __u8 flags)
{
	/* Only segments that fit the recorded sequence space are ours. */
	if (in->seq != flow->client_next)
		return -1;
	if (in->ack - flow->server_seq > flow->server_end - flow->server_seq)
		return -1;
	if (in->payload_len)
		return -1; /* data after the request: the kernel resets it */
	if (flags & TH_RST) {
		bpf_map_delete_elem(&flows, fk);
		count(RAUTA_OWNED_FLOW);
		return XDP_DROP;
	}
	if (flags & TH_FIN) {
		__u32 end = flow->server_end;
		__u32 ack = in->seq + 1;

		count(RAUTA_OWNED_FLOW);
		int err = reply(ctx, in, 0, 0, 0, TH_ACK, end, ack);

		if (err)
			count(RAUTA_ERRORS);
		if (err == RESIZE_FAILED)
			return XDP_PASS; /* the kernel resets it: the client is done anyway */
		return err ? XDP_DROP : XDP_TX;
	}
	count(RAUTA_OWNED_FLOW);
	return XDP_DROP;
}

/* Builds the answer for a first data segment, or passes it (the reason counted). */
static __always_inline int answer_request(struct xdp_md *ctx, struct incoming *in,
					  struct rauta_flow_key *fk, __u32 payload_off)
{
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&scratch_space, &zero);

	if (!s)
		return pass(RAUTA_ERRORS);
	__u32 len = in->payload_len;

	if (len > RAUTA_REQ_MAX)
		return pass(RAUTA_PASS_TOO_LARGE);
	if (len < 16)
		return pass(RAUTA_PASS_SHAPE);
	if (bpf_xdp_load_bytes(ctx, payload_off, s->req, len))
		return pass(RAUTA_ERRORS);
	__u32 method, start;

	if (s->req[0] == 'G' && s->req[1] == 'E' && s->req[2] == 'T' && s->req[3] == ' ') {
		method = RAUTA_METHOD_GET;
		start = 4;
	} else if (s->req[0] == 'H' && s->req[1] == 'E' && s->req[2] == 'A' &&
		   s->req[3] == 'D' && s->req[4] == ' ') {
		method = RAUTA_METHOD_HEAD;
		start = 5;
	} else {
		return pass(RAUTA_PASS_SHAPE);
	}
	__builtin_memset(&s->key, 0, sizeof(s->key));
	s->key.port = bpf_ntohs(in->server_port);
	__builtin_memset(&s->p, 0, sizeof(s->p));
	s->p.start = start;
	s->p.len = len;
	s->p.state = S_TARGET;
	struct parse_ctx loop_ctx = {.s = s};

	bpf_loop(len - start, parse_byte, &loop_ctx, 0);
	if (s->p.state != S_DONE || s->p.hosts != 1)
		return pass(RAUTA_PASS_SHAPE);
	struct rauta_answer *answer = bpf_map_lookup_elem(&answers, &s->key);

	if (!answer) {
		__builtin_memset(s->key.host, 0, sizeof(s->key.host));
		answer = bpf_map_lookup_elem(&answers, &s->key);
	}
	if (!answer)
		return pass(RAUTA_PASS_NO_ENTRY);
	if (answer->expires_ns && bpf_ktime_get_coarse_ns() >= answer->expires_ns)
		return pass(RAUTA_PASS_EXPIRED);
	if (!(answer->methods & method))
		return pass(RAUTA_PASS_SHAPE);
	__u32 out_len = method == RAUTA_METHOD_HEAD ? answer->head_len : answer->len;
	__u32 sum = method == RAUTA_METHOD_HEAD ? answer->csum_head : answer->csum_full;

	if (!out_len || out_len > RAUTA_ANSWER_MAX)
		return pass(RAUTA_PASS_TOO_LARGE);
	struct rauta_flow flow = {
		.kind = RAUTA_FLOW_ANSWERED,
		.request_seq = in->seq,
		.client_next = in->seq + len,
		.server_seq = in->ack,
		.server_end = in->ack + out_len + 1,
	};
	int err = reply(ctx, in, answer, out_len, sum, TH_FIN | TH_PSH | TH_ACK, in->ack,
			in->seq + len);

	if (err == RESIZE_FAILED)
		return pass(RAUTA_ERRORS); /* untouched: user space answers it */
	if (err) {
		count(RAUTA_ERRORS);
		return XDP_DROP; /* half rewritten; the client retransmits */
	}
	bpf_map_update_elem(&flows, fk, &flow, BPF_ANY);
	count(RAUTA_ANSWERED);
	return XDP_TX;
}

SEC("xdp")
int rauta_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph = data + sizeof(*eth);
	struct tcphdr *th = (void *)iph + sizeof(*iph);

	if ((void *)(th + 1) > data_end)
		return XDP_PASS;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || iph->version != 4 || iph->ihl != 5 ||
	    iph->protocol != IPPROTO_TCP)
		return XDP_PASS;
	if (iph->frag_off & bpf_htons(0x3fff))
		return XDP_PASS; /* fragments */
	__u16 port = bpf_ntohs(th->dest);

	if (!bpf_map_lookup_elem(&ports, &port))
		return XDP_PASS;
	__u32 ip_len = bpf_ntohs(iph->tot_len);
	__u32 tcp_len = th->doff * 4;

	if (tcp_len < 20 || ip_len < sizeof(*iph) + tcp_len ||
	    (void *)iph + ip_len > data_end)
		return XDP_PASS;
	__u8 flags = ((__u8 *)th)[13];
	struct rauta_flow_key fk = {
		.client_addr = iph->saddr,
		.server_addr = iph->daddr,
		.client_port = th->source,
		.server_port = th->dest,
	};

	if (flags & TH_SYN) {
		/* A new connection on the 4-tuple: whatever we recorded for it is stale. */
		bpf_map_delete_elem(&flows, &fk);
		return XDP_PASS;
	}
	if (!(flags & TH_ACK))
		return XDP_PASS;
	struct incoming in = {
		.client_addr = iph->saddr,
		.server_addr = iph->daddr,
		.client_port = th->source,
		.server_port = th->dest,
		.seq = bpf_ntohl(th->seq),
		.ack = bpf_ntohl(th->ack_seq),
		.payload_len = ip_len - sizeof(*iph) - tcp_len,
	};
	__builtin_memcpy(in.client_mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(in.server_mac, eth->h_dest, ETH_ALEN);
	int options = read_options(th, data_end, &in);

	struct rauta_flow *flow = bpf_map_lookup_elem(&flows, &fk);

	if (flow && flow->kind == RAUTA_FLOW_ANSWERED && options >= 0) {
		int verdict = owned(ctx, &fk, flow, &in, flags);

		if (verdict >= 0)
			return verdict;
	}
	if (flags & (TH_RST | TH_FIN | TH_URG))
		return XDP_PASS;
	/* Only the segment the cookie was made for (seq and ack) validates: the handshake ACK
	 * and the first data segment, or their retransmissions. */
	if (bpf_tcp_raw_check_syncookie_ipv4(iph, th))
		return XDP_PASS;
	/* A valid cookie does not prove that no socket exists: a connection the kernel created
	 * (its ACK passed before the port was in `ports`, or before the proxy restarted, or its
	 * `flows` entry was evicted) may retransmit its first segment. Its segments are the
	 * kernel's. The lookup falls back to the listener when no connection matches. */
	struct bpf_sock_tuple tuple = {};

	tuple.ipv4.saddr = iph->saddr;
	tuple.ipv4.daddr = iph->daddr;
	tuple.ipv4.sport = th->source;
	tuple.ipv4.dport = th->dest;
	struct bpf_sock *sk = bpf_skc_lookup_tcp(ctx, &tuple, sizeof(tuple.ipv4),
						 BPF_F_CURRENT_NETNS, 0);
	if (sk) {
		__u32 state = sk->state;

		bpf_sk_release(sk);
		if (state != BPF_TCP_LISTEN)
			return XDP_PASS;
	}
	if (!in.payload_len) {
		count(RAUTA_HANDSHAKE_ACK_DROPPED);
		return XDP_DROP;
	}
	if (flow && flow->kind == RAUTA_FLOW_PASSED)
		return XDP_PASS;
	if (options < 0) {
		count(RAUTA_PASS_TCP_OPTIONS);
	} else {
		int verdict = answer_request(ctx, &in, &fk, sizeof(*eth) + sizeof(*iph) + tcp_len);

		if (verdict != XDP_PASS)
			return verdict;
	}
	/* The kernel creates the connection from this segment and user space serves it: a
	 * retransmission of it must not be answered here should the answers change meanwhile. */
	struct rauta_flow passed = {.kind = RAUTA_FLOW_PASSED};

	bpf_map_update_elem(&flows, &fk, &passed, BPF_ANY);
	return XDP_PASS;
}

/* For the peer of a veth pair: frames sent with XDP_TX are only received by a veth whose
 * peer has an XDP program. */
SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}
