//! `headroom`: how close each network interface runs to the instance's
//! bandwidth allowance, as the highest one-interval rate over a trailing window.
//!
//! Reads `PROCFS/net/dev` every interval (default 1 s) and, once per interface
//! name, whether `SYSFS/class/net/IF/device` exists; needs no privilege. Watches
//! interfaces backed by a device (ENA, virtio) plus every interface whose whole
//! name matches `include`, minus those matching `exclude`.
//!
//! A rate is the byte counter's change over the real time between two reads,
//! in bits per second; a counter that went backwards (driver reset, wrap) or an
//! interface seen for the first time gives no rate for that interval. Each
//! interface keeps its rates for `window` (default 15 s) in a bounded ring, so
//! the peak a 15 s scrape sees includes a one-second spike between scrapes,
//! which an average over the scrape interval hides. The ratio divides by the
//! instance's baseline from [`crate::facts::HostFacts`] (the `instance`
//! collector, or its config); the allowance is the instance's, not the
//! interface's, so with several interfaces each ratio is a lower bound.
//!
//! Emits `hostwatch_net_headroom_peak_bits_per_second{interface,direction}` and,
//! once the baseline is known, `hostwatch_net_headroom_ratio{interface,direction}`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::collector::{Collector, CollectorSpec, Context};
use crate::config::{Interval, Pattern, collector_section};
use crate::error::{CollectError, Unavailable};
use crate::facts::HostFacts;
use crate::netdev::{RX_BYTES, TX_BYTES, dev_counters, dev_lines};
use crate::paths::HostPaths;
use crate::procfile::ProcFile;
use crate::sample::{Desc, MetricSet};

collector_section! {
    /// `[collectors.headroom]`: which interfaces, over which window.
    pub struct Config {
        /// Also watch interfaces without a device whose whole name matches this
        /// regular expression (bonds, bridges, tunnels).
        pub include: Option<Pattern> = None,
        /// Never watch interfaces whose whole name matches this regular expression.
        pub exclude: Option<Pattern> = None,
        /// How far back the peak looks (default 15s, a common scrape interval).
        pub window: Option<Interval> = None,
    }
}

pub static SPEC: CollectorSpec = CollectorSpec {
    name: "headroom",
    needs: "procfs: /proc/net/dev; sysfs: /sys/class/net (host network namespace)",
    default_interval: Duration::from_secs(1),
    section: |config| &config.headroom,
    build: |context| Ok(Box::new(Headroom::new(context)?)),
};

static PEAK: Desc = Desc::gauge(
    "hostwatch_net_headroom_peak_bits_per_second",
    "Highest rate over one collection interval (default 1 s) within the trailing window (default 15 s), in bits per second.",
    &["interface", "direction"],
);
pub static RATIO: Desc = Desc::gauge(
    "hostwatch_net_headroom_ratio",
    "The peak rate over the instance's network baseline bandwidth; above 1 the instance spends burst credits or is shaped. The allowance is per instance, so with several interfaces this is a lower bound.",
    &["interface", "direction"],
);

const DEFAULT_WINDOW: Duration = Duration::from_secs(15);
const DIRECTIONS: [(&str, usize); 2] = [("receive", RX_BYTES), ("transmit", TX_BYTES)];

#[derive(Debug)]
struct Headroom {
    dev: ProcFile,
    selection: Selection,
    window: Duration,
    /// Rates each direction keeps: enough for the window at the configured interval.
    capacity: usize,
    facts: Arc<HostFacts>,
    /// Every interface in the last read, watched or not, so the sysfs check
    /// runs once per name; an interface gone from the file is forgotten.
    interfaces: HashMap<String, Interface>,
    /// Counts reads, to tell which interfaces the last one saw.
    generation: u64,
}

/// Which interfaces to watch.
#[derive(Debug)]
struct Selection {
    paths: HostPaths,
    include: Option<Pattern>,
    exclude: Option<Pattern>,
}

impl Selection {
    fn watches(&self, name: &str) -> bool {
        let wanted = self.include.as_ref().is_some_and(|p| p.is_match(name))
            || self.paths.sys("class/net").join(name).join("device").exists();
        wanted && !self.exclude.as_ref().is_some_and(|p| p.is_match(name))
    }
}

#[derive(Debug)]
struct Interface {
    watched: bool,
    seen: u64,
    /// Time and byte counters of the previous read.
    previous: Option<(Instant, [u64; 2])>,
    /// Per direction, (when, bits per second), oldest first.
    rates: [VecDeque<(Instant, f64)>; 2],
}

