//! Where the netburst collector's counts come from: the netburst BPF program
//! (real), or an in-memory stand-in for tests.
//!
//! The BPF backend needs root (CAP_BPF, CAP_PERFMON) and kernel BTF; it
//! attaches `tp_btf/net_dev_xmit`, `net_dev_start_xmit` and `netif_receive_skb`, which stay
//! attached as long as the backend lives.

use std::io;
use std::path::PathBuf;

use aya::Ebpf;
use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap};
use hostwatch_ebpf::maps::{NET_FILTER, NetIface, NetOwner, NetRing};

use crate::bpf::{Hook, load_and_attach, monotonic_ms};
use crate::error::{CollectError, Unavailable};

pub trait Backend: Send {
    /// Starts counting `iface` under `id`.
    fn watch(&mut self, iface: NetIface, id: u32) -> Result<(), CollectError>;
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
}

fn map_error(map: &str, error: impl std::error::Error + Send + Sync + 'static) -> CollectError {
    CollectError::Io {
        path: PathBuf::from(format!("BPF map {map}")),
        source: io::Error::other(error),
    }
}

pub struct BpfBackend {
    /// Holds the programs' links: dropping it detaches them.
    _ebpf: Ebpf,
    ids: HashMap<MapData, NetIface, u32>,
    /// The programs' pre-filter: per `ifindex & (NET_FILTER - 1)`, how many
    /// entries of `ids` have it. Never below that count, or a watched
    /// interface would go uncounted; above it only costs an exact lookup.
    filter: Array<MapData, u32>,
    rings: PerCpuArray<MapData, NetRing>,
    owners: PerCpuHashMap<MapData, NetOwner, u64>,
    gates: Array<MapData, u64>,
    /// Online CPUs: each counts its own share of a millisecond.
    cpus: u64,
}

impl BpfBackend {
    pub fn new() -> Result<Self, Unavailable> {
        let mut ebpf = load_and_attach(
            &hostwatch_ebpf::NETBURST,
            &[
                ("hw_net_xmit", Hook::BtfTracePoint("net_dev_xmit")),
                ("hw_net_owner", Hook::BtfTracePoint("net_dev_start_xmit")),
                ("hw_net_receive", Hook::BtfTracePoint("netif_receive_skb")),
            ],
        )?;
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| Unavailable::new(format!("BPF object netburst has no map {name}")))
        };
        let (ids, filter, rings, owners, gates) = (
            take("net_iface_ids")?,
            take("net_iface_filter")?,
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
            rings: PerCpuArray::try_from(rings).map_err(typed)?,
            owners: PerCpuHashMap::try_from(owners).map_err(typed)?,
            gates: Array::try_from(gates).map_err(typed)?,
            cpus: (cpus as u64).max(1),
            _ebpf: ebpf,
        })
    }
}

impl BpfBackend {
    /// Adds `delta` to the filter entry of `iface`'s ifindex.
    fn filter_add(&mut self, iface: NetIface, delta: i32) -> Result<(), CollectError> {
        let slot = iface.ifindex & (NET_FILTER - 1);
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
    fn watch(&mut self, iface: NetIface, id: u32) -> Result<(), CollectError> {
        self.filter_add(iface, 1)?;
        self.ids.insert(iface, id, 0).map_err(|e| map_error("net_iface_ids", e))
    }

    fn unwatch(&mut self, iface: NetIface) -> Result<(), CollectError> {
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
}
