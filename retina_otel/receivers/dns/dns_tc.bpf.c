// dns, TC source: programs that packetparser's TC programs tail-call (its "dns_chain") for UDP and TCP
// packets with port 53 or 5353 on either side, one per observation point. Each checks the packet with the
// socket filter's rules (dns.bpf.c: IPv4/IPv6, UDP or TCP, DNS port, first fragment, TCP with payload),
// keeps each message once (below) and writes one record to a ring buffer: struct dns_hdr, then the packet
// from the network header on, at most SNAP_LEN bytes. One ring buffer for all CPUs keeps every query ahead
// of its response. Every program returns TC_ACT_UNSPEC: the packet's fate is never changed.
//
// Each message once: in the routed pod model a pod-to-pod query is seen leaving the client (veth ingress,
// FROM_ENDPOINT) and entering the server (veth egress, TO_ENDPOINT). Every FROM_* copy is taken; a TO_*
// copy only when its source address is one of the node's own (the node itself sending), listed by user
// space in dns_local.
//
// Parameters (-D): SNAP_LEN, RINGBUF_PAGES, FILTER_IFINDEX (defined: only interfaces in dns_ifindexes).
// Only UAPI structures are used.
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>

#define OBS_FROM_ENDPOINT 1
#define OBS_TO_ENDPOINT 2
#define OBS_FROM_NETWORK 3
#define OBS_TO_NETWORK 4

#define DNS_PORT_A 53
#define DNS_PORT_B 5353

// Statistics (per CPU; names in retina_otel/receivers/dns/tc_source.py TC_STAT_NAMES).
#define ST_WRITTEN 0       // records written
#define ST_RINGBUF_FULL 1  // records that did not fit in the ring buffer (lost)
#define ST_DUPLICATE 2     // TO_* copies of packets already taken where they left a pod (not an error)
#define N_STATS 3

struct dns_hdr {
    u64 ts_ns;     // bpf_ktime_get_ns
    u32 ifindex;
    u32 orig_len;  // the IP packet's length (header's total / payload length)
    u16 cap_len;   // bytes that follow (<= SNAP_LEN)
    u8 obs;
    u8 pad[5];
};

struct dns_rec {
    struct dns_hdr h;
    u8 data[SNAP_LEN];
};

struct addr16 {
    u8 a[16];  // IPv6, or IPv4 mapped (::ffff:a.b.c.d)
};

