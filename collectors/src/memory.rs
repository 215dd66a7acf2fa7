//! `memory`: placeholder until implemented.

use std::time::Duration;

use crate::collector::CollectorSpec;
use crate::config::collector_section;
use crate::error::Unavailable;

collector_section! {
    /// `[collectors.memory]`.
    pub struct Config {}
}

pub static SPEC: CollectorSpec = CollectorSpec {
    name: "memory",
    needs: "",
    default_interval: Duration::from_secs(1),
    section: |config| &config.memory,
    build: |_, _| Err(Unavailable::new("not implemented")),
};
