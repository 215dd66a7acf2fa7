//! Rust mirrors of the map layouts in `ebpf/include/hostwatch.h`, field for
//! field. A test checks each size against the type the object's BTF records.
#![allow(unsafe_code)]

/// Millisecond slots per (interface, direction) ring (`HW_NET_RING`).
pub const NET_RING: usize = 256;
/// Interfaces counted at once (`HW_NET_MAX_IFACES`).
pub const NET_MAX_IFACES: u32 = 32;
/// Entries of `net_iface_filter` (`HW_NET_FILTER`), indexed by
/// `ifindex & (NET_FILTER - 1)`: each counts the watched interfaces there.
pub const NET_FILTER: u32 = 256;
pub const NET_RECEIVE: u32 = 0;
pub const NET_TRANSMIT: u32 = 1;

/// `struct hw_net_iface`: key of `net_iface_ids`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct NetIface {
    pub netns: u32,
    pub ifindex: u32,
}

impl NetIface {
    /// The network namespace the programs see this process's interfaces in:
    /// its inode (`dev->nd_net.net->ns.inum`).
    pub fn own_netns() -> std::io::Result<u32> {
        use std::os::unix::fs::MetadataExt;
        // Namespace inodes are 32-bit (proc_inum).
        Ok(std::fs::metadata("/proc/self/ns/net")?.ino() as u32)
    }

    /// The interface whose `class/net/NAME` directory in sysfs is `dir`, in
    /// the namespace `netns`.
    pub fn read(netns: u32, dir: &std::path::Path) -> std::io::Result<Self> {
        let ifindex = std::fs::read_to_string(dir.join("ifindex"))?
            .trim()
            .parse()
            .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error))?;
        Ok(Self { netns, ifindex })
    }
}

/// `struct hw_net_ring`: value of `net_rings`, one per CPU.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct NetRing {
    pub ms: [u64; NET_RING],
    pub bytes: [u64; NET_RING],
    pub packets: [u32; NET_RING],
}

/// `struct hw_net_owner`: key of `net_owner_bytes`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct NetOwner {
    pub cgroup: u64,
    pub tgid: u32,
    pub series: u32,
}

/// log2 nanosecond buckets of the mmap_lock wait histogram (`HW_MMAP_LOCK_BUCKETS`).
pub const MMAP_LOCK_BUCKETS: usize = 32;
/// Bytes of path per smaps event (`HW_SMAPS_PATH`).
pub const SMAPS_PATH: usize = 64;

/// `struct hw_mmap_lock_key`: key of `mmap_lock_wait`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct MmapLockKey {
    pub tgid: u32,
    /// 1 for the write (exclusive) lock, 0 for the read lock.
    pub write: u32,
}

/// Waits shorter than this are not counted (`HW_MMAP_LOCK_MIN_WAIT_NS`): an
/// uncontended lock.
pub const MMAP_LOCK_MIN_WAIT_NS: u64 = 1024;

/// `struct hw_mmap_lock_wait`: value of `mmap_lock_wait`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct MmapLockWait {
    pub wait_ns: u64,
    pub count: u64,
    /// Bucket `b` counts waits in `[2^b, 2^(b+1))` ns; the last also longer ones.
    pub buckets: [u64; MMAP_LOCK_BUCKETS],
}

/// `struct hw_smaps_event`: one record of the `smaps_events` ring buffer.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SmapsEvent {
    /// CLOCK_BOOTTIME nanoseconds.
    pub time_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub comm: [u8; 16],
    pub path: [u8; SMAPS_PATH],
}