BPF_RINGBUF_OUTPUT(dns_events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(dns_stats, u64, N_STATS);
BPF_PERCPU_ARRAY(dns_scratch, struct dns_rec, 1);  // too big for the stack
BPF_HASH(dns_local, struct addr16, u8, 4096);       // the node's own addresses
#ifdef FILTER_IFINDEX
BPF_HASH(dns_ifindexes, u32, u8, 1024);
#endif

static __always_inline void stat_inc(u32 idx) {
    u64 *v = dns_stats.lookup(&idx);
    if (v)
        *v += 1;
}

static __always_inline int dns_port(u16 port) {
    return port == DNS_PORT_A || port == DNS_PORT_B;
}

static __always_inline int take(struct __sk_buff *skb, u8 obs) {
#ifdef FILTER_IFINDEX
    u32 ifindex = skb->ifindex;
    if (!dns_ifindexes.lookup(&ifindex))
        return TC_ACT_UNSPEC;
#endif
    u32 off = ETH_HLEN;
    u16 eth_proto = 0;
    if (bpf_skb_load_bytes(skb, 12, &eth_proto, 2) < 0)
        return TC_ACT_UNSPEC;
#pragma unroll
    for (int i = 0; i < 2; i++) {  // up to two VLAN tags in the frame
        if (eth_proto == bpf_htons(ETH_P_8021Q) || eth_proto == bpf_htons(ETH_P_8021AD)) {
            if (bpf_skb_load_bytes(skb, off + 2, &eth_proto, 2) < 0)
                return TC_ACT_UNSPEC;
            off += 4;
        }
    }
    struct addr16 src = {};
    u32 l4 = 0, ip_len = 0;
    u8 proto = 0;
    if (eth_proto == bpf_htons(ETH_P_IP)) {
        u8 h[20];
        if (bpf_skb_load_bytes(skb, off, h, 20) < 0 || (h[0] >> 4) != 4)
            return TC_ACT_UNSPEC;
        if (((h[6] << 8) | h[7]) & 0x1fff)
            return TC_ACT_UNSPEC;  // a later fragment: no ports to look at
        proto = h[9];
        l4 = (h[0] & 0x0f) * 4;
        ip_len = (h[2] << 8) | h[3];
        if (ip_len == 0)  // a GSO super-packet: the skb's length
            ip_len = skb->len - off;
        src.a[10] = 0xff;
        src.a[11] = 0xff;
        __builtin_memcpy(&src.a[12], &h[12], 4);
    } else if (eth_proto == bpf_htons(ETH_P_IPV6)) {
        u8 h[40];
        if (bpf_skb_load_bytes(skb, off, h, 40) < 0 || (h[0] >> 4) != 6)
            return TC_ACT_UNSPEC;
        proto = h[6];
        l4 = 40;  // extension headers are not walked: DNS does not use them
        u32 plen = (h[4] << 8) | h[5];
        ip_len = plen ? 40 + plen : skb->len - off;  // 0: jumbogram / BIG TCP
        __builtin_memcpy(src.a, &h[8], 16);
    } else {
        return TC_ACT_UNSPEC;
    }
    if (proto != IPPROTO_UDP && proto != IPPROTO_TCP)
        return TC_ACT_UNSPEC;
    u16 ports[2] = {};
    if (bpf_skb_load_bytes(skb, off + l4, ports, sizeof(ports)) < 0)
        return TC_ACT_UNSPEC;
    if (!dns_port(bpf_ntohs(ports[0])) && !dns_port(bpf_ntohs(ports[1])))
        return TC_ACT_UNSPEC;
    if (proto == IPPROTO_TCP) {
        u8 doff = 0;
        if (bpf_skb_load_bytes(skb, off + l4 + 12, &doff, 1) < 0)
            return TC_ACT_UNSPEC;
        if (ip_len <= l4 + (doff >> 4) * 4)
            return TC_ACT_UNSPEC;  // no payload: handshake, pure ACK, FIN
    }
    if ((obs == OBS_TO_ENDPOINT || obs == OBS_TO_NETWORK) && !dns_local.lookup(&src)) {
        stat_inc(ST_DUPLICATE);
        return TC_ACT_UNSPEC;
    }
    u32 zero = 0;
    struct dns_rec *r = dns_scratch.lookup(&zero);
    if (!r)
        return TC_ACT_UNSPEC;
    // 64-bit arithmetic throughout, so the verifier sees the bounds of the length it is given.
    u64 avail = skb->len;
    if (avail <= off)
        return TC_ACT_UNSPEC;
    avail -= off;
    u64 cap = ip_len;
    if (cap > avail)
        cap = avail;
    if (cap > SNAP_LEN)
        cap = SNAP_LEN;
    if (cap < 20)
        return TC_ACT_UNSPEC;
    if (bpf_skb_load_bytes(skb, off, r->data, cap) < 0)
        return TC_ACT_UNSPEC;
    r->h.ts_ns = bpf_ktime_get_ns();
    r->h.ifindex = skb->ifindex;
    r->h.orig_len = ip_len;
    r->h.cap_len = cap;
    r->h.obs = obs;
    if (dns_events.ringbuf_output(r, sizeof(struct dns_hdr) + cap, 0) < 0)
        stat_inc(ST_RINGBUF_FULL);
    else
        stat_inc(ST_WRITTEN);
    return TC_ACT_UNSPEC;
}

int dns_from_endpoint(struct __sk_buff *skb) { return take(skb, OBS_FROM_ENDPOINT); }
int dns_to_endpoint(struct __sk_buff *skb) { return take(skb, OBS_TO_ENDPOINT); }
int dns_from_network(struct __sk_buff *skb) { return take(skb, OBS_FROM_NETWORK); }
int dns_to_network(struct __sk_buff *skb) { return take(skb, OBS_TO_NETWORK); }
