//! Who sent the bytes: egress bytes per (cgroup, task) from the BPF program's
//! owner map (bytes sent while the sender's CPU was over the burst gate, see
//! `Backend::gate`), turned into per-fold deltas, with cgroup ids resolved to paths
//! (`/system.slice/backup.service`) and tasks to their command names.
//!
//! Reads the BPF owner map, the cgroup v2 hierarchy under
//! `SYSFS/fs/cgroup` (or `SYSFS/fs/cgroup/unified` on hybrid hosts) and
//! `PROCFS/<pid>/comm`. Needs what the BPF backend needs.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hostwatch_ebpf::maps::NetOwner;
use serde::Serialize;

use super::backend::Backend;
use crate::error::CollectError;
use crate::paths::HostPaths;

/// A burst's sender, as its event names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Contributor {
    pub cgroup: String,
    /// The task on CPU at transmit: the sender for sends in process context,
    /// a bystander for retransmits from softirq.
    pub pid: u32,
    pub comm: String,
    pub bytes: u64,
}

/// How often an unknown cgroup id may cause a walk of the hierarchy.
const REWALK: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct CgroupPaths {
    root: Option<PathBuf>,
    by_id: HashMap<u64, String>,
    walked: Option<Instant>,
}

impl CgroupPaths {
    fn new(paths: &HostPaths) -> Self {
        let unified = paths.sys("fs/cgroup");
        let root = [unified.clone(), unified.join("unified")]
            .into_iter()
            .find(|dir| dir.join("cgroup.controllers").exists());
        Self {
            root,
            by_id: HashMap::new(),
            walked: None,
        }
    }

    fn path(&mut self, id: u64) -> String {
        if !self.by_id.contains_key(&id) && self.walked.is_none_or(|at| at.elapsed() >= REWALK) {
            self.walk();
        }
        self.by_id
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("cgroup-id:{id}"))
    }

    /// A cgroup v2 id is its directory's inode number.
    fn walk(&mut self) {
        self.walked = Some(Instant::now());
        let Some(root) = self.root.clone() else { return };
        self.by_id.clear();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(metadata) = std::fs::metadata(&dir) else {
                continue;
            };
            let relative = dir
                .strip_prefix(&root)
                .map_or_else(|_| String::from("/"), |r| format!("/{}", r.display()));
            self.by_id.insert(metadata.ino(), relative);
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
}

#[derive(Debug)]
pub struct Attribution {
    previous: HashMap<NetOwner, u64>,
    current: Vec<(NetOwner, u64)>,
    /// Bytes per owner in the last two folds. A burst is seen to end only
    /// when the millisecond after it is folded, which can be one fold after
    /// its bytes were read: two folds cover it.
    deltas: Vec<(NetOwner, u64)>,
    /// The last fold's share of `deltas`, and the one before.
    last: Vec<(NetOwner, u64)>,
    prior: Vec<(NetOwner, u64)>,
    cgroups: CgroupPaths,
    procfs: PathBuf,
}

impl Attribution {
    pub fn new(paths: &HostPaths) -> Self {
        Self {
            previous: HashMap::new(),
            current: Vec::new(),
            deltas: Vec::new(),
            last: Vec::new(),
            prior: Vec::new(),
            cgroups: CgroupPaths::new(paths),
            procfs: paths.procfs().to_path_buf(),
        }
    }

    /// Reads the owner map and keeps what each owner sent in this and the
    /// previous interval.
    pub fn update(&mut self, backend: &mut dyn Backend) -> Result<(), CollectError> {
        backend.owners(&mut self.current)?;
        self.prior.clear();
        self.prior.append(&mut self.last);
        self.deltas.clone_from(&self.prior);
        for (owner, total) in &self.current {
            // An owner evicted from the LRU map and seen again starts over.
            let before = self
                .previous
                .get(owner)
                .copied()
                .filter(|before| before <= total)
                .unwrap_or(0);
            if *total > before {
                self.last.push((*owner, total - before));
            }
        }
        for (owner, bytes) in &self.last {
            match self.deltas.iter_mut().find(|(o, _)| o == owner) {
                Some((_, sum)) => *sum += bytes,
                None => self.deltas.push((*owner, *bytes)),
            }
        }
        self.previous.clear();
        self.previous.extend(self.current.iter().copied());
        Ok(())
    }

    /// The `k` largest senders on `series` over the last two folds.
    pub fn top(&mut self, series: u32, k: usize) -> Vec<Contributor> {
        let mut mine: Vec<(NetOwner, u64)> = self
            .deltas
            .iter()
            .filter(|(o, _)| o.series == series)
            .copied()
            .collect();
        mine.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
        mine.truncate(k);
        mine.into_iter()
            .map(|(owner, bytes)| Contributor {
                cgroup: self.cgroups.path(owner.cgroup),
                pid: owner.tgid,
                comm: comm(&self.procfs, owner.tgid),
                bytes,
            })
            .collect()
    }

    /// Bytes per cgroup path sent on `series` in the last fold, and in the
    /// one before when `with_prior` (the caller has not counted it yet).
    pub fn by_cgroup(&mut self, series: u32, with_prior: bool, out: &mut Vec<(String, u64)>) {
        out.clear();
        let prior = if with_prior { self.prior.as_slice() } else { &[] };
        let deltas: Vec<(u64, u64)> = prior
            .iter()
            .chain(&self.last)
            .filter(|(o, _)| o.series == series)
            .map(|(o, b)| (o.cgroup, *b))
            .collect();
        for (cgroup, bytes) in deltas {
            let path = self.cgroups.path(cgroup);
            match out.iter_mut().find(|(p, _)| *p == path) {
                Some((_, total)) => *total += bytes,
                None => out.push((path, bytes)),
            }
        }
    }
}

fn comm(procfs: &Path, pid: u32) -> String {
    if pid == 0 {
        return String::new();
    }
    std::fs::read_to_string(procfs.join(pid.to_string()).join("comm"))
        .map(|c| c.trim_end().to_owned())
        .unwrap_or_default()
}
