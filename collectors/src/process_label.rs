//! Bounded `process` label values for per-process series (GIL, mmap_lock,
//! smaps readers, burst contributors).
//!
//! Reads nothing. A label is the process's name (its comm, or a name the
//! config gives it) and, for the first `max_pids` processes seen, its pid:
//! `python3/4242`. Past that, processes share their name's series, and past
//! `max_names` names everything is `other`. A fleet of short-lived workers
//! therefore cannot explode a Prometheus server's series count.

use std::collections::{HashMap, HashSet};

/// The label value every process beyond the name cap shares.
pub const OTHER: &str = "other";

#[derive(Debug)]
pub struct ProcessLabels {
    max_pids: usize,
    max_names: usize,
    pids: HashMap<u32, String>,
    /// Processes labelled with their pid right now, at most `max_pids`.
    with_pid: usize,
    names: HashSet<String>,
    /// Processes that got a shared label because a cap was reached.
    overflowed: u64,
}

impl ProcessLabels {
    pub fn new(max_pids: usize, max_names: usize) -> Self {
        Self {
            max_pids,
            max_names,
            pids: HashMap::new(),
            with_pid: 0,
            names: HashSet::new(),
            overflowed: 0,
        }
    }

    /// The label for `pid` named `name`. Stable for a pid once given.
    pub fn label(&mut self, pid: u32, name: &str) -> &str {
        if !self.pids.contains_key(&pid) {
            let label = if self.with_pid < self.max_pids {
                self.with_pid += 1;
                format!("{name}/{pid}")
            } else if self.names.contains(name) || self.names.len() < self.max_names {
                self.overflowed += 1;
                self.names.insert(name.to_owned());
                name.to_owned()
            } else {
                self.overflowed += 1;
                OTHER.to_owned()
            };
            self.pids.insert(pid, label);
        }
        self.pids.get(&pid).map_or(OTHER, String::as_str)
    }

    /// Forgets an exited process, freeing its place under the pid cap.
    pub fn forget(&mut self, pid: u32) {
        if self
            .pids
            .remove(&pid)
            .is_some_and(|label| label.ends_with(&format!("/{pid}")))
        {
            self.with_pid -= 1;
        }
    }

    /// Processes labelled without their pid (or as `other`) so far.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_then_names_then_other() {
        let mut labels = ProcessLabels::new(2, 2);
        assert_eq!(labels.label(10, "python3"), "python3/10");
        assert_eq!(labels.label(11, "python3"), "python3/11");
        assert_eq!(labels.label(10, "python3"), "python3/10", "stable");
        assert_eq!(labels.label(12, "python3"), "python3");
        assert_eq!(labels.label(13, "torchrun"), "torchrun");
        assert_eq!(labels.label(14, "ray::worker"), OTHER);
        assert_eq!(labels.label(15, "python3"), "python3", "a known name is still its own");
        assert_eq!(labels.overflowed(), 4);
        labels.forget(10);
        assert_eq!(
            labels.label(16, "python3"),
            "python3/16",
            "an exited pid frees its place"
        );
    }
}
