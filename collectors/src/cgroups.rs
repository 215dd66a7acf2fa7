//! `cgroups`: memory cgroups that were removed but that the kernel has not
//! freed yet ("dying" or "zombie" memcgs).
//!
//! A removed memory cgroup stays allocated while pages charged to it (page
//! cache, kernel objects) remain. Thousands of them accumulate on hosts that
//! create a cgroup per job or container, and reclaim and statistics flushing
//! then walk every one: a known cause of one core pinned in system time with no
//! process to blame.
//!
//! On cgroup v2 (the memory controller listed in `SYSFS/fs/cgroup/cgroup.controllers`)
//! it reads `SYSFS/fs/cgroup/cgroup.stat` of the root: live cgroups are
//! `nr_descendants` plus the root, dying ones `nr_dying_descendants`. These
//! count every cgroup, not only those with the memory controller enabled; where
//! it is enabled throughout the tree, as systemd does by default, they agree.
//! On cgroup v1 it reads `PROCFS/cgroups`, whose memory line counts the
//! hierarchy's cgroups dying ones included, and walks `SYSFS/fs/cgroup/memory`
//! counting directories: the difference is dying.
//! `/proc/cgroups` is not read on v2: since 6.11 it lists only v1 controllers,
//! and the kernel logs a warning when it is read on a v2-only host.
//!
//! Needs no privilege, but the host's cgroup namespace and mounts: in a
//! container the walk sees only the container's subtree while /proc/cgroups
//! counts the whole host, and v1 would report the difference as dying.
//! The v1 walk costs one directory read per cgroup, hence the 10 s default.
//!
//! Emits `hostwatch_cgroups_memory_live`, `hostwatch_cgroups_memory_dying`, and
//! on v1 `hostwatch_cgroups_memory_kernel`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::collector::{Collector, CollectorSpec};
use crate::config::collector_section;
use crate::error::{CollectError, Unavailable};
use crate::paths::HostPaths;
use crate::procfile::{ProcFile, parse_u64};
use crate::sample::{Desc, MetricSet};

collector_section! {
    /// `[collectors.cgroups]`: no options beyond the schedule.
    pub struct Config {}
}

pub static SPEC: CollectorSpec = CollectorSpec {
    name: "cgroups",
    needs: "sysfs: fs/cgroup/cgroup.stat (v2) or fs/cgroup/memory with procfs /proc/cgroups (v1); host cgroup namespace",
    default_interval: Duration::from_secs(10),
    section: |config| &config.cgroups,
    build: |context| build(&context.paths),
};

// No `_count` suffix: Prometheus reserves it for histograms and summaries.
static KERNEL: Desc = Desc::gauge(
    "hostwatch_cgroups_memory_kernel",
    "Memory cgroups the kernel holds, live and dying (num_cgroups of the memory line in /proc/cgroups; cgroup v1 only).",
    &[],
);
static LIVE: Desc = Desc::gauge(
    "hostwatch_cgroups_memory_live",
    "Memory cgroups that exist as directories, the root included.",
    &[],
);
static DYING: Desc = Desc::gauge(
    "hostwatch_cgroups_memory_dying",
    "Memory cgroups removed but not yet freed because charged pages pin them; thousands of them make reclaim \
     and stat flushing walk each one, a known cause of a core stuck in system time.",
    &[],
);

fn build(paths: &HostPaths) -> Result<Box<dyn Collector>, Unavailable> {
    let controllers = paths.sys("fs/cgroup/cgroup.controllers");
    // A missing or unreadable file just means the root is not a v2 mount.
    let v2_memory =
        fs::read_to_string(&controllers).is_ok_and(|text| text.split_ascii_whitespace().any(|name| name == "memory"));
    if v2_memory {
        return Ok(Box::new(V2 {
            stat: ProcFile::require(paths.sys("fs/cgroup/cgroup.stat"), "cgroup v2 root without cgroup.stat")?,
        }));
    }
    let root = paths.sys("fs/cgroup/memory");
    if !root.is_dir() {
        return Err(Unavailable::new(format!(
            "no memory cgroup hierarchy: memory is not in {} (v2) and {} is not a directory (v1)",
            controllers.display(),
            root.display()
        )));
    }
    Ok(Box::new(V1 {
        cgroups: ProcFile::require(paths.proc("cgroups"), "cgroup v1 without /proc/cgroups")?,
        root,
        pending: Vec::new(),
    }))
}

