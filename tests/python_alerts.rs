//! The python collector's alert rules (`packaging/alerts/python.rules.yml`)
//! are valid and pass their promtool unit tests.

// A test crate: its helpers fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod support;

use std::process::Command;

use support::{repo_root, require_program};

fn promtool(args: &[&str]) {
    let output = Command::new(require_program("promtool"))
        .args(args)
        .current_dir(repo_root().join("packaging/alerts"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn python_rules_are_valid() {
    promtool(&["check", "rules", "python.rules.yml"]);
}

#[test]
fn python_rules_pass_their_unit_tests() {
    promtool(&["test", "rules", "python.rules.test.yml"]);
}
