//! The SIOCETHTOOL boundary: driver information, statistic names and values of
//! one interface through `ETHTOOL_GDRVINFO`, `ETHTOOL_GSTRINGS` and
//! `ETHTOOL_GSTATS`, the only interface that has driver statistics (the
//! netlink ethtool API has none).
//!
//! Reads: the driver of the interface named, in the agent's network namespace.
//! Needs: nothing for these three commands (they are not privileged). The only
//! unsafe code of the ethtool collector lives here.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
const ETHTOOL_GSTRINGS: u32 = 0x0000_001b;
const ETHTOOL_GSTATS: u32 = 0x0000_001d;
const ETH_SS_STATS: u32 = 1;
/// Length of one statistic name, NUL padded (`ETH_GSTRING_LEN`).
pub const NAME_LEN: usize = 32;

/// `struct ethtool_drvinfo` of `<linux/ethtool.h>`.
#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// What `ETHTOOL_GDRVINFO` says: NUL-padded names, and how many statistics
/// the driver has right now.
#[derive(Debug, Clone, Copy)]
pub struct DriverInfo {
    pub driver: [u8; 32],
    pub version: [u8; 32],
    pub firmware: [u8; 32],
    pub n_stats: usize,
}

/// A socket to issue ethtool ioctls on; opened once per collector.
#[derive(Debug)]
pub struct EthtoolSocket {
    fd: OwnedFd,
}

impl EthtoolSocket {
    pub fn open() -> io::Result<Self> {
        // SAFETY: socket(2) takes no pointers; a negative return is checked below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a descriptor we just opened and own exclusively.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn driver_info(&self, interface: &str) -> io::Result<DriverInfo> {
        let mut info = DrvInfo {
            cmd: ETHTOOL_GDRVINFO,
            driver: [0; 32],
            version: [0; 32],
            fw_version: [0; 32],
            bus_info: [0; 32],
            erom_version: [0; 32],
            reserved2: [0; 12],
            n_priv_flags: 0,
            n_stats: 0,
            testinfo_len: 0,
            eedump_len: 0,
            regdump_len: 0,
        };
        // SAFETY: `info` is a live, writable `struct ethtool_drvinfo`, exactly
        // what the kernel writes for GDRVINFO, and outlives the call.
        unsafe { self.ethtool(interface, (&raw mut info).cast())? };
        Ok(DriverInfo {
            driver: info.driver,
            version: info.version,
            firmware: info.fw_version,
            n_stats: usize::try_from(info.n_stats).unwrap_or(usize::MAX),
        })
    }

    /// Reads the statistic names into `names` (`NAME_LEN` bytes each, NUL
    /// padded) and returns how many the kernel wrote. `expected` is the count
    /// GDRVINFO reported just before. Runs only when that count changes.
    pub fn stat_names(
        &self,
        interface: &str,
        expected: usize,
        buffer: &mut Vec<u64>,
        names: &mut Vec<u8>,
    ) -> io::Result<usize> {
        // struct ethtool_gstrings { u32 cmd; u32 string_set; u32 len; u8 data[]; }:
        // a 12-byte header, so the names start in the middle of word 1.
        const HEADER: usize = 12;
        buffer.clear();
        buffer.resize((HEADER + capacity(expected) * NAME_LEN).div_ceil(8), 0);
        buffer[0] = header_word(ETHTOOL_GSTRINGS, ETH_SS_STATS);
        buffer[1] = header_word(u32::try_from(expected).unwrap_or(u32::MAX), 0);
        // SAFETY: the kernel writes the header and `len * NAME_LEN` bytes, with
        // `len` the driver's count at that moment. The buffer holds
        // `capacity(expected)` names, room for the count to grow between
        // GDRVINFO and this call (a channel change); `len` is checked below.
        unsafe { self.ethtool(interface, buffer.as_mut_ptr().cast())? };
        let count = usize::try_from(header_fields(buffer[1])[0]).unwrap_or(usize::MAX);
        if count > capacity(expected) {
            return Err(io::Error::other(format!(
                "driver reported {count} statistics, more than the {} read",
                capacity(expected)
            )));
        }
        names.clear();
        names.extend(
            buffer
                .iter()
                .flat_map(|word| word.to_ne_bytes())
                .skip(HEADER)
                .take(count * NAME_LEN),
        );
        Ok(count)
    }

    /// Reads the statistic values into `values` and returns how many the
    /// kernel wrote (the driver's count at that moment).
    pub fn stat_values(
        &self,
        interface: &str,
        expected: usize,
        buffer: &mut Vec<u64>,
        values: &mut Vec<u64>,
    ) -> io::Result<usize> {
        // struct ethtool_stats { u32 cmd; u32 n_stats; u64 data[]; }: the header
        // is one u64 word, then one word per statistic.
        buffer.clear();
        buffer.resize(1 + capacity(expected), 0);
        buffer[0] = header_word(ETHTOOL_GSTATS, u32::try_from(expected).unwrap_or(u32::MAX));
        // SAFETY: as for GSTRINGS: the kernel writes the header and n_stats
        // words with n_stats the driver's current count; the buffer has room
        // for `capacity(expected)`, and n_stats is checked against it below.
        unsafe { self.ethtool(interface, buffer.as_mut_ptr().cast())? };
        let [_, n_stats] = header_fields(buffer[0]);
        let count = usize::try_from(n_stats).unwrap_or(usize::MAX);
        if count > capacity(expected) {
            return Err(io::Error::other(format!(
                "driver reported {count} statistics, more than the {} read",
                capacity(expected)
            )));
        }
        values.clear();
        values.extend_from_slice(&buffer[1..=count]);
        Ok(count)
    }

    /// Issues SIOCETHTOOL for `interface` with `data` as `ifr_data`.
    ///
    /// # Safety
    /// `data` must point to a buffer the command may write in full.
    unsafe fn ethtool(&self, interface: &str, data: *mut libc::c_char) -> io::Result<()> {
        let name = interface.as_bytes();
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "invalid interface name"));
        }
        // SAFETY: ifreq is plain old data; all zeroes is a valid value.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        for (slot, byte) in request.ifr_name.iter_mut().zip(name) {
            *slot = *byte as libc::c_char;
        }
        request.ifr_ifru.ifru_data = data;
        // SAFETY: `request` is a valid ifreq naming a NUL-terminated interface
        // (zeroed past the name); the caller guarantees `data`.
        let result = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::SIOCETHTOOL, &raw mut request) };
        if result < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

/// Two native-endian u32 fields (`cmd`, then a count) as the u64 word they share.
fn header_word(cmd: u32, count: u32) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&cmd.to_ne_bytes());
    bytes[4..].copy_from_slice(&count.to_ne_bytes());
    u64::from_ne_bytes(bytes)
}

fn header_fields(word: u64) -> [u32; 2] {
    let bytes = word.to_ne_bytes();
    [
        u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        u32::from_ne_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
    ]
}

/// Room for the statistics count to grow between GDRVINFO and the read that
/// follows it: the kernel writes the driver's count of that moment, whatever
/// the buffer. Adding queues (ethtool -L) can multiply an ENA count several
/// times over; doubling plus 1024 covers that with a few kilobytes.
fn capacity(expected: usize) -> usize {
    expected.saturating_mul(2).saturating_add(1024)
}
