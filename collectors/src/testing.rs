//! Test helpers: fixture roots under `tests/fixtures/<name>/{proc,sys}`,
//! small throwaway trees for cases the fixtures do not cover, and whether the
//! root-only tests (BPF, perf, uprobes) can run.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::collector::{CollectorSpec, Context};
use crate::config::CollectorsConfig;
use crate::paths::HostPaths;
use crate::sample::MetricSet;

/// Whether this process's effective uid is root (`/proc/self/status`).
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0")
}

pub fn fixture_root(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

pub fn fixture_paths(name: &str) -> HostPaths {
    let root = fixture_root(name);
    HostPaths::new(root.join("proc"), root.join("sys"))
}

/// Builds `spec` on fixture `name` with the default config and collects once.
pub fn collect_fixture(spec: &CollectorSpec, name: &str) -> MetricSet {
    collect_fixture_with(spec, name, &CollectorsConfig::default())
}

pub fn collect_fixture_with(spec: &CollectorSpec, name: &str, config: &CollectorsConfig) -> MetricSet {
    let mut collector =
        (spec.build)(&Context::new(fixture_paths(name), config.clone())).expect("collector builds on the fixture");
    let mut set = MetricSet::default();
    collector.collect(&mut set).expect("collection succeeds on the fixture");
    set
}

/// A host tree a test writes under the system temp directory, for cases no
/// captured fixture shows (malformed lines, older kernels, missing files).
/// Removed when dropped.
#[derive(Debug)]
pub struct TempTree {
    root: PathBuf,
}

impl TempTree {
    /// Writes each `(path, contents)` under a fresh root; a path ending in `/`
    /// is created as an empty directory instead.
    pub fn new(files: &[(&str, &str)]) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        // Tests run in parallel threads of one process, and several test
        // binaries may run at once: the pid and a counter keep roots apart.
        let root = std::env::temp_dir().join(format!(
            "hostwatch-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let tree = Self { root };
        for (path, contents) in files {
            let full = tree.root.join(path);
            if path.ends_with('/') {
                fs::create_dir_all(&full).expect("create directory");
            } else {
                fs::create_dir_all(full.parent().expect("parent")).expect("create parent");
                fs::write(&full, contents).expect("write file");
            }
        }
        tree
    }

    pub fn paths(&self) -> HostPaths {
        HostPaths::new(self.root.join("proc"), self.root.join("sys"))
    }

    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// Replaces (or creates) one file, as a host's file changes between collections.
    pub fn write(&self, path: &str, contents: &str) {
        let full = self.root.join(path);
        fs::create_dir_all(full.parent().expect("parent")).expect("create parent");
        fs::write(&full, contents).expect("write file");
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        // Best effort: a leftover directory under /tmp must not fail a test.
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// Compares `set`'s plain dump with `tests/golden/<name>.txt`;
/// `UPDATE_GOLDEN=1` rewrites the file.
pub fn assert_golden(name: &str, set: &MetricSet) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/golden")
        .join(format!("{name}.txt"));
    let actual = set.to_string();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::write(&path, &actual).expect("write golden file");
    }
    let expected =
        fs::read_to_string(&path).unwrap_or_else(|_| panic!("{} missing; run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(actual, expected, "output differs from {}", path.display());
}
