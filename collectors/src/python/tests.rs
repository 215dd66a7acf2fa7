//! Root tests against real Python processes: attach, detach on exit, and a
//! process that exits between discovery and attach, with the kernel objects
//! counted. (The GIL measurements themselves are checked end to end in
//! `tests/python_gil.rs`.)

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;
use crate::testing::is_root;

/// Perf events and BPF links this process holds: a link per attached probe
/// (aya keeps the link, which holds its perf event).
fn kernel_objects() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("fds")
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|target| {
            let target = target.to_string_lossy();
            target == "anon_inode:[perf_event]" || target == "anon_inode:bpf_link"
        })
        .count()
}

/// Debian's stripped python3.11 (its debug file from python3.11-dbg), tagged
/// on its command line so only the test's own processes are selected.
fn python(tag: &str) -> Child {
    let mut child = Command::new("/usr/bin/python3.11")
        .args([
            "-c",
            "import sys, time; print('ready', flush=True); time.sleep(60)",
            tag,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3.11 runs (packaging/install-deps.sh --test installs it)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line, "ready\n");
    child
}

fn events(python: &Python, event: Event) -> u64 {
    Event::ALL
        .iter()
        .position(|e| *e == event)
        .map_or(0, |index| python.events[index])
}

#[test]
fn attach_detach_and_a_process_gone_before_attach_leave_nothing_behind() {
    if !is_root() {
        eprintln!("skipped: probing needs root (CAP_BPF, CAP_PERFMON)");
        return;
    }
    let tag = format!("hostwatch-unit-{}", std::process::id());
    let config = Config {
        cmdline: Pattern::new(&format!(".* {tag}")).ok(),
        ..Config::default()
    };
    let mut collector = Python::new(&HostPaths::default(), &config).expect("loads as root");
    let before = kernel_objects();

    // Found, probed in debuginfo mode (five probes), detached on exit.
    let mut child = python(&tag);
    collector.rescan().expect("scan");
    let pid = child.id();
    let target = collector.targets.get(&pid).expect("probed");
    assert_eq!(target.mode, Mode::DebugInfo);
    assert_eq!(
        kernel_objects(),
        before + 5,
        "a link per probe (the link holds its perf event)"
    );
    child.kill().expect("kill");
    child.wait().expect("reap");
    collector.rescan().expect("scan");
    assert!(collector.targets.is_empty());
    assert_eq!(events(&collector, Event::Detached), 1);
    released(&collector, before);

    // Discovered, then gone before the attach: counted as vanished, not failed.
    let mut child = python(&tag);
    let mut scan = Scan::default();
    collector.scanner.scan(&mut scan).expect("scan");
    let found = scan.found.into_iter().find(|f| f.pid == child.id()).expect("found");
    child.kill().expect("kill");
    child.wait().expect("reap");
    collector.attach(found.clone());
    assert_eq!(events(&collector, Event::Vanished), 1);
    assert_eq!(events(&collector, Event::Failed), 0);
    assert!(collector.targets.is_empty() && collector.unprobed.is_empty());

    // The same race one step later, in the kernel: the file still opens but
    // the process is gone. The attach fails whole, counters removed.
    let offsets = symbols::resolve(
        std::path::Path::new("/usr/bin/python3.11"),
        std::path::Path::new("/usr/lib/debug"),
    )
    .expect("symbols");
    let attached = collector
        .probes
        .attach(found.pid, std::path::Path::new("/usr/bin/python3.11"), &offsets);
    assert!(attached.is_err(), "{attached:?}");
    let mut stats = GilStats::default();
    assert!(
        collector.probes.read(found.pid, &mut stats).is_err(),
        "no counters left"
    );
    released(&collector, before);
}

/// Waits for the closing thread to release every detached probe (the kernel
/// takes about 0.1 s for each).
fn released(collector: &Python, before: usize) {
    let start = Instant::now();
    while collector.probes.detaching() > 0 || kernel_objects() != before {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} processes still detaching, {} kernel objects held (before: {before})",
            collector.probes.detaching(),
            kernel_objects()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
