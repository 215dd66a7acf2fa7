//! The netburst collector with a scripted backend: rings written by the test
//! instead of the kernel; and, as root, the real backend's interface
//! pre-filter. The BPF path itself is tested end to end, as root, in
//! tests/netburst.rs.

use std::path::Path;
use std::sync::{Arc, Mutex};

use hostwatch_ebpf::maps::{NET_RING, NetOwner};

use super::*;
use crate::config::CollectorsConfig;
use crate::testing::{TempTree, is_root};

#[derive(Default)]
struct Kernel {
    now: u64,
    watched: Vec<(NetIface, u32)>,
    /// The ids watched as loopbacks (egress only).
    loopbacks: Vec<u32>,
    /// One CPU's ring per series.
    rings: HashMap<u32, NetRing>,
    owners: Vec<(NetOwner, u64)>,
    /// The attribution gate per series, as last set.
    gates: HashMap<u32, u64>,
}

#[derive(Clone, Default)]
struct Scripted(Arc<Mutex<Kernel>>);

impl Backend for Scripted {
    fn watch(&mut self, _name: &str, iface: NetIface, id: u32, loopback: bool) -> Result<(), CollectError> {
        let mut kernel = self.0.lock().unwrap();
        kernel.watched.push((iface, id));
        if loopback {
            kernel.loopbacks.push(id);
        }
        Ok(())
    }

    fn unwatch(&mut self, iface: NetIface) -> Result<(), CollectError> {
        self.0.lock().unwrap().watched.retain(|(i, _)| *i != iface);
        Ok(())
    }

    fn rings(&mut self, series: u32, out: &mut Vec<NetRing>) -> Result<(), CollectError> {
        let kernel = self.0.lock().unwrap();
        out.clear();
        out.push(kernel.rings.get(&series).copied().unwrap_or(NetRing {
            ms: [0; NET_RING],
            bytes: [0; NET_RING],
            packets: [0; NET_RING],
        }));
        Ok(())
    }

    fn owners(&mut self, out: &mut Vec<(NetOwner, u64)>) -> Result<(), CollectError> {
        out.clone_from(&self.0.lock().unwrap().owners);
        Ok(())
    }

    fn gate(&mut self, series: u32, threshold: u64) -> Result<(), CollectError> {
        self.0.lock().unwrap().gates.insert(series, threshold);
        Ok(())
    }

    fn now_ms(&self) -> u64 {
        self.0.lock().unwrap().now
    }

    fn hooks(&self) -> &'static str {
        "tcx"
    }
}

impl Scripted {
    fn at(&self, now: u64) {
        self.0.lock().unwrap().now = now;
    }

    /// Counts `bytes` on `series` in millisecond `ms`.
    fn send(&self, series: u32, ms: u64, bytes: u64) {
        let mut kernel = self.0.lock().unwrap();
        let ring = kernel.rings.entry(series).or_insert(NetRing {
            ms: [0; NET_RING],
            bytes: [0; NET_RING],
            packets: [0; NET_RING],
        });
        let slot = (ms % NET_RING as u64) as usize;
        if ring.ms[slot] != ms {
            ring.ms[slot] = ms;
            ring.bytes[slot] = 0;
            ring.packets[slot] = 0;
        }
        ring.bytes[slot] += bytes;
        ring.packets[slot] += 1;
    }
}

const TRANSMIT: u32 = 1;
const RECEIVE: u32 = 0;

fn host() -> TempTree {
    TempTree::new(&[
        ("sys/class/net/eth0/device/", ""),
        ("sys/class/net/eth0/ifindex", "2\n"),
        ("sys/class/net/eth0/flags", "0x1003\n"),
        ("sys/class/net/lo/ifindex", "1\n"),
        ("sys/class/net/lo/flags", "0x9\n"),
    ])
}

fn collector(tree: &TempTree, kernel: &Scripted, edit: impl FnOnce(&mut Config)) -> NetBurst {
    let mut config = CollectorsConfig::default();
    config.netburst.threshold = Threshold::parse("1Gbit").unwrap();
    config.netburst.recordings = tree.root().join("recordings");
    edit(&mut config.netburst);
    let netns = NetIface::own_netns().expect("netns");
    NetBurst::new(&Context::new(tree.paths(), config), netns, Box::new(kernel.clone())).expect("builds")
}

fn collect(netburst: &mut NetBurst) -> MetricSet {
    let mut set = MetricSet::default();
    netburst.collect(&mut set).expect("collects");
    set
}

