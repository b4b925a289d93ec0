// packetparser: parsing. Header loads from the linear data or through bpf_skb_load_bytes, IPv4-mapped
// addresses, TCP flag bits and parse(): Ethernet, IPv4/IPv6 (extension headers), TCP/UDP/ICMP into
// struct pkt. Included by packetparser.bpf.c after pp_common.h.

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
