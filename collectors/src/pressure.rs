//! `pressure`: time the host's tasks stalled waiting for CPU, memory or I/O,
//! from pressure stall information (PSI).
//!
//! Reads `PROCFS/pressure/{cpu,memory,io}`; needs no privilege, but a kernel
//! with PSI (4.20 or later, `CONFIG_PSI=y`, not booted with `psi=0`). Without
//! it the files are missing or every read fails with EOPNOTSUPP, and the
//! collector reports itself down saying so. Only the `total=` counter is
//! exported: the `avg*` fields are averages the kernel computes over fixed
//! windows, which a rate over the counter reproduces at any window.
//!
//! `some` is time at least one task stalled, `full` time all non-idle tasks
//! stalled at once. Kernels before 5.13 print no `full` line for cpu; newer
//! ones print it as zero at the system level, where it is undefined.
//!
//! Emits `hostwatch_pressure_stalled_seconds_total{resource,scope}`.

use std::time::Duration;

use crate::collector::{Collector, CollectorSpec};
use crate::config::collector_section;
use crate::error::{CollectError, Unavailable};
use crate::paths::HostPaths;
use crate::procfile::{ProcFile, parse_u64};
use crate::sample::{Desc, MetricSet};

collector_section! {
    /// `[collectors.pressure]`: no options beyond the schedule.
    pub struct Config {}
}

pub static SPEC: CollectorSpec = CollectorSpec {
    name: "pressure",
    needs: "procfs: /proc/pressure/{cpu,memory,io} (kernel 4.20+ with PSI enabled)",
    default_interval: Duration::from_secs(1),
    section: |config| &config.pressure,
    build: |context| Ok(Box::new(Pressure::new(&context.paths)?)),
};

static STALLED: Desc = Desc::counter(
    "hostwatch_pressure_stalled_seconds_total",
    "Seconds tasks stalled waiting for a resource: scope \"some\" while at least one task stalled, \
     \"full\" while all non-idle tasks did.",
    &["resource", "scope"],
);

const RESOURCES: [&str; 3] = ["cpu", "memory", "io"];

const NO_PSI: &str =
    "no pressure stall information (kernel older than 4.20, built without CONFIG_PSI, or booted with psi=0)";

#[derive(Debug)]
struct Pressure {
    /// One file per entry of [`RESOURCES`], in the same order.
    files: [ProcFile; 3],
}

impl Pressure {
    fn new(paths: &HostPaths) -> Result<Self, Unavailable> {
        let mut files = RESOURCES.map(|resource| ProcFile::new(paths.proc(&format!("pressure/{resource}"))));
        // Opening is not enough: kernels that create the files even with PSI
        // disabled at boot fail every read instead.
        for file in &mut files {
            file.read().map_err(|error| {
                Unavailable::new(format!("{NO_PSI}: {error}"))
                    .with_remedy("use a kernel with CONFIG_PSI (4.20+) and do not boot it with psi=0")
            })?;
        }
        Ok(Self { files })
    }
}

