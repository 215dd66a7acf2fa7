//! `gpu`: NVIDIA GPUs through NVML, next to the host's network signals, so a
//! GPU leaf that idles because the network cannot feed it shows as such.
//!
//! Loads `libnvidia-ml.so.1` at run time (`library`) and reads every GPU NVML
//! enumerates when the collector is built, each on a worker thread of its own
//! (see `worker.rs` for why), or replays JSON snapshots when
//! `fixtures = "DIR"`. Without the library, without a driver, or without a
//! GPU the collector is down with the reason; a GPU that falls off the bus or
//! stops answering is reported in `hostwatch_gpu_state` and logged, and the
//! other GPUs keep reporting.
//!
//! Per GPU (`gpu` is NVML's index, which need not be CUDA's): identity,
//! state, utilization of the GPU and of its memory, SM activity where NVML's
//! GPM metrics work (`hostwatch_gpu_gpm_supported` says where), memory, power,
//! temperature, clocks, clock throttle reasons, PCIe throughput, NVLink
//! traffic, ECC errors, XID errors counted per XID from NVML's events, and
//! per-process memory and SM utilization under bounded `process` labels.

mod backend;
mod nvml;
mod nvml_ffi;
mod worker;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use self::backend::{Backend, FixtureBackend, ReadError, Reading};
use self::nvml::NvmlBackend;
use self::worker::{Outcome, Worker};
use crate::collector::{Collector, CollectorSpec, Context};
use crate::config::{Interval, collector_section};
use crate::error::{CollectError, Unavailable};
use crate::process_label::ProcessLabels;
use crate::sample::{Desc, MetricSet};

collector_section! {
    /// `[collectors.gpu]`.
    pub struct Config {
        /// The NVML library: a file name, looked up like the dynamic loader
        /// does, or a path (a container with the driver mounted elsewhere).
        pub library: PathBuf = PathBuf::from("libnvidia-ml.so.1"),
        /// How long a collection waits for each GPU's reading; a GPU that takes
        /// longer is reported `timeout` while the others report. At most half
        /// the collector's timeout (the default), so the collection itself
        /// always returns in time.
        pub device_timeout: Option<Interval> = None,
        /// Processes labelled `comm/pid`; later ones share their comm's series.
        pub max_processes: usize = 64,
        /// Distinct comm labels once `max_processes` is reached; beyond, `other`.
        pub max_names: usize = 64,
        /// Read `DIR/system.json` and `DIR/gpuN.json` (NVML's figures as JSON)
        /// instead of NVML, the GPU files again on every collection: for tests
        /// and replays.
        pub fixtures: Option<PathBuf> = None,
    }
}

pub static SPEC: CollectorSpec = CollectorSpec {
    name: "gpu",
    needs: "NVIDIA driver with libnvidia-ml.so.1 (no privilege); procfs for process names",
    default_interval: Duration::from_secs(1),
    section: |config| &config.gpu,
    build: |context| Ok(Box::new(Gpu::new(context)?)),
};

