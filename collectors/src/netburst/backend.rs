//! Where the netburst collector's counts come from: the netburst BPF programs
//! (real), or an in-memory stand-in for tests.
//!
//! The BPF backend needs root (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN) and kernel
//! BTF. With TCX (Linux 6.6+) it attaches two programs to each watched
//! interface as it is watched (one to a loopback), so other interfaces'
//! packets run nothing;
//! otherwise, or when the kernel refuses the TCX programs, it attaches
//! `tp_btf/net_dev_xmit`, `net_dev_start_xmit` and `netif_receive_skb` for
//! every packet of the host. Everything stays attached as long as the backend
//! lives; nothing outlives the process (TCX links are released with it).

use std::collections::HashMap as StdHashMap;
use std::io;
use std::path::PathBuf;

use aya::Ebpf;
use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::util::KernelVersion;
use hostwatch_ebpf::maps::{NET_FILTER, NetIface, NetOwner, NetRing};
use serde::Deserialize;
use tracing::info;

use crate::bpf::{Hook, attach, load_and_attach, monotonic_ms, unavailable};
use crate::error::{CollectError, Unavailable};

/// Where packets are counted (`[collectors.netburst] hooks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hooks {
    /// TCX where the kernel has it (6.6+) and accepts the programs, else
    /// tracepoints.
    #[default]
    Auto,
    /// Per watched interface: other interfaces pay nothing.
    Tcx,
    /// Global tracepoints: every packet of the host runs them.
    Tracepoints,
}

/// Egress first: a loopback gets only it.
const TC_PROGRAMS: [(&str, TcAttachType); 2] = [
    ("hw_net_tc_egress", TcAttachType::Egress),
    ("hw_net_tc_ingress", TcAttachType::Ingress),
];

const TRACEPOINTS: [(&str, Hook); 3] = [
    ("hw_net_xmit", Hook::BtfTracePoint("net_dev_xmit")),
    ("hw_net_owner", Hook::BtfTracePoint("net_dev_start_xmit")),
    ("hw_net_receive", Hook::BtfTracePoint("netif_receive_skb")),
];

pub trait Backend: Send {
    /// Starts counting `iface` (named `name` in the agent's namespace) under
    /// `id`; a `loopback` one on egress only (what it receives is what it
    /// sent: one program a packet instead of two).
    fn watch(&mut self, name: &str, iface: NetIface, id: u32, loopback: bool) -> Result<(), CollectError>;
    fn unwatch(&mut self, iface: NetIface) -> Result<(), CollectError>;
    /// Each CPU's ring of `series` (`id * 2 + direction`).
    fn rings(&mut self, series: u32, out: &mut Vec<NetRing>) -> Result<(), CollectError>;
    /// Egress bytes by sender since counting began (summed over CPUs),
    /// counted only in milliseconds near `gate`'s threshold.
    fn owners(&mut self, out: &mut Vec<(NetOwner, u64)>) -> Result<(), CollectError>;
    /// Attributes `series`' senders only while a millisecond is on its way
    /// above `threshold` bytes (0: always).
    fn gate(&mut self, series: u32, threshold: u64) -> Result<(), CollectError>;
    /// The current millisecond on the clock the rings are stamped with.
    fn now_ms(&self) -> u64;
    /// Where packets are counted: `tcx` or `tracepoints`.
    fn hooks(&self) -> &'static str;
}

fn map_error(map: &str, error: impl std::error::Error + Send + Sync + 'static) -> CollectError {
    CollectError::Io {
        path: PathBuf::from(format!("BPF map {map}")),
        source: io::Error::other(error),
    }
}

