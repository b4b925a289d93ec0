// tcplatency: TCP handshake latency and smoothed RTT per flow, from tracepoints only
// (sock:inet_sock_set_state and tcp:tcp_probe), plus Retina's API-server latency histograms.
//
// Parameters (-D): MAX_FLOWS (per-flow LRU table size), HIST_SLOTS (whole-millisecond slots of the
// API-server histograms; the last slot holds everything at or above it).
#include <uapi/linux/bpf.h>
#include <linux/socket.h>

#ifndef MAX_FLOWS
#define MAX_FLOWS 65536
#endif
#ifndef HIST_SLOTS
#define HIST_SLOTS 64
#endif

#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_CLOSE 7
#define IPPROTO_TCP_NUM 6

// A flow from the local socket's point of view: saddr is local. IPv4 is v4-mapped IPv6.
struct flow_key {
    u8 saddr[16];
    u8 daddr[16];
    u16 sport;
    u16 dport;
    u32 pad;
};

struct flow_val {
    u64 first_ns;      // first observation (SYN sent or first probe)
    u64 last_ns;       // last observation
    u32 srtt_us;       // latest smoothed RTT
    u32 min_srtt_us;   // smallest smoothed RTT seen
    u32 samples;       // tcp_probe samples
    u32 handshake_us;  // SYN sent -> ESTABLISHED, 0 when not seen (passive side or started earlier)
};

struct addr_key {
    u8 addr[16];
};

struct syn_val {
    u64 ts;
    u8 apiserver;
};

BPF_TABLE("lru_hash", struct flow_key, struct flow_val, flows, MAX_FLOWS);
BPF_HASH(syn_start, u64, struct syn_val, 16384);
BPF_HASH(apiserver_ips, struct addr_key, u8, 256);
BPF_ARRAY(api_latency_hist, u64, HIST_SLOTS);
BPF_ARRAY(api_handshake_hist, u64, HIST_SLOTS);
// 0: API-server connection attempts without a SYN/ACK, 1: flows table updates that failed
BPF_ARRAY(counters, u64, 2);

static __always_inline void map_v4(u8 *dst, const u8 *src) {
    __builtin_memset(dst, 0, 10);
    dst[10] = 0xff;
    dst[11] = 0xff;
    __builtin_memcpy(dst + 12, src, 4);
}

static __always_inline u32 slot_of(u64 us) {
    u64 ms = (us + 500) / 1000;  // Retina rounds latencies to whole milliseconds
    return ms >= HIST_SLOTS ? HIST_SLOTS - 1 : (u32)ms;
}

static __always_inline void count(int index) {
    u64 *v = counters.lookup(&index);
    if (v) __sync_fetch_and_add(v, 1);
}

TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (args->protocol != IPPROTO_TCP_NUM)
        return 0;
    u64 sk = (u64)args->skaddr;
    if (args->newstate == TCP_SYN_SENT) {
        struct syn_val v = {};
        v.ts = bpf_ktime_get_ns();
        struct addr_key dst = {};
        if (args->family == AF_INET)
            map_v4(dst.addr, args->daddr);
        else
            __builtin_memcpy(dst.addr, args->daddr_v6, 16);
        v.apiserver = apiserver_ips.lookup(&dst) ? 1 : 0;
        syn_start.update(&sk, &v);
        return 0;
    }
    if (args->oldstate != TCP_SYN_SENT)
        return 0;
    struct syn_val *start = syn_start.lookup(&sk);
    if (!start)
        return 0;
    u64 now = bpf_ktime_get_ns();
    u64 us = (now - start->ts) / 1000;
    u8 apiserver = start->apiserver;
    u64 began = start->ts;
    syn_start.delete(&sk);
    if (args->newstate == TCP_ESTABLISHED) {
        struct flow_key key = {};
        if (args->family == AF_INET) {
            map_v4(key.saddr, args->saddr);
            map_v4(key.daddr, args->daddr);
        } else {
            __builtin_memcpy(key.saddr, args->saddr_v6, 16);
            __builtin_memcpy(key.daddr, args->daddr_v6, 16);
        }
        key.sport = args->sport;
        key.dport = args->dport;
        struct flow_val val = {};
        val.first_ns = began;
        val.last_ns = now;
        val.handshake_us = us > 0xffffffff ? 0xffffffff : (u32)us;
        if (flows.update(&key, &val) != 0)
            count(1);
        if (apiserver) {
            int slot = slot_of(us);
            u64 *c = api_handshake_hist.lookup(&slot);
            if (c) __sync_fetch_and_add(c, 1);
        }
    } else if (args->newstate == TCP_CLOSE && apiserver) {
        count(0);  // the SYN never got a SYN/ACK (timeout, RST or unreachable)
    }
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_probe) {
    struct flow_key key = {};
    // saddr/daddr are struct sockaddr_in / sockaddr_in6 in a 28-byte buffer.
    if (args->family == AF_INET) {
        map_v4(key.saddr, args->saddr + 4);
        map_v4(key.daddr, args->daddr + 4);
    } else if (args->family == AF_INET6) {
        __builtin_memcpy(key.saddr, args->saddr + 8, 16);
        __builtin_memcpy(key.daddr, args->daddr + 8, 16);
    } else {
        return 0;
    }
    key.sport = args->sport;
    key.dport = args->dport;
    u32 srtt = args->srtt;
    u64 now = bpf_ktime_get_ns();
    struct flow_val *val = flows.lookup(&key);
    if (val) {
        val->last_ns = now;
        val->srtt_us = srtt;
        if (srtt && (val->min_srtt_us == 0 || srtt < val->min_srtt_us))
            val->min_srtt_us = srtt;
        __sync_fetch_and_add(&val->samples, 1);
    } else {
        struct flow_val fresh = {};
        fresh.first_ns = now;
        fresh.last_ns = now;
        fresh.srtt_us = srtt;
        fresh.min_srtt_us = srtt;
        fresh.samples = 1;
        if (flows.update(&key, &fresh) != 0)
            count(1);
    }
    struct addr_key dst = {};
    __builtin_memcpy(dst.addr, key.daddr, 16);
    if (srtt && apiserver_ips.lookup(&dst)) {
        int slot = slot_of(srtt);
        u64 *c = api_latency_hist.lookup(&slot);
        if (c) __sync_fetch_and_add(c, 1);
    }
    return 0;
}
