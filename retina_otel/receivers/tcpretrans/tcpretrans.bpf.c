// tcpretrans: TCP retransmissions per flow from the tcp:tcp_retransmit_skb (and tcp_retransmit_synack)
// tracepoints, counted in segments as the kernel's TcpRetransSegs counts them.
//
// -D flags from the receiver:
//   MAX_FLOWS             entries of the per-flow map
//   OFF_SKB_CB            offset of sk_buff.cb (BTF); OFF_GSO_SEGS: offset of tcp_skb_cb.tcp_gso_segs
//   HAVE_ERR              the tracepoint has the `err` field (6.12+): it then also fires for attempts
//                         that never reached the counter (-EBUSY, -EAGAIN, -ENOMEM early exits)
//   HAVE_SYNACK           the tcp_retransmit_synack tracepoint exists
#include <uapi/linux/ptrace.h>

#define ERRNO_ENOMEM 12
#define ERRNO_EAGAIN 11
#define ERRNO_EBUSY 16

struct retrans_key {
    u8 saddr[16];
    u8 daddr[16];
    u16 sport;
    u16 dport;
    u32 pad;
};

struct retrans_val {
    u64 segments;
    u64 first_ns;
    u64 last_ns;
    u32 events;
    u32 states;  // bit mask of TCP states seen (1 << state)
};

// Two per-flow maps, the one written switched by user space (see retina_otel/bpf/doublebuffer.py): exact drains.
BPF_HASH(retrans_flows0, struct retrans_key, struct retrans_val, MAX_FLOWS);
BPF_HASH(retrans_flows1, struct retrans_key, struct retrans_val, MAX_FLOWS);
BPF_ARRAY_OF_MAPS(retrans_flows_active, "retrans_flows0", 1);
BPF_PERCPU_ARRAY(retrans_counters, u64, 2);  // 0: segments (all), 1: segments without a flow entry

static __always_inline void add_counter(u32 slot, u64 n) {
    u64 *c = retrans_counters.lookup(&slot);
    if (c)
        *c += n;
}

static __always_inline void count(struct retrans_key *key, u64 segs, int state) {
    add_counter(0, segs);
    u64 now = bpf_ktime_get_ns();
    struct retrans_val init = {.first_ns = now};
    int zero_index = 0;
    void *flows = retrans_flows_active.lookup(&zero_index);  // NULL until user space sets it: retrans_flows0
    struct retrans_val *v;
    if (flows) {
        v = bpf_map_lookup_elem(flows, key);
        if (!v) {
            bpf_map_update_elem(flows, key, &init, BPF_NOEXIST);
            v = bpf_map_lookup_elem(flows, key);
        }
    } else {
        v = retrans_flows0.lookup_or_try_init(key, &init);
    }
    if (!v) {
        add_counter(1, segs);
        return;
    }
    __sync_fetch_and_add(&v->segments, segs);
    __sync_fetch_and_add(&v->events, 1);
    v->last_ns = now;
    if (state >= 0 && state < 32)
        v->states |= 1u << state;
}

static __always_inline void v4mapped(u8 *dst, const u8 *src) {
    __builtin_memset(dst, 0, 10);
    dst[10] = 0xff;
    dst[11] = 0xff;
    __builtin_memcpy(dst + 12, src, 4);
}

// The flow key from the arguments of tcp_retransmit_skb or tcp_retransmit_synack: the same address and
// port fields, in a struct of each tracepoint's own (hence a macro).
#define KEY_FROM_ARGS(key, args)                                     \
    do {                                                             \
        if ((args)->family == 2) {                                   \
            v4mapped((key)->saddr, (args)->saddr);                   \
            v4mapped((key)->daddr, (args)->daddr);                   \
        } else {                                                     \
            __builtin_memcpy((key)->saddr, (args)->saddr_v6, 16);    \
            __builtin_memcpy((key)->daddr, (args)->daddr_v6, 16);    \
        }                                                            \
        (key)->sport = (args)->sport;                                \
        (key)->dport = (args)->dport;                                \
    } while (0)

TRACEPOINT_PROBE(tcp, tcp_retransmit_skb) {
#ifdef HAVE_ERR
    int err = args->err;
    if (err == -ERRNO_EBUSY || err == -ERRNO_EAGAIN || err == -ERRNO_ENOMEM)
        return 0;
#endif
    struct retrans_key key = {};
    KEY_FROM_ARGS(&key, args);
    u16 segs = 0;
    bpf_probe_read_kernel(&segs, sizeof(segs), (void *)args->skbaddr + OFF_SKB_CB + OFF_GSO_SEGS);
    count(&key, segs ? segs : 1, args->state);
    return 0;
}

#ifdef HAVE_SYNACK
TRACEPOINT_PROBE(tcp, tcp_retransmit_synack) {
    struct retrans_key key = {};
    KEY_FROM_ARGS(&key, args);
    count(&key, 1, 12);  // TCP_NEW_SYN_RECV: a request socket's SYN-ACK
    return 0;
}
#endif