impl Headroom {
    fn new(context: &Context) -> Result<Self, Unavailable> {
        let config = &context.config.headroom;
        let window = config.window.map_or(DEFAULT_WINDOW, Interval::get);
        let interval = SPEC.plan(&context.config).interval;
        // One rate per interval fills the window; one more covers a late tick.
        let capacity = usize::try_from(window.as_nanos().div_ceil(interval.as_nanos().max(1)))
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        Ok(Self {
            dev: ProcFile::require(context.paths.proc("net/dev"), "no network device statistics")?,
            selection: Selection {
                paths: context.paths.clone(),
                include: config.include.clone(),
                exclude: config.exclude.clone(),
            },
            window,
            capacity,
            facts: Arc::clone(&context.facts),
            interfaces: HashMap::new(),
            generation: 0,
        })
    }

    /// One collection as of `now`: the entry point tests drive with chosen times.
    fn collect_at(&mut self, now: Instant, out: &mut MetricSet) -> Result<(), CollectError> {
        self.generation += 1;
        let generation = self.generation;
        let baseline = self.facts.network_baseline().map(|b| b.baseline_bps);
        let dev = self.dev.read()?;
        let mut result = Ok(());
        for line in dev_lines(dev.text) {
            let (number, name, counters) = match line {
                Ok(line) => line,
                Err((number, reason)) => {
                    result = Err(dev.error(number, reason));
                    break;
                }
            };
            if !self.interfaces.contains_key(name) {
                let watched = self.selection.watches(name);
                // Rings are sized once, so steady-state collections allocate nothing.
                let ring = || VecDeque::with_capacity(if watched { self.capacity } else { 0 });
                self.interfaces.insert(
                    name.to_owned(),
                    Interface {
                        watched,
                        seen: generation,
                        previous: None,
                        rates: [ring(), ring()],
                    },
                );
            }
            let Some(interface) = self.interfaces.get_mut(name) else {
                continue;
            };
            interface.seen = generation;
            if !interface.watched {
                continue;
            }
            let values = match dev_counters(counters) {
                Ok(values) => values,
                Err(reason) => {
                    result = Err(dev.error(number, reason));
                    break;
                }
            };
            let bytes = DIRECTIONS.map(|(_, column)| values[column]);
            interface.update(now, bytes, self.window, self.capacity);
            for ((direction, _), rates) in DIRECTIONS.iter().zip(&interface.rates) {
                let Some(peak) = rates.iter().map(|(_, rate)| *rate).reduce(f64::max) else {
                    continue;
                };
                out.push(&PEAK, &[name, direction], peak);
                if let Some(baseline) = baseline {
                    out.push(&RATIO, &[name, direction], peak / baseline);
                }
            }
        }
        // On a parse error the rest of the file is unread: forget nothing then.
        if result.is_ok() {
            self.interfaces.retain(|_, interface| interface.seen == generation);
        }
        result
    }
}

impl Interface {
    fn update(&mut self, now: Instant, bytes: [u64; 2], window: Duration, capacity: usize) {
        if let Some((then, before)) = self.previous {
            let elapsed = now.saturating_duration_since(then).as_secs_f64();
            for ((rates, after), before) in self.rates.iter_mut().zip(bytes).zip(before) {
                // A counter that went back was reset: the interval has no rate.
                if elapsed > 0.0 && after >= before {
                    if rates.len() >= capacity {
                        rates.pop_front();
                    }
                    rates.push_back((now, (after - before) as f64 * 8.0 / elapsed));
                }
            }
        }
        self.previous = Some((now, bytes));
        for rates in &mut self.rates {
            while rates
                .front()
                .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= window)
            {
                rates.pop_front();
            }
        }
    }
}

