//! Finding Python processes: which pids run CPython, and which of them the
//! config selects.
//!
//! Reads `PROCFS/PID/stat` of every process on each scan (command name and
//! start time; this takes no lock of the target), `PROCFS/uptime`, and
//! `PROCFS/PID/maps` only for a process not seen before or whose command name
//! changed (an exec), and again while it is under a second old and its maps
//! name no interpreter yet (exec renames a process before mapping its
//! program). Reading maps takes the target's mmap_lock for a moment, so it
//! happens once per process past its start, never on every scan, and `smaps`
//! is never read at all (see DESIGN.md). `cmdline` (also read under
//! mmap_lock) and `cgroup` are read only for Python processes, and only when
//! the config selects on them.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::PathBuf;

use crate::config::Pattern;
use crate::error::CollectError;
use crate::paths::HostPaths;
use crate::procfile::ProcFile;

/// A Python process found by a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub pid: u32,
    /// Clock ticks after boot (`stat` field 22): with the pid, the process's identity.
    pub start_time: u64,
    pub comm: String,
    /// The file holding the interpreter's functions, as the target sees it (in
    /// its own mount namespace): open it under `PROCFS/PID/root`.
    pub interpreter: String,
}

/// What one scan saw change.
#[derive(Debug, Default)]
pub struct Scan {
    /// Python processes new since the last scan (or that exec'd into Python).
    pub found: Vec<Found>,
    /// Processes that exited or exec'd since the last scan, Python or not.
    pub gone: Vec<u32>,
}

/// Walks procfs, remembering what it saw so that each process's maps are read once.
#[derive(Debug)]
pub struct Scanner {
    paths: HostPaths,
    seen: HashMap<u32, Seen>,
    generation: u64,
    /// `PROCFS/uptime`: how old each process is (see [`SETTLE_TICKS`]).
    uptime: ProcFile,
    /// Reused for every file read and path built during a scan.
    text: String,
    path: String,
}

#[derive(Debug)]
struct Seen {
    start_time: u64,
    comm: String,
    /// The last scan that saw the process alive.
    generation: u64,
    /// Its maps need no further read: they named an interpreter, or were
    /// read once the process was past its exec (see [`SETTLE_TICKS`]).
    settled: bool,
}

/// How old a process must be (in USER_HZ ticks, 100 a second by the kernel
/// ABI) before maps without an interpreter mean it is not Python. exec(2)
/// renames the process before it maps the new program, and the dynamic
/// loader maps libpython later still: a scan in between would otherwise
/// settle a Python process as something else for good.
const SETTLE_TICKS: u64 = 100;

impl Scanner {
    pub fn new(paths: HostPaths) -> Self {
        Self {
            uptime: ProcFile::new(paths.proc("uptime")),
            paths,
            seen: HashMap::new(),
            generation: 0,
            text: String::new(),
            path: String::new(),
        }
    }

