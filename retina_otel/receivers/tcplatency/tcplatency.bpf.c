// tcplatency: TCP handshake latency and smoothed RTT per flow, from RAW tracepoints only
// (inet_sock_set_state and tcp_probe), plus Retina's API-server latency histograms.
//
// Raw tracepoints get the tracepoint's own arguments (inet_sock_set_state: sk, oldstate, newstate;
// tcp_probe: sk, skb) and skip the trace record a classic (perf) tracepoint builds before running the
// program (for tcp_probe: both sockaddrs, a dozen tcp_sock fields and the socket cookie, on every
// received segment). The receiver checks both argument lists against the running kernel's BTF before
// loading. The socket is NOT read through the (older) kernel headers: the receiver passes the running
// kernel's member offsets, read from BTF, as -D flags:
//   SKC_BASE, SKC_SPAN: the bytes of struct sock holding the sock_common members below (one read;
//   multiples of 8, so the members keep their natural alignment in the stack copy)
//   OFF_SKC_DADDR, OFF_SKC_RCV_SADDR, OFF_SKC_DPORT, OFF_SKC_NUM, OFF_SKC_FAMILY, OFF_SKC_V6_DADDR,
//   OFF_SKC_V6_RCV_SADDR (offsets in struct sock), OFF_SK_PROTOCOL (sock.sk_protocol, u16),
//   OFF_SRTT_US (tcp_sock.srtt_us)
// Other parameters (-D): MAX_FLOWS (per-flow LRU table size), HIST_SLOTS (whole-millisecond slots of
// the API-server histograms; the last slot holds everything at or above it).
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
    u64 first_ns;      // first observation (SYN sent or first probe), CLOCK_MONOTONIC ns
    u64 last_jiffies;  // last observation, in jiffies (bpf_jiffies64: a tick's resolution, ~free)
    u32 srtt_us;       // latest smoothed RTT
    u32 min_srtt_us;   // smallest smoothed RTT seen
    u32 samples;       // tcp_probe samples
    u32 handshake_us;  // SYN sent -> ESTABLISHED, 0 when not seen (passive side or started earlier)
    u32 api_gen;       // apiserver_gen[0] when `apiserver` was decided (re-decided when it changes)
    u8 apiserver;      // daddr is an API-server address
    u8 pad[3];
};

struct addr_key {
    u8 addr[16];
};

struct syn_val {
    u64 ts;
    u32 api_gen;
    u8 apiserver;
};

BPF_TABLE("lru_hash", struct flow_key, struct flow_val, flows, MAX_FLOWS);
BPF_HASH(syn_start, u64, struct syn_val, 16384);
BPF_HASH(apiserver_ips, struct addr_key, u8, 256);
// One bit per API-server address (bloom_bit), a superset of apiserver_ips at all times (user space sets
// the new bits before it changes the table): tcp_probe runs on every received segment, and one bit test
// turns nearly every other address away before hashing 16 bytes into apiserver_ips (~16 ns a segment).
BPF_ARRAY(apiserver_bloom, u64, 1);
// Bumped by user space after every change of apiserver_ips: flows re-decide their flag once.
BPF_ARRAY(apiserver_gen, u32, 1);
BPF_ARRAY(api_latency_hist, u64, HIST_SLOTS);
BPF_ARRAY(api_handshake_hist, u64, HIST_SLOTS);
// 0: API-server connection attempts without a SYN/ACK, 1: flows table updates that failed
BPF_ARRAY(counters, u64, 2);
// [0] != 0: keep the per-flow table (set by user space once something joins flow records with RTT).
// Without it only connections to the API server are followed, for the histograms: the rest cost a
// socket read and one lookup in apiserver_ips per event instead of a per-flow table update.
BPF_ARRAY(track_flows, u32, 1);

// sock_common fields, copied from the socket with one read (zeroed if the read fails).
#define SKC(ptr, off) ((ptr) + ((off) - SKC_BASE))

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

static __always_inline u32 current_gen(void) {
    int zero = 0;
    u32 *gen = apiserver_gen.lookup(&zero);
    return gen ? *gen : 0;
}

