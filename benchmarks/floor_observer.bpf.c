// The floor of per-packet observation, for bench_agent's `floor` phase: what any observer on
// packetparser's hooks pays at the least when it looks at every packet. It reads the headers as
// packetparser's fast path does (Ethernet, IPv4 or IPv6, TCP or UDP ports and flags) and writes what it
// saw, 64 bytes, into a per-CPU array used as a ring; no table, no flow state, no report, no user space.
// Never changes a packet's fate (TC_ACT_UNSPEC).
//
// Built with -DFLOW_TABLE=1 (bench_agent's `table` phase) it also counts every packet exactly per flow
// and interface in the least a table can be: a per-CPU LRU hash keyed by the directed flow and ifindex
// (no connection, no flags, no lifetimes, no report), one lookup per packet and an insert for a new flow.
// What a connection table itself costs on these hooks, before anything packetparser does with it.
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>

#define SEEN_SLOTS 1024

#ifndef FLOW_TABLE
#define FLOW_TABLE 0
#endif

struct seen {
    u64 addr[4];   // source, destination (IPv4: the low word of each pair)
    u64 ports;     // source port | destination port << 16 | ifindex << 32
    u64 len;       // IP length
    u64 flags;     // TCP flags byte | protocol << 8
    u64 time_ns;
};

BPF_PERCPU_ARRAY(seen_ring, struct seen, SEEN_SLOTS);
BPF_PERCPU_ARRAY(seen_next, u32, 1);

#if FLOW_TABLE
struct flow_key {
    u64 addr[4];
    u64 ports;  // as struct seen
    u64 proto;
};

struct flow_counts {
    u64 packets;
    u64 bytes;
};

// The size of packetparser's default connection table (conntrack_max_entries).
BPF_TABLE("lru_percpu_hash", struct flow_key, struct flow_counts, flow_table, 262144);

static __always_inline void count_flow(const struct seen *s) {
    struct flow_key k = {};
    __builtin_memcpy(k.addr, s->addr, sizeof(k.addr));
    k.ports = s->ports;
    k.proto = s->flags >> 8;
    struct flow_counts *c = flow_table.lookup(&k);
    if (c) {
        c->packets += 1;
        c->bytes += s->len;
        return;
    }
    struct flow_counts fresh = {.packets = 1, .bytes = s->len};
    flow_table.update(&k, &fresh);
}
#endif

int floor_observe(struct __sk_buff *skb) {
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    void *ip = data + ETH_HLEN;
    if (ip + 40 > end)
        return TC_ACT_UNSPEC;
    struct seen s = {};
    u32 l4off;
    u8 proto;
    u16 eth_proto = *(u16 *)(data + 12);
    if (eth_proto == bpf_htons(ETH_P_IP)) {
        l4off = (u32)(*(u8 *)ip & 0x0f) * 4;
        s.addr[1] = *(u32 *)(ip + 12);
        s.addr[3] = *(u32 *)(ip + 16);
        s.len = bpf_ntohs(*(u16 *)(ip + 2));
        proto = *(u8 *)(ip + 9);
    } else if (eth_proto == bpf_htons(ETH_P_IPV6)) {
        l4off = 40;
        s.addr[0] = *(u64 *)(ip + 8);
        s.addr[1] = *(u64 *)(ip + 16);
        s.addr[2] = *(u64 *)(ip + 24);
        s.addr[3] = *(u64 *)(ip + 32);
        s.len = (u64)bpf_ntohs(*(u16 *)(ip + 4)) + 40;
        proto = *(u8 *)(ip + 6);
    } else {
        return TC_ACT_UNSPEC;
    }
    if (l4off > 60)
        return TC_ACT_UNSPEC;
    void *l4 = ip + l4off;
    if (l4 + 20 > end)
        return TC_ACT_UNSPEC;
    if (proto == 6)
        s.flags = *(u8 *)(l4 + 13);
    s.flags |= (u64)proto << 8;
    s.ports = (u64)bpf_ntohs(*(u16 *)l4) | ((u64)bpf_ntohs(*(u16 *)(l4 + 2)) << 16) | ((u64)skb->ifindex << 32);
    s.time_ns = bpf_jiffies64();
    u32 zero = 0;
    u32 *next = seen_next.lookup(&zero);
    if (!next)
        return TC_ACT_UNSPEC;
    u32 slot = *next & (SEEN_SLOTS - 1);
    *next += 1;
    struct seen *out = seen_ring.lookup(&slot);
    if (out)
        *out = s;
#if FLOW_TABLE
    count_flow(&s);
#endif
    return TC_ACT_UNSPEC;
}

// The raw tracepoints the agent runs per packet or connection, each with a program that does nothing
// (bench_agent's no-op phase attaches the same).
int floor_tracepoint(void *ctx) { return 0; }
