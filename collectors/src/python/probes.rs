//! The GIL probes in the kernel: the `gil` BPF object loaded once, its uprobes
//! attached to and detached from one process at a time, and its per-process
//! counters read back.
//!
//! Needs CAP_BPF + CAP_PERFMON (root) and a kernel with uprobes. Each attach
//! is a perf event per probe, scoped to the target process (so other processes
//! running the same file pay nothing), linked to a program loaded once. A
//! process's counter entry exists exactly while it is attached.
//!
//! Detaching is slow: the kernel waits for a grace period on every uprobe
//! link it closes (about 100 ms each here, serialised), so the links of a
//! detached process are closed on a thread of their own, and the collection
//! never waits for them. [`Probes::detaching`] says how many processes'
//! links are still being closed; they count against the target cap, which
//! bounds the backlog.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::time::Duration;

use aya::Ebpf;
use aya::maps::{MapData, PerCpuHashMap, PerCpuValues};
use aya::programs::uprobe::{UProbeAttachLocation, UProbeLink, UProbeLinkId, UProbeScope};
use aya::programs::{ProgramError, UProbe};
use hostwatch_ebpf::maps::{GIL_BOUNDS_GLOBAL, GIL_BUCKETS, GilStats};
use hostwatch_ebpf::{Error, GIL};

use super::symbols::Offsets;
use crate::bpf::unavailable;
use crate::error::Unavailable;

const TAKE_ENTER: &str = "hw_gil_take_enter";
const TAKE_RETURN: &str = "hw_gil_take_return";
const DROP_ENTER: &str = "hw_gil_drop_enter";
const DROP_RETURN: &str = "hw_gil_drop_return";
const RELEASE: &str = "hw_gil_release";
const STATS: &str = "gil_stats";

/// Upper bounds of the wait histogram's finite buckets: around the interpreter's
/// 5 ms switch interval, where contention shows (a CPU-bound thread waits a
/// multiple of it), down to the microseconds of an uncontended take.
pub const BOUNDS: [Duration; GIL_BUCKETS - 1] = [
    Duration::from_micros(10),
    Duration::from_micros(100),
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_secs(1),
];

pub struct Probes {
    ebpf: Ebpf,
    stats: PerCpuHashMap<MapData, u32, GilStats>,
    /// Possible CPUs: the length of a per-CPU value.
    cpus: usize,
    /// To the thread that closes detached processes' links.
    closer: Sender<Vec<UProbeLink>>,
    /// Processes whose links are still being closed.
    detaching: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes")
            .field("cpus", &self.cpus)
            .finish_non_exhaustive()
    }
}

/// One process's attached probes; give it back to [`Probes::detach`].
#[derive(Debug)]
pub struct Attachment {
    pid: u32,
    links: Vec<(&'static str, UProbeLinkId)>,
}

/// Why a process could not be probed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("zeroed per-CPU counters for process {pid}: {source}")]
    Zeroes {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("creating the counters of process {pid}: {source}")]
    Counters {
        pid: u32,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("attaching {program} to {} for process {pid}: {source}", binary.display())]
    Attach {
        pid: u32,
        program: &'static str,
        binary: std::path::PathBuf,
        #[source]
        source: ProgramError,
    },
}

impl Probes {
    /// Loads the object with room for `max_targets` processes and the
    /// programs through the verifier; attaches nothing.
    pub fn load(max_targets: u32) -> Result<Self, Unavailable> {
        let bounds_ns: [u64; GIL_BUCKETS - 1] = BOUNDS.map(|b| u64::try_from(b.as_nanos()).unwrap_or(u64::MAX));
        let mut ebpf = hostwatch_ebpf::load_with(&GIL, |loader| {
            loader
                .override_global(GIL_BOUNDS_GLOBAL, &bounds_ns, true)
                .map_max_entries(STATS, max_targets);
        })
        .map_err(unavailable)?;
        for name in [TAKE_ENTER, TAKE_RETURN, DROP_ENTER, DROP_RETURN, RELEASE] {
            uprobe(&mut ebpf, name)?
                .load()
                .map_err(|source| program_error(name, source))?;
        }
        let map = ebpf.take_map(STATS).ok_or_else(|| {
            unavailable(Error::MissingMap {
                object: GIL.name,
                map: STATS,
            })
        })?;
        let stats = PerCpuHashMap::try_from(map).map_err(|source| {
            unavailable(Error::Map {
                object: GIL.name,
                map: STATS,
                source,
            })
        })?;
        let cpus = aya::util::nr_cpus()
            .map_err(|(path, error)| Unavailable::new(format!("counting possible CPUs ({path}): {error}")))?;
        let (closer, closing) = channel::<Vec<UProbeLink>>();
        let detaching = Arc::new(AtomicUsize::new(0));
        let done = Arc::clone(&detaching);
        std::thread::Builder::new()
            .name("gil-detach".into())
            .spawn(move || {
                for links in closing {
                    drop(links);
                    done.fetch_sub(1, Ordering::Relaxed);
                }
            })
            .map_err(|error| Unavailable::new(format!("starting the GIL probe detach thread: {error}")))?;
        Ok(Self {
            ebpf,
            stats,
            cpus,
            closer,
            detaching,
        })
    }

