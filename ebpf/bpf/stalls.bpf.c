// SPDX-License-Identifier: (MIT OR GPL-2.0)
/*
 * stalls: mmap_lock wait per (process, mode) with a log2 histogram, and who
 * opens /proc/PID/smaps or smaps_rollup (DESIGN.md: reading smaps walks the
 * target's page tables under its mmap_lock and stalls it).
 *
 * Hooks: tp_btf/mmap_lock_start_locking and mmap_lock_acquire_returned
 * (wait = acquire - start per thread; returns without a start are trylocks
 * and are ignored), tracepoint/syscalls/sys_enter_openat and
 * sys_enter_openat2 (path filter in the kernel: only matching opens reach
 * userspace). Needs BTF, CAP_BPF + CAP_PERFMON and tracefs (for the openat
 * tracepoints' ids).
 *
 * mmap_lock fires on every lock of every process, so its path is constant
 * work with no per-event output and no lock: tp_btf (no trace record is
 * built) and a start-time slot per thread in an array (an inlined lookup),
 * not a hash (whose update and delete take a spinlock). Measured on the dev
 * VM per lock acquisition, both tracepoints: classic tracepoints with a hash
 * +803 ns, tp_btf with a hash +608 ns, tp_btf with the array +291 ns, empty
 * tp_btf programs +166 ns. Only waits of at least HW_MMAP_LOCK_MIN_WAIT_NS (the
 * lock was contended) touch the totals: those are rare, so their atomic adds
 * cost nothing in aggregate, and the totals map holds only processes that
 * really waited, one value each however many CPUs the host has (userspace
 * reads it every few seconds; per-CPU values would be 272 bytes per CPU).
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "hostwatch.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* Start-time slots, indexed by thread id modulo their number (a power of
 * two). Two threads sharing a slot and taking an mmap_lock at the same
 * moment overwrite each other: the one overwritten finds another id there
 * and its wait goes uncounted. That needs tids 65536 apart in the lock at
 * once: rare enough for 1 MiB. */
#define MMAP_LOCK_SLOTS 65536

struct mmap_lock_slot {
	__u64 id;    /* pid_tgid of the thread that started waiting */
	__u64 start; /* 0: no wait in progress */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MMAP_LOCK_SLOTS);
	__type(key, __u32);
	__type(value, struct mmap_lock_slot);
} mmap_lock_start SEC(".maps");

/* LRU: a host with many short-lived processes evicts the oldest instead of
 * refusing new ones; userspace counts an evicted-then-returning key as a
 * reset, so totals stay monotonic. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, HW_MMAP_LOCK_PROCESSES);
	__type(key, struct hw_mmap_lock_key);
	__type(value, struct hw_mmap_lock_wait);
} mmap_lock_wait SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, HW_SMAPS_RING_BYTES);
} smaps_events SEC(".maps");

/* The event being built: off the 512-byte stack, and its type recorded in
 * the object's BTF for the Rust mirror's size check. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct hw_smaps_event);
} smaps_scratch SEC(".maps");

/* Index 0: smaps events dropped because the ring buffer was full. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} smaps_lost SEC(".maps");

SEC("tp_btf/mmap_lock_start_locking")
int BPF_PROG(hw_mmap_lock_start, struct mm_struct *mm, bool write)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 index = (__u32)id & (MMAP_LOCK_SLOTS - 1);
	struct mmap_lock_slot *slot = bpf_map_lookup_elem(&mmap_lock_start, &index);
	if (slot) {
		slot->id = id;
		slot->start = bpf_ktime_get_ns();
	}
	return 0;
}

/* log2 of a wait in nanoseconds, clamped to the histogram's last bucket:
 * bucket b counts waits in [2^b, 2^(b+1)) ns, bucket 0 also those under 1 ns. */
static __always_inline __u32 log2_bucket(__u64 v)
{
	__u32 r = 0, shift;
	shift = (v > 0xFFFFFFFF) << 5; v >>= shift; r |= shift;
	shift = (v > 0xFFFF) << 4; v >>= shift; r |= shift;
	shift = (v > 0xFF) << 3; v >>= shift; r |= shift;
	shift = (v > 0xF) << 2; v >>= shift; r |= shift;
	shift = (v > 0x3) << 1; v >>= shift; r |= shift;
	r |= (v >> 1);
	return r < HW_MMAP_LOCK_BUCKETS ? r : HW_MMAP_LOCK_BUCKETS - 1;
}

