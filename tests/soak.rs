//! The 2-minute version of the soak (bench/soak.py): scrapes, short-lived
//! processes and interfaces coming and going, with the agent's memory, file
//! descriptors and BPF links checked for growth. Root only (veth, eBPF).

// A test crate: its helpers fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Command;

#[test]
fn two_minute_soak() {
    if !support::netns::is_root() {
        eprintln!("skipped: the soak creates interfaces and loads BPF programs, which needs root");
        return;
    }
    let output = Command::new("python3")
        .arg(support::repo_root().join("bench/soak.py"))
        // The debug build's allocator is still settling a minute in (it has
        // grown 1.1 to 1.4 MiB in the minute after warm-up, flat in release):
        // a looser bound here, which still fails a leak like the 6 MiB a
        // minute this soak once caught. The 1 MiB goal is the 30-minute
        // release soak's (bench/RESULTS.md).
        .args(["--minutes", "2", "--max-growth-mib", "3", "--hostwatch", support::bin()])
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "soak failed:\n{summary}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert!(summary["samples"].as_u64().unwrap() >= 10, "{summary}");
    // With TCX (this kernel), netburst's two links come and go with the veth.
    let [fewest, most] = [0, 1].map(|i| summary["bpf_links_range"][i].as_u64().unwrap());
    assert!(
        most >= fewest + 2,
        "netburst's links followed the churned veth: {summary}"
    );
}