/// The memory controller on the unified (v2) hierarchy.
#[derive(Debug)]
struct V2 {
    stat: ProcFile,
}

impl Collector for V2 {
    fn collect(&mut self, out: &mut MetricSet) -> Result<(), CollectError> {
        let stat = self.stat.read()?;
        let (mut descendants, mut dying) = (None, None);
        for (index, line) in stat.text.lines().enumerate() {
            let mut fields = line.split_ascii_whitespace();
            let slot = match fields.next() {
                Some("nr_descendants") => &mut descendants,
                Some("nr_dying_descendants") => &mut dying,
                // Per-controller lines (nr_subsys_*, 6.11+) and whatever comes next.
                _ => continue,
            };
            let value = fields.next().ok_or_else(|| "no value".to_string()).and_then(parse_u64);
            *slot = Some(value.map_err(|reason| stat.error(index + 1, reason))?);
        }
        let (Some(descendants), Some(dying)) = (descendants, dying) else {
            return Err(stat.error(0, "no nr_descendants or nr_dying_descendants line"));
        };
        out.push(&LIVE, &[], descendants.saturating_add(1) as f64);
        out.push(&DYING, &[], dying as f64);
        Ok(())
    }
}

/// The memory controller on its own v1 hierarchy.
#[derive(Debug)]
struct V1 {
    cgroups: ProcFile,
    root: PathBuf,
    /// Directories still to visit; kept between walks for its capacity.
    pending: Vec<PathBuf>,
}

impl Collector for V1 {
    fn collect(&mut self, out: &mut MetricSet) -> Result<(), CollectError> {
        let kernel = memory_cgroups(&mut self.cgroups)?;
        let live = count_directories(&self.root, &mut self.pending)?;
        out.push(&KERNEL, &[], kernel as f64);
        out.push(&LIVE, &[], live as f64);
        // The count and the walk are not atomic: a cgroup created between them
        // can make live exceed the kernel's count for one collection.
        out.push(&DYING, &[], kernel.saturating_sub(live) as f64);
        Ok(())
    }
}

/// `num_cgroups` of the memory line of `/proc/cgroups`
/// (`#subsys_name hierarchy num_cgroups enabled`).
fn memory_cgroups(file: &mut ProcFile) -> Result<u64, CollectError> {
    let cgroups = file.read()?;
    for (index, line) in cgroups.text.lines().enumerate() {
        let mut fields = line.split_ascii_whitespace();
        if fields.next() != Some("memory") {
            continue;
        }
        let count = fields
            .nth(1)
            .ok_or_else(|| "no num_cgroups column".to_string())
            .and_then(parse_u64);
        return count.map_err(|reason| cgroups.error(index + 1, reason));
    }
    Err(cgroups.error(0, "no memory controller line"))
}