SEC("tp_btf/mmap_lock_acquire_returned")
int BPF_PROG(hw_mmap_lock_acquired, struct mm_struct *mm, bool write, bool success)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 index = (__u32)id & (MMAP_LOCK_SLOTS - 1);
	struct mmap_lock_slot *slot = bpf_map_lookup_elem(&mmap_lock_start, &index);
	/* No start of ours: a trylock (no start_locking), or the slot was taken. */
	if (!slot || slot->id != id || !slot->start)
		return 0;
	__u64 wait = bpf_ktime_get_ns() - slot->start;
	slot->start = 0;
	if (wait < HW_MMAP_LOCK_MIN_WAIT_NS)
		return 0; /* uncontended: the lock was free */

	struct hw_mmap_lock_key key = {
		.tgid = id >> 32,
		.write = write ? 1 : 0,
	};
	struct hw_mmap_lock_wait *value = bpf_map_lookup_elem(&mmap_lock_wait, &key);
	if (!value) {
		struct hw_mmap_lock_wait zero = {};
		bpf_map_update_elem(&mmap_lock_wait, &key, &zero, BPF_NOEXIST);
		value = bpf_map_lookup_elem(&mmap_lock_wait, &key);
		if (!value)
			return 0;
	}
	__sync_fetch_and_add(&value->wait_ns, wait);
	__sync_fetch_and_add(&value->count, 1);
	__sync_fetch_and_add(&value->buckets[log2_bucket(wait)], 1);
	return 0;
}

static const char smaps_suffix[] = "/smaps";
static const char rollup_suffix[] = "/smaps_rollup";

/* Whether path[0..len) (len counts the NUL) ends with `suffix` (size counts
 * its NUL too). Indexes are masked so the verifier sees them bounded. */
static __always_inline int ends_with(const char *path, long len, const char *suffix, int size)
{
	if (len < size)
		return 0;
	for (int i = 0; i < size; i++) {
		if (path[(len - size + i) & (HW_SMAPS_PATH - 1)] != suffix[i])
			return 0;
	}
	return 1;
}

static __always_inline int smaps_open(const char *filename)
{
	/* Most opens are not under /proc: six bytes decide, and only /proc
	 * paths pay for reading the whole string (DESIGN.md: 1.2 us). */
	char head[6];
	if (bpf_probe_read_user(head, sizeof(head), filename))
		return 0;
	if (head[0] != '/' || head[1] != 'p' || head[2] != 'r' || head[3] != 'o' || head[4] != 'c' || head[5] != '/')
		return 0;

	__u32 zero = 0;
	struct hw_smaps_event *event = bpf_map_lookup_elem(&smaps_scratch, &zero);
	if (!event)
		return 0;
	long len = bpf_probe_read_user_str(event->path, sizeof(event->path), filename);
	if (len <= 0 || len > HW_SMAPS_PATH)
		return 0;
	if (!ends_with(event->path, len, smaps_suffix, sizeof(smaps_suffix)) &&
	    !ends_with(event->path, len, rollup_suffix, sizeof(rollup_suffix)))
		return 0;

	__u64 id = bpf_get_current_pid_tgid();
	event->time_ns = bpf_ktime_get_boot_ns();
	event->tgid = id >> 32;
	event->tid = (__u32)id;
	bpf_get_current_comm(event->comm, sizeof(event->comm));
	if (bpf_ringbuf_output(&smaps_events, event, sizeof(*event), 0)) {
		__u64 *lost = bpf_map_lookup_elem(&smaps_lost, &zero);
		if (lost)
			*lost += 1;
	}
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_openat")
int hw_smaps_openat(struct trace_event_raw_sys_enter *ctx)
{
	return smaps_open((const char *)ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_enter_openat2")
int hw_smaps_openat2(struct trace_event_raw_sys_enter *ctx)
{
	return smaps_open((const char *)ctx->args[1]);
}
