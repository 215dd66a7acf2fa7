//! The Debian package. `packaging/build-deb.sh` builds it with cargo-deb,
//! packaging the binary this test build made (`--binary`: the package is the
//! same as a release one but for the binary's optimisation, and the suite is
//! spared a release build). Then:
//!
//! - its control data and contents (`dpkg-deb`): name, version, depends,
//!   every file at its place with its mode, the conffiles, the maintainer
//!   scripts;
//! - its life cycle in a throwaway root (`dpkg --root DIR`, maintainer scripts
//!   run chrootless with `DPKG_ROOT=DIR`): install, the `hostwatch` user and
//!   group, the unit enabled, the unit verified with the installed binary, the
//!   installed binary's `--version` and `validate`, a reinstall keeping a
//!   locally changed conffile, removal keeping the conffiles, purge.
//!   Throughout, nothing touches the host: the commands that would
//!   (`systemctl`, `deb-systemd-invoke`, `adduser`, ...) are stubs that
//!   record any call, and the host's users and unit state are compared before
//!   and after.

// A test crate: its helpers fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod support;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use support::{TempDir, repo_root, require_program};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Programs a chrootless maintainer script must never run: they act on the
/// host whatever DPKG_ROOT says. Stubbed on the scripts' PATH, each records
/// its call.
const HOST_ONLY: &[&str] = &[
    "systemctl",
    "deb-systemd-invoke",
    "invoke-rc.d",
    "service",
    "adduser",
    "addgroup",
    "useradd",
    "groupadd",
];

fn said(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}",
        output.status,
        said(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Builds the package into `dir` with the build script; returns its path.
fn build(dir: &Path) -> PathBuf {
    let start = Instant::now();
    let stdout = run(Command::new(repo_root().join("packaging/build-deb.sh"))
        .args(["--binary", support::bin(), "--fast", "--output"])
        .arg(dir));
    eprintln!("build-deb.sh: {:?}", start.elapsed());
    let deb = PathBuf::from(stdout.lines().last().unwrap().trim());
    let arch = run(Command::new("dpkg").arg("--print-architecture"));
    assert_eq!(
        deb.file_name().unwrap().to_str().unwrap(),
        format!("hostwatch_{VERSION}-1_{}.deb", arch.trim())
    );
    assert!(deb.starts_with(dir) && deb.is_file(), "{deb:?}");
    deb
}

/// The shipped alert rule files and dashboards, by file name.
fn shipped(folder: &str, suffix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo_root().join(folder))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(suffix) && !name.ends_with(".test.yml"))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "nothing in {folder}");
    names
}

/// (path in the package, mode, source in the repository or None).
fn expected_files() -> Vec<(String, u32, Option<PathBuf>)> {
    let root = repo_root();
    let mut files = vec![
        ("/usr/bin/hostwatch".to_owned(), 0o755, None),
        (
            "/lib/systemd/system/hostwatch.service".to_owned(),
            0o644,
            Some(root.join("systemd/hostwatch.service")),
        ),
        (
            "/etc/default/hostwatch".to_owned(),
            0o644,
            Some(root.join("systemd/hostwatch.default")),
        ),
        (
            "/etc/hostwatch/hostwatch.toml".to_owned(),
            0o644,
            Some(root.join("packaging/hostwatch.toml")),
        ),
        (
            "/usr/lib/sysusers.d/hostwatch.conf".to_owned(),
            0o644,
            Some(root.join("packaging/debian/hostwatch.sysusers.conf")),
        ),
        (
            "/usr/share/doc/hostwatch/README.md".to_owned(),
            0o644,
            Some(root.join("README.md")),
        ),
        ("/usr/share/doc/hostwatch/copyright".to_owned(), 0o644, None),
    ];
    for name in shipped("packaging/alerts", ".rules.yml") {
        files.push((
            format!("/usr/share/hostwatch/alerts/{name}"),
            0o644,
            Some(root.join("packaging/alerts").join(&name)),
        ));
    }
    for name in shipped("packaging/dashboards", ".json") {
        files.push((
            format!("/usr/share/hostwatch/dashboards/{name}"),
            0o644,
            Some(root.join("packaging/dashboards").join(&name)),
        ));
    }
    files
}

/// The field `name` of the package's control file.
fn field(deb: &Path, name: &str) -> String {
    run(Command::new("dpkg-deb").arg("--field").arg(deb).arg(name))
        .trim()
        .to_owned()
}

