//! Samples: what collectors emit and exporters encode.
//!
//! Reads nothing, needs nothing. A collector writes into a [`MetricSet`] that
//! the scheduler reuses from one collection to the next: series buffers and
//! label strings keep their capacity, so a steady-state collection allocates
//! nothing. Only `exporters/` turns these into a wire format.

use std::fmt;

/// The Prometheus type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up (or resets to zero when the process restarts); name ends in `_total`.
    Counter,
    /// Goes up and down; `_info` families are gauges fixed at 1.
    Gauge,
    /// Observations counted into buckets by upper bound, with their sum and
    /// count; exposed as `_bucket{le}`, `_sum` and `_count`. The name has no suffix.
    Histogram,
}

/// A metric family's static description: name, help, type and label names.
#[derive(Debug)]
pub struct Desc {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricKind,
    pub labels: &'static [&'static str],
}

impl Desc {
    pub const fn counter(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Self {
            name,
            help,
            kind: MetricKind::Counter,
            labels,
        }
    }

    pub const fn gauge(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Self {
            name,
            help,
            kind: MetricKind::Gauge,
            labels,
        }
    }

    pub const fn histogram(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Self {
            name,
            help,
            kind: MetricKind::Histogram,
            labels,
        }
    }
}

/// One series: label values in the order of [`Desc::labels`], and its value.
/// A histogram's value is the sum of its observations, with their count and
/// the cumulative count at each finite upper bound beside it.
#[derive(Debug, Clone, Default)]
pub struct Series {
    label_values: Vec<String>,
    value: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl Series {
    pub fn label_values(&self) -> &[String] {
        &self.label_values
    }

    pub fn value(&self) -> f64 {
        self.value
    }

    /// A histogram's observation count (the `+Inf` bucket); 0 for other kinds.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// A histogram's `(upper bound, cumulative count)` pairs, finite bounds in
    /// increasing order; empty for other kinds.
    pub fn buckets(&self) -> &[(f64, u64)] {
        &self.buckets
    }
}

/// The series one family holds after a collection.
#[derive(Debug)]
pub struct Family {
    desc: &'static Desc,
    series: Vec<Series>,
    /// Series written in the current collection; the rest are spare buffers.
    len: usize,
}

impl Family {
    pub fn desc(&self) -> &'static Desc {
        self.desc
    }

    pub fn series(&self) -> &[Series] {
        &self.series[..self.len]
    }
}

/// Everything one collection produced, reused across collections.
#[derive(Debug, Default)]
pub struct MetricSet {
    families: Vec<Family>,
}

impl MetricSet {
    /// Forgets the previous collection's series but keeps their buffers.
    pub fn clear(&mut self) {
        for family in &mut self.families {
            family.len = 0;
        }
    }

    /// Adds one series. `label_values` must match `desc.labels` in length and order;
    /// a mismatch is a programming error and is caught by tests, so it is dropped
    /// here rather than panicking in the agent.
    pub fn push(&mut self, desc: &'static Desc, label_values: &[&str], value: f64) {
        debug_assert!(desc.kind != MetricKind::Histogram, "{} needs push_histogram", desc.name);
        if let Some(series) = self.next_series(desc, label_values) {
            series.value = value;
            series.count = 0;
            series.buckets.clear();
        }
    }

    /// Adds one histogram series: the sum and count of its observations and,
    /// for each finite upper bound in increasing order, how many observations
    /// were at most that bound (cumulative, as Prometheus exposes them; the
    /// `+Inf` bucket is `count`). Like [`MetricSet::push`], mismatched labels
    /// are a programming error and the series is dropped.
    pub fn push_histogram(
        &mut self,
        desc: &'static Desc,
        label_values: &[&str],
        sum: f64,
        count: u64,
        buckets: &[(f64, u64)],
    ) {
        debug_assert!(desc.kind == MetricKind::Histogram, "{} is not a histogram", desc.name);
        if let Some(series) = self.next_series(desc, label_values) {
            series.value = sum;
            series.count = count;
            series.buckets.clear();
            series.buckets.extend_from_slice(buckets);
        }
    }

