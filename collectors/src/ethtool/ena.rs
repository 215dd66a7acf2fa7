//! The ENA driver's statistics, typed: allowance counters, conntrack headroom,
//! ENA Express (SRD), driver health events, per-queue statistics.
//!
//! Reads nothing itself: it interprets one interface's [`Stats`]. Counters are
//! found by name, never by position, and kept monotonic across driver and
//! device resets (which zero them): a decrease is a reset, counted, and the
//! exported total keeps counting from where it was.

use tracing::info;

use super::backend::Stats;
use crate::sample::{Desc, MetricSet};

static ALLOWANCE_EXCEEDED: Desc = Desc::counter(
    "hostwatch_ena_allowance_exceeded_packets_total",
    "Packets queued or dropped because the instance exceeded an EC2 allowance: bw_in and bw_out (aggregate bandwidth), pps (packets per second), conntrack (tracked connections), linklocal (traffic to link-local services: DNS, NTP, IMDS).",
    &["interface", "allowance"],
);
static CONNTRACK_AVAILABLE: Desc = Desc::gauge(
    "hostwatch_ena_conntrack_allowance_available",
    "Tracked connections the instance can still open before it reaches its conntrack allowance (ENA driver 2.8.1 or newer).",
    &["interface"],
);
static SUPPORTED: Desc = Desc::gauge(
    "hostwatch_ena_allowance_counters_supported",
    "1 when the ENA driver exports the allowance counters, 0 when it is too old (older than 2.2.10) or the device does not report them.",
    &["interface"],
);
static DRIVER_INFO: Desc = Desc::gauge(
    "hostwatch_ena_driver_info",
    "The ENA interface's driver, its version and the device firmware; always 1.",
    &["interface", "driver", "version", "firmware"],
);
static RESETS: Desc = Desc::counter(
    "hostwatch_ena_resets_total",
    "Driver or device resets seen as counters going back; the exported totals continue across them.",
    &["interface"],
);
static EVENTS: Desc = Desc::counter(
    "hostwatch_ena_driver_events_total",
    "ENA driver health events: tx_timeout (netdev watchdog fired), wd_expired (device keep-alive missed), reset_fail, interface_up, interface_down, suspend, resume.",
    &["interface", "event"],
);
static SRD_MODE: Desc = Desc::gauge(
    "hostwatch_ena_srd_mode",
    "ENA Express features enabled: 0 off, 1 ENA Express (TCP), 2 UDP only (kept from an earlier setting), 3 ENA Express and UDP.",
    &["interface"],
);
static SRD_TX: Desc = Desc::counter(
    "hostwatch_ena_srd_transmitted_packets_total",
    "Packets sent over ENA Express (SRD).",
    &["interface"],
);
static SRD_ELIGIBLE_TX: Desc = Desc::counter(
    "hostwatch_ena_srd_eligible_transmitted_packets_total",
    "Packets that could have been sent over ENA Express; far above the SRD count means SRD resources ran out or packets exceeded the MTU.",
    &["interface"],
);
static SRD_RX: Desc = Desc::counter(
    "hostwatch_ena_srd_received_packets_total",
    "Packets received over ENA Express (SRD).",
    &["interface"],
);
static SRD_UTILIZATION: Desc = Desc::gauge(
    "hostwatch_ena_srd_resource_utilization_ratio",
    "Share of the memory allowed for concurrent ENA Express connections in use.",
    &["interface"],
);
static QUEUE_STAT: Desc = Desc::gauge(
    "hostwatch_ena_queue_statistic",
    "A per-queue ENA statistic (queue_N_NAME), raw as the driver reports it; exported with per_queue = true.",
    &["interface", "queue", "statistic"],
);

