// packetparser: the per-CPU flow cache of high aggregation (AGG_HIGH): its slots and maps, the flow
// words a packet is looked up by, hits, and the merge of a slot's counts into its connection entry.
// Included by packetparser.bpf.c after pp_report.h.

#if AGG_HIGH
// Per-CPU flow cache (high aggregation). A lookup in the connection table costs ~60 ns of the ~90 ns the
// program adds per packet (BPF_PROG_TEST_RUN, 64-byte UDP), so the packets that need no report
// (no new flag, no report flag, report interval not due) are counted in a direct-mapped per-CPU slot
// instead: one inlined array lookup, plain increments. A slot's counts move into the connection entry
// (atomically, as any CPU's) when its flow next takes the slow path on this CPU, when another flow
// takes the slot over, and when user space sweeps the cache: it points hot_active at the other of the
// two arrays hot0/hot1 (the update returns once no program still counts into the old one: see
// retina_otel/bpf/doublebuffer.py), reads the old one, has pp_merge add the pending counts to the table
// and zeroes it (see receiver.py).
//
// A slot never outlives its flow's next report: its deadline is the direction's last report plus the
// report interval, capped at the shortest entry lifetime, so reports and expiry happen on time.
#define HOT_FLAGS (F_ACK | F_PSH)           // flags a cached packet may carry (counted per slot)
#define HOT_IDLE_NS 10000000ULL             // a slot unused for 10 ms may be taken by another flow

struct hot_slot {
    struct ct_key flow;  // the flow as the packets carry it: a = source, pa = source port (not normalised)
    u16 sport;
    u16 dport;
    u16 flags_ok;   // HOT_FLAGS already seen in this direction: packets with others take the slow path
    u8 obs;
    u8 src_is_a;
    u8 ipver;
    u8 valid;
    u8 pad[2];
    u64 deadline;
    u64 packets;    // pending: not yet in the connection entry
    u64 bytes;
    u64 first_ns;
    u64 last_ns;
    u64 n_ack;
    u64 n_psh;
};

BPF_PERCPU_ARRAY(hot0, struct hot_slot, HOT_SLOTS);
BPF_PERCPU_ARRAY(hot1, struct hot_slot, HOT_SLOTS);
BPF_ARRAY_OF_MAPS(hot_active, "hot0", 1);
BPF_ARRAY(merge_list, struct hot_slot, FLUSH_BATCH);

// The flow cache works on the flow as the packet carries it (source first), as five 64-bit words laid
// out like struct ct_key's first 40 bytes: source address (2 words, IPv4 mapped), destination address
// (2), and source port | destination port << 16 | ifindex << 32 (key ports: ICMP echo uses the id).
// Both programs build the words, the fast path straight from the packet with word loads, so a hit needs
// neither the normalised key nor struct pkt.
struct flow_words {
    u64 w[5];
};

static __always_inline void words_from_pkt(struct flow_words *f, const struct pkt *p, u32 ifindex) {
    __builtin_memcpy(&f->w[0], p->src, 16);
    __builtin_memcpy(&f->w[2], p->dst, 16);
    f->w[4] = (u64)p->ksport | ((u64)p->kdport << 16) | ((u64)ifindex << 32);
}

// Slot of (flow as oriented, observation point) in the flow cache. Source and
// destination are mixed asymmetrically, so the two directions of a conversation get different slots.
// Fibonacci hashing: the index is the product's top bits, which every input bit reaches (a product's
// middle bits ignore the input's high bits, e.g. an IPv4 source's last octet).
#define HOT_SLOT_BITS __builtin_ctz(HOT_SLOTS)
static __always_inline u32 hot_index(const struct flow_words *f, u8 proto, u8 obs) {
    u64 d = f->w[2] ^ f->w[3];
    u64 x = f->w[0] ^ f->w[1] ^ ((d << 29) | (d >> 35)) ^ f->w[4] ^ ((u64)proto << 48) ^ ((u64)obs << 56);
    x *= 0x9E3779B97F4A7C15ULL;
    return (u32)(x >> (64 - HOT_SLOT_BITS));
}

// This CPU's slot idx of the flow cache the programs count into now (hot0 until user space first sets
// hot_active).
static __always_inline struct hot_slot *hot_slot_at(u32 idx) {
    u32 zero = 0;
    void *cache = hot_active.lookup(&zero);
    if (!cache)
        return hot0.lookup(&idx);
    return bpf_map_lookup_elem(cache, &idx);
}

static __always_inline int hot_same_flow(const struct hot_slot *s, const struct flow_words *f, u8 proto) {
    const u64 *sw = (const u64 *)&s->flow;
    u64 diff = (sw[0] ^ f->w[0]) | (sw[1] ^ f->w[1]) | (sw[2] ^ f->w[2]) | (sw[3] ^ f->w[3]) | (sw[4] ^ f->w[4]);
    return diff == 0 && s->flow.proto == proto;
}