static INFO: Desc = Desc::gauge(
    "hostwatch_gpu_info",
    "The GPU's identity: NVML index, UUID, product name and driver version; always 1.",
    &["gpu", "uuid", "name", "driver_version"],
);
static STATE: Desc = Desc::gauge(
    "hostwatch_gpu_state",
    "1 for the GPU's state in the last collection: ok, lost (fell off the bus or otherwise inaccessible), timeout (NVML did not answer within device_timeout) or error.",
    &["gpu", "uuid", "state"],
);
static UTILIZATION: Desc = Desc::gauge(
    "hostwatch_gpu_utilization_ratio",
    "Share of NVML's last sample period (1/6 s to 1 s by product) in which one or more kernels ran on the GPU.",
    &["gpu", "uuid"],
);
static MEMORY_UTILIZATION: Desc = Desc::gauge(
    "hostwatch_gpu_memory_utilization_ratio",
    "Share of NVML's last sample period in which device memory was read or written.",
    &["gpu", "uuid"],
);
static GPM_SUPPORTED: Desc = Desc::gauge(
    "hostwatch_gpu_gpm_supported",
    "1 when NVML's GPM metrics work on the GPU (hostwatch_gpu_sm_active_ratio is exported), 0 when they do not.",
    &["gpu", "uuid"],
);
static SM_ACTIVE: Desc = Desc::gauge(
    "hostwatch_gpu_sm_active_ratio",
    "Share of time each SM had at least one warp assigned, averaged over all SMs, between the last two collections (NVML GPM).",
    &["gpu", "uuid"],
);
static MEMORY_USED: Desc = Desc::gauge(
    "hostwatch_gpu_memory_used_bytes",
    "Device memory allocated.",
    &["gpu", "uuid"],
);
static MEMORY_TOTAL: Desc = Desc::gauge(
    "hostwatch_gpu_memory_total_bytes",
    "Device memory installed.",
    &["gpu", "uuid"],
);
static POWER_DRAW: Desc = Desc::gauge(
    "hostwatch_gpu_power_draw_watts",
    "Power drawn by the GPU and its memory.",
    &["gpu", "uuid"],
);
static POWER_LIMIT: Desc = Desc::gauge(
    "hostwatch_gpu_power_limit_watts",
    "The power limit the driver enforces.",
    &["gpu", "uuid"],
);
static TEMPERATURE: Desc = Desc::gauge(
    "hostwatch_gpu_temperature_celsius",
    "GPU die temperature.",
    &["gpu", "uuid"],
);
static CLOCK: Desc = Desc::gauge(
    "hostwatch_gpu_clock_hertz",
    "Current clock of the SMs and of the memory.",
    &["gpu", "uuid", "clock"],
);
static THROTTLE: Desc = Desc::gauge(
    "hostwatch_gpu_clock_throttle_reasons",
    "1 for each reason NVML gives for holding the clocks down now (one bit of nvmlClocksThrottleReasons each; other: bits this agent does not know), else 0.",
    &["gpu", "uuid", "reason"],
);
static PCIE: Desc = Desc::gauge(
    "hostwatch_gpu_pcie_throughput_bytes_per_second",
    "PCIe traffic of the GPU over a 20 ms sample NVML takes during the collection.",
    &["gpu", "uuid", "direction"],
);
static NVLINK: Desc = Desc::counter(
    "hostwatch_gpu_nvlink_bytes_total",
    "NVLink data received and sent since the driver loaded, all links together; absent without NVLink.",
    &["gpu", "uuid", "direction"],
);
static ECC: Desc = Desc::counter(
    "hostwatch_gpu_ecc_errors_total",
    "Device memory ECC errors since the driver loaded (NVML's volatile counts), corrected and uncorrected; absent without ECC.",
    &["gpu", "uuid", "type"],
);
static XID_SUPPORTED: Desc = Desc::gauge(
    "hostwatch_gpu_xid_events_supported",
    "1 when the agent receives the GPU's critical XID events, 0 when NVML cannot deliver them (XID errors then go uncounted).",
    &["gpu", "uuid"],
);
static XIDS: Desc = Desc::counter(
    "hostwatch_gpu_xid_errors_total",
    "Critical XID events NVML delivered since the agent started, by XID code (999: NVML could not name it). Two XIDs between collections count as two of the later one.",
    &["gpu", "xid"],
);
static PROCESS_MEMORY: Desc = Desc::gauge(
    "hostwatch_gpu_process_memory_used_bytes",
    "Device memory used by a compute process (processes sharing a label are summed).",
    &["gpu", "uuid", "process"],
);
static PROCESS_UTILIZATION: Desc = Desc::gauge(
    "hostwatch_gpu_process_utilization_ratio",
    "A compute process's share of the SMs' time in NVML's last sample (processes sharing a label are summed).",
    &["gpu", "uuid", "process"],
);
static READ_ERRORS: Desc = Desc::counter(
    "hostwatch_gpu_read_errors_total",
    "NVML calls that failed for a reason other than 'not supported'; their figures are left out of that collection.",
    &["gpu", "uuid"],
);
static LABEL_OVERFLOWS: Desc = Desc::counter(
    "hostwatch_gpu_label_overflows_total",
    "Processes labelled by comm alone or as other because max_processes or max_names was reached.",
    &[],
);

