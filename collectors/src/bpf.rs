//! The collectors' side of the eBPF pipeline: loading an embedded object,
//! attaching its programs, and turning any failure into the collector's
//! "cannot run here" reason.
//!
//! Needs a kernel with BTF and CAP_BPF + CAP_PERFMON (root). Without them the
//! collector is down with a reason that says so; the verifier's log, when the
//! kernel refused a program, goes to the debug log.

use aya::Ebpf;
use aya::programs::{BtfTracePoint, SchedClassifier, TracePoint};
use hostwatch_ebpf::{Error, Object};
use tracing::debug;

use crate::error::Unavailable;

/// How a program attaches.
#[derive(Debug, Clone, Copy)]
pub enum Hook {
    /// `SEC("tp_btf/NAME")`: a BTF-typed raw tracepoint.
    BtfTracePoint(&'static str),
    /// `SEC("tracepoint/CATEGORY/NAME")`: a classic tracepoint.
    TracePoint(&'static str, &'static str),
    /// `SEC("classifier")`: loaded only; the collector attaches it to each
    /// interface it chooses (TCX).
    Tc,
}

/// Loads `object` and attaches each `(program, hook)`. The links live as long
/// as the returned [`Ebpf`]: dropping it detaches everything.
pub fn load_and_attach(object: &'static Object, programs: &[(&'static str, Hook)]) -> Result<Ebpf, Unavailable> {
    let mut ebpf = hostwatch_ebpf::load(object).map_err(unavailable)?;
    attach(&mut ebpf, object, programs)?;
    Ok(ebpf)
}

/// Loads each `(program, hook)` of `ebpf` (loaded from `object`) and attaches it.
pub fn attach(ebpf: &mut Ebpf, object: &'static Object, programs: &[(&'static str, Hook)]) -> Result<(), Unavailable> {
    // Read once, and only if a program needs it.
    let mut btf = None;
    for (name, hook) in programs {
        let program = ebpf
            .program_mut(name)
            .ok_or(Error::MissingProgram {
                object: object.name,
                program: name,
            })
            .map_err(unavailable)?;
        let failed = |source| {
            unavailable(Error::Program {
                object: object.name,
                program: name,
                source,
            })
        };
        match hook {
            Hook::BtfTracePoint(tracepoint) => {
                let btf = match &mut btf {
                    Some(btf) => btf,
                    None => btf.insert(aya::Btf::from_sys_fs().map_err(|error| {
                        Unavailable::new(format!("no kernel BTF (/sys/kernel/btf/vmlinux): {error}")).with_remedy(
                            "run a kernel built with CONFIG_DEBUG_INFO_BTF=y (current distribution kernels are)",
                        )
                    })?),
                };
                let program: &mut BtfTracePoint = program.try_into().map_err(failed)?;
                program.load(tracepoint, btf).map_err(failed)?;
                program.attach().map_err(failed)?;
            }
            Hook::TracePoint(category, tracepoint) => {
                let program: &mut TracePoint = program.try_into().map_err(failed)?;
                program.load().map_err(failed)?;
                program.attach(category, tracepoint).map_err(failed)?;
            }
            Hook::Tc => {
                let program: &mut SchedClassifier = program.try_into().map_err(failed)?;
                program.load().map_err(failed)?;
            }
        }
    }
    Ok(())
}

/// The collector's reason for an eBPF failure.
pub fn unavailable(error: Error) -> Unavailable {
    if let Some(log) = error.verifier_log() {
        debug!(%error, verifier_log = %log, "the kernel refused a BPF program");
    }
    if error.is_permission() {
        Unavailable::new(format!(
            "eBPF not permitted (needs root, or CAP_BPF and CAP_PERFMON): {}",
            error.chain()
        ))
        .with_remedy(
            "run the agent as root, or grant CAP_BPF and CAP_PERFMON (the packaged unit's AmbientCapabilities do)",
        )
    } else {
        Unavailable::new(error.chain())
    }
}

/// Milliseconds of CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns()`.
#[allow(unsafe_code)]
pub fn monotonic_ms() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec for the call to write; CLOCK_MONOTONIC
    // exists on every Linux, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    u64::try_from(now.tv_sec).unwrap_or(0) * 1000 + u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000_000
}
