//! `netdev`: per-interface traffic, TCP retransmissions, and per-CPU packet
//! processing in softirq.
//!
//! Reads `PROCFS/net/dev`, `PROCFS/net/snmp` and `PROCFS/net/softnet_stat`;
//! needs no privilege. These are the agent's network namespace's interfaces, so
//! the agent must run in the host's. `net/dev` is required; a kernel without the
//! other two (no IPv4, a trimmed procfs) just lacks their series.
//!
//! Interfaces are chosen by the `include` and `exclude` patterns, then capped at
//! `max_interfaces` in file order: hosts with a veth per container can have
//! thousands, each worth eight series. The overflow is counted, not hidden.
//! TCP columns are found by their header names: kernels add columns
//! (`InCsumErrors` in 3.10), so a position is no contract. `softnet_stat` rows
//! exist only for online CPUs, so the CPU number is the kernel's own column
//! where it prints one (5.10+), the row otherwise; its counters are 32-bit and
//! wrap.
//!
//! Emits `hostwatch_net_{receive,transmit}_{bytes,packets,errors,drops}_total{interface}`,
//! `hostwatch_net_interfaces_dropped`, `hostwatch_tcp_sent_segments_total`,
//! `hostwatch_tcp_retransmitted_segments_total`,
//! `hostwatch_softnet_processed_packets_total{cpu}`,
//! `hostwatch_softnet_dropped_packets_total{cpu}`, `hostwatch_softnet_time_squeezed_total{cpu}`.

use std::fmt::Write as _;
use std::time::Duration;

use crate::collector::{Collector, CollectorSpec};
use crate::config::{Pattern, Selector, collector_section};
use crate::error::{CollectError, Unavailable};
use crate::paths::HostPaths;
use crate::procfile::{ProcFile, parse_u64};
use crate::sample::{Desc, MetricSet};

collector_section! {
    /// `[collectors.netdev]`: which interfaces to export.
    pub struct Config {
        /// Export only interfaces whose whole name matches this regular expression
        /// (all when absent).
        pub include: Option<Pattern> = None,
        /// Never export interfaces whose whole name matches this regular expression.
        pub exclude: Option<Pattern> = None,
        /// Export at most this many of the selected interfaces, in the kernel's
        /// order; the rest are counted in `hostwatch_net_interfaces_dropped`.
        pub max_interfaces: usize = 256,
    }
}

pub static SPEC: CollectorSpec = CollectorSpec {
    name: "netdev",
    needs: "procfs: /proc/net/{dev,snmp,softnet_stat} (host network namespace)",
    default_interval: Duration::from_secs(1),
    section: |config| &config.netdev,
    build: |context| Ok(Box::new(NetDev::new(&context.paths, &context.config.netdev)?)),
};

