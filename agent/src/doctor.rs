//! `hostwatch doctor`: what this host lets the agent do, each problem with a
//! remedy. Exit 0 when every enabled collector can run, 1 otherwise.
//!
//! Reads the kernel's version, BTF, tracefs and the process's capabilities,
//! then builds each enabled collector and collects once, exactly as the agent
//! would (each under a timeout, so a hung probe cannot hang the doctor), and
//! binds the shaping proxy's and the tunnels' addresses for a moment to see
//! whether the agent could. Needs what the collectors need; run it as the
//! agent's user.

use std::fmt::Write as _;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use hostwatch_collectors::{ALL, CollectorSpec, Context, HostPaths, MetricSet, Unavailable};
use hostwatch_shaping::proxy::Config as ShapingConfig;
use hostwatch_shaping::tunnel::config::{CompressionConfig, Side};

use crate::config::Config;

/// How long one collector may take to build and collect once.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Capabilities the collectors use, by bit number (linux/capability.h).
const CAPABILITIES: [(u32, &str, &str); 6] = [
    (39, "CAP_BPF", "eBPF programs (netburst and the other eBPF collectors)"),
    (38, "CAP_PERFMON", "tracepoints and perf sampling"),
    (
        12,
        "CAP_NET_ADMIN",
        "netburst's TCX programs; network namespaces and tc, for the shaper",
    ),
    (19, "CAP_SYS_PTRACE", "reading other processes' maps for uprobes"),
    (2, "CAP_DAC_READ_SEARCH", "reading /proc of other users' processes"),
    (24, "CAP_SYS_RESOURCE", "locked memory for BPF maps on older kernels"),
];

enum Outcome {
    Ok(MetricSet),
    Down(Unavailable),
    Failed(String),
    Hung,
}

/// The report, and whether everything enabled can run.
pub fn report(full: &Config, paths: &HostPaths) -> (String, bool) {
    let config = &full.collectors;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "HOST (a missing capability only matters to the collectors that need it, below)"
    );
    let release = std::fs::read_to_string(paths.proc("sys/kernel/osrelease")).unwrap_or_default();
    line(
        &mut out,
        !release.is_empty(),
        &format!("kernel {}", release.trim()),
        None,
    );
    let btf = paths.sys("kernel/btf/vmlinux");
    line(
        &mut out,
        btf.exists(),
        &format!("kernel BTF at {}", btf.display()),
        Some("a kernel built with CONFIG_DEBUG_INFO_BTF=y; without it the eBPF collectors are down"),
    );
    let effective = capabilities(&paths.proc("self/status"));
    for (bit, name, why) in CAPABILITIES {
        let held = effective.is_some_and(|caps| caps & (1 << bit) != 0);
        let _ = writeln!(out, "  {}  {name}: {why}", if held { "ok  " } else { "no  " });
    }
    let tracing = paths.sys("kernel/tracing");
    let kprobes = tracing.join("kprobe_events").exists();
    let _ = writeln!(
        out,
        "  info  kprobes {}; fentry and LSM programs are not used, so their absence costs nothing",
        if kprobes {
            "available"
        } else {
            "not available (not needed)"
        }
    );

    let _ = writeln!(out, "COLLECTORS");
    let context = Context::new(paths.clone(), config.clone());
    let mut all_ok = true;
    for spec in ALL {
        if !spec.plan(config).enabled {
            let _ = writeln!(out, "  off   {} (disabled in the config)", spec.name);
            continue;
        }
        match probe(spec, &context) {
            Outcome::Ok(set) => {
                let _ = writeln!(out, "  ok    {}", spec.name);
                // What it hooks into: tracepoints, uprobes, perf events.
                let _ = writeln!(out, "        uses {}", spec.needs);
                details(&mut out, spec.name, &set);
            }
            Outcome::Down(unavailable) => {
                all_ok = false;
                let _ = writeln!(out, "  FAIL  {}: {}", spec.name, unavailable.reason);
                let _ = writeln!(out, "        remedy: {}", unavailable.remedy.unwrap_or(spec.needs));
            }
            Outcome::Failed(error) => {
                all_ok = false;
                let _ = writeln!(out, "  FAIL  {}: {error}", spec.name);
            }
            Outcome::Hung => {
                all_ok = false;
                let _ = writeln!(
                    out,
                    "  FAIL  {}: no answer within {}s (a hung file or device)",
                    spec.name,
                    PROBE_TIMEOUT.as_secs()
                );
            }
        }
    }
    all_ok &= actuators(&mut out, &full.shaping, &full.compression);
    (out, all_ok)
}

