//! Kernel call-chain samples from perf `cpu-clock` events, one per online
//! CPU, through `perf-event2`'s safe API (no unsafe here).
//!
//! User-mode and idle samples are dropped here, not by the kernel: with
//! `exclude_user` the dev VM's 6.18 kernel delivered no cpu-clock sample at
//! all, kernel-mode ones included (measured with perf-event2 0.7.4), and
//! `exclude_idle` is refused for cpu-clock by older kernels. A user-mode
//! sample has an empty kernel chain (`exclude_callchain_user`); an idle one
//! is pid 0.
//!
//! Some guests never deliver a cpu-clock sample while their kernel runs: on
//! the dev VM (a PVM guest, `nested_pvm=1`) every sample, even of a thread
//! that spends 90 % of its time in the kernel, carries a user-mode IP and no
//! kernel chain (measured). [`probe`] finds that out before the collector
//! starts, so it is down with that reason rather than silently counting
//! nothing.
//!
//! Needs root (or CAP_PERFMON; `kernel.perf_event_paranoid` decides for
//! others). `cpu-clock` is a software event, so it works in VMs, where
//! hardware counters are absent. Samples are parsed in place from the ring
//! buffer (pid, tid, call chain), without perf-event2's boxed `Record` enum:
//! this runs for every sample on every CPU.

use std::io;

use perf_event::events::Software;
use perf_event::{Builder, SampleFlag, Sampler};

use crate::error::Unavailable;

/// `PERF_RECORD_LOST`: the kernel dropped records because the ring was full.
const RECORD_LOST: u32 = 2;
/// `PERF_RECORD_SAMPLE`.
const RECORD_SAMPLE: u32 = 9;
/// Call-chain entries at or above this are context markers
/// (`PERF_CONTEXT_KERNEL` and friends), not addresses.
const CONTEXT_MAX: u64 = -4095i64 as u64;
/// Frames kept per sample: the watched functions sit 5 to 20 frames below the
/// syscall entry; deeper chains only cost ring space.
const MAX_STACK: u16 = 64;
/// Ring buffer bytes per CPU: at 49 Hz and about 300 bytes a sample, more
/// than 4 s of samples, for a 1 s default interval.
const RING_BYTES: usize = 64 * 1024;

/// One sample, as the collector sees it.
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    pub pid: u32,
    pub tid: u32,
    /// Kernel return addresses, innermost first, markers removed; never empty.
    pub ips: &'a [u64],
}

/// Where samples come from: perf for real, a script in tests.
pub trait Samples: Send {
    /// Hands every kernel-mode, non-idle sample taken since the last call to
    /// `each`; returns how many the kernel reported lost.
    fn drain(&mut self, each: &mut dyn FnMut(&Sample<'_>)) -> u64;
}

/// One sampling `cpu-clock` event per CPU.
pub struct Perf {
    samplers: Vec<Sampler>,
    /// Reused for the call chain of the sample being read.
    ips: Vec<u64>,
    /// Reused when a record wraps around the ring's end.
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Perf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Perf").field("cpus", &self.samplers.len()).finish()
    }
}

impl Perf {
    /// Opens and enables a sampler on each of `cpus` at `frequency` Hz.
    pub fn open(cpus: &[usize], frequency: u64) -> Result<Self, Unavailable> {
        let mut samplers = Vec::with_capacity(cpus.len());
        for &cpu in cpus {
            let opened = Builder::new(Software::CPU_CLOCK)
                .one_cpu(cpu)
                .any_pid()
                .sample_frequency(frequency)
                .sample(SampleFlag::TID | SampleFlag::CALLCHAIN)
                .exclude_hv(true)
                .exclude_callchain_user(true)
                .sample_max_stack(MAX_STACK)
                .build()
                .and_then(|counter| counter.sampled(RING_BYTES))
                .and_then(|mut sampler| sampler.enable().map(|()| sampler));
            match opened {
                Ok(sampler) => samplers.push(sampler),
                Err(error) => return Err(unavailable(cpu, &error)),
            }
        }
        Ok(Self {
            samplers,
            ips: Vec::with_capacity(usize::from(MAX_STACK) + 8),
            bytes: Vec::new(),
        })
    }
}

/// The longest [`probe`] keeps this thread busy in the kernel: well inside
/// the collector's 1 s build timeout.
const PROBE: std::time::Duration = std::time::Duration::from_millis(300);
/// The probe stops once it has this many samples.
const PROBE_ENOUGH: usize = 20;
/// With this many samples and none in kernel mode the host cannot sample
/// kernel mode: the probe thread spends most of its time in the kernel, so a
/// working kernel gives user-mode samples alone with odds under 0.4^8
/// (0.07 %). With fewer the probe cannot tell (the dev VM delivers 0 to 80 of
/// the 997 per second, fewer the busier it is, all user-mode), and says so.
const PROBE_MIN_SAMPLES: usize = 8;

/// Samples this thread's own cpu-clock at 997 Hz while it reads procfs (kernel
/// work), until it has [`PROBE_ENOUGH`] samples, one in kernel mode, or
/// [`PROBE`] is over: a kernel whose samples never land in kernel mode cannot
/// show hot spots. A working kernel answers in a few milliseconds (its first
/// kernel-mode sample); without one the collector is down, with a reason that
/// does not change from one try to the next (it is a label value), and the
/// scheduler asks again a minute later.
pub fn probe(procfs: &std::path::Path) -> Result<(), Unavailable> {
    let opened = Builder::new(Software::CPU_CLOCK)
        .observe_self()
        .any_cpu()
        .sample_frequency(997)
        .sample(SampleFlag::TID | SampleFlag::CALLCHAIN)
        .exclude_hv(true)
        .exclude_callchain_user(true)
        .sample_max_stack(MAX_STACK)
        .build()
        .and_then(|counter| counter.sampled(RING_BYTES))
        .and_then(|mut sampler| sampler.enable().map(|()| sampler));
    let mut sampler = opened.map_err(|error| unavailable(0, &error))?;
    let status = procfs.join("self/status");
    let start = std::time::Instant::now();
    let (mut samples, mut kernel) = (0, 0);
    let mut ips = Vec::new();
    while start.elapsed() < PROBE && samples < PROBE_ENOUGH && kernel == 0 {
        for _ in 0..100 {
            let _ = std::fs::read(&status);
        }
        while let Some(record) = sampler.next_record() {
            if record.ty() != RECORD_SAMPLE {
                continue;
            }
            samples += 1;
            if parse_sample(&record.to_contiguous(), &mut ips).is_some_and(|s| !s.ips.is_empty()) {
                kernel += 1;
            }
        }
    }
    if kernel > 0 {
        return Ok(());
    }
    tracing::debug!(samples, "the cpu-clock probe saw no kernel-mode sample");
    Err(Unavailable::new(if samples >= PROBE_MIN_SAMPLES {
        "cpu-clock samples never land in kernel mode on this host (some VMs, e.g. PVM guests, deliver the timer only in user mode): kernel hot spots cannot be sampled"
    } else {
        "cpu-clock samples showed no kernel mode in the probe, too few to tell (a starved CPU, or a VM that delivers the timer only in user mode): kernel hot spots cannot be sampled now"
    }))
}

fn unavailable(cpu: usize, error: &io::Error) -> Unavailable {
    let hint = match error.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) => " (needs root or CAP_PERFMON, or a lower kernel.perf_event_paranoid)",
        Some(libc::ENOENT | libc::ENODEV | libc::EOPNOTSUPP) => " (no cpu-clock perf event in this kernel)",
        _ => "",
    };
    Unavailable::new(format!("perf_event_open cpu-clock on CPU {cpu}: {error}{hint}"))
}

