//! Burst detection on one per-millisecond series, and the evidence that
//! survives any scrape interval: burst counts and histograms, and the
//! highest rate over 1 ms, 10 ms, 100 ms and 1 s windows in the trailing
//! summary window.
//!
//! Reads nothing: it is fed folded milliseconds. No allocation per millisecond.

/// A run of consecutive milliseconds above the threshold, once it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Burst {
    pub start_ms: u64,
    pub duration_ms: u64,
    pub bytes: u64,
    /// The busiest millisecond's bytes.
    pub peak_ms_bytes: u64,
    /// Ended by lost milliseconds rather than by traffic falling below the
    /// threshold: its true length is unknown.
    pub truncated: bool,
}

/// What one millisecond changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    /// A burst began at this millisecond.
    Started(u64),
    Ended(Burst),
}

/// Upper bounds of the burst duration histogram, in seconds.
pub const DURATION_BUCKETS: [f64; 12] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0];
/// Upper bounds of the burst size histogram, in bytes (powers of 4 from 4 KiB).
pub const BYTES_BUCKETS: [f64; 11] = [
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
    268_435_456.0,
    1_073_741_824.0,
    4_294_967_296.0,
];

/// The peak-rate windows: length in milliseconds and their `window` label.
pub const WINDOWS: [(u64, &str); 4] = [(1, "1ms"), (10, "10ms"), (100, "100ms"), (1000, "1s")];
/// Seconds of peaks kept, the longest summary window allowed.
pub const MAX_SUMMARY_SECONDS: u64 = 60;

/// A fixed-bucket histogram.
#[derive(Debug, Clone)]
pub struct Histogram<const N: usize> {
    bounds: &'static [f64; N],
    counts: [u64; N],
    sum: f64,
    count: u64,
}

