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

/* Entries of net_iface_filter, indexed by ifindex & (HW_NET_FILTER - 1): each
 * counts the watched interfaces (in any namespace) with that index. ifindexes
 * are small and dense on a host, so a mask spreads them. A power of two. */
#define HW_NET_FILTER 256

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

/* ---- stalls: mmap_lock wait and smaps readers ---- */

/* Processes with mmap_lock totals; the least recently updated are evicted. */
#define HW_MMAP_LOCK_PROCESSES 8192
/* Shorter waits are an uncontended lock taken (the tracepoints themselves
 * take about this long) and are not counted: 2^10 ns, a bucket boundary. */
#define HW_MMAP_LOCK_MIN_WAIT_NS 1024
/* log2 nanosecond buckets of the wait histogram: bucket b counts waits in
 * [2^b, 2^(b+1)) ns; the last one also counts everything longer (> 2.1 s). */
#define HW_MMAP_LOCK_BUCKETS 32

/* Key of mmap_lock_wait. */
struct hw_mmap_lock_key {
	__u32 tgid;
	__u32 write; /* 1: mmap_write_lock, 0: mmap_read_lock */
};

/* Value of mmap_lock_wait: totals of counted waits since the program attached. */
struct hw_mmap_lock_wait {
	__u64 wait_ns;
	__u64 count;
	__u64 buckets[HW_MMAP_LOCK_BUCKETS];
};

/* Bytes of path kept per smaps event: "/proc/4194304/task/4194304/smaps_rollup"
 * is 40 with its NUL. A power of two, so indexes can be masked. */
#define HW_SMAPS_PATH 64
#define HW_SMAPS_RING_BYTES (256 * 1024)

/* One open of /proc/.../smaps or smaps_rollup, sent through smaps_events. */
struct hw_smaps_event {
	__u64 time_ns; /* CLOCK_BOOTTIME */
	__u32 tgid;    /* the reader */
	__u32 tid;
	char comm[16]; /* the reader thread's comm */
	char path[HW_SMAPS_PATH];
};

/* ---- gil: Python GIL wait and hold per process, from uprobes ---- */

/* Buckets of the wait histogram: HW_GIL_BUCKETS - 1 finite upper bounds, which
 * the agent writes into the program's hw_gil_bounds_ns at load, and +Inf. */
#define HW_GIL_BUCKETS 12
/* Capacity of gil_stats as compiled: the most processes probed at once. The
 * agent resizes the map to its configured cap at load. */
#define HW_GIL_MAX_TARGETS 1024
/* Threads with a wait or hold in progress, over all targets (LRU: a thread that
 * died inside take_gil is evicted eventually rather than kept forever). */
#define HW_GIL_MAX_THREADS 16384

/* Value of gil_stats (per CPU), key the target's tgid. The agent creates the
 * entry when it attaches and deletes it when it detaches; the programs only
 * update existing entries, so an unknown process costs a lookup and nothing
 * else. Counters only grow; userspace sums the CPUs. */
struct hw_gil_stats {
	__u64 wait_ns;   /* time in take_gil, and in drop_gil handing over on request */
	__u64 hold_ns;   /* time from take_gil's return to drop_gil's entry */
	__u64 hits;      /* probe invocations: the cost governor's input */
	__s64 waiting;   /* waits begun minus waits completed (sum over CPUs) */
	__u64 wait_buckets[HW_GIL_BUCKETS]; /* completed waits of either kind; not cumulative */
};

/* Value of gil_threads, key the thread's pid_tgid: when its current wait or
 * hold began (0: none in progress). Only the thread itself touches it. */
struct hw_gil_thread {
	__u64 wait_start;
	__u64 hold_start;
};

#endif