static RECEIVE_BYTES: Desc = Desc::counter(
    "hostwatch_net_receive_bytes_total",
    "Bytes received by the interface.",
    &["interface"],
);
static RECEIVE_PACKETS: Desc = Desc::counter(
    "hostwatch_net_receive_packets_total",
    "Packets received by the interface.",
    &["interface"],
);
static RECEIVE_ERRORS: Desc = Desc::counter(
    "hostwatch_net_receive_errors_total",
    "Receive errors the driver reported (bad CRC, frame or length, overruns).",
    &["interface"],
);
static RECEIVE_DROPS: Desc = Desc::counter(
    "hostwatch_net_receive_drops_total",
    "Received packets dropped by the driver or the stack (no buffer, full backlog, unknown protocol).",
    &["interface"],
);
static TRANSMIT_BYTES: Desc = Desc::counter(
    "hostwatch_net_transmit_bytes_total",
    "Bytes transmitted by the interface.",
    &["interface"],
);
static TRANSMIT_PACKETS: Desc = Desc::counter(
    "hostwatch_net_transmit_packets_total",
    "Packets transmitted by the interface.",
    &["interface"],
);
static TRANSMIT_ERRORS: Desc = Desc::counter(
    "hostwatch_net_transmit_errors_total",
    "Transmit errors the driver reported.",
    &["interface"],
);
static TRANSMIT_DROPS: Desc = Desc::counter(
    "hostwatch_net_transmit_drops_total",
    "Packets dropped on the way out (full queue, no buffer).",
    &["interface"],
);
static INTERFACES_DROPPED: Desc = Desc::gauge(
    "hostwatch_net_interfaces_dropped",
    "Interfaces selected by include/exclude but not exported because max_interfaces was reached.",
    &[],
);
static TCP_SENT: Desc = Desc::counter(
    "hostwatch_tcp_sent_segments_total",
    "TCP segments sent (OutSegs of /proc/net/snmp).",
    &[],
);
static TCP_RETRANSMITTED: Desc = Desc::counter(
    "hostwatch_tcp_retransmitted_segments_total",
    "TCP segments retransmitted (RetransSegs of /proc/net/snmp).",
    &[],
);
static SOFTNET_PROCESSED: Desc = Desc::counter(
    "hostwatch_softnet_processed_packets_total",
    "Packets the CPU took off its backlog or NIC queues in softirq (32-bit, wraps).",
    &["cpu"],
);
static SOFTNET_DROPPED: Desc = Desc::counter(
    "hostwatch_softnet_dropped_packets_total",
    "Packets dropped because the CPU's backlog was full (net.core.netdev_max_backlog; 32-bit, wraps).",
    &["cpu"],
);
static SOFTNET_TIME_SQUEEZED: Desc = Desc::counter(
    "hostwatch_softnet_time_squeezed_total",
    "Times the CPU's receive softirq ran out of budget or time with packets left (32-bit, wraps).",
    &["cpu"],
);

/// The `/proc/net/dev` columns after `name:`, fixed since Linux 2.6: eight
/// receive counters then eight transmit counters.
pub(crate) const DEV_COLUMNS: usize = 16;
pub(crate) const RX_BYTES: usize = 0;
const RX_PACKETS: usize = 1;
const RX_ERRORS: usize = 2;
const RX_DROPS: usize = 3;
pub(crate) const TX_BYTES: usize = 8;
const TX_PACKETS: usize = 9;
const TX_ERRORS: usize = 10;
const TX_DROPS: usize = 11;

/// The `softnet_stat` column holding the CPU number, where the kernel prints it.
const SOFTNET_CPU_COLUMN: usize = 12;

#[derive(Debug)]
struct NetDev {
    dev: ProcFile,
    snmp: Option<ProcFile>,
    softnet: Option<ProcFile>,
    selector: Selector,
    max_interfaces: usize,
    /// The `cpu` label being written, kept for its capacity.
    cpu_label: String,
}

impl NetDev {
    fn new(paths: &HostPaths, config: &Config) -> Result<Self, Unavailable> {
        let optional = |relative: &str| Some(ProcFile::new(paths.proc(relative))).filter(|file| file.path().exists());
        Ok(Self {
            dev: ProcFile::require(paths.proc("net/dev"), "no network device statistics")?,
            snmp: optional("net/snmp"),
            softnet: optional("net/softnet_stat"),
            selector: Selector {
                include: config.include.clone(),
                exclude: config.exclude.clone(),
            },
            max_interfaces: config.max_interfaces,
            cpu_label: String::new(),
        })
    }
}

impl Collector for NetDev {
    fn collect(&mut self, out: &mut MetricSet) -> Result<(), CollectError> {
        // The files are independent: a bad one must not hide what the others say.
        let dev = self.dev.read().and_then(|dev| {
            interfaces(out, dev.text, &self.selector, self.max_interfaces)
                .map_err(|(line, reason)| dev.error(line, reason))
        });
        let snmp = self.snmp.as_mut().map_or(Ok(()), |snmp| {
            let snmp = snmp.read()?;
            tcp(out, snmp.text).map_err(|(line, reason)| snmp.error(line, reason))
        });
        let softnet = self.softnet.as_mut().map_or(Ok(()), |softnet| {
            let softnet = softnet.read()?;
            softnet_rows(out, softnet.text, &mut self.cpu_label).map_err(|(line, reason)| softnet.error(line, reason))
        });
        dev.and(snmp).and(softnet)
    }
}

/// A parse failure: the 1-based line (0 for the whole file) and why.
pub(crate) type LineError = (usize, String);

