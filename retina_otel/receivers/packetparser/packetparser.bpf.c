// packetparser: TC (clsact, direct action) observer of every packet on pod veths and the host
// interface. Parses L2-L4, aggregates per connection in an LRU table and reports through a ring
// buffer. Never changes a packet's fate: every program returns TC_ACT_UNSPEC.
//
// DNS chain: after counting, UDP/TCP packets with port 53 or 5353 are handed by tail call to the program
// plugged into pp_dns for their observation point (the dns receiver's TC source), if any.
//
// Parameters (-D): AGG_HIGH (0/1), FAST_PATH (0/1: receiver.uses_fast_path), SAMPLING_RATE, REPORT_INTERVAL_NS, CT_MAX_ENTRIES,
// FILTER_MAX_ENTRIES, BYPASS_FILTER (0/1), RINGBUF_PAGES, FLUSH_BATCH, HOT_SLOTS (power of two), JIFFY_NS
// (0 = unknown tick rate), CT_TOTALS (0/1: per-connection lifetime totals for the conntrack_* gauges).
// Only UAPI structures are used: the build headers may be older than the running kernel.

#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>

#define OBS_FROM_ENDPOINT 1
#define OBS_TO_ENDPOINT 2
#define OBS_FROM_NETWORK 3
#define OBS_TO_NETWORK 4

// Flag bits, in the order of retina_otel.flows.TcpFlag.
#define F_FIN (1 << 0)
#define F_SYN (1 << 1)
#define F_SYNACK (1 << 2)
#define F_ACK (1 << 3)
#define F_RST (1 << 4)
#define F_PSH (1 << 5)
#define F_URG (1 << 6)
#define F_ECE (1 << 7)
#define F_CWR (1 << 8)
#define F_NS (1 << 9)
#define N_FLAGS 10
#define REPORT_FLAGS (F_FIN | F_SYN | F_SYNACK | F_RST | F_URG | F_ECE | F_CWR)

// Per-CPU statistics (indexes mirror retina_otel/receivers/packetparser/records.py STAT_NAMES).
#define ST_PACKETS 0         // packets considered (after sampling and filter)
#define ST_REPORTS 1         // reports written to the ring buffer
#define ST_RINGBUF_FULL 2    // bpf_ringbuf_reserve failed (counts stay in the table)
#define ST_CT_CREATE 3       // connection entries created
#define ST_CT_FULL 4         // connection entry could not be created (packet not counted)
#define ST_NOT_IP 5          // ARP etc. (not an error)
#define ST_TRUNC_L2 6
#define ST_TRUNC_IP 7
#define ST_BAD_IP 8
#define ST_TRUNC_EXT 9       // IPv6 extension header truncated
#define ST_EXT_LIMIT 10      // more IPv6 extension headers than we walk
#define ST_TRUNC_L4 11
#define ST_BAD_L4 12
#define ST_FILTERED 13       // neither address in the filter map
#define ST_SAMPLED_OUT 14
#define ST_FLUSH_DELETED 15  // expired idle entries removed by the flush program
#define ST_HOT_HITS 16       // packets counted in the per-CPU flow cache (high aggregation)
#define ST_TAIL_CALL_FAILED 17  // fast path could not hand a packet to the full program (not counted)
#define N_STATS 18

#define TCP_LIFETIME_NS (360ULL * 1000000000ULL)
#define TIME_WAIT_NS (30ULL * 1000000000ULL)
#define OTHER_LIFETIME_NS (60ULL * 1000000000ULL)

#define MAX_IPV6_EXT 8

struct ct_key {
    u8 a[16];
    u8 b[16];
    u16 pa;
    u16 pb;
    u32 ifindex;
    u8 proto;
    u8 pad[3];
};

struct ct_dir {  // one direction of a connection at one interface
    u64 packets;      // since this direction's last report
    u64 bytes;
    u64 rev_packets;  // the opposite direction, since this direction's last report
    u64 rev_bytes;
    u64 first_ns;     // first packet since last report (0 = none)
    u64 last_ns;
    u64 last_report_ns;
    u64 flags[N_FLAGS];  // 64-bit: atomic exchange needs it
    u16 sport;        // row ports of the last packet (ICMP: type, code)
    u16 dport;
    u16 flags_seen;
    u8 obs;
    u8 pad;
    u64 total_packets;  // since the connection began (CT_TOTALS: Retina's conntrack_* gauges), never reset by
    u64 total_bytes;    // a report; zeroed when the entry is reused for a new connection
};

struct ct_entry {
    struct ct_dir d[2];  // 0: initiator -> responder, 1: reply
    u64 eviction_ns;
    u8 init_is_a;        // the initiator is key.a
    u8 closing;          // FIN or RST seen: TIME_WAIT lifetime
    u8 ipver;
    u8 pad[5];
};

struct report {
    u64 t_first;
    u64 t_last;
    u64 packets;
    u64 bytes;
    u64 rev_packets;
    u64 rev_bytes;
    u8 src[16];
    u8 dst[16];
    u32 ifindex;
    u32 flags[N_FLAGS];
    u16 sport;
    u16 dport;
    u8 proto;
    u8 ipver;
    u8 obs;
    u8 is_reply;
    u8 sampled;
    u8 reason;  // 1 packet, 2 flush
    u8 pad[2];
};

struct pkt {
    u8 src[16];
    u8 dst[16];
    u64 len;     // IP total length
    u16 sport;   // row ports (ICMP: type, code)
    u16 dport;
    u16 ksport;  // connection-key ports (ICMP echo: identifier both ways)
    u16 kdport;
    u16 flags;
    u8 proto;
    u8 ipver;
};

