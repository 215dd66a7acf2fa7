//! The errors a collector can report, with the path and line they concern.
//!
//! Reads nothing, needs nothing. The scheduler counts them by [`CollectError::kind`].

use std::io;
use std::path::PathBuf;

/// Why one collection failed. Output written before the error is still published.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parsing {} line {line}: {reason}", path.display())]
    Parse { path: PathBuf, line: usize, reason: String },
}

impl CollectError {
    /// The `kind` label of `hostwatch_collector_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Io { .. } => "io",
            Self::Parse { .. } => "parse",
        }
    }
}

/// Why a collector cannot run on this host (missing file, not root, no device).
/// Not an error of the agent: the collector is reported down with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Unavailable {
    pub reason: String,
    /// What an operator can do about it, for `hostwatch doctor`.
    pub remedy: Option<&'static str>,
}

impl Unavailable {
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            remedy: None,
        }
    }

    pub fn with_remedy(mut self, remedy: &'static str) -> Self {
        self.remedy = Some(remedy);
        self
    }
}
