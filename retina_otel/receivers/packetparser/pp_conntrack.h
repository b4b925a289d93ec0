// packetparser: the connection table. The normalised key of a packet (both directions share one entry)
// and the creation of an entry. Included by packetparser.bpf.c after pp_parse.h.

// Insert a fresh entry for k (BPF_NOEXIST) and return the table's copy, or NULL when the table is full.
// events: the report rule now (events_rule()); under the close rule the first record waits for FIN/RST or
// the report interval.
static __always_inline struct ct_entry *ct_create(const struct ct_key *k, u8 init_is_a, u8 ipver, u64 now,
                                                  u32 events) {
    u32 zero = 0;
    struct ct_entry *ne = scratch_entry.lookup(&zero);
    if (!ne)
        return 0;
    __builtin_memset(ne, 0, sizeof(*ne));
    ne->init_is_a = init_is_a;
    ne->ipver = ipver;
    ne->eviction_ns = now + OTHER_LIFETIME_NS;
    if (!events) {
        ne->d[0].last_report_ns = now;
        ne->d[1].last_report_ns = now;
    }
    if (conntrack.insert((struct ct_key *)k, ne) == 0) {
        stat_inc(ST_CT_CREATE);
        create_budget_spend();
    }
    return conntrack.lookup((struct ct_key *)k);
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
