//! `process`: the agent's own cost, as the standard `process_*` metrics of
//! Prometheus client libraries.
//!
//! Reads `/proc/self/{stat,status,limits,fd}` and `btime` from `/proc/stat` of
//! the real procfs, never the `--path.procfs` root: this describes the agent
//! process, not the host it watches. Needs no privilege. The agent's own cost is
//! a product feature, so it is always collected.
//!
//! Emits `process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_start_time_seconds`.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use crate::collector::{Collector, CollectorSpec};
use crate::config::collector_section;
use crate::error::{CollectError, Unavailable};
use crate::procfile::{ProcFile, parse_u64};
use crate::sample::{Desc, MetricSet};

collector_section! {
    /// `[collectors.process]`: no options beyond the schedule.
    pub struct Config {}
}

pub static SPEC: CollectorSpec = CollectorSpec {
    name: "process",
    needs: "procfs: /proc/self (the agent's own process)",
    default_interval: Duration::from_secs(1),
    section: |config| &config.process,
    build: |_| Ok(Box::new(SelfProcess::new()?)),
};

static CPU: Desc = Desc::counter(
    "process_cpu_seconds_total",
    "Total user and system CPU time spent in seconds.",
    &[],
);
static RESIDENT: Desc = Desc::gauge("process_resident_memory_bytes", "Resident memory size in bytes.", &[]);
static VIRTUAL: Desc = Desc::gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", &[]);
static OPEN_FDS: Desc = Desc::gauge("process_open_fds", "Number of open file descriptors.", &[]);
static MAX_FDS: Desc = Desc::gauge("process_max_fds", "Maximum number of open file descriptors.", &[]);
static START_TIME: Desc = Desc::gauge(
    "process_start_time_seconds",
    "Start time of the process since unix epoch in seconds.",
    &[],
);

/// USER_HZ, fixed at 100 by the kernel ABI (see `cpu`).
const USER_HZ: f64 = 100.0;

#[derive(Debug)]
struct SelfProcess {
    stat: ProcFile,
    status: ProcFile,
    fd_dir: PathBuf,
    /// Neither changes while the process lives, so both are read once.
    start_time: f64,
    max_fds: f64,
}

impl SelfProcess {
    fn new() -> Result<Self, Unavailable> {
        let unavailable = |error: CollectError| Unavailable::new(error.to_string());
        let mut stat = ProcFile::require(PathBuf::from("/proc/self/stat"), "no procfs")?;
        let start_ticks = stat_field(stat.read().map_err(unavailable)?.text, 22)
            .ok_or_else(|| Unavailable::new("unexpected /proc/self/stat"))?;
        let mut host_stat = ProcFile::new(PathBuf::from("/proc/stat"));
        let boot_time = host_stat
            .read()
            .map_err(unavailable)?
            .text
            .lines()
            .find_map(|line| line.strip_prefix("btime "))
            .and_then(|value| parse_u64(value.trim()).ok())
            .ok_or_else(|| Unavailable::new("no btime in /proc/stat"))?;
        let mut limits = ProcFile::new(PathBuf::from("/proc/self/limits"));
        let max_fds = limits
            .read()
            .map_err(unavailable)?
            .text
            .lines()
            .find_map(|line| line.strip_prefix("Max open files"))
            .and_then(|rest| rest.split_ascii_whitespace().next())
            .and_then(|soft| parse_u64(soft).ok())
            .ok_or_else(|| Unavailable::new("no open-files limit in /proc/self/limits"))?;
        Ok(Self {
            stat,
            status: ProcFile::new(PathBuf::from("/proc/self/status")),
            fd_dir: PathBuf::from("/proc/self/fd"),
            start_time: boot_time as f64 + start_ticks as f64 / USER_HZ,
            max_fds: max_fds as f64,
        })
    }
}

impl Collector for SelfProcess {
    fn collect(&mut self, out: &mut MetricSet) -> Result<(), CollectError> {
        let stat = self.stat.read()?;
        let fields = (
            stat_field(stat.text, 14),
            stat_field(stat.text, 15),
            stat_field(stat.text, 23),
        );
        let (Some(utime), Some(stime), Some(vsize)) = fields else {
            return Err(stat.error(1, "fewer fields than expected"));
        };
        out.push(&CPU, &[], (utime + stime) as f64 / USER_HZ);
        out.push(&VIRTUAL, &[], vsize as f64);

        let status = self.status.read()?;
        let rss_kib = status
            .text
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_ascii_whitespace().next())
            .and_then(|kib| parse_u64(kib).ok());
        match rss_kib {
            Some(kib) => out.push(&RESIDENT, &[], (kib * 1024) as f64),
            None => return Err(status.error(0, "no VmRSS line")),
        }

        let open = fs::read_dir(&self.fd_dir)
            .map_err(|source| CollectError::Io {
                path: self.fd_dir.clone(),
                source,
            })?
            .count();
        out.push(&OPEN_FDS, &[], open as f64);
        out.push(&MAX_FDS, &[], self.max_fds);
        out.push(&START_TIME, &[], self.start_time);
        Ok(())
    }
}

/// Field `n` (1-based, as in proc(5)) of a `/proc/PID/stat` line. The command
/// name (field 2) may hold spaces and parentheses, so counting starts after the
/// last `)`.
fn stat_field(stat: &str, n: usize) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(n.checked_sub(3)?)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_odd_command_names() {
        let line = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1 0 12345 1048576 300";
        assert_eq!(stat_field(line, 3), None); // "S" is not a number
        assert_eq!(stat_field(line, 14), Some(250));
        assert_eq!(stat_field(line, 15), Some(75));
        assert_eq!(stat_field(line, 22), Some(12345));
        assert_eq!(stat_field(line, 23), Some(1_048_576));
        assert_eq!(stat_field(line, 24), Some(300));
        assert_eq!(stat_field(line, 40), None);
    }

    #[test]
    fn reports_this_process() {
        let mut collector = (SPEC.build)(&Default::default()).expect("procfs is mounted");
        let mut set = MetricSet::default();
        collector.collect(&mut set).expect("collects");
        assert!(
            set.get("process_resident_memory_bytes", &[])
                .is_some_and(|rss| rss > 1024.0 * 1024.0)
        );
        assert!(set.get("process_open_fds", &[]).is_some_and(|fds| fds >= 3.0));
        let start = set.get("process_start_time_seconds", &[]).expect("start time");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        assert!((now - 600.0..=now + 1.0).contains(&start), "start {start} now {now}");
    }
}