static __always_inline int tracking_flows(void) {
    int zero = 0;
    u32 *on = track_flows.lookup(&zero);
    return on && *on;
}

// The address's bit: Fibonacci hash of its last 8 bytes (IPv4-mapped: ::ffff and the IPv4 address), top
// 6 bits. receiver.bloom_bit computes the same.
static __always_inline u64 bloom_bit(const u8 *addr) {
    u64 low = 0;
    __builtin_memcpy(&low, addr + 8, 8);
    return 1ULL << ((low * 0x9E3779B97F4A7C15ULL) >> 58);
}

static __always_inline u8 is_apiserver(const u8 *daddr) {
    int zero = 0;
    u64 *bloom = apiserver_bloom.lookup(&zero);
    if (!bloom || !(*bloom & bloom_bit(daddr)))
        return 0;
    struct addr_key dst = {};
    __builtin_memcpy(dst.addr, daddr, 16);
    return apiserver_ips.lookup(&dst) ? 1 : 0;
}

RAW_TRACEPOINT_PROBE(inet_sock_set_state) {
    // args: const struct sock *sk, const int oldstate, const int newstate
    int oldstate = (int)ctx->args[1];
    int newstate = (int)ctx->args[2];
    if (newstate != TCP_SYN_SENT && oldstate != TCP_SYN_SENT)
        return 0;  // the common case, decided before touching the socket
    void *sk = (void *)ctx->args[0];
    u16 protocol = 0;
    bpf_probe_read_kernel(&protocol, sizeof(protocol), sk + OFF_SK_PROTOCOL);
    if (protocol != IPPROTO_TCP_NUM)
        return 0;
    u64 skaddr = (u64)sk;
    u64 skc_words[SKC_SPAN / 8];
    u8 *skc = (u8 *)skc_words;
    if (newstate == TCP_SYN_SENT) {
        bpf_probe_read_kernel(skc, SKC_SPAN, sk + SKC_BASE);
        u16 family = *(u16 *)SKC(skc, OFF_SKC_FAMILY);
        u8 daddr[16];
        if (family == AF_INET)
            map_v4(daddr, SKC(skc, OFF_SKC_DADDR));
        else
            __builtin_memcpy(daddr, SKC(skc, OFF_SKC_V6_DADDR), 16);
        struct syn_val v = {};
        v.api_gen = current_gen();
        v.apiserver = is_apiserver(daddr);
        if (!v.apiserver && !tracking_flows())
            return 0;  // nothing to follow this connection for
        v.ts = bpf_ktime_get_ns();
        syn_start.update(&skaddr, &v);
        return 0;
    }
    struct syn_val *start = syn_start.lookup(&skaddr);
    if (!start)
        return 0;
    u64 now = bpf_ktime_get_ns();
    u64 us = (now - start->ts) / 1000;
    u8 apiserver = start->apiserver;
    u32 api_gen = start->api_gen;
    u64 began = start->ts;
    syn_start.delete(&skaddr);
    if (newstate == TCP_ESTABLISHED) {
        bpf_probe_read_kernel(skc, SKC_SPAN, sk + SKC_BASE);
        u16 family = *(u16 *)SKC(skc, OFF_SKC_FAMILY);
        struct flow_key key = {};
        if (family == AF_INET) {
            map_v4(key.saddr, SKC(skc, OFF_SKC_RCV_SADDR));
            map_v4(key.daddr, SKC(skc, OFF_SKC_DADDR));
        } else {
            __builtin_memcpy(key.saddr, SKC(skc, OFF_SKC_V6_RCV_SADDR), 16);
            __builtin_memcpy(key.daddr, SKC(skc, OFF_SKC_V6_DADDR), 16);
        }
        key.sport = *(u16 *)SKC(skc, OFF_SKC_NUM);                  // host order
        key.dport = bpf_ntohs(*(u16 *)SKC(skc, OFF_SKC_DPORT));     // network order in the socket
        struct flow_val val = {};
        val.first_ns = began;
        val.last_jiffies = bpf_jiffies64();
        val.handshake_us = us > 0xffffffff ? 0xffffffff : (u32)us;
        val.api_gen = api_gen;
        val.apiserver = apiserver;
        if (tracking_flows() && flows.update(&key, &val) != 0)
            count(1);
        if (apiserver) {
            int slot = slot_of(us);
            u64 *c = api_handshake_hist.lookup(&slot);
            if (c) __sync_fetch_and_add(c, 1);
        }
    } else if (newstate == TCP_CLOSE && apiserver) {
        count(0);  // the SYN never got a SYN/ACK (timeout, RST or unreachable)
    }
    return 0;
}