/// The interface lines of `/proc/net/dev` in file order: each line's 1-based
/// number, the interface name and its counters still unparsed, so a caller
/// parses only the interfaces it keeps.
pub(crate) fn dev_lines(text: &str) -> impl Iterator<Item = Result<(usize, &str, &str), LineError>> {
    // Two header lines, then `name: counters`; names cannot contain ':'.
    text.lines().enumerate().skip(2).map(|(index, line)| {
        let (name, counters) = line
            .split_once(':')
            .ok_or_else(|| (index + 1, "no \"name:\" prefix".to_owned()))?;
        Ok((index + 1, name.trim(), counters))
    })
}

/// The sixteen counters after an interface's `name:`.
pub(crate) fn dev_counters(counters: &str) -> Result<[u64; DEV_COLUMNS], String> {
    let mut fields = counters.split_ascii_whitespace();
    let mut values = [0u64; DEV_COLUMNS];
    for value in &mut values {
        let field = fields
            .next()
            .ok_or_else(|| format!("fewer than {DEV_COLUMNS} counters"))?;
        *value = parse_u64(field)?;
    }
    Ok(values)
}

fn interfaces(out: &mut MetricSet, text: &str, selector: &Selector, max: usize) -> Result<(), LineError> {
    let mut exported = 0;
    let mut dropped = 0;
    for line in dev_lines(text) {
        let (number, name, counters) = line?;
        if !selector.selects(name) {
            continue;
        }
        if exported == max {
            dropped += 1;
            continue;
        }
        let values = dev_counters(counters).map_err(|reason| (number, reason))?;
        for (desc, column) in [
            (&RECEIVE_BYTES, RX_BYTES),
            (&RECEIVE_PACKETS, RX_PACKETS),
            (&RECEIVE_ERRORS, RX_ERRORS),
            (&RECEIVE_DROPS, RX_DROPS),
            (&TRANSMIT_BYTES, TX_BYTES),
            (&TRANSMIT_PACKETS, TX_PACKETS),
            (&TRANSMIT_ERRORS, TX_ERRORS),
            (&TRANSMIT_DROPS, TX_DROPS),
        ] {
            out.push(desc, &[name], values[column] as f64);
        }
        exported += 1;
    }
    out.push(&INTERFACES_DROPPED, &[], dropped as f64);
    Ok(())
}

/// The `Tcp:` header and values line pair of `/proc/net/snmp`.
fn tcp(out: &mut MetricSet, text: &str) -> Result<(), LineError> {
    let mut header = None;
    for (index, line) in text.lines().enumerate() {
        let Some(rest) = line.strip_prefix("Tcp:") else {
            continue;
        };
        let Some((header_index, names)) = header else {
            header = Some((index, rest));
            continue;
        };
        let (mut sent, mut retransmitted) = (None, None);
        let mut values = rest.split_ascii_whitespace();
        for name in names.split_ascii_whitespace() {
            let value = values
                .next()
                .ok_or_else(|| (index + 1, "fewer values than the header names".into()))?;
            match name {
                "OutSegs" => sent = Some(parse_u64(value).map_err(|reason| (index + 1, reason))?),
                "RetransSegs" => retransmitted = Some(parse_u64(value).map_err(|reason| (index + 1, reason))?),
                _ => {}
            }
        }
        if values.next().is_some() {
            return Err((index + 1, "more values than the header names".into()));
        }
        let missing = |column| (header_index + 1, format!("no {column} column in the Tcp header"));
        out.push(&TCP_SENT, &[], sent.ok_or_else(|| missing("OutSegs"))? as f64);
        out.push(
            &TCP_RETRANSMITTED,
            &[],
            retransmitted.ok_or_else(|| missing("RetransSegs"))? as f64,
        );
        return Ok(());
    }
    Err((0, "no Tcp header and values lines".into()))
}