impl<const N: usize> Histogram<N> {
    pub const fn new(bounds: &'static [f64; N]) -> Self {
        Self {
            bounds,
            counts: [0; N],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, value: f64) {
        if let Some(bucket) = self.bounds.iter().position(|bound| value <= *bound) {
            self.counts[bucket] += 1;
        }
        self.sum += value;
        self.count += 1;
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Upper bound and the count in that bucket alone.
    pub fn buckets(&self) -> [(f64, u64); N] {
        std::array::from_fn(|i| (self.bounds[i], self.counts[i]))
    }
}

/// Running sums over the last 1, 10, 100 and 1000 ms, and each window's
/// highest sum per second.
#[derive(Debug, Clone)]
struct Windows {
    recent: [u64; 1000],
    /// Milliseconds seen since the last gap; a window is complete once full.
    filled: u64,
    sums: [u64; WINDOWS.len()],
    /// Per window, per second (`second % MAX_SUMMARY_SECONDS`): that second and
    /// the highest window sum ending in it.
    peaks: [[(u64, u64); MAX_SUMMARY_SECONDS as usize]; WINDOWS.len()],
}

impl Default for Windows {
    fn default() -> Self {
        Self {
            recent: [0; 1000],
            filled: 0,
            sums: [0; WINDOWS.len()],
            peaks: [[(u64::MAX, 0); MAX_SUMMARY_SECONDS as usize]; WINDOWS.len()],
        }
    }
}

impl Windows {
    fn observe(&mut self, ms: u64, bytes: u64) {
        let second = ms / 1000;
        for (w, (length, _)) in WINDOWS.iter().enumerate() {
            // The millisecond leaving the window; for the 1 s window that is
            // the slot about to be overwritten.
            if self.filled >= *length {
                self.sums[w] -= self.recent[((ms + 1000 - length) % 1000) as usize];
            }
            self.sums[w] += bytes;
            if self.filled + 1 >= *length {
                let peak = &mut self.peaks[w][(second % MAX_SUMMARY_SECONDS) as usize];
                if peak.0 != second {
                    *peak = (second, 0);
                }
                peak.1 = peak.1.max(self.sums[w]);
            }
        }
        self.recent[(ms % 1000) as usize] = bytes;
        self.filled += 1;
    }

    /// After lost milliseconds no window spanning them is trustworthy.
    fn restart(&mut self) {
        self.recent = [0; 1000];
        self.filled = 0;
        self.sums = [0; WINDOWS.len()];
    }

    /// The highest rate, in bits per second, of window `w` over the
    /// `seconds` seconds ending with `now_ms`'s second.
    fn peak_bits_per_second(&self, w: usize, now_ms: u64, seconds: u64) -> f64 {
        let now = now_ms / 1000;
        let bytes = self.peaks[w]
            .iter()
            .filter(|(second, _)| *second <= now && now - second < seconds)
            .map(|(_, bytes)| *bytes)
            .max()
            .unwrap_or(0);
        bytes as f64 * 8.0 * 1000.0 / WINDOWS[w].0 as f64
    }
}

#[derive(Debug, Clone, Copy)]
struct Open {
    start_ms: u64,
    last_ms: u64,
    bytes: u64,
    peak: u64,
}

/// Burst detection and summaries for one (interface, direction).
#[derive(Debug, Clone)]
pub struct Detector {
    /// Bytes in one millisecond above which that millisecond is part of a burst.
    threshold: u64,
    open: Option<Open>,
    /// The last millisecond observed and its bytes: a burst's opening edge.
    previous: Option<(u64, u64)>,
    bursts: u64,
    duration: Histogram<{ DURATION_BUCKETS.len() }>,
    size: Histogram<{ BYTES_BUCKETS.len() }>,
    windows: Windows,
}

impl Detector {
    pub fn new(threshold_bits_per_second: f64) -> Self {
        Self {
            threshold: bytes_per_ms(threshold_bits_per_second),
            open: None,
            previous: None,
            bursts: 0,
            duration: Histogram::new(&DURATION_BUCKETS),
            size: Histogram::new(&BYTES_BUCKETS),
            windows: Windows::default(),
        }
    }

    pub fn set_threshold(&mut self, bits_per_second: f64) {
        self.threshold = bytes_per_ms(bits_per_second);
    }

    /// Bytes in one millisecond above which it is part of a burst.
    pub fn threshold_bytes(&self) -> u64 {
        self.threshold
    }

    pub fn threshold_bits_per_second(&self) -> f64 {
        self.threshold as f64 * 8.0 * 1000.0
    }

    /// A burst's bytes include the partial milliseconds that open and close
    /// it (below the threshold only because the burst began or ended inside
    /// them); its duration counts the milliseconds above the threshold.
    pub fn observe(&mut self, ms: u64, bytes: u64) -> Transition {
        self.windows.observe(ms, bytes);
        let above = bytes > self.threshold;
        let before = self.previous.replace((ms, bytes));
        let opening = before.filter(|(at, _)| at + 1 == ms).map_or(0, |(_, bytes)| bytes);
        match (&mut self.open, above) {
            (Some(open), true) if open.last_ms + 1 == ms => {
                open.last_ms = ms;
                open.bytes += bytes;
                open.peak = open.peak.max(bytes);
                Transition::None
            }
            (Some(_), true) => {
                // Milliseconds were skipped: what was open ended before them.
                let ended = self.close(false, 0);
                self.open = Some(Open {
                    start_ms: ms,
                    last_ms: ms,
                    bytes,
                    peak: bytes,
                });
                ended.map_or(Transition::Started(ms), Transition::Ended)
            }
            (Some(open), false) => {
                let closing = if open.last_ms + 1 == ms { bytes } else { 0 };
                self.close(false, closing).map_or(Transition::None, Transition::Ended)
            }
            (None, true) => {
                self.open = Some(Open {
                    start_ms: ms,
                    last_ms: ms,
                    bytes: bytes + opening,
                    peak: bytes,
                });
                Transition::Started(ms)
            }
            (None, false) => Transition::None,
        }
    }

    /// Milliseconds were lost: an open burst ends there, marked truncated.
    pub fn gap(&mut self) -> Option<Burst> {
        self.windows.restart();
        self.previous = None;
        self.close(true, 0)
    }

    /// Ends the open burst, adding the `closing` millisecond's bytes.
    fn close(&mut self, truncated: bool, closing: u64) -> Option<Burst> {
        let open = self.open.take()?;
        let burst = Burst {
            start_ms: open.start_ms,
            duration_ms: open.last_ms - open.start_ms + 1,
            bytes: open.bytes + closing,
            peak_ms_bytes: open.peak,
            truncated,
        };
        self.bursts += 1;
        self.duration.observe(burst.duration_ms as f64 / 1000.0);
        self.size.observe(burst.bytes as f64);
        Some(burst)
    }

    pub fn bursts(&self) -> u64 {
        self.bursts
    }

    pub fn duration(&self) -> &Histogram<{ DURATION_BUCKETS.len() }> {
        &self.duration
    }

    pub fn size(&self) -> &Histogram<{ BYTES_BUCKETS.len() }> {
        &self.size
    }

    /// The highest rate of window `w` (an index of [`WINDOWS`]) over the
    /// trailing `seconds`, in bits per second.
    pub fn peak(&self, w: usize, now_ms: u64, seconds: u64) -> f64 {
        self.windows.peak_bits_per_second(w, now_ms, seconds)
    }
}

fn bytes_per_ms(bits_per_second: f64) -> u64 {
    (bits_per_second / 8.0 / 1000.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1 Gbit/s: 125 000 bytes per millisecond.
    const GBIT: f64 = 1e9;

    fn feed(detector: &mut Detector, start: u64, per_ms: &[u64]) -> Vec<Transition> {
        per_ms
            .iter()
            .enumerate()
            .map(|(i, bytes)| detector.observe(start + i as u64, *bytes))
            .filter(|t| *t != Transition::None)
            .collect()
    }

    #[test]
    fn a_five_millisecond_burst() {
        let mut detector = Detector::new(GBIT);
        let mut traffic = vec![1000; 10];
        traffic.extend([200_000, 300_000, 250_000, 200_000, 130_000]);
        traffic.extend([125_000, 1000]); // exactly at the threshold is not above it
        let transitions = feed(&mut detector, 5000, &traffic);
        assert_eq!(
            transitions,
            vec![
                Transition::Started(5010),
                Transition::Ended(Burst {
                    start_ms: 5010,
                    duration_ms: 5,
                    // The five busy milliseconds, the opening 1000 and the closing 125 000.
                    bytes: 1_206_000,
                    peak_ms_bytes: 300_000,
                    truncated: false
                })
            ]
        );
        assert_eq!(detector.bursts(), 1);
        assert_eq!(detector.duration().count(), 1);
        assert_eq!(detector.duration().buckets()[2], (0.005, 1));
        assert_eq!(detector.size().buckets()[5], (4_194_304.0, 1));
    }

    #[test]
    fn steady_traffic_below_the_threshold_is_no_burst() {
        let mut detector = Detector::new(GBIT);
        assert!(feed(&mut detector, 0, &[100_000; 5000]).is_empty());
        assert_eq!(detector.bursts(), 0);
        // 100 000 bytes per ms is 800 Mbit/s in every window.
        for (w, (_, label)) in WINDOWS.iter().enumerate() {
            assert_eq!(detector.peak(w, 4999, 15), 800e6, "window {label}");
        }
    }

    #[test]
    fn lost_milliseconds_truncate_a_burst_and_restart_the_windows() {
        let mut detector = Detector::new(GBIT);
        feed(&mut detector, 0, &[500_000, 500_000]);
        let burst = detector.gap().expect("the open burst ends");
        assert!(burst.truncated);
        assert_eq!(burst.duration_ms, 2);
        // A new burst after the gap is a new burst.
        assert_eq!(feed(&mut detector, 3000, &[500_000]), vec![Transition::Started(3000)]);
    }

    #[test]
    fn peaks_survive_for_the_summary_window_only() {
        let mut detector = Detector::new(GBIT);
        let mut traffic = vec![0u64; 2000];
        traffic[1500] = 1_000_000; // one busy millisecond: 8 Gbit/s over 1 ms
        feed(&mut detector, 0, &traffic);
        assert_eq!(detector.peak(0, 1999, 15), 8e9);
        assert_eq!(detector.peak(1, 1999, 15), 8e8);
        assert_eq!(detector.peak(3, 1999, 15), 8e6);
        // 20 quiet seconds later the spike has left a 15 s summary window.
        feed(&mut detector, 2000, &vec![0u64; 20_000]);
        assert_eq!(detector.peak(0, 21_999, 15), 0.0);
    }

    #[test]
    fn the_one_second_window_subtracts_what_leaves_it() {
        let mut windows = Windows::default();
        for ms in 0..3000 {
            windows.observe(ms, if ms < 1000 { 10 } else { 1 });
        }
        assert_eq!(windows.sums[3], 1000);
        assert_eq!(windows.sums[0], 1);
        assert_eq!(windows.sums[2], 100);
    }
}