impl Collector for Pressure {
    fn collect(&mut self, out: &mut MetricSet) -> Result<(), CollectError> {
        // The three files are independent: one unreadable file must not hide the others.
        let mut first_error = None;
        for (resource, file) in RESOURCES.iter().zip(&mut self.files) {
            if let Err(error) = collect_file(out, resource, file) {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn collect_file(out: &mut MetricSet, resource: &str, file: &mut ProcFile) -> Result<(), CollectError> {
    let contents = file.read()?;
    for (index, line) in contents.text.lines().enumerate() {
        stall_line(out, resource, line).map_err(|reason| contents.error(index + 1, reason))?;
    }
    Ok(())
}

/// `some avg10=0.00 avg60=0.00 avg300=0.00 total=12345`, total in microseconds.
fn stall_line(out: &mut MetricSet, resource: &str, line: &str) -> Result<(), String> {
    let mut fields = line.split_ascii_whitespace();
    let Some(scope) = fields.next() else { return Ok(()) };
    if scope != "some" && scope != "full" {
        return Err(format!("unexpected scope {scope:?}"));
    }
    let total = fields
        .find_map(|field| field.strip_prefix("total="))
        .ok_or("no total= field")?;
    let micros = parse_u64(total)?;
    out.push(&STALLED, &[resource, scope], micros as f64 / 1e6);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Context;
    use crate::testing::{TempTree, collect_fixture};

    const STALLED_NAME: &str = "hostwatch_pressure_stalled_seconds_total";

    fn psi_tree(cpu: &str) -> TempTree {
        TempTree::new(&[
            ("proc/pressure/cpu", cpu),
            (
                "proc/pressure/memory",
                "some avg10=0.00 avg60=0.00 avg300=0.00 total=7\n",
            ),
            (
                "proc/pressure/io",
                "some avg10=0.00 avg60=0.00 avg300=0.00 total=2500000\n",
            ),
        ])
    }

    #[test]
    fn seconds_from_fixture() {
        let set = collect_fixture(&SPEC, "basic");
        assert_eq!(set.get(STALLED_NAME, &["cpu", "some"]), Some(12.697_068));
        assert_eq!(set.get(STALLED_NAME, &["cpu", "full"]), Some(0.0));
        assert_eq!(set.get(STALLED_NAME, &["io", "some"]), Some(1.650_648));
        assert_eq!(set.get(STALLED_NAME, &["io", "full"]), Some(0.873_994));
        assert_eq!(set.get(STALLED_NAME, &["memory", "some"]), Some(0.0));
        assert_eq!(set.get(STALLED_NAME, &["memory", "full"]), Some(0.0));
        assert_eq!(set.families().flat_map(|f| f.series()).count(), 6);
    }

    #[test]
    fn cpu_without_full_line_before_5_13() {
        let tree = psi_tree("some avg10=1.00 avg60=0.50 avg300=0.10 total=1500000\n");
        let mut pressure = (SPEC.build)(&Context::new(tree.paths(), Default::default())).expect("build");
        let mut set = MetricSet::default();
        pressure.collect(&mut set).expect("collects");
        assert_eq!(set.get(STALLED_NAME, &["cpu", "some"]), Some(1.5));
        assert_eq!(set.get(STALLED_NAME, &["cpu", "full"]), None);
        assert_eq!(set.get(STALLED_NAME, &["io", "some"]), Some(2.5));
    }

    #[test]
    fn malformed_line_is_a_parse_error_and_other_files_still_report() {
        for (cpu, reason) in [
            (
                "some avg10=0.00 total=1\nfull avg10=0.00 total=x\n",
                "not an unsigned integer: \"x\"",
            ),
            ("some avg10=0.00 total=1\nfull avg10=0.00\n", "no total= field"),
            (
                "some avg10=0.00 total=1\nall avg10=0.00 total=1\n",
                "unexpected scope \"all\"",
            ),
        ] {
            let tree = psi_tree(cpu);
            let mut pressure = (SPEC.build)(&Context::new(tree.paths(), Default::default())).expect("build");
            let mut set = MetricSet::default();
            let error = pressure.collect(&mut set).expect_err("must fail").to_string();
            assert!(error.ends_with(&format!("pressure/cpu line 2: {reason}")), "{error}");
            assert_eq!(set.get(STALLED_NAME, &["cpu", "some"]), Some(0.000_001));
            assert_eq!(set.get(STALLED_NAME, &["memory", "some"]), Some(0.000_007));
            assert_eq!(set.get(STALLED_NAME, &["io", "some"]), Some(2.5));
        }
    }

    #[test]
    fn kernel_without_psi_means_unavailable() {
        let error = (SPEC.build)(&Context::new(
            HostPaths::new("/nonexistent", "/nonexistent"),
            Default::default(),
        ))
        .err();
        assert!(error.is_some_and(|e| e.reason.starts_with(NO_PSI) && e.reason.contains("/nonexistent/pressure/cpu")),);
    }

    #[test]
    fn files_that_cannot_be_read_mean_unavailable() {
        // With psi=0 some kernels keep the files but fail every read (EOPNOTSUPP);
        // a directory in place of the file fails the same first read (EISDIR).
        let tree = TempTree::new(&[
            ("proc/pressure/cpu", "some avg10=0.00 avg60=0.00 avg300=0.00 total=1\n"),
            ("proc/pressure/memory/", ""),
            ("proc/pressure/io", "some avg10=0.00 avg60=0.00 avg300=0.00 total=1\n"),
        ]);
        let error = (SPEC.build)(&Context::new(tree.paths(), Default::default())).err();
        assert!(
            error
                .as_ref()
                .is_some_and(|e| e.reason.starts_with(NO_PSI) && e.reason.contains("pressure/memory: Is a directory")),
            "{error:?}"
        );
    }
}