#[test]
fn watches_devices_and_finds_a_burst() {
    let (tree, kernel) = (host(), Scripted::default());
    let mut netburst = collector(&tree, &kernel, |_| {});
    kernel.at(10_000);
    collect(&mut netburst);
    let watched = kernel.0.lock().unwrap().watched.clone();
    assert_eq!(watched.len(), 1, "eth0 has a device, lo does not: {watched:?}");
    assert_eq!(watched[0].0.ifindex, 2);

    // 5 ms at 1.6 Gbit/s against a 1 Gbit/s threshold, inside quiet traffic.
    for ms in 10_000..10_090 {
        kernel.send(
            TRANSMIT,
            ms,
            if (10_020..10_025).contains(&ms) { 200_000 } else { 1_000 },
        );
    }
    tree.write(&format!("proc/{}/comm", std::process::id()), "backup-agent\n");
    kernel.0.lock().unwrap().owners = vec![
        (
            NetOwner {
                cgroup: 77,
                tgid: std::process::id(),
                series: TRANSMIT,
            },
            1_000_000,
        ),
        (
            NetOwner {
                cgroup: 78,
                tgid: 0,
                series: TRANSMIT,
            },
            90_000,
        ),
    ];
    kernel.at(10_100);
    let set = collect(&mut netburst);
    assert_eq!(set.get("hostwatch_net_bursts_total", &["eth0", "transmit"]), Some(1.0));
    assert_eq!(set.get("hostwatch_net_bursts_total", &["eth0", "receive"]), Some(0.0));
    assert_eq!(
        set.get("hostwatch_net_peak_rate_bits_per_second", &["eth0", "transmit", "1ms"]),
        Some(1.6e9)
    );
    assert_eq!(
        set.get("hostwatch_net_burst_threshold_bits_per_second", &["eth0", "transmit"]),
        Some(1e9)
    );
    assert_eq!(
        set.get(
            "hostwatch_net_burst_contributor_bytes_total",
            &["eth0", "transmit", "cgroup-id:77"]
        ),
        Some(1e6)
    );

    let events: serde_json::Value = serde_json::from_str(&netburst.facts.debug("bursts").expect("published")).unwrap();
    assert_eq!(events[0]["duration_ms"], 5);
    // Five busy milliseconds, plus the quiet ones that open and close the burst.
    assert_eq!(events[0]["bytes"], 1_002_000);
    assert_eq!(events[0]["direction"], "transmit");
    assert_eq!(events[0]["contributors"][0]["pid"], std::process::id());
    assert_eq!(events[0]["contributors"][0]["bytes"], 1_000_000);
    assert_eq!(events[0]["contributors"][0]["comm"], "backup-agent");
    assert_eq!(events[0]["contributors"][1]["cgroup"], "cgroup-id:78");

    let slots: serde_json::Value = serde_json::from_str(&netburst.facts.debug("netslots").expect("published")).unwrap();
    assert_eq!(slots.as_array().unwrap().len(), 2);
}

/// A loopback receives what it sends: it is counted on egress only, and its
/// receive series is the transmit ring folded again, bursts included.
#[test]
fn a_loopback_is_counted_once_and_reports_both_directions() {
    let (tree, kernel) = (host(), Scripted::default());
    let mut netburst = collector(&tree, &kernel, |c| c.include = Pattern::new("lo|eth0").ok());
    kernel.at(10_000);
    collect(&mut netburst);
    let (watched, loopbacks) = {
        let kernel = kernel.0.lock().unwrap();
        (kernel.watched.clone(), kernel.loopbacks.clone())
    };
    let lo = watched
        .iter()
        .find(|(iface, _)| iface.ifindex == 1)
        .expect("lo watched")
        .1;
    assert_eq!(loopbacks, [lo], "only lo is a loopback: {watched:?}");
    for ms in 10_000..10_090 {
        let bytes = if (10_020..10_025).contains(&ms) { 200_000 } else { 1_000 };
        kernel.send(lo * 2 + TRANSMIT, ms, bytes);
        // Never read: what a receive ring of lo would hold if anything counted there.
        kernel.send(lo * 2 + RECEIVE, ms, 7);
    }
    kernel.at(10_100);
    let set = collect(&mut netburst);
    for direction in ["transmit", "receive"] {
        assert_eq!(
            set.get("hostwatch_net_bursts_total", &["lo", direction]),
            Some(1.0),
            "{direction}"
        );
        assert_eq!(
            set.get("hostwatch_net_peak_rate_bits_per_second", &["lo", direction, "1ms"]),
            Some(1.6e9),
            "{direction}"
        );
    }
    assert_eq!(set.get("hostwatch_net_bursts_total", &["eth0", "receive"]), Some(0.0));
}

