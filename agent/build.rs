//! Embeds the git revision for `--version` and `hostwatch_build_info`.
//! `HOSTWATCH_REVISION` overrides it (package builds from a tarball).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=HOSTWATCH_REVISION");
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs/heads");
    let revision = std::env::var("HOSTWATCH_REVISION")
        .ok()
        .or_else(git_revision)
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=HOSTWATCH_REVISION={revision}");
}

fn git_revision() -> Option<String> {
    let output = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    let revision = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    (output.status.success() && !revision.is_empty()).then_some(revision)
}
