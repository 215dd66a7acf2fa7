//! hostwatch exporters: the only crate that knows prometheus-client.
//!
//! Reads nothing from the host. Takes the latest [`MetricSet`] of every
//! collector and encodes them together as Prometheus text format 0.0.4 or
//! OpenMetrics 1.0 text, families sorted by name and series by label values, so
//! the output is deterministic for the same samples.

use std::fmt;
use std::sync::Arc;

use hostwatch_collectors::sample::{Family, Series};
use hostwatch_collectors::{MetricKind, MetricSet};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabel, EncodeLabelSet, LabelSetEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The exposition formats a scraper can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `text/plain; version=0.0.4`, what Prometheus falls back to and most tools read.
    PrometheusText,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

impl Format {
    /// Picks the format from an `Accept` header: OpenMetrics only when it is
    /// asked for, as Prometheus does when its scrape protocols prefer it.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let wants_openmetrics = accept.is_some_and(|accept| {
            accept.split(',').any(|range| {
                let mut params = range.split(';').map(str::trim);
                let media = params.next().unwrap_or_default();
                let quality_zero = params.any(|p| p.replace(' ', "") == "q=0");
                media.eq_ignore_ascii_case("application/openmetrics-text") && !quality_zero
            })
        });
        if wants_openmetrics {
            Self::OpenMetrics
        } else {
            Self::PrometheusText
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::PrometheusText => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Whether an `Accept-Encoding` header value allows a gzip-compressed body.
pub fn accepts_gzip(accept_encoding: &str) -> bool {
    acceptable(accept_encoding).any(|coding| coding.eq_ignore_ascii_case("gzip") || coding == "*")
}

/// The items of an `Accept`-style header that are not refused with `q=0`.
fn acceptable(header: &str) -> impl Iterator<Item = &str> {
    header.split(',').filter_map(|item| {
        let mut params = item.split(';').map(str::trim);
        let name = params.next()?;
        let refused = params.any(|param| {
            param
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q == 0.0)
        });
        (!refused).then_some(name)
    })
}

/// Encodes `sets` (each collector's latest samples) into one exposition.
pub fn encode(format: Format, sets: Vec<Arc<MetricSet>>) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(sets)));
    let mut out = String::new();
    match format {
        Format::PrometheusText => prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?,
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry)?,
    }
    Ok(out)
}