// Clock of the connection table. Low aggregation (one row per packet) reads the precise clock. High
// aggregation needs tick resolution only (rows are per connection and interval): bpf_ktime_get_ns reads
// the clocksource, ~100 ns per packet in a VM (measured with kernel.bpf_stats_enabled under 64-byte
// UDP); bpf_ktime_get_coarse_ns is cheaper but still a seqcount loop; jiffies scaled to ns (JIFFY_NS =
// 1e9 / CONFIG_HZ, passed by user space when it knows HZ) cost one load, ~17 ns less per packet than
// the coarse clock. Both tick clocks have tick resolution (1-10 ms). The jiffies clock has its own
// origin: pp_clock samples it next to bpf_ktime_get_ns so user space can translate.
#if !AGG_HIGH
#define CT_NOW() bpf_ktime_get_ns()
#elif JIFFY_NS
#define CT_NOW() (bpf_jiffies64() * JIFFY_NS)
#else
#define CT_NOW() bpf_ktime_get_coarse_ns()
#endif

struct lpm_key {
    u32 prefixlen;
    u8 addr[16];
};

BPF_TABLE("lru_hash", struct ct_key, struct ct_entry, conntrack, CT_MAX_ENTRIES);
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(stats, u64, N_STATS);
BPF_F_TABLE("lpm_trie", struct lpm_key, u8, ipfilter, FILTER_MAX_ENTRIES, BPF_F_NO_PREALLOC);
BPF_ARRAY(flush_keys, struct ct_key, FLUSH_BATCH);
BPF_PERCPU_ARRAY(scratch_entry, struct ct_entry, 1);  // a zeroed entry to insert (too big for the stack)
BPF_ARRAY(clock_sample, u64, 2);  // written by pp_clock: [CT_NOW(), bpf_ktime_get_ns()]

#if AGG_HIGH
// Per-CPU flow cache (high aggregation). A lookup in the connection table costs ~60 ns of the ~90 ns the
// program adds per packet (BPF_PROG_TEST_RUN, 64-byte UDP), so the packets that need no report
// (no new flag, no report flag, report interval not due) are counted in a direct-mapped per-CPU slot
// instead: one inlined array lookup, plain increments. A slot's counts move into the connection entry
// (atomically, as any CPU's) when its flow next takes the slow path on this CPU, when another flow
// takes the slot over, and when user space sweeps the cache: it points hot_active at the other of the
// two arrays hot0/hot1 (the update returns once no program still counts into the old one: see
// retina_otel/bpf/doublebuffer.py), reads the old one, has pp_merge add the pending counts to the table
// and zeroes it (see receiver.py).
//
// A slot never outlives its flow's next report: its deadline is the direction's last report plus the
// report interval, capped at the shortest entry lifetime, so reports and expiry happen on time.
#define HOT_FLAGS (F_ACK | F_PSH)           // flags a cached packet may carry (counted per slot)
#define HOT_IDLE_NS 10000000ULL             // a slot unused for 10 ms may be taken by another flow

struct hot_slot {
    struct ct_key flow;  // the flow as the packets carry it: a = source, pa = source port (not normalised)
    u16 sport;
    u16 dport;
    u16 flags_ok;   // HOT_FLAGS already seen in this direction: packets with others take the slow path
    u8 obs;
    u8 src_is_a;
    u8 ipver;
    u8 valid;
    u8 pad[2];
    u64 deadline;
    u64 packets;    // pending: not yet in the connection entry
    u64 bytes;
    u64 first_ns;
    u64 last_ns;
    u64 n_ack;
    u64 n_psh;
};

BPF_PERCPU_ARRAY(hot0, struct hot_slot, HOT_SLOTS);
BPF_PERCPU_ARRAY(hot1, struct hot_slot, HOT_SLOTS);
BPF_ARRAY_OF_MAPS(hot_active, "hot0", 1);
BPF_ARRAY(merge_list, struct hot_slot, FLUSH_BATCH);
#endif

static __always_inline void stat_add(u32 idx, u64 n) {
    u64 *v = stats.lookup(&idx);
    if (v)
        *v += n;
}

static __always_inline void stat_inc(u32 idx) { stat_add(idx, 1); }

// Insert a fresh entry for k (BPF_NOEXIST) and return the table's copy, or NULL when the table is full.
static __always_inline struct ct_entry *ct_create(const struct ct_key *k, u8 init_is_a, u8 ipver, u64 now) {
    u32 zero = 0;
    struct ct_entry *ne = scratch_entry.lookup(&zero);
    if (!ne)
        return 0;
    __builtin_memset(ne, 0, sizeof(*ne));
    ne->init_is_a = init_is_a;
    ne->ipver = ipver;
    ne->eviction_ns = now + OTHER_LIFETIME_NS;
    if (conntrack.insert((struct ct_key *)k, ne) == 0)
        stat_inc(ST_CT_CREATE);
    return conntrack.lookup((struct ct_key *)k);
}

// Copy n header bytes at off into buf (8-byte aligned): straight from the linear packet data when they
// are there (no helper call), else through bpf_skb_load_bytes (non-linear skb). Returns < 0 when the
// packet is too short. The direct copy moves 8/4/2-byte words: packet data is only 2-byte aligned, which
// x86-64 and arm64 load at full speed and the verifier accepts there; a plain memcpy from a byte pointer
// becomes one load and one store per byte.
#define DIRECT_MAX_OFF 512
static __always_inline int load_hdr(struct __sk_buff *skb, u32 off, void *buf, u32 n) {
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    if (off <= DIRECT_MAX_OFF) {
        void *ptr = data + off;
        if (ptr + n <= end) {
#pragma unroll
            for (u32 i = 0; i + 8 <= n; i += 8)
                *(u64 *)(buf + i) = *(u64 *)(ptr + i);
            if (n & 4)
                *(u32 *)(buf + (n & ~7)) = *(u32 *)(ptr + (n & ~7));
            if (n & 2)
                *(u16 *)(buf + (n & ~3)) = *(u16 *)(ptr + (n & ~3));
            return 0;
        }
    }
    return bpf_skb_load_bytes(skb, off, buf, n);
}

