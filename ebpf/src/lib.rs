//! hostwatch's BPF objects, embedded in the binary, with the Rust mirrors of
//! their map layouts and one way to load them.
//!
//! The objects are built from `ebpf/bpf/*.bpf.c` with clang-19 and committed
//! (`make -C ebpf`; `make -C ebpf check` proves they match their sources), so
//! building the agent needs no clang. Loading needs a kernel with BTF and
//! CAP_BPF + CAP_PERFMON (or root); without them [`load`] fails with a typed
//! error and the collector that asked reports itself down.

pub mod maps;

use aya::{Ebpf, EbpfLoader};

/// An embedded BPF object and the name it is known by in errors and logs.
#[derive(Debug, Clone, Copy)]
pub struct Object {
    pub name: &'static str,
    pub bytes: &'static [u8],
}

/// Per-millisecond bytes and packets per interface and direction.
pub static NETBURST: Object = Object {
    name: "netburst",
    bytes: aya::include_bytes_aligned!("../objects/netburst.bpf.o"),
};

/// mmap_lock wait per process and mode, and opens of /proc/PID/smaps.
pub static STALLS: Object = Object {
    name: "stalls",
    bytes: aya::include_bytes_aligned!("../objects/stalls.bpf.o"),
};

/// Python GIL wait and hold per process, from uprobes the agent attaches per target.
pub static GIL: Object = Object {
    name: "gil",
    bytes: aya::include_bytes_aligned!("../objects/gil.bpf.o"),
};

/// Every embedded object.
pub static ALL: &[&Object] = &[&NETBURST, &STALLS, &GIL];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading BPF object {object}: {source}")]
    Load {
        object: &'static str,
        #[source]
        source: aya::EbpfError,
    },
    #[error("BPF object {object} has no program {program}")]
    MissingProgram {
        object: &'static str,
        program: &'static str,
    },
    #[error("BPF object {object} has no map {map}")]
    MissingMap { object: &'static str, map: &'static str },
    #[error("BPF program {program} of {object}: {source}")]
    Program {
        object: &'static str,
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("BPF map {map} of {object}: {source}")]
    Map {
        object: &'static str,
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

impl Error {
    /// The kernel verifier's log when the kernel refused a program: long, so
    /// it goes to the debug log rather than into the collector's reason.
    pub fn verifier_log(&self) -> Option<String> {
        match self {
            Self::Program {
                source: aya::programs::ProgramError::LoadError { verifier_log, .. },
                ..
            } => Some(verifier_log.to_string()),
            _ => None,
        }
    }

    /// Whether the failure means "not allowed here" (not root, no CAP_BPF)
    /// rather than a broken program: an EPERM or EACCES anywhere in its causes.
    pub fn is_permission(&self) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(error) = cause {
            if let Some(io) = error.downcast_ref::<std::io::Error>()
                && matches!(io.raw_os_error(), Some(libc_eperm::EPERM | libc_eperm::EACCES))
            {
                return true;
            }
            cause = error.source();
        }
        false
    }

    /// The message with every cause, on one line.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(error) = cause {
            text.push_str(": ");
            text.push_str(&error.to_string());
            cause = error.source();
        }
        text
    }
}

/// Loads `object` (its maps created, no program loaded or attached yet).
pub fn load(object: &Object) -> Result<Ebpf, Error> {
    load_with(object, |_| {})
}

/// Like [`load`], after `configure` has set what only the loader can: the
/// `const volatile` globals (`override_global`) and map sizes (`set_max_entries`).
pub fn load_with<'a>(object: &Object, configure: impl FnOnce(&mut EbpfLoader<'a>)) -> Result<Ebpf, Error> {
    let mut loader = EbpfLoader::new();
    configure(&mut loader);
    loader.load(object.bytes).map_err(|source| Error::Load {
        object: object.name,
        source,
    })
}