pub struct BpfBackend {
    /// Holds the programs and the tracepoints' links: dropping it detaches them.
    ebpf: Ebpf,
    /// With TCX, each watched interface's egress and ingress links (egress
    /// only on a loopback): dropping them detaches the programs from it.
    /// `None` with tracepoints.
    tc_links: Option<StdHashMap<NetIface, Vec<SchedClassifierLink>>>,
    /// Visible to the tests, which watch an id without its links.
    pub(super) ids: HashMap<MapData, NetIface, u32>,
    /// The programs' pre-filter: per `ifindex & (NET_FILTER - 1)`, how many
    /// entries of `ids` have it. Never below that count, or a watched
    /// interface would go uncounted; above it only costs an exact lookup.
    filter: Array<MapData, u32>,
    /// The TCX programs' first test: per `ifindex & (NET_FILTER - 1)`, one
    /// watched interface (`ifindex << 32 | id`) or 0; the others are found
    /// in `ids`.
    pub(super) tc_ids: Array<MapData, u64>,
    rings: PerCpuArray<MapData, NetRing>,
    owners: PerCpuHashMap<MapData, NetOwner, u64>,
    gates: Array<MapData, u64>,
    /// Online CPUs: each counts its own share of a millisecond.
    cpus: u64,
}

impl BpfBackend {
    /// Loads the programs `hooks` asks for; the TCX ones count only
    /// interfaces of `netns` (the agent's).
    pub fn new(hooks: Hooks, netns: u32) -> Result<Self, Unavailable> {
        let tcx = match hooks {
            Hooks::Tracepoints => None,
            Hooks::Tcx => Some(load_tcx(netns)?),
            Hooks::Auto if !KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0)) => None,
            Hooks::Auto => match load_tcx(netns) {
                Ok(ebpf) => Some(ebpf),
                // E.g. 6.6 to 6.9, where TC programs may not ask for the current task.
                Err(reason) => {
                    info!(%reason, "TCX programs refused; counting with tracepoints");
                    None
                }
            },
        };
        let tc_links = tcx.is_some().then(StdHashMap::new);
        let mut ebpf = match tcx {
            Some(ebpf) => ebpf,
            None => load_and_attach(&hostwatch_ebpf::NETBURST, &TRACEPOINTS)?,
        };
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| Unavailable::new(format!("BPF object netburst has no map {name}")))
        };
        let (ids, filter, tc_ids, rings, owners, gates) = (
            take("net_iface_ids")?,
            take("net_iface_filter")?,
            take("net_tc_ids")?,
            take("net_rings")?,
            take("net_owner_bytes")?,
            take("net_gate")?,
        );
        let typed = |error: aya::maps::MapError| Unavailable::new(format!("netburst maps: {error}"));
        let cpus = aya::util::online_cpus()
            .map_err(|(path, error)| Unavailable::new(format!("counting online CPUs ({path}): {error}")))?
            .len();
        Ok(Self {
            ids: HashMap::try_from(ids).map_err(typed)?,
            filter: Array::try_from(filter).map_err(typed)?,
            tc_ids: Array::try_from(tc_ids).map_err(typed)?,
            rings: PerCpuArray::try_from(rings).map_err(typed)?,
            owners: PerCpuHashMap::try_from(owners).map_err(typed)?,
            gates: Array::try_from(gates).map_err(typed)?,
            cpus: (cpus as u64).max(1),
            ebpf,
            tc_links,
        })
    }

    /// Whether packets are counted by TCX programs on the watched interfaces.
    pub fn tcx(&self) -> bool {
        self.tc_links.is_some()
    }

    fn attach_tc(&mut self, name: &str, loopback: bool) -> Result<Vec<SchedClassifierLink>, CollectError> {
        let hooks = if loopback { &TC_PROGRAMS[..1] } else { &TC_PROGRAMS[..] };
        let mut links = Vec::with_capacity(hooks.len());
        for &(program, attach_type) in hooks {
            let failed = |error: aya::programs::ProgramError| CollectError::Io {
                path: PathBuf::from(format!("TCX {program} on {name}")),
                source: io::Error::other(error),
            };
            let classifier: &mut SchedClassifier = self
                .ebpf
                .program_mut(program)
                .ok_or(aya::programs::ProgramError::NotLoaded)
                .map_err(failed)?
                .try_into()
                .map_err(failed)?;
            // First in the interface's chain: a program before ours that
            // drops or redirects (Cilium's, say) would hide its packets.
            let id = classifier
                .attach_with_options(name, attach_type, TcAttachOptions::TcxOrder(LinkOrder::first()))
                .map_err(failed)?;
            links.push(classifier.take_link(id).map_err(failed)?);
        }
        Ok(links)
    }
}

/// The entry of `iface` in the arrays indexed by ifindex (`net_iface_filter`, `net_tc_ids`).
fn filter_slot(iface: NetIface) -> u32 {
    iface.ifindex & (NET_FILTER - 1)
}