impl Samples for Perf {
    fn drain(&mut self, each: &mut dyn FnMut(&Sample<'_>)) -> u64 {
        let mut lost = 0;
        for sampler in &mut self.samplers {
            while let Some(record) = sampler.next_record() {
                let kind = record.ty();
                if kind != RECORD_SAMPLE && kind != RECORD_LOST {
                    continue;
                }
                // Contiguous unless it wraps around the ring's end (rare).
                let data = record.data();
                let body: &[u8] = if let [single] = data {
                    single
                } else {
                    self.bytes.clear();
                    data.iter().for_each(|part| self.bytes.extend_from_slice(part));
                    &self.bytes
                };
                if kind == RECORD_LOST {
                    lost += u64_at(body, 8).unwrap_or(0);
                } else if let Some(sample) = parse_sample(body, &mut self.ips)
                    && sample.pid != 0
                    && !sample.ips.is_empty()
                {
                    each(&sample);
                }
            }
        }
        lost
    }
}

fn u64_at(bytes: &[u8], offset: usize) -> Option<u64> {
    let field = bytes.get(offset..offset + 8)?;
    Some(u64::from_ne_bytes(field.try_into().ok()?))
}

/// A `PERF_RECORD_SAMPLE` body with `TID | CALLCHAIN`: `u32 pid, u32 tid,
/// u64 nr, u64 ips[nr]`.
fn parse_sample<'a>(body: &[u8], ips: &'a mut Vec<u64>) -> Option<Sample<'a>> {
    let pid = u32::from_ne_bytes(body.get(0..4)?.try_into().ok()?);
    let tid = u32::from_ne_bytes(body.get(4..8)?.try_into().ok()?);
    let nr = usize::try_from(u64_at(body, 8)?).ok()?;
    ips.clear();
    for index in 0..nr {
        let ip = u64_at(body, 16 + index * 8)?;
        if ip < CONTEXT_MAX {
            ips.push(ip);
        }
    }
    Some(Sample { pid, tid, ips })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_parsed_and_markers_dropped() {
        let mut body = Vec::new();
        body.extend_from_slice(&42u32.to_ne_bytes());
        body.extend_from_slice(&43u32.to_ne_bytes());
        body.extend_from_slice(&3u64.to_ne_bytes());
        // PERF_CONTEXT_KERNEL, then two kernel addresses.
        for ip in [-128i64 as u64, 0xffffffff81771fd0, 0xffffffff816b52b0] {
            body.extend_from_slice(&ip.to_ne_bytes());
        }
        let mut ips = Vec::new();
        let sample = parse_sample(&body, &mut ips).expect("parses");
        assert_eq!((sample.pid, sample.tid), (42, 43));
        assert_eq!(sample.ips, [0xffffffff81771fd0, 0xffffffff816b52b0]);
        // A chain longer than the record is a broken record, not a panic.
        assert!(parse_sample(&body[..30], &mut ips).is_none());
    }
}