/// The shaping proxy and the compression tunnels: off, or whether the
/// addresses they listen on can be had.
fn actuators(out: &mut String, shaping: &ShapingConfig, compression: &CompressionConfig) -> bool {
    let _ = writeln!(out, "ACTUATORS");
    let mut ok = true;
    if shaping.enabled {
        let policies: Vec<String> = shaping
            .policy
            .0
            .iter()
            .map(|p| {
                let adaptive = if p.adaptive.enabled { ", adaptive" } else { "" };
                format!("{}{adaptive}", p.name)
            })
            .collect();
        let mode = if shaping.dry_run {
            " in dry run (measures, never delays)"
        } else {
            ""
        };
        ok &= listen(
            out,
            &format!("shaping proxy{mode}, policies: {}", policies.join(", ")),
            shaping.listen,
        );
    } else {
        let _ = writeln!(out, "  off   shaping proxy (disabled in the config)");
    }
    for tunnel in compression.tunnel.iter() {
        let side = match tunnel.side {
            Side::Client => "client",
            Side::Server => "server",
        };
        ok &= listen(
            out,
            &format!("tunnel {} ({side}, on to {})", tunnel.name, tunnel.connect),
            tunnel.listen,
        );
    }
    if compression.tunnel.iter().next().is_none() {
        let _ = writeln!(out, "  off   compression tunnels (none configured)");
    }
    ok
}

/// Binds `addr` for a moment. In use is no failure: it is most often this
/// host's running agent.
fn listen(out: &mut String, what: &str, addr: SocketAddr) -> bool {
    match TcpListener::bind(addr) {
        Ok(_) => {
            let _ = writeln!(out, "  ok    {what}: {addr} free to listen on");
            true
        }
        Err(error) if error.kind() == ErrorKind::AddrInUse => {
            let _ = writeln!(
                out,
                "  info  {what}: {addr} in use, by the running agent or another program; \
                 `ss -ltnp 'sport = :{}'` tells which",
                addr.port()
            );
            true
        }
        Err(error) => {
            let _ = writeln!(out, "  FAIL  {what}: cannot listen on {addr}: {error}");
            let _ = writeln!(
                out,
                "        remedy: an address of this host, and a port above 1023 unless the agent holds CAP_NET_BIND_SERVICE"
            );
            false
        }
    }
}

fn line(out: &mut String, ok: bool, what: &str, remedy: Option<&str>) {
    let _ = writeln!(out, "  {}  {what}", if ok { "ok  " } else { "FAIL" });
    if let (false, Some(remedy)) = (ok, remedy) {
        let _ = writeln!(out, "        remedy: {remedy}");
    }
}

/// Builds and collects once on a thread of its own, so a hung probe is left
/// behind rather than hanging the doctor.
fn probe(spec: &'static CollectorSpec, context: &Context) -> Outcome {
    let (tx, rx) = mpsc::channel();
    let context = context.clone();
    std::thread::spawn(move || {
        let outcome = match (spec.build)(&context) {
            Err(unavailable) => Outcome::Down(unavailable),
            Ok(mut collector) => {
                let mut set = MetricSet::default();
                match collector.collect(&mut set) {
                    Ok(()) => Outcome::Ok(set),
                    Err(error) => Outcome::Failed(error.to_string()),
                }
            }
        };
        let _ = tx.send(outcome);
    });
    rx.recv_timeout(PROBE_TIMEOUT).unwrap_or(Outcome::Hung)
}

