//! The flight recorder: the last 60 s of every watched series' bytes per
//! millisecond in memory, and the window around a burst or an ENA allowance
//! drop written to a bounded, rotated directory.
//!
//! Writes `DIR/<unix ms>-<interface>-<direction>-<reason>.json`; needs write
//! access to DIR (default /var/lib/hostwatch/recordings, the unit's
//! StateDirectory). A full or read-only disk stops recording for a while with
//! one logged error; nothing else is affected.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tracing::{error, info, warn};

/// Milliseconds of history kept per series.
pub const HISTORY_MS: usize = 60_000;
/// A recording spans this long before and after its trigger.
pub const AROUND_MS: u64 = 5_000;
/// After a write error, recording pauses this long before it tries again.
const PAUSE_AFTER_ERROR_MS: u64 = 60_000;
/// A partial file older than this was left by an agent killed mid-write; a
/// younger one may still be the previous collector's (a reload builds a new
/// recorder while the old one can be writing).
const STALE_PARTIAL: Duration = Duration::from_secs(10);

/// Bytes per millisecond of one series over the last minute. A lost
/// millisecond is `u32::MAX`; a millisecond busier than 4 GiB saturates.
#[derive(Debug)]
pub struct History {
    bytes: Vec<u32>,
    newest: Option<u64>,
}

const LOST: u32 = u32::MAX;

impl Default for History {
    fn default() -> Self {
        Self {
            bytes: vec![0; HISTORY_MS],
            newest: None,
        }
    }
}

impl History {
    /// The same buffer, holding nothing: for a new series.
    pub fn reset(mut self) -> Self {
        self.bytes.fill(0);
        self.newest = None;
        self
    }

    pub fn push(&mut self, ms: u64, bytes: u64) {
        self.bytes[(ms % HISTORY_MS as u64) as usize] = u32::try_from(bytes).unwrap_or(LOST - 1);
        self.newest = Some(ms);
    }

    pub fn lost(&mut self, from: u64, count: u64) {
        // Longer than the history: only the last minute's worth matters.
        let start = from.max((from + count).saturating_sub(HISTORY_MS as u64));
        for ms in start..from + count {
            self.bytes[(ms % HISTORY_MS as u64) as usize] = LOST;
        }
        self.newest = Some(from + count - 1);
    }

    /// `from..to` (milliseconds), `None` where lost or not (or no longer) held.
    pub fn window(&self, from: u64, to: u64, out: &mut Vec<Option<u32>>) {
        out.clear();
        let Some(newest) = self.newest else { return };
        let oldest = newest.saturating_sub(HISTORY_MS as u64 - 1);
        out.extend((from..to).map(|ms| {
            let held = ms >= oldest && ms <= newest;
            let value = self.bytes[(ms % HISTORY_MS as u64) as usize];
            (held && value != LOST).then_some(value)
        }));
    }
}

/// Why a recording was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Burst,
    EnaAllowance,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Burst => "burst",
            Self::EnaAllowance => "ena_allowance",
        }
    }
}

#[derive(Debug, Serialize)]
struct Recording<'a> {
    interface: &'a str,
    direction: &'a str,
    reason: Reason,
    /// Wall-clock time of the first millisecond, in Unix milliseconds.
    start_unix_ms: u64,
    trigger_unix_ms: u64,
    /// Bytes per millisecond; null where milliseconds were lost.
    bytes_per_ms: &'a [Option<u32>],
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    series: usize,
    trigger_ms: u64,
    reason: Reason,
}

/// Where recordings go and how many may stay.
#[derive(Debug, Clone)]
pub struct Limits {
    pub dir: PathBuf,
    pub max_files: usize,
    pub max_bytes: u64,
}

#[derive(Debug)]
pub struct Recorder {
    limits: Limits,
    pending: Vec<Pending>,
    /// Per series, the trigger of its last recording: no second one overlaps it.
    last_trigger: Vec<Option<u64>>,
    paused_until: Option<u64>,
    written: u64,
    failures: u64,
    scratch: Vec<Option<u32>>,
}

impl Recorder {
    /// Also removes what a killed agent left half-written in the directory.
    pub fn new(limits: Limits) -> Self {
        remove_stale_partials(&limits.dir);
        Self {
            limits,
            pending: Vec::new(),
            last_trigger: Vec::new(),
            paused_until: None,
            written: 0,
            failures: 0,
            scratch: Vec::new(),
        }
    }

