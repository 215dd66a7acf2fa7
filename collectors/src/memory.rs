//! `memory`: system memory use from `/proc/meminfo`.
//!
//! Reads `PROCFS/meminfo`; needs no privilege. One gauge per field, in bytes
//! (the kernel prints kibibytes), for the fields that explain where memory went:
//! free and available, page cache and what is dirty in it, anonymous memory,
//! swap, and the kernel's own (slab, stacks, page tables, per-CPU). A field
//! the running kernel does not print (`MemAvailable` before 3.14, `Percpu` and
//! `Hugetlb` before 4.16) is simply absent.
//!
//! Emits `hostwatch_memory_{total,free,available,buffers,cached,swap_cached,
//! swap_total,swap_free,dirty,writeback,anon,mapped,shmem,slab_reclaimable,
//! slab_unreclaimable,kernel_stack,page_tables,percpu,hugetlb,committed,
//! commit_limit}_bytes`.

use std::time::Duration;

use crate::collector::{Collector, CollectorSpec};
use crate::config::collector_section;
use crate::error::{CollectError, Unavailable};
use crate::paths::HostPaths;
use crate::procfile::{ProcFile, parse_u64};
use crate::sample::{Desc, MetricSet};

collector_section! {
    /// `[collectors.memory]`: no options beyond the schedule.
    pub struct Config {}
}

pub static SPEC: CollectorSpec = CollectorSpec {
    name: "memory",
    needs: "procfs: /proc/meminfo",
    default_interval: Duration::from_secs(1),
    section: |config| &config.memory,
    build: |context| Ok(Box::new(Memory::new(&context.paths)?)),
};

/// The exported fields: the `/proc/meminfo` name and the gauge it becomes.
static FIELDS: [(&str, Desc); 21] = [
    (
        "MemTotal",
        Desc::gauge(
            "hostwatch_memory_total_bytes",
            "Usable RAM: physical memory less what firmware and the kernel image reserve.",
            &[],
        ),
    ),
    (
        "MemFree",
        Desc::gauge(
            "hostwatch_memory_free_bytes",
            "RAM used for nothing at all; low is normal, see hostwatch_memory_available_bytes.",
            &[],
        ),
    ),
    (
        "MemAvailable",
        Desc::gauge(
            "hostwatch_memory_available_bytes",
            "The kernel's estimate of memory that new work can get without swapping.",
            &[],
        ),
    ),
    (
        "Buffers",
        Desc::gauge(
            "hostwatch_memory_buffers_bytes",
            "Block device cache, mostly filesystem metadata.",
            &[],
        ),
    ),
    (
        "Cached",
        Desc::gauge(
            "hostwatch_memory_cached_bytes",
            "Page cache, including shared memory and tmpfs (hostwatch_memory_shmem_bytes).",
            &[],
        ),
    ),
    (
        "SwapCached",
        Desc::gauge(
            "hostwatch_memory_swap_cached_bytes",
            "Memory swapped out and back in that still has its copy in swap.",
            &[],
        ),
    ),
    (
        "SwapTotal",
        Desc::gauge("hostwatch_memory_swap_total_bytes", "Swap space configured.", &[]),
    ),
    (
        "SwapFree",
        Desc::gauge("hostwatch_memory_swap_free_bytes", "Swap space unused.", &[]),
    ),
    (
        "Dirty",
        Desc::gauge(
            "hostwatch_memory_dirty_bytes",
            "Page cache modified and waiting to be written back to disk.",
            &[],
        ),
    ),
    (
        "Writeback",
        Desc::gauge(
            "hostwatch_memory_writeback_bytes",
            "Page cache being written back to disk right now.",
            &[],
        ),
    ),
    (
        "AnonPages",
        Desc::gauge(
            "hostwatch_memory_anon_bytes",
            "Anonymous memory (heaps, stacks) mapped into processes.",
            &[],
        ),
    ),
    (
        "Mapped",
        Desc::gauge(
            "hostwatch_memory_mapped_bytes",
            "Page cache mapped into processes (libraries, mmap'd files).",
            &[],
        ),
    ),
    (
        "Shmem",
        Desc::gauge(
            "hostwatch_memory_shmem_bytes",
            "Shared memory and tmpfs; counted in cached but not reclaimable like it.",
            &[],
        ),
    ),
    (
        "SReclaimable",
        Desc::gauge(
            "hostwatch_memory_slab_reclaimable_bytes",
            "Kernel slab caches that can be reclaimed (dentries, inodes).",
            &[],
        ),
    ),
    (
        "SUnreclaim",
        Desc::gauge(
            "hostwatch_memory_slab_unreclaimable_bytes",
            "Kernel slab memory that cannot be reclaimed under pressure.",
            &[],
        ),
    ),
    (
        "KernelStack",
        Desc::gauge(
            "hostwatch_memory_kernel_stack_bytes",
            "Kernel stacks of all threads.",
            &[],
        ),
    ),
    (
        "PageTables",
        Desc::gauge(
            "hostwatch_memory_page_tables_bytes",
            "Page tables mapping process memory.",
            &[],
        ),
    ),
    (
        "Percpu",
        Desc::gauge(
            "hostwatch_memory_percpu_bytes",
            "Per-CPU allocations; grows with dying memory cgroups, whose per-CPU statistics stay allocated.",
            &[],
        ),
    ),
    (
        "Hugetlb",
        Desc::gauge(
            "hostwatch_memory_hugetlb_bytes",
            "Memory reserved for hugetlbfs pools of every page size, used or not.",
            &[],
        ),
    ),
    (
        "Committed_AS",
        Desc::gauge(
            "hostwatch_memory_committed_bytes",
            "Memory promised to processes (allocated address space that may be touched).",
            &[],
        ),
    ),
    (
        "CommitLimit",
        Desc::gauge(
            "hostwatch_memory_commit_limit_bytes",
            "How much may be committed when overcommit is disabled (vm.overcommit_memory=2).",
            &[],
        ),
    ),
];