    /// Lists processes and reports the Python ones that are new and those gone.
    pub fn scan(&mut self, out: &mut Scan) -> Result<(), CollectError> {
        out.found.clear();
        out.gone.clear();
        self.generation += 1;
        let now = self.uptime_ticks();
        let procfs = self.paths.procfs();
        let entries = fs::read_dir(procfs).map_err(|source| CollectError::Io {
            path: procfs.to_path_buf(),
            source,
        })?;
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
                continue;
            };
            // A process that exits while it is being read simply is not there.
            if self.read(pid, "stat").is_err() {
                continue;
            }
            let Some((comm, start_time)) = parse_stat(&self.text) else {
                continue;
            };
            match self.seen.get_mut(&pid) {
                Some(seen) if seen.start_time == start_time && seen.comm == comm => {
                    seen.generation = self.generation;
                    if seen.settled {
                        continue;
                    }
                }
                Some(seen) => {
                    // The pid was reused, or the process exec'd: what was there is gone.
                    out.gone.push(pid);
                    seen.start_time = start_time;
                    seen.comm.clear();
                    seen.comm.push_str(comm);
                    seen.generation = self.generation;
                }
                None => {
                    self.seen.insert(
                        pid,
                        Seen {
                            start_time,
                            comm: comm.to_owned(),
                            generation: self.generation,
                            settled: false,
                        },
                    );
                }
            }
            let comm = comm.to_owned();
            // Without a clock (no uptime), every process counts as settled.
            let young = now.is_some_and(|now| now.saturating_sub(start_time) < SETTLE_TICKS);
            let mut settled = !young;
            if self.read(pid, "maps").is_ok()
                && let Some(interpreter) = interpreter(&self.text)
            {
                settled = true;
                out.found.push(Found {
                    pid,
                    start_time,
                    comm,
                    interpreter: interpreter.to_owned(),
                });
            }
            if let Some(seen) = self.seen.get_mut(&pid) {
                seen.settled = settled;
            }
        }
        let generation = self.generation;
        self.seen.retain(|pid, seen| {
            let alive = seen.generation == generation;
            if !alive {
                out.gone.push(*pid);
            }
            alive
        });
        Ok(())
    }

    /// Whether `pid` is still the process that started at `start_time` (a
    /// zombie is not: it has no address space left to probe).
    pub fn is_alive(&mut self, pid: u32, start_time: u64) -> bool {
        self.read(pid, "stat").is_ok()
            && parse_stat(&self.text).is_some_and(|(_, start)| start == start_time)
            && !is_dead(&self.text)
    }

    /// Whether `selection` selects `found`; reads its cmdline and cgroup only
    /// when the selection asks for them.
    pub fn selects(&mut self, selection: &Selection, found: &Found) -> bool {
        if selection.comm.as_ref().is_some_and(|p| !p.is_match(&found.comm)) {
            return false;
        }
        if let Some(pattern) = &selection.cmdline {
            if self.read(found.pid, "cmdline").is_err() {
                return false;
            }
            // Arguments joined by spaces; a newline inside one (`python -c`
            // with a script) reads as a space too, so `.*` spans it.
            let cmdline = self.text.trim_end_matches('\0').replace(['\0', '\n'], " ");
            if !pattern.is_match(&cmdline) {
                return false;
            }
        }
        if let Some(pattern) = &selection.cgroup {
            if self.read(found.pid, "cgroup").is_err() {
                return false;
            }
            if !cgroup_path(&self.text).is_some_and(|path| pattern.is_match(path)) {
                return false;
            }
        }
        true
    }

    /// Ticks since boot (`PROCFS/uptime`), on the clock of `stat`'s start time.
    fn uptime_ticks(&mut self) -> Option<u64> {
        let uptime = self.uptime.read().ok()?;
        let seconds: f64 = uptime.text.split_ascii_whitespace().next()?.parse().ok()?;
        Some((seconds * 100.0) as u64)
    }

    /// `PROCFS/PID/ROOT` read whole into `self.text`.
    fn read(&mut self, pid: u32, file: &str) -> io::Result<()> {
        self.path.clear();
        // Writing to a String cannot fail.
        let _ = write!(self.path, "{}/{pid}/{file}", self.paths.procfs().display());
        self.text.clear();
        File::open(&self.path)?.read_to_string(&mut self.text)?;
        Ok(())
    }
}

/// Which Python processes to probe; every one when no pattern is set. Each
/// pattern must match the whole value (they are anchored).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// The command name (`/proc/PID/comm`, at most 15 bytes).
    pub comm: Option<Pattern>,
    /// The command line, arguments joined by spaces (newlines in them read
    /// as spaces too).
    pub cmdline: Option<Pattern>,
    /// The cgroup v2 path (`/system.slice/train.service`), or systemd's v1
    /// hierarchy path on hosts without a unified hierarchy.
    pub cgroup: Option<Pattern>,
}

