// dropreason: count real packet drops from the kfree_skb RAW tracepoint, by reason, direction and flow.
//
// A raw tracepoint gets the tracepoint's own arguments (skb, location, reason[, rx_sk]) and skips the
// trace record a classic (perf) tracepoint builds before running the program. The receiver checks the
// argument list against the running kernel's BTF (btf_trace_kfree_skb) before loading. The sk_buff is
// NOT read through the (older) kernel headers: the receiver passes the running kernel's member offsets,
// read from BTF, as -D flags:
//   OFF_HEAD, OFF_NETWORK_HEADER, OFF_LEN, OFF_DEV, OFF_SKB_IIF, OFF_PROTOCOL (sk_buff),
//   OFF_DEV_IFINDEX (net_device); SKB_BASE/SKB_SPAN: the byte range of sk_buff holding them all,
//   read with one bpf_probe_read_kernel when it is small enough
//   IS_NOT_A_DROP(r): reasons that are normal frees (SKB_NOT_DROPPED_YET, SKB_CONSUMED) or excluded
//   IS_STACK_DISCARD(r): the stack's housekeeping (categories.py): counted in the totals, no flow entry
//   MAX_FLOWS: entries of the per-flow map
#include <uapi/linux/ptrace.h>
#include <net/dropreason.h>

#define DIR_INGRESS 1
#define DIR_EGRESS 2
#define ETH_P_IP_H 0x0800
#define ETH_P_IPV6_H 0x86DD

struct drop_key {
    u32 reason;
    u32 ifindex;
    u8 saddr[16];
    u8 daddr[16];
    u16 sport;
    u16 dport;
    u8 proto;
    u8 ip_version;
    u8 direction;
    u8 pad;
};

struct drop_val {
    u64 packets;
    u64 bytes;
    u64 first_ns;
    u64 last_ns;
};

struct total_key {
    u32 reason;
    u32 direction;
};

struct total_val {
    u64 packets;
    u64 bytes;
};

// Two per-flow maps: the kernel writes the one drop_flows_active points at while user space drains the
// other, so no increment can land between a batch read and its delete (exact totals; see
// retina_otel/bpf/doublebuffer.py). Totals are never deleted: user space reads them as cumulative counters.
BPF_HASH(drop_flows0, struct drop_key, struct drop_val, MAX_FLOWS);
BPF_HASH(drop_flows1, struct drop_key, struct drop_val, MAX_FLOWS);
BPF_ARRAY_OF_MAPS(drop_flows_active, "drop_flows0", 1);
BPF_HASH(drop_totals, struct total_key, struct total_val, 4096);
BPF_PERCPU_ARRAY(drop_lost, u64, 2);  // 0: flow map full, 1: totals map full

struct ipv4_hdr {
    u8 ver_ihl;
    u8 tos;
    u16 tot_len;
    u16 id;
    u16 frag_off;
    u8 ttl;
    u8 protocol;
    u16 check;
    u8 saddr[4];
    u8 daddr[4];
};

struct ipv6_hdr {
    u32 ver_tc_flow;
    u16 payload_len;
    u8 nexthdr;
    u8 hop_limit;
    u8 saddr[16];
    u8 daddr[16];
};

static __always_inline void count_lost(u32 slot) {
    u64 *lost = drop_lost.lookup(&slot);
    if (lost)
        *lost += 1;
}

#if SKB_SPAN <= 256
#define SKB_FIELD(dst, off) __builtin_memcpy(&(dst), skb_bytes + ((off) - SKB_BASE), sizeof(dst))
#else
#define SKB_FIELD(dst, off) bpf_probe_read_kernel(&(dst), sizeof(dst), skb + (off))
#endif