/// errno values, without a libc dependency for two constants.
mod libc_eperm {
    pub const EPERM: i32 = 1;
    pub const EACCES: i32 = 13;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs without privileges: the embedded objects parse, and hold the
    /// programs and maps the collectors look up by name.
    #[test]
    fn embedded_objects_have_their_programs_and_maps() {
        let object = aya_obj::Object::parse(NETBURST.bytes).expect("netburst parses");
        let mut programs: Vec<&str> = object.programs.keys().map(String::as_str).collect();
        programs.sort_unstable();
        assert_eq!(
            programs,
            [
                "hw_net_owner",
                "hw_net_receive",
                "hw_net_tc_egress",
                "hw_net_tc_ingress",
                "hw_net_xmit"
            ]
        );
        let mut maps: Vec<&str> = object
            .maps
            .keys()
            .map(String::as_str)
            .filter(|m| !m.starts_with('.'))
            .collect();
        maps.sort_unstable();
        assert_eq!(
            maps,
            [
                "net_gate",
                "net_iface_filter",
                "net_iface_ids",
                "net_owner_bytes",
                "net_pending",
                "net_rings",
                "net_tc_ids"
            ]
        );

        let object = aya_obj::Object::parse(STALLS.bytes).expect("stalls parses");
        let mut programs: Vec<&str> = object.programs.keys().map(String::as_str).collect();
        programs.sort_unstable();
        assert_eq!(
            programs,
            [
                "hw_mmap_lock_acquired",
                "hw_mmap_lock_start",
                "hw_smaps_openat",
                "hw_smaps_openat2"
            ]
        );
        let mut maps: Vec<&str> = object
            .maps
            .keys()
            .map(String::as_str)
            .filter(|m| !m.starts_with('.'))
            .collect();
        maps.sort_unstable();
        assert_eq!(
            maps,
            [
                "mmap_lock_start",
                "mmap_lock_wait",
                "smaps_events",
                "smaps_lost",
                "smaps_scratch"
            ]
        );

        let object = aya_obj::Object::parse(GIL.bytes).expect("gil parses");
        let mut programs: Vec<&str> = object.programs.keys().map(String::as_str).collect();
        programs.sort_unstable();
        assert_eq!(
            programs,
            [
                "hw_gil_drop_enter",
                "hw_gil_drop_return",
                "hw_gil_release",
                "hw_gil_take_enter",
                "hw_gil_take_return"
            ]
        );
        let mut maps: Vec<&str> = object
            .maps
            .keys()
            .map(String::as_str)
            .filter(|m| !m.starts_with('.'))
            .collect();
        maps.sort_unstable();
        assert_eq!(maps, ["gil_stats", "gil_threads"]);
    }
}

#[cfg(test)]
mod root_tests {
    use std::path::Path;

    use aya::maps::{Array, HashMap, PerCpuArray, RingBuf};
    use aya::programs::{BtfTracePoint, TracePoint};

    use super::*;
    use crate::maps::{
        MMAP_LOCK_MIN_WAIT_NS, MmapLockKey, MmapLockWait, NET_FILTER, NET_TRANSMIT, NetIface, NetRing, SmapsEvent,
    };