/// The file holding the interpreter's functions in an address space, from its
/// maps: a mapped `libpython3.*.so*` when there is one (Python linked shared:
/// the functions live there, whatever the executable is called, embedded
/// interpreters included), else an executable named `python3*`. `None` for
/// anything else, and for a deleted file (nothing left to read symbols from).
pub fn interpreter(maps: &str) -> Option<&str> {
    let mut executable = None;
    for line in maps.lines() {
        let Some(path) = mapped_path(line) else { continue };
        let name = path.rsplit('/').next().unwrap_or(path);
        if name.starts_with("libpython3.") && name.contains(".so") {
            return Some(path);
        }
        if executable.is_none() && is_python_executable(name) {
            executable = Some(path);
        }
    }
    executable
}

/// `python3`, `python3.11`, `python3.11d`, `python3.13t`; not `python3-config`.
fn is_python_executable(name: &str) -> bool {
    let Some(version) = name.strip_prefix("python3") else {
        return false;
    };
    let Some(minor) = version.strip_prefix('.') else {
        return version.is_empty();
    };
    let digits = minor.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && minor.bytes().skip(digits).all(|b| b.is_ascii_lowercase())
}

/// The path of a maps line (the sixth field on, which may hold spaces); `None`
/// for anonymous and special mappings and for deleted files.
fn mapped_path(line: &str) -> Option<&str> {
    let mut rest = line;
    for _ in 0..5 {
        rest = rest.trim_start_matches(' ');
        rest = &rest[rest.find(' ')?..];
    }
    let path = rest.trim_start_matches(' ');
    (path.starts_with('/') && !path.ends_with(" (deleted)")).then_some(path)
}

/// Command name and start time from a `/proc/PID/stat` line. The name may
/// hold spaces and parentheses, so it ends at the last `)`.
fn parse_stat(stat: &str) -> Option<(&str, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    // Field 22 is the 20th after the name (field 3, the state, is the first).
    let start_time = stat.get(close + 1..)?.split_ascii_whitespace().nth(19)?.parse().ok()?;
    Some((comm, start_time))
}

/// Whether a `/proc/PID/stat` line's state is zombie or dead.
fn is_dead(stat: &str) -> bool {
    let state = stat
        .rfind(')')
        .and_then(|close| stat.get(close + 1..)?.split_ascii_whitespace().next());
    matches!(state, Some("Z" | "X"))
}

/// The cgroup v2 path of `/proc/PID/cgroup` (`0::/path`), or systemd's v1
/// hierarchy (`N:name=systemd:/path`) where there is no v2 line.
fn cgroup_path(text: &str) -> Option<&str> {
    let mut systemd = None;
    for line in text.lines() {
        if let Some(path) = line.strip_prefix("0::") {
            return Some(path);
        }
        if let Some((_, path)) = line.split_once(":name=systemd:") {
            systemd = Some(path);
        }
    }
    systemd
}