static __always_inline u16 load_be16(struct __sk_buff *skb, u32 off, int *err) {
    u16 v __attribute__((aligned(8))) = 0;
    if (load_hdr(skb, off, &v, 2) < 0)
        *err = 1;
    return bpf_ntohs(v);
}

// An IPv4 address (as loaded from the header) as the low word of the IPv4-mapped IPv6 address
// ::ffff:a.b.c.d, whose high word is 0: one key layout for both versions.
#define V4MAPPED(addr) (((u64)(addr) << 32) | 0xffff0000ULL)

// The same into a 16-byte address field (8-byte aligned) from 4 header bytes (4-byte aligned).
static __always_inline void set_v4mapped(u8 *out, const u8 *addr4) {
    ((u64 *)out)[0] = 0;
    ((u64 *)out)[1] = V4MAPPED(*(const u32 *)addr4);
}

// Our flag bits (F_*) from the TCP header's flags byte (offset 13) and data-offset byte (12, for NS).
static __always_inline u16 tcp_flag_bits(u8 f, u8 doff) {
    u16 m = 0;
    if (f & 0x01) m |= F_FIN;
    if ((f & 0x02) && (f & 0x10)) m |= F_SYNACK;
    else if (f & 0x02) m |= F_SYN;
    if (f & 0x04) m |= F_RST;
    if (f & 0x08) m |= F_PSH;
    if (f & 0x10) m |= F_ACK;
    if (f & 0x20) m |= F_URG;
    if (f & 0x40) m |= F_ECE;
    if (f & 0x80) m |= F_CWR;
    if (doff & 0x01) m |= F_NS;
    return m;
}

// Returns 0 with *p filled, or -1 (already counted).
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p) {
    int err = 0;
    u32 off = ETH_HLEN;
    u16 eth_proto = load_be16(skb, 12, &err);
    if (err) {
        stat_inc(ST_TRUNC_L2);
        return -1;
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        if (eth_proto == ETH_P_8021Q || eth_proto == ETH_P_8021AD) {
            eth_proto = load_be16(skb, off + 2, &err);
            if (err) {
                stat_inc(ST_TRUNC_L2);
                return -1;
            }
            off += 4;
        }
    }
    u8 l4proto = 0;
    u32 l4off = 0;
    u32 l3end = 0;
    int first_fragment = 1;
    if (eth_proto == ETH_P_IP) {
        u8 hdr[20] __attribute__((aligned(8)));
        if (load_hdr(skb, off, hdr, 20) < 0) {
            stat_inc(ST_TRUNC_IP);
            return -1;
        }
        u8 ihl = hdr[0] & 0x0f;
        u16 tot = ((u16)hdr[2] << 8) | hdr[3];
        if ((hdr[0] >> 4) != 4 || ihl < 5) {
            stat_inc(ST_BAD_IP);
            return -1;
        }
        u64 total = tot;
        if (tot == 0)  // TSO/BIG TCP super-packet: length from the skb
            total = skb->len - off;
        if (total < (u64)ihl * 4) {
            stat_inc(ST_BAD_IP);
            return -1;
        }
        if (skb->len < off + ihl * 4) {
            stat_inc(ST_TRUNC_IP);
            return -1;
        }
        u16 frag = ((u16)hdr[6] << 8) | hdr[7];
        if (frag & 0x1fff)
            first_fragment = 0;
        set_v4mapped(p->src, &hdr[12]);
        set_v4mapped(p->dst, &hdr[16]);
        p->ipver = 4;
        p->len = total;
        l4proto = hdr[9];
        l4off = off + ihl * 4;
        l3end = off + total;
    } else if (eth_proto == ETH_P_IPV6) {
        u8 hdr[40] __attribute__((aligned(8)));
        if (load_hdr(skb, off, hdr, 40) < 0) {
            stat_inc(ST_TRUNC_IP);
            return -1;
        }
        if ((hdr[0] >> 4) != 6) {
            stat_inc(ST_BAD_IP);
            return -1;
        }
        u16 plen = ((u16)hdr[4] << 8) | hdr[5];
        u64 total = (u64)plen + 40;
        if (plen == 0)  // jumbogram / BIG TCP
            total = skb->len - off;
        __builtin_memcpy(p->src, &hdr[8], 16);
        __builtin_memcpy(p->dst, &hdr[24], 16);
        p->ipver = 6;
        p->len = total;
        l3end = off + total;
        u8 nh = hdr[6];
        u32 cur = off + 40;
        int done = 0;
#pragma unroll
        for (int i = 0; i < MAX_IPV6_EXT; i++) {
            if (!done) {
                if (nh == 0 || nh == 43 || nh == 60 || nh == 51 || nh == 44) {
                    u8 eh[4] __attribute__((aligned(8)));
                    if (cur + 8 > l3end || load_hdr(skb, cur, eh, 4) < 0) {
                        stat_inc(ST_TRUNC_EXT);
                        return -1;
                    }
                    u32 len;
                    if (nh == 44) {
                        len = 8;
                        u16 fo = ((u16)eh[2] << 8) | eh[3];
                        if (fo & 0xfff8)
                            first_fragment = 0;
                    } else if (nh == 51) {
                        len = ((u32)eh[1] + 2) * 4;
                    } else {
                        len = ((u32)eh[1] + 1) * 8;
                    }
                    nh = eh[0];
                    cur += len;
                    if (!first_fragment)
                        done = 1;
                } else {
                    done = 1;
                }
            }
        }
        if (!done) {
            stat_inc(ST_EXT_LIMIT);
            return -1;
        }
        l4proto = nh;
        l4off = cur;
    } else {
        stat_inc(ST_NOT_IP);
        return -1;
    }
    p->proto = l4proto;
    if (!first_fragment || l4proto == 59)  // no L4 header in this packet
        return 0;
    if (l4proto == 6) {
        u8 th[20] __attribute__((aligned(8)));
        if (l4off + 20 > l3end || load_hdr(skb, l4off, th, 20) < 0) {
            stat_inc(ST_TRUNC_L4);
            return -1;
        }
        if ((th[12] >> 4) < 5) {
            stat_inc(ST_BAD_L4);
            return -1;
        }
        p->sport = ((u16)th[0] << 8) | th[1];
        p->dport = ((u16)th[2] << 8) | th[3];
        p->flags = tcp_flag_bits(th[13], th[12]);
        p->ksport = p->sport;
        p->kdport = p->dport;
    } else if (l4proto == 17) {
        u8 uh[8] __attribute__((aligned(8)));
        if (l4off + 8 > l3end || load_hdr(skb, l4off, uh, 8) < 0) {
            stat_inc(ST_TRUNC_L4);
            return -1;
        }
        p->sport = ((u16)uh[0] << 8) | uh[1];
        p->dport = ((u16)uh[2] << 8) | uh[3];
        p->ksport = p->sport;
        p->kdport = p->dport;
    } else if (l4proto == 1 || l4proto == 58) {
        u8 ih[8] __attribute__((aligned(8)));
        if (l4off + 8 > l3end || load_hdr(skb, l4off, ih, 8) < 0) {
            stat_inc(ST_TRUNC_L4);
            return -1;
        }
        p->sport = ih[0];  // type
        p->dport = ih[1];  // code
        u8 t = ih[0];
        int echo = (l4proto == 1) ? (t == 8 || t == 0) : (t == 128 || t == 129);
        if (echo) {  // request and reply share the identifier: one connection
            u16 id = ((u16)ih[4] << 8) | ih[5];
            p->ksport = id;
            p->kdport = id;
        } else {
            p->ksport = t;
            p->kdport = ih[1];
        }
    }
    return 0;
}

