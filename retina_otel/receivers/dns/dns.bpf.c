// dns: socket filter for an AF_PACKET SOCK_DGRAM socket that passes ONLY DNS packets to user space:
// IPv4/IPv6, UDP or TCP, source or destination port in DNS_PORTS (53 and 5353), first fragments only,
// TCP only with payload. Everything else is refused in the kernel (return 0), so the receiver's Python
// sees nothing but DNS. On a SOCK_DGRAM packet socket the data starts at the network header.
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>

#ifndef DNS_PORT_A
#define DNS_PORT_A 53
#endif
#ifndef DNS_PORT_B
#define DNS_PORT_B 5353
#endif

BPF_PERCPU_ARRAY(dns_passed, u64, 1);
#ifdef FILTER_IFINDEX
BPF_HASH(dns_ifindexes, u32, u8, 1024);  // the configured interfaces; one socket keeps packets in order
#endif  // packets handed to the socket (compare with what was read)

static __always_inline int dns_port(u16 port) {
    return port == DNS_PORT_A || port == DNS_PORT_B;
}

int dns_filter(struct __sk_buff *skb) {
#ifdef FILTER_IFINDEX
    u32 ifindex = skb->ifindex;
    if (!dns_ifindexes.lookup(&ifindex))
        return 0;
#endif
    u32 l4 = 0, ip_end = 0;
    u8 proto = 0;
    if (skb->protocol == bpf_htons(ETH_P_IP)) {
        u8 vihl = 0;
        u16 frag = 0, tot = 0;
        if (bpf_skb_load_bytes(skb, 0, &vihl, 1) < 0 || (vihl >> 4) != 4)
            return 0;
        if (bpf_skb_load_bytes(skb, 6, &frag, 2) < 0 || (bpf_ntohs(frag) & 0x1fff))
            return 0;  // a later fragment: no ports to look at
        if (bpf_skb_load_bytes(skb, 9, &proto, 1) < 0 || bpf_skb_load_bytes(skb, 2, &tot, 2) < 0)
            return 0;
        l4 = (vihl & 0x0f) * 4;
        ip_end = bpf_ntohs(tot);
    } else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
        u16 plen = 0;
        if (bpf_skb_load_bytes(skb, 6, &proto, 1) < 0 || bpf_skb_load_bytes(skb, 4, &plen, 2) < 0)
            return 0;
        l4 = 40;  // extension headers are not walked: DNS does not use them
        ip_end = 40 + bpf_ntohs(plen);
    } else {
        return 0;
    }
    if (proto != IPPROTO_UDP && proto != IPPROTO_TCP)
        return 0;
    u16 ports[2] = {};
    if (bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)) < 0)
        return 0;
    if (!dns_port(bpf_ntohs(ports[0])) && !dns_port(bpf_ntohs(ports[1])))
        return 0;
    if (proto == IPPROTO_TCP) {
        u8 doff = 0;
        if (bpf_skb_load_bytes(skb, l4 + 12, &doff, 1) < 0)
            return 0;
        if (ip_end <= l4 + (doff >> 4) * 4)
            return 0;  // no payload: handshake, pure ACK, FIN
    }
    u32 zero = 0;
    u64 *passed = dns_passed.lookup(&zero);
    if (passed)
        *passed += 1;
    return skb->len;
}