/// Directories under `root`, `root` included.
fn count_directories(root: &Path, pending: &mut Vec<PathBuf>) -> Result<u64, CollectError> {
    let io_error = |path: &Path, source| CollectError::Io {
        path: path.to_path_buf(),
        source,
    };
    pending.clear();
    pending.push(root.to_path_buf());
    let mut count = 0;
    while let Some(dir) = pending.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            // Removed since its parent was listed: no longer live.
            Err(error) if error.kind() == io::ErrorKind::NotFound && dir != root => continue,
            Err(source) => return Err(io_error(&dir, source)),
        };
        count += 1;
        for entry in entries {
            let entry = entry.map_err(|source| io_error(&dir, source))?;
            let file_type = entry.file_type().map_err(|source| io_error(&entry.path(), source))?;
            if file_type.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Context;
    use crate::testing::{TempTree, collect_fixture};

    fn collect(tree: &TempTree) -> (MetricSet, Result<(), CollectError>) {
        let mut cgroups = (SPEC.build)(&Context::new(tree.paths(), Default::default())).expect("build");
        let mut set = MetricSet::default();
        let result = cgroups.collect(&mut set);
        (set, result)
    }

    #[test]
    fn v1_counts_from_fixture() {
        let set = collect_fixture(&SPEC, "basic");
        // /proc/cgroups counts 41 memory cgroups; the hierarchy has 3 directories.
        assert_eq!(set.get("hostwatch_cgroups_memory_kernel", &[]), Some(41.0));
        assert_eq!(set.get("hostwatch_cgroups_memory_live", &[]), Some(3.0));
        assert_eq!(set.get("hostwatch_cgroups_memory_dying", &[]), Some(38.0));
    }

    #[test]
    fn v2_counts_from_fixture() {
        let set = collect_fixture(&SPEC, "cgroupv2");
        assert_eq!(set.get("hostwatch_cgroups_memory_live", &[]), Some(48.0));
        assert_eq!(set.get("hostwatch_cgroups_memory_dying", &[]), Some(1173.0));
        // /proc/cgroups is a v1 interface: not read, not exported.
        assert_eq!(set.get("hostwatch_cgroups_memory_kernel", &[]), None);
    }

    #[test]
    fn v1_live_never_exceeds_kernel_count() {
        let tree = TempTree::new(&[
            (
                "proc/cgroups",
                "#subsys_name\thierarchy\tnum_cgroups\tenabled\nmemory\t4\t2\t1\n",
            ),
            ("sys/fs/cgroup/memory/a/b/", ""),
            ("sys/fs/cgroup/memory/c/", ""),
            ("sys/fs/cgroup/memory/memory.usage_in_bytes", "4096\n"),
        ]);
        let (set, result) = collect(&tree);
        result.expect("collects");
        assert_eq!(set.get("hostwatch_cgroups_memory_live", &[]), Some(4.0));
        assert_eq!(set.get("hostwatch_cgroups_memory_dying", &[]), Some(0.0));
    }

    #[test]
    fn malformed_lines_are_parse_errors_naming_them() {
        let header = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t1\t1\t1\n";
        let v1 = |memory_line: &str| {
            TempTree::new(&[
                ("proc/cgroups", &format!("{header}{memory_line}")),
                ("sys/fs/cgroup/memory/", ""),
            ])
        };
        let (_, result) = collect(&v1("memory\t4\tmany\t1\n"));
        let error = result.expect_err("must fail").to_string();
        assert!(
            error.ends_with("cgroups line 3: not an unsigned integer: \"many\""),
            "{error}"
        );
        let (_, result) = collect(&v1("memory\t4\n"));
        let error = result.expect_err("must fail").to_string();
        assert!(error.ends_with("cgroups line 3: no num_cgroups column"), "{error}");
        let (_, result) = collect(&v1(""));
        let error = result.expect_err("must fail").to_string();
        assert!(error.ends_with("cgroups line 0: no memory controller line"), "{error}");

        let v2 = |stat: &str| {
            TempTree::new(&[
                ("sys/fs/cgroup/cgroup.controllers", "cpu io memory pids\n"),
                ("sys/fs/cgroup/cgroup.stat", stat),
            ])
        };
        let (_, result) = collect(&v2("nr_descendants 3\nnr_dying_descendants -1\n"));
        let error = result.expect_err("must fail").to_string();
        assert!(
            error.ends_with("cgroup.stat line 2: not an unsigned integer: \"-1\""),
            "{error}"
        );
        let (_, result) = collect(&v2("nr_descendants 3\n"));
        let error = result.expect_err("must fail").to_string();
        assert!(error.ends_with("cgroup.stat line 0: no nr_descendants or nr_dying_descendants line"));
    }

    #[test]
    fn no_memory_hierarchy_means_unavailable() {
        // This VM's own unified mount (hugetlb only) as if it were the root: v2 without memory.
        let tree = TempTree::new(&[
            ("sys/fs/cgroup/cgroup.controllers", "hugetlb\n"),
            (
                "sys/fs/cgroup/cgroup.stat",
                "nr_descendants 0\nnr_dying_descendants 0\n",
            ),
        ]);
        let error = (SPEC.build)(&Context::new(tree.paths(), Default::default())).err();
        assert!(
            error.as_ref().is_some_and(
                |e| e.reason.starts_with("no memory cgroup hierarchy: memory is not in ")
                    && e.reason.ends_with("fs/cgroup/memory is not a directory (v1)")
            ),
            "{error:?}"
        );
        let error = (SPEC.build)(&Context::new(
            HostPaths::new("/nonexistent", "/nonexistent"),
            Default::default(),
        ))
        .err();
        assert!(error.is_some_and(|e| e.reason.starts_with("no memory cgroup hierarchy")));
    }

    #[test]
    fn v1_without_proc_cgroups_means_unavailable() {
        let tree = TempTree::new(&[("sys/fs/cgroup/memory/", "")]);
        let error = (SPEC.build)(&Context::new(tree.paths(), Default::default())).err();
        assert!(error.is_some_and(|e| e.reason.starts_with("cgroup v1 without /proc/cgroups: ")));
    }
}
