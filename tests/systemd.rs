//! The packaged unit: `systemd-analyze verify` accepts it, its exposure stays
//! low (`systemd-analyze security`), and it keeps the directives the agent's
//! life cycle relies on. Runs offline: no systemd needs to be running.

// A test crate: its helpers fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Command;

use support::{TempDir, repo_root, require_program};

/// The unit with its binary path pointed at the one this build made.
fn unit(dir: &TempDir) -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo_root().join("systemd/hostwatch.service")).unwrap();
    dir.write("hostwatch.service", &text.replace("/usr/bin/hostwatch", support::bin()))
}

#[test]
fn the_unit_verifies() {
    let analyze = require_program("systemd-analyze");
    let dir = TempDir::new("unit");
    let output = Command::new(analyze).arg("verify").arg(unit(&dir)).output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{said}");
    assert!(
        !said.contains("hostwatch.service"),
        "no complaint about the unit: {said}"
    );
}

#[test]
fn the_unit_is_hardened() {
    let analyze = require_program("systemd-analyze");
    let dir = TempDir::new("security");
    let output = Command::new(analyze)
        .args(["security", "--offline=true"])
        .arg(unit(&dir))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let level: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for hostwatch.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    // 4.3 when written; README records it. Higher means hardening was lost.
    assert!(level <= 4.5, "exposure {level}:\n{text}");

    let unit = std::fs::read_to_string(repo_root().join("systemd/hostwatch.service")).unwrap();
    for directive in [
        "Type=notify",
        "WatchdogSec=",
        "ExecStartPre=/usr/bin/hostwatch validate",
        "Restart=on-failure",
        "ProtectSystem=strict",
        "ProtectHome=",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "ReadWritePaths=/var/lib/hostwatch",
        "CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_SYS_PTRACE CAP_DAC_READ_SEARCH CAP_SYS_RESOURCE",
        "AmbientCapabilities=CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_SYS_PTRACE CAP_DAC_READ_SEARCH CAP_SYS_RESOURCE",
    ] {
        assert!(unit.lines().any(|l| l.starts_with(directive)), "missing {directive}");
    }
}
