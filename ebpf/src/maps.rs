//! Rust mirrors of the map layouts in `ebpf/include/hostwatch.h`, field for
//! field. A test checks each size against the type the object's BTF records.
#![allow(unsafe_code)]

/// Millisecond slots per (interface, direction) ring (`HW_NET_RING`).
pub const NET_RING: usize = 256;
/// Interfaces counted at once (`HW_NET_MAX_IFACES`).
pub const NET_MAX_IFACES: u32 = 32;
pub const NET_RECEIVE: u32 = 0;
pub const NET_TRANSMIT: u32 = 1;

/// `struct hw_net_iface`: key of `net_iface_ids`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct NetIface {
    pub netns: u32,
    pub ifindex: u32,
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
        assert_eq!(btf_size("gil.bpf.o", "hw_gil_stats"), size_of::<GilStats>());
        assert_eq!(btf_size("gil.bpf.o", "hw_gil_thread"), size_of::<GilThread>());
    }
}