/// The allowance counters, by statistic name and `allowance` label.
const ALLOWANCES: [(&str, &str); 5] = [
    ("bw_in_allowance_exceeded", "bw_in"),
    ("bw_out_allowance_exceeded", "bw_out"),
    ("pps_allowance_exceeded", "pps"),
    ("conntrack_allowance_exceeded", "conntrack"),
    ("linklocal_allowance_exceeded", "linklocal"),
];
const EVENT_NAMES: [&str; 7] = [
    "tx_timeout",
    "wd_expired",
    "reset_fail",
    "interface_up",
    "interface_down",
    "suspend",
    "resume",
];
const SRD_COUNTERS: [(&str, &Desc); 3] = [
    ("ena_srd_tx_pkts", &SRD_TX),
    ("ena_srd_eligible_tx_pkts", &SRD_ELIGIBLE_TX),
    ("ena_srd_rx_pkts", &SRD_RX),
];
/// Every counter kept monotonic, in this order: allowances, events, SRD.
const COUNTERS: usize = ALLOWANCES.len() + EVENT_NAMES.len() + SRD_COUNTERS.len();

/// The first driver version with the allowance counters.
const ALLOWANCE_VERSION: (u32, u32, u32) = (2, 2, 10);

/// One counter's exported total across resets.
#[derive(Debug, Default, Clone, Copy)]
struct Monotonic {
    last: Option<u64>,
    offset: u64,
}

impl Monotonic {
    /// The exported total for a raw reading, and whether the raw value went back.
    fn update(&mut self, raw: u64) -> (u64, bool) {
        let reset = self.last.is_some_and(|last| raw < last);
        if let (true, Some(last)) = (reset, self.last) {
            self.offset += last;
        }
        self.last = Some(raw);
        (self.offset + raw, reset)
    }
}

/// Where each typed statistic sits in the current name list.
#[derive(Debug, Default)]
struct Layout {
    counters: [Option<usize>; COUNTERS],
    conntrack_available: Option<usize>,
    srd_mode: Option<usize>,
    srd_utilization: Option<usize>,
    /// Index and the byte where the queue number ends in `queue_N_NAME`.
    queues: Vec<(usize, usize)>,
}

impl Layout {
    fn resolve(names: &[String]) -> Self {
        let find = |wanted: &str| names.iter().position(|name| name == wanted);
        let mut counters = [None; COUNTERS];
        let wanted = ALLOWANCES
            .iter()
            .map(|(name, _)| *name)
            .chain(EVENT_NAMES)
            .chain(SRD_COUNTERS.iter().map(|(name, _)| *name));
        for (slot, name) in counters.iter_mut().zip(wanted) {
            *slot = find(name);
        }
        let queues = names
            .iter()
            .enumerate()
            .filter_map(|(index, name)| {
                let rest = name.strip_prefix("queue_")?;
                let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                (digits > 0 && rest.as_bytes().get(digits) == Some(&b'_')).then_some((index, "queue_".len() + digits))
            })
            .collect();
        Self {
            counters,
            conntrack_available: find("conntrack_allowance_available"),
            srd_mode: find("ena_srd_mode"),
            srd_utilization: find("ena_srd_resource_utilization"),
            queues,
        }
    }

    fn supported(&self) -> bool {
        self.counters[..ALLOWANCES.len()].iter().all(Option::is_some)
    }
}

/// The typed view of one ENA interface, kept across collections.
#[derive(Debug, Default)]
pub struct Ena {
    layout: Layout,
    generation: Option<u64>,
    counters: [Monotonic; COUNTERS],
    totals: [u64; COUNTERS],
    resets: u64,
    told_unsupported: bool,
}

