//! Reading a procfs or sysfs file into a buffer that is reused every collection,
//! and the small tokenising helpers the parsers share.
//!
//! Reads the one file it was built with; needs whatever permission that file needs.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{CollectError, Unavailable};

/// One file, read whole on each collection into a buffer that keeps its capacity.
#[derive(Debug)]
pub struct ProcFile {
    path: PathBuf,
    buf: String,
}

impl ProcFile {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            buf: String::new(),
        }
    }

    /// Like [`ProcFile::new`], but says the collector cannot run when the file is
    /// missing or unreadable, with `what` naming what the file's absence means.
    pub fn require(path: PathBuf, what: &str) -> Result<Self, Unavailable> {
        match File::open(&path) {
            Ok(_) => Ok(Self::new(path)),
            Err(error) => Err(Unavailable::new(format!("{what}: {}: {error}", path.display()))
                .with_remedy("mount procfs and sysfs, or point --path.procfs / --path.sysfs at the host's")),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's current contents.
    pub fn read(&mut self) -> Result<Contents<'_>, CollectError> {
        self.buf.clear();
        File::open(&self.path)
            .and_then(|mut file| file.read_to_string(&mut self.buf))
            .map_err(|source| CollectError::Io {
                path: self.path.clone(),
                source,
            })?;
        Ok(Contents {
            text: &self.buf,
            path: &self.path,
        })
    }
}

/// What one read returned, with the path for error messages.
#[derive(Debug, Clone, Copy)]
pub struct Contents<'a> {
    pub text: &'a str,
    path: &'a Path,
}

impl Contents<'_> {
    /// A parse error at `line` (1-based; 0 when it concerns the whole file).
    pub fn error(&self, line: usize, reason: impl Into<String>) -> CollectError {
        CollectError::Parse {
            path: self.path.to_path_buf(),
            line,
            reason: reason.into(),
        }
    }
}

/// Parses one unsigned decimal field, naming it in the error.
pub fn parse_u64(field: &str) -> Result<u64, String> {
    field.parse().map_err(|_| format!("not an unsigned integer: {field:?}"))
}