// 1 when (a, pa) sorts before or equal to (b, pb): the normalised key order.
static __always_inline int addr_le(const u8 *a, u16 pa, const u8 *b, u16 pb) {
    u64 a0 = 0, a1 = 0, b0 = 0, b1 = 0;
    __builtin_memcpy(&a0, a, 8);
    __builtin_memcpy(&a1, a + 8, 8);
    __builtin_memcpy(&b0, b, 8);
    __builtin_memcpy(&b1, b + 8, 8);
    if (a0 != b0)
        return a0 < b0;
    if (a1 != b1)
        return a1 < b1;
    return pa <= pb;
}

// Move one direction's since-last-report counters into a ring-buffer record. Counters are taken with
// atomic exchanges, so packets counted concurrently on other CPUs ride on the next report.
// A counter's value, zeroed: an atomic exchange only when it is not already 0 (most of a report's ten flag
// counters are). A concurrent add that lands after a plain read of 0 stays in the counter for the next
// report, so nothing is lost; a locked exchange costs ~20 cycles and a report took fourteen of them.
static __always_inline u64 take_count(u64 *counter) {
    if (*(volatile u64 *)counter == 0)
        return 0;
    return __sync_lock_test_and_set(counter, 0ULL);
}

static __always_inline void emit(struct ct_entry *e, const struct ct_key *k, int dir, u64 now, u8 reason) {
    struct ct_dir *d = dir ? &e->d[1] : &e->d[0];
    struct report *r = events.ringbuf_reserve(sizeof(struct report));
    if (!r) {
        stat_inc(ST_RINGBUF_FULL);
        return;
    }
    r->packets = take_count(&d->packets);
    r->bytes = take_count(&d->bytes);
    r->rev_packets = take_count(&d->rev_packets);
    r->rev_bytes = take_count(&d->rev_bytes);
#pragma unroll
    for (int i = 0; i < N_FLAGS; i++)
        r->flags[i] = (u32)take_count(&d->flags[i]);
    u64 first = d->first_ns;
    d->first_ns = 0;
    r->t_first = first ? first : d->last_ns;
    r->t_last = d->last_ns;
    int src_is_a = (dir == 0) == (e->init_is_a != 0);
    if (src_is_a) {
        __builtin_memcpy(r->src, k->a, 16);
        __builtin_memcpy(r->dst, k->b, 16);
    } else {
        __builtin_memcpy(r->src, k->b, 16);
        __builtin_memcpy(r->dst, k->a, 16);
    }
    r->ifindex = k->ifindex;
    r->sport = d->sport;
    r->dport = d->dport;
    r->proto = k->proto;
    r->ipver = e->ipver;
    r->obs = d->obs;
    r->is_reply = dir;
    r->sampled = SAMPLING_RATE > 1;
    r->reason = reason;
    r->pad[0] = 0;
    r->pad[1] = 0;
    d->last_report_ns = now;
    events.ringbuf_submit(r, 0);
    stat_inc(ST_REPORTS);
}

// The connection key of a packet (addresses and ports in a fixed order, so both directions share it).
// Returns 1 when the packet's source is key.a.
static __always_inline u8 make_key(struct __sk_buff *skb, const struct pkt *p, struct ct_key *k) {
    u8 src_is_a = addr_le(p->src, p->ksport, p->dst, p->kdport);
    if (src_is_a) {
        __builtin_memcpy(k->a, p->src, 16);
        __builtin_memcpy(k->b, p->dst, 16);
        k->pa = p->ksport;
        k->pb = p->kdport;
    } else {
        __builtin_memcpy(k->a, p->dst, 16);
        __builtin_memcpy(k->b, p->src, 16);
        k->pa = p->kdport;
        k->pb = p->ksport;
    }
    k->ifindex = skb->ifindex;
    k->proto = p->proto;
    return src_is_a;
}