RAW_TRACEPOINT_PROBE(tcp_probe) {
    // args: struct sock *sk, const struct sk_buff *skb. Runs on every received segment of an
    // established socket, under the socket's lock.
    void *sk = (void *)ctx->args[0];
    u64 skc_words[SKC_SPAN / 8];
    u8 *skc = (u8 *)skc_words;
    bpf_probe_read_kernel(skc, SKC_SPAN, sk + SKC_BASE);
    u16 family = *(u16 *)SKC(skc, OFF_SKC_FAMILY);
    struct flow_key key = {};
    if (family == AF_INET) {
        map_v4(key.saddr, SKC(skc, OFF_SKC_RCV_SADDR));
        map_v4(key.daddr, SKC(skc, OFF_SKC_DADDR));
    } else if (family == AF_INET6) {
        __builtin_memcpy(key.saddr, SKC(skc, OFF_SKC_V6_RCV_SADDR), 16);
        __builtin_memcpy(key.daddr, SKC(skc, OFF_SKC_V6_DADDR), 16);
    } else {
        return 0;
    }
    key.sport = *(u16 *)SKC(skc, OFF_SKC_NUM);
    key.dport = bpf_ntohs(*(u16 *)SKC(skc, OFF_SKC_DPORT));
    u32 srtt8 = 0;
    if (!tracking_flows()) {  // API-server connections only: no per-flow state
        if (!is_apiserver(key.daddr))
            return 0;
        bpf_probe_read_kernel(&srtt8, sizeof(srtt8), sk + OFF_SRTT_US);
        if (srtt8 >> 3) {
            int slot = slot_of(srtt8 >> 3);
            u64 *c = api_latency_hist.lookup(&slot);
            if (c) __sync_fetch_and_add(c, 1);
        }
        return 0;
    }
    bpf_probe_read_kernel(&srtt8, sizeof(srtt8), sk + OFF_SRTT_US);
    u32 srtt = srtt8 >> 3;  // what the classic tracepoint reports (srtt_us is kept << 3)
    // Last-seen only: jiffies are enough and cost a memory read (ktime_get_ns: ~100 ns in a VM;
    // bpf_ktime_get_coarse_ns is not allowed in tracing programs).
    u64 now = bpf_jiffies64();
    u32 gen = current_gen();
    u8 apiserver;
    struct flow_val *val = flows.lookup(&key);
    if (val) {
        val->last_jiffies = now;
        val->srtt_us = srtt;
        if (srtt && (val->min_srtt_us == 0 || srtt < val->min_srtt_us))
            val->min_srtt_us = srtt;
        __sync_fetch_and_add(&val->samples, 1);
        if (val->api_gen != gen) {
            val->apiserver = is_apiserver(key.daddr);
            val->api_gen = gen;
        }
        apiserver = val->apiserver;
    } else {
        struct flow_val fresh = {};
        fresh.first_ns = bpf_ktime_get_ns();  // once per flow
        fresh.last_jiffies = now;
        fresh.srtt_us = srtt;
        fresh.min_srtt_us = srtt;
        fresh.samples = 1;
        fresh.api_gen = gen;
        fresh.apiserver = is_apiserver(key.daddr);
        apiserver = fresh.apiserver;
        if (flows.update(&key, &fresh) != 0)
            count(1);
    }
    if (srtt && apiserver) {
        int slot = slot_of(srtt);
        u64 *c = api_latency_hist.lookup(&slot);
        if (c) __sync_fetch_and_add(c, 1);
    }
    return 0;
}