/// What an operator wants to know beyond "it runs": ENA drivers and whether
/// they have the allowance counters, the instance, the interfaces counted.
fn details(out: &mut String, collector: &str, set: &MetricSet) {
    for family in set.families() {
        let desc = family.desc();
        for series in family.series() {
            let labels = series.label_values();
            let note = match (collector, desc.name) {
                ("ethtool", "hostwatch_ena_driver_info") => {
                    format!("ENA {}: driver {} {}", labels[0], labels[1], labels[2])
                }
                ("ethtool", "hostwatch_ena_allowance_counters_supported") if series.value() == 0.0 => format!(
                    "ENA {}: no allowance counters; remedy: upgrade the ENA driver to 2.2.10 or newer",
                    labels[0]
                ),
                ("instance", "hostwatch_instance_info") => {
                    format!("instance {} in {} ({})", labels[0], labels[1], labels[2])
                }
                ("gpu", "hostwatch_gpu_info") => {
                    format!("GPU {} {} ({}), driver {}", labels[0], labels[2], labels[1], labels[3])
                }
                ("gpu", "hostwatch_gpu_state") if series.value() == 1.0 && labels[2] != "ok" => {
                    format!(
                        "GPU {}: {}; remedy: see nvidia-smi and the kernel log (XIDs)",
                        labels[0], labels[2]
                    )
                }
                ("gpu", "hostwatch_gpu_gpm_supported") if series.value() == 0.0 => {
                    format!(
                        "GPU {}: no GPM metrics, so no SM activity (NVML offers them on Hopper and newer)",
                        labels[0]
                    )
                }
                ("gpu", "hostwatch_gpu_xid_events_supported") if series.value() == 0.0 => {
                    format!(
                        "GPU {}: NVML delivers no XID events, so XID errors go uncounted",
                        labels[0]
                    )
                }
                ("python", "hostwatch_python_target_info") => {
                    format!(
                        "Python {}: GIL probes in {} mode on {}",
                        labels[0], labels[1], labels[2]
                    )
                }
                ("python", "hostwatch_python_unprobed_processes") if series.value() > 0.0 => {
                    format!("{} Python processes not probed: {}", series.value(), labels[0])
                }
                ("netburst", "hostwatch_net_burst_hooks") => match labels[0].as_str() {
                    "tcx" => "packets counted by TCX programs on the watched interfaces only".to_owned(),
                    other => format!(
                        "packets counted by {other}, which every packet of the host runs (no TCX: Linux before 6.6, or hooks = \"tracepoints\")"
                    ),
                },
                ("netburst", "hostwatch_net_burst_threshold_bits_per_second") => {
                    format!(
                        "counting {} {} per millisecond, burst threshold {} bit/s",
                        labels[0],
                        labels[1],
                        series.value()
                    )
                }
                _ => continue,
            };
            let _ = writeln!(out, "        {note}");
        }
    }
}

/// The effective capability set from `/proc/self/status` (`CapEff`, hex).
fn capabilities(status: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(status).ok()?;
    let hex = text.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_without_procfs_fails_with_remedies() {
        let mut config = Config::default();
        config.collectors.pressure.enabled = false;
        let (text, ok) = report(&config, &HostPaths::new("/nonexistent/proc", "/nonexistent/sys"));
        assert!(!ok);
        assert!(
            text.contains("  FAIL  cpu: no kernel statistics: /nonexistent/proc/stat"),
            "{text}"
        );
        assert!(
            text.contains("remedy: mount procfs and sysfs, or point --path.procfs / --path.sysfs at the host's"),
            "{text}"
        );
        assert!(text.contains("  off   pressure (disabled in the config)"), "{text}");
        assert!(
            text.contains("  ok    process\n        uses procfs: /proc/self (the agent's own process)\n"),
            "the agent's own process is always there: {text}"
        );
    }

    #[test]
    fn actuators_say_whether_their_addresses_can_be_had() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let config: Config = toml::from_str(&format!(
            "[shaping]\nenabled = true\nlisten = \"{}\"\n\
             [[shaping.policy]]\nname = \"s3\"\nhosts = [\"*.amazonaws.com\"]\ndownload = \"1Gbit\"\n\
             [[compression.tunnel]]\nname = \"logs\"\nside = \"client\"\nlisten = \"127.0.0.1:0\"\nconnect = \"10.0.0.2:7000\"\n\
             [[compression.tunnel]]\nname = \"elsewhere\"\nside = \"server\"\nlisten = \"192.0.2.1:7000\"\nconnect = \"127.0.0.1:9000\"\n",
            held.local_addr().unwrap()
        ))
        .unwrap();
        let mut out = String::new();
        assert!(!actuators(&mut out, &config.shaping, &config.compression), "{out}");
        let port = held.local_addr().unwrap().port();
        assert!(
            out.contains(&format!("  info  shaping proxy, policies: s3: 127.0.0.1:{port} in use")),
            "a port the running agent holds is no failure: {out}"
        );
        assert!(
            out.contains("  ok    tunnel logs (client, on to 10.0.0.2:7000): 127.0.0.1:0 free"),
            "{out}"
        );
        assert!(
            out.contains("  FAIL  tunnel elsewhere (server, on to 127.0.0.1:9000): cannot listen on 192.0.2.1:7000"),
            "an address this host does not have fails: {out}"
        );

        let mut out = String::new();
        assert!(actuators(
            &mut out,
            &Config::default().shaping,
            &Config::default().compression
        ));
        assert!(out.contains("  off   shaping proxy (disabled in the config)"), "{out}");
        assert!(out.contains("  off   compression tunnels (none configured)"), "{out}");
    }
}