impl Ena {
    /// Takes in a new read of `stats` and writes the ENA series of
    /// `interface`; returns the sum of its allowance-exceeded totals.
    pub fn collect(&mut self, interface: &str, stats: &Stats, per_queue: bool, out: &mut MetricSet) -> u64 {
        if self.generation != Some(stats.generation) {
            self.layout = Layout::resolve(&stats.names);
            self.generation = Some(stats.generation);
        }
        let mut reset = false;
        for (slot, index) in self.layout.counters.iter().enumerate() {
            if let Some(raw) = index.and_then(|i| stats.values.get(i)) {
                let (total, went_back) = self.counters[slot].update(*raw);
                self.totals[slot] = total;
                reset |= went_back;
            }
        }
        if reset {
            self.resets += 1;
            info!(
                interface,
                resets = self.resets,
                "ENA counters went back: driver or device reset"
            );
        }

        out.push(
            &DRIVER_INFO,
            &[interface, &stats.driver, &stats.version, &stats.firmware],
            1.0,
        );
        out.push(&RESETS, &[interface], self.resets as f64);
        let supported = self.layout.supported();
        out.push(&SUPPORTED, &[interface], if supported { 1.0 } else { 0.0 });
        if !supported && !self.told_unsupported {
            self.told_unsupported = true;
            if older_than(&stats.version, ALLOWANCE_VERSION) {
                info!(interface, version = %stats.version, needed = "2.2.10", "ENA driver too old for the allowance counters; upgrade the driver to see EC2 allowance drops");
            } else {
                info!(interface, version = %stats.version, "ENA driver reports no allowance counters on this interface");
            }
        }

        let (allowances, rest) = self.layout.counters.split_at(ALLOWANCES.len());
        let (events, srd) = rest.split_at(EVENT_NAMES.len());
        let mut slot = 0;
        for ((_, label), index) in ALLOWANCES.iter().zip(allowances) {
            if index.is_some() {
                out.push(&ALLOWANCE_EXCEEDED, &[interface, label], self.totals[slot] as f64);
            }
            slot += 1;
        }
        for (event, index) in EVENT_NAMES.iter().zip(events) {
            if index.is_some() {
                out.push(&EVENTS, &[interface, event], self.totals[slot] as f64);
            }
            slot += 1;
        }
        for ((_, desc), index) in SRD_COUNTERS.iter().zip(srd) {
            if index.is_some() {
                out.push(desc, &[interface], self.totals[slot] as f64);
            }
            slot += 1;
        }

        let gauge = |index: Option<usize>| index.and_then(|i| stats.values.get(i)).map(|v| *v as f64);
        if let Some(available) = gauge(self.layout.conntrack_available) {
            out.push(&CONNTRACK_AVAILABLE, &[interface], available);
        }
        if let Some(mode) = gauge(self.layout.srd_mode) {
            out.push(&SRD_MODE, &[interface], mode);
        }
        if let Some(percent) = gauge(self.layout.srd_utilization) {
            out.push(&SRD_UTILIZATION, &[interface], percent / 100.0);
        }
        if per_queue {
            for (index, split) in &self.layout.queues {
                let name = &stats.names[*index];
                let (queue, statistic) = (&name["queue_".len()..*split], &name[*split + 1..]);
                out.push(&QUEUE_STAT, &[interface, queue, statistic], stats.values[*index] as f64);
            }
        }
        self.totals[..ALLOWANCES.len()].iter().sum()
    }

    /// The `bw_in`, `bw_out` and `pps` allowance-exceeded totals (the first
    /// three of [`ALLOWANCES`]): the drops that mean the host sends or
    /// receives too much, which the shaper reacts to.
    pub fn traffic_exceeded(&self) -> [u64; 3] {
        [self.totals[0], self.totals[1], self.totals[2]]
    }
}

/// Whether a driver version like "2.8.1g" or "1.2.0k" is older than `wanted`.
/// An unparsable version is not called old: the counters' presence decides.
fn older_than(version: &str, wanted: (u32, u32, u32)) -> bool {
    let mut parts = version.split('.').map(|part| {
        let digits = part.bytes().take_while(u8::is_ascii_digit).count();
        part[..digits].parse::<u32>().ok()
    });
    match (parts.next().flatten(), parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor), patch) => (major, minor, patch.unwrap_or(0)) < wanted,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_across_resets() {
        let mut counter = Monotonic::default();
        assert_eq!(counter.update(10), (10, false));
        assert_eq!(counter.update(15), (15, false));
        assert_eq!(counter.update(2), (17, true));
        assert_eq!(counter.update(5), (20, false));
        assert_eq!(counter.update(0), (20, true));
    }

    #[test]
    fn versions() {
        assert!(older_than("1.2.0k", ALLOWANCE_VERSION));
        assert!(older_than("2.2.9", ALLOWANCE_VERSION));
        assert!(!older_than("2.2.10", ALLOWANCE_VERSION));
        assert!(!older_than("2.8.1g", ALLOWANCE_VERSION));
        assert!(!older_than("garbage", ALLOWANCE_VERSION));
        assert!(older_than("2.1", ALLOWANCE_VERSION));
    }
}
