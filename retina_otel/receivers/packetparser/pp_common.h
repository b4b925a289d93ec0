// packetparser, included first by packetparser.bpf.c: what every part shares. Observation points,
// flag bits, statistics indices and entry lifetimes; the connection key and entry, the report record and
// the parsed packet; the table clock (CT_NOW); the maps of the connection table, ring buffer, statistics,
// IP filter, flush keys and clock sample; stat_add/stat_inc.

#define OBS_FROM_ENDPOINT 1
#define OBS_TO_ENDPOINT 2
#define OBS_FROM_NETWORK 3
#define OBS_TO_NETWORK 4

// Flag bits, in the order of retina_otel.flows.TcpFlag.
#define F_FIN (1 << 0)
#define F_SYN (1 << 1)
#define F_SYNACK (1 << 2)
#define F_ACK (1 << 3)
#define F_RST (1 << 4)
#define F_PSH (1 << 5)
#define F_URG (1 << 6)
#define F_ECE (1 << 7)
#define F_CWR (1 << 8)
#define F_NS (1 << 9)
#define N_FLAGS 10
#define REPORT_FLAGS (F_FIN | F_SYN | F_SYNACK | F_RST | F_URG | F_ECE | F_CWR)

// High aggregation's report rule (REPORT_EVENTS, from the receiver's report_rule; low aggregation: 1).
// 1, Retina's: a record on a new connection, on a direction's first packet, on flags new to the direction,
// on any of REPORT_FLAGS and when the direction's report interval passed. 0, for consumers that only sum a
// flow's records (the embedded default: flowmetrics): a record on FIN or RST and when the report interval
// passed; the rest rides on the next record or on the flush user space runs every report interval. Fewer
// records per connection, and the flow cache may count every ACK/PSH packet (no new-flag report to make).
// 2: switched at run time, report_events[0] (0 or 1) written by user space (the observer wants events
// only while a client follows live flows); read once per run of the full program. Either rule counts every
// packet, so a switch loses nothing; user space sweeps the flow cache after one, so no slot keeps the
// flags the previous rule allowed it.
#define REPORT_NOW_FLAGS(ev) ((ev) ? REPORT_FLAGS : (F_FIN | F_RST))

// Per-CPU statistics (indexes mirror retina_otel/receivers/packetparser/records.py STAT_NAMES).
#define ST_PACKETS 0         // packets considered (after sampling and filter)
#define ST_REPORTS 1         // reports written to the ring buffer
#define ST_RINGBUF_FULL 2    // bpf_ringbuf_reserve failed (counts stay in the table)
#define ST_CT_CREATE 3       // connection entries created
#define ST_CT_FULL 4         // connection entry could not be created (packet not counted)
#define ST_NOT_IP 5          // ARP etc. (not an error)
#define ST_TRUNC_L2 6
#define ST_TRUNC_IP 7
#define ST_BAD_IP 8
#define ST_TRUNC_EXT 9       // IPv6 extension header truncated
#define ST_EXT_LIMIT 10      // more IPv6 extension headers than we walk
#define ST_TRUNC_L4 11
#define ST_BAD_L4 12
#define ST_FILTERED 13       // neither address in the filter map
#define ST_SAMPLED_OUT 14
#define ST_FLUSH_DELETED 15  // expired idle entries removed by the flush program
#define ST_HOT_HITS 16       // packets counted in the per-CPU flow cache (high aggregation)
#define ST_TAIL_CALL_FAILED 17  // fast path could not hand a packet to the full program (not counted)
#define N_STATS 18

#define TCP_LIFETIME_NS (360ULL * 1000000000ULL)
#define TIME_WAIT_NS (30ULL * 1000000000ULL)
#define OTHER_LIFETIME_NS (60ULL * 1000000000ULL)

#define MAX_IPV6_EXT 8

struct ct_key {
    u8 a[16];
    u8 b[16];
    u16 pa;
    u16 pb;
    u32 ifindex;
    u8 proto;
    u8 pad[3];
};

struct ct_dir {  // one direction of a connection at one interface
    u64 packets;      // since this direction's last report
    u64 bytes;
    u64 rev_packets;  // the opposite direction, since this direction's last report
    u64 rev_bytes;
    u64 first_ns;     // first packet since last report (0 = none)
    u64 last_ns;
    u64 last_report_ns;
    u32 flags[N_FLAGS];  // since last report: 32-bit atomics (the report's width; 4G packets a direction per interval)
    u16 sport;        // row ports of the last packet (ICMP: type, code)
    u16 dport;
    u16 flags_seen;
    u8 obs;
    u8 pad;
    u64 total_packets;  // since the connection began (CT_TOTALS: Retina's conntrack_* gauges), never reset by
    u64 total_bytes;    // a report; zeroed when the entry is reused for a new connection
};

struct ct_entry {
    struct ct_dir d[2];  // 0: initiator -> responder, 1: reply
    u64 eviction_ns;
    u8 init_is_a;        // the initiator is key.a
    u8 closing;          // FIN or RST seen: TIME_WAIT lifetime
    u8 ipver;
    u8 pad[5];
};

