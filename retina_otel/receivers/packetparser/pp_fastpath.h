// packetparser: the fast path (FAST_PATH): the small programs on the interfaces that count a packet in
// its flow-cache slot or hand it to the full program. The entry points are in packetparser.bpf.c, which
// includes this after pp_flowcache.h.

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
#endif