    /// Asks for the window around `trigger_ms` of `series` to be written once
    /// it is complete. Ignored while that series' previous window is open.
    pub fn trigger(&mut self, series: usize, trigger_ms: u64, reason: Reason) {
        if self.last_trigger.len() <= series {
            self.last_trigger.resize(series + 1, None);
        }
        if self.last_trigger[series].is_some_and(|last| trigger_ms < last + AROUND_MS) {
            return;
        }
        self.last_trigger[series] = Some(trigger_ms);
        self.pending.push(Pending {
            series,
            trigger_ms,
            reason,
        });
    }

    /// Writes the recordings whose window has closed by `now_ms`.
    /// `describe(series)` gives the series' history, interface and direction.
    pub fn flush<'a>(&mut self, now_ms: u64, describe: impl Fn(usize) -> Option<(&'a History, &'a str, &'a str)>) {
        if self.paused_until.is_some_and(|until| now_ms < until) {
            return;
        }
        let mut index = 0;
        while index < self.pending.len() {
            let pending = self.pending[index];
            if now_ms < pending.trigger_ms + AROUND_MS {
                index += 1;
                continue;
            }
            self.pending.swap_remove(index);
            let Some((history, interface, direction)) = describe(pending.series) else {
                continue;
            };
            match self.write(now_ms, pending, history, interface, direction) {
                Ok(()) => self.written += 1,
                Err(error) => {
                    self.failures += 1;
                    self.paused_until = Some(now_ms + PAUSE_AFTER_ERROR_MS);
                    self.pending.clear();
                    error!(dir = %self.limits.dir.display(), %error, "flight recorder cannot write; recording paused for a minute");
                    return;
                }
            }
        }
        if self.paused_until.take().is_some() {
            info!(dir = %self.limits.dir.display(), "flight recorder writing again");
        }
    }

    fn write(
        &mut self,
        now_ms: u64,
        pending: Pending,
        history: &History,
        interface: &str,
        direction: &str,
    ) -> io::Result<()> {
        let from = pending.trigger_ms.saturating_sub(AROUND_MS);
        history.window(from, pending.trigger_ms + AROUND_MS, &mut self.scratch);
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis() as u64;
        let to_unix = |ms: u64| unix_now.saturating_sub(now_ms.saturating_sub(ms));
        let recording = Recording {
            interface,
            direction,
            reason: pending.reason,
            start_unix_ms: to_unix(from),
            trigger_unix_ms: to_unix(pending.trigger_ms),
            bytes_per_ms: &self.scratch,
        };
        fs::create_dir_all(&self.limits.dir)?;
        let name = format!(
            "{}-{interface}-{direction}-{}.json",
            recording.trigger_unix_ms,
            pending.reason.as_str()
        );
        let path = self.limits.dir.join(name);
        let partial = path.with_extension("json.partial");
        fs::write(&partial, serde_json::to_vec(&recording).map_err(io::Error::other)?)?;
        // Complete files only: a crash mid-write leaves no truncated recording.
        fs::rename(&partial, &path)?;
        self.rotate()
    }

    /// Removes the oldest recordings beyond the file and byte limits.
    fn rotate(&self) -> io::Result<()> {
        let mut files = list(&self.limits)?;
        let mut total: u64 = files.iter().map(|f| f.bytes).sum();
        let mut count = files.len();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        for file in files {
            if count <= self.limits.max_files && total <= self.limits.max_bytes {
                break;
            }
            fs::remove_file(self.limits.dir.join(&file.name))?;
            count -= 1;
            total -= file.bytes;
        }
        Ok(())
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn failures(&self) -> u64 {
        self.failures
    }
}

/// Reconciles a crash: `kill -9` between write and rename leaves a
/// `.json.partial` that no rotation would ever count or remove.
fn remove_stale_partials(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|at| at.elapsed().is_ok_and(|age| age >= STALE_PARTIAL));
        if entry.file_name().to_string_lossy().ends_with(".json.partial") && stale {
            match fs::remove_file(entry.path()) {
                Ok(()) => info!(file = %entry.path().display(), "removed a recording left half-written"),
                Err(error) => {
                    warn!(file = %entry.path().display(), %error, "cannot remove a recording left half-written")
                }
            }
        }
    }
}

/// One recording on disk, as `GET /debug/recordings` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordingFile {
    pub name: String,
    pub bytes: u64,
}

