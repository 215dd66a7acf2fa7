//! The NVML backend: `libnvidia-ml.so.1` loaded at run time through
//! `nvml-wrapper`, so the agent builds and runs on hosts without NVIDIA's
//! driver (loading fails with a clean error and the collector is down with
//! it as the reason).
//!
//! Each GPU's reader lives on that GPU's worker thread and keeps what NVML
//! needs across reads there: the device handle, an event set registered for
//! the GPU's critical XID events (drained without waiting on every read), the
//! previous GPM sample (GPM metrics compare two samples), and the timestamp of
//! the last per-process utilization sample seen.
//!
//! Cost per GPU and read: about fifteen NVML calls; the two PCIe throughput
//! calls each sample the bus for 20 ms inside the driver, which is why the
//! workers read their GPUs in parallel.

use std::path::{Path, PathBuf};

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{Clock, EccCounter, MemoryError, PcieUtilCounter, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::enums::gpm::GpmMetricId;
use nvml_wrapper::error::{NvmlError, NvmlErrorWithSource};
use nvml_wrapper::{Device, EventSet, GpmSample, Nvml};

use super::backend::{Backend, Process, ReadError, Reader, Reading, kilobytes, megahertz, milliwatts};
use super::nvml_ffi::{self, NvlinkScratch};

/// XID events taken per read at most: a GPU in an XID storm must not keep
/// its worker draining forever.
const MAX_EVENTS_PER_READ: usize = 256;

/// Why NVML cannot be used on this host.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The dynamic loader's message, which names the file it looked for.
    #[error("cannot load the NVML library: {0}")]
    Load(String),
    #[error("NVML does not start: {0}")]
    Init(#[source] NvmlError),
    #[error("NVML cannot count the GPUs: {0}")]
    Count(#[source] NvmlError),
    #[error("NVML finds no GPU")]
    NoGpu,
}

impl InitError {
    /// What an operator can do about it, for `hostwatch doctor`.
    pub fn remedy(&self) -> &'static str {
        match self {
            Self::Load(_) => {
                "install NVIDIA's driver (it ships libnvidia-ml.so.1) or set [collectors.gpu] library to where the library is (in a container, mount the host's driver libraries); on a host without NVIDIA GPUs, disable the collector"
            }
            Self::Init(_) | Self::Count(_) => {
                "make `nvidia-smi` work as the agent's user: the NVIDIA kernel module loaded, its version matching libnvidia-ml, /dev/nvidiactl and /dev/nvidia* readable"
            }
            Self::NoGpu => "nothing to do on a host without NVIDIA GPUs; disable [collectors.gpu] to silence it",
        }
    }
}

pub struct NvmlBackend {
    nvml: Nvml,
    count: u32,
    driver_version: String,
    /// Where process names (`PID/comm`) are read.
    procfs: PathBuf,
}

impl std::fmt::Debug for NvmlBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlBackend")
            .field("count", &self.count)
            .field("driver_version", &self.driver_version)
            .finish_non_exhaustive()
    }
}

impl NvmlBackend {
    /// Loads `library` (a file name searched like dlopen does, or a path) and
    /// starts NVML.
    pub fn new(library: &Path, procfs: PathBuf) -> Result<Self, InitError> {
        let nvml = Nvml::builder()
            .lib_path(library.as_os_str())
            .init()
            .map_err(|error| match error {
                NvmlError::LibloadingError(error) => InitError::Load(error.to_string()),
                error => InitError::Init(error),
            })?;
        let count = nvml.device_count().map_err(InitError::Count)?;
        if count == 0 {
            return Err(InitError::NoGpu);
        }
        // Only a label: a driver that cannot say its version still has GPUs to read.
        let driver_version = nvml.sys_driver_version().unwrap_or_default();
        Ok(Self {
            nvml,
            count,
            driver_version,
            procfs,
        })
    }
}

impl Backend for NvmlBackend {
    fn count(&self) -> u32 {
        self.count
    }

    fn driver_version(&self) -> &str {
        &self.driver_version
    }

    fn serve(&self, index: u32, serve: &mut dyn FnMut(&mut dyn Reader)) {
        serve(&mut NvmlReader {
            nvml: &self.nvml,
            index,
            procfs: &self.procfs,
            open: None,
            nvlink: NvlinkScratch::default(),
        });
    }
}

/// What a reader keeps about an opened GPU, for the collector's life.
struct Open<'nvml> {
    device: Device<'nvml>,
    uuid: String,
    name: String,
    /// `None` once registering failed as unsupported.
    events: Option<EventSet<'nvml>>,
    gpm_supported: bool,
    gpm_previous: Option<GpmSample<'nvml>>,
    /// NVLink links the GPU has; 0 without NVLink.
    nvlink_links: u32,
    /// Microseconds timestamp of the newest process utilization sample seen.
    process_sample_us: u64,
}

struct NvmlReader<'nvml> {
    nvml: &'nvml Nvml,
    index: u32,
    procfs: &'nvml Path,
    open: Option<Open<'nvml>>,
    nvlink: NvlinkScratch,
}