impl SmapsEvent {
    /// Decodes one ring buffer record; `None` unless it is exactly one event.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != size_of::<Self>() {
            return None;
        }
        // SAFETY: `bytes` holds exactly size_of::<Self>() bytes, and Self is
        // plain integers and byte arrays (any bit pattern is valid). Read
        // unaligned: the ring buffer promises 8-byte alignment, a slice does not.
        Some(unsafe { bytes.as_ptr().cast::<Self>().read_unaligned() })
    }

    /// The reader thread's comm, up to its NUL.
    pub fn comm(&self) -> &[u8] {
        until_nul(&self.comm)
    }

    /// The opened path, up to its NUL.
    pub fn path(&self) -> &[u8] {
        until_nul(&self.path)
    }
}

fn until_nul(bytes: &[u8]) -> &[u8] {
    bytes.split(|b| *b == 0).next().unwrap_or(bytes)
}

/// Buckets of the GIL wait histogram, `+Inf` included (`HW_GIL_BUCKETS`).
pub const GIL_BUCKETS: usize = 12;
/// The programs' global holding the histogram's finite bounds in nanoseconds.
pub const GIL_BOUNDS_GLOBAL: &str = "hw_gil_bounds_ns";

/// `struct hw_gil_stats`: value of `gil_stats`, one per CPU, keyed by tgid.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GilStats {
    pub wait_ns: u64,
    pub hold_ns: u64,
    pub hits: u64,
    pub waiting: i64,
    pub wait_buckets: [u64; GIL_BUCKETS],
}

/// `struct hw_gil_thread`: value of `gil_threads`, keyed by pid_tgid.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GilThread {
    pub wait_start: u64,
    pub hold_start: u64,
}

// SAFETY: each is #[repr(C)], made only of integers (any bit pattern is
// valid) and has no padding, matching the C layout the kernel reads and writes.
unsafe impl aya::Pod for NetIface {}
// SAFETY: as above.
unsafe impl aya::Pod for NetRing {}
// SAFETY: as above.
unsafe impl aya::Pod for NetOwner {}
// SAFETY: as above.
unsafe impl aya::Pod for MmapLockKey {}
// SAFETY: as above.
unsafe impl aya::Pod for MmapLockWait {}
// SAFETY: as above.
unsafe impl aya::Pod for SmapsEvent {}
// SAFETY: as above.
unsafe impl aya::Pod for GilStats {}
// SAFETY: as above.
unsafe impl aya::Pod for GilThread {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// `struct NAME`'s size as the object's BTF records it, read with bpftool
    /// (`[12] STRUCT 'hw_net_ring' size=5120 vlen=3`).
    fn btf_size(object: &str, name: &str) -> usize {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/objects/").to_owned() + object;
        let output = Command::new("bpftool")
            .args(["btf", "dump", "file", &path, "format", "raw"])
            .output()
            .expect("bpftool runs (packaging/install-deps.sh --test installs it)");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let text = String::from_utf8(output.stdout).expect("utf-8");
        let line = text
            .lines()
            .find(|l| l.contains(&format!("STRUCT '{name}' ")))
            .unwrap_or_else(|| panic!("{name} in BTF"));
        let size = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("size="))
            .expect("size");
        size.parse().expect("number")
    }

    #[test]
    fn mirrors_match_the_c_layouts() {
        assert_eq!(btf_size("netburst.bpf.o", "hw_net_iface"), size_of::<NetIface>());
        assert_eq!(btf_size("netburst.bpf.o", "hw_net_ring"), size_of::<NetRing>());
        assert_eq!(btf_size("netburst.bpf.o", "hw_net_owner"), size_of::<NetOwner>());
        assert_eq!(btf_size("stalls.bpf.o", "hw_mmap_lock_key"), size_of::<MmapLockKey>());
        assert_eq!(btf_size("stalls.bpf.o", "hw_mmap_lock_wait"), size_of::<MmapLockWait>());
        assert_eq!(btf_size("stalls.bpf.o", "hw_smaps_event"), size_of::<SmapsEvent>());
        assert_eq!(btf_size("gil.bpf.o", "hw_gil_stats"), size_of::<GilStats>());
        assert_eq!(btf_size("gil.bpf.o", "hw_gil_thread"), size_of::<GilThread>());
    }
}