/// The recordings in `limits.dir`, newest first (names start with the time).
pub fn list(limits: &Limits) -> io::Result<Vec<RecordingFile>> {
    let mut files = Vec::new();
    let entries = match fs::read_dir(&limits.dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(files),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".json") {
            files.push(RecordingFile {
                name,
                bytes: entry.metadata()?.len(),
            });
        }
    }
    files.sort_by(|a, b| b.name.cmp(&a.name));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempTree;

    #[test]
    fn history_keeps_a_minute_and_marks_losses() {
        let mut history = History::default();
        for ms in 0..70_000 {
            history.push(ms, ms % 7);
        }
        let mut out = Vec::new();
        history.window(9_998, 10_002, &mut out);
        assert_eq!(out, vec![None, None, Some(10_000 % 7), Some(10_001 % 7)]);
        history.lost(70_000, 3);
        history.push(70_003, 5);
        history.window(69_999, 70_004, &mut out);
        assert_eq!(out, vec![Some(69_999 % 7), None, None, None, Some(5)]);
    }

    fn limits(tree: &TempTree, max_files: usize) -> Limits {
        Limits {
            dir: tree.root().join("recordings"),
            max_files,
            max_bytes: 1 << 30,
        }
    }

    #[test]
    fn writes_the_window_around_a_trigger_then_rotates() {
        let tree = TempTree::new(&[]);
        let mut history = History::default();
        for ms in 0..30_000 {
            history.push(ms, if (10_000..10_005).contains(&ms) { 500_000 } else { 10 });
        }
        let mut recorder = Recorder::new(limits(&tree, 2));
        let describe = |_| Some((&history, "eth0", "transmit"));
        recorder.trigger(0, 10_000, Reason::Burst);
        recorder.trigger(0, 10_002, Reason::Burst); // inside the open window: ignored
        recorder.flush(14_999, describe);
        assert_eq!(recorder.written(), 0, "the window is not complete yet");
        recorder.flush(15_000, describe);
        assert_eq!(recorder.written(), 1);

        let files = list(&limits(&tree, 2)).unwrap();
        assert_eq!(files.len(), 1);
        assert!(
            files[0].name.ends_with("-eth0-transmit-burst.json"),
            "{}",
            files[0].name
        );
        let text = fs::read_to_string(tree.root().join("recordings").join(&files[0].name)).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let series = json["bytes_per_ms"].as_array().unwrap();
        assert_eq!(series.len(), 10_000);
        assert_eq!(series[5_000], 500_000);
        assert_eq!(series[4_999], 10);

        for trigger in [16_000, 22_000] {
            recorder.trigger(0, trigger, Reason::EnaAllowance);
        }
        recorder.flush(30_000, describe);
        assert_eq!(recorder.written(), 3);
        assert_eq!(list(&limits(&tree, 2)).unwrap().len(), 2, "rotated to the newest two");
    }

    #[test]
    fn a_killed_agents_partial_file_is_removed_at_start() {
        let tree = TempTree::new(&[
            ("recordings/1-eth0-transmit-burst.json.partial", "{\"interf"),
            ("recordings/2-eth0-transmit-burst.json.partial", "{\"interf"),
            ("recordings/3-eth0-transmit-burst.json", "{}"),
        ]);
        let dir = tree.root().join("recordings");
        let old = SystemTime::now() - STALE_PARTIAL * 2;
        fs::File::options()
            .write(true)
            .open(dir.join("1-eth0-transmit-burst.json.partial"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        Recorder::new(limits(&tree, 8));
        let mut left: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["2-eth0-transmit-burst.json.partial", "3-eth0-transmit-burst.json"],
            "the stale partial goes; one being written now and complete recordings stay"
        );
    }

    #[test]
    fn an_unwritable_directory_pauses_recording_without_failing() {
        let tree = TempTree::new(&[("recordings", "a file where the directory should be")]);
        let history = History::default();
        let mut recorder = Recorder::new(limits(&tree, 8));
        recorder.trigger(0, 10_000, Reason::Burst);
        recorder.flush(20_000, |_| Some((&history, "eth0", "receive")));
        assert_eq!((recorder.written(), recorder.failures()), (0, 1));
        recorder.trigger(0, 30_000, Reason::Burst);
        recorder.flush(40_000, |_| Some((&history, "eth0", "receive")));
        assert_eq!(recorder.failures(), 1, "paused: no retry within the minute");
    }
}