/// Sorts one call's result: its value; `None` when the GPU does not support
/// the call; the end of the read when the GPU is lost. Any other failure is
/// counted in the reading and leaves the figure out.
fn check<T>(
    gpu: u32,
    call: &'static str,
    result: Result<T, NvmlError>,
    reading: &mut Reading,
) -> Result<Option<T>, ReadError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(NvmlError::NotSupported | NvmlError::FunctionNotFound | NvmlError::FailedToLoadSymbol(_)) => Ok(None),
        Err(NvmlError::GpuLost) => Err(ReadError::Lost { gpu, call }),
        Err(error) => {
            tracing::debug!(gpu, call, %error, "NVML call failed");
            reading.errors += 1;
            Ok(None)
        }
    }
}

impl<'nvml> NvmlReader<'nvml> {
    fn open_device(&self) -> Result<Open<'nvml>, ReadError> {
        let gpu = self.index;
        let device = self.nvml.device_by_index(gpu).map_err(|error| match error {
            NvmlError::GpuLost => ReadError::Lost {
                gpu,
                call: "nvmlDeviceGetHandleByIndex",
            },
            error => ReadError::Device {
                gpu,
                call: "nvmlDeviceGetHandleByIndex",
                reason: error.to_string(),
            },
        })?;
        let identity = |call, result: Result<String, NvmlError>| {
            result.map_err(|error| match error {
                NvmlError::GpuLost => ReadError::Lost { gpu, call },
                error => ReadError::Device {
                    gpu,
                    call,
                    reason: error.to_string(),
                },
            })
        };
        let uuid = identity("nvmlDeviceGetUUID", device.uuid())?;
        let name = identity("nvmlDeviceGetName", device.name())?;
        // Registration and support probes run once per opening; a failure
        // other than "not supported" leaves the feature off until the GPU is
        // opened again.
        let events = self
            .nvml
            .create_event_set()
            .map_err(NvmlErrorWithSource::from)
            .and_then(|set| device.register_events(EventTypes::CRITICAL_XID_ERROR, set))
            .inspect_err(|error| tracing::debug!(gpu, %error, "no XID events"))
            .ok();
        let gpm_supported = device.gpm_support().unwrap_or(false);
        let nvlink_links = nvml_ffi::nvlink_link_count(&device).unwrap_or(0);
        Ok(Open {
            device,
            uuid,
            name,
            events,
            gpm_supported,
            gpm_previous: None,
            nvlink_links,
            process_sample_us: 0,
        })
    }

    fn read_open(&mut self, reading: &mut Reading) -> Result<(), ReadError> {
        let gpu = self.index;
        let Some(open) = &mut self.open else {
            return Ok(());
        };
        let device = &open.device;
        reading.uuid.push_str(&open.uuid);
        reading.name.push_str(&open.name);

        // XIDs first: a GPU that fell off the bus reports XID 79 and then
        // fails every other call.
        reading.xid_events_supported = Some(open.events.is_some());
        if let Some(events) = &open.events {
            for _ in 0..MAX_EVENTS_PER_READ {
                match events.wait(0) {
                    // NVML hands each event the most recent XID of the GPU:
                    // two different XIDs between reads count as two of the
                    // later one.
                    Ok(event) => match event.event_data {
                        Some(XidError::Value(xid)) => reading.xids.push(xid),
                        // NVML's own code for an XID it cannot name.
                        Some(XidError::Unknown) => reading.xids.push(999),
                        None => {}
                    },
                    Err(NvmlError::Timeout) => break,
                    Err(error) => {
                        check::<()>(gpu, "nvmlEventSetWait", Err(error), reading)?;
                        break;
                    }
                }
            }
        }

        if let Some(rates) = check(
            gpu,
            "nvmlDeviceGetUtilizationRates",
            device.utilization_rates(),
            reading,
        )? {
            reading.utilization = Some(f64::from(rates.gpu) / 100.0);
            reading.memory_utilization = Some(f64::from(rates.memory) / 100.0);
        }
        reading.gpm_supported = Some(open.gpm_supported);
        if open.gpm_supported
            && let Some(sample) = check(gpu, "nvmlGpmSampleGet", device.gpm_sample(), reading)?
        {
            if let Some(previous) = &open.gpm_previous {
                let metrics = nvml_wrapper::gpm::gpm_metrics_get(self.nvml, previous, &sample, &[GpmMetricId::SmUtil]);
                if let Some(mut metrics) = check(gpu, "nvmlGpmMetricsGet", metrics, reading)?
                    && let Some(metric) = metrics.pop()
                    && let Some(metric) = check(gpu, "nvmlGpmMetricsGet", metric, reading)?
                {
                    reading.sm_active = Some(metric.value / 100.0);
                }
            }
            open.gpm_previous = Some(sample);
        }
        if let Some(memory) = check(gpu, "nvmlDeviceGetMemoryInfo", device.memory_info(), reading)? {
            reading.memory_used_bytes = Some(memory.used);
            reading.memory_total_bytes = Some(memory.total);
        }
        reading.power_draw_watts =
            check(gpu, "nvmlDeviceGetPowerUsage", device.power_usage(), reading)?.map(milliwatts);
        reading.power_limit_watts = check(
            gpu,
            "nvmlDeviceGetEnforcedPowerLimit",
            device.enforced_power_limit(),
            reading,
        )?
        .map(milliwatts);
        reading.temperature_celsius = check(
            gpu,
            "nvmlDeviceGetTemperature",
            device.temperature(TemperatureSensor::Gpu),
            reading,
        )?
        .map(f64::from);
        reading.sm_clock_hertz =
            check(gpu, "nvmlDeviceGetClockInfo", device.clock_info(Clock::SM), reading)?.map(megahertz);
        reading.memory_clock_hertz =
            check(gpu, "nvmlDeviceGetClockInfo", device.clock_info(Clock::Memory), reading)?.map(megahertz);
        reading.throttle_reasons = check(
            gpu,
            "nvmlDeviceGetCurrentClocksThrottleReasons",
            device.current_throttle_reasons(),
            reading,
        )?
        .map(|reasons| reasons.bits());
        let receive = check(
            gpu,
            "nvmlDeviceGetPcieThroughput",
            device.pcie_throughput(PcieUtilCounter::Receive),
            reading,
        )?;
        let transmit = check(
            gpu,
            "nvmlDeviceGetPcieThroughput",
            device.pcie_throughput(PcieUtilCounter::Send),
            reading,
        )?;
        reading.pcie_receive_bytes_per_second = receive.map(|kb| kilobytes(u64::from(kb)));
        reading.pcie_transmit_bytes_per_second = transmit.map(|kb| kilobytes(u64::from(kb)));
        if open.nvlink_links > 0
            && let Some((rx_kib, tx_kib)) = check(
                gpu,
                "nvmlDeviceGetFieldValues",
                nvml_ffi::nvlink_data_kib(self.nvml, device, open.nvlink_links, &mut self.nvlink),
                reading,
            )?
        {
            reading.nvlink_receive_bytes = Some(rx_kib.saturating_mul(1024));
            reading.nvlink_transmit_bytes = Some(tx_kib.saturating_mul(1024));
        }
        reading.ecc_corrected = check(
            gpu,
            "nvmlDeviceGetTotalEccErrors",
            device.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile),
            reading,
        )?;
        reading.ecc_uncorrected = check(
            gpu,
            "nvmlDeviceGetTotalEccErrors",
            device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile),
            reading,
        )?;

        if let Some(processes) = check(
            gpu,
            "nvmlDeviceGetComputeRunningProcesses",
            device.running_compute_processes(),
            reading,
        )? {
            for process in processes {
                reading.processes.push(Process {
                    pid: process.pid,
                    name: comm(self.procfs, process.pid),
                    memory_used_bytes: match process.used_gpu_memory {
                        UsedGpuMemory::Used(bytes) => Some(bytes),
                        UsedGpuMemory::Unavailable => None,
                    },
                    sm_utilization: None,
                });
            }
        }
        let samples = match device.process_utilization_stats(open.process_sample_us) {
            // No sample since the last one: every process was idle.
            Err(NvmlError::NotFound) => Ok(Vec::new()),
            other => other,
        };
        if let Some(samples) = check(gpu, "nvmlDeviceGetProcessUtilization", samples, reading)? {
            for sample in &samples {
                open.process_sample_us = open.process_sample_us.max(sample.timestamp);
            }
            for process in &mut reading.processes {
                // The newest sample of each process; none means it was idle.
                let newest = samples
                    .iter()
                    .filter(|sample| sample.pid == process.pid)
                    .max_by_key(|sample| sample.timestamp);
                process.sm_utilization = Some(newest.map_or(0.0, |sample| f64::from(sample.sm_util) / 100.0));
            }
        }
        Ok(())
    }
}

impl Reader for NvmlReader<'_> {
    fn read(&mut self, reading: &mut Reading) -> Result<(), ReadError> {
        if self.open.is_none() {
            self.open = Some(self.open_device()?);
        }
        let result = self.read_open(reading);
        if matches!(result, Err(ReadError::Lost { .. }))
            && let Some(open) = &mut self.open
        {
            // The handle and the event set stay: NVML keeps the handle of a
            // lost GPU, further calls fail fast with GPU_IS_LOST, and XIDs
            // that arrive after the loss are still drained. A GPM sample from
            // before the loss must not be compared with one after a reset.
            open.gpm_previous = None;
        }
        result
    }
}

/// The command name of `pid`, as the other per-process series name it.
fn comm(procfs: &Path, pid: u32) -> String {
    std::fs::read_to_string(procfs.join(pid.to_string()).join("comm"))
        .map(|comm| comm.trim_end().to_owned())
        .ok()
        .filter(|comm| !comm.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}