/// Loads the netburst object with the TCX programs (not yet attached).
fn load_tcx(netns: u32) -> Result<Ebpf, Unavailable> {
    let mut ebpf = hostwatch_ebpf::load_with(&hostwatch_ebpf::NETBURST, |loader| {
        loader.override_global("hw_net_netns", &netns, true);
    })
    .map_err(unavailable)?;
    attach(
        &mut ebpf,
        &hostwatch_ebpf::NETBURST,
        &TC_PROGRAMS.map(|(program, _)| (program, Hook::Tc)),
    )?;
    Ok(ebpf)
}

impl BpfBackend {
    /// Adds `delta` to the filter entry of `iface`'s ifindex.
    fn filter_add(&mut self, iface: NetIface, delta: i32) -> Result<(), CollectError> {
        let slot = filter_slot(iface);
        let error = |e| map_error("net_iface_filter", e);
        let watched = self.filter.get(&slot, 0).map_err(error)?;
        self.filter
            .set(slot, watched.saturating_add_signed(delta), 0)
            .map_err(error)
    }
}

impl Backend for BpfBackend {
    // The filter entry is raised before the interface is added and lowered
    // after it is removed, so it never undercounts, even for a packet between.
    // With TCX the id is in place before the programs are attached, so their
    // first packet is counted.
    fn watch(&mut self, name: &str, iface: NetIface, id: u32, loopback: bool) -> Result<(), CollectError> {
        self.filter_add(iface, 1)?;
        self.ids
            .insert(iface, id, 0)
            .map_err(|e| map_error("net_iface_ids", e))?;
        if self.tc_links.is_some() {
            let slot = filter_slot(iface);
            let error = |e| map_error("net_tc_ids", e);
            if self.tc_ids.get(&slot, 0).map_err(error)? == 0 {
                let entry = u64::from(iface.ifindex) << 32 | u64::from(id);
                self.tc_ids.set(slot, entry, 0).map_err(error)?;
            }
            let links = match self.attach_tc(name, loopback) {
                Ok(links) => links,
                Err(error) => {
                    self.unwatch(iface)?;
                    return Err(error);
                }
            };
            if let Some(all) = &mut self.tc_links {
                all.insert(iface, links);
            }
        }
        Ok(())
    }

    fn unwatch(&mut self, iface: NetIface) -> Result<(), CollectError> {
        // Detached first: a link of an interface already gone is simply released.
        if let Some(links) = &mut self.tc_links {
            links.remove(&iface);
            let slot = filter_slot(iface);
            let error = |e| map_error("net_tc_ids", e);
            if self.tc_ids.get(&slot, 0).map_err(error)? >> 32 == u64::from(iface.ifindex) {
                self.tc_ids.set(slot, 0, 0).map_err(error)?;
            }
        }
        self.ids.remove(&iface).map_err(|e| map_error("net_iface_ids", e))?;
        self.filter_add(iface, -1)
    }

    fn rings(&mut self, series: u32, out: &mut Vec<NetRing>) -> Result<(), CollectError> {
        let per_cpu = self.rings.get(&series, 0).map_err(|e| map_error("net_rings", e))?;
        out.clear();
        out.extend(per_cpu.iter().copied());
        Ok(())
    }

    fn owners(&mut self, out: &mut Vec<(NetOwner, u64)>) -> Result<(), CollectError> {
        out.clear();
        for entry in self.owners.iter() {
            // An entry evicted between the key walk and its lookup is skipped.
            let Ok((owner, per_cpu)) = entry else { continue };
            out.push((owner, per_cpu.iter().sum()));
        }
        Ok(())
    }

    // A millisecond above the threshold is above threshold / CPUs on at
    // least one CPU, where the program sees only its own CPU's count.
    fn gate(&mut self, series: u32, threshold: u64) -> Result<(), CollectError> {
        self.gates
            .set(series, threshold / self.cpus, 0)
            .map_err(|e| map_error("net_gate", e))
    }

    fn now_ms(&self) -> u64 {
        monotonic_ms()
    }

    fn hooks(&self) -> &'static str {
        if self.tcx() { "tcx" } else { "tracepoints" }
    }
}