#[test]
fn falling_behind_counts_lost_milliseconds_and_no_burst() {
    let (tree, kernel) = (host(), Scripted::default());
    let mut netburst = collector(&tree, &kernel, |_| {});
    kernel.at(10_000);
    collect(&mut netburst);
    // Stopped for 2 s while traffic ran above the threshold throughout.
    for ms in 10_000..12_000 {
        kernel.send(TRANSMIT, ms, 500);
    }
    kernel.at(12_000);
    let set = collect(&mut netburst);
    let lost = set
        .get("hostwatch_net_slots_lost_total", &["eth0", "transmit"])
        .unwrap();
    assert_eq!(lost, (2000 - (NET_RING - 1)) as f64);
}

#[test]
fn thresholds_follow_the_baseline_and_overrides() {
    let (tree, kernel) = (host(), Scripted::default());
    let mut netburst = collector(&tree, &kernel, |c| {
        c.threshold = Threshold::parse("50%").unwrap();
        c.thresholds = vec![ThresholdOverride {
            interface: Pattern::new("eth0").unwrap(),
            direction: Some(Direction::Receive),
            threshold: Threshold::parse("300Mbit").unwrap(),
        }];
    });
    kernel.at(1_000);
    let set = collect(&mut netburst);
    assert_eq!(
        set.get("hostwatch_net_burst_threshold_bits_per_second", &["eth0", "transmit"]),
        Some(FALLBACK_THRESHOLD_BITS)
    );
    assert_eq!(
        set.get("hostwatch_net_burst_threshold_bits_per_second", &["eth0", "receive"]),
        Some(300e6)
    );
    netburst.facts.set_network_baseline(Some(crate::facts::NetworkBaseline {
        baseline_bps: 12.5e9,
        burst_bps: None,
    }));
    kernel.at(1_100);
    let set = collect(&mut netburst);
    assert_eq!(
        set.get("hostwatch_net_burst_threshold_bits_per_second", &["eth0", "transmit"]),
        Some(6.25e9)
    );
    // The senders are attributed above the transmit threshold, in bytes per
    // millisecond, and the gate follows it; receive has no senders to gate.
    let gates = kernel.0.lock().unwrap().gates.clone();
    assert_eq!(gates, HashMap::from([(TRANSMIT, 781_250)]));
}

#[test]
fn a_deleted_interface_is_unwatched_and_its_state_dropped() {
    let (tree, kernel) = (host(), Scripted::default());
    let mut netburst = collector(&tree, &kernel, |_| {});
    kernel.at(1_000);
    collect(&mut netburst);
    std::fs::remove_dir_all(tree.root().join("sys/class/net/eth0")).unwrap();
    netburst.scanned = None;
    kernel.at(1_100);
    let set = collect(&mut netburst);
    assert!(kernel.0.lock().unwrap().watched.is_empty());
    assert_eq!(set.get("hostwatch_net_bursts_total", &["eth0", "transmit"]), None);
}

#[test]
fn thresholds_parse_strictly() {
    assert_eq!(Threshold::parse("100%"), Ok(Threshold::Baseline(1.0)));
    assert!(Threshold::parse("0%").is_err());
    assert!(Threshold::parse("2 Gbit").is_err());
    assert!(matches!(Threshold::parse("2Gbit"), Ok(Threshold::Rate(r)) if r.bits_per_second() == 2e9));
}

/// Sends 100 datagrams of 1000 bytes to loopback and returns the packets
/// `backend` counted on series `id` in each direction (transmit, receive).
fn count_loopback(backend: &mut BpfBackend, id: u32) -> [u64; 2] {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let target = socket.local_addr().expect("addr");
    for _ in 0..100 {
        socket.send_to(&[7u8; 1000], target).expect("send");
    }
    counted(backend, id)
}

/// Packets counted so far for `id`, [transmitted, received].
fn counted(backend: &mut BpfBackend, id: u32) -> [u64; 2] {
    let mut rings = Vec::new();
    [NET_TRANSMIT, NET_RECEIVE].map(|direction| {
        backend.rings(id * 2 + direction, &mut rings).expect("rings");
        rings
            .iter()
            .flat_map(|ring| ring.packets.iter())
            .map(|p| u64::from(*p))
            .sum()
    })
}

