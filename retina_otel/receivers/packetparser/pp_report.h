// packetparser: reporting. One direction's since-last-report counters moved into a ring-buffer record.
// Included by packetparser.bpf.c after pp_conntrack.h.

// Move one direction's since-last-report counters into a ring-buffer record. Counters are taken with
// atomic exchanges, so packets counted concurrently on other CPUs ride on the next report.
// A counter's value, zeroed: an atomic exchange only when it is not already 0 (most of a report's ten flag
// counters are). A concurrent add that lands after a plain read of 0 stays in the counter for the next
// report, so nothing is lost; a locked exchange costs ~20 cycles and a report took fourteen of them.
static __always_inline u64 take_count(u64 *counter) {
    if (*(volatile u64 *)counter == 0)
        return 0;
    return __sync_lock_test_and_set(counter, 0ULL);
}

// The same for a 32-bit counter: the BPF target before v3 has no 32-bit exchange, but subtracting the
// value read with an atomic add (which every version has) leaves concurrent adds in place just the same.
static __always_inline u32 take_count32(u32 *counter) {
    u32 v = *(volatile u32 *)counter;
    if (v)
        __sync_fetch_and_add(counter, -v);
    return v;
}

// Direction seen from the observed endpoint (pod or node) for an observation point: records._DIRECTION_OF_OBS,
// passed as DIR_OF_OBS_<obs>.
static __always_inline u8 direction_of(u8 obs) {
    switch (obs) {
    case OBS_FROM_ENDPOINT:
        return DIR_OF_OBS_1;
    case OBS_TO_ENDPOINT:
        return DIR_OF_OBS_2;
    case OBS_FROM_NETWORK:
        return DIR_OF_OBS_3;
    case OBS_TO_NETWORK:
        return DIR_OF_OBS_4;
    default:
        return DIR_UNKNOWN;
    }
}

// Every byte of the record is written (the ring buffer's memory is not zeroed; struct report has no holes).
static __always_inline void emit(struct ct_entry *e, const struct ct_key *k, int dir, u64 now) {
    struct ct_dir *d = dir ? &e->d[1] : &e->d[0];
    struct report *r = events.ringbuf_reserve(sizeof(struct report));
    if (!r) {
        stat_inc(ST_RINGBUF_FULL);
        return;
    }
    r->packets = take_count(&d->packets);
    r->bytes = take_count(&d->bytes);
    r->rev_packets = take_count(&d->rev_packets);
    r->rev_bytes = take_count(&d->rev_bytes);
#pragma unroll
    for (int i = 0; i < N_FLAGS; i++)
        r->flags[i] = take_count32(&d->flags[i]);
    u64 first = d->first_ns;
    d->first_ns = 0;
    r->t_first = first ? first : d->last_ns;
    r->t_last = d->last_ns;
    int src_is_a = (dir == 0) == (e->init_is_a != 0);
    if (src_is_a) {
        __builtin_memcpy(r->src, k->a, 16);
        __builtin_memcpy(r->dst, k->b, 16);
    } else {
        __builtin_memcpy(r->src, k->b, 16);
        __builtin_memcpy(r->dst, k->a, 16);
    }
    r->ifindex = k->ifindex;
    r->sport = d->sport;
    r->dport = d->dport;
    r->proto = k->proto;
    r->ipver = e->ipver;
    r->obs = d->obs;
    r->direction = direction_of(d->obs);
    r->verdict = VERDICT_FORWARDED;
    r->event = EVENT_FLOW;
    r->is_reply = dir;
    r->sampled = SAMPLING_RATE > 1;
    d->last_report_ns = now;
    events.ringbuf_submit(r, 0);
    stat_inc(ST_REPORTS);
}