impl Collector for Headroom {
    fn collect(&mut self, out: &mut MetricSet) -> Result<(), CollectError> {
        self.collect_at(Instant::now(), out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CollectorsConfig;
    use crate::facts::NetworkBaseline;
    use crate::testing::{TempTree, collect_fixture};

    const HEADER: &str = "Inter-|   Receive                                                |  Transmit\n \
        face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n";

    /// A host whose eth0 and eth1 have devices and lo and bond0 do not.
    struct Host {
        tree: TempTree,
        headroom: Headroom,
        facts: Arc<HostFacts>,
        start: Instant,
    }

    impl Host {
        fn new(config: &str) -> Self {
            let tree = TempTree::new(&[
                ("proc/net/dev", HEADER),
                ("sys/class/net/eth0/device/", ""),
                ("sys/class/net/eth1/device/", ""),
                ("sys/class/net/lo/", ""),
                ("sys/class/net/bond0/", ""),
            ]);
            let config: CollectorsConfig = toml::from_str(&format!("[headroom]\n{config}")).expect("config");
            let context = Context::new(tree.paths(), config);
            let headroom = Headroom::new(&context).expect("builds");
            Self {
                tree,
                headroom,
                facts: Arc::clone(&context.facts),
                start: Instant::now(),
            }
        }

        /// Collects at `millis` after the start with these (name, rx bytes, tx bytes) lines.
        fn at(&mut self, millis: u64, interfaces: &[(&str, u64, u64)]) -> Result<MetricSet, CollectError> {
            let mut text = HEADER.to_owned();
            for (name, rx, tx) in interfaces {
                text.push_str(&format!("{name:>6}: {rx} 10 0 0 0 0 0 0 {tx} 20 0 0 0 0 0 0\n"));
            }
            std::fs::write(self.tree.paths().proc("net/dev"), text).expect("write");
            let mut out = MetricSet::default();
            let now = self.start + Duration::from_millis(millis);
            self.headroom.collect_at(now, &mut out).map(|()| out)
        }

        fn ok(&mut self, millis: u64, interfaces: &[(&str, u64, u64)]) -> MetricSet {
            self.at(millis, interfaces).expect("collects")
        }
    }

    fn peak(set: &MetricSet, interface: &str, direction: &str) -> Option<f64> {
        set.get(PEAK.name, &[interface, direction])
    }

    /// 125 MB is one gigabit.
    const GBIT_BYTES: u64 = 125_000_000;

    #[test]
    fn the_peak_outlives_the_spike_and_the_ratio_needs_a_baseline() {
        let mut host = Host::new("");
        let set = host.ok(0, &[("lo", 0, 0), ("eth0", 0, 0)]);
        assert_eq!(set.families().count(), 0, "no rate on the first read: {set}");

        // One second at 1 Gbit/s in, 100 Mbit/s out.
        let set = host.ok(1000, &[("lo", 5, 5), ("eth0", GBIT_BYTES, GBIT_BYTES / 10)]);
        assert_eq!(peak(&set, "eth0", "receive"), Some(1e9), "{set}");
        assert_eq!(peak(&set, "eth0", "transmit"), Some(1e8));
        assert_eq!(peak(&set, "lo", "receive"), None, "no device, not included");
        assert_eq!(set.get(RATIO.name, &["eth0", "receive"]), None, "no baseline yet");

        // Quiet seconds after the spike: the peak stays, now with a baseline to divide by.
        host.facts.set_network_baseline(Some(NetworkBaseline {
            baseline_bps: 0.781e9,
            burst_bps: Some(12.5e9),
        }));
        let mut rx = GBIT_BYTES;
        for second in 2..=15 {
            rx += GBIT_BYTES / 100;
            let set = host.ok(second * 1000, &[("eth0", rx, GBIT_BYTES / 10)]);
            assert_eq!(peak(&set, "eth0", "receive"), Some(1e9), "second {second}");
            assert_eq!(set.get(RATIO.name, &["eth0", "receive"]), Some(1e9 / 0.781e9));
            assert_eq!(peak(&set, "eth0", "transmit"), Some(1e8), "second {second}");
        }
        // Fifteen seconds after it, the spike leaves the default window.
        rx += GBIT_BYTES / 100;
        let set = host.ok(16_000, &[("eth0", rx, GBIT_BYTES / 10)]);
        assert_eq!(peak(&set, "eth0", "receive"), Some(1e7), "{set}");
        assert_eq!(peak(&set, "eth0", "transmit"), Some(0.0));
        assert_eq!(set.get(RATIO.name, &["eth0", "transmit"]), Some(0.0));
    }

    #[test]
    fn rates_use_the_real_time_between_reads() {
        let mut host = Host::new("");
        host.ok(0, &[("eth0", 0, 0)]);
        // Half a gigabit in half a second, then a late read: 1 Gbit/s over 2.5 s.
        let set = host.ok(500, &[("eth0", GBIT_BYTES / 2, 0)]);
        assert_eq!(peak(&set, "eth0", "receive"), Some(1e9));
        let set = host.ok(3000, &[("eth0", GBIT_BYTES / 2 + 5 * GBIT_BYTES / 2, 0)]);
        assert_eq!(peak(&set, "eth0", "receive"), Some(1e9));
        // Two reads at the same instant give no rate rather than a division by zero.
        let set = host.ok(3000, &[("eth0", 10 * GBIT_BYTES, 0)]);
        assert_eq!(peak(&set, "eth0", "receive"), Some(1e9));
    }

    #[test]
    fn a_counter_reset_gives_no_rate_for_its_interval() {
        // A one-second window shows each interval's own rate.
        let mut host = Host::new("window = \"1s\"");
        host.ok(0, &[("eth0", 10 * GBIT_BYTES, 10 * GBIT_BYTES)]);
        let set = host.ok(1000, &[("eth0", 11 * GBIT_BYTES, 11 * GBIT_BYTES)]);
        assert_eq!(peak(&set, "eth0", "receive"), Some(1e9));
        // The driver reset: receive went back to near zero, transmit kept counting.
        let set = host.ok(2000, &[("eth0", 1000, 11 * GBIT_BYTES + GBIT_BYTES / 2)]);
        assert_eq!(peak(&set, "eth0", "receive"), None, "no rate across the reset: {set}");
        assert_eq!(peak(&set, "eth0", "transmit"), Some(0.5e9));
        let set = host.ok(3000, &[("eth0", 1000 + GBIT_BYTES / 8, 12 * GBIT_BYTES)]);
        assert_eq!(
            peak(&set, "eth0", "receive"),
            Some(1.25e8),
            "counting resumes from the reset value"
        );
    }

    #[test]
    fn include_adds_and_exclude_removes() {
        let mut host = Host::new("include = \"bond.*|lo\"\nexclude = \"eth1|lo\"");
        let all = |rx| [("lo", rx, 0), ("eth0", rx, 0), ("eth1", rx, 0), ("bond0", rx, 0)];
        host.ok(0, &all(0));
        let set = host.ok(1000, &all(GBIT_BYTES));
        let watched: Vec<_> = set
            .families()
            .filter(|f| f.desc().name == PEAK.name)
            .flat_map(|f| f.series().iter().map(|s| s.label_values()[0].clone()))
            .collect();
        assert_eq!(watched, ["eth0", "eth0", "bond0", "bond0"]);
    }

    #[test]
    fn an_interface_that_comes_back_starts_over() {
        let mut host = Host::new("");
        host.ok(0, &[("eth0", 0, 0)]);
        host.ok(1000, &[("eth0", GBIT_BYTES, 0)]);
        let set = host.ok(2000, &[]);
        assert_eq!(set.families().count(), 0);
        assert!(host.headroom.interfaces.is_empty(), "forgotten");
        // Back with new counters: no rate against the old ones, and no old peak.
        let set = host.ok(3000, &[("eth0", 5, 0)]);
        assert_eq!(peak(&set, "eth0", "receive"), None, "{set}");
    }

    #[test]
    fn rings_are_bounded_and_stop_growing() {
        // Collections far more often than the 1 s interval the capacity was sized for.
        let mut host = Host::new("window = \"5s\"");
        assert_eq!(host.headroom.capacity, 6);
        let mut capacity = None;
        for tick in 0..200 {
            host.ok(tick * 10, &[("eth0", tick * 1000, 0)]);
            let rates = &host.headroom.interfaces["eth0"].rates[0];
            assert!(rates.len() <= 6, "{}", rates.len());
            if tick == 10 {
                capacity = Some(rates.capacity());
            }
        }
        assert_eq!(Some(host.headroom.interfaces["eth0"].rates[0].capacity()), capacity);
    }

    #[test]
    fn a_malformed_line_is_a_parse_error_naming_it() {
        let mut host = Host::new("");
        host.ok(0, &[("eth0", 0, 0)]);
        std::fs::write(host.tree.paths().proc("net/dev"), format!("{HEADER}  eth0: 1 2 3\n")).expect("write");
        let error = host
            .headroom
            .collect_at(host.start + Duration::from_secs(1), &mut MetricSet::default())
            .expect_err("truncated");
        assert!(
            error.to_string().ends_with("net/dev line 3: fewer than 16 counters"),
            "{error}"
        );
        std::fs::write(host.tree.paths().proc("net/dev"), format!("{HEADER}garbage\n")).expect("write");
        let error = host
            .headroom
            .collect_at(host.start + Duration::from_secs(2), &mut MetricSet::default())
            .expect_err("no name");
        assert!(
            error.to_string().ends_with("net/dev line 3: no \"name:\" prefix"),
            "{error}"
        );
        // A line of an interface nobody watches is not parsed.
        assert!(host.at(3000, &[("lo", 0, 0)]).is_ok());
    }

    #[test]
    fn basic_fixture_has_no_device_so_nothing_to_report() {
        let set = collect_fixture(&SPEC, "basic");
        assert_eq!(set.families().count(), 0, "{set}");
    }

    #[test]
    fn config_section_parses() {
        let config: CollectorsConfig =
            toml::from_str("[headroom]\ninclude = \"bond.*\"\nexclude = \"eth9\"\nwindow = \"1m\"\n").expect("valid");
        assert_eq!(config.headroom.include, Pattern::new("bond.*").ok());
        assert_eq!(config.headroom.window.map(Interval::get), Some(Duration::from_secs(60)));
        assert_eq!(CollectorsConfig::default().headroom.window, None);
        let error = toml::from_str::<CollectorsConfig>("[headroom]\nwindow = \"forever\"\n").err();
        assert!(error.is_some_and(|e| e.to_string().contains("invalid duration")));
    }
}