fn check_control_and_contents(deb: &Path, scratch: &Path) {
    assert_eq!(field(deb, "Package"), "hostwatch");
    assert_eq!(field(deb, "Version"), format!("{VERSION}-1"));
    let depends = field(deb, "Depends");
    for needed in ["libc6", "adduser"] {
        assert!(depends.contains(needed), "Depends: {depends}");
    }
    assert!(!field(deb, "Maintainer").is_empty());
    assert!(field(deb, "Description").contains("Prometheus"));

    // Contents: every expected file with its mode, owned by root; regular
    // files only where expected.
    let listing = run(Command::new("dpkg-deb").arg("--contents").arg(deb));
    let mut files = BTreeSet::new();
    for line in listing.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (mode, owner, path) = (fields[0], fields[1], fields[5]);
        assert_eq!(owner, "0/0", "{line}");
        if mode.starts_with('-') {
            files.insert((path.trim_start_matches('.').to_owned(), mode.to_owned()));
        }
    }
    let expected: BTreeSet<(String, String)> = expected_files()
        .into_iter()
        .map(|(path, mode, _)| (path, if mode == 0o755 { "-rwxr-xr-x" } else { "-rw-r--r--" }.to_owned()))
        .collect();
    assert_eq!(files, expected, "the package's files (path, mode)");

    // Control archive: the conffiles, and the maintainer scripts as written.
    let control = scratch.join("control");
    run(Command::new("dpkg-deb").arg("--control").arg(deb).arg(&control));
    let conffiles: BTreeSet<String> = std::fs::read_to_string(control.join("conffiles"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        conffiles,
        ["/etc/default/hostwatch", "/etc/hostwatch/hostwatch.toml"]
            .map(str::to_owned)
            .into(),
    );
    for script in ["postinst", "prerm", "postrm"] {
        let packaged = control.join(script);
        assert_eq!(
            std::fs::read_to_string(&packaged).unwrap(),
            std::fs::read_to_string(repo_root().join("packaging/debian").join(script)).unwrap(),
            "{script}"
        );
        assert_eq!(
            std::fs::metadata(&packaged).unwrap().permissions().mode() & 0o777,
            0o755
        );
    }
    assert!(!control.join("preinst").exists());
}

/// A throwaway root with an empty dpkg database, and the stubs of
/// [`HOST_ONLY`].
struct Root {
    dir: PathBuf,
    stubs: PathBuf,
    calls: PathBuf,
}

impl Root {
    fn new(scratch: &Path) -> Self {
        let dir = scratch.join("root");
        for sub in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/log"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        for file in ["var/lib/dpkg/status", "var/lib/dpkg/available"] {
            std::fs::write(dir.join(file), "").unwrap();
        }
        let stubs = scratch.join("stubs");
        let calls = scratch.join("host-calls.log");
        std::fs::create_dir_all(&stubs).unwrap();
        for program in HOST_ONLY {
            let stub = stubs.join(program);
            std::fs::write(
                &stub,
                format!("#!/bin/sh\necho \"{program} $*\" >> '{}'\nexit 0\n", calls.display()),
            )
            .unwrap();
            std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Self { dir, stubs, calls }
    }

    fn path(&self, path: &str) -> PathBuf {
        self.dir.join(path.trim_start_matches('/'))
    }

    /// `dpkg --root` with ACTION. Dependencies are forced: the root has no
    /// libc6 or adduser installed (the checks above read Depends), and the
    /// binary runs with the host's libc.
    fn dpkg(&self, action: &[&str]) -> String {
        let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", self.stubs.display());
        run(Command::new(require_program("dpkg"))
            .env("PATH", path)
            .arg(format!("--root={}", self.dir.display()))
            // The host's dpkg.cfg names the host's log.
            .arg(format!("--log={}", self.path("/var/log/dpkg.log").display()))
            .args(["--force-script-chrootless", "--force-depends", "--force-confold"])
            // A developer who is not root installs files they own.
            .arg("--force-not-root")
            // Host configs (container images) may exclude /usr/share/doc.
            .arg("--path-include=/*")
            .args(action))
    }

