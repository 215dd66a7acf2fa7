// SPDX-License-Identifier: (MIT OR GPL-2.0)
/*
 * netburst: bytes and packets per (network namespace, interface, direction)
 * and per millisecond, in per-CPU rings that the agent folds several times a
 * second. Constant work per packet, no per-packet event to userspace.
 *
 * Two sets of hooks count the same way; the agent loads one of them.
 *
 * TCX (Linux 6.6+; 6.10+ for the sending task): hw_net_tc_egress and
 * hw_net_tc_ingress, attached by the agent to each watched interface of its
 * own namespace, so that a packet on any other interface runs nothing of
 * ours. Egress is counted as the stack hands the packet to the device's
 * queueing discipline, before any queue it may wait in.
 *
 * Tracepoints (older kernels): tp_btf/net_dev_xmit (egress counts, the device
 * from the BTF argument: the classic tracepoint misattributes veth traffic),
 * tp_btf/net_dev_start_xmit (egress senders while a CPU's millisecond is
 * above its gate, and the egress interface lookup handed on to
 * net_dev_xmit) and tp_btf/netif_receive_skb (ingress). They run for every
 * packet on every interface of every namespace, and turn away those not
 * watched.
 *
 * A loopback interface receives exactly what it transmits, so only its
 * egress is counted (TCX attaches no ingress program to it, the receive
 * tracepoint turns it away) and the agent reads its receive series from the
 * transmit ring: one program per packet instead of two. The kernel's
 * loopback driver does the same, reporting one counter as both.
 *
 * Needs BTF and CAP_BPF + CAP_PERFMON (+ CAP_NET_ADMIN for TCX).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "hostwatch.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* The agent's network namespace (its inode): the TCX programs run only on
 * interfaces the agent attached them to, all in that namespace. */
const volatile __u32 hw_net_netns = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, HW_NET_MAX_IFACES);
	__type(key, struct hw_net_iface);
	__type(value, __u32);
} net_iface_ids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HW_NET_MAX_IFACES * 2);
	__type(key, __u32);
	__type(value, struct hw_net_ring);
} net_rings SEC(".maps");

/* LRU: a host with many short-lived senders evicts the oldest instead of
 * refusing new ones. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct hw_net_owner);
	__type(value, __u64);
} net_owner_bytes SEC(".maps");

/* Per series: the bytes one CPU must already have counted in the current
 * millisecond before a packet's sender is attributed, so that the owner map
 * holds who sent during bursts, not who sent steadily in between. Userspace
 * sets it to the burst threshold divided by the online CPUs (a millisecond
 * above the threshold is above it on at least one CPU); 0 attributes every
 * packet. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HW_NET_MAX_IFACES * 2);
	__type(key, __u32);
	__type(value, __u64);
} net_gate SEC(".maps");

/* A first test before the exact lookup, so that a packet on an unwatched
 * interface costs a few loads: the number of watched interfaces in any
 * namespace whose ifindex & (HW_NET_FILTER - 1) is the index. Array lookups
 * are inlined by the verifier; non-zero may be another interface's (another
 * namespace, or an ifindex HW_NET_FILTER apart), so net_iface_ids decides. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HW_NET_FILTER);
	__type(key, __u32);
	__type(value, __u32);
} net_iface_filter SEC(".maps");

/* The TCX programs' first test: per ifindex & (HW_NET_FILTER - 1), the watched
 * interface of the agent's namespace with that index (ifindex << 32 | its id),
 * 0 if none. Inlined, it spares most packets the hash lookup; an interface
 * whose entry another holds is found in net_iface_ids. One 64-bit value, so a
 * program never sees an ifindex with another interface's id. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HW_NET_FILTER);
	__type(key, __u32);
	__type(value, __u64);
} net_tc_ids SEC(".maps");

/* The packet hw_net_owner saw last on this CPU and its series, for
 * hw_net_xmit: both run in xmit_one for the same packet, back to back with
 * bottom halves off, so the exact interface lookup is done once per packet
 * rather than twice. The pointers serve only as identities, never
 * dereferenced (keeping them in a map needs CAP_PERFMON, which these
 * tracing programs need anyway). */