/// The tracepoint backend's pre-filter counts interfaces per filter entry:
/// removing one that shares loopback's entry (the same ifindex in another
/// namespace, or an ifindex NET_FILTER apart) must not stop loopback being
/// counted.
#[test]
fn unwatching_an_interface_that_shares_a_filter_entry_keeps_counting_the_other() {
    if !is_root() {
        eprintln!("skipped: loading BPF programs needs root (CAP_BPF, CAP_PERFMON)");
        return;
    }
    let netns = NetIface::own_netns().expect("netns");
    let mut backend = BpfBackend::new(Hooks::Tracepoints, netns).expect("netburst loads and attaches");
    assert!(!backend.tcx());
    let lo = NetIface::read(netns, Path::new("/sys/class/net/lo")).expect("lo");
    let ifindex = lo.ifindex;
    let elsewhere = NetIface {
        netns: netns.wrapping_add(1),
        ifindex,
    };
    let apart = NetIface {
        netns,
        ifindex: ifindex + hostwatch_ebpf::maps::NET_FILTER,
    };
    backend.watch("elsewhere", elsewhere, 0, false).expect("watch");
    backend.watch("lo", lo, 1, true).expect("watch");
    backend.watch("apart", apart, 2, false).expect("watch");
    backend.unwatch(elsewhere).expect("unwatch");
    backend.unwatch(apart).expect("unwatch");
    // 100 sent, perhaps with a little other loopback traffic; the receive
    // tracepoint turns a loopback away (its receive series is its transmit).
    let [transmitted, received] = count_loopback(&mut backend, 1);
    assert!(transmitted >= 100 && received == 0, "{transmitted} out, {received} in");
}

/// The TCX backend counts an interface from the moment it is watched until
/// it is unwatched, and then runs nothing on it: its links are gone. Found
/// by its entry in the programs' first test, or by the hash lookup when
/// another interface holds that entry.
#[test]
fn tcx_counts_an_interface_only_while_it_is_watched() {
    if !is_root() {
        eprintln!("skipped: attaching TCX programs needs root (CAP_BPF, CAP_NET_ADMIN)");
        return;
    }
    let netns = NetIface::own_netns().expect("netns");
    let mut backend = BpfBackend::new(Hooks::Tcx, netns).expect("netburst loads");
    assert!(backend.tcx());
    let lo = NetIface::read(netns, Path::new("/sys/class/net/lo")).expect("lo");
    let slot = lo.ifindex & (hostwatch_ebpf::maps::NET_FILTER - 1);
    assert_eq!(count_loopback(&mut backend, 3), [0, 0], "not watched yet");

    // Another interface (an ifindex NET_FILTER apart) holds lo's entry.
    let other = u64::from(lo.ifindex + hostwatch_ebpf::maps::NET_FILTER) << 32 | 9;
    backend.tc_ids.set(slot, other, 0).expect("set");
    // Watched as any interface (both programs), to test both.
    backend.watch("lo", lo, 3, false).expect("watch");
    let [transmitted, received] = count_loopback(&mut backend, 3);
    assert!(
        transmitted >= 100 && received >= 100,
        "{transmitted} out, {received} in"
    );
    backend.unwatch(lo).expect("unwatch");
    // Read again once the ingress program is gone: the other tests' loopback
    // traffic counts too until then.
    let [_, received] = counted(&mut backend, 3);
    assert_eq!(
        backend.tc_ids.get(&slot, 0).expect("get"),
        other,
        "the other's entry kept"
    );
    backend.tc_ids.set(slot, 0, 0).expect("set");

    // As the collector watches a loopback: egress only.
    backend.watch("lo", lo, 3, true).expect("watch");
    assert_eq!(backend.tc_ids.get(&slot, 0).expect("get") >> 32, u64::from(lo.ifindex));
    let [before_out, before_in] = count_loopback(&mut backend, 3);
    assert!(
        before_out >= 100 + transmitted && before_in == received,
        "no ingress program on a loopback: {before_out} out, {before_in} in"
    );
    backend.unwatch(lo).expect("unwatch");
    assert_eq!(backend.tc_ids.get(&slot, 0).expect("get"), 0, "entry freed");
    // The id is watched again without links: a program still attached to lo
    // would count into it.
    backend.ids.insert(lo, 3, 0).expect("insert");
    let before = count_loopback(&mut backend, 3);
    let after = count_loopback(&mut backend, 3);
    assert_eq!(before, after, "counted after unwatch");
    assert!(
        backend
            .watch(
                "no-such-interface",
                NetIface {
                    netns,
                    ifindex: 999_999
                },
                4,
                false
            )
            .is_err(),
        "attaching to a missing interface fails"
    );
}
