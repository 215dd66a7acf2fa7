//! Where the `stalls` collector's numbers come from: the `stalls` BPF object
//! for real, or a scripted source in tests.
//!
//! Needs, for real: root (CAP_BPF + CAP_PERFMON), kernel BTF (the mmap_lock
//! programs are tp_btf), and tracefs mounted (the openat ones are classic
//! tracepoints, found by their tracefs id).

use aya::Ebpf;
use aya::maps::{HashMap, MapData, PerCpuArray, RingBuf};
use hostwatch_ebpf::maps::{MmapLockKey, MmapLockWait, SmapsEvent};
use hostwatch_ebpf::{Error, STALLS};

use crate::bpf::{Hook, load_and_attach};
use crate::error::{CollectError, Unavailable};

/// What the collector reads each collection.
pub trait Source: Send {
    /// Every (process, mode) with counted waits, totals since attach, into `out`.
    fn waits(&mut self, out: &mut Vec<(MmapLockKey, MmapLockWait)>) -> Result<(), CollectError>;
    /// Forgets an exited process's totals, so a recycled pid starts from zero.
    fn forget(&mut self, tgid: u32);
    /// Hands every smaps open seen since the last call to `each`.
    fn smaps_events(&mut self, each: &mut dyn FnMut(&SmapsEvent));
    /// smaps opens dropped because the ring buffer was full, since attach.
    fn smaps_lost(&mut self) -> Result<u64, CollectError>;
}

/// Where classic tracepoints' ids are; aya looks in the same two places.
const TRACEFS: [&str; 2] = ["/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events"];

/// The attached BPF programs and their maps.
pub struct Bpf {
    /// Owns the links: dropping it detaches the programs.
    _ebpf: Ebpf,
    waits: HashMap<MapData, MmapLockKey, MmapLockWait>,
    events: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for Bpf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bpf(stalls)")
    }
}

impl Bpf {
    pub fn attach() -> Result<Self, Unavailable> {
        // aya remembers a missing tracefs for the life of the process, so ask
        // first: a tracefs mounted later is then still found at the retry.
        let looked: Vec<_> = TRACEFS
            .iter()
            .map(|path| std::fs::metadata(path).map(|m| m.is_dir()))
            .collect();
        if !looked.iter().any(|found| matches!(found, Ok(true))) {
            // tracefs is root's alone (mode 700): not seeing it is no proof
            // that it is not there.
            let denied = looked
                .iter()
                .any(|found| matches!(found, Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied));
            return Err(Unavailable::new(if denied {
                "eBPF not permitted (needs root, or CAP_BPF and CAP_PERFMON): tracefs is not readable"
            } else {
                "tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing): the openat tracepoints need it"
            }));
        }
        let mut ebpf = load_and_attach(
            &STALLS,
            &[
                ("hw_mmap_lock_start", Hook::BtfTracePoint("mmap_lock_start_locking")),
                (
                    "hw_mmap_lock_acquired",
                    Hook::BtfTracePoint("mmap_lock_acquire_returned"),
                ),
                ("hw_smaps_openat", Hook::TracePoint("syscalls", "sys_enter_openat")),
                ("hw_smaps_openat2", Hook::TracePoint("syscalls", "sys_enter_openat2")),
            ],
        )?;
        let waits = HashMap::try_from(take_map(&mut ebpf, "mmap_lock_wait")?).map_err(map_error("mmap_lock_wait"))?;
        let events = RingBuf::try_from(take_map(&mut ebpf, "smaps_events")?).map_err(map_error("smaps_events"))?;
        let lost = PerCpuArray::try_from(take_map(&mut ebpf, "smaps_lost")?).map_err(map_error("smaps_lost"))?;
        Ok(Self {
            _ebpf: ebpf,
            waits,
            events,
            lost,
        })
    }
}

fn take_map(ebpf: &mut Ebpf, map: &'static str) -> Result<aya::maps::Map, Unavailable> {
    ebpf.take_map(map).ok_or_else(|| {
        crate::bpf::unavailable(Error::MissingMap {
            object: STALLS.name,
            map,
        })
    })
}

fn map_error(map: &'static str) -> impl Fn(aya::maps::MapError) -> Unavailable {
    move |source| {
        crate::bpf::unavailable(Error::Map {
            object: STALLS.name,
            map,
            source,
        })
    }
}

/// A map read failing at collection time: reported like a failed file read,
/// with the map's name where the path would be.
fn read_error(map: &str, source: aya::maps::MapError) -> CollectError {
    CollectError::Io {
        path: format!("bpf map {}/{map}", STALLS.name).into(),
        source: std::io::Error::other(source),
    }
}

impl Source for Bpf {
    fn waits(&mut self, out: &mut Vec<(MmapLockKey, MmapLockWait)>) -> Result<(), CollectError> {
        for entry in self.waits.iter() {
            match entry {
                Ok(entry) => out.push(entry),
                // The key was evicted between listing and lookup: gone, not broken.
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(source) => return Err(read_error("mmap_lock_wait", source)),
            }
        }
        Ok(())
    }

    fn forget(&mut self, tgid: u32) {
        for write in [0, 1] {
            // Absent keys are the common case (a process waited in one mode only).
            let _ = self.waits.remove(&MmapLockKey { tgid, write });
        }
    }

    fn smaps_events(&mut self, each: &mut dyn FnMut(&SmapsEvent)) {
        while let Some(item) = self.events.next() {
            if let Some(event) = SmapsEvent::from_bytes(&item) {
                each(&event);
            }
        }
    }

    fn smaps_lost(&mut self) -> Result<u64, CollectError> {
        let per_cpu = self
            .lost
            .get(&0, 0)
            .map_err(|source| read_error("smaps_lost", source))?;
        Ok(per_cpu.iter().sum())
    }
}