struct hw_net_pending {
	__u64 skb;
	__u64 dev;
	__u32 series;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct hw_net_pending);
} net_pending SEC(".maps");

/* dev's ifindex if net_iface_filter lets it through, else 0 (never an
 * interface's). Here and below, fields are read by plain loads, not
 * BPF_CORE_READ: the arguments are BTF pointers, so the verifier turns the
 * loads into exception-handled ones (a NULL or bad pointer on the way reads
 * as 0, as a failed probe read did), where each probe read is a helper call
 * costing tens of nanoseconds. */
static __always_inline __u32 filtered(struct net_device *dev)
{
	__u32 ifindex = dev->ifindex;
	__u32 slot = ifindex & (HW_NET_FILTER - 1);
	__u32 *watched = bpf_map_lookup_elem(&net_iface_filter, &slot);
	return watched && *watched ? ifindex : 0;
}

/* The series of interface (netns, ifindex) in direction, if it is watched. */
static __always_inline int series_of_key(__u32 netns, __u32 ifindex, __u32 direction, __u32 *series)
{
	struct hw_net_iface key = {
		.netns = netns,
		.ifindex = ifindex,
	};
	__u32 *id = bpf_map_lookup_elem(&net_iface_ids, &key);
	if (!id)
		return -1;
	*series = *id * 2 + direction;
	return 0;
}

/* The exact lookup, for an interface the filter let through. */
static __always_inline int series_of(struct net_device *dev, __u32 ifindex, __u32 direction, __u32 *series)
{
	return series_of_key(dev->nd_net.net->ns.inum, ifindex, direction, series);
}

/* Counts len bytes in series' current millisecond; returns the bytes this
 * CPU had counted in it before. */
static __always_inline __u64 count(__u32 series, __u32 len)
{
	struct hw_net_ring *ring = bpf_map_lookup_elem(&net_rings, &series);
	if (!ring)
		return 0;
	__u64 ms = bpf_ktime_get_ns() / 1000000;
	__u32 slot = ms & (HW_NET_RING - 1);
	if (ring->ms[slot] != ms) {
		ring->ms[slot] = ms;
		ring->bytes[slot] = 0;
		ring->packets[slot] = 0;
	}
	__u64 before = ring->bytes[slot];
	ring->bytes[slot] = before + len;
	ring->packets[slot] += 1;
	return before;
}

/* Whether a sender is attributed once its CPU has counted `counted` bytes in
 * the current millisecond of series. */
static __always_inline int gate_open(__u32 series, __u64 counted)
{
	__u64 *gate = bpf_map_lookup_elem(&net_gate, &series);
	return !gate || !*gate || counted > *gate;
}

/* The socket's cgroup is the sender's, always. The task on CPU is the sender
 * when the stack transmits in process context (most sends); from softirq
 * (qdisc dequeue, retransmit timers) it is whichever task was interrupted,
 * so userspace calls it a hint. */
static __always_inline void attribute(__u64 cgroup, __u32 series, __u64 len)
{
	struct hw_net_owner owner = {
		.cgroup = cgroup,
		.tgid = bpf_get_current_pid_tgid() >> 32,
		.series = series,
	};
	__u64 *bytes = bpf_map_lookup_elem(&net_owner_bytes, &owner);
	if (bytes) {
		*bytes += len;
	} else {
		bpf_map_update_elem(&net_owner_bytes, &owner, &len, BPF_NOEXIST);
	}
}

SEC("tp_btf/net_dev_xmit")
int BPF_PROG(hw_net_xmit, struct sk_buff *skb, int rc, struct net_device *dev, unsigned int len)
{
	/* Counted here, after the driver accepted the packet (rc 0): a packet
	 * the driver pushes back is requeued and would count twice earlier. The
	 * skb itself may already be consumed: use only `len` and `dev`, and the
	 * skb's address to recognise hw_net_owner's packet. */
	__u32 zero = 0, series;
	__u32 ifindex = rc == 0 ? filtered(dev) : 0;
	if (!ifindex)
		return 0;
	struct hw_net_pending *pending = bpf_map_lookup_elem(&net_pending, &zero);
	if (pending && pending->skb == (__u64)skb && pending->dev == (__u64)dev) {
		pending->skb = 0;
		series = pending->series;
	} else if (series_of(dev, ifindex, HW_NET_TRANSMIT, &series)) {
		/* Not hw_net_owner's packet (it missed a run), or not watched. */
		return 0;
	}
	count(series, len);
	return 0;
}