static __always_inline int filter_match(struct pkt *p) {
#if BYPASS_FILTER
    return 1;
#else
    struct lpm_key lk = {.prefixlen = 128};
    __builtin_memcpy(lk.addr, p->src, 16);
    if (ipfilter.lookup(&lk))
        return 1;
    __builtin_memcpy(lk.addr, p->dst, 16);
    if (ipfilter.lookup(&lk))
        return 1;
    return 0;
#endif
}

// DNS ports (either side) of the DNS chain; the parser leaves ports 0 on later fragments.
#define DNS_PORT_A 53
#define DNS_PORT_B 5353
BPF_PROG_ARRAY(pp_dns, 4);  // index: observation point - 1; filled from user space (retina_otel.bpf.chain)

static __always_inline int dns_flow(const struct pkt *p) {
    return (p->proto == 6 || p->proto == 17) && (p->sport == DNS_PORT_A || p->sport == DNS_PORT_B ||
                                                 p->dport == DNS_PORT_A || p->dport == DNS_PORT_B);
}

#if AGG_HIGH
// The flow cache works on the flow as the packet carries it (source first), as five 64-bit words laid
// out like struct ct_key's first 40 bytes: source address (2 words, IPv4 mapped), destination address
// (2), and source port | destination port << 16 | ifindex << 32 (key ports: ICMP echo uses the id).
// Both programs build the words, the fast path straight from the packet with word loads, so a hit needs
// neither the normalised key nor struct pkt.
struct flow_words {
    u64 w[5];
};

static __always_inline void words_from_pkt(struct flow_words *f, const struct pkt *p, u32 ifindex) {
    __builtin_memcpy(&f->w[0], p->src, 16);
    __builtin_memcpy(&f->w[2], p->dst, 16);
    f->w[4] = (u64)p->ksport | ((u64)p->kdport << 16) | ((u64)ifindex << 32);
}

// Slot of (flow as oriented, observation point) in the flow cache. Source and
// destination are mixed asymmetrically, so the two directions of a conversation get different slots.
// Fibonacci hashing: the index is the product's top bits, which every input bit reaches (a product's
// middle bits ignore the input's high bits, e.g. an IPv4 source's last octet).
#define HOT_SLOT_BITS __builtin_ctz(HOT_SLOTS)
static __always_inline u32 hot_index(const struct flow_words *f, u8 proto, u8 obs) {
    u64 d = f->w[2] ^ f->w[3];
    u64 x = f->w[0] ^ f->w[1] ^ ((d << 29) | (d >> 35)) ^ f->w[4] ^ ((u64)proto << 48) ^ ((u64)obs << 56);
    x *= 0x9E3779B97F4A7C15ULL;
    return (u32)(x >> (64 - HOT_SLOT_BITS));
}

// This CPU's slot idx of the flow cache the programs count into now (hot0 until user space first sets
// hot_active).
static __always_inline struct hot_slot *hot_slot_at(u32 idx) {
    u32 zero = 0;
    void *cache = hot_active.lookup(&zero);
    if (!cache)
        return hot0.lookup(&idx);
    return bpf_map_lookup_elem(cache, &idx);
}

static __always_inline int hot_same_flow(const struct hot_slot *s, const struct flow_words *f, u8 proto) {
    const u64 *sw = (const u64 *)&s->flow;
    u64 diff = (sw[0] ^ f->w[0]) | (sw[1] ^ f->w[1]) | (sw[2] ^ f->w[2]) | (sw[3] ^ f->w[3]) | (sw[4] ^ f->w[4]);
    return diff == 0 && s->flow.proto == proto;
}

// Count the packet in its slot when nothing about it needs the connection table.
static __always_inline int hot_hit(struct hot_slot *s, const struct flow_words *f, u8 proto, u8 obs, u16 sport,
                                   u16 dport, u16 flags, u64 len, u64 now) {
    if (!s->valid || now >= s->deadline || (flags & ~s->flags_ok) || s->obs != obs || s->sport != sport ||
        s->dport != dport || !hot_same_flow(s, f, proto))
        return 0;
    if (s->packets == 0)
        s->first_ns = now;
    s->packets += 1;
    s->bytes += len;
    s->last_ns = now;
    if (flags & F_ACK)
        s->n_ack += 1;
    if (flags & F_PSH)
        s->n_psh += 1;
    return 1;
}

static __always_inline void hot_clear_counts(struct hot_slot *s) {
    s->packets = 0;
    s->bytes = 0;
    s->n_ack = 0;
    s->n_psh = 0;
    s->first_ns = 0;
}

// Move a slot's pending counts into its connection entry e (other CPUs may be counting into e too).
static __always_inline void hot_merge(struct ct_entry *e, struct hot_slot *s) {
    int dir = (s->src_is_a == (e->init_is_a != 0)) ? 0 : 1;
    struct ct_dir *d = dir ? &e->d[1] : &e->d[0];
    struct ct_dir *o = dir ? &e->d[0] : &e->d[1];
    u64 n = s->packets;
    u64 b = s->bytes;
    __sync_fetch_and_add(&d->packets, n);
    __sync_fetch_and_add(&d->bytes, b);
    __sync_fetch_and_add(&o->rev_packets, n);
    __sync_fetch_and_add(&o->rev_bytes, b);
#if CT_TOTALS
    __sync_fetch_and_add(&d->total_packets, n);
    __sync_fetch_and_add(&d->total_bytes, b);
#endif
    if (s->n_ack)
        __sync_fetch_and_add(&d->flags[3], s->n_ack);  // F_ACK
    if (s->n_psh)
        __sync_fetch_and_add(&d->flags[5], s->n_psh);  // F_PSH
    if (d->first_ns == 0 || s->first_ns < d->first_ns)
        d->first_ns = s->first_ns;
    if (s->last_ns > d->last_ns)
        d->last_ns = s->last_ns;
    d->sport = s->sport;
    d->dport = s->dport;
    d->obs = s->obs;
    u64 life = OTHER_LIFETIME_NS;
    if (s->flow.proto == 6)
        life = e->closing ? TIME_WAIT_NS : TCP_LIFETIME_NS;
    if (s->last_ns + life > e->eviction_ns)
        e->eviction_ns = s->last_ns + life;
    hot_clear_counts(s);
}