    fn is_root() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    }

    /// Loads and attaches netburst for real and counts loopback traffic.
    #[test]
    fn netburst_counts_loopback_bytes() {
        if !is_root() {
            eprintln!("skipped: loading BPF programs needs root (CAP_BPF, CAP_PERFMON)");
            return;
        }
        let mut ebpf = load(&NETBURST).expect("loads");
        let btf = aya::Btf::from_sys_fs().expect("kernel BTF");
        for (program, tracepoint) in [("hw_net_xmit", "net_dev_xmit"), ("hw_net_receive", "netif_receive_skb")] {
            let program: &mut BtfTracePoint = ebpf.program_mut(program).expect("program").try_into().expect("tp_btf");
            program.load(tracepoint, &btf).expect("verifier accepts");
            program.attach().expect("attaches");
        }
        let lo = NetIface::read(NetIface::own_netns().expect("netns"), Path::new("/sys/class/net/lo")).expect("lo");
        let mut ids: HashMap<_, NetIface, u32> =
            HashMap::try_from(ebpf.map_mut("net_iface_ids").expect("map")).expect("hash");
        ids.insert(lo, 0, 0).expect("insert");
        let mut filter: Array<_, u32> = Array::try_from(ebpf.map_mut("net_iface_filter").expect("map")).expect("array");
        filter.set(lo.ifindex & (NET_FILTER - 1), 1, 0).expect("set");

        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let target = socket.local_addr().expect("addr");
        let payload = [7u8; 1000];
        for _ in 0..100 {
            socket.send_to(&payload, target).expect("send");
        }
        let rings: PerCpuArray<_, NetRing> = PerCpuArray::try_from(ebpf.map("net_rings").expect("map")).expect("array");
        let per_cpu = rings.get(&NET_TRANSMIT, 0).expect("read");
        let (bytes, packets) = per_cpu
            .iter()
            .flat_map(|ring| ring.bytes.iter().zip(&ring.packets))
            .fold((0u64, 0u64), |(b, p), (bytes, packets)| {
                (b + bytes, p + u64::from(*packets))
            });
        // 1000 bytes of payload + 8 UDP + 20 IPv4 + 14 Ethernet, 100 times (and
        // perhaps a little other loopback traffic).
        assert!(packets >= 100, "packets {packets}");
        assert!(bytes >= 104_200, "bytes {bytes}");
    }

    /// Loads and attaches stalls for real: waits are counted consistently
    /// while a child churns mmap/munmap, and a child's open of its smaps_rollup
    /// arrives as one event with the reader's pid and comm (the test binary,
    /// not the agent, opens it: the agent never does).
    #[test]
    fn stalls_counts_mmap_lock_and_sees_smaps_opens() {
        if !is_root() {
            eprintln!("skipped: loading BPF programs needs root (CAP_BPF, CAP_PERFMON)");
            return;
        }
        let mut ebpf = load(&STALLS).expect("loads");
        let btf = aya::Btf::from_sys_fs().expect("kernel BTF");
        for (program, tracepoint) in [
            ("hw_mmap_lock_start", "mmap_lock_start_locking"),
            ("hw_mmap_lock_acquired", "mmap_lock_acquire_returned"),
        ] {
            let program: &mut BtfTracePoint = ebpf.program_mut(program).expect("program").try_into().expect("tp_btf");
            program.load(tracepoint, &btf).expect("verifier accepts");
            program.attach().expect("attaches");
        }
        let program: &mut TracePoint = ebpf
            .program_mut("hw_smaps_openat")
            .expect("program")
            .try_into()
            .expect("tracepoint");
        program.load().expect("verifier accepts");
        program
            .attach("syscalls", "sys_enter_openat")
            .expect("attaches (tracefs mounted?)");
        // Each mmap and munmap takes the process's mmap_lock for writing.
        let churn = std::process::Command::new("python3")
            .args(["-c", "import mmap\nfor _ in range(1000): mmap.mmap(-1, 4096).close()"])
            .spawn()
            .expect("python3 runs");
        assert!(churn.wait_with_output().expect("python3 ends").status.success());
        let child = std::process::Command::new("cat")
            .arg("/proc/self/smaps_rollup")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("cat runs");
        let child_pid = child.id();
        let status = child.wait_with_output().expect("cat ends").status;
        assert!(status.success());

        // Uncontended locks are not counted: the churn alone may leave no
        // entry, and whatever it left is consistent.
        let waits: HashMap<_, MmapLockKey, MmapLockWait> =
            HashMap::try_from(ebpf.map("mmap_lock_wait").expect("map")).expect("hash");
        for entry in waits.iter() {
            let (key, wait) = entry.expect("entry");
            assert!(key.write <= 1);
            assert_eq!(
                wait.buckets.iter().sum::<u64>(),
                wait.count,
                "every wait is in one bucket"
            );
            assert!(wait.wait_ns >= wait.count * MMAP_LOCK_MIN_WAIT_NS, "{key:?} {wait:?}");
            assert_eq!(wait.buckets[..10].iter().sum::<u64>(), 0, "nothing under 1024 ns");
        }

        let mut ring = RingBuf::try_from(ebpf.map_mut("smaps_events").expect("map")).expect("ring");
        let mut events = Vec::new();
        while let Some(item) = ring.next() {
            events.push(SmapsEvent::from_bytes(&item).expect("a whole event"));
        }
        let event = events
            .iter()
            .find(|e| e.tgid == child_pid)
            .unwrap_or_else(|| panic!("the child's open among {events:?}"));
        assert_eq!(event.comm(), b"cat");
        assert_eq!(event.path(), b"/proc/self/smaps_rollup");
        assert!(event.time_ns > 0);
    }
}
