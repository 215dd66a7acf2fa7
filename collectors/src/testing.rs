//! Test helpers: fixture roots under `tests/fixtures/<name>/{proc,sys}`.

use std::path::PathBuf;

use crate::collector::CollectorSpec;
use crate::config::CollectorsConfig;
use crate::paths::HostPaths;
use crate::sample::MetricSet;

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
    let mut collector = (spec.build)(&fixture_paths(name), config).expect("collector builds on the fixture");
    let mut set = MetricSet::default();
    collector.collect(&mut set).expect("collection succeeds on the fixture");
    set
}
