/*
 * Syscall loops for bench/stalls_cost.py: each runs one operation for the
 * given wall-clock seconds and prints operations per second of this thread's
 * CPU time (CLOCK_THREAD_CPUTIME_ID): on a shared, busy machine the time the
 * loop is preempted does not count, so the comparison holds under load.
 *
 *   mmap        mmap + munmap of one anonymous page: two mmap_lock write
 *               acquisitions, four mmap_lock tracepoint hits
 *   open_tmp    openat + close of a /tmp path: the filter's prefix check fails
 *   open_proc   openat + close of /proc/self/stat: prefix matches, the whole
 *               path is read, the suffix check fails
 *   open_smaps  openat + close of /proc/self/smaps_rollup (never read): a
 *               match, one ring buffer event
 *   getppid     a syscall nothing here traces: the cost every syscall pays
 *               once any syscall tracepoint is enabled
 *
 * usage: stalls_loops MODE SECONDS
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now(clockid_t clock)
{
	struct timespec ts;
	clock_gettime(clock, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int once(const char *mode)
{
	if (!strcmp(mode, "mmap")) {
		void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			return -1;
		return munmap(p, 4096);
	}
	if (!strcmp(mode, "getppid"))
		return getppid() > 0 ? 0 : -1;
	const char *path = !strcmp(mode, "open_tmp")	? "/tmp/hostwatch-bench-file"
			   : !strcmp(mode, "open_proc") ? "/proc/self/stat"
			   : !strcmp(mode, "open_smaps") ? "/proc/self/smaps_rollup"
							 : NULL;
	if (!path)
		return -2;
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	return close(fd);
}

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	double seconds = atof(argv[2]);
	if (!strcmp(argv[1], "open_tmp"))
		close(open("/tmp/hostwatch-bench-file", O_RDONLY | O_CREAT, 0600));
	if (once(argv[1]) == -2)
		return 2;
	double end = now(CLOCK_MONOTONIC) + seconds;
	double cpu = now(CLOCK_THREAD_CPUTIME_ID);
	long ops = 0;
	while (now(CLOCK_MONOTONIC) < end) {
		for (int i = 0; i < 1000; i++)
			if (once(argv[1]))
				return 1;
		ops += 1000;
	}
	printf("%.0f\n", ops / (now(CLOCK_THREAD_CPUTIME_ID) - cpu));
	return 0;
}