// A flow report, laid out byte for byte as the first 136 bytes of a flow record (retina_otel.flows.FLOW_DTYPE,
// time_start_ns .. tcp_flags; records.py asserts REPORT_DTYPE against both), so user space copies a report
// into a flow row as one block of bytes. Times are the table clock (user space adds the wall-clock
// offset); direction, verdict and event are the values of the Python enums, passed as -D flags
// (records.report_cflags: DIR_OF_OBS_<obs>, DIR_UNKNOWN, VERDICT_FORWARDED, EVENT_FLOW).
struct report {
    u64 t_first;         //   0 time_start_ns
    u64 t_last;          //   8 time_end_ns
    u8 src[16];          //  16 src_ip
    u8 dst[16];          //  32 dst_ip
    u16 sport;           //  48 src_port
    u16 dport;           //  50 dst_port
    u8 proto;            //  52
    u8 ipver;            //  53 ip_version
    u8 direction;        //  54 from obs (direction_of)
    u8 obs;              //  55 observation_point
    u8 verdict;          //  56 VERDICT_FORWARDED
    u8 event;            //  57 EVENT_FLOW
    u8 is_reply;         //  58
    u8 sampled;          //  59
    u32 ifindex;         //  60
    u64 packets;         //  64
    u64 bytes;           //  72
    u64 rev_packets;     //  80 reply_packets
    u64 rev_bytes;       //  88 reply_bytes
    u32 flags[N_FLAGS];  //  96 tcp_flags
};
_Static_assert(sizeof(struct report) == 136, "struct report is the 136-byte prefix of FLOW_DTYPE");
_Static_assert(__builtin_offsetof(struct report, sport) == 48, "struct report: src_port at 48");
_Static_assert(__builtin_offsetof(struct report, ifindex) == 60, "struct report: ifindex at 60");
_Static_assert(__builtin_offsetof(struct report, packets) == 64, "struct report: packets at 64");
_Static_assert(__builtin_offsetof(struct report, flags) == 96, "struct report: tcp_flags at 96");

#if !defined(DIR_OF_OBS_1) || !defined(DIR_OF_OBS_2) || !defined(DIR_OF_OBS_3) || !defined(DIR_OF_OBS_4) || \
    !defined(DIR_UNKNOWN) || !defined(VERDICT_FORWARDED) || !defined(EVENT_FLOW)
#error "the report's enum values come from user space: records.report_cflags()"
#endif

struct pkt {
    u8 src[16];
    u8 dst[16];
    u64 len;     // IP total length
    u16 sport;   // row ports (ICMP: type, code)
    u16 dport;
    u16 ksport;  // connection-key ports (ICMP echo: identifier both ways)
    u16 kdport;
    u16 flags;
    u8 proto;
    u8 ipver;
};

// Clock of the connection table. Low aggregation (one row per packet) reads the precise clock. High
// aggregation needs tick resolution only (rows are per connection and interval): bpf_ktime_get_ns reads
// the clocksource, ~100 ns per packet in a VM (measured with kernel.bpf_stats_enabled under 64-byte
// UDP); bpf_ktime_get_coarse_ns is cheaper but still a seqcount loop; jiffies scaled to ns (JIFFY_NS =
// 1e9 / CONFIG_HZ, passed by user space when it knows HZ) cost one load, ~17 ns less per packet than
// the coarse clock. Both tick clocks have tick resolution (1-10 ms). The jiffies clock has its own
// origin: pp_clock samples it next to bpf_ktime_get_ns so user space can translate.
#if !AGG_HIGH
#define CT_NOW() bpf_ktime_get_ns()
#elif JIFFY_NS
#define CT_NOW() (bpf_jiffies64() * JIFFY_NS)
#else
#define CT_NOW() bpf_ktime_get_coarse_ns()
#endif

struct lpm_key {
    u32 prefixlen;
    u8 addr[16];
};

BPF_TABLE("lru_hash", struct ct_key, struct ct_entry, conntrack, CT_MAX_ENTRIES);
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(stats, u64, N_STATS);
BPF_F_TABLE("lpm_trie", struct lpm_key, u8, ipfilter, FILTER_MAX_ENTRIES, BPF_F_NO_PREALLOC);
BPF_ARRAY(flush_keys, struct ct_key, FLUSH_BATCH);
BPF_PERCPU_ARRAY(scratch_entry, struct ct_entry, 1);  // a zeroed entry to insert (too big for the stack)
BPF_ARRAY(clock_sample, u64, 2);  // written by pp_clock: [CT_NOW(), bpf_ktime_get_ns()]

#if REPORT_EVENTS == 2
BPF_ARRAY(report_events, u32, 1);  // [0]: 1 = Retina's rule now, 0 = close (see REPORT_EVENTS above)

static __always_inline u32 events_rule(void) {
    u32 zero = 0;
    u32 *on = report_events.lookup(&zero);
    return on && *on;
}
#else
#define events_rule() ((u32)REPORT_EVENTS)
#endif

// The close rule's record on FIN/RST (CLOSE_REPORTS: 1 = always; 2 = while the connection table could
// fill up). It protects a finished connection's unreported counts from the LRU, which evicts only when the
// table is full; otherwise the flush every report interval reports them. close_reports[0] (1 = write them)
// is set by user space each second from the entries created (closereports.py), and by any CPU that has
// created its create_budget of entries since: a burst turns the records on before user space looks again.
#if CLOSE_REPORTS == 2
BPF_ARRAY(close_reports, u32, 1);
BPF_PERCPU_ARRAY(create_budget, s64, 1);

static __always_inline u32 close_reports_on(void) {
    u32 zero = 0;
    u32 *on = close_reports.lookup(&zero);
    return !on || *on;
}

static __always_inline void create_budget_spend(void) {
    u32 zero = 0;
    s64 *left = create_budget.lookup(&zero);
    if (left && --*left <= 0) {
        u32 *on = close_reports.lookup(&zero);
        if (on && !*on)
            *on = 1;
    }
}
#else
#define close_reports_on() 1
#define create_budget_spend()
#endif

static __always_inline void stat_add(u32 idx, u64 n) {
    u64 *v = stats.lookup(&idx);
    if (v)
        *v += n;
}

static __always_inline void stat_inc(u32 idx) { stat_add(idx, 1); }