RAW_TRACEPOINT_PROBE(kfree_skb) {
    // args: struct sk_buff *skb, void *location, enum skb_drop_reason reason[, struct sock *rx_sk]
    u32 reason = (u32)ctx->args[2];
    if (IS_NOT_A_DROP(reason))
        return 0;

    void *skb = (void *)ctx->args[0];
#if SKB_SPAN <= 256
    u8 skb_bytes[SKB_SPAN];
    bpf_probe_read_kernel(skb_bytes, sizeof(skb_bytes), skb + SKB_BASE);  // zeroed if it fails
#endif
    unsigned char *head = 0;
    u16 nh = 0xffff;
    u32 skb_len = 0;
    int iif = 0;
    void *dev = 0;
    u16 proto_be = 0;
    SKB_FIELD(head, OFF_HEAD);
    SKB_FIELD(nh, OFF_NETWORK_HEADER);
    SKB_FIELD(skb_len, OFF_LEN);
    SKB_FIELD(iif, OFF_SKB_IIF);
    SKB_FIELD(dev, OFF_DEV);
    SKB_FIELD(proto_be, OFF_PROTOCOL);

    struct drop_key key = {};
    key.reason = reason;
    // A packet that arrived on an interface of this namespace carries its ifindex in skb_iif; one that a
    // local socket sent has none. (A forwarded packet dropped on its way out counts as ingress: it was
    // received here.)
    key.direction = iif ? DIR_INGRESS : DIR_EGRESS;
    if (dev)
        bpf_probe_read_kernel(&key.ifindex, sizeof(key.ifindex), dev + OFF_DEV_IFINDEX);
    u64 bytes = skb_len;

    u16 proto = bpf_ntohs(proto_be);  // the classic tracepoint's `protocol` field
    if (head && nh != 0xffff && (proto == ETH_P_IP_H || proto == ETH_P_IPV6_H || proto == 0)) {
        unsigned char *l3 = head + nh;
        u8 first = 0;
        bpf_probe_read_kernel(&first, 1, l3);
        u32 l4off = 0;
        if ((first >> 4) == 4) {
            struct ipv4_hdr ip = {};
            bpf_probe_read_kernel(&ip, sizeof(ip), l3);
            key.ip_version = 4;
            key.proto = ip.protocol;
            key.saddr[10] = 0xff; key.saddr[11] = 0xff;
            key.daddr[10] = 0xff; key.daddr[11] = 0xff;
            __builtin_memcpy(&key.saddr[12], ip.saddr, 4);
            __builtin_memcpy(&key.daddr[12], ip.daddr, 4);
            bytes = bpf_ntohs(ip.tot_len);
            if ((bpf_ntohs(ip.frag_off) & 0x1fff) == 0)
                l4off = (ip.ver_ihl & 0x0f) * 4;
        } else if ((first >> 4) == 6) {
            struct ipv6_hdr ip6 = {};
            bpf_probe_read_kernel(&ip6, sizeof(ip6), l3);
            key.ip_version = 6;
            key.proto = ip6.nexthdr;
            __builtin_memcpy(key.saddr, ip6.saddr, 16);
            __builtin_memcpy(key.daddr, ip6.daddr, 16);
            bytes = bpf_ntohs(ip6.payload_len) + 40;
            l4off = 40;  // extension headers are not walked: their flows keep proto = the first header
        }
        if (l4off && (key.proto == 6 || key.proto == 17 || key.proto == 132)) {
            u16 ports[2] = {};
            bpf_probe_read_kernel(ports, sizeof(ports), l3 + l4off);
            key.sport = bpf_ntohs(ports[0]);
            key.dport = bpf_ntohs(ports[1]);
        } else if (l4off && (key.proto == 1 || key.proto == 58)) {
            u8 tc[2] = {};
            bpf_probe_read_kernel(tc, sizeof(tc), l3 + l4off);
            key.sport = tc[0];  // ICMP type
            key.dport = tc[1];  // ICMP code
        }
    }

    struct total_key tk = {.reason = reason, .direction = key.direction};
    struct total_val *tv = drop_totals.lookup(&tk);
    if (!tv) {
        struct total_val zero = {};
        drop_totals.insert(&tk, &zero);
        tv = drop_totals.lookup(&tk);
    }
    if (tv) {
        __sync_fetch_and_add(&tv->packets, 1);
        __sync_fetch_and_add(&tv->bytes, bytes);
    } else {
        count_lost(1);
    }
    if (IS_STACK_DISCARD(reason))
        return 0;

    // The clock only for flow entries: bpf_ktime_get_ns costs ~100 ns in a VM, and the stack's own
    // discards (one or more per TCP connection's teardown) need none.
    u64 now = bpf_ktime_get_ns();
    int zero_index = 0;
    void *flows = drop_flows_active.lookup(&zero_index);  // NULL until user space sets it: drop_flows0
    struct drop_val init = {.first_ns = now};
    struct drop_val *v;
    if (flows) {
        v = bpf_map_lookup_elem(flows, &key);
        if (!v) {
            bpf_map_update_elem(flows, &key, &init, BPF_NOEXIST);
            v = bpf_map_lookup_elem(flows, &key);
        }
    } else {
        v = drop_flows0.lookup_or_try_init(&key, &init);
    }
    if (!v) {
        count_lost(0);
        return 0;
    }
    __sync_fetch_and_add(&v->packets, 1);
    __sync_fetch_and_add(&v->bytes, bytes);
    v->last_ns = now;
    return 0;
}
