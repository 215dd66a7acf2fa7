//! `cpu`: per-core time by mode, context switches and run queue from `/proc/stat`.
//!
//! Reads `PROCFS/stat`; needs no privilege. Per core, never only the aggregate:
//! one core pinned at 100 % system time (a softirq or memcg storm) is invisible
//! in the average of many.
//!
//! Emits `hostwatch_cpu_seconds_total{cpu,mode}`,
//! `hostwatch_cpu_guest_seconds_total{cpu,mode}`,
//! `hostwatch_context_switches_total`, `hostwatch_forks_total`,
//! `hostwatch_procs_running`, `hostwatch_procs_blocked`, `hostwatch_boot_time_seconds`.

use std::time::Duration;

use crate::collector::{Collector, CollectorSpec};
use crate::config::collector_section;
use crate::error::{CollectError, Unavailable};
use crate::paths::HostPaths;
use crate::procfile::{ProcFile, parse_u64};
use crate::sample::{Desc, MetricSet};

collector_section! {
    /// `[collectors.cpu]`: no options beyond the schedule.
    pub struct Config {}
}

pub static SPEC: CollectorSpec = CollectorSpec {
    name: "cpu",
    needs: "procfs: /proc/stat",
    default_interval: Duration::from_secs(1),
    section: |config| &config.cpu,
    build: |context| Ok(Box::new(Cpu::new(&context.paths)?)),
};

static SECONDS: Desc = Desc::counter(
    "hostwatch_cpu_seconds_total",
    "Seconds each CPU spent in each mode (guest time is included in user and nice).",
    &["cpu", "mode"],
);
static GUEST_SECONDS: Desc = Desc::counter(
    "hostwatch_cpu_guest_seconds_total",
    "Seconds each CPU spent running guests, already counted in user and nice.",
    &["cpu", "mode"],
);
static CONTEXT_SWITCHES: Desc = Desc::counter("hostwatch_context_switches_total", "Context switches since boot.", &[]);
static FORKS: Desc = Desc::counter(
    "hostwatch_forks_total",
    "Processes and threads created since boot.",
    &[],
);
static PROCS_RUNNING: Desc = Desc::gauge("hostwatch_procs_running", "Threads runnable or running.", &[]);
static PROCS_BLOCKED: Desc = Desc::gauge("hostwatch_procs_blocked", "Threads blocked waiting for I/O.", &[]);
static BOOT_TIME: Desc = Desc::gauge(
    "hostwatch_boot_time_seconds",
    "When the host booted, in seconds since the epoch.",
    &[],
);

/// `/proc/stat` counts in USER_HZ, which the kernel ABI fixes at 100 on every
/// architecture (sysconf(_SC_CLK_TCK) reports the same).
const USER_HZ: f64 = 100.0;

/// The columns of a `cpuN` line, in order.
const MODES: [&str; 8] = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"];
const GUEST_MODES: [&str; 2] = ["user", "nice"];

#[derive(Debug)]
struct Cpu {
    stat: ProcFile,
}

impl Cpu {
    fn new(paths: &HostPaths) -> Result<Self, Unavailable> {
        Ok(Self {
            stat: ProcFile::require(paths.proc("stat"), "no kernel statistics")?,
        })
    }
}

impl Collector for Cpu {
    fn collect(&mut self, out: &mut MetricSet) -> Result<(), CollectError> {
        let stat = self.stat.read()?;
        for (index, line) in stat.text.lines().enumerate() {
            let mut fields = line.split_ascii_whitespace();
            let Some(key) = fields.next() else { continue };
            let parsed = match key.strip_prefix("cpu") {
                // The aggregate `cpu` line is the sum of the others: derivable, so not exported.
                Some("") => Ok(()),
                Some(core) => core_line(out, core, fields),
                None => match key {
                    "ctxt" => single(out, &CONTEXT_SWITCHES, fields.next()),
                    "processes" => single(out, &FORKS, fields.next()),
                    "procs_running" => single(out, &PROCS_RUNNING, fields.next()),
                    "procs_blocked" => single(out, &PROCS_BLOCKED, fields.next()),
                    "btime" => single(out, &BOOT_TIME, fields.next()),
                    _ => Ok(()),
                },
            };
            parsed.map_err(|reason| stat.error(index + 1, reason))?;
        }
        Ok(())
    }
}

fn core_line<'a>(out: &mut MetricSet, core: &str, mut fields: impl Iterator<Item = &'a str>) -> Result<(), String> {
    if core.is_empty() || !core.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("unexpected CPU name \"cpu{core}\""));
    }
    // Kernels since 2.6.33 print all ten columns; fewer means a truncated line.
    for mode in MODES {
        let ticks = parse_u64(fields.next().ok_or("truncated cpu line")?)?;
        out.push(&SECONDS, &[core, mode], ticks as f64 / USER_HZ);
    }
    for mode in GUEST_MODES {
        let ticks = parse_u64(fields.next().ok_or("truncated cpu line")?)?;
        out.push(&GUEST_SECONDS, &[core, mode], ticks as f64 / USER_HZ);
    }
    Ok(())
}

fn single(out: &mut MetricSet, desc: &'static Desc, field: Option<&str>) -> Result<(), String> {
    let value = parse_u64(field.ok_or_else(|| format!("{} without a value", desc.name))?)?;
    out.push(desc, &[], value as f64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Context;
    use crate::testing::{collect_fixture, fixture_paths};

    #[test]
    fn per_core_seconds_from_fixture() {
        let set = collect_fixture(&SPEC, "basic");
        // The fixture was captured while `dd bs=1` kept CPU 1 in system time.
        assert_eq!(set.get("hostwatch_cpu_seconds_total", &["1", "system"]), Some(17.55));
        assert_eq!(set.get("hostwatch_cpu_seconds_total", &["0", "system"]), Some(10.11));
        assert_eq!(set.get("hostwatch_cpu_seconds_total", &["0", "user"]), Some(24.61));
        assert_eq!(set.get("hostwatch_cpu_seconds_total", &["1", "steal"]), Some(0.05));
        assert_eq!(set.get("hostwatch_cpu_guest_seconds_total", &["0", "user"]), Some(0.0));
        assert_eq!(set.get("hostwatch_context_switches_total", &[]), Some(367_454.0));
        assert_eq!(set.get("hostwatch_forks_total", &[]), Some(4783.0));
        assert_eq!(set.get("hostwatch_procs_running", &[]), Some(2.0));
        assert_eq!(set.get("hostwatch_boot_time_seconds", &[]), Some(1_795_638_482.0));
        // The aggregate line is not exported.
        assert_eq!(set.get("hostwatch_cpu_seconds_total", &["", "user"]), None);
    }

    #[test]
    fn garbage_is_a_parse_error() {
        let mut cpu = (SPEC.build)(&Context::new(fixture_paths("garbage"), Default::default())).expect("build");
        let mut out = MetricSet::default();
        let error = cpu.collect(&mut out).expect_err("garbage must fail");
        assert_eq!(error.kind(), "parse");
        assert!(error.to_string().contains("stat line 2"), "{error}");
    }

    #[test]
    fn missing_file_means_unavailable() {
        let error = (SPEC.build)(&Context::new(
            HostPaths::new("/nonexistent", "/nonexistent"),
            Default::default(),
        ))
        .err();
        assert!(error.is_some_and(|e| e.reason.starts_with("no kernel statistics: /nonexistent/stat")));
    }
}
