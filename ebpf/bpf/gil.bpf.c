// SPDX-License-Identifier: (MIT OR GPL-2.0)
/*
 * gil: how long Python threads wait for the GIL and how long they hold it,
 * summed per process (tgid) in per-CPU counters and a wait histogram. No
 * per-event output: the agent reads the sums.
 *
 * Hooks, attached by the agent per target process and by file offset:
 * hw_gil_take_enter and hw_gil_take_return on CPython's take_gil (uprobe and
 * uretprobe: waiting for the GIL, then holding it), hw_gil_drop_enter and
 * hw_gil_drop_return on drop_gil (the hold ends; a thread asked to drop waits
 * there until another has taken the GIL), hw_gil_release on the exported
 * PyEval_SaveThread (the hold ends, where drop_gil is inlined). Where the
 * interpreter has no symbols for the static functions, the take programs go
 * on the exported PyEval_RestoreThread instead, which sees only the waits
 * that follow a blocking call, and holds are not measured.
 *
 * Needs CAP_BPF + CAP_PERFMON. Every probe hit costs a trap into the kernel
 * (about a microsecond), so each hit is counted for the agent's cost governor.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "hostwatch.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* The histogram's finite upper bounds in nanoseconds, increasing; written by
 * the agent at load so the bounds it exports are the ones counted here. */
const volatile __u64 hw_gil_bounds_ns[HW_GIL_BUCKETS - 1] = {};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, HW_GIL_MAX_TARGETS);
	__type(key, __u32);
	__type(value, struct hw_gil_stats);
} gil_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, HW_GIL_MAX_THREADS);
	__type(key, __u64);
	__type(value, struct hw_gil_thread);
} gil_threads SEC(".maps");

/* The calling process's counters, with this hit counted; NULL when the
 * process is not a target (a race with attach or detach). Uprobe programs run
 * preemptibly (migrate_disable only), so two threads on one CPU may interleave:
 * every update of the shared per-CPU value is atomic. */
static __always_inline struct hw_gil_stats *stats_of(__u64 pid_tgid)
{
	__u32 tgid = pid_tgid >> 32;
	struct hw_gil_stats *stats = bpf_map_lookup_elem(&gil_stats, &tgid);
	if (stats)
		__sync_fetch_and_add(&stats->hits, 1);
	return stats;
}

/* The thread starts waiting: for the GIL (take_gil), or for another thread to
 * take the GIL it was asked to hand over (drop_gil). */
static __always_inline void begin_wait(struct hw_gil_stats *stats, __u64 id, __u64 now)
{
	struct hw_gil_thread *thread = bpf_map_lookup_elem(&gil_threads, &id);
	if (thread) {
		if (!thread->wait_start)
			__sync_fetch_and_add(&stats->waiting, 1);
		thread->wait_start = now;
		/* A hold whose end was not seen: its length is unknown. */
		thread->hold_start = 0;
		return;
	}
	struct hw_gil_thread fresh = { .wait_start = now };
	if (!bpf_map_update_elem(&gil_threads, &id, &fresh, BPF_ANY))
		__sync_fetch_and_add(&stats->waiting, 1);
}

/* The wait ends: counted, and placed in the histogram. Returns the thread, or
 * NULL when no wait was in progress (the call began before the probes were
 * attached). */
static __always_inline struct hw_gil_thread *end_wait(struct hw_gil_stats *stats, __u64 id, __u64 now)
{
	struct hw_gil_thread *thread = bpf_map_lookup_elem(&gil_threads, &id);
	if (!thread || !thread->wait_start)
		return NULL;
	__u64 wait = now - thread->wait_start;
	thread->wait_start = 0;
	__sync_fetch_and_add(&stats->waiting, -1);
	__sync_fetch_and_add(&stats->wait_ns, wait);
	__u32 bucket = HW_GIL_BUCKETS - 1;
	for (__u32 i = 0; i < HW_GIL_BUCKETS - 1; i++) {
		if (wait <= hw_gil_bounds_ns[i]) {
			bucket = i;
			break;
		}
	}
	__sync_fetch_and_add(&stats->wait_buckets[bucket], 1);
	return thread;
}

SEC("uprobe")
int hw_gil_take_enter(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct hw_gil_stats *stats = stats_of(id);
	if (stats)
		begin_wait(stats, id, bpf_ktime_get_ns());
	return 0;
}

SEC("uretprobe")
int hw_gil_take_return(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct hw_gil_stats *stats = stats_of(id);
	if (!stats)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	struct hw_gil_thread *thread = end_wait(stats, id, now);
	if (thread)
		thread->hold_start = now;
	return 0;
}

/* The hold ends. Not seen when a build inlines drop_gil into the caller
 * (Debian's LTO build does, into PyEval_SaveThread): hw_gil_release on
 * PyEval_SaveThread ends the hold there too, and a take that finds a hold
 * still open drops it uncounted rather than count the time in between. */
static __always_inline void end_hold(struct hw_gil_stats *stats, __u64 id, __u64 now)
{
	struct hw_gil_thread *thread = bpf_map_lookup_elem(&gil_threads, &id);
	/* No start: the GIL was taken before the probes were attached. */
	if (thread && thread->hold_start) {
		__sync_fetch_and_add(&stats->hold_ns, now - thread->hold_start);
		thread->hold_start = 0;
	}
}

/* drop_gil: the hold ends. A thread asked to drop the GIL (another one timed
 * out waiting) then waits inside drop_gil until a waiter has taken it, and
 * only then goes back to take_gil: that handover is waiting too, or a
 * CPU-bound thread's wait and hold would not add up to its time. */
SEC("uprobe")
int hw_gil_drop_enter(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct hw_gil_stats *stats = stats_of(id);
	if (!stats)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	end_hold(stats, id, now);
	begin_wait(stats, id, now);
	return 0;
}

/* PyEval_SaveThread, the release around blocking calls: the hold ends. */
SEC("uprobe")
int hw_gil_release(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct hw_gil_stats *stats = stats_of(id);
	if (stats)
		end_hold(stats, id, bpf_ktime_get_ns());
	return 0;
}

SEC("uretprobe")
int hw_gil_drop_return(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct hw_gil_stats *stats = stats_of(id);
	if (stats)
		end_wait(stats, id, bpf_ktime_get_ns());
	return 0;
}
