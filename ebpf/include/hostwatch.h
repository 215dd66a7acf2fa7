/* SPDX-License-Identifier: (MIT OR GPL-2.0) */
/*
 * Map layouts shared by the BPF programs and the agent. The Rust mirror of
 * every struct here is ebpf/src/maps.rs; a change here must change it too
 * (a test compares the sizes recorded in the objects' BTF with the mirror).
 */
#ifndef HOSTWATCH_H
#define HOSTWATCH_H

/* ---- netburst: bytes and packets per interface, direction and millisecond ---- */

/* Millisecond slots kept per (interface, direction): userspace must fold them
 * within this many milliseconds or count the overwritten ones as lost. A power
 * of two, so the slot is a mask of the millisecond. */
#define HW_NET_RING 256
/* Interfaces counted at once; userspace assigns each watched one an id. */
#define HW_NET_MAX_IFACES 32

#define HW_NET_RECEIVE 0
#define HW_NET_TRANSMIT 1

/* Key of net_iface_ids: interfaces are (network namespace, ifindex), since
 * ifindex repeats across namespaces. */
struct hw_net_iface {
	__u32 netns;
	__u32 ifindex;
};

/* Value of net_rings (per CPU), index iface_id * 2 + direction. A slot holds
 * the millisecond it counts; a different stamp means the slot is stale. */
struct hw_net_ring {
	__u64 ms[HW_NET_RING];
	__u64 bytes[HW_NET_RING];
	__u32 packets[HW_NET_RING];
};

/* Key of net_owner_bytes: who sent egress bytes on a watched interface. */
struct hw_net_owner {
	__u64 cgroup; /* cgroup v2 id of the sending socket */
	__u32 tgid;   /* task on CPU at transmit: the sender in process context */
	__u32 series; /* iface_id * 2 + direction */
};

#endif