/// One row per online CPU, hexadecimal columns: processed, dropped, time_squeeze, ...
fn softnet_rows(out: &mut MetricSet, text: &str, cpu_label: &mut String) -> Result<(), LineError> {
    for (row, line) in text.lines().enumerate() {
        let at = |reason: String| (row + 1, reason);
        let mut fields = line.split_ascii_whitespace().map(parse_hex);
        let mut next = || fields.next().unwrap_or_else(|| Err("truncated row".into())).map_err(at);
        let (processed, dropped, squeezed) = (next()?, next()?, next()?);
        // Columns 3 to 11 are unused or obsolete; nth counts from column 3.
        let cpu = match fields.nth(SOFTNET_CPU_COLUMN - 3) {
            Some(cpu) => cpu.map_err(at)?,
            None => row as u64,
        };
        cpu_label.clear();
        // Writing to a String cannot fail.
        let _ = write!(cpu_label, "{cpu}");
        out.push(&SOFTNET_PROCESSED, &[cpu_label], processed as f64);
        out.push(&SOFTNET_DROPPED, &[cpu_label], dropped as f64);
        out.push(&SOFTNET_TIME_SQUEEZED, &[cpu_label], squeezed as f64);
    }
    Ok(())
}

fn parse_hex(field: &str) -> Result<u64, String> {
    u64::from_str_radix(field, 16).map_err(|_| format!("not a hexadecimal counter: {field:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Context;
    use crate::config::CollectorsConfig;
    use crate::testing::{TempTree, collect_fixture, collect_fixture_with};

    const DEV_HEADER: &str = "Inter-|   Receive                                                |  Transmit\n \
        face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n";

    fn config(include: Option<&str>, exclude: Option<&str>, max_interfaces: usize) -> CollectorsConfig {
        let mut config = CollectorsConfig::default();
        config.netdev.include = include.map(|p| Pattern::new(p).expect("pattern"));
        config.netdev.exclude = exclude.map(|p| Pattern::new(p).expect("pattern"));
        config.netdev.max_interfaces = max_interfaces;
        config
    }

    fn interfaces_of(set: &MetricSet) -> Vec<String> {
        set.families()
            .find(|f| f.desc().name == "hostwatch_net_receive_bytes_total")
            .map(|f| f.series().iter().map(|s| s.label_values()[0].clone()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn interfaces_from_fixture() {
        let set = collect_fixture(&SPEC, "basic");
        assert_eq!(interfaces_of(&set), ["lo", "ifb0", "ifb1", "eth0"]);
        assert_eq!(
            set.get("hostwatch_net_receive_bytes_total", &["eth0"]),
            Some(214_682_743.0)
        );
        assert_eq!(set.get("hostwatch_net_receive_packets_total", &["eth0"]), Some(5492.0));
        assert_eq!(
            set.get("hostwatch_net_transmit_bytes_total", &["eth0"]),
            Some(284_836.0)
        );
        assert_eq!(set.get("hostwatch_net_transmit_packets_total", &["eth0"]), Some(3725.0));
        assert_eq!(set.get("hostwatch_net_receive_bytes_total", &["lo"]), Some(3193.0));
        assert_eq!(set.get("hostwatch_net_transmit_packets_total", &["lo"]), Some(29.0));
        assert_eq!(set.get("hostwatch_net_receive_errors_total", &["eth0"]), Some(0.0));
        assert_eq!(set.get("hostwatch_net_transmit_drops_total", &["ifb1"]), Some(0.0));
        assert_eq!(set.get("hostwatch_net_interfaces_dropped", &[]), Some(0.0));
    }

    #[test]
    fn tcp_and_softnet_from_fixture() {
        let set = collect_fixture(&SPEC, "basic");
        assert_eq!(set.get("hostwatch_tcp_sent_segments_total", &[]), Some(3719.0));
        assert_eq!(set.get("hostwatch_tcp_retransmitted_segments_total", &[]), Some(0.0));
        assert_eq!(set.get("hostwatch_softnet_processed_packets_total", &["0"]), Some(11.0));
        assert_eq!(
            set.get("hostwatch_softnet_processed_packets_total", &["1"]),
            Some(5510.0)
        );
        assert_eq!(set.get("hostwatch_softnet_dropped_packets_total", &["1"]), Some(0.0));
        assert_eq!(set.get("hostwatch_softnet_time_squeezed_total", &["0"]), Some(0.0));
        assert_eq!(set.get("hostwatch_softnet_processed_packets_total", &["2"]), None);
    }

    #[test]
    fn include_exclude_and_cap() {
        let set = collect_fixture_with(&SPEC, "basic", &config(Some("ifb.*|eth0"), Some("ifb1"), 256));
        assert_eq!(interfaces_of(&set), ["ifb0", "eth0"]);
        assert_eq!(set.get("hostwatch_net_interfaces_dropped", &[]), Some(0.0));

        // The cap keeps the first selected interfaces in file order and counts the rest.
        let set = collect_fixture_with(&SPEC, "basic", &config(None, Some("lo"), 2));
        assert_eq!(interfaces_of(&set), ["ifb0", "ifb1"]);
        assert_eq!(set.get("hostwatch_net_transmit_bytes_total", &["eth0"]), None);
        assert_eq!(set.get("hostwatch_net_interfaces_dropped", &[]), Some(1.0));

        let set = collect_fixture_with(&SPEC, "basic", &config(None, None, 0));
        assert!(interfaces_of(&set).is_empty());
        assert_eq!(set.get("hostwatch_net_interfaces_dropped", &[]), Some(4.0));
    }

    #[test]
    fn config_section_parses() {
        let config: CollectorsConfig =
            toml::from_str("[netdev]\ninclude = \"eth.*\"\nexclude = \"eth9\"\nmax_interfaces = 8\n").expect("valid");
        assert_eq!(config.netdev.include, Pattern::new("eth.*").ok());
        assert_eq!(config.netdev.max_interfaces, 8);
        assert_eq!(CollectorsConfig::default().netdev.max_interfaces, 256);
        let error = toml::from_str::<CollectorsConfig>("[netdev]\ninclude = \"(\"\n").err();
        assert!(error.is_some_and(|e| e.to_string().contains("invalid regular expression")));
    }

    #[test]
    fn snmp_columns_are_found_by_name() {
        // A kernel that printed the Tcp columns in another order, after other protocols.
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 2 64\n\
                    Tcp: RetransSegs InSegs MaxConn OutSegs\nTcp: 17 900 -1 1200\n\
                    Udp: InDatagrams\nUdp: 5\n";
        let mut set = MetricSet::default();
        tcp(&mut set, snmp).expect("parses");
        assert_eq!(set.get("hostwatch_tcp_sent_segments_total", &[]), Some(1200.0));
        assert_eq!(set.get("hostwatch_tcp_retransmitted_segments_total", &[]), Some(17.0));

        let missing = "Tcp: InSegs OutSegs\nTcp: 1 2\n";
        assert_eq!(
            tcp(&mut set, missing),
            Err((1, "no RetransSegs column in the Tcp header".into()))
        );
        let short = "Tcp: InSegs OutSegs RetransSegs\nTcp: 1 2\n";
        assert_eq!(
            tcp(&mut set, short),
            Err((2, "fewer values than the header names".into()))
        );
        let long = "Tcp: OutSegs RetransSegs\nTcp: 1 2 3\n";
        assert_eq!(
            tcp(&mut set, long),
            Err((2, "more values than the header names".into()))
        );
        assert_eq!(
            tcp(&mut set, "Tcp: OutSegs\n"),
            Err((0, "no Tcp header and values lines".into()))
        );
    }

    #[test]
    fn softnet_cpu_is_the_kernel_column_or_the_row() {
        // 5.10+: CPU 1 offline, so the second row is CPU 2 (column 12).
        let rows = "0000000b 00000001 00000002 0 0 0 0 0 0 0 0 0 00000000 0 0\n\
                    000000ff 00000000 00000003 0 0 0 0 0 0 0 0 0 0000000a 0 0\n";
        let (mut set, mut label) = (MetricSet::default(), String::new());
        softnet_rows(&mut set, rows, &mut label).expect("parses");
        assert_eq!(
            set.get("hostwatch_softnet_processed_packets_total", &["10"]),
            Some(255.0)
        );
        assert_eq!(set.get("hostwatch_softnet_time_squeezed_total", &["10"]), Some(3.0));
        assert_eq!(set.get("hostwatch_softnet_dropped_packets_total", &["0"]), Some(1.0));

        // Older kernels print 11 columns and no CPU number.
        let rows = "0000000b 00000001 00000002 0 0 0 0 0 0 0 0\n00000010 0 0 0 0 0 0 0 0 0 0\n";
        set.clear();
        softnet_rows(&mut set, rows, &mut label).expect("parses");
        assert_eq!(set.get("hostwatch_softnet_processed_packets_total", &["1"]), Some(16.0));

        assert_eq!(
            softnet_rows(&mut set, "0000000b 00000001 0000zz02\n", &mut label),
            Err((1, "not a hexadecimal counter: \"0000zz02\"".into()))
        );
        assert_eq!(
            softnet_rows(&mut set, "00 00 00\n0000000b 00000001\n", &mut label),
            Err((2, "truncated row".into()))
        );
    }

    #[test]
    fn one_bad_file_is_an_error_and_the_others_still_report() {
        let tree = TempTree::new(&[
            (
                "proc/net/dev",
                &format!(
                    "{DEV_HEADER}    lo: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n  eth0: 5 6 seven 0 0 0 0 0 8 9 0 0 0 0 0 0\n"
                ),
            ),
            ("proc/net/snmp", "Tcp: OutSegs RetransSegs\nTcp: 10 2\n"),
            ("proc/net/softnet_stat", "0000000b 00000001 00000002\n"),
        ]);
        let mut netdev = (SPEC.build)(&Context::new(tree.paths(), Default::default())).expect("build");
        let mut set = MetricSet::default();
        let error = netdev.collect(&mut set).expect_err("must fail").to_string();
        assert!(
            error.ends_with("net/dev line 4: not an unsigned integer: \"seven\""),
            "{error}"
        );
        // Every column lands in its own series.
        for (name, value) in [
            ("receive_bytes", 1.0),
            ("receive_packets", 2.0),
            ("receive_errors", 3.0),
            ("receive_drops", 4.0),
            ("transmit_bytes", 9.0),
            ("transmit_packets", 10.0),
            ("transmit_errors", 11.0),
            ("transmit_drops", 12.0),
        ] {
            assert_eq!(
                set.get(&format!("hostwatch_net_{name}_total"), &["lo"]),
                Some(value),
                "{name}"
            );
        }
        assert_eq!(set.get("hostwatch_net_receive_bytes_total", &["eth0"]), None);
        assert_eq!(set.get("hostwatch_tcp_retransmitted_segments_total", &[]), Some(2.0));
        assert_eq!(set.get("hostwatch_softnet_dropped_packets_total", &["0"]), Some(1.0));
    }

    #[test]
    fn truncated_dev_line_is_a_parse_error() {
        let tree = TempTree::new(&[("proc/net/dev", &format!("{DEV_HEADER}  eth0: 1 2 3\n"))]);
        let mut netdev = (SPEC.build)(&Context::new(tree.paths(), Default::default())).expect("build");
        let error = netdev
            .collect(&mut MetricSet::default())
            .expect_err("must fail")
            .to_string();
        assert!(error.ends_with("net/dev line 3: fewer than 16 counters"), "{error}");
    }

    #[test]
    fn only_net_dev_is_required() {
        let tree = TempTree::new(&[(
            "proc/net/dev",
            &format!("{DEV_HEADER}    lo: 1 2 0 0 0 0 0 0 3 4 0 0 0 0 0 0\n"),
        )]);
        let mut netdev = (SPEC.build)(&Context::new(tree.paths(), Default::default())).expect("build");
        let mut set = MetricSet::default();
        netdev.collect(&mut set).expect("collects");
        assert_eq!(set.get("hostwatch_net_receive_bytes_total", &["lo"]), Some(1.0));
        assert_eq!(set.get("hostwatch_tcp_sent_segments_total", &[]), None);

        let error = (SPEC.build)(&Context::new(
            HostPaths::new("/nonexistent", "/nonexistent"),
            Default::default(),
        ))
        .err();
        assert!(error.is_some_and(|e| {
            e.reason
                .starts_with("no network device statistics: /nonexistent/net/dev")
        }));
    }
}
