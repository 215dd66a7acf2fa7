//! Where the host's kernel interfaces are mounted.
//!
//! Reads nothing itself. Every host file a collector opens is built from these
//! roots, so a test (or a containerised agent, like node_exporter's
//! `--path.procfs`) can point them at a fixture tree or at the host's mounts.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPaths {
    procfs: PathBuf,
    sysfs: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        Self {
            procfs: PathBuf::from("/proc"),
            sysfs: PathBuf::from("/sys"),
        }
    }
}

impl HostPaths {
    pub fn new(procfs: impl Into<PathBuf>, sysfs: impl Into<PathBuf>) -> Self {
        Self {
            procfs: procfs.into(),
            sysfs: sysfs.into(),
        }
    }

    pub fn procfs(&self) -> &Path {
        &self.procfs
    }

    pub fn sysfs(&self) -> &Path {
        &self.sysfs
    }

    /// `relative` under the procfs root, e.g. `proc("net/dev")`.
    pub fn proc(&self, relative: &str) -> PathBuf {
        self.procfs.join(relative)
    }

    /// `relative` under the sysfs root, e.g. `sys("fs/cgroup")`.
    pub fn sys(&self, relative: &str) -> PathBuf {
        self.sysfs.join(relative)
    }
}
