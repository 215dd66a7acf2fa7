//! A second host for the root tests: a network namespace joined to this one
//! by a veth pair. Only loopback and addresses inside namespaces a test
//! created may receive test traffic.

use std::fs::File;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;

use nix::sched::{CloneFlags, setns};

use super::Response;

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0")
}

/// Returns from the test, saying why, unless it runs as root; `$why` says
/// what root is needed for. (Test files without root tests leave it unused.)
#[allow(unused_macros)]
macro_rules! require_root {
    ($why:literal) => {
        if !support::netns::is_root() {
            eprintln!(concat!("skipped: needs root ", $why));
            return;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use require_root;

pub fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

/// The namespace `hw{tag}{pid}` with the veth `hw{tag}{pid}` here (its peer
/// `peer0` there), 10.251.N.1 here and 10.251.N.2 there. Removed on drop.
pub struct TestNet {
    pub netns: String,
    pub host: String,
    pub here: String,
    pub there: String,
}

impl TestNet {
    /// `program args` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.netns, program]);
        command
    }

    pub fn new(tag: &str) -> Self {
        let id = std::process::id();
        let n = (id % 200) + 20;
        let net = Self {
            netns: format!("hw{tag}{id}"),
            host: format!("hw{tag}{}", id % 100_000),
            here: format!("10.251.{n}.1"),
            there: format!("10.251.{n}.2"),
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

    /// Runs `f` on a thread inside the namespace: the sockets it makes are there.
    pub fn inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
        let netns = File::open(format!("/run/netns/{}", self.netns)).unwrap();
        std::thread::spawn(move || {
            setns(&netns, CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
    }

    /// Bytes the veth carried so far, both directions, as its host end counts them.
    pub fn veth_bytes(&self) -> u64 {
        ["tx_bytes", "rx_bytes"]
            .iter()
            .map(|counter| {
                let path = format!("/sys/class/net/{}/statistics/{counter}", self.host);
                std::fs::read_to_string(path).unwrap().trim().parse::<u64>().unwrap()
            })
            .sum()
    }

    /// A GET to a server inside the namespace, over its loopback: the
    /// request never touches the veth.
    pub fn get(&self, addr: SocketAddr, path: &'static str) -> Response {
        self.inside(move || super::get(addr, path, &[])).join().unwrap()
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| Command::new("ip").args(args).stderr(Stdio::null()).status();
        let _ = quiet(&["netns", "del", &self.netns]);
        let _ = quiet(&["link", "del", &self.host]);
    }
}