/// NVML's clock throttle reason bits (`nvmlClocksThrottleReason*` in nvml.h).
const THROTTLE_REASONS: [(u64, &str); 9] = [
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ok,
    Lost,
    Timeout,
    Error,
}

impl State {
    const ALL: [Self; 4] = [Self::Ok, Self::Lost, Self::Timeout, Self::Error];

    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Lost => "lost",
            Self::Timeout => "timeout",
            Self::Error => "error",
        }
    }
}

/// What the collector keeps about one GPU across collections.
#[derive(Debug)]
struct Device {
    /// The `gpu` label: NVML's index.
    index: String,
    /// Known from the last reading that had them, so a GPU that is lost
    /// keeps its labels.
    uuid: String,
    name: String,
    state: State,
    /// XID events counted since the agent started, by XID.
    xids: BTreeMap<u64, u64>,
    read_errors: u64,
}

impl Device {
    fn count_xids(&mut self, xids: &[u64]) {
        for xid in xids {
            *self.xids.entry(*xid).or_default() += 1;
        }
    }

    /// Logs a change of state: these are the GPU's events.
    fn enter(&mut self, state: State, timeout: Duration, error: Option<&ReadError>) {
        if state == self.state {
            return;
        }
        let (gpu, uuid) = (&self.index, &self.uuid);
        match state {
            State::Ok => info!(gpu, uuid, "GPU reports again"),
            State::Lost => warn!(
                gpu,
                uuid, "GPU has fallen off the bus or is otherwise inaccessible; the other GPUs keep reporting"
            ),
            State::Timeout => warn!(
                gpu,
                uuid,
                ?timeout,
                "GPU did not answer in time; the other GPUs keep reporting"
            ),
            State::Error => match error {
                Some(error) => warn!(gpu, uuid, %error, "GPU cannot be read"),
                None => warn!(gpu, uuid, "GPU's worker thread is gone; starting another"),
            },
        }
        self.state = state;
    }
}

/// One process label's figures on one GPU.
#[derive(Debug, Default)]
struct LabelTotals {
    label: String,
    memory: Option<u64>,
    utilization: Option<f64>,
}

#[derive(Debug)]
struct Gpu {
    driver_version: String,
    workers: Vec<Worker>,
    devices: Vec<Device>,
    device_timeout: Duration,
    labels: ProcessLabels,
    /// Pids labelled so far, and those on a GPU in this collection.
    labelled: HashSet<u32>,
    seen: HashSet<u32>,
    /// Scratch: XIDs of late answers, per-label sums.
    late: Vec<u64>,
    totals: Vec<LabelTotals>,
}

impl Gpu {
    fn new(context: &Context) -> Result<Self, Unavailable> {
        let config = &context.config.gpu;
        let backend: Arc<dyn Backend> = match &config.fixtures {
            Some(dir) => Arc::new(
                FixtureBackend::new(dir.clone())
                    .map_err(|error| Unavailable::new(format!("GPU fixtures {}: {error}", dir.display())))?,
            ),
            None => Arc::new(
                NvmlBackend::new(&config.library, context.paths.procfs().to_path_buf())
                    .map_err(|error| Unavailable::new(error.to_string()).with_remedy(error.remedy()))?,
            ),
        };
        Ok(Self::with_backend(backend, config, SPEC.plan(&context.config).timeout))
    }