SEC("tp_btf/net_dev_start_xmit")
int BPF_PROG(hw_net_owner, struct sk_buff *skb, struct net_device *dev)
{
	__u32 zero = 0, series;
	__u32 ifindex = filtered(dev);
	if (!ifindex || series_of(dev, ifindex, HW_NET_TRANSMIT, &series))
		return 0;
	struct hw_net_pending *pending = bpf_map_lookup_elem(&net_pending, &zero);
	if (pending) {
		pending->skb = (__u64)skb;
		pending->dev = (__u64)dev;
		pending->series = series;
	}
	/* Attributed here, before the driver takes the skb: its socket is
	 * still attached. */
	struct sock *sk = skb->sk;
	if (!sk)
		return 0;
	__u64 len = skb->len;
	/* hw_net_xmit counts this packet after us: the ring holds the
	 * millisecond so far without it. */
	struct hw_net_ring *ring = bpf_map_lookup_elem(&net_rings, &series);
	if (!ring)
		return 0;
	__u64 ms = bpf_ktime_get_ns() / 1000000;
	__u32 slot = ms & (HW_NET_RING - 1);
	__u64 counted = ring->ms[slot] == ms ? ring->bytes[slot] : 0;
	if (gate_open(series, counted + len))
		attribute(sk->sk_cgrp_data.cgroup->kn->id, series, len);
	return 0;
}

SEC("tp_btf/netif_receive_skb")
int BPF_PROG(hw_net_receive, struct sk_buff *skb)
{
	__u32 series, ifindex;
	struct net_device *dev = skb->dev;
	if (!dev || !(ifindex = filtered(dev)) || (dev->flags & IFF_LOOPBACK) ||
	    series_of(dev, ifindex, HW_NET_RECEIVE, &series))
		return 0;
	/* The link-layer header is already pulled here; add it back so the
	 * count matches the driver's (and /proc/net/dev's) byte count. */
	__u32 len = skb->len;
	__u16 mac_header = skb->mac_header;
	unsigned char *head = skb->head;
	unsigned char *data = skb->data;
	if (mac_header != (__u16)~0U && data > head + mac_header)
		len += data - (head + mac_header);
	count(series, len);
	return 0;
}

/* The series of a watched interface of the agent's namespace. */
static __always_inline int tc_series(__u32 ifindex, __u32 direction, __u32 *series)
{
	__u32 slot = ifindex & (HW_NET_FILTER - 1);
	__u64 *entry = bpf_map_lookup_elem(&net_tc_ids, &slot);
	if (entry && *entry >> 32 == ifindex) {
		*series = (__u32)*entry * 2 + direction;
		return 0;
	}
	return series_of_key(hw_net_netns, ifindex, direction, series);
}

/* skb->len includes the link-layer header in both directions here, as the
 * driver's byte count does. TCX_NEXT: the verdict is left to whatever else is
 * attached. */
SEC("classifier")
int hw_net_tc_egress(struct __sk_buff *skb)
{
	__u32 series;
	if (tc_series(skb->ifindex, HW_NET_TRANSMIT, &series))
		return TCX_NEXT;
	__u32 len = skb->len;
	if (gate_open(series, count(series, len) + len)) {
		/* 0 without a socket: forwarded packets have no sender here. */
		__u64 cgroup = bpf_skb_cgroup_id(skb);
		if (cgroup)
			attribute(cgroup, series, len);
	}
	return TCX_NEXT;
}

SEC("classifier")
int hw_net_tc_ingress(struct __sk_buff *skb)
{
	__u32 series;
	if (!tc_series(skb->ifindex, HW_NET_RECEIVE, &series))
		count(series, skb->len);
	return TCX_NEXT;
}
