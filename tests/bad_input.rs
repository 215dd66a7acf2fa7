//! Bad input end to end: invalid configs, a garbage /proc file, a port in use.

// A test crate: its helpers fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod support;

use std::process::Command;

use support::{Agent, TempDir, bin, value};

/// `hostwatch validate --config FILE` on `text`: exit code and stderr.
fn validate(text: &str) -> (Option<i32>, String, String) {
    let dir = TempDir::new("validate");
    let path = dir.write("hostwatch.toml", text);
    let output = Command::new(bin())
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let anonymise = |bytes: Vec<u8>| {
        String::from_utf8(bytes)
            .unwrap()
            .replace(path.to_str().unwrap(), "FILE")
    };
    (output.status.code(), anonymise(output.stdout), anonymise(output.stderr))
}

#[test]
fn invalid_configs_name_file_line_column_and_reason() {
    let cases = [
        (
            "[agent]\nlisten = \"0.0.0.0:9977\"\nverbose = true\n",
            "FILE:3:1: unknown field `verbose`, expected one of `listen`, `log_format`, `web_config_file`\n",
        ),
        (
            "[collectors.cpu]\nenabled = 1\n",
            "FILE:2:11: invalid type: integer `1`, expected a boolean\n",
        ),
        (
            "[agent]\nlisten = \"localhost\"\n",
            "FILE:2:10: invalid socket address syntax\n",
        ),
        (
            "[http]\nmax_connections = 100000\n",
            "FILE:2:19: value 100000 out of range: must be between 1 and 65536\n",
        ),
        (
            "[collectors.netdev]\ninterval = \"0s\"\n",
            "FILE:2:12: duration \"0s\" out of range: must be between 10ms and 1h\n",
        ),
        (
            "[collectors.nosuch]\n",
            "FILE:1:13: unknown field `nosuch`, expected one of `cpu`, `memory`, `pressure`, `cgroups`, `netdev`, `ethtool`, `instance`, `headroom`, `netburst`, `stalls`, `hotspots`, `python`, `gpu`, `process`\n",
        ),
        (
            "[collectors.python]\nmax_targets = 2000\n",
            "FILE:2:15: value 2000 out of range: must be between 1 and 1024\n",
        ),
        (
            "[collectors.python]\ncpu_budget = 1.5\n",
            "FILE:2:14: value 1.5 out of range: must be greater than 0 and at most 1\n",
        ),
        (
            "[collectors.python]\ncmdline = \"train(\"\n",
            "FILE:2:11: invalid regular expression \"train(\": regex parse error:\n    ^(?:train()$\n     ^\nerror: unclosed group\n",
        ),
        ("[agent\n", "FILE:1:7: unclosed table, expected `]`\n"),
    ];
    for (text, expected) in cases {
        let (code, stdout, stderr) = validate(text);
        assert_eq!(code, Some(2), "exit code for {text:?}");
        assert_eq!(stderr, expected, "message for {text:?}");
        assert_eq!(stdout, "");
    }
}

#[test]
fn valid_config_and_missing_file() {
    let (code, stdout, stderr) =
        validate("[agent]\nlisten = \"127.0.0.1:9977\"\n[collectors.cpu]\ninterval = \"5s\"\n");
    assert_eq!(
        (code, stdout, stderr),
        (Some(0), "FILE: ok\n".to_owned(), String::new())
    );

    let output = Command::new(bin())
        .args(["validate", "--config", "/nonexistent/hostwatch.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8(output.stderr).unwrap(),
        "/nonexistent/hostwatch.toml: No such file or directory (os error 2)\n"
    );
}

#[test]
fn the_example_config_is_valid() {
    let example = support::repo_root().join("packaging/hostwatch.toml");
    let output = Command::new(bin())
        .args(["validate", "--config"])
        .arg(&example)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn run_refuses_an_invalid_config_with_exit_2() {
    let dir = TempDir::new("run-invalid");
    let path = dir.write("hostwatch.toml", "[http]\nheader_timeout = \"forever\"\n");
    let output = Command::new(bin())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.starts_with(&format!(
            "hostwatch: {}:2:18: invalid duration \"forever\"",
            path.display()
        )),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn garbage_proc_file_fails_one_collector_only() {
    let agent = Agent::on_fixture("garbage", &[]);
    agent.wait_ready();
    let text = agent.metrics();
    assert_eq!(
        value(&text, "hostwatch_collector_up{collector=\"cpu\"}"),
        Some(0.0),
        "{text}"
    );
    assert!(
        value(
            &text,
            "hostwatch_collector_errors_total{collector=\"cpu\",kind=\"parse\"}"
        )
        .is_some_and(|n| n >= 1.0)
    );
    assert_eq!(
        value(
            &text,
            "hostwatch_collector_errors_total{collector=\"memory\",kind=\"parse\"}"
        ),
        Some(0.0)
    );
    for collector in ["memory", "pressure", "netdev", "process"] {
        assert_eq!(
            value(&text, &format!("hostwatch_collector_up{{collector=\"{collector}\"}}")),
            Some(1.0),
            "{collector}"
        );
    }
    assert!(
        value(&text, "hostwatch_net_receive_bytes_total{interface=\"eth0\"}").is_some(),
        "{text}"
    );
    assert!(agent.logs().contains("collection failed"), "the failure is logged");
}

#[test]
fn port_in_use_is_a_one_line_error_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let output = Command::new(bin())
        .args(["run", "--listen", &addr.to_string()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(
        stderr,
        format!("hostwatch: cannot listen on {addr}: Address already in use (os error 98)\n")
    );
}

#[test]
fn doctor_names_what_cannot_run_and_exits_1() {
    let root = support::fixture("basic");
    let output = Command::new(bin())
        .args(["doctor", "--path.procfs"])
        .arg(root.join("proc"))
        .args(["--path.sysfs"])
        .arg(root.join("sys"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let report = String::from_utf8(output.stdout).unwrap();
    assert!(report.contains("  ok    cpu\n"), "{report}");
    assert!(report.contains("  FAIL  ethtool: no network interfaces:"), "{report}");
    assert!(report.contains("  FAIL  instance: not an EC2 instance"), "{report}");
    assert!(report.contains("remedy: nothing to do off EC2"), "{report}");

    // With what cannot run here disabled, the doctor is satisfied.
    let dir = TempDir::new("doctor");
    let config = dir.write(
        "hostwatch.toml",
        "[collectors.ethtool]\nenabled = false\n[collectors.instance]\nenabled = false\n[collectors.headroom]\nenabled = false\n[collectors.netburst]\nenabled = false\n[collectors.stalls]\nenabled = false\n[collectors.hotspots]\nenabled = false\n[collectors.python]\nenabled = false\n[collectors.gpu]\nenabled = false\n",
    );
    let output = Command::new(bin())
        .args(["doctor", "--config"])
        .arg(&config)
        .args(["--path.procfs"])
        .arg(root.join("proc"))
        .args(["--path.sysfs"])
        .arg(root.join("sys"))
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}