    fn with_backend(backend: Arc<dyn Backend>, config: &Config, collector_timeout: Duration) -> Self {
        let device_timeout = config
            .device_timeout
            .map_or(collector_timeout, Interval::get)
            .min(collector_timeout / 2);
        let count = backend.count();
        Self {
            driver_version: backend.driver_version().to_owned(),
            workers: (0..count)
                .map(|index| Worker::new(index, Arc::clone(&backend)))
                .collect(),
            devices: (0..count)
                .map(|index| Device {
                    index: index.to_string(),
                    uuid: String::new(),
                    name: String::new(),
                    state: State::Ok,
                    xids: BTreeMap::new(),
                    read_errors: 0,
                })
                .collect(),
            device_timeout,
            labels: ProcessLabels::new(config.max_processes, config.max_names),
            labelled: HashSet::new(),
            seen: HashSet::new(),
            late: Vec::new(),
            totals: Vec::new(),
        }
    }

    /// The figures of a GPU that answered.
    fn push_reading(&mut self, device_index: usize, reading: &Reading, out: &mut MetricSet) {
        let device = &self.devices[device_index];
        let ids = [device.index.as_str(), device.uuid.as_str()];
        let mut push = |desc: &'static Desc, value: Option<f64>| {
            if let Some(value) = value {
                out.push(desc, &ids, value);
            }
        };
        push(&UTILIZATION, reading.utilization);
        push(&MEMORY_UTILIZATION, reading.memory_utilization);
        push(&GPM_SUPPORTED, reading.gpm_supported.map(flag));
        push(&SM_ACTIVE, reading.sm_active);
        push(&MEMORY_USED, reading.memory_used_bytes.map(|bytes| bytes as f64));
        push(&MEMORY_TOTAL, reading.memory_total_bytes.map(|bytes| bytes as f64));
        push(&POWER_DRAW, reading.power_draw_watts);
        push(&POWER_LIMIT, reading.power_limit_watts);
        push(&TEMPERATURE, reading.temperature_celsius);
        push(&XID_SUPPORTED, reading.xid_events_supported.map(flag));
        let [gpu, uuid] = ids;
        let mut push3 = |desc: &'static Desc, third: &str, value: Option<f64>| {
            if let Some(value) = value {
                out.push(desc, &[gpu, uuid, third], value);
            }
        };
        push3(&CLOCK, "sm", reading.sm_clock_hertz);
        push3(&CLOCK, "memory", reading.memory_clock_hertz);
        if let Some(mask) = reading.throttle_reasons {
            let mut known = 0;
            for (bit, reason) in THROTTLE_REASONS {
                known |= bit;
                push3(&THROTTLE, reason, Some(flag(mask & bit != 0)));
            }
            push3(&THROTTLE, "other", Some(flag(mask & !known != 0)));
        }
        push3(&PCIE, "receive", reading.pcie_receive_bytes_per_second);
        push3(&PCIE, "transmit", reading.pcie_transmit_bytes_per_second);
        push3(
            &NVLINK,
            "receive",
            reading.nvlink_receive_bytes.map(|bytes| bytes as f64),
        );
        push3(
            &NVLINK,
            "transmit",
            reading.nvlink_transmit_bytes.map(|bytes| bytes as f64),
        );
        push3(&ECC, "corrected", reading.ecc_corrected.map(|count| count as f64));
        push3(&ECC, "uncorrected", reading.ecc_uncorrected.map(|count| count as f64));

        // Processes past the label caps share a label: their series are summed
        // so no two series carry the same labels.
        self.totals.clear();
        for process in &reading.processes {
            self.seen.insert(process.pid);
            self.labelled.insert(process.pid);
            let label = self.labels.label(process.pid, &process.name);
            let index = match self.totals.iter().position(|totals| totals.label == label) {
                Some(index) => index,
                None => {
                    self.totals.push(LabelTotals {
                        label: label.to_owned(),
                        ..LabelTotals::default()
                    });
                    self.totals.len() - 1
                }
            };
            let totals = &mut self.totals[index];
            if let Some(bytes) = process.memory_used_bytes {
                totals.memory = Some(totals.memory.unwrap_or(0).saturating_add(bytes));
            }
            if let Some(share) = process.sm_utilization {
                totals.utilization = Some(totals.utilization.unwrap_or(0.0) + share);
            }
        }
        for totals in &self.totals {
            if let Some(bytes) = totals.memory {
                out.push(&PROCESS_MEMORY, &[gpu, uuid, &totals.label], bytes as f64);
            }
            if let Some(share) = totals.utilization {
                out.push(&PROCESS_UTILIZATION, &[gpu, uuid, &totals.label], share);
            }
        }
    }
}