/// Where the interpreter file of `found` can be opened from this mount namespace.
pub fn interpreter_path(paths: &HostPaths, found: &Found) -> PathBuf {
    paths.proc(&format!("{}/root{}", found.pid, found.interpreter))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{TempTree, fixture_root};

    fn maps(name: &str) -> String {
        fs::read_to_string(fixture_root("python").join(name)).expect("fixture")
    }

    #[test]
    fn finds_the_interpreter_file() {
        assert_eq!(
            interpreter(&maps("pyenv-libpython.maps")),
            Some("/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0"),
            "a shared libpython wins over the executable"
        );
        assert_eq!(
            interpreter(&maps("debian-python3.11.maps")),
            Some("/usr/bin/python3.11")
        );
        assert_eq!(interpreter(&maps("not-python.maps")), None);
        assert_eq!(interpreter(&maps("deleted-python3.11.maps")), None, "nothing to read");
    }

    #[test]
    fn python_executable_names() {
        for yes in ["python3", "python3.11", "python3.11d", "python3.13t"] {
            assert!(is_python_executable(yes), "{yes}");
        }
        for no in [
            "python",
            "python2.7",
            "python3-config",
            "python3.",
            "python3.x",
            "python3.11-dbg",
        ] {
            assert!(!is_python_executable(no), "{no}");
        }
    }

    #[test]
    fn maps_paths_may_hold_spaces() {
        assert_eq!(
            mapped_path("7f00-7f01 r-xp 00000000 fe:00 12   /opt/my app/libpython3.12.so.1.0"),
            Some("/opt/my app/libpython3.12.so.1.0")
        );
        assert_eq!(mapped_path("7f00-7f01 rw-p 00000000 00:00 0 "), None);
        assert_eq!(
            mapped_path("7f00-7f01 rw-p 00000000 00:00 0                  [heap]"),
            None
        );
    }

    #[test]
    fn stat_and_cgroup_fields() {
        let stat = "4242 (a) b) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0 98765 1048576 300";
        assert_eq!(parse_stat(stat), Some(("a) b", 98765)));
        assert_eq!(parse_stat("4242 (x) S 1"), None);
        assert!(!is_dead(stat));
        assert!(is_dead("4242 (a) b) Z 1 4242"));
        assert_eq!(
            cgroup_path("4:memory:/m\n0::/system.slice/train.service\n"),
            Some("/system.slice/train.service")
        );
        assert_eq!(
            cgroup_path("9:name=systemd:/user.slice\n4:memory:/m\n"),
            Some("/user.slice")
        );
        assert_eq!(cgroup_path("4:memory:/m\n"), None);
    }

    fn stat_line(pid: u32, comm: &str, start: u64) -> String {
        format!("{pid} ({comm}) S 1 {pid} {pid} 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0 0")
    }

    /// Maps are read for new and exec'd processes only; exits and pid reuse
    /// are reported; the selection reads cmdline and cgroup.
    #[test]
    fn scans_report_new_and_gone_processes() {
        let python = maps("debian-python3.11.maps");
        let tree = TempTree::new(&[
            ("proc/10/stat", &stat_line(10, "python3.11", 500)),
            ("proc/10/maps", &python),
            ("proc/10/cmdline", "python3.11\0train.py\0--rank\x000\0"),
            ("proc/10/cgroup", "0::/system.slice/train.service\n"),
            ("proc/11/stat", &stat_line(11, "sh", 600)),
            ("proc/11/maps", &maps("not-python.maps")),
            ("proc/self/stat", "not a pid directory"),
        ]);
        let mut scanner = Scanner::new(tree.paths());
        let mut scan = Scan::default();
        scanner.scan(&mut scan).expect("scan");
        assert_eq!(
            scan.found,
            [Found {
                pid: 10,
                start_time: 500,
                comm: "python3.11".into(),
                interpreter: "/usr/bin/python3.11".into(),
            }]
        );
        assert!(scan.gone.is_empty());

        // Nothing changed: nothing reported (a process whose maps were read
        // again would be found again).
        scanner.scan(&mut scan).expect("scan");
        assert!(scan.found.is_empty() && scan.gone.is_empty(), "{scan:?}");

        // The shell execs Python (same pid, new name); 10 exits.
        tree.write("proc/11/stat", &stat_line(11, "python3.11", 600));
        tree.write("proc/11/maps", &python);
        fs::remove_dir_all(tree.root().join("proc/10")).expect("remove");
        scanner.scan(&mut scan).expect("scan");
        assert_eq!(scan.found.iter().map(|f| f.pid).collect::<Vec<_>>(), [11]);
        let mut gone = scan.gone.clone();
        gone.sort_unstable();
        assert_eq!(gone, [10, 11], "11's old program is gone too");
        assert!(scanner.is_alive(11, 600));
        assert!(!scanner.is_alive(11, 601), "another process under a reused pid");
        assert!(!scanner.is_alive(10, 500));
    }

    /// A process caught between exec's rename and its mappings (or before the
    /// loader maps libpython) is looked at again until it is a second old.
    #[test]
    fn a_process_caught_mid_exec_is_found_once_its_maps_are_there() {
        let tree = TempTree::new(&[
            ("proc/uptime", "10.00 15.00\n"),
            ("proc/20/stat", &stat_line(20, "python3.11", 950)),
            ("proc/20/maps", ""),
            ("proc/21/stat", &stat_line(21, "sh", 800)),
            ("proc/21/maps", &maps("not-python.maps")),
        ]);
        let mut scanner = Scanner::new(tree.paths());
        let mut scan = Scan::default();
        scanner.scan(&mut scan).expect("scan");
        assert!(scan.found.is_empty(), "{scan:?}");

        // 20 has mapped its program; 21 (2 s old, settled) turns out to map
        // Python too, but its maps are not read again: it is found only if
        // it execs.
        tree.write("proc/uptime", "10.20 15.40\n");
        tree.write("proc/20/maps", &maps("debian-python3.11.maps"));
        tree.write("proc/21/maps", &maps("debian-python3.11.maps"));
        scanner.scan(&mut scan).expect("scan");
        assert_eq!(scan.found.iter().map(|f| f.pid).collect::<Vec<_>>(), [20]);
        scanner.scan(&mut scan).expect("scan");
        assert!(scan.found.is_empty(), "found once: {scan:?}");

        // A young process that never maps Python is read until it is a
        // second old, then no more.
        tree.write("proc/22/stat", &stat_line(22, "make", 1015));
        tree.write("proc/22/maps", &maps("not-python.maps"));
        scanner.scan(&mut scan).expect("scan");
        tree.write("proc/uptime", "11.20 17.40\n");
        scanner.scan(&mut scan).expect("scan");
        tree.write("proc/22/maps", &maps("debian-python3.11.maps"));
        scanner.scan(&mut scan).expect("scan");
        assert!(scan.found.is_empty(), "22 settled at 1.05 s old: {scan:?}");
    }

    #[test]
    fn selection_by_comm_cmdline_and_cgroup() {
        let tree = TempTree::new(&[
            ("proc/10/cmdline", "python3.11\0train.py\0--rank\x000\0"),
            ("proc/10/cgroup", "0::/system.slice/train.service\n"),
            ("proc/11/cmdline", "python3.11\0-c\0import time\ntime.sleep(1)\0tag\0"),
        ]);
        let mut scanner = Scanner::new(tree.paths());
        let script = Found {
            pid: 11,
            start_time: 1,
            comm: "python3.11".into(),
            interpreter: "/usr/bin/python3.11".into(),
        };
        assert!(
            scanner.selects(
                &Selection {
                    cmdline: Pattern::new(".* tag").ok(),
                    ..Selection::default()
                },
                &script
            ),
            "a newline in an argument reads as a space"
        );
        let found = Found {
            pid: 10,
            start_time: 500,
            comm: "python3.11".into(),
            interpreter: "/usr/bin/python3.11".into(),
        };
        let select = |comm: Option<&str>, cmdline: Option<&str>, cgroup: Option<&str>| Selection {
            comm: comm.and_then(|p| Pattern::new(p).ok()),
            cmdline: cmdline.and_then(|p| Pattern::new(p).ok()),
            cgroup: cgroup.and_then(|p| Pattern::new(p).ok()),
        };
        assert!(scanner.selects(&Selection::default(), &found));
        assert!(scanner.selects(&select(Some("python.*"), None, None), &found));
        assert!(!scanner.selects(&select(Some("torchrun"), None, None), &found));
        assert!(scanner.selects(&select(None, Some(".*train\\.py --rank 0"), None), &found));
        assert!(
            !scanner.selects(&select(None, Some("train\\.py"), None), &found),
            "anchored"
        );
        assert!(scanner.selects(&select(None, None, Some(".*/train\\.service")), &found));
        assert!(!scanner.selects(&select(None, None, Some("/user\\.slice/.*")), &found));
        let gone = Found { pid: 99, ..found };
        assert!(
            !scanner.selects(&select(None, Some(".*"), None), &gone),
            "exited: not selected"
        );
    }
}