// The same for a slot whose entry is not at hand (created again if the table evicted it). The slot's
// flow is turned into its connection key in place (a and b, and their ports, swapped when the source is
// b; branch-free, like a key on the stack, this keeps pp_merge's loop within the verifier's budget) and
// the slot is invalidated: the callers reinstall it (take-over) or drop it (pp_merge works on a copy).
static __always_inline void hot_merge_lookup(struct hot_slot *s, u64 now) {
    u64 *w = (u64 *)&s->flow;
    u64 m = 0ULL - (u64)(s->src_is_a == 0);
    u64 x0 = (w[0] ^ w[2]) & m;
    u64 x1 = (w[1] ^ w[3]) & m;
    w[0] ^= x0;
    w[2] ^= x0;
    w[1] ^= x1;
    w[3] ^= x1;
    u64 ports = w[4] & 0xffffffffULL;
    u64 swapped = ((ports & 0xffff) << 16) | (ports >> 16);
    w[4] ^= (ports ^ swapped) & m;
    s->valid = 0;
    struct ct_entry *e = conntrack.lookup(&s->flow);
    if (!e)
        e = ct_create(&s->flow, s->src_is_a, s->ipver, now);
    if (!e) {
        stat_add(ST_CT_FULL, s->packets);
        s->packets = 0;
        return;
    }
    hot_merge(e, s);
}

static __always_inline void hot_install(struct hot_slot *s, const struct flow_words *f, const struct pkt *p, u8 obs,
                                        u8 src_is_a, const struct ct_dir *d, u64 now) {
    __builtin_memcpy(&s->flow, f, sizeof(*f));
    s->flow.proto = p->proto;
    s->flow.pad[0] = 0;
    s->flow.pad[1] = 0;
    s->flow.pad[2] = 0;
    s->sport = p->sport;
    s->dport = p->dport;
    s->flags_ok = d->flags_seen & HOT_FLAGS;
    s->obs = obs;
    s->src_is_a = src_is_a;
    s->ipver = p->ipver;
    s->valid = 1;
    u64 deadline = d->last_report_ns + REPORT_INTERVAL_NS;
    if (deadline > now + TIME_WAIT_NS)
        deadline = now + TIME_WAIT_NS;
    s->deadline = deadline;
    hot_clear_counts(s);
    s->last_ns = now;
}
#endif

// Everything packetparser does with a parsed packet: filter, sampling, flow cache, connection table,
// report. Every way out is a plain return, so the caller's DNS chain runs after any of them.
static __always_inline void count(struct __sk_buff *skb, struct pkt *p, u8 obs) {
    if (!filter_match(p)) {
        stat_inc(ST_FILTERED);
        return;
    }
#if SAMPLING_RATE > 1
    // Connection control packets are always considered, so the table tracks lifetimes correctly.
    if (!(p->flags & (F_SYN | F_SYNACK | F_FIN | F_RST)) && (bpf_get_prandom_u32() % SAMPLING_RATE) != 0) {
        stat_inc(ST_SAMPLED_OUT);
        return;
    }
#endif
    stat_inc(ST_PACKETS);

    struct ct_key k __attribute__((aligned(8))) = {};
    u8 src_is_a = make_key(skb, p, &k);

    u64 now = CT_NOW();
#if AGG_HIGH
    struct flow_words fw;
    words_from_pkt(&fw, p, k.ifindex);
    struct hot_slot *s = hot_slot_at(hot_index(&fw, p->proto, obs));
    if (!s)
        return;
    if (hot_hit(s, &fw, p->proto, obs, p->sport, p->dport, p->flags, p->len, now)) {
        stat_inc(ST_HOT_HITS);
        return;
    }
#endif
    int report = AGG_HIGH ? 0 : 1;
    // The initiator is the sender of the first packet seen, except that a SYN-ACK comes from the responder.
    u8 init_is_a = (p->flags & F_SYNACK) ? !src_is_a : src_is_a;
    int created = 0;
    struct ct_entry *e = conntrack.lookup(&k);
    if (!e) {
        e = ct_create(&k, init_is_a, p->ipver, now);
        if (!e) {
            stat_inc(ST_CT_FULL);
            return;
        }
        created = 1;
        report = 1;
    }
#if AGG_HIGH
    // The slot's pending counts go into the entry before this packet (and before a reset below). A slot
    // busy with another flow is only taken over once that flow has been quiet for HOT_IDLE_NS.
    int take = 1;
    if (s->valid && hot_same_flow(s, &fw, p->proto)) {
        if (s->packets)
            hot_merge(e, s);
    } else if (s->valid && s->packets) {
        if (now - s->last_ns < HOT_IDLE_NS)
            take = 0;
        else
            hot_merge_lookup(s, now);
    }
#endif
    if (!created && (e->eviction_ns < now || (p->flags & F_SYN))) {
        // Expired (or a fresh SYN reusing the tuple): a new connection. Unreported counters stay and
        // ride on the next report, so totals remain exact.
        e->init_is_a = init_is_a;
        e->closing = 0;
        e->d[0].flags_seen = 0;
        e->d[1].flags_seen = 0;
#if CT_TOTALS
        e->d[0].total_packets = e->d[0].total_bytes = 0;
        e->d[1].total_packets = e->d[1].total_bytes = 0;
#endif
        report = 1;
    }
    int dir = (src_is_a == (e->init_is_a != 0)) ? 0 : 1;
    struct ct_dir *d = dir ? &e->d[1] : &e->d[0];
    struct ct_dir *o = dir ? &e->d[0] : &e->d[1];
    __sync_fetch_and_add(&d->packets, 1);
    __sync_fetch_and_add(&d->bytes, p->len);
    __sync_fetch_and_add(&o->rev_packets, 1);
    __sync_fetch_and_add(&o->rev_bytes, p->len);
#if CT_TOTALS
    __sync_fetch_and_add(&d->total_packets, 1);
    __sync_fetch_and_add(&d->total_bytes, p->len);
#endif
    u16 m = p->flags;
    if (m) {
#pragma unroll
        for (int i = 0; i < N_FLAGS; i++) {
            if (m & (1 << i))
                __sync_fetch_and_add(&d->flags[i], 1ULL);
        }
    }
    if (d->first_ns == 0)
        d->first_ns = now;
    d->last_ns = now;
    d->sport = p->sport;
    d->dport = p->dport;
    d->obs = obs;
    if (p->proto == 6) {
        if (m & (F_FIN | F_RST))
            e->closing = 1;
        e->eviction_ns = now + (e->closing ? TIME_WAIT_NS : TCP_LIFETIME_NS);
    } else {
        e->eviction_ns = now + OTHER_LIFETIME_NS;
    }
    if (m & REPORT_FLAGS)
        report = 1;
    if (m & ~d->flags_seen) {
        report = 1;
        d->flags_seen |= m;
    }
    if (now - d->last_report_ns >= REPORT_INTERVAL_NS)
        report = 1;
    if (report)
        emit(e, &k, dir, now, 1);
#if AGG_HIGH
    // A DNS flow never gets a slot, so the fast path never counts a DNS packet in the cache: it always
    // reaches the full program and its DNS chain, at no cost to the fast path's hit (see handle_fast).
    if (take && !dns_flow(p))
        hot_install(s, &fw, p, obs, src_is_a, d, now);
#endif
}