fn flag(on: bool) -> f64 {
    if on { 1.0 } else { 0.0 }
}

impl Collector for Gpu {
    fn collect(&mut self, out: &mut MetricSet) -> Result<(), CollectError> {
        // Every worker starts before any is waited for: the GPUs are read in
        // parallel, against one deadline.
        let deadline = Instant::now() + self.device_timeout;
        for (worker, device) in self.workers.iter_mut().zip(&mut self.devices) {
            self.late.clear();
            worker.request(&mut self.late);
            device.count_xids(&self.late);
        }

        let mut first_error = None;
        let mut all_answered = true;
        self.seen.clear();
        for index in 0..self.workers.len() {
            let outcome = self.workers[index].outcome(deadline);
            let (state, error, reading) = match outcome {
                Outcome::Answered(reply) => {
                    let (state, error) = match reply.result {
                        Ok(()) => (State::Ok, None),
                        Err(error @ ReadError::Lost { .. }) => (State::Lost, Some(error)),
                        Err(error @ ReadError::Device { .. }) => (State::Error, Some(error)),
                        Err(ReadError::Fixture(error)) => {
                            let logged = ReadError::Device {
                                gpu: u32::try_from(index).unwrap_or(u32::MAX),
                                call: "fixture",
                                reason: error.to_string(),
                            };
                            first_error.get_or_insert(error);
                            (State::Error, Some(logged))
                        }
                    };
                    (state, error, Some(reply.reading))
                }
                Outcome::Overdue => (State::Timeout, None, None),
                Outcome::Gone => (State::Error, None, None),
            };
            all_answered &= state != State::Timeout && reading.is_some();

            let device = &mut self.devices[index];
            if let Some(reading) = &reading {
                device.count_xids(&reading.xids);
                device.read_errors += reading.errors;
                if !reading.uuid.is_empty() && device.uuid != reading.uuid {
                    device.uuid.clone_from(&reading.uuid);
                }
                if !reading.name.is_empty() && device.name != reading.name {
                    device.name.clone_from(&reading.name);
                }
            }
            device.enter(state, self.device_timeout, error.as_ref());

            let device = &self.devices[index];
            let ids = [device.index.as_str(), device.uuid.as_str()];
            out.push(
                &INFO,
                &[&device.index, &device.uuid, &device.name, &self.driver_version],
                1.0,
            );
            for candidate in State::ALL {
                out.push(&STATE, &[ids[0], ids[1], candidate.label()], flag(candidate == state));
            }
            out.push(&READ_ERRORS, &ids, device.read_errors as f64);
            for (xid, count) in &device.xids {
                out.push(&XIDS, &[&device.index, &xid.to_string()], *count as f64);
            }
            if let Some(reading) = reading {
                if state == State::Ok {
                    self.push_reading(index, &reading, out);
                }
                self.workers[index].recycle(reading);
            }
        }

        // A process no GPU shows any more frees its label. Only when every GPU
        // answered: one that did not may still run it.
        if all_answered {
            let gone: Vec<u32> = self.labelled.difference(&self.seen).copied().collect();
            for pid in gone {
                self.labels.forget(pid);
                self.labelled.remove(&pid);
            }
        }
        out.push(&LABEL_OVERFLOWS, &[], self.labels.overflowed() as f64);
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests;
