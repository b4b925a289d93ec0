// packetforward: node totals of packets and bytes by direction, counted in a socket filter.
//
// Attached with SO_ATTACH_BPF to an AF_PACKET (ETH_P_ALL) socket bound to one interface. The filter
// sees every frame the interface receives and every frame it transmits (dev_queue_xmit_nit), counts
// it in a per-CPU array and returns 0, so nothing is ever queued to the socket or copied to user space.
//
// Direction follows Retina: PACKET_HOST -> ingress, PACKET_OUTGOING -> egress. Broadcast, multicast
// and other-host frames are ignored unless PF_COUNT_OTHER is 1 (then they count as ingress).
// Bytes are skb->len as AF_PACKET sees it: the whole L2 frame (Ethernet header included, no FCS).
//
// Only UAPI structures are used (struct __sk_buff), so 6.1 headers work against a newer kernel.

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_packet.h>

#ifndef PF_COUNT_OTHER
#define PF_COUNT_OTHER 0
#endif

#define PF_INGRESS 0
#define PF_EGRESS 1

struct pf_metric {
    u64 packets;
    u64 bytes;
};

BPF_PERCPU_ARRAY(pf_metrics, struct pf_metric, 2);

int packetforward_filter(struct __sk_buff *skb) {
    u32 key;
    u32 pkt_type = skb->pkt_type;

    if (pkt_type == PACKET_OUTGOING) {
        key = PF_EGRESS;
    } else if (pkt_type == PACKET_HOST || PF_COUNT_OTHER) {
        key = PF_INGRESS;
    } else {
        return 0;
    }
    struct pf_metric *m = pf_metrics.lookup(&key);
    if (m) {
        // Per-CPU value: no other CPU writes it, and socket filters run with preemption disabled.
        m->packets += 1;
        m->bytes += skb->len;
    }
    return 0;
}
