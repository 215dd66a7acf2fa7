//! Where driver statistics come from: the SIOCETHTOOL ioctl on this host, or a
//! fixture directory of verbatim `ethtool -S` / `ethtool -i` captures.
//!
//! The ioctl backend reads `SYSFS/class/net` to list interfaces and needs no
//! privilege; the fixture backend reads `DIR/<interface>/{statistics,driver}`
//! on every collection, so a test or a replay can change counters live.

use std::io;
use std::path::{Path, PathBuf};

use super::ioctl::{self, EthtoolSocket};
use crate::error::CollectError;

/// One interface's driver identity and statistics after a read.
#[derive(Debug, Default)]
pub struct Stats {
    pub driver: String,
    pub version: String,
    pub firmware: String,
    /// Statistic names, index-aligned with `values`. Rewritten only when the
    /// driver's set changes (count change, driver reload).
    pub names: Vec<String>,
    pub values: Vec<u64>,
    /// Bumped whenever `names` changed, so name lookups know to run again.
    pub generation: u64,
    /// Lines or names the backend could not use in the last read.
    pub rejected: u64,
}

#[derive(Debug)]
pub enum ReadError {
    /// The interface has no driver statistics (loopback, some virtual devices).
    Unsupported,
    Failed(CollectError),
}

pub trait Backend: Send {
    /// Lists the interfaces to consider into `out`: name, and whether it has a
    /// device behind it (a NIC, not a virtual interface).
    fn interfaces(&mut self, out: &mut Vec<(String, bool)>) -> Result<(), CollectError>;

    fn read(&mut self, interface: &str, stats: &mut Stats) -> Result<(), ReadError>;
}

/// Longest statistic name a driver can report (`ETH_GSTRING_LEN` less the NUL).
const MAX_NAME: usize = ioctl::NAME_LEN - 1;

fn set(slot: &mut String, value: &str) {
    if slot != value {
        slot.clear();
        slot.push_str(value);
    }
}

fn list_dir(dir: &Path, out: &mut Vec<(String, bool)>, has_device: impl Fn(&Path) -> bool) -> Result<(), CollectError> {
    let io_error = |source| CollectError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io_error)? {
        let entry = entry.map_err(io_error)?;
        if let Ok(name) = entry.file_name().into_string() {
            out.push((name, has_device(&entry.path())));
        }
    }
    out.sort_unstable();
    Ok(())
}

/// Reads the host's drivers through SIOCETHTOOL.
#[derive(Debug)]
pub struct IoctlBackend {
    socket: EthtoolSocket,
    class_net: PathBuf,
    /// Scratch for the ioctl buffers, kept for their capacity.
    words: Vec<u64>,
    names: Vec<u8>,
}

impl IoctlBackend {
    pub fn new(class_net: PathBuf) -> io::Result<Self> {
        Ok(Self {
            socket: EthtoolSocket::open()?,
            class_net,
            words: Vec::new(),
            names: Vec::new(),
        })
    }

    fn refresh_names(&mut self, interface: &str, expected: usize, stats: &mut Stats) -> io::Result<()> {
        let count = self
            .socket
            .stat_names(interface, expected, &mut self.words, &mut self.names)?;
        stats.names.resize_with(count, String::new);
        for (slot, raw) in stats.names.iter_mut().zip(self.names.chunks_exact(ioctl::NAME_LEN)) {
            let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
            // A name that is not UTF-8 keeps its position (values are by
            // index) but matches nothing.
            match std::str::from_utf8(&raw[..end]) {
                Ok(name) => set(slot, name),
                Err(_) => {
                    slot.clear();
                    stats.rejected += 1;
                }
            }
        }
        stats.rejected += duplicates(&stats.names);
        stats.generation += 1;
        Ok(())
    }
}

impl Backend for IoctlBackend {
    fn interfaces(&mut self, out: &mut Vec<(String, bool)>) -> Result<(), CollectError> {
        list_dir(&self.class_net, out, |path| path.join("device").exists())
    }

