//! Where GPU readings come from: NVML on this host (`nvml.rs`), or a fixture
//! directory of JSON snapshots, one per GPU, read again on every collection.
//!
//! A backend is shared by the GPUs' worker threads. Each worker calls
//! [`Backend::serve`] once and reads its GPU through the [`Reader`] it is
//! handed for as long as the collector lives: NVML's device handles borrow
//! the library, so a reader cannot outlive that call.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::CollectError;

/// One GPU's figures after a read; `None` where the GPU does not support a
/// figure. Reused from one collection to the next.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Reading {
    pub uuid: String,
    pub name: String,
    /// Share of the last sample period (1/6 s to 1 s by product) in which a
    /// kernel ran, 0 to 1.
    pub utilization: Option<f64>,
    /// Share of the sample period in which device memory was read or written.
    pub memory_utilization: Option<f64>,
    /// Whether NVML's GPM metrics work on this GPU; `None` when unknown.
    pub gpm_supported: Option<bool>,
    /// Share of time SMs had a warp assigned, averaged over SMs (GPM), 0 to 1.
    pub sm_active: Option<f64>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub power_draw_watts: Option<f64>,
    pub power_limit_watts: Option<f64>,
    pub temperature_celsius: Option<f64>,
    pub sm_clock_hertz: Option<f64>,
    pub memory_clock_hertz: Option<f64>,
    /// NVML's `nvmlClocksThrottleReason*` bit mask.
    pub throttle_reasons: Option<u64>,
    pub pcie_receive_bytes_per_second: Option<f64>,
    pub pcie_transmit_bytes_per_second: Option<f64>,
    /// NVLink data received and sent since the driver loaded, all links
    /// together; `None` without NVLink.
    pub nvlink_receive_bytes: Option<u64>,
    pub nvlink_transmit_bytes: Option<u64>,
    /// Volatile ECC error counts (since the driver loaded); `None` without ECC.
    pub ecc_corrected: Option<u64>,
    pub ecc_uncorrected: Option<u64>,
    /// Whether XID events can be registered for this GPU.
    pub xid_events_supported: Option<bool>,
    /// XID events that arrived since the last read, in order. Filled even
    /// when the read then fails: a GPU falling off the bus sends XID 79.
    pub xids: Vec<u64>,
    /// Compute processes on this GPU.
    pub processes: Vec<Process>,
    /// Calls that failed for a reason other than "not supported"; their
    /// figures are left out.
    pub errors: u64,
}

impl Reading {
    /// Forgets the previous read's figures, keeping buffers.
    pub fn clear(&mut self) {
        let mut xids = std::mem::take(&mut self.xids);
        let mut processes = std::mem::take(&mut self.processes);
        let mut uuid = std::mem::take(&mut self.uuid);
        let mut name = std::mem::take(&mut self.name);
        xids.clear();
        processes.clear();
        uuid.clear();
        name.clear();
        *self = Self {
            uuid,
            name,
            xids,
            processes,
            ..Self::default()
        };
    }
}

/// A process using a GPU, as its driver sees it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Process {
    pub pid: u32,
    /// Its command name (`comm`), or `unknown`.
    pub name: String,
    pub memory_used_bytes: Option<u64>,
    /// Its share of the SMs' time over the last sample, 0 to 1.
    pub sm_utilization: Option<f64>,
}

/// Why a GPU could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// NVML says the GPU fell off the bus or is otherwise inaccessible
    /// (`NVML_ERROR_GPU_IS_LOST`).
    #[error("GPU {gpu} has fallen off the bus or is otherwise inaccessible ({call})")]
    Lost { gpu: u32, call: &'static str },
    /// The GPU answered with an error that makes the whole read useless.
    #[error("GPU {gpu}: {call}: {reason}")]
    Device {
        gpu: u32,
        call: &'static str,
        reason: String,
    },
    /// A fixture file is missing or malformed: the replay is broken, not the GPU.
    #[error(transparent)]
    Fixture(#[from] CollectError),
}

/// A source of GPU readings, shared by the worker threads.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// How many GPUs there are; fixed for the collector's life.
    fn count(&self) -> u32;

    /// The driver's version, as NVML reports it.
    fn driver_version(&self) -> &str;

    /// Runs on GPU `index`'s worker thread: makes the GPU's reader and hands
    /// it to `serve`, which returns once the collector is gone.
    fn serve(&self, index: u32, serve: &mut dyn FnMut(&mut dyn Reader));
}