/// The collectors' samples as one prometheus-client collector.
#[derive(Debug)]
struct Snapshot(Vec<Arc<MetricSet>>);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut families: Vec<&Family> = self.0.iter().flat_map(|set| set.families()).collect();
        families.sort_by_key(|family| family.desc().name);
        // Two collectors may emit the same family (the agent's own metrics about
        // several collectors, say); its series must be written under one header.
        for group in families.chunk_by(|a, b| a.desc().name == b.desc().name) {
            let desc = group[0].desc();
            let mut series: Vec<&Series> = group.iter().flat_map(|family| family.series()).collect();
            series.sort_by(|a, b| a.label_values().cmp(b.label_values()));
            let (name, metric_type) = match desc.kind {
                // prometheus-client appends `_total` to counters itself.
                MetricKind::Counter => (
                    desc.name.strip_suffix("_total").unwrap_or(desc.name),
                    MetricType::Counter,
                ),
                MetricKind::Gauge => (desc.name, MetricType::Gauge),
                MetricKind::Histogram => (desc.name, MetricType::Histogram),
            };
            let mut metric = encoder.encode_descriptor(name, desc.help, None, metric_type)?;
            // prometheus-client takes per-bucket counts and the +Inf bucket
            // explicitly; samples carry cumulative counts (what Prometheus shows).
            let mut buckets: Vec<(f64, u64)> = Vec::new();
            for one in series {
                let labels = Labels {
                    names: desc.labels,
                    values: one.label_values(),
                };
                let mut family = metric.encode_family(&labels)?;
                match desc.kind {
                    MetricKind::Counter => family.encode_counter::<NoLabelSet, _, f64>(&one.value(), None)?,
                    MetricKind::Gauge => family.encode_gauge(&one.value())?,
                    MetricKind::Histogram => {
                        per_bucket(one.buckets(), one.count(), &mut buckets);
                        family.encode_histogram::<NoLabelSet>(one.value(), one.count(), &buckets, None)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Cumulative `(bound, count)` pairs and the total as prometheus-client's
/// per-bucket pairs ending in `+Inf`. A count below the previous one (a
/// collector bug) is clamped, so the exposition stays monotonic.
fn per_bucket(cumulative: &[(f64, u64)], count: u64, out: &mut Vec<(f64, u64)>) {
    out.clear();
    let mut previous = 0;
    for &(bound, total) in cumulative {
        let total = total.max(previous);
        out.push((bound, total - previous));
        previous = total;
    }
    out.push((f64::INFINITY, count.saturating_sub(previous)));
}

struct Labels<'a> {
    names: &'static [&'static str],
    values: &'a [String],
}

impl EncodeLabelSet for Labels<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), fmt::Error> {
        for (name, value) in self.names.iter().zip(self.values) {
            (*name, value.as_str()).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hostwatch_collectors::Desc;

    static REQUESTS: Desc = Desc::counter("t_requests_total", "Requests by code.", &["code"]);
    static TEMP: Desc = Desc::gauge("t_temperature_celsius", "A \\ backslash\nand newline.", &["room"]);
    static UP: Desc = Desc::gauge("t_up", "Up.", &[]);
    static WAIT: Desc = Desc::histogram("t_wait_seconds", "Waits.", &["process"]);

    fn sets() -> Vec<Arc<MetricSet>> {
        let mut first = MetricSet::default();
        first.push(&TEMP, &["b\"1\""], 21.5);
        first.push(&REQUESTS, &["500"], 3.0);
        first.push(&REQUESTS, &["200"], 1e6);
        let mut second = MetricSet::default();
        second.push(&UP, &[], 1.0);
        second.push(&TEMP, &["a\\\n"], -4.0);
        vec![Arc::new(first), Arc::new(second)]
    }

    #[test]
    fn prometheus_text_is_sorted_merged_and_escaped() {
        let text = encode(Format::PrometheusText, sets()).unwrap();
        assert_eq!(
            text,
            "# HELP t_requests_total Requests by code.\n\
             # TYPE t_requests_total counter\n\
             t_requests_total{code=\"200\"} 1000000.0\n\
             t_requests_total{code=\"500\"} 3.0\n\
             # HELP t_temperature_celsius A \\\\ backslash\\nand newline.\n\
             # TYPE t_temperature_celsius gauge\n\
             t_temperature_celsius{room=\"a\\\\\\n\"} -4.0\n\
             t_temperature_celsius{room=\"b\\\"1\\\"\"} 21.5\n\
             # HELP t_up Up.\n\
             # TYPE t_up gauge\n\
             t_up 1.0\n"
        );
    }

    #[test]
    fn openmetrics_ends_with_eof() {
        let text = encode(Format::OpenMetrics, sets()).unwrap();
        assert!(
            text.starts_with("# HELP t_requests Requests by code.\n# TYPE t_requests counter\n"),
            "{text}"
        );
        assert!(text.contains("t_requests_total{code=\"200\"} 1000000.0\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn histograms_in_both_formats() {
        let mut set = MetricSet::default();
        set.push_histogram(&WAIT, &["python3/7"], 0.5, 4, &[(0.001, 1), (0.01, 3)]);
        let sets = vec![Arc::new(set)];
        let text = encode(Format::PrometheusText, sets.clone()).unwrap();
        assert_eq!(
            text,
            "# HELP t_wait_seconds Waits.\n\
             # TYPE t_wait_seconds histogram\n\
             t_wait_seconds_bucket{process=\"python3/7\",le=\"0.001\"} 1\n\
             t_wait_seconds_bucket{process=\"python3/7\",le=\"0.01\"} 3\n\
             t_wait_seconds_bucket{process=\"python3/7\",le=\"+Inf\"} 4\n\
             t_wait_seconds_sum{process=\"python3/7\"} 0.5\n\
             t_wait_seconds_count{process=\"python3/7\"} 4\n"
        );
        let open = encode(Format::OpenMetrics, sets).unwrap();
        assert!(
            open.contains("t_wait_seconds_bucket{le=\"+Inf\",process=\"python3/7\"} 4\n"),
            "{open}"
        );
    }

    #[test]
    fn per_bucket_counts_clamp_a_decreasing_input() {
        let mut out = Vec::new();
        per_bucket(&[(1.0, 2), (2.0, 1), (3.0, 5)], 4, &mut out);
        assert_eq!(out, [(1.0, 2), (2.0, 0), (3.0, 3), (f64::INFINITY, 0)]);
    }

    #[test]
    fn negotiation() {
        assert_eq!(Format::negotiate(None), Format::PrometheusText);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            Format::PrometheusText
        );
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text; q=0")),
            Format::PrometheusText
        );
    }
}