    /// Probes `pid`, which runs `binary` (a path that opens the file the
    /// process maps), at `offsets`. On failure nothing stays attached.
    pub fn attach(&mut self, pid: u32, binary: &Path, offsets: &Offsets) -> Result<Attachment, AttachError> {
        // The counters first: the programs ignore a process without them.
        let zeroes = PerCpuValues::try_from(vec![GilStats::default(); self.cpus])
            .map_err(|source| AttachError::Zeroes { pid, source })?;
        self.stats
            .insert(pid, zeroes, 0)
            .map_err(|source| AttachError::Counters { pid, source })?;
        let mut attachment = Attachment {
            pid,
            links: Vec::with_capacity(5),
        };
        // Entry before return: a return probe that fires finds its entry's start.
        let mut points = vec![(TAKE_ENTER, offsets.take), (TAKE_RETURN, offsets.take)];
        if let Some(drop) = offsets.drop {
            points.extend([(DROP_ENTER, drop), (DROP_RETURN, drop)]);
        }
        points.extend(offsets.release.map(|release| (RELEASE, release)));
        for (program, offset) in points {
            match self.attach_one(program, offset, binary, pid) {
                Ok(link) => attachment.links.push((program, link)),
                Err(source) => {
                    self.detach(attachment);
                    return Err(AttachError::Attach {
                        pid,
                        program,
                        binary: binary.to_path_buf(),
                        source,
                    });
                }
            }
        }
        Ok(attachment)
    }

    fn attach_one(
        &mut self,
        program: &'static str,
        offset: u64,
        binary: &Path,
        pid: u32,
    ) -> Result<UProbeLinkId, ProgramError> {
        let Some(pid) = std::num::NonZeroU32::new(pid) else {
            return Err(ProgramError::NotAttached);
        };
        let program = self.ebpf.program_mut(program).ok_or(ProgramError::NotLoaded)?;
        let program: &mut UProbe = program.try_into()?;
        program.attach(
            UProbeAttachLocation::AbsoluteOffset(offset),
            binary,
            UProbeScope::OneProcess(pid),
        )
    }

    /// Removes `attachment`'s counters at once (the programs stop counting the
    /// process) and hands its links to the closing thread. Errors are logged,
    /// not returned: there is nothing else to do about them.
    pub fn detach(&mut self, attachment: Attachment) {
        if let Err(error) = self.stats.remove(&attachment.pid) {
            tracing::debug!(pid = attachment.pid, %error, "removing a process's GIL counters");
        }
        let mut links = Vec::with_capacity(attachment.links.len());
        // Return probes first, mirroring attach.
        for (name, link) in attachment.links.into_iter().rev() {
            let taken = self
                .ebpf
                .program_mut(name)
                .ok_or(ProgramError::NotLoaded)
                .and_then(|program| <&mut UProbe>::try_from(program)?.take_link(link));
            match taken {
                Ok(link) => links.push(link),
                Err(error) => tracing::debug!(pid = attachment.pid, program = name, %error, "detaching a GIL probe"),
            }
        }
        self.detaching.fetch_add(1, Ordering::Relaxed);
        if let Err(unsent) = self.closer.send(links) {
            // The closing thread is gone (it only ends with this struct): close here.
            drop(unsent);
            self.detaching.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Processes detached whose links the kernel is still releasing.
    pub fn detaching(&self) -> usize {
        self.detaching.load(Ordering::Relaxed)
    }

    /// `pid`'s counters summed over CPUs into `out` (zero when absent).
    pub fn read(&self, pid: u32, out: &mut GilStats) -> Result<(), aya::maps::MapError> {
        *out = GilStats::default();
        for cpu in self.stats.get(&pid, 0)?.iter() {
            out.wait_ns = out.wait_ns.wrapping_add(cpu.wait_ns);
            out.hold_ns = out.hold_ns.wrapping_add(cpu.hold_ns);
            out.hits = out.hits.wrapping_add(cpu.hits);
            // Entered on one CPU, returned on another: only the sum means anything.
            out.waiting = out.waiting.wrapping_add(cpu.waiting);
            for (total, count) in out.wait_buckets.iter_mut().zip(cpu.wait_buckets) {
                *total = total.wrapping_add(count);
            }
        }
        Ok(())
    }
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, Unavailable> {
    let program = ebpf.program_mut(name).ok_or_else(|| {
        unavailable(Error::MissingProgram {
            object: GIL.name,
            program: name,
        })
    })?;
    program.try_into().map_err(|source| program_error(name, source))
}

fn program_error(program: &'static str, source: ProgramError) -> Unavailable {
    unavailable(Error::Program {
        object: GIL.name,
        program,
        source,
    })
}