    fn status(&self) -> String {
        let output = Command::new("dpkg-query")
            .arg(format!("--admindir={}", self.path("/var/lib/dpkg").display()))
            .args([
                "--showformat=${db:Status-Status} ${Version}\n${Conffiles}\n",
                "--show",
                "hostwatch",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn host_calls(&self) -> String {
        std::fs::read_to_string(&self.calls).unwrap_or_default()
    }
}

/// What of the host an installation into another root must leave alone: its
/// `hostwatch` user and group, and every systemd unit or enablement entry
/// named hostwatch.
fn host_state() -> Vec<String> {
    let mut state = Vec::new();
    for file in ["/etc/passwd", "/etc/group"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        state.extend(
            text.lines()
                .filter(|l| l.starts_with("hostwatch:"))
                .map(|l| format!("{file}: {l}")),
        );
    }
    for dir in [
        "/etc/systemd/system",
        "/lib/systemd/system",
        "/usr/lib/systemd/system",
        "/var/lib/systemd/deb-systemd-helper-enabled",
        "/var/lib/systemd/deb-systemd-helper-masked",
    ] {
        let output = Command::new("find")
            .args([dir, "-name", "*hostwatch*"])
            .output()
            .unwrap();
        for path in String::from_utf8_lossy(&output.stdout).lines() {
            let target = std::fs::read_link(path)
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            let modified = std::fs::symlink_metadata(path).and_then(|m| m.modified()).ok();
            state.push(format!("{path} -> {target} {modified:?}"));
        }
    }
    state
}

/// The installed unit verifies with the installed binary: `systemd-analyze
/// verify` on a copy whose /usr/bin/hostwatch is the root's (with `--root`
/// it would want a whole system in the throwaway root: sysinit.target,
/// /bin/kill).
fn verify_installed_unit(root: &Root, scratch: &Path) {
    let unit = std::fs::read_to_string(root.path("/lib/systemd/system/hostwatch.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/hostwatch run"));
    let binary = root.path("/usr/bin/hostwatch");
    let copy = scratch.join("unit/hostwatch.service");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    std::fs::write(&copy, unit.replace("/usr/bin/hostwatch", binary.to_str().unwrap())).unwrap();
    let output = Command::new(require_program("systemd-analyze"))
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let text = said(&output);
    assert!(output.status.success(), "{text}");
    assert!(
        !text.contains("hostwatch.service"),
        "a complaint about the unit: {text}"
    );
}

#[test]
fn the_package_installs_upgrades_and_purges_in_a_throwaway_root() {
    let scratch = TempDir::new("deb");
    let deb = build(&scratch.join("out"));
    check_control_and_contents(&deb, &scratch.0);

    let host_before = host_state();
    let root = Root::new(&scratch.0);
    let start = Instant::now();

    // Install.
    root.dpkg(&["--install", deb.to_str().unwrap()]);
    let status = root.status();
    assert!(status.starts_with(&format!("installed {VERSION}-1\n")), "{status}");
    for conffile in ["/etc/default/hostwatch", "/etc/hostwatch/hostwatch.toml"] {
        assert!(
            status.lines().any(|l| l.trim().starts_with(&format!("{conffile} "))),
            "{conffile} is not a conffile: {status}"
        );
    }
    for (path, mode, source) in expected_files() {
        let installed = root.path(&path);
        let metadata = std::fs::metadata(&installed).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(metadata.permissions().mode() & 0o777, mode, "{path}");
        if let Some(source) = source {
            assert_eq!(
                std::fs::read(&installed).unwrap(),
                std::fs::read(&source).unwrap(),
                "{path} differs from {}",
                source.display()
            );
        }
    }

    // The user and group, created in the root by systemd-sysusers.
    let passwd = std::fs::read_to_string(root.path("/etc/passwd")).unwrap();
    let user: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with("hostwatch:"))
        .unwrap_or_else(|| panic!("no hostwatch user in the root: {passwd}"))
        .split(':')
        .collect();
    let uid: u32 = user[2].parse().unwrap();
    assert!(uid > 0 && uid < 1000, "not a system user: {user:?}");
    assert_eq!(user[5], "/var/lib/hostwatch");
    assert_eq!(user[6], "/usr/sbin/nologin");
    let group = std::fs::read_to_string(root.path("/etc/group")).unwrap();
    assert!(
        group
            .lines()
            .any(|l| l.starts_with(&format!("hostwatch:x:{}:", user[3]))),
        "no hostwatch group with gid {}: {group}",
        user[3]
    );

    // Enabled (deb-systemd-helper, in the root), not started.
    let wants = root.path("/etc/systemd/system/multi-user.target.wants/hostwatch.service");
    assert_eq!(
        std::fs::read_link(&wants).unwrap_or_else(|e| panic!("not enabled: {e}")),
        Path::new("/lib/systemd/system/hostwatch.service")
    );
    verify_installed_unit(&root, &scratch.0);

    // The installed binary runs and accepts the installed config.
    let binary = root.path("/usr/bin/hostwatch");
    let version = run(Command::new(&binary).arg("--version"));
    assert!(version.starts_with(&format!("hostwatch {VERSION}")), "{version}");
    let config = root.path("/etc/hostwatch/hostwatch.toml");
    run(Command::new(&binary).arg("validate").arg("--config").arg(&config));

    // Reinstall (an upgrade's path through the scripts: postinst configure
    // with the old version) with a locally changed conffile: it is kept.
    let mut changed = std::fs::read_to_string(&config).unwrap();
    changed.push_str("\n# local change\n");
    std::fs::write(&config, &changed).unwrap();
    root.dpkg(&["--install", deb.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        changed,
        "the local change was lost"
    );
    assert!(!root.path("/etc/hostwatch/hostwatch.toml.dpkg-new").exists());
    assert_eq!(passwd, std::fs::read_to_string(root.path("/etc/passwd")).unwrap());
    // (The link is absolute, into the root: read it, do not follow it.)
    assert!(std::fs::read_link(&wants).is_ok(), "the reinstall disabled the unit");

    // Remove: the binary and unit go, the conffiles stay, the unit is masked.
    std::fs::create_dir_all(root.path("/var/lib/hostwatch/recordings")).unwrap();
    std::fs::write(root.path("/var/lib/hostwatch/recordings/0.json"), "{}").unwrap();
    root.dpkg(&["--remove", "hostwatch"]);
    assert!(root.status().starts_with("config-files"), "{}", root.status());
    assert!(!binary.exists());
    assert!(!root.path("/lib/systemd/system/hostwatch.service").exists());
    assert!(config.exists(), "removal took the conffile");
    assert!(root.path("/var/lib/hostwatch/recordings/0.json").exists());

    // Purge: conffiles, enablement and state go; the user stays.
    root.dpkg(&["--purge", "hostwatch"]);
    assert!(root.status().is_empty(), "{}", root.status());
    for gone in [
        "/etc/hostwatch/hostwatch.toml",
        "/etc/default/hostwatch",
        "/etc/systemd/system/multi-user.target.wants/hostwatch.service",
        "/etc/systemd/system/hostwatch.service",
        "/var/lib/hostwatch",
    ] {
        assert!(
            !root.path(gone).exists() && std::fs::symlink_metadata(root.path(gone)).is_err(),
            "{gone} survived the purge"
        );
    }
    assert!(
        std::fs::read_to_string(root.path("/etc/passwd"))
            .unwrap()
            .contains("hostwatch:")
    );
    eprintln!("install, reinstall, remove, purge: {:?}", start.elapsed());

    // The host was never touched.
    assert_eq!(root.host_calls(), "", "the maintainer scripts ran host commands");
    assert_eq!(host_state(), host_before, "the host's hostwatch user or units changed");
}

/// Static checks of the maintainer scripts, for what the throwaway root
/// cannot show (it runs on a host where systemd may not be PID 1): every
/// command that acts on the running system is guarded by
/// `[ -z "${DPKG_ROOT:-}" ]`, and those that start or stop also by
/// `[ -d /run/systemd/system ]`. And `sh -n` accepts each script.
#[test]
fn maintainer_scripts_guard_host_commands() {
    let guard = r#"[ -z "${DPKG_ROOT:-}" ]"#;
    for script in ["postinst", "prerm", "postrm"] {
        let path = repo_root().join("packaging/debian").join(script);
        run(Command::new("sh").arg("-n").arg(&path));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("#!/bin/sh\n") && text.contains("\nset -e\n"),
            "{script}"
        );
        let mut conditions: Vec<&str> = Vec::new();
        let mut checked = 0;
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            if line.starts_with("if ") {
                conditions.push(line);
            } else if line.starts_with("elif ") {
                *conditions.last_mut().unwrap() = line;
            } else if line == "fi" {
                conditions.pop();
            }
            let program = line.split_whitespace().next().unwrap_or_default();
            if HOST_ONLY.contains(&program) {
                checked += 1;
                assert!(
                    conditions.iter().any(|c| c.contains(guard)),
                    "{script}:{}: {program} runs without {guard}",
                    number + 1
                );
                if matches!(program, "systemctl" | "deb-systemd-invoke") {
                    assert!(
                        conditions
                            .iter()
                            .any(|c| c.contains(guard) && c.contains("[ -d /run/systemd/system ]")),
                        "{script}:{}: {program} runs without checking for systemd",
                        number + 1
                    );
                }
            }
        }
        if script != "postrm" {
            assert!(checked > 0, "{script}: the check saw no command");
        }
    }
}
