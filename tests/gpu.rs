//! The gpu collector through the real agent, on its fixture backend (no GPU
//! is needed): GPU series in the scrape, `promtool check metrics` on them, a
//! GPU falling off the bus while the agent runs (state, XID 79, the logged
//! event, the other GPU unaffected), a host without NVML, and what `hostwatch
//! doctor` says about GPUs.

// A test crate: its helpers fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Agent, TempDir, fixture, require_program, value};

const GPU0: &str = "GPU-5d6a2f3e-8b1c-4f0a-9e7d-2c4b6a8e0f13";
const GPU1: &str = "GPU-0b7e4c21-93d5-4a6f-b812-6f3d9c2e7a40";

fn promtool_check_metrics(exposition: &str) {
    let mut child = Command::new(require_program("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_gpu_falls_off_the_bus_while_the_other_keeps_reporting() {
    let dir = TempDir::new("gpu-replay");
    let gpus = dir.join("gpus");
    std::fs::create_dir_all(&gpus).unwrap();
    for file in ["system.json", "gpu0.json", "gpu1.json"] {
        std::fs::copy(fixture("gpu/busy").join(file), gpus.join(file)).unwrap();
    }
    let config = dir.write(
        "hostwatch.toml",
        &format!(
            "[collectors.gpu]\nfixtures = \"{}\"\ninterval = \"100ms\"\n",
            gpus.display()
        ),
    );
    let agent = Agent::on_fixture("basic", &["--config", config.to_str().unwrap()]);
    agent.wait_ready();

    let text = agent.metrics();
    assert_eq!(
        value(&text, "hostwatch_collector_up{collector=\"gpu\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            &format!("hostwatch_gpu_utilization_ratio{{gpu=\"1\",uuid=\"{GPU1}\"}}")
        ),
        Some(0.95)
    );
    assert_eq!(
        value(
            &text,
            &format!("hostwatch_gpu_memory_used_bytes{{gpu=\"0\",uuid=\"{GPU0}\"}}")
        ),
        Some(74_088_185_856.0)
    );
    assert!(
        text.contains(&format!(
            "hostwatch_gpu_info{{gpu=\"0\",uuid=\"{GPU0}\",name=\"NVIDIA H100 80GB HBM3\",driver_version=\"550.90.07\"}} 1"
        )),
        "{text}"
    );
    promtool_check_metrics(&text);

    // GPU 1 falls off the bus: NVML answers GPU_IS_LOST and sends XID 79.
    std::fs::copy(fixture("gpu/lost/gpu1.json"), gpus.join("gpu1.json")).unwrap();
    let lost = format!("hostwatch_gpu_state{{gpu=\"1\",uuid=\"{GPU1}\",state=\"lost\"}}");
    agent.wait_until(
        Duration::from_secs(5),
        || value(&agent.metrics(), &lost) == Some(1.0),
        "GPU 1 reported lost",
    );
    let text = agent.metrics();
    assert_eq!(
        value(&text, "hostwatch_gpu_xid_errors_total{gpu=\"1\",xid=\"79\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            &format!("hostwatch_gpu_utilization_ratio{{gpu=\"1\",uuid=\"{GPU1}\"}}")
        ),
        None,
        "a lost GPU has no figures"
    );
    assert_eq!(
        value(
            &text,
            &format!("hostwatch_gpu_utilization_ratio{{gpu=\"0\",uuid=\"{GPU0}\"}}")
        ),
        Some(0.97)
    );
    assert_eq!(
        value(
            &text,
            &format!("hostwatch_gpu_state{{gpu=\"0\",uuid=\"{GPU0}\",state=\"ok\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(value(&text, "hostwatch_collector_up{collector=\"gpu\"}"), Some(1.0));
    promtool_check_metrics(&text);
    let logs = agent.logs();
    let events: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("GPU has fallen off the bus"))
        .collect();
    assert_eq!(events.len(), 1, "logged once, when it happened:\n{logs}");
    assert!(events[0].contains("\"level\":\"WARN\""), "{}", events[0]);
    assert!(events[0].contains(GPU1), "{}", events[0]);
}

#[test]
fn a_host_without_nvml_has_the_collector_down_with_the_reason() {
    let dir = TempDir::new("gpu-absent");
    let config = dir.write(
        "hostwatch.toml",
        "[collectors.gpu]\nlibrary = \"/nonexistent/libnvidia-ml.so.1\"\n",
    );
    let agent = Agent::on_fixture("basic", &["--config", config.to_str().unwrap()]);
    agent.wait_ready();
    let text = agent.metrics();
    assert_eq!(value(&text, "hostwatch_collector_up{collector=\"gpu\"}"), Some(0.0));
    assert_eq!(
        value(
            &text,
            "hostwatch_collector_unavailable_info{collector=\"gpu\",reason=\"cannot load the NVML library: /nonexistent/libnvidia-ml.so.1: cannot open shared object file: No such file or directory\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(!text.contains("hostwatch_gpu_"), "{text}");
    // Everything else runs.
    assert_eq!(value(&text, "hostwatch_collector_up{collector=\"cpu\"}"), Some(1.0));
    // The log line is read from the agent's stderr by another thread.
    agent.wait_until(
        Duration::from_secs(5),
        || {
            agent.logs().lines().any(|line| {
                line.contains("collector cannot run on this host") && line.contains("\"collector\":\"gpu\"")
            })
        },
        "the gpu collector logged as down",
    );
}

#[test]
fn doctor_names_each_gpu_and_what_is_wrong() {
    let dir = TempDir::new("gpu-doctor");
    let config = dir.write(
        "hostwatch.toml",
        &format!("[collectors.gpu]\nfixtures = \"{}\"\n", fixture("gpu/lost").display()),
    );
    let output = Command::new(support::bin())
        .args(["doctor", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let report = String::from_utf8(output.stdout).unwrap();
    assert!(report.contains("  ok    gpu\n"), "{report}");
    assert!(
        report.contains("        GPU 0 NVIDIA L4 (GPU-7e2d5b98-14a3-4c6e-a0f9-3d8b1c5e7f26), driver 550.90.07\n"),
        "{report}"
    );
    assert!(
        report.contains("        GPU 0: no GPM metrics, so no SM activity (NVML offers them on Hopper and newer)\n"),
        "{report}"
    );
    assert!(
        report.contains("        GPU 1: lost; remedy: see nvidia-smi and the kernel log (XIDs)\n"),
        "{report}"
    );

    let config = dir.write(
        "absent.toml",
        "[collectors.gpu]\nlibrary = \"/nonexistent/libnvidia-ml.so.1\"\n",
    );
    let output = Command::new(support::bin())
        .args(["doctor", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let report = String::from_utf8(output.stdout).unwrap();
    assert!(
        report.contains("  FAIL  gpu: cannot load the NVML library: /nonexistent/libnvidia-ml.so.1: cannot open shared object file: No such file or directory\n        remedy: install NVIDIA's driver"),
        "{report}"
    );
}