    fn read(&mut self, interface: &str, stats: &mut Stats) -> Result<(), ReadError> {
        let failed = |error: io::Error| match error.raw_os_error() {
            Some(libc::EOPNOTSUPP) => ReadError::Unsupported,
            _ => ReadError::Failed(CollectError::Io {
                path: PathBuf::from(format!("SIOCETHTOOL {interface}")),
                source: error,
            }),
        };
        stats.rejected = 0;
        let info = self.socket.driver_info(interface).map_err(failed)?;
        set(&mut stats.driver, padded(&info.driver));
        set(&mut stats.version, padded(&info.version));
        set(&mut stats.firmware, padded(&info.firmware));
        if info.n_stats != stats.names.len() {
            self.refresh_names(interface, info.n_stats, stats).map_err(failed)?;
        }
        let count = self
            .socket
            .stat_values(interface, stats.names.len(), &mut self.words, &mut stats.values)
            .map_err(failed)?;
        if count != stats.names.len() {
            // The set changed between the two calls: read names and values again.
            self.refresh_names(interface, count, stats).map_err(failed)?;
            let again = self
                .socket
                .stat_values(interface, count, &mut self.words, &mut stats.values)
                .map_err(failed)?;
            if again != stats.names.len() {
                return Err(failed(io::Error::other("statistics count keeps changing")));
            }
        }
        Ok(())
    }
}

/// The text of a NUL-padded ethtool string field (lossy only for non-UTF-8).
fn padded(raw: &[u8]) -> &str {
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    std::str::from_utf8(&raw[..end]).unwrap_or("?")
}

/// How many names repeat an earlier one (the first occurrence wins).
fn duplicates(names: &[String]) -> u64 {
    let mut sorted: Vec<&str> = names.iter().map(String::as_str).filter(|n| !n.is_empty()).collect();
    sorted.sort_unstable();
    sorted.windows(2).filter(|pair| pair[0] == pair[1]).count() as u64
}

/// Reads `DIR/<interface>/statistics` (verbatim `ethtool -S IF` output) and
/// `DIR/<interface>/driver` (verbatim `ethtool -i IF` output). Lines starting
/// with `#` are comments: the first one says which command made the capture.
#[derive(Debug)]
pub struct FixtureBackend {
    dir: PathBuf,
    text: String,
}

impl FixtureBackend {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            text: String::new(),
        }
    }

    fn load(&mut self, interface: &str, file: &str) -> Result<(), ReadError> {
        let path = self.dir.join(interface).join(file);
        self.text.clear();
        std::fs::File::open(&path)
            .and_then(|mut file| io::Read::read_to_string(&mut file, &mut self.text))
            .map_err(|source| ReadError::Failed(CollectError::Io { path, source }))?;
        Ok(())
    }
}

impl Backend for FixtureBackend {
    fn interfaces(&mut self, out: &mut Vec<(String, bool)>) -> Result<(), CollectError> {
        // A captured interface stands for a NIC: that is what was captured.
        list_dir(&self.dir, out, Path::is_dir)
    }

    fn read(&mut self, interface: &str, stats: &mut Stats) -> Result<(), ReadError> {
        self.load(interface, "driver")?;
        for line in self.text.lines().filter(|line| !line.starts_with('#')) {
            match line.split_once(':').map(|(key, value)| (key, value.trim())) {
                Some(("driver", value)) => set(&mut stats.driver, value),
                Some(("version", value)) => set(&mut stats.version, value),
                Some(("firmware-version", value)) => set(&mut stats.firmware, value),
                _ => {}
            }
        }

        self.load(interface, "statistics")?;
        stats.rejected = 0;
        stats.values.clear();
        let mut changed = false;
        let mut count = 0;
        for line in self.text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line == "NIC statistics:" {
                continue;
            }
            // Some drivers put ": " inside names ("rxq0: rx_bytes"): the value
            // follows the last one.
            let Some((name, value)) = line.rsplit_once(':') else {
                stats.rejected += 1;
                continue;
            };
            let name = name.trim_end();
            let Ok(value) = value.trim().parse::<u64>() else {
                stats.rejected += 1;
                continue;
            };
            if name.is_empty() || name.len() > MAX_NAME {
                stats.rejected += 1;
                continue;
            }
            if count == stats.names.len() {
                stats.names.push(String::new());
            }
            if stats.names[count] != name {
                set(&mut stats.names[count], name);
                changed = true;
            }
            stats.values.push(value);
            count += 1;
        }
        if count != stats.names.len() {
            stats.names.truncate(count);
            changed = true;
        }
        if changed {
            stats.generation += 1;
        }
        // Duplicates stay (values are by position) and the first one wins.
        stats.rejected += duplicates(&stats.names);
        Ok(())
    }
}