// The DNS chain: after packetparser's own work, a UDP or TCP packet with port 53 or 5353 on either side
// goes on by tail call to the program plugged for its observation point (the dns receiver's TC source,
// via the "dns_chain" extension). An empty slot makes the tail call fail and the packet simply passes.
static __always_inline int handle(struct __sk_buff *skb, u8 obs) {
    struct pkt p = {};
    if (parse(skb, &p) < 0)
        return TC_ACT_UNSPEC;
    count(skb, &p, obs);
    if (dns_flow(&p))
        pp_dns.call(skb, obs - 1);
    return TC_ACT_UNSPEC;
}

int pp_from_endpoint(struct __sk_buff *skb) { return handle(skb, OBS_FROM_ENDPOINT); }
int pp_to_endpoint(struct __sk_buff *skb) { return handle(skb, OBS_TO_ENDPOINT); }
int pp_from_network(struct __sk_buff *skb) { return handle(skb, OBS_FROM_NETWORK); }
int pp_to_network(struct __sk_buff *skb) { return handle(skb, OBS_TO_NETWORK); }

#if FAST_PATH
// Fast path (high aggregation, no IP filter, no sampling): the programs attached to the interfaces.
// They parse only the common case -- Ethernet, IPv4 (any header length, not a later fragment) or IPv6
// without extension headers, TCP or UDP, headers in the linear data -- and count the packet in its
// flow-cache slot when nothing else is needed. Every other packet goes on by tail call to the full
// program of the same observation point (pp_full[obs - 1]), which parses it again and does everything.
// Why a second program: between two packets the stack runs microseconds of other code, so each run
// fetches the program's code and data from L2/L3 again; the full program's code is ~10 KB jitted, this
// one's ~1.5 KB (measured with kernel.bpf_stats_enabled: about half the full program's cost per run
// above a no-op under 64-byte UDP).
BPF_PROG_ARRAY(pp_full, 4);

// The packet as the fast path needs it. Header fields are read with word loads: packet data is only
// 2-byte aligned behind the Ethernet header, which x86-64 and arm64 load at full speed and the verifier
// accepts there (no strict alignment); through a byte pointer clang would assemble every field from
// single bytes (an IPv6 address: 16 loads, shifts and ors).
struct fast_pkt {
    struct flow_words f;
    u64 len;
    u16 flags;
    u8 proto;
};