// Count the packet in its slot when nothing about it needs the connection table.
static __always_inline int hot_hit(struct hot_slot *s, const struct flow_words *f, u8 proto, u8 obs, u16 sport,
                                   u16 dport, u16 flags, u64 len, u64 now) {
    if (!s->valid || now >= s->deadline || (flags & ~s->flags_ok) || s->obs != obs || s->sport != sport ||
        s->dport != dport || !hot_same_flow(s, f, proto))
        return 0;
    if (s->packets == 0)
        s->first_ns = now;
    s->packets += 1;
    s->bytes += len;
    s->last_ns = now;
    if (flags & F_ACK)
        s->n_ack += 1;
    if (flags & F_PSH)
        s->n_psh += 1;
    return 1;
}

static __always_inline void hot_clear_counts(struct hot_slot *s) {
    s->packets = 0;
    s->bytes = 0;
    s->n_ack = 0;
    s->n_psh = 0;
    s->first_ns = 0;
}

// Move a slot's pending counts into its connection entry e (other CPUs may be counting into e too).
static __always_inline void hot_merge(struct ct_entry *e, struct hot_slot *s) {
    int dir = (s->src_is_a == (e->init_is_a != 0)) ? 0 : 1;
    struct ct_dir *d = dir ? &e->d[1] : &e->d[0];
    struct ct_dir *o = dir ? &e->d[0] : &e->d[1];
    u64 n = s->packets;
    u64 b = s->bytes;
    __sync_fetch_and_add(&d->packets, n);
    __sync_fetch_and_add(&d->bytes, b);
    __sync_fetch_and_add(&o->rev_packets, n);
    __sync_fetch_and_add(&o->rev_bytes, b);
#if CT_TOTALS
    __sync_fetch_and_add(&d->total_packets, n);
    __sync_fetch_and_add(&d->total_bytes, b);
#endif
    if (s->n_ack)
        __sync_fetch_and_add(&d->flags[3], (u32)s->n_ack);  // F_ACK
    if (s->n_psh)
        __sync_fetch_and_add(&d->flags[5], (u32)s->n_psh);  // F_PSH
    if (d->first_ns == 0 || s->first_ns < d->first_ns)
        d->first_ns = s->first_ns;
    if (s->last_ns > d->last_ns)
        d->last_ns = s->last_ns;
    d->sport = s->sport;
    d->dport = s->dport;
    d->obs = s->obs;
    u64 life = OTHER_LIFETIME_NS;
    if (s->flow.proto == 6)
        life = e->closing ? TIME_WAIT_NS : TCP_LIFETIME_NS;
    if (s->last_ns + life > e->eviction_ns)
        e->eviction_ns = s->last_ns + life;
    hot_clear_counts(s);
}

// The same for a slot whose entry is not at hand (created again if the table evicted it). The slot's
// flow is turned into its connection key in place (a and b, and their ports, swapped when the source is
// b; branch-free, like a key on the stack, this keeps pp_merge's loop within the verifier's budget) and
// the slot is invalidated: the callers reinstall it (take-over) or drop it (pp_merge works on a copy).
static __always_inline void hot_merge_lookup(struct hot_slot *s, u64 now) {
    u64 *w = (u64 *)&s->flow;
    u64 m = 0ULL - (u64)(s->src_is_a == 0);
    u64 x0 = (w[0] ^ w[2]) & m;
    u64 x1 = (w[1] ^ w[3]) & m;
    w[0] ^= x0;
    w[2] ^= x0;
    w[1] ^= x1;
    w[3] ^= x1;
    u64 ports = w[4] & 0xffffffffULL;
    u64 swapped = ((ports & 0xffff) << 16) | (ports >> 16);
    w[4] ^= (ports ^ swapped) & m;
    s->valid = 0;
    struct ct_entry *e = conntrack.lookup(&s->flow);
    if (!e)
        e = ct_create(&s->flow, s->src_is_a, s->ipver, now, events_rule());
    if (!e) {
        stat_add(ST_CT_FULL, s->packets);
        s->packets = 0;
        return;
    }
    hot_merge(e, s);
}

static __always_inline void hot_install(struct hot_slot *s, const struct flow_words *f, const struct pkt *p, u8 obs,
                                        u8 src_is_a, const struct ct_dir *d, u64 now, u32 events) {
    __builtin_memcpy(&s->flow, f, sizeof(*f));
    s->flow.proto = p->proto;
    s->flow.pad[0] = 0;
    s->flow.pad[1] = 0;
    s->flow.pad[2] = 0;
    s->sport = p->sport;
    s->dport = p->dport;
    // Retina's rule reports a direction's first ACK or PSH: the slot takes only the flags already seen.
    s->flags_ok = events ? (d->flags_seen & HOT_FLAGS) : HOT_FLAGS;
    s->obs = obs;
    s->src_is_a = src_is_a;
    s->ipver = p->ipver;
    s->valid = 1;
    u64 deadline = d->last_report_ns + REPORT_INTERVAL_NS;
    if (deadline > now + TIME_WAIT_NS)
        deadline = now + TIME_WAIT_NS;
    s->deadline = deadline;
    hot_clear_counts(s);
    s->last_ns = now;
}
#endif
