// packetparser: TC (clsact, direct action) observer of every packet on pod veths and the host
// interface. Parses L2-L4, aggregates per connection in an LRU table and reports through a ring
// buffer. Never changes a packet's fate: every program returns TC_ACT_UNSPEC.
//
// DNS chain: after counting, UDP/TCP packets with port 53 or 5353 are handed by tail call to the program
// plugged into pp_dns for their observation point (the dns receiver's TC source), if any.
//
// Parameters (-D): AGG_HIGH (0/1), FAST_PATH (0/1: receiver.uses_fast_path), SAMPLING_RATE, REPORT_INTERVAL_NS, CT_MAX_ENTRIES,
// FILTER_MAX_ENTRIES, BYPASS_FILTER (0/1), RINGBUF_PAGES, FLUSH_BATCH, HOT_SLOTS (power of two), JIFFY_NS
// (0 = unknown tick rate), CT_TOTALS (0/1: per-connection lifetime totals for the conntrack_* gauges),
// REPORT_EVENTS (0/1, or 2: switched at run time; high aggregation's report rule, see pp_common.h;
// receiver.report_mode), CLOSE_REPORTS (1: the close rule's record on FIN/RST always; 2: while the
// connection table could fill up, see pp_common.h).
// Only UAPI structures are used: the build headers may be older than the running kernel.
//
// The parts are in headers next to this file, inlined by retina_otel.bpf.load_bpf (bcc rewrites map
// syntax in its main file only): pp_common.h (constants, structs, shared maps), pp_parse.h (parsing),
// pp_conntrack.h (connection table), pp_report.h (reports), pp_flowcache.h (flow cache), pp_fastpath.h
// (fast path). Here: what packetparser does with a packet (count), the DNS chain and the programs.
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>

#include "pp_common.h"
#include "pp_parse.h"
#include "pp_conntrack.h"
#include "pp_report.h"
#include "pp_flowcache.h"
#include "pp_fastpath.h"

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
    u32 events = events_rule();
    int report = AGG_HIGH ? 0 : 1;
    // The initiator is the sender of the first packet seen, except that a SYN-ACK comes from the responder.
    u8 init_is_a = (p->flags & F_SYNACK) ? !src_is_a : src_is_a;
    int created = 0;
    struct ct_entry *e = conntrack.lookup(&k);
    if (!e) {
        e = ct_create(&k, init_is_a, p->ipver, now, events);
        if (!e) {
            stat_inc(ST_CT_FULL);
            return;
        }
        created = 1;
        report |= events;
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
        report |= events;
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
                __sync_fetch_and_add(&d->flags[i], 1U);
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
    if ((m & REPORT_NOW_FLAGS(events)) && (events || close_reports_on()))
        report = 1;
    if (m & ~d->flags_seen) {
        report |= events;
        d->flags_seen |= m;
    }
    if (now - d->last_report_ns >= REPORT_INTERVAL_NS)
        report = 1;
    if (report)
        emit(e, &k, dir, now);
#if AGG_HIGH
    // A DNS flow never gets a slot, so the fast path never counts a DNS packet in the cache: it always
    // reaches the full program and its DNS chain, at no cost to the fast path's hit (see handle_fast).
    if (take && !dns_flow(p))
        hot_install(s, &fw, p, obs, src_is_a, d, now, events);
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
            emit(e, &k, 0, now);
            any = 1;
        }
        if (e->d[1].packets) {
            emit(e, &k, 1, now);
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