static __always_inline int parse_fast(struct __sk_buff *skb, struct fast_pkt *fp) {
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    void *ip = data + ETH_HLEN;
    if (ip + 20 > end)
        return -1;
    u16 eth_proto = *(u16 *)(data + 12);
    u32 l4off;
    if (eth_proto == bpf_htons(ETH_P_IP)) {
        u8 vihl = *(u8 *)ip;
        u32 ihl4 = (u32)(vihl & 0x0f) * 4;
        u32 tot = bpf_ntohs(*(u16 *)(ip + 2));
        // malformed, a later fragment or a super-packet (length 0): the full parser decides
        if ((vihl >> 4) != 4 || ihl4 < 20 || (*(u16 *)(ip + 6) & bpf_htons(0x1fff)) || tot < ihl4)
            return -1;
        fp->f.w[0] = 0;
        fp->f.w[1] = V4MAPPED(*(u32 *)(ip + 12));
        fp->f.w[2] = 0;
        fp->f.w[3] = V4MAPPED(*(u32 *)(ip + 16));
        fp->proto = *(u8 *)(ip + 9);
        fp->len = tot;
        l4off = ihl4;
    } else if (eth_proto == bpf_htons(ETH_P_IPV6)) {
        if (ip + 40 > end)
            return -1;
        u32 plen = bpf_ntohs(*(u16 *)(ip + 4));
        if ((*(u8 *)ip >> 4) != 6 || plen == 0)
            return -1;
        fp->f.w[0] = *(u64 *)(ip + 8);
        fp->f.w[1] = *(u64 *)(ip + 16);
        fp->f.w[2] = *(u64 *)(ip + 24);
        fp->f.w[3] = *(u64 *)(ip + 32);
        fp->proto = *(u8 *)(ip + 6);  // an extension header is neither 6 nor 17: full path
        fp->len = (u64)plen + 40;
        l4off = 40;
    } else {
        return -1;
    }
    void *l4 = ip + l4off;
    if (fp->proto == 17) {
        if (l4 + 8 > end || l4off + 8 > fp->len)
            return -1;
        fp->flags = 0;
    } else if (fp->proto == 6) {
        if (l4 + 20 > end || l4off + 20 > fp->len)
            return -1;
        u8 doff = *(u8 *)(l4 + 12);
        if ((doff >> 4) < 5)
            return -1;
        fp->flags = tcp_flag_bits(*(u8 *)(l4 + 13), doff);
    } else {
        return -1;
    }
    u64 sport = bpf_ntohs(*(u16 *)l4);
    u64 dport = bpf_ntohs(*(u16 *)(l4 + 2));
    fp->f.w[4] = sport | (dport << 16) | ((u64)skb->ifindex << 32);
    return 0;
}

// DNS packets need no test here: the full program never gives a DNS flow a cache slot (see count), so
// they miss the cache and go on to the full program, whose DNS chain runs after counting them.
static __always_inline int handle_fast(struct __sk_buff *skb, u8 obs) {
    struct fast_pkt fp;
    if (parse_fast(skb, &fp) == 0 && !(fp.flags & ~HOT_FLAGS)) {
        struct hot_slot *s = hot_slot_at(hot_index(&fp.f, fp.proto, obs));
        u16 sport = (u16)fp.f.w[4];
        u16 dport = (u16)(fp.f.w[4] >> 16);
        if (s && hot_hit(s, &fp.f, fp.proto, obs, sport, dport, fp.flags, fp.len, CT_NOW())) {
            stat_inc(ST_PACKETS);
            stat_inc(ST_HOT_HITS);
            return TC_ACT_UNSPEC;
        }
    }
    pp_full.call(skb, obs - 1);
    stat_inc(ST_TAIL_CALL_FAILED);  // only reached when the tail call failed
    return TC_ACT_UNSPEC;
}

int pp_fast_from_endpoint(struct __sk_buff *skb) { return handle_fast(skb, OBS_FROM_ENDPOINT); }
int pp_fast_to_endpoint(struct __sk_buff *skb) { return handle_fast(skb, OBS_TO_ENDPOINT); }
int pp_fast_from_network(struct __sk_buff *skb) { return handle_fast(skb, OBS_FROM_NETWORK); }
int pp_fast_to_network(struct __sk_buff *skb) { return handle_fast(skb, OBS_TO_NETWORK); }
#endif

// Run from user space with BPF_PROG_TEST_RUN: report the unreported counters of the connections
// whose keys user space wrote into flush_keys[0..n) (n in the first 4 bytes of the packet), and delete
// those that expired with nothing left to report. Returns how many entries it deleted.
int pp_flush(struct __sk_buff *skb) {
    u32 n = 0;
    if (bpf_skb_load_bytes(skb, 0, &n, 4) < 0)
        return 0;
    u64 now = CT_NOW();
    int deleted = 0;
    for (u32 i = 0; i < FLUSH_BATCH; i++) {
        if (i >= n)
            break;
        u32 idx = i;
        struct ct_key *kp = flush_keys.lookup(&idx);
        if (!kp)
            break;
        struct ct_key k = *kp;
        struct ct_entry *e = conntrack.lookup(&k);
        if (!e)
            continue;
        int any = 0;
        if (e->d[0].packets) {
            emit(e, &k, 0, now, 2);
            any = 1;
        }
        if (e->d[1].packets) {
            emit(e, &k, 1, now, 2);
            any = 1;
        }
        if (!any && e->eviction_ns < now) {
            conntrack.delete(&k);
            deleted++;
            stat_inc(ST_FLUSH_DELETED);
        }
    }
    return deleted;
}

#if AGG_HIGH
// Run from user space with BPF_PROG_TEST_RUN after a switch of hot_active: add the pending counts of the
// flow-cache slots user space copied into merge_list[0..n) (n in the first 4 bytes of the packet) to
// their connection entries.
int pp_merge(struct __sk_buff *skb) {
    u32 n = 0;
    if (bpf_skb_load_bytes(skb, 0, &n, 4) < 0)
        return 0;
    u64 now = CT_NOW();
    int merged = 0;
    for (u32 i = 0; i < FLUSH_BATCH; i++) {
        if (i >= n)
            break;
        u32 idx = i;
        struct hot_slot *s = merge_list.lookup(&idx);
        if (!s)
            break;
        if (s->packets) {
            hot_merge_lookup(s, now);
            merged++;
        }
    }
    return merged;
}
#endif

// Run from user space with BPF_PROG_TEST_RUN: one sample of the table's clock and of the monotonic clock.
int pp_clock(struct __sk_buff *skb) {
    u32 i0 = 0, i1 = 1;
    u64 *ct = clock_sample.lookup(&i0);
    u64 *mono = clock_sample.lookup(&i1);
    if (!ct || !mono)
        return 0;
    *ct = CT_NOW();
    *mono = bpf_ktime_get_ns();
    return 1;
}