    /// The next series buffer of `desc`'s family with its labels written, or
    /// `None` when the label count does not match the description.
    fn next_series(&mut self, desc: &'static Desc, label_values: &[&str]) -> Option<&mut Series> {
        debug_assert_eq!(desc.labels.len(), label_values.len(), "labels of {}", desc.name);
        if desc.labels.len() != label_values.len() {
            return None;
        }
        let family = self.family_mut(desc);
        if family.len == family.series.len() {
            family.series.push(Series::default());
        }
        let series = &mut family.series[family.len];
        family.len += 1;
        series.label_values.resize_with(label_values.len(), String::new);
        for (slot, value) in series.label_values.iter_mut().zip(label_values) {
            slot.clear();
            slot.push_str(value);
        }
        Some(series)
    }

    /// The families that hold at least one series after the last collection.
    pub fn families(&self) -> impl Iterator<Item = &Family> {
        self.families.iter().filter(|f| f.len > 0)
    }

    /// The value of one series (a histogram's sum), for tests and for
    /// collectors that derive one metric from another.
    pub fn get(&self, name: &str, label_values: &[&str]) -> Option<f64> {
        self.series(name, label_values).map(|s| s.value)
    }

    /// One series, histograms' counts and buckets included.
    pub fn series(&self, name: &str, label_values: &[&str]) -> Option<&Series> {
        self.families()
            .find(|f| f.desc.name == name)?
            .series()
            .iter()
            .find(|s| {
                s.label_values
                    .iter()
                    .map(String::as_str)
                    .eq(label_values.iter().copied())
            })
    }

    fn family_mut(&mut self, desc: &'static Desc) -> &mut Family {
        // Families are few (tens) per collector and written in the same order
        // every time, so a linear scan beats hashing here.
        let index = match self.families.iter().position(|f| std::ptr::eq(f.desc, desc)) {
            Some(index) => index,
            None => {
                self.families.push(Family {
                    desc,
                    series: Vec::new(),
                    len: 0,
                });
                self.families.len() - 1
            }
        };
        &mut self.families[index]
    }
}

impl fmt::Display for MetricSet {
    /// A plain `name{label="value"} value` dump, one series a line, for tests and
    /// `hostwatch collectors --dump`-style debugging; not a wire format.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for family in self.families() {
            for series in family.series() {
                write!(f, "{}", family.desc.name)?;
                if !family.desc.labels.is_empty() {
                    f.write_str("{")?;
                    for (i, (name, value)) in family.desc.labels.iter().zip(&series.label_values).enumerate() {
                        if i > 0 {
                            f.write_str(",")?;
                        }
                        write!(f, "{name}={value:?}")?;
                    }
                    f.write_str("}")?;
                }
                if family.desc.kind == MetricKind::Histogram {
                    write!(f, " sum={} count={}", series.value, series.count)?;
                    for (bound, count) in &series.buckets {
                        write!(f, " le{bound}={count}")?;
                    }
                    writeln!(f)?;
                } else {
                    writeln!(f, " {}", series.value)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static A: Desc = Desc::counter("a_total", "A.", &["x"]);
    static B: Desc = Desc::gauge("b", "B.", &[]);
    static H: Desc = Desc::histogram("h_seconds", "H.", &["x"]);

    #[test]
    fn reuse_keeps_only_the_latest_collection() {
        let mut set = MetricSet::default();
        set.push(&A, &["one"], 1.0);
        set.push(&A, &["two"], 2.0);
        set.push(&B, &[], 3.0);
        set.clear();
        set.push(&A, &["three"], 4.0);
        assert_eq!(set.to_string(), "a_total{x=\"three\"} 4\n");
        assert_eq!(set.get("a_total", &["three"]), Some(4.0));
        assert_eq!(set.get("a_total", &["one"]), None);
        assert_eq!(set.get("b", &[]), None);
    }

    #[test]
    fn histograms_keep_sum_count_and_cumulative_buckets() {
        let mut set = MetricSet::default();
        set.push_histogram(&H, &["one"], 0.75, 3, &[(0.1, 1), (1.0, 3)]);
        assert_eq!(set.to_string(), "h_seconds{x=\"one\"} sum=0.75 count=3 le0.1=1 le1=3\n");
        // A reused buffer takes the new buckets, not the old ones.
        set.clear();
        set.push_histogram(&H, &["two"], 2.0, 1, &[(5.0, 1)]);
        let series = set.series("h_seconds", &["two"]).expect("series");
        assert_eq!(
            (series.value(), series.count(), series.buckets()),
            (2.0, 1, &[(5.0, 1)][..])
        );
        assert_eq!(set.get("h_seconds", &["one"]), None);
    }
}
