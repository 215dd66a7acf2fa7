//! Test hosts made of a network namespace joined to this one by a veth pair.
//! Needs root; only addresses inside these namespaces receive test traffic.

use std::process::{Command, Stdio};

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0")
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).stderr(Stdio::null()).status().unwrap();
    assert!(status.success(), "ip {args:?}");
}

/// A second host: a namespace and a veth pair, 10.252.N.1 here and 10.252.N.2
/// there. Removed on drop.
pub struct TestNet {
    pub netns: String,
    /// The host end of the pair.
    pub host: String,
    pub here: String,
    pub there: String,
}

impl TestNet {
    pub fn new(tag: &str) -> Self {
        let id = std::process::id();
        let n = (id % 200) + 20;
        let net = Self {
            netns: format!("hw{tag}{id}"),
            host: format!("hw{tag}{}", id % 100_000),
            here: format!("10.252.{n}.1"),
            there: format!("10.252.{n}.2"),
        };
        ip(&["netns", "add", &net.netns]);
        ip(&[
            "link", "add", &net.host, "type", "veth", "peer", "name", "peer0", "netns", &net.netns,
        ]);
        ip(&["addr", "add", &format!("{}/30", net.here), "dev", &net.host]);
        ip(&["link", "set", &net.host, "up"]);
        ip(&[
            "-n",
            &net.netns,
            "addr",
            "add",
            &format!("{}/30", net.there),
            "dev",
            "peer0",
        ]);
        ip(&["-n", &net.netns, "link", "set", "peer0", "up"]);
        ip(&["-n", &net.netns, "link", "set", "lo", "up"]);
        net
    }

    /// `program args` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.netns, program]);
        command
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| Command::new("ip").args(args).stderr(Stdio::null()).status();
        let _ = quiet(&["netns", "del", &self.netns]);
        let _ = quiet(&["link", "del", &self.host]);
    }
}