/// Reads one GPU; lives on that GPU's worker thread.
pub trait Reader {
    /// Fills `reading`, which was cleared before the call.
    fn read(&mut self, reading: &mut Reading) -> Result<(), ReadError>;
}

/// NVML's name of the "GPU is lost" return code, as fixtures spell it.
const GPU_IS_LOST: &str = "NVML_ERROR_GPU_IS_LOST";

/// `DIR/system.json`: what NVML said about the host.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureSystem {
    #[serde(rename = "captured_from")]
    _captured_from: String,
    driver_version: Option<String>,
    /// An NVML return code name (`NVML_ERROR_LIBRARY_NOT_FOUND`, ...) or
    /// loader message: NVML could not start on the captured host.
    error: Option<String>,
}

/// `DIR/gpuN.json`: one GPU, in NVML's own units (see
/// `tests/fixtures/gpu/CAPTURED.md` for the call behind each key). Absent
/// keys are figures the GPU does not support.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureGpu {
    #[serde(rename = "captured_from")]
    _captured_from: String,
    /// An NVML return code name: every call on this GPU failed with it.
    error: Option<String>,
    uuid: Option<String>,
    name: Option<String>,
    utilization: Option<FixtureUtilization>,
    memory: Option<FixtureMemory>,
    power: Option<FixturePower>,
    temperature_gpu_celsius: Option<u32>,
    clocks_mhz: Option<FixtureClocks>,
    /// `clocks_throttle_reasons.active` as nvidia-smi prints it: `0x...`.
    clocks_throttle_reasons: Option<String>,
    pcie_throughput_kb_per_second: Option<FixtureDirections>,
    nvlink_data_kib: Option<FixtureDirections>,
    ecc_volatile: Option<FixtureEcc>,
    gpm: Option<FixtureGpm>,
    xid_events_supported: Option<bool>,
    #[serde(default)]
    processes: Vec<FixtureProcess>,
    /// Every XID event since the capture began, in order; a collection
    /// delivers those it has not delivered yet, so appending to the list
    /// replays new events.
    #[serde(default)]
    xid_events: Vec<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureUtilization {
    gpu_percent: u32,
    memory_percent: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureMemory {
    total_bytes: u64,
    used_bytes: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixturePower {
    usage_milliwatts: Option<u32>,
    enforced_limit_milliwatts: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureClocks {
    sm: u32,
    memory: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureDirections {
    rx: u64,
    tx: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureEcc {
    corrected: u64,
    uncorrected: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureGpm {
    supported: bool,
    sm_util_percent: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureProcess {
    pid: u32,
    name: String,
    used_gpu_memory_bytes: Option<u64>,
    sm_util_percent: Option<u32>,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, CollectError> {
    let text = std::fs::read_to_string(path).map_err(|source| CollectError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|error| CollectError::Parse {
        path: path.to_path_buf(),
        line: error.line(),
        reason: error.to_string(),
    })
}

/// Why a fixture directory cannot stand for a host.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error(transparent)]
    Unreadable(#[from] CollectError),
    /// `system.json` records that NVML could not start.
    #[error("NVML unavailable on the captured host: {0}")]
    NoNvml(String),
    #[error("{}: no gpu0.json", .0.display())]
    NoGpu(PathBuf),
}

/// Reads `DIR/system.json` once and `DIR/gpuN.json` on every collection.
#[derive(Debug)]
pub struct FixtureBackend {
    dir: PathBuf,
    count: u32,
    driver_version: String,
}

impl FixtureBackend {
    pub fn new(dir: PathBuf) -> Result<Self, FixtureError> {
        let system: FixtureSystem = read_json(&dir.join("system.json"))?;
        if let Some(error) = system.error {
            return Err(FixtureError::NoNvml(error));
        }
        // NVML numbers GPUs 0..count: the files must too.
        let count = (0..)
            .take_while(|index| dir.join(format!("gpu{index}.json")).is_file())
            .count();
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        if count == 0 {
            return Err(FixtureError::NoGpu(dir));
        }
        Ok(Self {
            dir,
            count,
            driver_version: system.driver_version.unwrap_or_default(),
        })
    }
}

impl Backend for FixtureBackend {
    fn count(&self) -> u32 {
        self.count
    }

    fn driver_version(&self) -> &str {
        &self.driver_version
    }

    fn serve(&self, index: u32, serve: &mut dyn FnMut(&mut dyn Reader)) {
        serve(&mut FixtureReader {
            path: self.dir.join(format!("gpu{index}.json")),
            index,
            delivered: 0,
        });
    }
}

struct FixtureReader {
    path: PathBuf,
    index: u32,
    /// XID events of the file already delivered.
    delivered: usize,
}

impl Reader for FixtureReader {
    fn read(&mut self, reading: &mut Reading) -> Result<(), ReadError> {
        let gpu: FixtureGpu = read_json(&self.path)?;
        // A shorter list is a new capture: all of it is new.
        if gpu.xid_events.len() < self.delivered {
            self.delivered = 0;
        }
        reading.xids.extend_from_slice(&gpu.xid_events[self.delivered..]);
        self.delivered = gpu.xid_events.len();

        match gpu.error.as_deref() {
            Some(GPU_IS_LOST) => {
                return Err(ReadError::Lost {
                    gpu: self.index,
                    call: "fixture",
                });
            }
            Some(code) => {
                return Err(ReadError::Device {
                    gpu: self.index,
                    call: "fixture",
                    reason: code.to_owned(),
                });
            }
            None => {}
        }

        let percent = |value: u32| f64::from(value) / 100.0;
        reading.uuid.push_str(gpu.uuid.as_deref().unwrap_or_default());
        reading.name.push_str(gpu.name.as_deref().unwrap_or_default());
        if let Some(utilization) = gpu.utilization {
            reading.utilization = Some(percent(utilization.gpu_percent));
            reading.memory_utilization = Some(percent(utilization.memory_percent));
        }
        if let Some(gpm) = gpu.gpm {
            reading.gpm_supported = Some(gpm.supported);
            reading.sm_active = gpm.sm_util_percent.map(|value| value / 100.0);
        }
        if let Some(memory) = gpu.memory {
            reading.memory_total_bytes = Some(memory.total_bytes);
            reading.memory_used_bytes = Some(memory.used_bytes);
        }
        if let Some(power) = gpu.power {
            reading.power_draw_watts = power.usage_milliwatts.map(milliwatts);
            reading.power_limit_watts = power.enforced_limit_milliwatts.map(milliwatts);
        }
        reading.temperature_celsius = gpu.temperature_gpu_celsius.map(f64::from);
        if let Some(clocks) = gpu.clocks_mhz {
            reading.sm_clock_hertz = Some(megahertz(clocks.sm));
            reading.memory_clock_hertz = Some(megahertz(clocks.memory));
        }
        if let Some(mask) = gpu.clocks_throttle_reasons {
            let parsed = mask
                .strip_prefix("0x")
                .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                .ok_or_else(|| CollectError::Parse {
                    path: self.path.clone(),
                    line: 0,
                    reason: format!("clocks_throttle_reasons {mask:?} is not a 0x-prefixed hexadecimal mask"),
                })?;
            reading.throttle_reasons = Some(parsed);
        }
        if let Some(pcie) = gpu.pcie_throughput_kb_per_second {
            reading.pcie_receive_bytes_per_second = Some(kilobytes(pcie.rx));
            reading.pcie_transmit_bytes_per_second = Some(kilobytes(pcie.tx));
        }
        if let Some(nvlink) = gpu.nvlink_data_kib {
            reading.nvlink_receive_bytes = Some(nvlink.rx.saturating_mul(1024));
            reading.nvlink_transmit_bytes = Some(nvlink.tx.saturating_mul(1024));
        }
        if let Some(ecc) = gpu.ecc_volatile {
            reading.ecc_corrected = Some(ecc.corrected);
            reading.ecc_uncorrected = Some(ecc.uncorrected);
        }
        reading.xid_events_supported = gpu.xid_events_supported;
        reading
            .processes
            .extend(gpu.processes.into_iter().map(|process| Process {
                pid: process.pid,
                name: process.name,
                memory_used_bytes: process.used_gpu_memory_bytes,
                sm_utilization: process.sm_util_percent.map(percent),
            }));
        Ok(())
    }
}

pub(super) fn milliwatts(value: u32) -> f64 {
    f64::from(value) / 1000.0
}

pub(super) fn megahertz(value: u32) -> f64 {
    f64::from(value) * 1e6
}

/// NVML's PCIe throughput unit, "KB/s". nvml.h does not say whether a KB is
/// 1000 or 1024 bytes; NVML's other memory figures are binary (its NVLink
/// counters say KiB), so 1024.
pub(super) fn kilobytes(value: u64) -> f64 {
    value as f64 * 1024.0
}