#[derive(Debug)]
struct Memory {
    meminfo: ProcFile,
}

impl Memory {
    fn new(paths: &HostPaths) -> Result<Self, Unavailable> {
        Ok(Self {
            meminfo: ProcFile::require(paths.proc("meminfo"), "no memory statistics")?,
        })
    }
}

impl Collector for Memory {
    fn collect(&mut self, out: &mut MetricSet) -> Result<(), CollectError> {
        let meminfo = self.meminfo.read()?;
        for (index, line) in meminfo.text.lines().enumerate() {
            field(out, line).map_err(|reason| meminfo.error(index + 1, reason))?;
        }
        Ok(())
    }
}

/// One `Name:   value [kB]` line. Every line has that shape, so any other shape
/// means the file is not what we think it is, whether or not we export the field.
fn field(out: &mut MetricSet, line: &str) -> Result<(), String> {
    let Some((name, rest)) = line.split_once(':') else {
        return Err("no \"name:\" prefix".into());
    };
    let mut parts = rest.split_ascii_whitespace();
    let value = parse_u64(parts.next().ok_or("no value")?)?;
    let unit = parts.next();
    if let Some(extra) = parts.next() {
        return Err(format!("unexpected {extra:?} after the unit"));
    }
    let Some((_, desc)) = FIELDS.iter().find(|(field, _)| *field == name) else {
        return Ok(());
    };
    // Page counts (HugePages_Total) have no unit; every exported field is a size.
    if unit != Some("kB") {
        return Err(format!("{name} is not in kB"));
    }
    let bytes = value.checked_mul(1024).ok_or("value overflows bytes")?;
    out.push(desc, &[], bytes as f64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Context;
    use crate::testing::{TempTree, collect_fixture};

    #[test]
    fn bytes_from_fixture() {
        let set = collect_fixture(&SPEC, "basic");
        assert_eq!(
            set.get("hostwatch_memory_total_bytes", &[]),
            Some(24_684_092.0 * 1024.0)
        );
        assert_eq!(set.get("hostwatch_memory_free_bytes", &[]), Some(23_567_124.0 * 1024.0));
        assert_eq!(
            set.get("hostwatch_memory_available_bytes", &[]),
            Some(24_318_808.0 * 1024.0)
        );
        assert_eq!(set.get("hostwatch_memory_buffers_bytes", &[]), Some(18_688.0 * 1024.0));
        assert_eq!(set.get("hostwatch_memory_cached_bytes", &[]), Some(907_176.0 * 1024.0));
        assert_eq!(set.get("hostwatch_memory_dirty_bytes", &[]), Some(147_456.0));
        assert_eq!(set.get("hostwatch_memory_anon_bytes", &[]), Some(5052.0 * 1024.0));
        assert_eq!(set.get("hostwatch_memory_shmem_bytes", &[]), Some(8856.0 * 1024.0));
        assert_eq!(
            set.get("hostwatch_memory_slab_reclaimable_bytes", &[]),
            Some(98_372.0 * 1024.0)
        );
        assert_eq!(
            set.get("hostwatch_memory_slab_unreclaimable_bytes", &[]),
            Some(25_732.0 * 1024.0)
        );
        assert_eq!(set.get("hostwatch_memory_percpu_bytes", &[]), Some(712.0 * 1024.0));
        assert_eq!(
            set.get("hostwatch_memory_committed_bytes", &[]),
            Some(48_236.0 * 1024.0)
        );
        // The VM has no swap: present and zero, not absent.
        assert_eq!(set.get("hostwatch_memory_swap_total_bytes", &[]), Some(0.0));
        assert_eq!(set.get("hostwatch_memory_writeback_bytes", &[]), Some(0.0));
        let exported = set.families().count();
        assert_eq!(exported, FIELDS.len(), "every field is in the 6.18 fixture:\n{set}");
    }

    #[test]
    fn fields_an_older_kernel_lacks_are_absent() {
        // The shape of a 3.10 kernel's meminfo: no MemAvailable, Percpu or Hugetlb.
        let tree = TempTree::new(&[(
            "proc/meminfo",
            "MemTotal:        1015024 kB\nMemFree:          151564 kB\nBuffers:           19508 kB\n\
             Cached:           436784 kB\nHugePages_Total:       0\nHugepagesize:       2048 kB\n",
        )]);
        let mut memory = (SPEC.build)(&Context::new(tree.paths(), Default::default())).expect("build");
        let mut set = MetricSet::default();
        memory.collect(&mut set).expect("collects");
        assert_eq!(set.get("hostwatch_memory_total_bytes", &[]), Some(1_015_024.0 * 1024.0));
        assert_eq!(set.get("hostwatch_memory_cached_bytes", &[]), Some(436_784.0 * 1024.0));
        assert_eq!(set.get("hostwatch_memory_available_bytes", &[]), None);
        assert_eq!(set.families().count(), 4);
    }

    #[test]
    fn malformed_line_is_a_parse_error_naming_it() {
        for (text, reason) in [
            (
                "MemTotal: 1 kB\nMemFree: 2 kB\nMemAvailable: lots kB\n",
                "not an unsigned integer: \"lots\"",
            ),
            (
                "MemTotal: 1 kB\nMemFree: 2 kB\nMemAvailable 3 kB\n",
                "no \"name:\" prefix",
            ),
            (
                "MemTotal: 1 kB\nMemFree: 2 kB\nMemAvailable: 3 MB\n",
                "MemAvailable is not in kB",
            ),
            (
                "MemTotal: 1 kB\nMemFree: 2 kB\nUnknownField: 3 kB x\n",
                "unexpected \"x\" after the unit",
            ),
        ] {
            let tree = TempTree::new(&[("proc/meminfo", text)]);
            let mut memory = (SPEC.build)(&Context::new(tree.paths(), Default::default())).expect("build");
            let mut set = MetricSet::default();
            let error = memory.collect(&mut set).expect_err("must fail").to_string();
            assert!(error.ends_with(&format!("meminfo line 3: {reason}")), "{error}");
            // What came before the bad line is still published.
            assert_eq!(set.get("hostwatch_memory_free_bytes", &[]), Some(2048.0));
        }
    }

    #[test]
    fn missing_file_means_unavailable() {
        let error = (SPEC.build)(&Context::new(
            HostPaths::new("/nonexistent", "/nonexistent"),
            Default::default(),
        ))
        .err();
        assert!(error.is_some_and(|e| e.reason.starts_with("no memory statistics: /nonexistent/meminfo")));
    }
}
